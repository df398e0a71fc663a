//! Lab topology: an underlay namespace holding one bridge per L2 segment
//! (and routing between segments), and one namespace per node, attached to
//! a segment at 192.0.2.0/24 (TEST-NET-1). Each node gets a pod block from
//! 10.244.0.0/16, a `weft0` bridge holding the block's gateway, and routes to
//! the other nodes' blocks, either host-gw (one segment) or through VXLAN.
//!
//! Names: the underlay is `<prefix>-ul`, node `i` is `<prefix>-n<i>`, and pods
//! the tests or agents create carry the node's name as a prefix, so removing
//! everything under `<prefix>` removes the whole lab. [`Lab`] does that on
//! drop, and [`sweep_stale`] does it for labs whose creating process died.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};
use ipnetwork::Ipv4Network;
use weft_agent::{
    bpf::Datapath,
    netlink::{BlockRoute, Netlink, VethAttachment, VxlanPeer, netns},
    runtime::busybox::{BUSYBOX_BIN, BUSYBOX_IMAGE, build_layout},
    runtime::{Runtime, RuntimeConfig, registry::RegistryOptions},
    sandbox::{NodeConfig, PodRecord, Sandbox},
};

/// Where labs keep node state (tmpfs: gone after a reboot, like the netns).
pub const STATE_ROOT: &str = "/run/weft";

/// Prefix of every lab resource name. The before-stop checks look for it.
pub const NAME_PREFIX: &str = "weft";
/// The node bridge every node holds its pods on.
pub const NODE_BRIDGE: &str = "weft0";
/// The VXLAN device on each node in overlay mode.
pub const VXLAN_DEV: &str = "weft.vx";
/// VXLAN network identifier the lab uses.
pub const VXLAN_VNI: u32 = 7;
/// MTU of the underlay links.
pub const UNDERLAY_MTU: u32 = 1500;

/// How nodes reach each other's pod blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Plain routes via the other nodes' underlay addresses (one L2 segment).
    HostGw,
    /// A VXLAN tunnel between the nodes (works across routed segments).
    Vxlan,
}

/// What lab to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Number of nodes (1-100).
    pub nodes: usize,
    /// Number of underlay L2 segments (1 or 2); nodes alternate between them.
    pub segments: usize,
    /// Pod-block routing.
    pub routing: Routing,
    /// Name prefix; [`unique_prefix`] by default.
    pub prefix: String,
    /// The `weft` binary, run as the container shim.
    pub weft_bin: PathBuf,
    /// Prefix length of each node's pod block (24 by default: 253 pods).
    pub block_prefix: u8,
    /// Nodes run agents: the controller assigns their blocks and the agents
    /// build bridges and routes, so the lab makes only namespaces and the
    /// underlay.
    pub agents: bool,
}

impl LabSpec {
    /// Checks the spec before anything is made.
    ///
    /// # Errors
    /// What is out of range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.nodes) {
            bail!("a lab has 1 to 100 nodes, not {}", self.nodes);
        }
        if !(24..=30).contains(&self.block_prefix) {
            bail!("pod blocks are /24 to /30, not /{}", self.block_prefix);
        }
        if !(1..=2).contains(&self.segments) {
            bail!("a lab has 1 or 2 underlay segments, not {}", self.segments);
        }
        if self.segments > 1 && self.routing == Routing::HostGw {
            bail!("host-gw routing needs all nodes on one segment; use VXLAN across segments");
        }
        Ok(())
    }

    /// A lab of `nodes` nodes on one segment with host-gw routes.
    #[must_use]
    pub fn new(nodes: usize) -> Self {
        Self {
            nodes,
            segments: 1,
            routing: Routing::HostGw,
            prefix: unique_prefix("t"),
            weft_bin: default_weft_bin(),
            block_prefix: 24,
            agents: false,
        }
    }
}

/// A lab node.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LabNode {
    /// Short name: `n1`, `n2`, ...
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its segment's router address on the underlay.
    pub router: Ipv4Addr,
    /// Its pod block (a /24 of 10.244.0.0/16).
    #[serde(with = "block_as_string")]
    pub block: Ipv4Network,
}

