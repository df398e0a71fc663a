//! Loads Weft's eBPF object (built from `weft-ebpf` by build.rs) and attaches
//! its programs: tc on the host side of pod veths (per-pod counters and the
//! packet path of the Service load-balancer) and the cgroup sock_addr hooks
//! of the socket path on the node's cgroup. The [`crate::lb`] module fills
//! the load-balancer's maps.
//!
//! With a pin directory (the agent: /sys/fs/bpf/weft/<node>), every map and
//! every cgroup link is pinned there, and tc filters are attached at a fixed
//! priority and handle and left in place on exit. A restarted or upgraded
//! agent reuses the pinned maps and replaces the programs in place, so
//! forwarding and established connections carry on while it is away.
//!
//! tc attachment resolves interface names and indexes in the calling
//! thread's network namespace, so attaching runs inside the node's namespace
//! through [`netns::run_in`]; the program and map fds work from anywhere.
//!
//! Programs are attached as classic tc filters (clsact + cls_bpf in
//! direct-action mode) rather than as TCX links: a TCX attach commits with a
//! full RCU grace period, 6-12 ms each here, which made the two attaches the
//! largest part of a pod's network setup. The filters cost about 0.3 ms.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, PerCpuHashMap},
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};
use weft_common as common;
use weft_common::{IF_COUNTERS_MAP, IfCounters};

use crate::netlink::netns;

const FROM_POD: &str = "weft_from_pod";
const TO_POD: &str = "weft_to_pod";
const NODEPORT_IN: &str = "weft_nodeport_in";
const NODEPORT_OUT: &str = "weft_nodeport_out";
/// The socket-path hooks, attached to the node's cgroup.
pub const SOCK_PROGRAMS: [&str; 4] = [
    "weft_connect4",
    "weft_sendmsg4",
    "weft_recvmsg4",
    "weft_getpeername4",
];
/// Where Weft's tc filters sit: a fixed place, so that a restarted agent
/// replaces them instead of stacking new ones.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 1);

/// Sizes of the load-balancer maps (entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LbSizes {
    /// Frontends (service ports, NodePorts).
    pub services: u32,
    /// Backends.
    pub backends: u32,
    /// Maglev slots over all services.
    pub maglev: u32,
    /// Connection-tracking entries (two per flow on the packet path).
    pub ct: u32,
    /// Session affinity entries.
    pub affinity: u32,
    /// Socket translations (two per connected socket).
    pub sock: u32,
}

impl Default for LbSizes {
    fn default() -> Self {
        Self {
            services: common::LB_SERVICES_MAX,
            backends: common::LB_BACKENDS_MAX,
            maglev: common::LB_MAGLEV_MAX,
            ct: common::LB_CT_MAX,
            affinity: common::LB_AFFINITY_MAX,
            sock: common::LB_SOCK_MAX,
        }
    }
}

