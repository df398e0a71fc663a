//! Weft's local persistent volumes on this node: the directories of
//! volumes reclaimed with `Delete` are removed. Every 10 s the agent lists
//! the PersistentVolumes and remembers each local volume's reclaim policy;
//! a directory under the sandbox's `persistent/` whose volume it saw with
//! `Delete` and no longer sees, that no pod on the node mounts and that is
//! older than 10 s, goes. A volume with `Retain`, or one this agent never
//! saw (it restarted meanwhile), keeps its data, as Kubernetes promises: an
//! admin removes it.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::PersistentVolume;

use super::Node;
use super::api::describe;

const EVERY: Duration = Duration::from_secs(10);
const MIN_AGE: Duration = Duration::from_secs(10);

pub(super) async fn run(node: Arc<Node>) {
    // Handle -> whether its volume was last seen with `Delete`.
    let mut seen: HashMap<String, bool> = HashMap::new();
    loop {
        if let Err(e) = sweep(&node, &mut seen).await {
            tracing::warn!(error = %e, "cannot sweep released local volumes");
        }
        tokio::time::sleep(EVERY).await;
    }
}

async fn sweep(node: &Node, seen: &mut HashMap<String, bool>) -> Result<(), String> {
    let root = node.sandbox.persistent_root();
    let api: kube::Api<PersistentVolume> = node.api.all();
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| describe(&e))?;
    let mut live: HashSet<String> = HashSet::new();
    for pv in &list.items {
        let Some(spec) = pv.spec.as_ref() else {
            continue;
        };
        let Some(csi) = spec
            .csi
            .as_ref()
            .filter(|c| c.driver == weft_api::volumes::LOCAL_DRIVER)
        else {
            continue;
        };
        live.insert(csi.volume_handle.clone());
        seen.insert(
            csi.volume_handle.clone(),
            spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete"),
        );
    }
    if !root.exists() {
        return Ok(());
    }
    let mounted = node.sandbox.claimed_paths();
    for dir in crate::sandbox::volumes::orphaned_volumes(&root, &live) {
        let handle = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if seen.get(&handle) != Some(&true) {
            continue;
        }
        let old = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= MIN_AGE);
        if !old || mounted.contains(&dir.display().to_string()) {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {
                seen.remove(&handle);
                tracing::info!(dir = %dir.display(), "removed the data of a deleted volume");
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted volume's data")
            }
        }
    }
    Ok(())
}