/// Serde for a block as its `a.b.c.d/n` text (ipnetwork's serde support
/// is not enabled in the version we build).
mod block_as_string {
    use ipnetwork::Ipv4Network;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(b)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl LabNode {
    /// The gateway address pods of this node use (first address of the block).
    #[must_use]
    pub fn gateway(&self) -> Ipv4Network {
        Ipv4Network::new(first_host(self.block), self.block.prefix()).expect("valid prefix")
    }
}

/// First usable address of a block (network + 1).
#[must_use]
pub fn first_host(block: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(block.network()) + 1)
}

/// A running lab. Dropping it removes everything it made.
#[derive(Debug)]
pub struct Lab {
    /// The name prefix of everything it made.
    pub prefix: String,
    /// Its underlay namespace.
    pub underlay: String,
    /// Its nodes.
    pub nodes: Vec<LabNode>,
    /// How blocks are routed.
    pub routing: Routing,
    /// The `weft` binary used as shim.
    pub weft_bin: PathBuf,
    registry: Option<std::process::Child>,
    /// First restart back-off of the nodes' pods (Kubernetes' 10 s by default;
    /// tests shorten it).
    pub restart_backoff: std::time::Duration,
    keep: bool,
}

/// Where a lab's registry listens: the underlay's first address, port 5000.
pub const REGISTRY_ADDR: &str = "192.0.2.1:5000";

/// The `weft` binary next to the running executable: `target/<profile>/weft`
/// for tests (which run from `target/<profile>/deps`), else the executable's
/// own directory; `WEFT_BIN` overrides.
#[must_use]
pub fn default_weft_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("weft"));
    let dir = exe.parent().unwrap_or(Path::new("."));
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let c = d.join("weft");
        if c.is_file() {
            return c;
        }
    }
    PathBuf::from("weft")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call: `weft-<kind><pid>x<seq>`.
/// The pid lets [`sweep_stale`] tell a crashed run's leftovers from a live one.
#[must_use]
pub fn unique_prefix(kind: &str) -> String {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}-{kind}{}x{seq}", std::process::id())
}

fn segment_net(segments: usize, seg: usize) -> Ipv4Network {
    if segments == 1 {
        "192.0.2.0/24".parse().expect("valid")
    } else {
        Ipv4Network::new(Ipv4Addr::new(192, 0, 2, (seg as u8) * 128), 25).expect("valid")
    }
}

impl Lab {
    /// Builds the lab. On failure, whatever was made is removed.
    ///
    /// # Errors
    /// When the spec is out of range or the kernel refuses a step.
    pub async fn up(spec: LabSpec) -> Result<Self> {
        spec.validate()?;
        sweep_stale();
        let mut lab = Lab {
            underlay: format!("{}-ul", spec.prefix),
            prefix: spec.prefix.clone(),
            nodes: Vec::new(),
            routing: spec.routing,
            weft_bin: spec.weft_bin.clone(),
            registry: None,
            restart_backoff: std::time::Duration::from_secs(10),
            keep: false,
        };
        // From here on, Drop cleans up if a step fails.
        lab.build(&spec).await?;
        Ok(lab)
    }

    async fn build(&mut self, spec: &LabSpec) -> Result<()> {
        netns::create(&self.underlay).context("create the underlay namespace")?;
        let ul = Netlink::open(Some(&self.underlay))?;
        ul.loopback_up().await?;
        netns::set_sysctl(&self.underlay, "net/ipv4/ip_forward", "1")?;
        for seg in 0..spec.segments {
            let net = segment_net(spec.segments, seg);
            ul.ensure_bridge(
                &format!("ul{seg}"),
                Ipv4Network::new(first_host(net), net.prefix())?,
                UNDERLAY_MTU,
            )
            .await?;
        }
        for i in 1..=spec.nodes {
            let seg = (i - 1) % spec.segments;
            let net = segment_net(spec.segments, seg);
            let idx_in_seg = (i - 1) / spec.segments;
            let ip = Ipv4Addr::from(u32::from(net.network()) + 10 + idx_in_seg as u32 + 1);
            let node = LabNode {
                name: format!("n{i}"),
                netns: format!("{}-n{i}", self.prefix),
                ip,
                router: first_host(net),
                block: Ipv4Network::new(Ipv4Addr::new(10, 244, i as u8, 0), spec.block_prefix)?,
            };
            netns::create(&node.netns).with_context(|| format!("create node {}", node.name))?;
            self.nodes.push(node.clone());
            ul.attach_veth(&VethAttachment {
                host_veth: node.name.clone(),
                netns: node.netns.clone(),
                bridge: format!("ul{seg}"),
                address: Ipv4Network::new(ip, net.prefix())?,
                gateway: Some(node.router),
                mtu: UNDERLAY_MTU,
            })
            .await
            .with_context(|| format!("attach node {} to the underlay", node.name))?;
            netns::set_sysctl(&node.netns, "net/ipv4/ip_forward", "1")?;
            let nl = Netlink::open(Some(&node.netns))?;
            nl.loopback_up().await?;
            if !spec.agents {
                nl.ensure_bridge(NODE_BRIDGE, node.gateway(), UNDERLAY_MTU)
                    .await?;
            }
        }
        if spec.agents {
            return Ok(());
        }
        self.sync_routes().await
    }

