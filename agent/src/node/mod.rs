//! `weft agent`: what kubelet and the CNI bridge plugin do on a node. It
//! registers the Node, renews its Lease, builds the pod bridge on the block
//! the controller gave the node, runs the pods bound to it through the
//! [`Sandbox`], reports their status, and routes every other node's block.
//!
//! Everything here is a reconcile loop over the API's state: a restart of
//! the agent adopts the pods it finds on disk and converges again.

mod api;
mod datapath;
mod logs;
mod loops;
mod objects;
mod persistent;
mod pods;
mod register;
mod routes;
mod server;
mod setup;
mod stats;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;

use crate::{lb::Balancer, runtime::registry::RegistryOptions, sandbox::Sandbox};

pub use routes::{Routing, VXLAN_DEV, VXLAN_VNI};

/// How an agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The Node's name in the API.
    pub node_name: String,
    /// A name unique on this machine for the node's cgroups and pod
    /// namespaces (the node name, unless several nodes share a machine, as
    /// in a lab).
    pub instance: String,
    /// The kubeconfig holding the node's token.
    pub kubeconfig: PathBuf,
    /// Where pod records, images and container state live.
    pub state_dir: PathBuf,
    /// The node's address (default: the uplink's first IPv4 address).
    pub node_ip: Option<Ipv4Addr>,
    /// The interface other nodes are reached through.
    pub uplink: String,
    /// The pod bridge.
    pub bridge: String,
    /// Pod MTU.
    pub mtu: u32,
    /// How often the Lease is renewed.
    pub lease_interval: Duration,
    /// How pods are checked and their status reported.
    pub sync_interval: Duration,
    /// How other nodes' blocks are reached.
    pub routing: Routing,
    /// The binary run as container shim (this `weft`).
    pub shim: PathBuf,
    /// Image registries.
    pub registry: RegistryOptions,
    /// First restart back-off of crashed containers.
    pub restart_backoff: Duration,
    /// Pods this node takes.
    pub max_pods: u32,
    /// Pods created at once.
    pub parallel_creates: usize,
    /// The PIDs one pod may hold (`None`: no limit of its own).
    pub pod_max_pids: Option<u64>,
    /// PIDs the node keeps from its pods for itself and the agent.
    pub system_reserved_pids: u64,
    /// Size at which a container's log rotates.
    pub container_log_max_size: u64,
    /// Log files kept per container run, the current one included.
    pub container_log_max_files: u32,
    /// The port of the agent's endpoint (logs, exec, stats) on the node IP.
    pub server_port: u16,
    /// Move the agent into the node's own cgroup (`weft/<instance>/agent`),
    /// so that the node's usage counts it and, in a lab, nodes are apart.
    pub cgroup_self: bool,
    /// bpffs directory of the node's pinned maps and links (default
    /// /sys/fs/bpf/weft/<instance>).
    pub pin_dir: PathBuf,
    /// Load-balancer map sizes.
    pub lb_sizes: crate::bpf::LbSizes,
    /// NetworkPolicy map sizes.
    pub policy_sizes: crate::bpf::PolicySizes,
    /// Source ports for NodePort flows sent on to other nodes.
    pub snat_ports: std::ops::RangeInclusive<u16>,
    /// The cgroup (v2 directory) whose processes get the socket path
    /// (default: the node's own, `weft/<instance>`).
    pub lb_cgroup: Option<PathBuf>,
    /// Cluster DNS.
    pub dns: DnsConfig,
}

/// How the node's DNS server answers beyond the cluster zone.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where other names are sent.
    pub upstreams: crate::dns::forward::Upstreams,
    /// TTL of the zone's answers (seconds).
    pub ttl: u32,
    /// Answers kept in the forwarding cache.
    pub cache_size: u64,
    /// Resolve local pods' search-path misses on their behalf.
    pub search_shortcut: bool,
    /// DNS queries one pod may send per second (0: no limit).
    pub rate_limit: u32,
}

/// Default of [`DnsConfig::rate_limit`]: far above what a resolver needs,
/// far below what one pod can send (some 175 000 a second here).
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 1000;

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: crate::dns::forward::Upstreams::default(),
            ttl: 5,
            cache_size: crate::dns::forward::DEFAULT_CACHE_SIZE,
            search_shortcut: true,
            rate_limit: DEFAULT_DNS_RATE_LIMIT,
        }
    }
}

