//! Keeps a [`Balancer`] in step with the API: follows Services and
//! EndpointSlices through the agent's informers, and re-installs only the
//! Services a change touched.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use futures::StreamExt as _;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use weft_common as common;

use super::{BackendSpec, Balancer, FrontendSpec, Scope, model::PROTO_SCTP};
use crate::informer::Informers;
/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// The frontends Service `svc` asks for, with backends from its slices.
#[must_use]
pub fn frontends(svc: &Service, slices: &[&EndpointSlice]) -> Vec<FrontendSpec> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let mut addrs = cluster_ips(spec);
    for a in spec.external_ips.iter().flatten() {
        if let Ok(ip) = a.parse::<Ipv4Addr>()
            && !addrs.contains(&ip)
        {
            addrs.push(ip);
        }
    }
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let proto = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => common::PROTO_TCP,
            "UDP" => common::PROTO_UDP,
            // Not load-balanced by these programs: reported, not dropped
            // in silence.
            "SCTP" => PROTO_SCTP,
            _ => continue,
        };
        let name = p.name.clone().unwrap_or_default();
        let backends = backends(slices, &name, proto);
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        for addr in &addrs {
            out.push(FrontendSpec {
                addr: *addr,
                port,
                proto,
                scope: Scope::Cluster,
                port_name: name.clone(),
                affinity,
                backends: backends.clone(),
            });
        }
        if let Some(np) = p.node_port.filter(|_| node_ports)
            && let Ok(np) = u16::try_from(np)
        {
            out.push(FrontendSpec {
                addr: Ipv4Addr::UNSPECIFIED,
                port: np,
                proto,
                scope: Scope::NodePort,
                port_name: name.clone(),
                affinity,
                backends: backends.clone(),
            });
        }
    }
    out
}

/// Ready endpoints, and terminating ones that still serve, of the slices'
/// port called `name`.
fn backends(slices: &[&EndpointSlice], name: &str, proto: u8) -> Vec<BackendSpec> {
    let want = if proto == common::PROTO_UDP {
        "UDP"
    } else {
        "TCP"
    };
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" {
            continue;
        }
        let Some(port) = s.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or("") == name
                && sp.protocol.as_deref().unwrap_or("TCP") == want
        }) else {
            continue;
        };
        let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for e in &s.endpoints {
            let Some(addr) = e.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let c = e.conditions.as_ref();
            // Unset conditions mean ready (the API's rule for consumers).
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            if ready && !terminating {
                out.push(BackendSpec {
                    addr,
                    port,
                    ready: true,
                });
            } else if serving && terminating {
                out.push(BackendSpec {
                    addr,
                    port,
                    ready: false,
                });
            }
        }
    }
    out
}

/// A Service's IPv4 ClusterIPs, the ones the load-balancer serves.
fn cluster_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<Ipv4Addr> {
    weft_api::service::cluster_addrs(spec)
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// The frontends of Service `key`, from the informers' stores (none when
/// it is gone).
fn frontends_of(informers: &Informers, key: &str) -> Vec<FrontendSpec> {
    let Some(svc) = informers.services.get(key) else {
        return Vec::new();
    };
    let slices = informers.slices.indexed(key);
    let slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
    frontends(&svc, &slices)
}

/// Follows Services and EndpointSlices (through the agent's informers) and
/// keeps `balancer` in step, re-installing only the Services a change
/// touched. Never returns.
pub async fn run(
    informers: Informers,
    balancer: Arc<Mutex<Balancer>>,
    problems: tokio::sync::watch::Sender<BTreeMap<String, String>>,
) {
    let mut batches = crate::informer::service_changes(&informers);
    let mut adopted_dropped = false;
    while let Some(keys) = batches.next().await {
        let started = std::time::Instant::now();
        let mut b = balancer.lock().expect("balancer lock");
        for key in &keys {
            b.set_service(key, frontends_of(&informers, key));
        }
        if !adopted_dropped {
            b.drop_unclaimed();
            adopted_dropped = true;
        }
        let now = b.full();
        drop(b);
        problems.send_if_modified(|p| {
            let changed = *p != now;
            *p = now;
            changed
        });
        tracing::debug!(services = keys.len(), took = ?started.elapsed(), "load-balancer maps updated");
    }
}
