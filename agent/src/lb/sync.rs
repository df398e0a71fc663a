//! Keeps a [`Balancer`] in step with the API: watches Services and
//! EndpointSlices, and re-installs only the Services an event touched.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
};

use futures::{FutureExt as _, StreamExt as _, stream};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::{
    WatchStreamExt as _,
    watcher::{self, Event},
};
use weft_common as common;

use super::{BackendSpec, Balancer, FrontendSpec, Scope, model::PROTO_SCTP};

/// The label tying an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
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

/// A Service's ClusterIPs of both families (none for headless ones:
/// "None" is no address).
fn cluster_addrs(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    let all = spec
        .cluster_ips
        .clone()
        .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
    for ip in all.iter().filter_map(|a| a.parse().ok()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// A Service's IPv4 ClusterIPs, the ones the load-balancer serves.
fn cluster_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<Ipv4Addr> {
    cluster_addrs(spec)
        .into_iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// What the DNS zone needs of a Service and its slices.
fn dns_info(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    slices: &[&EndpointSlice],
) -> crate::dns::records::ServiceInfo {
    use crate::dns::records::{EndpointInfo, ServiceInfo};
    let external = spec.type_.as_deref() == Some("ExternalName");
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ips = cluster_addrs(spec);
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

enum Change {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
}

/// The watch cache the balancer is fed from.
#[derive(Default)]
struct Cache {
    services: HashMap<String, Service>,
    /// Slices by Service key, then by slice key.
    slices: HashMap<String, HashMap<String, EndpointSlice>>,
    /// The Service key each slice was filed under.
    slice_owner: HashMap<String, String>,
    init_services: Option<HashMap<String, Service>>,
    init_slices: Option<Vec<EndpointSlice>>,
    services_synced: bool,
    slices_synced: bool,
}

impl Cache {
    fn put_slice(&mut self, s: EndpointSlice, dirty: &mut BTreeSet<String>) {
        let skey = weft_api::meta::key_of(&s);
        self.remove_slice(&skey, dirty);
        let Some(owner) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        let owner = weft_api::meta::key(s.metadata.namespace.as_deref(), owner);
        dirty.insert(owner.clone());
        self.slice_owner.insert(skey.clone(), owner.clone());
        self.slices.entry(owner).or_default().insert(skey, s);
    }

    fn remove_slice(&mut self, skey: &str, dirty: &mut BTreeSet<String>) {
        if let Some(owner) = self.slice_owner.remove(skey) {
            if let Some(m) = self.slices.get_mut(&owner) {
                m.remove(skey);
                if m.is_empty() {
                    self.slices.remove(&owner);
                }
            }
            dirty.insert(owner);
        }
    }

    fn apply(&mut self, change: Change, dirty: &mut BTreeSet<String>) {
        match change {
            Change::Service(ev) => match *ev {
                Event::Init => self.init_services = Some(HashMap::new()),
                Event::InitApply(s) => {
                    let k = weft_api::meta::key_of(&s);
                    if let Some(m) = self.init_services.as_mut() {
                        m.insert(k, s);
                    }
                }
                Event::InitDone => {
                    let new = self.init_services.take().unwrap_or_default();
                    dirty.extend(self.services.keys().cloned());
                    dirty.extend(new.keys().cloned());
                    self.services = new;
                    self.services_synced = true;
                }
                Event::Apply(s) => {
                    let k = weft_api::meta::key_of(&s);
                    dirty.insert(k.clone());
                    self.services.insert(k, s);
                }
                Event::Delete(s) => {
                    let k = weft_api::meta::key_of(&s);
                    dirty.insert(k.clone());
                    self.services.remove(&k);
                }
            },
            Change::Slice(ev) => match *ev {
                Event::Init => self.init_slices = Some(Vec::new()),
                Event::InitApply(s) => {
                    if let Some(v) = self.init_slices.as_mut() {
                        v.push(s);
                    }
                }
                Event::InitDone => {
                    let all: Vec<String> = self.slice_owner.keys().cloned().collect();
                    for k in all {
                        self.remove_slice(&k, dirty);
                    }
                    for s in self.init_slices.take().unwrap_or_default() {
                        self.put_slice(s, dirty);
                    }
                    self.slices_synced = true;
                }
                Event::Apply(s) => self.put_slice(s, dirty),
                Event::Delete(s) => {
                    let skey = weft_api::meta::key_of(&s);
                    self.remove_slice(&skey, dirty);
                }
            },
        }
    }

    /// The Service `key` as the DNS zone sees it (`None`: gone).
    fn dns_info(&self, key: &str) -> Option<crate::dns::records::ServiceInfo> {
        let svc = self.services.get(key)?;
        let spec = svc.spec.as_ref()?;
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        Some(dns_info(spec, &slices))
    }

    fn frontends(&self, key: &str) -> Vec<FrontendSpec> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let slices: Vec<&EndpointSlice> = self
            .slices
            .get(key)
            .map(|m| m.values().collect())
            .unwrap_or_default();
        frontends(svc, &slices)
    }
}

/// Follows Services and EndpointSlices and keeps `balancer` in step. Never
/// returns; watch errors are retried with back-off.
pub async fn run(
    client: kube::Client,
    balancer: Arc<Mutex<Balancer>>,
    problems: tokio::sync::watch::Sender<std::collections::BTreeMap<String, String>>,
    zone: Option<Arc<std::sync::RwLock<crate::dns::records::Zone>>>,
) {
    let services = watcher::watcher(
        kube::Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| r.map(|e| Change::Service(Box::new(e))));
    let slices = watcher::watcher(
        kube::Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|r| r.map(|e| Change::Slice(Box::new(e))));
    let mut events = std::pin::pin!(stream::select(services, slices));
    let mut cache = Cache::default();
    let mut dirty = BTreeSet::new();
    let mut adopted_dropped = false;
    while let Some(first) = events.next().await {
        // Take every event already waiting, then apply once: a burst (the
        // initial lists, a rollout) costs one pass over what it touched.
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
        }
        for ev in batch {
            match ev {
                Ok(c) => cache.apply(c, &mut dirty),
                Err(e) => tracing::warn!(error = %e, "watching services failed; retrying"),
            }
        }
        // Before both lists are in, a Service might look endpoint-less.
        if !(cache.services_synced && cache.slices_synced) {
            continue;
        }
        let started = std::time::Instant::now();
        let n = dirty.len();
        let mut b = balancer.lock().expect("balancer lock");
        let keys = std::mem::take(&mut dirty);
        for key in &keys {
            let f = cache.frontends(key);
            b.set_service(key, f);
        }
        // The cluster DNS zone follows the same cache.
        if let Some(zone) = &zone {
            let mut z = zone.write().expect("zone lock");
            for key in &keys {
                let (ns, name) = key.split_once('/').unwrap_or(("default", key));
                z.set_service(ns, name, cache.dns_info(key));
            }
            z.set_synced();
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
        tracing::debug!(services = n, took = ?started.elapsed(), "load-balancer maps updated");
    }
}