impl AgentConfig {
    /// Defaults for a node called `node_name` with credentials in `kubeconfig`.
    #[must_use]
    pub fn new(node_name: &str, kubeconfig: PathBuf) -> Self {
        Self {
            node_name: node_name.to_string(),
            instance: node_name.to_string(),
            kubeconfig,
            state_dir: PathBuf::from("/var/lib/weft/agent"),
            node_ip: None,
            uplink: "eth0".into(),
            bridge: "weft0".into(),
            mtu: 1500,
            lease_interval: Duration::from_secs(2),
            sync_interval: Duration::from_secs(1),
            routing: Routing::HostGw,
            shim: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weft")),
            registry: RegistryOptions::default(),
            restart_backoff: Duration::from_secs(10),
            max_pods: 110,
            parallel_creates: 4,
            pod_max_pids: Some(crate::sandbox::DEFAULT_POD_MAX_PIDS),
            system_reserved_pids: crate::sandbox::DEFAULT_SYSTEM_RESERVED_PIDS,
            container_log_max_size: crate::runtime::logfile::DEFAULT_MAX_SIZE,
            container_log_max_files: crate::runtime::logfile::DEFAULT_MAX_FILES,
            server_port: server::DEFAULT_PORT,
            cgroup_self: false,
            pin_dir: PathBuf::from("/sys/fs/bpf/weft").join(node_name),
            lb_sizes: crate::bpf::LbSizes::default(),
            policy_sizes: crate::bpf::PolicySizes::default(),
            snat_ports: crate::lb::DEFAULT_SNAT_PORTS,
            lb_cgroup: None,
            dns: DnsConfig::default(),
        }
    }
}

/// What the running agent's tasks share.
pub(crate) struct Node {
    pub(crate) cfg: AgentConfig,
    pub(crate) api: api::Api,
    pub(crate) sandbox: Sandbox,
    pub(crate) node_ip: Ipv4Addr,
    pub(crate) block: Ipv4Network,
    /// What the Node announces of the agent's serving certificate.
    pub(crate) cert_sha256: String,
    /// The Service load-balancer's maps.
    pub(crate) lb: Arc<Mutex<Balancer>>,
    /// NetworkPolicy: the engine and its maps.
    pub(crate) policy: Arc<Mutex<crate::policy::sync::PolicyState>>,
    /// The DNS server's counters (once it runs).
    pub(crate) dns_stats: Mutex<Option<Arc<crate::dns::server::Stats>>>,
}

/// Runs the agent until the process is stopped. Errors that retrying can
/// cure (the controller unreachable, a refused token) are logged and
/// retried; what cannot be cured (a bad configuration) is returned.
///
/// Three steps: [`setup`] registers the node and builds its pod bridge,
/// [`datapath`] loads the eBPF programs and recovers the pods on disk, and
/// [`loops`] then runs every reconcile loop until one fails.
///
/// # Errors
/// A kubeconfig that cannot be read, a missing uplink, or a node whose
/// networking cannot be set up.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    let reg = setup::register_node(&cfg).await?;
    let dp = datapath::load(&cfg, &reg).await?;
    let node = Arc::new(Node {
        cfg,
        api: reg.api,
        sandbox: dp.sandbox,
        node_ip: reg.node_ip,
        block: reg.block,
        cert_sha256: reg.cert.sha256.clone(),
        lb: dp.lb,
        policy: dp.policy,
        dns_stats: Mutex::new(None),
    });
    loops::run(node, reg.listener, reg.cert, reg.gateway).await
}

/// Moves this process into cgroup `rel` of every hierarchy (made if need be).
fn join_cgroup(rel: &str) -> Result<()> {
    let pid = std::process::id().to_string();
    for root in crate::sandbox::cgroup_roots() {
        // A v1 cpuset group takes no task before its cpus and mems are
        // set; the agent needs no cpuset, so it stays where it is there.
        if root
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("cpuset"))
        {
            continue;
        }
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        std::fs::write(dir.join("cgroup.procs"), &pid)
            .with_context(|| format!("join {}", dir.display()))?;
    }
    Ok(())
}
