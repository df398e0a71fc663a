//! The reconciler: turns the frontends each Service wants into writes on a
//! [`Sink`] (the pinned maps in the agent, memory in the unit tests below),
//! allocating backend ids, service ids and Maglev slot ranges as it goes.
//!
//! It owns no kernel object itself: [`super::maps`] writes the maps and
//! [`super::view`] reads them back for `weft lb show` and `trace`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use weft_common as common;
use weft_common::{
    BACKEND_ACTIVE, BACKEND_TERMINATING, Backend, LbConfig, ServiceEntry, ServiceKey,
};

use super::maglev;
use super::model::{BackendSpec, FrontendSpec, describe, ip, proto_name, table_size};

/// How long freed slots and ids wait before they are given again.
pub(super) const GRACE: Duration = Duration::from_millis(50);

/// NodePort SNAT ports by default: above the usual ephemeral range
/// (32768-60999), so that they do not collide with the node's own
/// connections.
pub const DEFAULT_SNAT_PORTS: std::ops::RangeInclusive<u16> = 61_000..=65_000;

/// Where the balancer's decisions are written: the load-balancer maps the
/// programs read, as operations on their entries.
pub trait Sink {
    /// The frontends the maps hold (what an earlier agent left pinned).
    ///
    /// # Errors
    /// When the map cannot be read.
    fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceEntry)>, SinkError>;
    /// The backend at `id`; `None` past the end of the array.
    fn backend(&self, id: u32) -> Option<Backend>;
    /// Writes the backend at `id` (zeroed: no backend).
    ///
    /// # Errors
    /// When the map refuses.
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), SinkError>;
    /// Adds or replaces a frontend.
    ///
    /// # Errors
    /// [`SinkError::Full`] when the map has no room for a new key.
    fn set_frontend(&mut self, key: ServiceKey, entry: ServiceEntry) -> Result<(), SinkError>;
    /// Removes a frontend.
    ///
    /// # Errors
    /// When the map refuses.
    fn del_frontend(&mut self, key: &ServiceKey) -> Result<(), SinkError>;
    /// How many Maglev slots the slot array holds.
    fn table_slots(&self) -> u32;
    /// The slots `offset..offset + len`.
    fn read_table(&self, offset: u32, len: u32) -> Vec<u32>;
    /// Writes `table` at `offset`.
    fn write_table(&mut self, offset: u32, table: &[u32]);
    /// Zeroes the counters of a service id about to be reused.
    ///
    /// # Errors
    /// When the map refuses.
    fn reset_counters(&mut self, id: u32) -> Result<(), SinkError>;
    /// Writes the node's facts.
    ///
    /// # Errors
    /// When the map refuses.
    fn set_config(&mut self, cfg: LbConfig) -> Result<(), SinkError>;
}