    /// Programs every node's routes to the other nodes' blocks.
    ///
    /// # Errors
    /// On netlink failure.
    pub async fn sync_routes(&self) -> Result<()> {
        for n in &self.nodes {
            let nl = Netlink::open(Some(&n.netns))?;
            let others = self.nodes.iter().filter(|o| o.name != n.name);
            match self.routing {
                Routing::HostGw => {
                    let routes: Vec<_> = others
                        .map(|o| BlockRoute {
                            block: o.block,
                            via: o.ip,
                        })
                        .collect();
                    nl.sync_routes(&routes, "eth0", false).await?;
                }
                Routing::Vxlan => {
                    let peers: Vec<_> = others
                        .map(|o| VxlanPeer {
                            node_ip: o.ip,
                            block: o.block,
                        })
                        .collect();
                    nl.ensure_vxlan(VXLAN_DEV, VXLAN_VNI, n.ip, n.block, "eth0", &peers)
                        .await?;
                    let routes: Vec<_> = peers
                        .iter()
                        .map(|p| BlockRoute {
                            block: p.block,
                            via: weft_agent::netlink::vtep_addr(p.block),
                        })
                        .collect();
                    nl.sync_routes(&routes, VXLAN_DEV, true).await?;
                }
            }
        }
        Ok(())
    }