impl LbSizes {
    /// Per map: its name, entries, and key and value sizes (a pinned map
    /// is reused only when all three agree).
    fn per_map(&self) -> [(&'static str, u32, usize, usize); 13] {
        use std::mem::size_of;
        [
            (
                common::LB_SERVICES_MAP,
                self.services,
                size_of::<common::ServiceKey>(),
                size_of::<common::ServiceEntry>(),
            ),
            (
                common::LB_BACKENDS_MAP,
                self.backends,
                4,
                size_of::<common::Backend>(),
            ),
            (common::LB_MAGLEV_MAP, self.maglev, 4, 4),
            (
                common::LB_CT_MAP,
                self.ct,
                size_of::<common::CtKey>(),
                size_of::<common::CtEntry>(),
            ),
            (
                common::LB_AFFINITY_MAP,
                self.affinity,
                size_of::<common::AffinityKey>(),
                size_of::<common::AffinityEntry>(),
            ),
            (
                common::LB_SOCK_MAP,
                self.sock,
                size_of::<common::SockKey>(),
                size_of::<common::SockEntry>(),
            ),
            (
                common::LB_COUNTERS_MAP,
                self.services,
                4,
                size_of::<common::ServiceCounters>(),
            ),
            (
                IF_COUNTERS_MAP,
                common::IF_COUNTERS_MAX,
                4,
                size_of::<IfCounters>(),
            ),
            // Pinned, so that a restarting agent's pods stay guarded.
            (
                common::POD_ADDRS_MAP,
                common::POD_ADDRS_MAX,
                4,
                size_of::<common::PodAddr>(),
            ),
            (
                common::SPOOFED_MAP,
                common::IF_COUNTERS_MAX,
                4,
                size_of::<common::SpoofCounters>(),
            ),
            (
                common::DNS_BUCKETS_MAP,
                common::IF_COUNTERS_MAX,
                4,
                size_of::<common::DnsBucket>(),
            ),
            (common::DNS_LIMIT_MAP, 1, 4, size_of::<common::DnsLimit>()),
            (common::LB_CT_STATS_MAP, 1, 4, size_of::<common::CtStats>()),
        ]
    }
}

/// Sizes of the NetworkPolicy maps (entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicySizes {
    /// Local pods under policy (also the counters' slots).
    pub endpoints: u32,
    /// Pod addresses with an identity, over the whole cluster.
    pub identities: u32,
    /// ipBlock prefixes.
    pub cidrs: u32,
    /// Rule entries over all local pods.
    pub rules: u32,
    /// Tracked flows of isolated pods.
    pub ct: u32,
}

impl Default for PolicySizes {
    fn default() -> Self {
        Self {
            endpoints: common::POL_ENDPOINTS_MAX,
            identities: common::POL_IDENTITIES_MAX,
            cidrs: common::POL_CIDRS_MAX,
            rules: common::POL_RULES_MAX,
            ct: common::POL_CT_MAX,
        }
    }
}

impl PolicySizes {
    /// As [`LbSizes::per_map`]. LPM trie keys carry their 4-byte prefix
    /// length.
    fn per_map(&self) -> [(&'static str, u32, usize, usize); 8] {
        use std::mem::size_of;
        [
            (
                common::POL_ENDPOINTS_MAP,
                self.endpoints,
                4,
                size_of::<common::PolicyEndpoint>(),
            ),
            (common::POL_IDENTITIES_MAP, self.identities, 4, 4),
            (common::POL_CIDRS_MAP, self.cidrs, 8, 4),
            (
                common::POL_RULES_MAP,
                self.rules,
                4 + size_of::<common::RuleKey>(),
                size_of::<common::RuleValue>(),
            ),
            (
                common::POL_CT_MAP,
                self.ct,
                size_of::<common::PolicyCtKey>(),
                size_of::<common::PolicyCtEntry>(),
            ),
            (
                common::POL_COUNTERS_MAP,
                self.endpoints,
                4,
                size_of::<common::PolicyCounters>(),
            ),
            (
                common::POL_FRAGS_MAP,
                common::POL_FRAGS_MAX,
                size_of::<common::PolicyFragKey>(),
                8,
            ),
            (
                common::POL_ALLOWED_MAP,
                common::POL_ALLOWED_MAX,
                size_of::<common::PolicyUse>(),
                8,
            ),
        ]
    }
}

/// How to load the datapath.
#[derive(Clone, Debug, Default)]
pub struct DatapathOptions {
    /// The node's network namespace (`None`: the caller's).
    pub netns: Option<String>,
    /// bpffs directory for pinned maps and links (`None`: nothing pinned,
    /// everything goes when the [`Datapath`] is dropped).
    pub pin_dir: Option<PathBuf>,
    /// Load-balancer map sizes.
    pub sizes: LbSizes,
    /// NetworkPolicy map sizes.
    pub policy_sizes: PolicySizes,
}

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
    /// A file operation (pins, cgroups) failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BpfError + 'a {
    move |source| BpfError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The eBPF object and its links, for one node.
pub struct Datapath {
    ebpf: Ebpf,
    netns: Option<String>,
    pin_dir: Option<PathBuf>,
    /// Interfaces whose filters this datapath attached or took over.
    attached: HashSet<String>,
    /// Unpinned tc links: dropping them detaches (tests without a pin dir).
    tc_links: Vec<SchedClassifierLink>,
    /// Unpinned cgroup links, likewise.
    cgroup_links: Vec<FdLink>,
    /// DNS queries dropped by the rate limit for pods since removed.
    dns_dropped_removed: u64,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("netns", &self.netns)
            .field("pin_dir", &self.pin_dir)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// The compiled eBPF object. `include_bytes_aligned!` because the ELF parser
/// needs 8-byte-aligned data.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/weft-ebpf"));

impl Datapath {
    /// Loads the programs for the node whose namespace is `netns` (`None`:
    /// the agent's own), unpinned, with default map sizes.
    ///
    /// # Errors
    /// When the kernel refuses the object.
    pub fn load(netns: Option<&str>) -> Result<Self, BpfError> {
        Self::load_with(&DatapathOptions {
            netns: netns.map(str::to_string),
            ..DatapathOptions::default()
        })
    }

