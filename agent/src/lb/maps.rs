//! The load-balancer's maps, seen from the agent: typed handles on the maps
//! the programs read, and the Maglev slot array mapped into memory so that
//! a table of thousands of slots is one copy, not thousands of syscalls.

use std::{os::fd::AsFd as _, ptr::NonNull};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use weft_common as common;
use weft_common::{
    AffinityEntry, AffinityKey, Backend, CtEntry, CtKey, LbConfig, ServiceCounters, ServiceEntry,
    ServiceKey, SockEntry, SockKey,
};

use super::balancer::{Sink, SinkError};
use crate::bpf::{BpfError, Datapath};

/// Typed handles on every load-balancer map.
pub struct LbMaps {
    pub(crate) services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub(crate) backends: Array<MapData, Backend>,
    pub(crate) ct: HashMap<MapData, CtKey, CtEntry>,
    pub(crate) affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub(crate) sock: HashMap<MapData, SockKey, SockEntry>,
    pub(crate) counters: PerCpuArray<MapData, ServiceCounters>,
    /// Connection-tracking entries the programs made and removed.
    pub(crate) ct_stats: PerCpuArray<MapData, common::CtStats>,
    pub(crate) config: Array<MapData, LbConfig>,
    pub(crate) maglev: Slots,
    /// Kept open: the mapping of `maglev` refers to it.
    _maglev_map: MapData,
}

impl std::fmt::Debug for LbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbMaps")
            .field("maglev_slots", &self.maglev.len)
            .finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn take(dp: &mut Datapath, name: &'static str) -> Result<Map, BpfError> {
    dp.take_map(name).ok_or(BpfError::Missing(name))
}

impl LbMaps {
    /// Takes the load-balancer maps out of a loaded datapath.
    ///
    /// # Errors
    /// When a map is missing or of the wrong type, or the Maglev array
    /// cannot be mapped.
    pub fn take(dp: &mut Datapath) -> Result<Self, BpfError> {
        let maglev_map = match take(dp, common::LB_MAGLEV_MAP)? {
            Map::Array(m) => m,
            _ => {
                return Err(BpfError::Missing(common::LB_MAGLEV_MAP));
            }
        };
        let maglev = Slots::map(&maglev_map)?;
        Ok(Self {
            services: HashMap::try_from(take(dp, common::LB_SERVICES_MAP)?)
                .map_err(map_err(common::LB_SERVICES_MAP))?,
            backends: Array::try_from(take(dp, common::LB_BACKENDS_MAP)?)
                .map_err(map_err(common::LB_BACKENDS_MAP))?,
            ct: HashMap::try_from(take(dp, common::LB_CT_MAP)?)
                .map_err(map_err(common::LB_CT_MAP))?,
            affinity: HashMap::try_from(take(dp, common::LB_AFFINITY_MAP)?)
                .map_err(map_err(common::LB_AFFINITY_MAP))?,
            sock: HashMap::try_from(take(dp, common::LB_SOCK_MAP)?)
                .map_err(map_err(common::LB_SOCK_MAP))?,
            counters: PerCpuArray::try_from(take(dp, common::LB_COUNTERS_MAP)?)
                .map_err(map_err(common::LB_COUNTERS_MAP))?,
            ct_stats: PerCpuArray::try_from(take(dp, common::LB_CT_STATS_MAP)?)
                .map_err(map_err(common::LB_CT_STATS_MAP))?,
            config: Array::try_from(take(dp, common::LB_CONFIG_MAP)?)
                .map_err(map_err(common::LB_CONFIG_MAP))?,
            maglev,
            _maglev_map: maglev_map,
        })
    }

    /// Connection-tracking entries evicted to make room: those made less
    /// those removed less those present (`present`, counted by the caller).
    #[must_use]
    pub fn ct_evicted(&self, present: u64) -> u64 {
        let Ok(per_cpu) = self.ct_stats.get(&0, 0) else {
            return 0;
        };
        let (made, removed) = per_cpu
            .iter()
            .fold((0u64, 0u64), |(m, r), c| (m + c.inserted, r + c.removed));
        made.saturating_sub(removed).saturating_sub(present)
    }

    /// The counters of service `id`, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&self, id: u32) -> Result<ServiceCounters, BpfError> {
        let per_cpu = self
            .counters
            .get(&id, 0)
            .map_err(map_err(common::LB_COUNTERS_MAP))?;
        Ok(per_cpu
            .iter()
            .fold(ServiceCounters::default(), |mut acc, c| {
                acc.packets += c.packets;
                acc.bytes += c.bytes;
                acc.connections += c.connections;
                acc.refused += c.refused;
                acc.dropped += c.dropped;
                acc
            }))
    }

    /// Zeroes the counters of a service id about to be reused.
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn reset_counters(&mut self, id: u32) -> Result<(), BpfError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| BpfError::Map {
            name: common::LB_COUNTERS_MAP,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error: e,
            }),
        })?;
        let zero = aya::maps::PerCpuValues::try_from(vec![ServiceCounters::default(); cpus])
            .map_err(|e| BpfError::Map {
                name: common::LB_COUNTERS_MAP,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "per-cpu values",
                    io_error: e,
                }),
            })?;
        self.counters
            .set(id, zero, 0)
            .map_err(map_err(common::LB_COUNTERS_MAP))
    }
}