    /// The node of that short name.
    ///
    /// # Panics
    /// When there is no such node.
    #[must_use]
    pub fn node(&self, name: &str) -> &LabNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no lab node {name}"))
    }

    /// The state directory of a node.
    #[must_use]
    pub fn node_state_dir(&self, node: &LabNode) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.prefix).join(&node.name)
    }

    /// Opens the pod sandbox of a node (its runtime, image store and eBPF
    /// counters). Several handles to one node share its on-disk state.
    ///
    /// # Errors
    /// When the state or the eBPF programs cannot be set up.
    pub fn sandbox(&self, node: &LabNode) -> Result<Sandbox> {
        node_sandbox(&self.prefix, node, &self.weft_bin, self.restart_backoff)
    }

    /// Loads `weft.local/busybox:1.36` into a node's image store. The OCI
    /// layout is built once per lab and imported by every node.
    ///
    /// # Errors
    /// When busybox-static is missing or the import fails.
    pub fn load_busybox(&self, sandbox: &Sandbox) -> Result<()> {
        let layout = Path::new(STATE_ROOT)
            .join(&self.prefix)
            .join("busybox-layout");
        if !layout.join("index.json").exists() {
            build_layout(&layout, Path::new(BUSYBOX_BIN), BUSYBOX_IMAGE)?;
        }
        sandbox.runtime().images().import(&layout, None)?;
        Ok(())
    }

    /// Starts Debian's docker-registry inside the underlay namespace at
    /// [`REGISTRY_ADDR`] (plain HTTP, storage under the lab's state), and
    /// waits until it answers. Every node reaches it over the underlay.
    ///
    /// # Errors
    /// When docker-registry is missing or does not come up within 10 s.
    pub fn start_registry(&mut self) -> Result<()> {
        if self.registry.is_some() {
            return Ok(());
        }
        let dir = Path::new(STATE_ROOT).join(&self.prefix).join("registry");
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:5000\n",
                dir.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let log2 = log.try_clone()?;
        // A process forked from a thread inside the namespace lives there.
        let child = netns::run_in(Some(&self.underlay), move || {
            std::process::Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(std::process::Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
        })?
        .context("start docker-registry (apt-get install docker-registry)")?;
        self.registry = Some(child);
        let addr: std::net::SocketAddr = REGISTRY_ADDR.parse()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let up = netns::run_in(Some(&self.underlay), move || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
                    .is_ok()
            })?;
            if up {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "docker-registry did not answer on {REGISTRY_ADDR} within 10 s; see {}",
                    dir.join("registry.log").display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Leaves the lab running after drop (for `weft lab up`), marked as
    /// complete: a lab without the mark is the remains of an interrupted `up`.
    ///
    /// # Errors
    /// When the mark cannot be written (the lab is removed then).
    pub fn keep(mut self) -> Result<()> {
        self.set_keep()
    }

    /// [`Lab::keep`] without giving up the handle.
    ///
    /// # Errors
    /// When the mark cannot be written.
    pub fn set_keep(&mut self) -> Result<()> {
        std::fs::create_dir_all(Path::new(STATE_ROOT).join(&self.prefix))?;
        std::fs::write(ready_mark(&self.prefix), b"")?;
        self.keep = true;
        Ok(())
    }

    /// Removes the lab now.
    pub fn down(mut self) {
        remove_prefix(&self.prefix);
        self.keep = true;
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            remove_prefix(&self.prefix);
            if let Some(mut c) = self.registry.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn ready_mark(prefix: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(prefix).join("ready")
}

/// What is there of the lab `prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabState {
    /// Nothing.
    Absent,
    /// A lab that finished coming up.
    Up,
    /// The remains of an `up` that was interrupted.
    Partial,
}

/// Whether the lab `prefix` is up, absent, or half-made.
#[must_use]
pub fn state(prefix: &str) -> LabState {
    let any = netns::list()
        .unwrap_or_default()
        .iter()
        .any(|n| n.starts_with(&format!("{prefix}-")))
        || Path::new(STATE_ROOT).join(prefix).exists();
    match (any, ready_mark(prefix).exists()) {
        (false, _) => LabState::Absent,
        (true, true) => LabState::Up,
        (true, false) => LabState::Partial,
    }
}

/// Whether some process still runs in the lab's underlay namespace (its
/// controller, in a cluster lab).
#[must_use]
pub fn alive(prefix: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(netns::path(&format!("{prefix}-ul"))) else {
        return false;
    };
    let want = format!("net:[{}]", meta.ino());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|p| {
            p.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
                && std::fs::read_link(p.path().join("ns/net"))
                    .is_ok_and(|l| l.to_string_lossy() == want)
        })
}

/// What `weft lab pods` shows of a pod.
#[derive(Clone, Debug)]
pub struct PodSummary {
    /// Node short name.
    pub node: String,
    /// The record.
    pub record: PodRecord,
    /// Its containers' states, e.g. `Running` or `Exited(1)`.
    pub status: String,
}

/// Every pod of the lab with its containers' states, sorted by namespace
/// and name.
///
/// # Errors
/// When no such lab exists.
pub fn pod_summaries(prefix: &str) -> Result<Vec<PodSummary>> {
    let mut out = Vec::new();
    for (node, record) in pods(prefix)? {
        let rt = node_runtime(
            &Path::new(STATE_ROOT).join(prefix).join(&node),
            Path::new("weft"),
            RegistryOptions::default(),
        )?;
        let states: Vec<String> = record
            .containers
            .iter()
            .map(|(_, id)| match rt.state(id).map(|s| s.status) {
                Ok(weft_agent::runtime::Status::Running) => "Running".to_string(),
                Ok(weft_agent::runtime::Status::Created) => "Created".to_string(),
                Ok(weft_agent::runtime::Status::Exited(c)) => format!("Exited({c})"),
                Err(_) => "Missing".to_string(),
            })
            .collect();
        let mut status = states.join(",");
        if record.phase != weft_agent::sandbox::Phase::Ready {
            status = format!("{:?}", record.phase);
        }
        out.push(PodSummary {
            node,
            record,
            status,
        });
    }
    Ok(out)
}

/// Opens the pod sandbox of node `node` of the lab `prefix`, from any
/// process: everything it needs is on disk or in the kernel.
///
/// # Errors
/// When the state or the eBPF programs cannot be set up.
pub fn node_sandbox(
    prefix: &str,
    node: &LabNode,
    weft_bin: &Path,
    restart_backoff: std::time::Duration,
) -> Result<Sandbox> {
    let state = Path::new(STATE_ROOT).join(prefix).join(&node.name);
    let runtime = node_runtime(
        &state,
        weft_bin,
        RegistryOptions {
            plain_http: vec![REGISTRY_ADDR.into()],
            netns: Some(node.netns.clone()),
            timeout: None,
        },
    )?;
    let datapath = Datapath::load(Some(&node.netns))?;
    Ok(Sandbox::new(
        NodeConfig {
            node: node.netns.clone(),
            node_netns: Some(node.netns.clone()),
            pod_netns_prefix: format!("{}-p-", node.netns),
            bridge: NODE_BRIDGE.into(),
            block: node.block,
            mtu: UNDERLAY_MTU,
            state_dir: state.join("sandbox"),
            dns: first_host(node.block),
            restart_backoff,
            pod_max_pids: Some(weft_agent::sandbox::DEFAULT_POD_MAX_PIDS),
            system_reserved_pids: weft_agent::sandbox::DEFAULT_SYSTEM_RESERVED_PIDS,
            node_ip: node.ip,
            allocatable: (2000, 1 << 30),
        },
        runtime,
        Some(datapath),
    )?)
}

/// The runtime of a lab node whose state lives in `state`.
///
/// # Errors
/// When the state directories cannot be created.
pub fn node_runtime(state: &Path, weft_bin: &Path, registry: RegistryOptions) -> Result<Runtime> {
    Ok(Runtime::new(RuntimeConfig {
        state_dir: state.join("runtime"),
        runc: PathBuf::from("runc"),
        runc_root: state.join("runc"),
        shim: weft_bin.to_path_buf(),
        registry,
        seccomp_dir: state.join("seccomp"),
        log_max_size: weft_agent::runtime::logfile::DEFAULT_MAX_SIZE,
        log_max_files: weft_agent::runtime::logfile::DEFAULT_MAX_FILES,
    })?)
}

/// Every pod of the lab `prefix`, with the name of its node, sorted by
/// namespace and name. Read from the nodes' pod records, so it works from a
/// process other than the one that made the lab.
///
/// # Errors
/// When no such lab exists.
pub fn pods(prefix: &str) -> Result<Vec<(String, PodRecord)>> {
    let root = Path::new(STATE_ROOT).join(prefix);
    let Ok(nodes) = std::fs::read_dir(&root) else {
        bail!("no lab is up (`weft lab up`)");
    };
    let mut out = Vec::new();
    for n in nodes.flatten() {
        let Ok(recs) = std::fs::read_dir(n.path().join("sandbox/pods")) else {
            continue;
        };
        for p in recs.flatten() {
            if p.path().extension().is_some_and(|e| e == "json")
                && let Ok(data) = std::fs::read(p.path())
                && let Ok(r) = serde_json::from_slice::<PodRecord>(&data)
            {
                out.push((n.file_name().to_string_lossy().into_owned(), r));
            }
        }
    }
    out.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
    Ok(out)
}

/// Where agents pin their eBPF objects, one directory per node instance.
pub const PIN_ROOT: &str = "/sys/fs/bpf/weft";

/// Kills every process whose command line holds `marker`.
fn kill_processes_naming(marker: &str) {
    let me = std::process::id() as i32;
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes a lab by its prefix: runc containers (and so their shims), rootfs
/// mounts, cgroups and state under /run/weft/<prefix>, and every namespace
/// named `<prefix>` or `<prefix>-...`. Idempotent, and works for a lab whose
/// creator crashed; errors are reported on stderr, not raised, because this
/// runs in Drop.
pub fn remove_prefix(prefix: &str) {
    let state = Path::new(STATE_ROOT).join(prefix);
    // Processes first (agents, the controller, etcd, the registry, shims,
    // a stray `ip netns exec`), so that no agent restarts a container
    // while it is being removed.
    if let Ok(all) = netns::list() {
        for n in all
            .iter()
            .filter(|n| *n == prefix || n.starts_with(&format!("{prefix}-")))
        {
            kill_processes_in(n);
        }
    }
    // And those whose namespace is gone already (a lab half removed):
    // they run with the lab's state directory on their command line.
    kill_processes_naming(&format!("{}/", state.display()));
    if let Ok(nodes) = std::fs::read_dir(&state) {
        for n in nodes.flatten() {
            let root = n.path().join("runc");
            let ids = std::process::Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["list", "-q"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for id in ids.lines().filter(|l| !l.is_empty()) {
                let _ = std::process::Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", id])
                    .output();
            }
        }
    }
    // Unmount rootfs overlays under the lab's state, deepest first.
    if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
        let s = state.to_string_lossy().into_owned();
        let mut mounts: Vec<&str> = mi
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&format!("{s}/")))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    // Anything that started meanwhile goes before the namespaces do.
    if let Ok(all) = netns::list() {
        for n in all
            .iter()
            .filter(|n| *n == prefix || n.starts_with(&format!("{prefix}-")))
        {
            kill_processes_in(n);
        }
    }
    // Pinned maps and links go before the cgroups: a pinned cgroup link
    // keeps its cgroup alive.
    remove_pins(prefix);
    // The nodes' cgroups, by their namespaces' names and by their state
    // directories (a node whose namespace is gone already).
    let mut nodes: std::collections::BTreeSet<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-n")))
        .collect();
    for d in std::fs::read_dir(&state).into_iter().flatten().flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if name.len() > 1 && name.starts_with('n') && name[1..].chars().all(|c| c.is_ascii_digit())
        {
            nodes.insert(format!("{prefix}-{name}"));
        }
    }
    for n in &nodes {
        // Whatever still runs in a node's cgroups (a process outside the
        // lab's namespaces, such as a sandbox process started by a test's
        // in-process agent) goes with them.
        let cgroup = format!("weft/{n}");
        if !weft_agent::sandbox::kill_all(&cgroup, std::time::Duration::from_secs(5)) {
            eprintln!("lab cleanup: processes survive in cgroup {cgroup}");
        }
        weft_agent::sandbox::remove_cgroups(&cgroup);
    }
    if state.exists()
        && let Err(e) = std::fs::remove_dir_all(&state)
    {
        eprintln!("lab cleanup: cannot remove {}: {e}", state.display());
    }
    let Ok(all) = netns::list() else { return };
    // Pods first, nodes next, underlay last: inner ends go before outer ones.
    let mut mine: Vec<_> = all
        .into_iter()
        .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
        .collect();
    mine.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for n in mine {
        if let Err(e) = netns::delete(&n) {
            eprintln!("lab cleanup: cannot delete netns {n}: {e}");
        }
    }
}

