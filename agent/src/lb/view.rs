//! `weft lb show` and `weft lb trace`: what the balancer installed, with
//! the counters and connection-tracking entries the programs keep, and the
//! steps the packet path would take for one flow, read from the live maps.

use std::{collections::BTreeMap, net::Ipv4Addr};

use weft_common as common;
use weft_common::{BACKEND_ACTIVE, Backend, ServiceKey};

use super::{
    Balancer, LbMaps,
    model::{Scope, describe_key, ip, proto_name},
};
pub use weft_api::debug::lb::{BackendView, FrontendView, MapFill, Snapshot, Trace, TraceFlow};

impl Balancer<LbMaps> {
    /// What the maps hold, for `weft lb show`.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut services: BTreeMap<String, Vec<FrontendView>> = BTreeMap::new();
        for f in self.frontends.values() {
            let counters = self.sink.counters(f.entry.id).unwrap_or_default();
            let backends = f
                .spec
                .backends
                .iter()
                .zip(&f.backends)
                .map(|(b, id)| BackendView {
                    id: *id,
                    addr: b.addr.to_string(),
                    port: b.port,
                    state: if b.ready { "active" } else { "terminating" }.into(),
                    slots: 0,
                })
                .collect::<Vec<_>>();
            let mut backends = backends;
            if f.entry.table_size > 0 {
                let table = self
                    .sink
                    .maglev
                    .read(f.entry.table_offset, f.entry.table_size);
                for b in &mut backends {
                    b.slots = table.iter().filter(|&&s| s == b.id).count() as u32;
                }
            }
            services
                .entry(f.service.clone())
                .or_default()
                .push(FrontendView {
                    scope: f.spec.scope,
                    address: match f.spec.scope {
                        Scope::Cluster => f.spec.addr.to_string(),
                        Scope::NodePort => "*".into(),
                    },
                    port: f.spec.port,
                    protocol: proto_name(f.spec.proto).into(),
                    port_name: f.spec.port_name.clone(),
                    id: f.entry.id,
                    affinity_timeout: f.spec.affinity,
                    table_size: f.entry.table_size,
                    backends,
                    packets: counters.packets,
                    bytes: counters.bytes,
                    connections: counters.connections,
                    refused: counters.refused,
                    dropped: counters.dropped,
                });
        }
        for v in services.values_mut() {
            v.sort_by(|a, b| (a.scope, a.port, &a.protocol).cmp(&(b.scope, b.port, &b.protocol)));
        }
        let ct_used = self.sink.ct.keys().count() as u32;
        Snapshot {
            services,
            maps: vec![
                MapFill {
                    name: common::LB_SERVICES_MAP.into(),
                    used: self.frontends.len() as u32 + self.adopted.len() as u32,
                    capacity: self.caps.services,
                    evicted: None,
                },
                MapFill {
                    name: common::LB_BACKENDS_MAP.into(),
                    used: self.backends.len() as u32,
                    capacity: self.caps.backends.saturating_sub(1),
                    evicted: None,
                },
                MapFill {
                    name: common::LB_MAGLEV_MAP.into(),
                    used: self.ranges.used(),
                    capacity: self.ranges.len,
                    evicted: None,
                },
                // LRU maps: when full, the least recently used entry goes.
                MapFill {
                    name: common::LB_CT_MAP.into(),
                    used: ct_used,
                    capacity: self.caps.ct,
                    evicted: Some(self.sink.ct_evicted(u64::from(ct_used))),
                },
                MapFill {
                    name: common::LB_SOCK_MAP.into(),
                    used: self.sink.sock.keys().count() as u32,
                    capacity: self.caps.sock,
                    evicted: None,
                },
                MapFill {
                    name: common::LB_AFFINITY_MAP.into(),
                    used: self.sink.affinity.keys().count() as u32,
                    capacity: self.caps.affinity,
                    evicted: None,
                },
            ],
            problems: self.problems(),
        }
    }

    /// Which backend a flow from `src` (port `sport` if known) to
    /// `dst:dport/proto` goes to on this node, and why: the same steps the
    /// packet path takes, read from the live maps.
    #[must_use]
    pub fn trace(
        &self,
        src: Ipv4Addr,
        sport: Option<u16>,
        dst: Ipv4Addr,
        dport: u16,
        proto: u8,
    ) -> Trace {
        let ne = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
        let mut key = ServiceKey {
            addr: ne(dst),
            port: dport.to_be(),
            proto,
            scope: common::SCOPE_CLUSTER,
        };
        let mut entry = self.sink.services.get(&key, 0).ok();
        if entry.is_none()
            && self
                .sink
                .config
                .get(&0, 0)
                .is_ok_and(|c| c.node_addr != 0 && c.node_addr == ne(dst))
        {
            key = ServiceKey {
                addr: 0,
                scope: common::SCOPE_NODEPORT,
                ..key
            };
            entry = self.sink.services.get(&key, 0).ok();
        }
        let flow = format!(
            "{src}{} -> {dst}:{dport}/{}",
            sport.map(|p| format!(":{p}")).unwrap_or_default(),
            proto_name(proto)
        );
        let mut t = Trace {
            flow,
            ..Trace::default()
        };
        let Some(entry) = entry else {
            t.verdict = "not-a-service".into();
            t.explanation = "no Service frontend here: the packet goes on unchanged".into();
            return t;
        };
        let owner = self.frontends.get(&key).map_or_else(
            || "(left by an earlier agent)".to_string(),
            |f| f.service.clone(),
        );
        t.frontend = Some(describe_key(&owner, &key));
        let backend_at = |id: u32| -> Option<Backend> {
            self.sink.backends.get(&id, 0).ok().filter(|b| b.addr != 0)
        };
        let show = |b: &Backend| format!("{}:{}", ip(b.addr), u16::from_be(b.port));
        // Tracked flows of this client to this frontend.
        for k in self.sink.ct.keys().flatten() {
            if k.dir != common::CT_FORWARD
                || k.saddr != ne(src)
                || k.daddr != key_addr(&key, dst)
                || k.dport != key.port
                || k.proto != proto
            {
                continue;
            }
            let Ok(e) = self.sink.ct.get(&k, 0) else {
                continue;
            };
            let live = backend_at(e.backend)
                .is_some_and(|b| b.addr == e.backend_addr && b.port == e.backend_port);
            t.flows.push(TraceFlow {
                source_port: u16::from_be(k.sport),
                backend: format!("{}:{}", ip(e.backend_addr), u16::from_be(e.backend_port)),
                live,
                idle_ms: monotonic_ns().saturating_sub(e.last_seen) / 1_000_000,
            });
        }
        t.flows.sort_by_key(|f| f.source_port);
        if let Some(sp) = sport
            && let Some(f) = t.flows.iter().find(|f| f.source_port == sp && f.live)
        {
            t.verdict = "conntrack".into();
            t.backend = Some(f.backend.clone());
            t.explanation = format!(
                "a tracked flow: its connection-tracking entry keeps its packets on {} (idle {} ms); a new connection (SYN) from this port is balanced afresh",
                f.backend, f.idle_ms
            );
            return t;
        }
        if entry.active == 0 || entry.table_size == 0 {
            t.verdict = "refused".into();
            t.explanation = "no ready backend: new connections are refused (ECONNREFUSED on the socket path, ICMP port unreachable on the packet path)".into();
            return t;
        }
        let table = self.sink.maglev.read(entry.table_offset, entry.table_size);
        if entry.flags & common::SVC_AFFINITY != 0 {
            let akey = common::AffinityKey {
                service: entry.id,
                pad: 0,
                client: u64::from(ne(src)),
            };
            if let Ok(a) = self.sink.affinity.get(&akey, 0) {
                let fresh = monotonic_ns().saturating_sub(a.last_used)
                    < u64::from(entry.affinity_timeout) * 1_000_000_000;
                if let Some(b) = backend_at(a.backend)
                    .filter(|b| fresh && b.addr == a.backend_addr && b.state == BACKEND_ACTIVE)
                {
                    t.verdict = "affinity".into();
                    t.backend = Some(show(&b));
                    t.explanation = format!(
                        "ClientIP session affinity: {src} was given {} less than {} s ago",
                        show(&b),
                        entry.affinity_timeout
                    );
                    return t;
                }
            }
        }
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for id in &table {
            *counts.entry(*id).or_default() += 1;
        }
        t.shares = counts
            .iter()
            .filter_map(|(id, n)| backend_at(*id).map(|b| (show(&b), *n)))
            .collect();
        t.verdict = "maglev".into();
        match sport {
            Some(sp) => {
                let h =
                    common::flow_hash(ne(src), key_addr(&key, dst), sp.to_be(), key.port, proto);
                let slot = h % entry.table_size;
                let b = table.get(slot as usize).and_then(|id| backend_at(*id));
                t.slot = Some(slot);
                t.backend = b.as_ref().map(show);
                t.explanation = format!(
                    "a new flow: Maglev slot {slot} of {} holds {}",
                    entry.table_size,
                    t.backend.as_deref().unwrap_or("nothing")
                );
            }
            None => {
                t.explanation = format!(
                    "a new flow: its Maglev slot (of {}) comes from a hash of the whole 5-tuple, so the source port decides; give SRC_IP:PORT for the exact backend. Sockets of the node's pods are given theirs at connect() from the socket's cookie, through the same table",
                    entry.table_size
                );
            }
        }
        t
    }

    /// The maps, for tracing and tests.
    #[must_use]
    pub fn maps(&self) -> &LbMaps {
        &self.sink
    }
}

/// The destination address packets of a frontend carry: the VIP, or the
/// node address a NodePort was reached at.
fn key_addr(k: &ServiceKey, dst: Ipv4Addr) -> u32 {
    if k.scope == common::SCOPE_NODEPORT {
        u32::from_ne_bytes(dst.octets())
    } else {
        k.addr
    }
}

/// `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