    /// Loads the programs as `opts` says; with a pin directory, maps pinned
    /// there by an earlier agent are taken over with their contents.
    ///
    /// # Errors
    /// When the kernel refuses the object or the pin directory is unusable.
    pub fn load_with(opts: &DatapathOptions) -> Result<Self, BpfError> {
        let mut loader = EbpfLoader::new();
        let maps: Vec<_> = opts
            .sizes
            .per_map()
            .into_iter()
            .chain(opts.policy_sizes.per_map())
            .collect();
        for &(name, size, _, _) in &maps {
            loader.map_max_entries(name, size);
        }
        let mut pins = Vec::new();
        let mut resized = Vec::new();
        if let Some(dir) = &opts.pin_dir {
            ensure_bpffs(dir)?;
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
            for &(name, size, key, value) in &maps {
                let path = dir.join(name);
                if let Some(old) = drop_incompatible_pin(&path, size, key, value) {
                    resized.push((name, old));
                }
                pins.push((name, path));
            }
        }
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        // A map given another size starts with what the old one held, before
        // any program of this agent runs on it: a policy map starting empty
        // would let everything through until the first sync.
        for (name, old) in resized {
            if let Some(new) = ebpf.map_mut(name) {
                match carry_over(name, old, new) {
                    Ok(Some(n)) => tracing::info!(
                        map = name,
                        entries = n,
                        "entries carried over to the resized map"
                    ),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(map = name, error = %e, "cannot carry the entries over to the resized map")
                    }
                }
            }
        }
        for name in [FROM_POD, TO_POD, NODEPORT_IN, NODEPORT_OUT] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            prog.load()
                .map_err(|source| BpfError::Program { name, source })?;
        }
        Ok(Self {
            ebpf,
            netns: opts.netns.clone(),
            pin_dir: opts.pin_dir.clone(),
            attached: HashSet::new(),
            tc_links: Vec::new(),
            cgroup_links: Vec::new(),
            dns_dropped_removed: 0,
        })
    }

    /// Moves a map out of the object, for the load-balancer's map writer.
    #[must_use]
    pub fn take_map(&mut self, name: &str) -> Option<aya::maps::Map> {
        self.ebpf.take_map(name)
    }

    /// Attaches the pod programs to the host side of a pod veth (idempotent).
    /// Filters an earlier agent left there get this agent's programs in
    /// place, without a moment with none.
    ///
    /// # Errors
    /// When the interface does not exist or the kernel refuses.
    pub fn attach_pod(&mut self, host_veth: &str) -> Result<(), BpfError> {
        self.attach_tc(host_veth, [FROM_POD, TO_POD])
    }

    /// Attaches the NodePort programs to the node's uplink (idempotent, and
    /// replacing an earlier agent's in place).
    ///
    /// # Errors
    /// When the interface does not exist or the kernel refuses.
    pub fn attach_uplink(&mut self, uplink: &str) -> Result<(), BpfError> {
        self.attach_tc(uplink, [NODEPORT_IN, NODEPORT_OUT])
    }

