//! Service load-balancing: from Services and EndpointSlices to the maps the
//! eBPF programs read.
//!
//! A [`Balancer`] owns the maps of one node. Each Service port becomes a
//! frontend (its ClusterIP, external IPs and NodePort) with a Maglev table
//! over its ready endpoints; terminating endpoints stay in the backends map,
//! out of the table, so their established connections finish while new ones
//! go elsewhere. A changed frontend gets its new table written into free
//! slots first and is then switched to it in one map update: a live service
//! never has a moment with no backends. The slots and ids it gave up are
//! reused only at the next change, after every program that might still be
//! reading them has finished.
//!
//! A restarted agent adopts what the pinned maps hold (backend ids,
//! tables), so connections tracked by id stay valid, and it removes what no
//! Service wants only once it has seen the complete state from the API.

pub mod maglev;
pub mod maps;
pub mod sync;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
};

use weft_common as common;
use weft_common::{BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, ServiceEntry, ServiceKey};

pub use maps::LbMaps;
pub use weft_api::debug::lb::{
    BackendView, FrontendView, MapFill, Scope, Snapshot, Trace, TraceFlow,
};

/// One backend of a frontend, as the API describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    /// Pod address.
    pub addr: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// Ready (takes new connections) or only terminating (keeps its own).
    pub ready: bool,
}

/// A frontend as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// Address (ignored for NodePorts).
    pub addr: Ipv4Addr,
    /// Port (the node port for NodePorts).
    pub port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// ClusterIP or NodePort.
    pub scope: Scope,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// ClientIP session affinity timeout, seconds.
    pub affinity: Option<u32>,
    /// Backends, ready and terminating.
    pub backends: Vec<BackendSpec>,
}

impl FrontendSpec {
    /// The map key.
    #[must_use]
    pub fn key(&self) -> ServiceKey {
        let nodeport = self.scope == Scope::NodePort;
        ServiceKey {
            addr: if nodeport {
                0
            } else {
                u32::from_ne_bytes(self.addr.octets())
            },
            port: self.port.to_be(),
            proto: self.proto,
            scope: if nodeport {
                common::SCOPE_NODEPORT
            } else {
                common::SCOPE_CLUSTER
            },
        }
    }
}

/// How long freed slots and ids wait before they are given again.
const GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// Maglev table sizes: primes, each about twice the one before. A frontend
/// gets the smallest one with at least 100 slots per ready backend, so that
/// backends' shares stay within about 1% of each other, as the Maglev paper
/// recommends, without giving a two-backend service 16 381 slots.
const TABLE_SIZES: [u32; 9] = [251, 509, 1021, 2039, 4093, 8191, 16_381, 32_749, 65_521];

