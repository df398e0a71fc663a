//! `weft agent`: what kubelet and the CNI bridge plugin do on a node. It
//! registers the Node, renews its Lease, builds the pod bridge on the block
//! the controller gave the node, runs the pods bound to it through the
//! [`Sandbox`], reports their status, and routes every other node's block.
//!
//! Everything here is a reconcile loop over the API's state: a restart of
//! the agent adopts the pods it finds on disk and converges again.

mod api;
mod pods;
mod register;
mod routes;
mod server;
mod stats;

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;

use crate::{
    bpf::{Datapath, DatapathOptions},
    lb::{Balancer, LbMaps},
    netlink::Netlink,
    runtime::{Runtime, RuntimeConfig, registry::RegistryOptions},
    sandbox::{NodeConfig, Sandbox},
};

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
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            upstreams: crate::dns::forward::Upstreams::default(),
            ttl: 5,
            cache_size: crate::dns::forward::DEFAULT_CACHE_SIZE,
            search_shortcut: true,
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
/// # Errors
/// A kubeconfig that cannot be read, a missing uplink, or a node whose
/// networking cannot be set up.
pub async fn run(cfg: AgentConfig) -> Result<()> {
    if weft_api::meta::dns_subdomain_error(&cfg.node_name).is_some() {
        anyhow::bail!(
            "invalid node name {:?}: must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            cfg.node_name
        );
    }
    let api = api::Api::connect(&cfg.kubeconfig).await?;
    if cfg.cgroup_self {
        join_cgroup(&format!("weft/{}/agent", cfg.instance))?;
    }
    let net = Netlink::open(None)?;
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => net
            .addresses(&cfg.uplink)
            .await
            .with_context(|| format!("read the addresses of the uplink {:?}", cfg.uplink))?
            .first()
            .map(|a| a.ip())
            .with_context(|| {
                format!(
                    "the uplink {:?} has no IPv4 address; pass --node-ip",
                    cfg.uplink
                )
            })?,
    };
    tracing::info!(node = %cfg.node_name, %node_ip, server = %api.server, "registering");
    let listener = server::bind(node_ip, cfg.server_port)?;
    let cert = server::ServingCert::new(&cfg.node_name, node_ip)?;
    // The block this node had before, asked for again so that its pods
    // keep their addresses if the Node object was deleted meanwhile.
    let block_file = cfg.state_dir.join("block");
    let previous: Option<Ipv4Network> = std::fs::read_to_string(&block_file)
        .ok()
        .and_then(|b| b.trim().parse().ok());
    let block = register::register(&api, &cfg, node_ip, &cert.sha256, previous).await?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create {}", cfg.state_dir.display()))?;
    std::fs::write(&block_file, block.to_string())
        .with_context(|| format!("write {}", block_file.display()))?;
    if previous.is_some_and(|p| p != block) {
        tracing::warn!(
            ?previous, %block,
            "the node's pod block changed; pods with addresses from the old one are removed"
        );
    }
    tracing::info!(node = %cfg.node_name, %block, "registered; pod block assigned");

    // The node's side of pod networking: the bridge holding the block's
    // gateway, and forwarding between pods, the uplink and other nodes.
    let gateway = Ipv4Network::new(
        Ipv4Addr::from(u32::from(block.network()) + 1),
        block.prefix(),
    )?;
    let bridge = net
        .ensure_bridge(&cfg.bridge, gateway, cfg.mtu)
        .await
        .with_context(|| format!("create the pod bridge {}", cfg.bridge))?;
    for old in net.remove_other_addresses(bridge, gateway).await? {
        tracing::info!(%old, "removed the old gateway address from the pod bridge");
    }
    // The agent's own namespace: a lab node's, or the host of a real node.
    const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(FORWARD).is_ok_and(|v| v.trim() != "1") {
        std::fs::write(FORWARD, "1")
            .context("enable IPv4 forwarding (pods on other nodes are reached through it)")?;
    }

    let runtime = Runtime::new(RuntimeConfig {
        state_dir: cfg.state_dir.join("runtime"),
        runc: PathBuf::from("runc"),
        runc_root: cfg.state_dir.join("runc"),
        shim: cfg.shim.clone(),
        registry: cfg.registry.clone(),
    })?;
    let mut datapath = Datapath::load_with(&DatapathOptions {
        netns: None,
        pin_dir: Some(cfg.pin_dir.clone()),
        sizes: cfg.lb_sizes,
        policy_sizes: cfg.policy_sizes,
    })
    .context("load the eBPF datapath")?;
    let lb = {
        let maps = LbMaps::take(&mut datapath).context("open the load-balancer maps")?;
        let mut b = Balancer::new(maps, cfg.lb_sizes).context("adopt the load-balancer maps")?;
        let uplink_index = net
            .link(&cfg.uplink)
            .await
            .ok()
            .flatten()
            .map_or(0, |l| l.index);
        b.set_snat_ports(cfg.snat_ports.clone());
        b.set_node(node_ip, uplink_index, block)
            .context("configure the load-balancer")?;
        Arc::new(Mutex::new(b))
    };
    let policy = {
        let maps = crate::policy::maps::PolicyMaps::take(&mut datapath)
            .context("open the network policy maps")?;
        let installed = maps.installed().context("read the network policy maps")?;
        if !installed.rules.is_empty() || !installed.endpoints.is_empty() {
            tracing::info!(
                endpoints = installed.endpoints.len(),
                rules = installed.rules.len(),
                identities = installed.identities.len(),
                "adopting the network policy state an earlier agent left pinned"
            );
        }
        // The node's own addresses: its pods always let them in (probes).
        let engine =
            crate::policy::Engine::new(cfg.policy_sizes, vec![gateway.ip(), node_ip], installed);
        Arc::new(Mutex::new(crate::policy::sync::PolicyState {
            engine,
            maps,
        }))
    };
    // The socket path: every process of the node's cgroup, pods included,
    // has Service addresses translated at connect().
    let cgroup = match &cfg.lb_cgroup {
        Some(c) => c.clone(),
        None => crate::sandbox::cgroup_v2_root()
            .context("no cgroup v2 hierarchy is mounted (socket load-balancing needs one)")?
            .join("weft")
            .join(&cfg.instance),
    };
    std::fs::create_dir_all(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
    datapath
        .attach_cgroup(&cgroup)
        .with_context(|| format!("attach the socket load-balancer to {}", cgroup.display()))?;
    datapath
        .attach_uplink(&cfg.uplink)
        .with_context(|| format!("attach the NodePort programs to {}", cfg.uplink))?;
    let sandbox = Sandbox::new(
        NodeConfig {
            node: cfg.instance.clone(),
            node_netns: None,
            pod_netns_prefix: format!("{}-p-", cfg.instance),
            bridge: cfg.bridge.clone(),
            block,
            mtu: cfg.mtu,
            state_dir: cfg.state_dir.join("sandbox"),
            dns: gateway.ip(),
            restart_backoff: cfg.restart_backoff,
        },
        runtime,
        Some(datapath),
    )?;
    // Finish what a crash interrupted before anything new starts.
    let rolled_back = sandbox.recover().await?;
    if !rolled_back.is_empty() {
        tracing::info!(pods = ?rolled_back, "finished interrupted pod creations and removals");
    }
    let swept = sandbox.sweep().await?;
    if !swept.is_empty() {
        tracing::info!(what = ?swept, "removed what no pod record accounts for");
    }
    // Pods that outlived an earlier agent get this agent's programs, in place.
    sandbox.reattach()?;
    let node = Arc::new(Node {
        cfg,
        api,
        sandbox,
        node_ip,
        block,
        cert_sha256: cert.sha256.clone(),
        lb: lb.clone(),
        policy: policy.clone(),
        dns_stats: Mutex::new(None),
    });
    let stats = Arc::new(stats::Stats::default());
    tokio::spawn(stats.clone().run(node.clone()));
    let server = tokio::spawn(server::run(
        node.clone(),
        listener,
        cert,
        node.api.token.clone(),
        stats,
    ));
    let lease = tokio::spawn(register::heartbeat(node.clone()));
    let routes = tokio::spawn(routes::run(node.clone()));
    let pods = tokio::spawn(pods::run(node.clone()));
    let (problems_tx, problems_rx) = tokio::sync::watch::channel(Default::default());
    // Cluster DNS on the pods' gateway (their resolv.conf names it): the
    // Services come from the load-balancer's watch, the pods from their own.
    let zone = Arc::new(std::sync::RwLock::new(
        crate::dns::records::Zone::new("cluster.local", node.cfg.dns.ttl)
            .context("the cluster zone")?,
    ));
    let forwarder =
        match crate::dns::forward::Forwarder::new(&node.cfg.dns.upstreams, node.cfg.dns.cache_size)
        {
            Ok(f) => Ok(f),
            Err(e) => {
                let e =
                    format!("no upstream resolver, names outside the cluster are refused: {e:#}");
                tracing::error!("{e}");
                Err(e)
            }
        };
    let upstreams = forwarder.as_ref().map(|f| f.servers().to_vec()).ok();
    let dns = crate::dns::server::Handler::new(
        zone.clone(),
        crate::dns::server::Options {
            forwarder: forwarder.as_ref().ok().cloned(),
            search_shortcut: node.cfg.dns.search_shortcut,
        },
    );
    let stats = dns.stats();
    if let Err(e) = &forwarder {
        e.clone_into(&mut stats.problem.lock().expect("problem lock"));
    }
    *node.dns_stats.lock().expect("dns stats lock") = Some(stats.clone());
    let addr = gateway.ip();
    // Pods' resolv.conf names this address whatever happens: a port taken
    // by someone else is retried until it is free, and said meanwhile.
    tokio::spawn(async move {
        loop {
            match bind_dns(addr) {
                Ok((udp, tcp)) => {
                    tracing::info!(%addr, ?upstreams, "serving cluster DNS");
                    stats
                        .serving
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    {
                        let mut p = stats.problem.lock().expect("problem lock");
                        if p.starts_with("cluster DNS not served") {
                            p.clear();
                        }
                    }
                    if let Err(e) = crate::dns::server::serve(dns.clone(), udp, tcp).await {
                        tracing::error!(error = %e, "the DNS server stopped; restarting it");
                    }
                    stats
                        .serving
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) => {
                    let e = format!("cluster DNS not served, retrying every 5 s: {e:#}");
                    tracing::error!("{e}");
                    *stats.problem.lock().expect("problem lock") = e;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    tokio::spawn(crate::dns::sync::run(
        node.api.client.clone(),
        zone.clone(),
        node.cfg.node_name.clone(),
    ));
    let services = tokio::spawn(crate::lb::sync::run(
        node.api.client.clone(),
        lb,
        problems_tx,
        Some(zone),
    ));
    let lb_status = tokio::spawn(register::report_problems(
        node.clone(),
        problems_rx,
        register::LB_CONDITION,
    ));
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(Default::default());
    let policies = tokio::spawn(crate::policy::sync::run(
        node.api.client.clone(),
        node.cfg.node_name.clone(),
        policy,
        policy_tx,
    ));
    let policy_status = tokio::spawn(register::report_problems(
        node.clone(),
        policy_rx,
        register::POLICY_CONDITION,
    ));
    tracing::info!(node = %node.cfg.node_name, "agent running");
    tokio::select! {
        r = lease => r.context("heartbeat task")?,
        r = routes => r.context("route task")?,
        r = pods => r.context("pod task")?,
        r = server => r.context("endpoint task")?,
        r = services => r.context("load-balancer task"),
        r = lb_status => r.context("load-balancer status task")?,
        r = policies => r.context("network policy task"),
        r = policy_status => r.context("network policy status task")?,
    }
}

/// The UDP socket and TCP listener of the node's DNS server, port 53 on
/// `addr`.
fn bind_dns(addr: Ipv4Addr) -> Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let sa = std::net::SocketAddrV4::new(addr, 53);
    let udp = std::net::UdpSocket::bind(sa).with_context(|| format!("bind UDP {sa}"))?;
    udp.set_nonblocking(true)?;
    let tcp = std::net::TcpListener::bind(sa).with_context(|| format!("bind TCP {sa}"))?;
    tcp.set_nonblocking(true)?;
    Ok((
        tokio::net::UdpSocket::from_std(udp)?,
        tokio::net::TcpListener::from_std(tcp)?,
    ))
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