    /// Attaches `programs` (ingress, egress) to `iface`.
    fn attach_tc(&mut self, iface: &str, programs: [&'static str; 2]) -> Result<(), BpfError> {
        if self.attached.contains(iface) {
            return Ok(());
        }
        let ebpf = &mut self.ebpf;
        let host_veth = iface;
        let iface = iface.to_string();
        let keep = self.pin_dir.is_some();
        let links = netns::run_in(
            self.netns.as_deref(),
            move || -> Result<Vec<SchedClassifierLink>, BpfError> {
                // Already there on a second call: then EEXIST, which is fine.
                let _ = tc::qdisc_add_clsact(&iface);
                let mut out = Vec::with_capacity(2);
                for (name, dir) in [
                    (programs[0], TcAttachType::Ingress),
                    (programs[1], TcAttachType::Egress),
                ] {
                    let prog: &mut SchedClassifier = ebpf
                        .program_mut(name)
                        .ok_or(BpfError::Missing(name))?
                        .try_into()
                        .map_err(|source| BpfError::Program { name, source })?;
                    let fresh = prog.attach_with_options(
                        &iface,
                        dir,
                        TcAttachOptions::Netlink(NlOptions {
                            priority: TC_PRIORITY,
                            handle: TC_HANDLE,
                            classid: None,
                        }),
                    );
                    let id = match fresh {
                        Ok(id) => id,
                        // An earlier agent's filter: replace its program.
                        Err(_) => {
                            let old = SchedClassifierLink::attached(
                                &iface,
                                dir,
                                TC_PRIORITY,
                                TC_HANDLE,
                                None,
                            )
                            .map_err(|source| BpfError::Io {
                                what: "find the tc filter of",
                                path: PathBuf::from(&iface),
                                source,
                            })?;
                            prog.attach_to_link(old)
                                .map_err(|source| BpfError::Program { name, source })?
                        }
                    };
                    let link = prog
                        .take_link(id)
                        .map_err(|source| BpfError::Program { name, source })?;
                    if keep {
                        // Dropping the link would detach the filter; with
                        // pins the filter outlives this agent on purpose.
                        std::mem::forget(link);
                    } else {
                        out.push(link);
                    }
                }
                Ok(out)
            },
        )??;
        self.tc_links.extend(links);
        self.attached.insert(host_veth.to_string());
        Ok(())
    }

    /// Attaches the socket-path programs to a cgroup (v2 directory). With a
    /// pin directory the links are pinned there and an earlier agent's
    /// links are replaced: the new link goes on first, then the old one
    /// comes off, so no connect() is missed. The earlier program, still
    /// attached for that moment, leaves translated addresses alone.
    ///
    /// # Errors
    /// When the cgroup cannot be opened or the kernel refuses.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<(), BpfError> {
        let dir = std::fs::File::open(cgroup).map_err(io_err("open cgroup", cgroup))?;
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(BpfError::Missing(name))?
                .try_into()
                .map_err(|source| BpfError::Program { name, source })?;
            // A cgroup bpf_link takes no flags (EINVAL otherwise): links
            // always stack with other programs of the cgroup.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| BpfError::Program { name, source })?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|source| BpfError::Program { name, source })?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| BpfError::Io {
                    what: "convert the link of",
                    path: PathBuf::from(name),
                    source: std::io::Error::other(e.to_string()),
                })?;
            let Some(pins) = &self.pin_dir else {
                self.cgroup_links.push(link);
                continue;
            };
            let links = pins.join("links");
            std::fs::create_dir_all(&links).map_err(io_err("create", &links))?;
            let path = links.join(name);
            // bpffs refuses names with a dot.
            let staged = links.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&staged);
            link.pin(&staged).map_err(|e| BpfError::Io {
                what: "pin",
                path: staged.clone(),
                source: std::io::Error::other(format!("{e:?}")),
            })?;
            if let Ok(old) = PinnedLink::from_pin(&path) {
                // Unpinned and dropped: the kernel detaches it.
                drop(old.unpin());
            }
            std::fs::rename(&staged, &path).map_err(io_err("rename", &staged))?;
        }
        Ok(())
    }

    /// Forgets a pod's links and its counters. Deleting the veth already
    /// detached the programs in the kernel.
    pub fn detach_pod(&mut self, host_veth: &str, ifindex: Option<u32>) {
        self.attached.remove(host_veth);
        let Some(idx) = ifindex else { return };
        if let Ok(mut map) = self.counters_map() {
            let _ = map.remove(&idx);
        }
        if let Some(m) = self.ebpf.map_mut(common::DNS_BUCKETS_MAP)
            && let Ok(mut h) = aya::maps::HashMap::<_, u32, common::DnsBucket>::try_from(m)
        {
            if let Ok(b) = h.get(&idx, 0) {
                self.dns_dropped_removed += b.dropped;
            }
            let _ = h.remove(&idx);
        }
        for name in [common::POD_ADDRS_MAP, common::SPOOFED_MAP] {
            if let Some(m) = self.ebpf.map_mut(name) {
                let _ = match name {
                    common::POD_ADDRS_MAP => {
                        aya::maps::HashMap::<_, u32, common::PodAddr>::try_from(m)
                            .map(|mut h| h.remove(&idx))
                    }
                    _ => PerCpuHashMap::<_, u32, common::SpoofCounters>::try_from(m)
                        .map(|mut h| h.remove(&idx)),
                };
            }
        }
    }

    /// Registers the pod behind the veth of `ifindex`: what it sends must
    /// carry `ip` and `mac` as its source (`guard` in the programs). Done
    /// before the programs are attached, so no frame passes unjudged.
    ///
    /// # Errors
    /// When the map is full or cannot be written.
    pub fn guard_pod(
        &mut self,
        ifindex: u32,
        ip: std::net::Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), BpfError> {
        let name = common::POD_ADDRS_MAP;
        let map = self.ebpf.map_mut(name).ok_or(BpfError::Missing(name))?;
        let mut h = aya::maps::HashMap::<_, u32, common::PodAddr>::try_from(map)
            .map_err(|source| BpfError::Map { name, source })?;
        let addr = common::PodAddr {
            ip: u32::from(ip).to_be(),
            mac,
            pad: [0; 2],
        };
        h.insert(ifindex, addr, 0)
            .map_err(|source| BpfError::Map { name, source })
    }

    /// Stops judging what the pod behind `ifindex` sends (its frames then
    /// pass the anti-spoofing check unexamined). For benchmarks that
    /// measure the check's cost; the agent never unguards a live pod.
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn unguard_pod(&mut self, ifindex: u32) -> Result<(), BpfError> {
        let name = common::POD_ADDRS_MAP;
        let map = self.ebpf.map_mut(name).ok_or(BpfError::Missing(name))?;
        let mut h = aya::maps::HashMap::<_, u32, common::PodAddr>::try_from(map)
            .map_err(|source| BpfError::Map { name, source })?;
        match h.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(BpfError::Map { name, source }),
        }
    }

    /// Sets the DNS rate limit of every pod: `rate` queries per second,
    /// `burst` at once (rate 0: none).
    ///
    /// # Errors
    /// When the map cannot be written.
    pub fn set_dns_limit(&mut self, rate: u32, burst: u32) -> Result<(), BpfError> {
        let name = common::DNS_LIMIT_MAP;
        let map = self.ebpf.map_mut(name).ok_or(BpfError::Missing(name))?;
        let mut a = aya::maps::Array::<_, common::DnsLimit>::try_from(map)
            .map_err(|source| BpfError::Map { name, source })?;
        a.set(0, common::DnsLimit { rate, burst }, 0)
            .map_err(|source| BpfError::Map { name, source })
    }

    /// DNS queries the rate limit dropped, of every pod this datapath has
    /// had since it loaded (and before, for the pinned pods' buckets).
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn dns_rate_limited(&mut self) -> Result<u64, BpfError> {
        let name = common::DNS_BUCKETS_MAP;
        let map = self.ebpf.map_mut(name).ok_or(BpfError::Missing(name))?;
        let h = aya::maps::HashMap::<_, u32, common::DnsBucket>::try_from(map)
            .map_err(|source| BpfError::Map { name, source })?;
        let now: u64 = h
            .iter()
            .filter_map(Result::ok)
            .map(|(_, b)| b.dropped)
            .sum();
        Ok(now + self.dns_dropped_removed)
    }

    /// What the pod behind `ifindex` sent with forged addresses, summed
    /// over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn spoofed(&mut self, ifindex: u32) -> Result<common::SpoofCounters, BpfError> {
        let name = common::SPOOFED_MAP;
        let map = self.ebpf.map_mut(name).ok_or(BpfError::Missing(name))?;
        let h = PerCpuHashMap::<_, u32, common::SpoofCounters>::try_from(map)
            .map_err(|source| BpfError::Map { name, source })?;
        let per_cpu = match h.get(&ifindex, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(common::SpoofCounters::default()),
            Err(source) => return Err(BpfError::Map { name, source }),
        };
        Ok(per_cpu
            .iter()
            .fold(common::SpoofCounters::default(), |mut a, c| {
                a.mac += c.mac;
                a.ip += c.ip;
                a.arp += c.arp;
                a.other += c.other;
                a
            }))
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
        let mut v: Vec<_> = self.attached.iter().cloned().collect();
        v.sort();
        v
    }
}

