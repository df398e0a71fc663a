//! Fills the zone's pods (pod A and PTR records, and the namespaces of
//! local pods for the search-path shortcut) from a Pod watch. Only the
//! namespace, address and node of each pod are kept.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{
    WatchStreamExt as _,
    watcher::{self, Event},
};

use super::records::{PodInfo, Zone};

/// What the zone keeps of `pod` (`None`: no record, e.g. no address yet,
/// host network, or finished).
#[must_use]
pub fn pod_info(pod: &Pod, node: &str) -> Option<PodInfo> {
    let ip = weft_api::pod::own_address(pod)?;
    let spec = pod.spec.as_ref()?;
    // The search-path shortcut walks the cluster's search list: only for
    // pods whose resolv.conf has it unchanged.
    let cluster_search = matches!(
        spec.dns_policy.as_deref(),
        None | Some("ClusterFirst" | "ClusterFirstWithHostNet")
    ) && spec
        .dns_config
        .as_ref()
        .and_then(|c| c.searches.as_ref())
        .is_none_or(Vec::is_empty);
    Some(PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        ip,
        local: spec.node_name.as_deref() == Some(node) && cluster_search,
    })
}

/// Follows every pod of the cluster into `zone`. Never returns; watch
/// errors are retried with back-off.
pub async fn run(client: kube::Client, zone: Arc<RwLock<Zone>>, node: String) {
    let events = watcher::watcher(kube::Api::<Pod>::all(client), watcher::Config::default())
        .default_backoff();
    let mut events = std::pin::pin!(events);
    // Pods seen in a relist, to drop those gone meanwhile at its end.
    let mut relisted: Option<HashSet<String>> = None;
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
        }
        let mut z = zone.write().expect("zone lock");
        for ev in batch {
            match ev {
                Ok(Event::Apply(p)) => z.set_pod(&weft_api::meta::key_of(&p), pod_info(&p, &node)),
                Ok(Event::Delete(p)) => z.set_pod(&weft_api::meta::key_of(&p), None),
                Ok(Event::Init) => relisted = Some(HashSet::new()),
                Ok(Event::InitApply(p)) => {
                    let k = weft_api::meta::key_of(&p);
                    z.set_pod(&k, pod_info(&p, &node));
                    if let Some(seen) = &mut relisted {
                        seen.insert(k);
                    }
                }
                Ok(Event::InitDone) => {
                    if let Some(seen) = relisted.take() {
                        let gone: Vec<String> = z
                            .pod_keys()
                            .filter(|k| !seen.contains(*k))
                            .cloned()
                            .collect();
                        for k in gone {
                            z.set_pod(&k, None);
                        }
                    }
                    z.set_pods_synced();
                }
                Err(e) => tracing::warn!(error = %e, "watching pods for DNS failed; retrying"),
            }
        }
    }
}
