//! Fills the cluster zone from the agent's informers: its Services with
//! their endpoints, and its pods (pod A and PTR records, and the namespaces
//! of local pods for the search-path shortcut). Only what the answers need
//! is kept: of a pod, its namespace, address and node.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, RwLock},
};

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::{
    core::v1::{Pod, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use super::records::{EndpointInfo, PodInfo, ServiceInfo, Zone};
use crate::informer::{Event, Informer, Informers};

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

/// What the DNS zone needs of a Service and its slices.
fn service_info(spec: &ServiceSpec, slices: &[&EndpointSlice]) -> ServiceInfo {
    let external = spec.type_.as_deref() == Some("ExternalName");
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = weft_api::service::cluster_addrs(spec);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                u16::try_from(p.port).ok()?,
            ))
        })
        .collect();
    let mut endpoints = Vec::new();
    for s in slices
        .iter()
        .filter(|s| matches!(s.address_type.as_str(), "IPv4" | "IPv6"))
    {
        let slice_ports: BTreeMap<String, u16> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for e in &s.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let c = e.conditions.as_ref();
            endpoints.push(EndpointInfo {
                ip,
                hostname: e.hostname.clone(),
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                ports: slice_ports.clone(),
            });
        }
    }
    ServiceInfo {
        cluster_ips: if external || headless {
            Vec::new()
        } else {
            cluster_ips
        },
        headless,
        external_name: if external {
            spec.external_name.clone()
        } else {
            None
        },
        ports,
        endpoints,
    }
}

/// Follows every pod of the cluster (the agent's pod informer) into `zone`.
/// Never returns.
pub async fn run_pods(pods: Informer<Pod>, zone: Arc<RwLock<Zone>>, node: String) {
    let mut events = pods.subscribe();
    while let Some(first) = events.next().await {
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
        }
        let mut z = zone.write().expect("zone lock");
        for ev in batch {
            match ev {
                Event::Change { new: Some(p), .. } => {
                    z.set_pod(&weft_api::meta::key_of(&*p), pod_info(&p, &node));
                }
                Event::Change {
                    old: Some(p),
                    new: None,
                } => {
                    z.set_pod(&weft_api::meta::key_of(&*p), None);
                }
                Event::Change { .. } => {}
                Event::Resync(all) => {
                    let mut seen = HashSet::new();
                    for p in all {
                        let k = weft_api::meta::key_of(&*p);
                        z.set_pod(&k, pod_info(&p, &node));
                        seen.insert(k);
                    }
                    // What the list lacks is gone.
                    let gone: Vec<String> = z
                        .pod_keys()
                        .filter(|k| !seen.contains(*k))
                        .cloned()
                        .collect();
                    for k in gone {
                        z.set_pod(&k, None);
                    }
                    z.set_pods_synced();
                }
            }
        }
    }
}

/// Follows Services and their EndpointSlices (the agent's informers) into
/// `zone`, recomputing only the Services a change touched. Never returns.
pub async fn run_services(informers: Informers, zone: Arc<RwLock<Zone>>) {
    let mut batches = crate::informer::service_changes(&informers);
    while let Some(keys) = batches.next().await {
        let mut z = zone.write().expect("zone lock");
        for key in &keys {
            let (ns, name) = key.split_once('/').unwrap_or(("default", key));
            let info = informers.services.get(key).and_then(|svc| {
                let slices = informers.slices.indexed(key);
                let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
                Some(service_info(svc.spec.as_ref()?, &slices))
            });
            z.set_service(ns, name, info);
        }
        z.set_synced();
    }
}