/// Copies the entries of `old` into `new` (same layout, another size), for
/// the maps whose content decides verdicts. `None`: not such a map.
fn carry_over(
    name: &str,
    old: aya::maps::MapData,
    new: &mut aya::maps::Map,
) -> Result<Option<usize>, aya::maps::MapError> {
    use aya::maps::Map;
    use common::{PolicyCtEntry, PolicyCtKey, PolicyEndpoint, RuleKey, RuleValue};
    Ok(Some(match name {
        common::POL_ENDPOINTS_MAP => copy_hash::<u32, PolicyEndpoint>(&Map::HashMap(old), new)?,
        common::POL_IDENTITIES_MAP => copy_hash::<u32, u32>(&Map::HashMap(old), new)?,
        common::POL_CT_MAP => copy_hash::<PolicyCtKey, PolicyCtEntry>(&Map::LruHashMap(old), new)?,
        common::POL_CIDRS_MAP => copy_lpm::<u32, u32>(&Map::LpmTrie(old), new)?,
        common::POL_RULES_MAP => copy_lpm::<RuleKey, RuleValue>(&Map::LpmTrie(old), new)?,
        // The per-pod counters `weft policy show` reports.
        common::POL_COUNTERS_MAP => {
            let old = Map::PerCpuArray(old);
            let old = aya::maps::PerCpuArray::<_, common::PolicyCounters>::try_from(&old)?;
            let mut new = aya::maps::PerCpuArray::<_, common::PolicyCounters>::try_from(new)?;
            let mut n = 0;
            for i in 0..old.len().min(new.len()) {
                if let Ok(v) = old.get(&i, 0)
                    && new.set(i, v, 0).is_ok()
                {
                    n += 1;
                }
            }
            n
        }
        _ => return Ok(None),
    }))
}