/// The Maglev table size for `n` ready backends.
#[must_use]
pub fn table_size(n: usize) -> u32 {
    let want = (n as u64).saturating_mul(100);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&s| u64::from(s) >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// Why a frontend could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LbError {
    /// A map or the Maglev slot array has no room left.
    #[error("{map} is full ({capacity} entries): {what} left out; raise --lb-{flag}")]
    Full {
        /// Map name.
        map: &'static str,
        /// Its size.
        capacity: u32,
        /// What did not fit.
        what: String,
        /// The agent flag that sizes it.
        flag: &'static str,
    },
    /// A map operation failed.
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    /// The Maglev table could not be built.
    #[error(transparent)]
    Maglev(#[from] maglev::MaglevError),
    /// A protocol the programs do not translate.
    #[error("{0} is not load-balanced by weft (TCP and UDP are)")]
    Unsupported(&'static str),
}

/// A frontend as installed in the maps.
#[derive(Clone, Debug)]
struct Installed {
    service: String,
    spec: FrontendSpec,
    entry: ServiceEntry,
    /// Backend ids it holds a reference on.
    backends: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct BackendSlot {
    id: u32,
    refs: u32,
    state: u8,
}

/// First-fit by size class: tables come in a few prime sizes, so a freed
/// range is reused whole by the next table of its size.
#[derive(Debug, Default)]
struct Ranges {
    len: u32,
    next: u32,
    free: HashMap<u32, Vec<u32>>,
}

impl Ranges {
    fn alloc(&mut self, size: u32) -> Option<u32> {
        if let Some(off) = self.free.get_mut(&size).and_then(Vec::pop) {
            return Some(off);
        }
        let end = self.next.checked_add(size)?;
        if end > self.len {
            return None;
        }
        let off = self.next;
        self.next = end;
        Some(off)
    }

    fn release(&mut self, offset: u32, size: u32) {
        self.free.entry(size).or_default().push(offset);
    }

    /// Slots in tables, those waiting in quarantine included.
    fn used(&self) -> u32 {
        let free: u32 = self
            .free
            .iter()
            .map(|(size, offs)| size * offs.len() as u32)
            .sum();
        self.next - free
    }
}

/// Ids handed out from 0 (or 1) up, reused after release.
#[derive(Debug)]
struct Ids {
    cap: u32,
    next: u32,
    free: Vec<u32>,
}

impl Ids {
    fn new(first: u32, cap: u32) -> Self {
        Self {
            cap,
            next: first,
            free: Vec::new(),
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop() {
            return Some(id);
        }
        if self.next >= self.cap {
            return None;
        }
        self.next += 1;
        Some(self.next - 1)
    }
}

/// What a change gave up: slot ranges, backend and service ids, freed only
/// once [`GRACE`] has passed, when no program run that read the entries
/// before the switch can still be going (a run takes microseconds).
#[derive(Debug, Default)]
struct Quarantine {
    ranges: Vec<(u32, u32)>,
    backends: Vec<u32>,
    services: Vec<u32>,
}

/// The node's load-balancer state and its maps.
pub struct Balancer {
    maps: LbMaps,
    caps: crate::bpf::LbSizes,
    /// Frontend keys per Service (`namespace/name`).
    services: HashMap<String, Vec<ServiceKey>>,
    frontends: HashMap<ServiceKey, Installed>,
    /// Adopted from the pinned maps, not yet claimed by a Service.
    adopted: HashMap<ServiceKey, ServiceEntry>,
    backends: HashMap<(Ipv4Addr, u16), BackendSlot>,
    /// Backend id to its key in `backends`.
    backend_keys: HashMap<u32, (Ipv4Addr, u16)>,
    backend_ids: Ids,
    service_ids: Ids,
    ranges: Ranges,
    quarantine: Quarantine,
    /// Earlier changes' quarantines, with when they closed.
    aging: Vec<(std::time::Instant, Quarantine)>,
    /// Frontends left out for want of room, by key, with the reason.
    /// (left out because a map is full, the reason).
    problems: BTreeMap<String, (bool, String)>,
    /// Source ports for NodePort flows sent on to other nodes.
    snat_ports: std::ops::RangeInclusive<u16>,
}

/// NodePort SNAT ports by default: above the usual ephemeral range
/// (32768-60999), so that they do not collide with the node's own
/// connections.
pub const DEFAULT_SNAT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_000;

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("frontends", &self.frontends.len())
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

impl Balancer {
    /// Takes over `maps`, adopting what an earlier agent left in them.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn new(maps: LbMaps, caps: crate::bpf::LbSizes) -> Result<Self, LbError> {
        let mut b = Self {
            ranges: Ranges {
                len: maps.maglev.len(),
                ..Ranges::default()
            },
            maps,
            caps,
            services: HashMap::new(),
            frontends: HashMap::new(),
            adopted: HashMap::new(),
            backends: HashMap::new(),
            backend_keys: HashMap::new(),
            backend_ids: Ids::new(1, caps.backends),
            service_ids: Ids::new(0, caps.services),
            quarantine: Quarantine::default(),
            aging: Vec::new(),
            problems: BTreeMap::new(),
            snat_ports: DEFAULT_SNAT_PORTS,
        };
        b.adopt()?;
        Ok(b)
    }

    /// Reads what the pinned maps hold, so that ids, slots and tables in
    /// use stay as they are until the API says otherwise.
    fn adopt(&mut self) -> Result<(), LbError> {
        let mut used_ids = BTreeSet::new();
        for item in self.maps.services.iter() {
            let (k, v) = item.map_err(|source| crate::bpf::BpfError::Map {
                name: common::LB_SERVICES_MAP,
                source,
            })?;
            used_ids.insert(v.id);
            self.adopted.insert(k, v);
        }
        let mut used_ranges: Vec<(u32, u32)> = self
            .adopted
            .values()
            .filter(|e| e.table_size > 0)
            .map(|e| (e.table_offset, e.table_size))
            .collect();
        used_ranges.sort_unstable();
        // Space between adopted tables is lost until the maps are made
        // afresh; tables are few sizes, so little is.
        self.ranges.next = used_ranges
            .last()
            .map_or(0, |(o, s)| (o + s).min(self.ranges.len));
        let mut max_backend = 0;
        for id in 1..self.caps.backends {
            let Ok(b) = self.maps.backends.get(&id, 0) else {
                break;
            };
            if b.addr == 0 {
                continue;
            }
            max_backend = id;
            self.backend_keys
                .insert(id, (ip(b.addr), u16::from_be(b.port)));
            self.backends.insert(
                (ip(b.addr), u16::from_be(b.port)),
                BackendSlot {
                    id,
                    refs: 0,
                    state: b.state,
                },
            );
        }
        let taken: BTreeSet<u32> = self.backends.values().map(|s| s.id).collect();
        self.backend_ids.next = max_backend + 1;
        self.backend_ids.free = (1..=max_backend)
            .filter(|i| !taken.contains(i))
            .rev()
            .collect();
        let max_svc = used_ids.iter().next_back().copied();
        if let Some(m) = max_svc {
            self.service_ids.next = m + 1;
            self.service_ids.free = (0..m).filter(|i| !used_ids.contains(i)).rev().collect();
        }
        if !self.adopted.is_empty() {
            tracing::info!(
                frontends = self.adopted.len(),
                backends = self.backends.len(),
                "adopted the load-balancer state an earlier agent left pinned"
            );
        }
        Ok(())
    }

    /// Sets the source ports of NodePort flows sent on to other nodes
    /// (before [`Balancer::set_node`]).
    pub fn set_snat_ports(&mut self, ports: std::ops::RangeInclusive<u16>) {
        self.snat_ports = ports;
    }

    /// Tells the programs the node's address on its uplink (NodePorts) and
    /// its pod block (which backends are local).
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn set_node(
        &mut self,
        addr: Ipv4Addr,
        uplink_ifindex: u32,
        block: ipnetwork::Ipv4Network,
    ) -> Result<(), LbError> {
        let cfg = common::LbConfig {
            node_addr: u32::from_ne_bytes(addr.octets()),
            uplink_ifindex,
            snat_port_min: *self.snat_ports.start(),
            snat_port_max: *self.snat_ports.end(),
            block_addr: u32::from_ne_bytes(block.network().octets()),
            block_mask: u32::from_ne_bytes(block.mask().octets()),
            pad: 0,
            node_netns: netns_cookie(),
        };
        tracing::debug!(node_netns = cfg.node_netns, "load-balancer node facts");
        self.maps
            .config
            .set(0, cfg, 0)
            .map_err(|source| crate::bpf::BpfError::Map {
                name: common::LB_CONFIG_MAP,
                source,
            })?;
        Ok(())
    }

    /// Closes the current quarantine and frees those older than [`GRACE`].
    fn release_quarantine(&mut self) {
        let now = std::time::Instant::now();
        let q = std::mem::take(&mut self.quarantine);
        if !(q.ranges.is_empty() && q.backends.is_empty() && q.services.is_empty()) {
            self.aging.push((now, q));
        }
        while self
            .aging
            .first()
            .is_some_and(|(at, _)| now.duration_since(*at) >= GRACE)
        {
            let (_, q) = self.aging.remove(0);
            for (o, s) in q.ranges {
                self.ranges.release(o, s);
            }
            self.backend_ids.free.extend(q.backends);
            self.service_ids.free.extend(q.services);
        }
    }

    /// Makes Service `service` (`namespace/name`) have exactly `frontends`.
    /// Frontends that do not fit are left out and reported by
    /// [`Balancer::problems`]; the others are installed.
    pub fn set_service(&mut self, service: &str, frontends: Vec<FrontendSpec>) {
        self.release_quarantine();
        let keys: Vec<ServiceKey> = frontends.iter().map(FrontendSpec::key).collect();
        if let Some(old) = self.services.get(service).cloned() {
            for k in old.iter().filter(|k| !keys.contains(k)) {
                self.remove_frontend(k);
            }
        }
        let prefix = format!("{service} ");
        self.problems.retain(|label, _| !label.starts_with(&prefix));
        let mut installed = Vec::new();
        for spec in frontends {
            let key = spec.key();
            let label = describe(service, &spec);
            match self.install(service, spec) {
                Ok(()) => installed.push(key),
                Err(e) => {
                    tracing::warn!(frontend = %label, error = %e, "frontend not installed");
                    let full = matches!(e, LbError::Full { .. });
                    self.problems.insert(label, (full, e.to_string()));
                    // What was installed before keeps serving.
                    if self.frontends.contains_key(&key) {
                        installed.push(key);
                    }
                }
            }
        }
        if installed.is_empty() {
            self.services.remove(service);
        } else {
            self.services.insert(service.to_string(), installed);
        }
    }

    /// Removes every frontend that is neither in a Service nor wanted: what
    /// an earlier agent left for Services deleted while it was away. Called
    /// once the API's complete state has been applied.
    pub fn drop_unclaimed(&mut self) {
        self.release_quarantine();
        let stale: Vec<ServiceKey> = self.adopted.keys().copied().collect();
        for k in stale {
            if let Some(e) = self.adopted.remove(&k) {
                let _ = self.maps.services.remove(&k);
                if e.table_size > 0 {
                    self.quarantine.ranges.push((e.table_offset, e.table_size));
                }
                self.quarantine.services.push(e.id);
            }
        }
        let unused: Vec<(Ipv4Addr, u16)> = self
            .backends
            .iter()
            .filter(|(_, s)| s.refs == 0)
            .map(|(k, _)| *k)
            .collect();
        for k in unused {
            self.drop_backend(k);
        }
    }

    fn drop_backend(&mut self, k: (Ipv4Addr, u16)) {
        if let Some(slot) = self.backends.remove(&k) {
            self.backend_keys.remove(&slot.id);
            // Zeroed at once: tracked flows to it see it gone and choose
            // again; the id is reused only later.
            let _ = self.maps.backends.set(slot.id, Backend::default(), 0);
            self.quarantine.backends.push(slot.id);
        }
    }

    fn remove_frontend(&mut self, key: &ServiceKey) {
        if let Some(f) = self.frontends.remove(key) {
            let _ = self.maps.services.remove(key);
            if f.entry.table_size > 0 {
                self.quarantine
                    .ranges
                    .push((f.entry.table_offset, f.entry.table_size));
            }
            self.quarantine.services.push(f.entry.id);
            self.unref(&f.backends);
        }
    }

    fn unref(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(k) = self.backend_keys.get(id).copied() else {
                continue;
            };
            if let Some(s) = self.backends.get_mut(&k) {
                s.refs = s.refs.saturating_sub(1);
                if s.refs == 0 {
                    self.drop_backend(k);
                }
            }
        }
    }

    /// The backend id for `b`, made or updated as needed, with a reference.
    fn backend(&mut self, b: &BackendSpec) -> Result<u32, LbError> {
        let state = if b.ready {
            BACKEND_ACTIVE
        } else {
            BACKEND_TERMINATING
        };
        let value = |_id: u32| Backend {
            addr: u32::from_ne_bytes(b.addr.octets()),
            port: b.port.to_be(),
            state,
            pad: 0,
        };
        if let Some(slot) = self.backends.get_mut(&(b.addr, b.port)) {
            slot.refs += 1;
            if slot.state != state {
                slot.state = state;
                let id = slot.id;
                self.maps.backends.set(id, value(id), 0).map_err(|source| {
                    crate::bpf::BpfError::Map {
                        name: common::LB_BACKENDS_MAP,
                        source,
                    }
                })?;
            }
            return Ok(slot.id);
        }
        let id = self.backend_ids.alloc().ok_or_else(|| LbError::Full {
            map: common::LB_BACKENDS_MAP,
            // Id 0 means "no backend".
            capacity: self.caps.backends - 1,
            what: format!("backend {}:{}", b.addr, b.port),
            flag: "backends",
        })?;
        self.maps
            .backends
            .set(id, value(id), 0)
            .map_err(|source| crate::bpf::BpfError::Map {
                name: common::LB_BACKENDS_MAP,
                source,
            })?;
        self.backends
            .insert((b.addr, b.port), BackendSlot { id, refs: 1, state });
        self.backend_keys.insert(id, (b.addr, b.port));
        Ok(id)
    }

    fn install(&mut self, service: &str, mut spec: FrontendSpec) -> Result<(), LbError> {
        if spec.proto != common::PROTO_TCP && spec.proto != common::PROTO_UDP {
            return Err(LbError::Unsupported(proto_name(spec.proto)));
        }
        let key = spec.key();
        spec.backends.sort();
        spec.backends.dedup_by_key(|b| (b.addr, b.port));
        if let Some(cur) = self.frontends.get(&key)
            && cur.spec == spec
            && cur.service == service
        {
            return Ok(());
        }
        // References first, so that shared backends are not dropped between
        // the old frontend's release and the new one's claim.
        let mut ids = Vec::with_capacity(spec.backends.len());
        for b in &spec.backends {
            match self.backend(b) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    self.unref(&ids);
                    return Err(e);
                }
            }
        }
        let ready: Vec<maglev::Backend> = spec
            .backends
            .iter()
            .zip(&ids)
            .filter(|(b, _)| b.ready)
            .map(|(b, id)| maglev::Backend {
                id: *id,
                key: format!("{}:{}", b.addr, b.port),
            })
            .collect();
        let old = self
            .frontends
            .get(&key)
            .map(|f| f.entry)
            .or_else(|| self.adopted.get(&key).copied());
        let size = if ready.is_empty() {
            0
        } else {
            table_size(ready.len())
        };
        let table = if ready.is_empty() {
            Vec::new()
        } else {
            maglev::table(&ready, size)?
        };
        // An adopted table that already says exactly this is kept as is.
        let same_table = old.is_some_and(|o| {
            o.table_size == size
                && size > 0
                && self.maps.maglev.read(o.table_offset, o.table_size) == table
        });
        let offset = if same_table {
            old.map_or(0, |o| o.table_offset)
        } else if size > 0 {
            match self.ranges.alloc(size) {
                Some(off) => {
                    self.maps.maglev.write(off, &table);
                    off
                }
                None => {
                    self.unref(&ids);
                    return Err(LbError::Full {
                        map: common::LB_MAGLEV_MAP,
                        capacity: self.ranges.len,
                        what: format!("a table of {size} slots"),
                        flag: "maglev-slots",
                    });
                }
            }
        } else {
            0
        };
        let id = match old {
            Some(o) => o.id,
            None => match self.service_ids.alloc() {
                Some(id) => {
                    let _ = self.maps.reset_counters(id);
                    id
                }
                None => {
                    if size > 0 && !same_table {
                        self.ranges.release(offset, size);
                    }
                    self.unref(&ids);
                    return Err(LbError::Full {
                        map: common::LB_SERVICES_MAP,
                        capacity: self.caps.services,
                        what: describe(service, &spec),
                        flag: "services",
                    });
                }
            },
        };
        let entry = ServiceEntry {
            id,
            active: u16::try_from(ready.len()).unwrap_or(u16::MAX),
            flags: if spec.affinity.is_some() {
                common::SVC_AFFINITY
            } else {
                0
            },
            affinity_timeout: spec.affinity.unwrap_or(0),
            table_offset: offset,
            table_size: size,
        };
        if let Err(source) = self.maps.services.insert(key, entry, 0) {
            if size > 0 && !same_table {
                self.ranges.release(offset, size);
            }
            self.unref(&ids);
            if old.is_none() {
                self.service_ids.free.push(id);
            }
            let full = matches!(&source, aya::maps::MapError::SyscallError(e)
                if e.io_error.raw_os_error() == Some(libc::E2BIG));
            return Err(if full {
                LbError::Full {
                    map: common::LB_SERVICES_MAP,
                    capacity: self.caps.services,
                    what: describe(service, &spec),
                    flag: "services",
                }
            } else {
                crate::bpf::BpfError::Map {
                    name: common::LB_SERVICES_MAP,
                    source,
                }
                .into()
            });
        }
        // Switched: what the old entry used can go (later).
        if let Some(o) = old
            && o.table_size > 0
            && !same_table
        {
            self.quarantine.ranges.push((o.table_offset, o.table_size));
        }
        self.adopted.remove(&key);
        let previous = self.frontends.insert(
            key,
            Installed {
                service: service.to_string(),
                spec,
                entry,
                backends: ids,
            },
        );
        if let Some(p) = previous {
            self.unref(&p.backends);
        }
        Ok(())
    }

    /// Frontends that could not be installed, with the reason.
    #[must_use]
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.problems
            .iter()
            .map(|(k, (_, why))| (k.clone(), why.clone()))
            .collect()
    }

    /// Frontends left out because a map is full (the Node condition).
    #[must_use]
    pub fn full(&self) -> BTreeMap<String, String> {
        self.problems
            .iter()
            .filter(|(_, (full, _))| *full)
            .map(|(k, (_, why))| (k.clone(), why.clone()))
            .collect()
    }

    /// What the maps hold, for `weft lb show`.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        let mut services: BTreeMap<String, Vec<FrontendView>> = BTreeMap::new();
        for f in self.frontends.values() {
            let counters = self.maps.counters(f.entry.id).unwrap_or_default();
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
                    .maps
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
        Snapshot {
            services,
            maps: vec![
                MapFill {
                    name: common::LB_SERVICES_MAP.into(),
                    used: self.frontends.len() as u32 + self.adopted.len() as u32,
                    capacity: self.caps.services,
                },
                MapFill {
                    name: common::LB_BACKENDS_MAP.into(),
                    used: self.backends.len() as u32,
                    capacity: self.caps.backends.saturating_sub(1),
                },
                MapFill {
                    name: common::LB_MAGLEV_MAP.into(),
                    used: self.ranges.used(),
                    capacity: self.ranges.len,
                },
                // LRU maps: when full, the least recently used entry goes.
                MapFill {
                    name: common::LB_CT_MAP.into(),
                    used: self.maps.ct.keys().count() as u32,
                    capacity: self.caps.ct,
                },
                MapFill {
                    name: common::LB_SOCK_MAP.into(),
                    used: self.maps.sock.keys().count() as u32,
                    capacity: self.caps.sock,
                },
                MapFill {
                    name: common::LB_AFFINITY_MAP.into(),
                    used: self.maps.affinity.keys().count() as u32,
                    capacity: self.caps.affinity,
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
        let mut entry = self.maps.services.get(&key, 0).ok();
        if entry.is_none()
            && self
                .maps
                .config
                .get(&0, 0)
                .is_ok_and(|c| c.node_addr != 0 && c.node_addr == ne(dst))
        {
            key = ServiceKey {
                addr: 0,
                scope: common::SCOPE_NODEPORT,
                ..key
            };
            entry = self.maps.services.get(&key, 0).ok();
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
            self.maps.backends.get(&id, 0).ok().filter(|b| b.addr != 0)
        };
        let show = |b: &Backend| format!("{}:{}", ip(b.addr), u16::from_be(b.port));
        // Tracked flows of this client to this frontend.
        for k in self.maps.ct.keys().flatten() {
            if k.dir != common::CT_FORWARD
                || k.saddr != ne(src)
                || k.daddr != key_addr(&key, dst)
                || k.dport != key.port
                || k.proto != proto
            {
                continue;
            }
            let Ok(e) = self.maps.ct.get(&k, 0) else {
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
        let table = self.maps.maglev.read(entry.table_offset, entry.table_size);
        if entry.flags & common::SVC_AFFINITY != 0 {
            let akey = common::AffinityKey {
                service: entry.id,
                pad: 0,
                client: u64::from(ne(src)),
            };
            if let Ok(a) = self.maps.affinity.get(&akey, 0) {
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
        &self.maps
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

/// The cookie of the calling thread's network namespace (0 if the kernel
/// cannot tell, before 5.14): what `bpf_get_netns_cookie` gives programs.
fn netns_cookie() -> u64 {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a socket we close below; getsockopt writes a u64 we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return 0;
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        );
        libc::close(fd);
        if r == 0 { cookie } else { 0 }
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

fn proto_name(p: u8) -> &'static str {
    match p {
        common::PROTO_UDP => "UDP",
        common::PROTO_TCP => "TCP",
        sync::PROTO_SCTP => "SCTP",
        _ => "?",
    }
}

fn describe(service: &str, f: &FrontendSpec) -> String {
    describe_key(service, &f.key())
}

fn describe_key(service: &str, k: &ServiceKey) -> String {
    let port = u16::from_be(k.port);
    if k.scope == common::SCOPE_NODEPORT {
        format!("{service} nodeport {port}/{}", proto_name(k.proto))
    } else {
        format!("{service} {}:{port}/{}", ip(k.addr), proto_name(k.proto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_give_each_backend_a_hundred_slots() {
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(3), 509);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(100), 16_381);
        assert_eq!(table_size(1000), 65_521);
        for n in [1, 2, 3, 10, 50, 163, 164, 400, 655] {
            let s = table_size(n);
            assert!(
                maglev::table(
                    &(0..n as u32)
                        .map(|i| maglev::Backend {
                            id: i + 1,
                            key: format!("10.0.{}.{}:80", i / 256, i % 256)
                        })
                        .collect::<Vec<_>>(),
                    s
                )
                .is_ok()
            );
            assert!(u64::from(s) >= 100 * n as u64);
        }
    }

    #[test]
    fn ranges_reuse_freed_space_by_size() {
        let mut r = Ranges {
            len: 1000,
            ..Ranges::default()
        };
        assert_eq!(r.alloc(251), Some(0));
        assert_eq!(r.alloc(509), Some(251));
        assert_eq!(r.alloc(251), None, "760 + 251 > 1000");
        r.release(0, 251);
        assert_eq!(r.used(), 509);
        assert_eq!(r.alloc(251), Some(0));
        assert_eq!(r.used(), 760);
    }
}
