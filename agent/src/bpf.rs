//! Loads Weft's eBPF object (built from `weft-ebpf` by build.rs) and attaches
//! its tc programs. For now: per-pod packet and byte counters on the host
//! side of pod veths. The load-balancer programs will join them here.
//!
//! tc attachment resolves interface names and indexes in the calling
//! thread's network namespace, so attaching runs inside the node's namespace
//! through [`netns::run_in`]; the program and map fds work from anywhere.
//!
//! Programs are attached as classic tc filters (clsact + cls_bpf in
//! direct-action mode) rather than as TCX links: a TCX attach commits with a
//! full RCU grace period, 6-12 ms each here, which made the two attaches the
//! largest part of a pod's network setup. The filters cost about 0.3 ms.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::PerCpuHashMap,
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions},
    },
};
use weft_common::{IF_COUNTERS_MAP, IfCounters};

use crate::netlink::netns;

const FROM_POD: &str = "weft_count_from_pod";
const TO_POD: &str = "weft_count_to_pod";

/// Errors of the bpf module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BpfError {
    /// The object could not be loaded into the kernel.
    #[error("loading the eBPF object failed (is this kernel built with BPF and BTF?): {0}")]
    Load(#[from] aya::EbpfError),
    /// A program is missing or failed to load or attach.
    #[error("eBPF program {name}: {source}")]
    Program {
        /// Program name.
        name: &'static str,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("eBPF map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Switching namespace failed.
    #[error(transparent)]
    Netns(#[from] crate::netlink::NetlinkError),
    /// The program is not in the object.
    #[error("eBPF program {0} is not in the object")]
    Missing(&'static str),
}

/// The eBPF object and its links, for one node.
pub struct Datapath {
    ebpf: Ebpf,
    netns: Option<String>,
    /// Per interface: the ingress and egress links. Dropping them detaches.
    links: HashMap<String, [SchedClassifierLink; 2]>,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("netns", &self.netns)
            .field("attached", &self.links.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The compiled eBPF object. `include_bytes_aligned!` because the ELF parser
/// needs 8-byte-aligned data.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf"));

impl Datapath {
    /// Loads the programs for the node whose namespace is `netns` (`None`:
    /// the agent's own).
    ///
    /// # Errors
    /// When the kernel refuses the object.
    pub fn load(netns: Option<&str>) -> Result<Self, BpfError> {
        let mut ebpf = Ebpf::load(OBJECT)?;
        for name in [FROM_POD, TO_POD] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            netns: netns.map(str::to_string),
            links: HashMap::new(),
        })
    }

    /// Attaches the counters to the host side of a pod veth (idempotent).
    ///
    /// # Errors
    /// When the interface does not exist or the kernel refuses.
    pub fn attach_pod(&mut self, host_veth: &str) -> Result<(), BpfError> {
        if self.links.contains_key(host_veth) {
            return Ok(());
        }
        let ebpf = &mut self.ebpf;
        let iface = host_veth.to_string();
        let links = netns::run_in(
            self.netns.as_deref(),
            move || -> Result<[SchedClassifierLink; 2], BpfError> {
                // Already there on a second call: then EEXIST, which is fine.
                let _ = tc::qdisc_add_clsact(&iface);
                let mut out = Vec::with_capacity(2);
                for (name, dir) in [
                    (FROM_POD, TcAttachType::Ingress),
                    (TO_POD, TcAttachType::Egress),
                ] {
                    let prog: &mut SchedClassifier = ebpf
                        .program_mut(name)
                        .ok_or(BpfError::Missing(name))?
                        .try_into()
                        .map_err(|source| BpfError::Program { name, source })?;
                    let id = prog
                        .attach_with_options(
                            &iface,
                            dir,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                        .map_err(|source| BpfError::Program { name, source })?;
                    let link = prog
                        .take_link(id)
                        .map_err(|source| BpfError::Program { name, source })?;
                    out.push(link);
                }
                let [a, b]: [SchedClassifierLink; 2] =
                    out.try_into().map_err(|_| BpfError::Missing(FROM_POD))?;
                Ok([a, b])
            },
        )??;
        self.links.insert(host_veth.to_string(), links);
        Ok(())
    }

    /// Forgets a pod's links and its counters. Deleting the veth already
    /// detached the programs in the kernel.
    pub fn detach_pod(&mut self, host_veth: &str, ifindex: Option<u32>) {
        self.links.remove(host_veth);
        if let (Some(idx), Ok(mut map)) = (ifindex, self.counters_map()) {
            let _ = map.remove(&idx);
        }
    }

    fn counters_map(
        &mut self,
    ) -> Result<PerCpuHashMap<&mut aya::maps::MapData, u32, IfCounters>, BpfError> {
        let map = self
            .ebpf
            .map_mut(IF_COUNTERS_MAP)
            .ok_or(BpfError::Missing(IF_COUNTERS_MAP))?;
        PerCpuHashMap::try_from(map).map_err(|source| BpfError::Map {
            name: IF_COUNTERS_MAP,
            source,
        })
    }

    /// The counters of one interface, summed over CPUs (zero if it saw no packet).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&mut self, ifindex: u32) -> Result<IfCounters, BpfError> {
        let map = self.counters_map()?;
        let per_cpu = match map.get(&ifindex, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(IfCounters::default()),
            Err(source) => {
                return Err(BpfError::Map {
                    name: IF_COUNTERS_MAP,
                    source,
                });
            }
        };
        Ok(per_cpu.iter().fold(IfCounters::default(), |mut acc, c| {
            acc.tx_packets += c.tx_packets;
            acc.tx_bytes += c.tx_bytes;
            acc.rx_packets += c.rx_packets;
            acc.rx_bytes += c.rx_bytes;
            acc
        }))
    }

    /// Interfaces with attached counters.
    #[must_use]
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<_> = self.links.keys().cloned().collect();
        v.sort();
        v
    }
}
