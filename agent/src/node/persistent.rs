//! Weft's local persistent volumes on this node: the directories of
//! volumes that no longer exist (a claim deleted, its volume reclaimed
//! with `Delete`) are removed. Every 10 s the agent lists the
//! PersistentVolumes and removes each directory under the sandbox's
//! `persistent/` that none of them names, that no pod on the node mounts,
//! and that is older than 10 s (a volume's directory is made after its
//! volume, from a read of it, so one made since the list is never
//! touched).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::PersistentVolume;

use super::Node;
use super::api::describe;

const EVERY: Duration = Duration::from_secs(10);
const MIN_AGE: Duration = Duration::from_secs(10);

pub(super) async fn run(node: Arc<Node>) {
    loop {
        tokio::time::sleep(EVERY).await;
        if let Err(e) = sweep(&node).await {
            tracing::warn!(error = %e, "cannot sweep released local volumes");
        }
    }
}

async fn sweep(node: &Node) -> Result<(), String> {
    let root = node.sandbox.persistent_root();
    if !root.exists() {
        return Ok(());
    }
    let api: kube::Api<PersistentVolume> = node.api.all();
    let list = api
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| describe(&e))?;
    let live: HashSet<String> = list
        .items
        .iter()
        .filter_map(|pv| pv.spec.as_ref()?.csi.as_ref())
        .filter(|c| c.driver == weft_api::volumes::LOCAL_DRIVER)
        .map(|c| c.volume_handle.clone())
        .collect();
    let mounted = node.sandbox.claimed_paths();
    for dir in crate::sandbox::volumes::orphaned_volumes(&root, &live) {
        let old = std::fs::metadata(&dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age >= MIN_AGE);
        if !old || mounted.contains(&dir.display().to_string()) {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed the data of a deleted volume"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted volume's data")
            }
        }
    }
    Ok(())
}