/// The Maglev slot array, mapped read-write into the agent.
///
/// The kernel keeps array elements 8-byte aligned, so each `u32` slot
/// takes 8 bytes of the mapping: the value in the low half (little-endian
/// hosts, as BPF here), the high half unused.
pub struct Slots {
    ptr: NonNull<u64>,
    len: u32,
    bytes: usize,
}

// SAFETY: the mapping is owned by `Slots` and only written through `&mut`.
unsafe impl Send for Slots {}
// SAFETY: shared references only read.
unsafe impl Sync for Slots {}

impl Slots {
    fn map(map: &MapData) -> Result<Self, BpfError> {
        let info = map.info().map_err(map_err(common::LB_MAGLEV_MAP))?;
        let len = info.max_entries();
        let page = 4096usize;
        let bytes = (len as usize * 8).div_ceil(page) * page;
        let fd = map.fd().as_fd();
        // SAFETY: mapping a BPF_F_MMAPABLE array map's fd, shared, at its
        // full size; the pointer is checked below and unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Io {
                what: "mmap the Maglev map",
                path: common::LB_MAGLEV_MAP.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned a pointer"),
            len,
            bytes,
        })
    }

    /// Number of slots.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the array has no slot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `table` into the slots from `offset`.
    ///
    /// # Panics
    /// When the range is outside the array (an allocator bug).
    pub fn write(&mut self, offset: u32, table: &[u32]) {
        let end = offset as usize + table.len();
        assert!(end <= self.len as usize, "Maglev range out of the array");
        // SAFETY: in bounds (checked above) of a live read-write mapping.
        let slots = unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset as usize), table.len())
        };
        for (slot, id) in slots.iter_mut().zip(table) {
            *slot = u64::from(*id);
        }
    }

    /// Reads `len` slots from `offset`.
    #[must_use]
    pub fn read(&self, offset: u32, len: u32) -> Vec<u32> {
        let end = (offset as usize + len as usize).min(self.len as usize);
        let start = (offset as usize).min(end);
        // SAFETY: in bounds of a live mapping.
        let slots =
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(start), end - start) };
        slots.iter().map(|v| *v as u32).collect()
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
        }
    }
}

fn sink_err(map: &'static str) -> impl FnOnce(MapError) -> SinkError {
    move |e| SinkError::Map {
        map,
        reason: e.to_string(),
    }
}

/// The balancer's writes, onto the pinned maps.
impl Sink for LbMaps {
    fn frontends(&self) -> Result<Vec<(ServiceKey, ServiceEntry)>, SinkError> {
        self.services
            .iter()
            .map(|item| item.map_err(sink_err(common::LB_SERVICES_MAP)))
            .collect()
    }

    fn backend(&self, id: u32) -> Option<Backend> {
        self.backends.get(&id, 0).ok()
    }

    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), SinkError> {
        self.backends
            .set(id, backend, 0)
            .map_err(sink_err(common::LB_BACKENDS_MAP))
    }

    fn set_frontend(&mut self, key: ServiceKey, entry: ServiceEntry) -> Result<(), SinkError> {
        self.services.insert(key, entry, 0).map_err(|e| {
            let full = matches!(&e, MapError::SyscallError(s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG));
            if full {
                SinkError::Full
            } else {
                sink_err(common::LB_SERVICES_MAP)(e)
            }
        })
    }

    fn del_frontend(&mut self, key: &ServiceKey) -> Result<(), SinkError> {
        self.services
            .remove(key)
            .map_err(sink_err(common::LB_SERVICES_MAP))
    }

    fn table_slots(&self) -> u32 {
        self.maglev.len()
    }

    fn read_table(&self, offset: u32, len: u32) -> Vec<u32> {
        self.maglev.read(offset, len)
    }

    fn write_table(&mut self, offset: u32, table: &[u32]) {
        self.maglev.write(offset, table);
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), SinkError> {
        LbMaps::reset_counters(self, id).map_err(|e| SinkError::Map {
            map: common::LB_COUNTERS_MAP,
            reason: e.to_string(),
        })
    }

    fn set_config(&mut self, cfg: LbConfig) -> Result<(), SinkError> {
        self.config
            .set(0, cfg, 0)
            .map_err(sink_err(common::LB_CONFIG_MAP))
    }
}