/// Why a [`Sink`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A hash map has no room for another key.
    #[error("the map is full")]
    Full,
    /// Anything else.
    #[error("eBPF map {map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What the kernel said.
        reason: String,
    },
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
    Sink(#[from] SinkError),
    /// The Maglev table could not be built.
    #[error(transparent)]
    Maglev(#[from] maglev::MaglevError),
    /// A protocol the programs do not translate.
    #[error("{0} is not load-balanced by weft (TCP and UDP are)")]
    Unsupported(&'static str),
}

/// A frontend as installed in the maps.
#[derive(Clone, Debug)]
pub(super) struct Installed {
    pub(super) service: String,
    pub(super) spec: FrontendSpec,
    pub(super) entry: ServiceEntry,
    /// Backend ids it holds a reference on.
    pub(super) backends: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct BackendSlot {
    id: u32,
    refs: u32,
    state: u8,
}

/// First-fit by size class: tables come in a few prime sizes, so a freed
/// range is reused whole by the next table of its size.
#[derive(Debug, Default)]
pub(super) struct Ranges {
    pub(super) len: u32,
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
    pub(super) fn used(&self) -> u32 {
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

/// The node's load-balancer state, written through its sink (the pinned
/// maps, by default).
pub struct Balancer<S = super::LbMaps> {
    pub(super) sink: S,
    pub(super) caps: crate::bpf::LbSizes,
    /// Frontend keys per Service (`namespace/name`).
    services: HashMap<String, Vec<ServiceKey>>,
    pub(super) frontends: HashMap<ServiceKey, Installed>,
    /// Adopted from the pinned maps, not yet claimed by a Service.
    pub(super) adopted: HashMap<ServiceKey, ServiceEntry>,
    pub(super) backends: HashMap<(Ipv4Addr, u16), BackendSlot>,
    /// Backend id to its key in `backends`.
    backend_keys: HashMap<u32, (Ipv4Addr, u16)>,
    backend_ids: Ids,
    service_ids: Ids,
    pub(super) ranges: Ranges,
    quarantine: Quarantine,
    /// Earlier changes' quarantines, with when they closed.
    aging: Vec<(Instant, Quarantine)>,
    /// Frontends left out, by label, with whether a map was full and why.
    problems: BTreeMap<String, (bool, String)>,
    /// Source ports for NodePort flows sent on to other nodes.
    snat_ports: std::ops::RangeInclusive<u16>,
}

impl<S> std::fmt::Debug for Balancer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("frontends", &self.frontends.len())
            .field("backends", &self.backends.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
thread_local! {
    /// The unit tests' clock, when they set one.
    static TEST_NOW: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Now (a test's own clock in unit tests, when it set one).
fn now() -> Instant {
    #[cfg(test)]
    if let Some(t) = TEST_NOW.with(std::cell::Cell::get) {
        return t;
    }
    Instant::now()
}

impl<S: Sink> Balancer<S> {
    /// Takes over `sink`, adopting what an earlier agent left in it.
    ///
    /// # Errors
    /// When the maps cannot be read.
    pub fn new(sink: S, caps: crate::bpf::LbSizes) -> Result<Self, LbError> {
        let mut b = Self {
            ranges: Ranges {
                len: sink.table_slots(),
                ..Ranges::default()
            },
            sink,
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
        for (k, v) in self.sink.frontends()? {
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
            let Some(b) = self.sink.backend(id) else {
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
        if let Some(m) = used_ids.iter().next_back().copied() {
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
        let cfg = LbConfig {
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
        self.sink.set_config(cfg)?;
        Ok(())
    }

    /// Closes the current quarantine and frees those older than [`GRACE`].
    fn release_quarantine(&mut self) {
        let now = now();
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
                let _ = self.sink.del_frontend(&k);
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
            let _ = self.sink.set_backend(slot.id, Backend::default());
            self.quarantine.backends.push(slot.id);
        }
    }

    fn remove_frontend(&mut self, key: &ServiceKey) {
        if let Some(f) = self.frontends.remove(key) {
            let _ = self.sink.del_frontend(key);
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
        let value = Backend {
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
                self.sink.set_backend(id, value)?;
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
        self.sink.set_backend(id, value)?;
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
                && self.sink.read_table(o.table_offset, o.table_size) == table
        });
        let offset = if same_table {
            old.map_or(0, |o| o.table_offset)
        } else if size > 0 {
            match self.ranges.alloc(size) {
                Some(off) => {
                    self.sink.write_table(off, &table);
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
                    let _ = self.sink.reset_counters(id);
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
        if let Err(e) = self.sink.set_frontend(key, entry) {
            if size > 0 && !same_table {
                self.ranges.release(offset, size);
            }
            self.unref(&ids);
            if old.is_none() {
                self.service_ids.free.push(id);
            }
            return Err(match e {
                SinkError::Full => LbError::Full {
                    map: common::LB_SERVICES_MAP,
                    capacity: self.caps.services,
                    what: describe(service, &spec),
                    flag: "services",
                },
                other => other.into(),
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

    /// Where the balancer writes.
    #[must_use]
    pub fn sink(&self) -> &S {
        &self.sink
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

/// A sink borrowed mutably writes through to the sink itself, so that one
/// set of maps can outlive the balancer that wrote it (as pinned maps
/// outlive an agent).
impl<T: Sink + ?Sized> Sink for &mut T {
    fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceEntry)>, SinkError> {
        (**self).frontends()
    }
    fn backend(&self, id: u32) -> Option<Backend> {
        (**self).backend(id)
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), SinkError> {
        (**self).set_backend(id, backend)
    }
    fn set_frontend(&mut self, key: ServiceKey, entry: ServiceEntry) -> Result<(), SinkError> {
        (**self).set_frontend(key, entry)
    }
    fn del_frontend(&mut self, key: &ServiceKey) -> Result<(), SinkError> {
        (**self).del_frontend(key)
    }
    fn table_slots(&self) -> u32 {
        (**self).table_slots()
    }
    fn read_table(&self, offset: u32, len: u32) -> Vec<u32> {
        (**self).read_table(offset, len)
    }
    fn write_table(&mut self, offset: u32, table: &[u32]) {
        (**self).write_table(offset, table);
    }
    fn reset_counters(&mut self, id: u32) -> Result<(), SinkError> {
        (**self).reset_counters(id)
    }
    fn set_config(&mut self, cfg: LbConfig) -> Result<(), SinkError> {
        (**self).set_config(cfg)
    }
}

#[cfg(test)]
mod tests {
    //! The balancer against maps in memory: no root, no kernel.

    use std::collections::HashMap;

    use super::*;
    use crate::bpf::LbSizes;
    use crate::lb::model::Scope;

    /// One write the balancer made.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Op {
        SetBackend(u32, Backend),
        SetFrontend(ServiceKey, ServiceEntry),
        DelFrontend(ServiceKey),
        WriteTable(u32, u32),
        ResetCounters(u32),
    }

    /// The load-balancer maps, in memory, with every write logged.
    #[derive(Debug)]
    struct MemSink {
        frontends: HashMap<ServiceKey, ServiceEntry>,
        /// Keys the services hash map holds at most (E2BIG past it).
        frontend_room: usize,
        backends: Vec<Backend>,
        slots: Vec<u32>,
        log: Vec<Op>,
    }

    impl MemSink {
        fn new(caps: LbSizes) -> Self {
            Self {
                frontends: HashMap::new(),
                frontend_room: caps.services as usize,
                backends: vec![Backend::default(); caps.backends as usize],
                slots: vec![0; caps.maglev as usize],
                log: Vec::new(),
            }
        }
    }

    impl Sink for MemSink {
        fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceEntry)>, SinkError> {
            Ok(self.frontends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn backend(&self, id: u32) -> Option<Backend> {
            self.backends.get(id as usize).copied()
        }
        fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), SinkError> {
            let slot = self.backends.get_mut(id as usize).ok_or(SinkError::Map {
                map: "backends",
                reason: format!("index {id} out of range"),
            })?;
            *slot = backend;
            self.log.push(Op::SetBackend(id, backend));
            Ok(())
        }
        fn set_frontend(&mut self, key: ServiceKey, entry: ServiceEntry) -> Result<(), SinkError> {
            if !self.frontends.contains_key(&key) && self.frontends.len() >= self.frontend_room {
                return Err(SinkError::Full);
            }
            self.frontends.insert(key, entry);
            self.log.push(Op::SetFrontend(key, entry));
            Ok(())
        }
        fn del_frontend(&mut self, key: &ServiceKey) -> Result<(), SinkError> {
            self.frontends.remove(key);
            self.log.push(Op::DelFrontend(*key));
            Ok(())
        }
        fn table_slots(&self) -> u32 {
            self.slots.len() as u32
        }
        fn read_table(&self, offset: u32, len: u32) -> Vec<u32> {
            self.slots[offset as usize..(offset + len) as usize].to_vec()
        }
        fn write_table(&mut self, offset: u32, table: &[u32]) {
            self.slots[offset as usize..offset as usize + table.len()].copy_from_slice(table);
            self.log.push(Op::WriteTable(offset, table.len() as u32));
        }
        fn reset_counters(&mut self, id: u32) -> Result<(), SinkError> {
            self.log.push(Op::ResetCounters(id));
            Ok(())
        }
        fn set_config(&mut self, _cfg: LbConfig) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn caps(services: u32, backends: u32, maglev: u32) -> LbSizes {
        LbSizes {
            services,
            backends,
            maglev,
            ..LbSizes::default()
        }
    }

    fn vip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 96, 0, last)
    }

    fn backend(last: u8) -> BackendSpec {
        BackendSpec {
            addr: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            ready: true,
        }
    }

    fn frontend(addr: Ipv4Addr, backends: &[BackendSpec]) -> FrontendSpec {
        FrontendSpec {
            addr,
            port: 80,
            proto: common::PROTO_TCP,
            scope: Scope::Cluster,
            port_name: "http".into(),
            affinity: None,
            backends: backends.to_vec(),
        }
    }

    fn entry(sink: &MemSink, f: &FrontendSpec) -> ServiceEntry {
        *sink.frontends.get(&f.key()).expect("frontend installed")
    }

    /// Runs `f` with the balancer's clock at `at`.
    fn at<T>(at: Instant, f: impl FnOnce() -> T) -> T {
        TEST_NOW.with(|c| c.set(Some(at)));
        let out = f();
        TEST_NOW.with(|c| c.set(None));
        out
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

    #[test]
    fn freed_slots_and_ids_are_given_again_only_after_the_grace_period() {
        let mut sink = MemSink::new(caps(16, 16, 2000));
        let mut b = Balancer::new(&mut sink, caps(16, 16, 2000)).expect("balancer");
        let t0 = Instant::now();
        let fa = frontend(vip(1), &[backend(1)]);
        at(t0, || b.set_service("ns/a", vec![fa.clone()]));
        let a = entry(b.sink, &fa);
        assert_eq!((a.id, a.table_offset, a.table_size), (0, 0, 251));
        assert_eq!(b.sink.backends[1].addr, u32::from_ne_bytes([10, 244, 1, 1]));

        // Removed: its frontend goes and its backend is zeroed at once...
        at(t0, || b.set_service("ns/a", Vec::new()));
        assert!(!b.sink.frontends.contains_key(&fa.key()));
        assert_eq!(b.sink.backends[1], Backend::default());
        // ...but what it held is not given to the next change: a program
        // that read the old entry may still be reading its table.
        // (The next change closes that quarantine: the grace runs from it.)
        let fb = frontend(vip(2), &[backend(2)]);
        let t1 = t0 + GRACE / 2;
        at(t1, || b.set_service("ns/b", vec![fb.clone()]));
        let e = entry(b.sink, &fb);
        assert_eq!((e.id, e.table_offset), (1, 251), "fresh id and slots");
        assert_eq!(b.sink.backends[2].addr, u32::from_ne_bytes([10, 244, 1, 2]));
        assert_eq!(b.sink.slots[0], 1, "the old table is left as it was");

        // Once the grace period is over, they are reused.
        let fc = frontend(vip(3), &[backend(3)]);
        at(t1 + GRACE / 2, || b.set_service("ns/c", vec![fc.clone()]));
        assert_ne!(
            entry(b.sink, &fc).id,
            0,
            "not before the grace period is over"
        );
        at(t1 + GRACE, || b.set_service("ns/c", Vec::new()));
        at(t1 + GRACE, || b.set_service("ns/c", vec![fc.clone()]));
        let e = entry(b.sink, &fc);
        assert_eq!((e.id, e.table_offset), (0, 0), "the freed id and range");
        assert_eq!(
            b.sink.backends[1].addr,
            u32::from_ne_bytes([10, 244, 1, 3]),
            "the freed backend id"
        );
        assert!(
            b.sink.log.contains(&Op::ResetCounters(0)),
            "a reused id starts at zero"
        );
        assert_eq!(b.ranges.used(), 753); // a, b, and c's first table still in quarantine
    }

    #[test]
    fn a_new_backend_takes_a_fair_share_and_moves_few_flows() {
        let mut sink = MemSink::new(caps(16, 16, 4000));
        let mut b = Balancer::new(&mut sink, caps(16, 16, 4000)).expect("balancer");
        let three = [backend(1), backend(2), backend(3)];
        let f3 = frontend(vip(1), &three);
        b.set_service("ns/web", vec![f3.clone()]);
        let old = entry(b.sink, &f3);
        let before = b.sink.read_table(old.table_offset, old.table_size);
        b.sink.log.clear();

        let f4 = frontend(vip(1), &[three[0], three[1], three[2], backend(4)]);
        b.set_service("ns/web", vec![f4.clone()]);
        let new = entry(b.sink, &f4);
        assert_eq!(new.id, old.id, "a frontend keeps its id (and counters)");
        assert_eq!(new.table_size, 509, "four backends still fit 509 slots");
        assert_ne!(new.table_offset, old.table_offset);
        // The new table is written before the entry switches to it, and the
        // old one is left intact for programs still reading it.
        let write = b
            .sink
            .log
            .iter()
            .position(|o| *o == Op::WriteTable(new.table_offset, 509));
        let switch = b
            .sink
            .log
            .iter()
            .position(|o| *o == Op::SetFrontend(f4.key(), new));
        assert!(write.is_some() && write < switch, "{:?}", b.sink.log);
        assert_eq!(b.sink.read_table(old.table_offset, old.table_size), before);

        let after = b.sink.read_table(new.table_offset, new.table_size);
        let new_id = b.backends[&(backend(4).addr, 8080)].id;
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        let to_new = after.iter().filter(|id| **id == new_id).count();
        let between_old = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| x != y && **y != new_id)
            .count();
        // Maglev: the newcomer gets about a quarter, taken from the others;
        // flows of the old backends barely move between them (a hash table
        // modulo the backend count would move three quarters).
        assert!(
            (110..=145).contains(&to_new),
            "{to_new} slots to the new backend"
        );
        assert!(
            between_old <= 25,
            "{between_old} slots moved between old backends"
        );
        assert!(moved <= 170, "{moved} of 509 slots moved");

        // A backend that goes keeps no slot, and the others keep theirs.
        let f2 = frontend(vip(1), &[three[0], three[1]]);
        b.set_service("ns/web", vec![f2.clone()]);
        let e = entry(b.sink, &f2);
        let table = b.sink.read_table(e.table_offset, e.table_size);
        let ids: BTreeSet<u32> = table.iter().copied().collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(e.table_size, 251);
    }

    #[test]
    fn full_maps_leave_out_what_does_not_fit_and_say_which_flag_to_raise() {
        // Two frontends, two backends (id 0 is never used), 1000 slots.
        let c = caps(2, 3, 1000);
        let mut sink = MemSink::new(c);
        let mut b = Balancer::new(&mut sink, c).expect("balancer");
        let (fa, fb) = (
            frontend(vip(1), &[backend(1)]),
            frontend(vip(2), &[backend(2)]),
        );
        b.set_service("ns/a", vec![fa.clone()]);
        b.set_service("ns/b", vec![fb.clone()]);
        assert!(b.problems().is_empty());

        // A third backend: no id left.
        b.set_service("ns/c", vec![frontend(vip(3), &[backend(3)])]);
        let full = b.full();
        let why = full.get("ns/c 10.96.0.3:80/TCP").expect("reported");
        assert!(why.contains("raise --lb-backends"), "{why}");
        // A third frontend on a shared backend: no service id left.
        b.set_service("ns/c", vec![frontend(vip(3), &[backend(1)])]);
        let why = &b.full()["ns/c 10.96.0.3:80/TCP"];
        assert!(why.contains("raise --lb-services"), "{why}");
        assert_eq!(
            b.ranges.used(),
            502,
            "the refused table's slots were given back"
        );
        assert_eq!(b.sink.frontends.len(), 2);

        // A Service whose second port does not fit keeps its first one.
        let mut fa2 = frontend(vip(1), &[backend(1)]);
        fa2.port = 443;
        b.set_service("ns/a", vec![fa.clone(), fa2]);
        assert!(b.sink.frontends.contains_key(&fa.key()), "still served");
        assert!(b.full().contains_key("ns/a 10.96.0.1:443/TCP"));

        // Room again: the next change installs it and the problem goes.
        let t = Instant::now();
        at(t, || b.set_service("ns/b", Vec::new()));
        at(t, || b.set_service("ns/b", Vec::new())); // closes the quarantine
        at(t + GRACE, || {
            b.set_service("ns/c", vec![frontend(vip(3), &[backend(1)])]);
        });
        assert!(
            !b.full().contains_key("ns/c 10.96.0.3:80/TCP"),
            "{:?}",
            b.full()
        );
        assert!(b.sink.frontends.contains_key(&frontend(vip(3), &[]).key()));
    }

    #[test]
    fn a_hash_map_full_in_the_kernel_is_reported_and_frees_what_was_taken() {
        // The balancer thinks four frontends fit; the map holds one.
        let c = caps(4, 8, 1000);
        let mut sink = MemSink::new(c);
        sink.frontend_room = 1;
        let mut b = Balancer::new(&mut sink, c).expect("balancer");
        b.set_service("ns/a", vec![frontend(vip(1), &[backend(1)])]);
        b.set_service("ns/b", vec![frontend(vip(2), &[backend(2)])]);
        let why = &b.full()["ns/b 10.96.0.2:80/TCP"];
        assert!(why.contains("raise --lb-services"), "{why}");
        assert_eq!(b.ranges.used(), 251, "b's table was given back");
        assert_eq!(b.sink.backends[2], Backend::default(), "b's backend went");
        // Its service id is free again: the next frontend takes it.
        b.sink.frontend_room = 2;
        let fc = frontend(vip(3), &[backend(1)]);
        b.set_service("ns/c", vec![fc.clone()]);
        assert_eq!(entry(b.sink, &fc).id, 1);
    }

    #[test]
    fn a_restarted_balancer_adopts_the_maps_and_rewrites_nothing() {
        let c = caps(16, 16, 4000);
        let mut sink = MemSink::new(c);
        let mut web = frontend(vip(1), &[backend(1), backend(2)]);
        web.affinity = Some(600);
        let mut node_port = web.clone();
        node_port.scope = Scope::NodePort;
        node_port.port = 30080;
        let gone = frontend(vip(2), &[backend(3)]);
        {
            let mut b = Balancer::new(&mut sink, c).expect("balancer");
            b.set_service("ns/web", vec![web.clone(), node_port.clone()]);
            b.set_service("ns/gone", vec![gone.clone()]);
        }
        let before = sink.frontends.clone();
        sink.log.clear();

        let mut b = Balancer::new(&mut sink, c).expect("adopting balancer");
        assert_eq!(b.adopted.len(), 3);
        b.set_service("ns/web", vec![node_port.clone(), web.clone()]);
        for op in &b.sink.log {
            match op {
                Op::SetFrontend(k, e) => assert_eq!(before.get(k), Some(e), "unchanged entry"),
                other => panic!("an adopted state was rewritten: {other:?}"),
            }
        }
        // The Service deleted while the agent was away goes once the
        // complete state has been applied; the one still wanted stays.
        b.drop_unclaimed();
        assert!(!b.sink.frontends.contains_key(&gone.key()));
        assert_eq!(b.sink.backends[3], Backend::default(), "its backend went");
        assert_eq!(b.sink.frontends.get(&web.key()), before.get(&web.key()));
        // New frontends get ids and slots nobody holds.
        let fresh = frontend(vip(3), &[backend(4)]);
        b.set_service("ns/fresh", vec![fresh.clone()]);
        let e = entry(b.sink, &fresh);
        let held: Vec<ServiceEntry> = b.sink.frontends.values().copied().collect();
        for other in held.iter().filter(|o| **o != e) {
            assert_ne!(other.id, e.id);
            let (a, z) = (other.table_offset, other.table_offset + other.table_size);
            assert!(e.table_offset >= z || e.table_offset + e.table_size <= a);
        }
        assert_eq!(
            b.backends[&(backend(4).addr, 8080)].id,
            4,
            "ids 1-3 were taken or quarantined"
        );
    }
}