/// Removes the lab nodes' bpffs pins (/sys/fs/bpf/weft/<prefix>-n*): the
/// maps and programs go with their last reference.
fn remove_pins(prefix: &str) {
    let root = Path::new(PIN_ROOT);
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{prefix}-n"))
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            eprintln!("lab cleanup: cannot remove {}: {err}", e.path().display());
        }
    }
    // Only if no other lab or agent pins anything.
    let _ = std::fs::remove_dir(root);
}

/// SIGKILLs every process whose network namespace is the named one.
fn kill_processes_in(ns: &str) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(netns::path(ns)) else {
        return;
    };
    let want = format!("net:[{}]", meta.ino());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if std::fs::read_link(p.path().join("ns/net")).is_ok_and(|l| l.to_string_lossy() == want) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes labs left by test processes that died (prefix `weft-t<pid>x...`
/// with no such live process).
pub fn sweep_stale() {
    // The lab of a name (`weft-t<pid>x<seq>`, and the namespaces named
    // after it), if its creating process is dead.
    let stale = |name: &str| -> Option<String> {
        let rest = name.strip_prefix(&format!("{NAME_PREFIX}-t"))?;
        let (pid, tail) = rest.split_once('x')?;
        let seq: String = tail.chars().take_while(char::is_ascii_digit).collect();
        let pid = pid.parse::<i32>().ok()?;
        (!seq.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .then(|| format!("{NAME_PREFIX}-t{pid}x{seq}"))
    };
    let mut labs = std::collections::BTreeSet::new();
    for n in netns::list().unwrap_or_default() {
        labs.extend(stale(&n));
    }
    for e in std::fs::read_dir(STATE_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        labs.extend(stale(&e.file_name().to_string_lossy()));
    }
    for lab in labs {
        remove_prefix(&lab);
    }
}