fn copy_hash<K: aya::Pod, V: aya::Pod>(
    old: &aya::maps::Map,
    new: &mut aya::maps::Map,
) -> Result<usize, aya::maps::MapError> {
    let old = aya::maps::HashMap::<_, K, V>::try_from(old)?;
    let mut new = aya::maps::HashMap::<_, K, V>::try_from(new)?;
    let mut n = 0;
    for item in old.iter() {
        let (k, v) = item?;
        if new.insert(k, v, 0).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

fn copy_lpm<K: aya::Pod, V: aya::Pod>(
    old: &aya::maps::Map,
    new: &mut aya::maps::Map,
) -> Result<usize, aya::maps::MapError> {
    let old = aya::maps::lpm_trie::LpmTrie::<_, K, V>::try_from(old)?;
    let mut new = aya::maps::lpm_trie::LpmTrie::<_, K, V>::try_from(new)?;
    let mut n = 0;
    for item in old.iter() {
        let (k, v) = item?;
        if new.insert(&k, v, 0).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes a pinned map that a new agent cannot share: another size, or
/// keys or values of another layout (another version). The programs then
/// start with an empty map, which is logged, rather than reading
/// misinterpreted bytes. A map of the same layout and another size is
/// returned, open, so that its entries can be carried over.
fn drop_incompatible_pin(
    path: &Path,
    max_entries: u32,
    key: usize,
    value: usize,
) -> Option<aya::maps::MapData> {
    let info = MapInfo::from_pin(path).ok()?;
    let pinned = (
        info.max_entries(),
        info.key_size() as usize,
        info.value_size() as usize,
    );
    if pinned == (max_entries, key, value) {
        return None;
    }
    let same_layout = (pinned.1, pinned.2) == (key, value);
    // Opened before the pin goes, so that its entries can be read.
    let old = same_layout
        .then(|| aya::maps::MapData::from_pin(path).ok())
        .flatten();
    tracing::warn!(
        map = %path.display(),
        ?pinned,
        wanted = ?(max_entries, key, value),
        "pinned map has another size or layout (entries, key, value); making it afresh"
    );
    let _ = std::fs::remove_file(path);
    old
}

/// Removes a node's load-balancer for good (the agent stopped): the
/// NodePort filters Weft put on `uplink` (found at Weft's priority and
/// handle, and only if they run Weft's programs), then every pin under
/// `pin_dir`. Without pins the maps go, and so do the cgroup links, which
/// detaches the socket programs. Returns what it removed.
///
/// # Errors
/// When a pin cannot be removed.
pub fn teardown(uplink: &str, pin_dir: &Path) -> Result<Vec<String>, BpfError> {
    let mut removed = Vec::new();
    for (dir, name) in [
        (TcAttachType::Ingress, NODEPORT_IN),
        (TcAttachType::Egress, NODEPORT_OUT),
    ] {
        if filter_program(uplink, dir).as_deref() == Some(name)
            && let Ok(link) =
                SchedClassifierLink::attached(uplink, dir, TC_PRIORITY, TC_HANDLE, None)
            && aya::programs::links::Link::detach(link).is_ok()
        {
            removed.push(format!("tc filter {name} on {uplink}"));
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir_all(pin_dir).map_err(io_err("remove", pin_dir))?;
        removed.push(pin_dir.display().to_string());
        if let Some(parent) = pin_dir.parent() {
            // Only if no other node's pins are there.
            let _ = std::fs::remove_dir(parent);
        }
    }
    Ok(removed)
}

/// The name of the program in the tc filter at Weft's priority and handle
/// on `iface`, if there is one (read with iproute2's `tc`, which shows the
/// filter's program name).
fn filter_program(iface: &str, dir: TcAttachType) -> Option<String> {
    let hook = match dir {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    };
    let out = std::process::Command::new("tc")
        .args(["filter", "show", "dev", iface, hook])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!("pref {TC_PRIORITY} bpf");
    text.lines()
        .filter(|l| l.contains(&want) && l.contains("handle 0x1 "))
        .find_map(|l| {
            l.split("handle 0x1 ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(|n| n.split(':').next().unwrap_or(n).to_string())
        })
}

/// Mounts the BPF filesystem at /sys/fs/bpf when `dir` is below it and
/// nothing is mounted there yet, as systemd does at boot on most
/// distributions. It stays mounted: other eBPF tools expect it there.
fn ensure_bpffs(dir: &Path) -> Result<(), BpfError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(root) {
        return Ok(());
    }
    let is_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC);
    if is_bpffs(root) {
        return Ok(());
    }
    // Agents starting together must not stack two mounts (the first one's
    // pins would vanish under the second): one checks and mounts at a time.
    let lock_path = Path::new("/run/weft-bpffs.lock");
    let lock = std::fs::File::create(lock_path).map_err(io_err("create", lock_path))?;
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(BpfError::Io {
            what: "lock",
            path: lock_path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(io_err("create", root))?;
    nix::mount::mount(
        Some("bpf"),
        root,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| BpfError::Io {
        what: "mount the BPF filesystem at",
        path: root.to_path_buf(),
        source: e.into(),
    })?;
    tracing::info!(path = %root.display(), "mounted the BPF filesystem");
    Ok(())
}
