//! `weft`: one binary for every role. This file parses arguments, prints,
//! and calls into the libraries; nothing is decided here.

mod auth_cmds;
mod client_cmds;
mod common;
mod lb_cmds;
mod node_cmds;
mod pod_cmds;
mod policy_cmds;
mod rollout_cmds;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use weft_agent::runtime::{
    busybox::{BUSYBOX_BIN, BUSYBOX_IMAGE, build_layout},
    pause::{self, Namespaces, PauseArgs},
    shim::{self, ShimArgs},
};
use weft_lab::{
    Cluster, ClusterSpec, Store,
    topology::{self, STATE_ROOT},
};

/// Name prefix of the lab `weft lab` manages (one per machine).
const LAB_PREFIX: &str = "weft-lab";

/// The lab's name prefix: `weft-lab`, unless `$WEFT_LAB_NAME` (which must
/// start with `weft-`) names another, as tests do to run beside a user's lab.
fn lab_prefix() -> Result<String> {
    match std::env::var("WEFT_LAB_NAME") {
        Ok(n)
            if n.starts_with("weft-")
                && n.len() <= 24
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Ok(n)
        }
        Ok(n) => bail!(
            "WEFT_LAB_NAME={n:?}: use weft- and up to 19 more lowercase letters, digits or '-'"
        ),
        Err(_) => Ok(LAB_PREFIX.to_string()),
    }
}

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Weft: a small Kubernetes-shaped orchestrator with an eBPF data plane"
)]
struct Cli {
    /// The kubeconfig client commands use (default: $KUBECONFIG, else ~/.weft/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Client(client_cmds::ClientCmd),
    /// The control plane: API server, store, IPAM, scheduler and controllers.
    Controller(ControllerArgs),
    /// The node agent: registers this node, runs the pods bound to it.
    Agent(AgentArgs),
    /// A multi-node cluster inside network namespaces on this machine.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Image tools.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Container shim (started by the runtime, not by users).
    #[command(hide = true)]
    Shim {
        #[arg(long)]
        id: String,
        #[arg(long)]
        bundle: PathBuf,
        #[arg(long)]
        runc: PathBuf,
        #[arg(long)]
        runc_root: PathBuf,
        #[arg(long)]
        log: PathBuf,
        #[arg(long, default_value_t = weft_agent::runtime::logfile::DEFAULT_MAX_SIZE)]
        log_max_size: u64,
        #[arg(long, default_value_t = weft_agent::runtime::logfile::DEFAULT_MAX_FILES)]
        log_max_files: u32,
        #[arg(long)]
        start: bool,
        #[arg(long)]
        stdin: bool,
        #[arg(long)]
        stdin_once: bool,
        #[arg(long)]
        tty: bool,
    },
    /// A pod's sandbox process (started by the agent, not by users).
    #[command(hide = true)]
    Pause {
        #[arg(long)]
        hostname: String,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        netns: Option<PathBuf>,
        #[arg(long)]
        pid: bool,
        #[arg(long)]
        ipc: bool,
        #[arg(long)]
        uts: bool,
    },
}

#[derive(clap::Args)]
struct ControllerArgs {
    #[command(subcommand)]
    cmd: Option<ControllerCmd>,
    /// Where the store, the CA, keys and tokens live (root only).
    #[arg(long, default_value = weft_controller::server::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// Address and port to serve the API on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: std::net::SocketAddr,
    /// The address clients reach the API at (kubeconfig and certificate).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// Extra names or addresses for the serving certificate.
    #[arg(long = "tls-san")]
    tls_sans: Vec<String>,
    /// The store: the embedded SQLite file, or etcd.
    #[arg(long, value_parser = ["sqlite", "etcd"], default_value = "sqlite")]
    store: String,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_endpoints: Vec<String>,
    /// Where to write the admin kubeconfig (default ~/.weft/config).
    #[arg(long)]
    kubeconfig_out: Option<PathBuf>,
    /// A node whose Lease is not renewed for this long becomes NotReady.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    node_grace: std::time::Duration,
    /// How long pods stay on a NotReady node before they are evicted.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    eviction_delay: std::time::Duration,
    /// How long an Event is kept after it last happened (kube-apiserver's
    /// `--event-ttl`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    event_ttl: std::time::Duration,
    /// Revisions of history kept for watches (older resourceVersions get 410 Gone).
    #[arg(long, default_value_t = 100_000)]
    watch_history: i64,
    /// The largest object stored, in bytes of its JSON (Kubernetes' limit is
    /// etcd's request limit, 1.5 MiB); a larger one is refused with 413.
    #[arg(long, default_value_t = weft_controller::registry::MAX_OBJECT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=64 * 1024 * 1024))]
    max_object_size: usize,
    /// The Pod Security level enforced in namespaces without a
    /// pod-security.kubernetes.io/enforce label (Kubernetes' default:
    /// privileged, no checks).
    #[arg(long, default_value = "privileged", value_parser = ["privileged", "baseline", "restricted"])]
    pod_security_default: String,
    /// kube-apiserver's EncryptionConfiguration: which resources are
    /// encrypted at rest, with which keys (default: DATA_DIR/encryption-config.yaml,
    /// written with a fresh key for Secrets on first start).
    #[arg(long)]
    encryption_provider_config: Option<PathBuf>,
    /// The pod network; every node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnetwork::Ipv4Network,
    /// Where Service ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnetwork::Ipv4Network,
    /// Also serve on this inherited listening socket (a file descriptor).
    #[arg(long = "listen-fd", hide = true)]
    listen_fds: Vec<i32>,
    /// How often watches that allow bookmarks get one.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    bookmark_interval: std::time::Duration,
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The Node's name (default: this machine's host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Where pod records, images and container state live.
    #[arg(long, default_value = "/var/lib/weft/agent")]
    state_dir: PathBuf,
    /// The node's address (default: the uplink's first IPv4 address).
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// The interface other nodes are reached through.
    #[arg(long, default_value = "eth0")]
    uplink: String,
    /// The pod bridge.
    #[arg(long, default_value = "weft0")]
    bridge: String,
    /// Pod MTU.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// How other nodes' pod blocks are reached.
    #[arg(long, value_parser = ["host-gw", "vxlan"], default_value = "host-gw")]
    routing: String,
    /// How often the node's Lease is renewed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    lease_interval: std::time::Duration,
    /// First restart back-off of crashed containers (doubles up to 5 minutes).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    restart_backoff: std::time::Duration,
    /// Registries (host:port) spoken to over plain HTTP.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Most pods this node takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Most PIDs (processes and threads) one pod may hold; 0 for no limit
    /// of its own (kubelet's --pod-max-pids).
    #[arg(long, default_value_t = weft_agent::sandbox::DEFAULT_POD_MAX_PIDS)]
    pod_max_pids: u64,
    /// PIDs the pods together leave to the node and the agent (kubelet's
    /// --system-reserved=pid=): the pods' cgroup holds at most the
    /// machine's PIDs less these.
    #[arg(long, default_value_t = weft_agent::sandbox::DEFAULT_SYSTEM_RESERVED_PIDS)]
    system_reserved_pids: u64,
    /// Size at which a container's log file rotates, as a quantity
    /// (kubelet's --container-log-max-size).
    #[arg(long, default_value = "10Mi", value_parser = parse_log_size)]
    container_log_max_size: u64,
    /// Log files kept per container run, the current one included
    /// (kubelet's --container-log-max-files).
    #[arg(long, default_value_t = weft_agent::runtime::logfile::DEFAULT_MAX_FILES, value_parser = clap::value_parser!(u32).range(2..))]
    container_log_max_files: u32,
    /// Port of the agent's endpoint for logs, exec and stats (on the node IP).
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// Move the agent into the node's cgroup (labs set it).
    #[arg(long, hide = true)]
    cgroup_self: bool,
    /// Remove the node's Service load-balancer instead of running: the
    /// NodePort filters on the uplink and every pinned map and link (which
    /// detaches the socket programs). For a node leaving for good; stop the
    /// agent first.
    #[arg(long)]
    teardown: bool,
    /// Where the node's eBPF maps and links are pinned (default:
    /// /sys/fs/bpf/weft/<instance>).
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Local pods under NetworkPolicy the node holds (and counts).
    #[arg(long, default_value_t = weft_common::POL_ENDPOINTS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    policy_endpoints: u32,
    /// Pod addresses of the cluster with a policy identity.
    #[arg(long, default_value_t = weft_common::POL_IDENTITIES_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    policy_identities: u32,
    /// ipBlock prefixes (networks and exceptions) of all policies.
    #[arg(long, default_value_t = weft_common::POL_CIDRS_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    policy_cidrs: u32,
    /// Rule entries of the node's pods (a port range takes up to 30).
    #[arg(long, default_value_t = weft_common::POL_RULES_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    policy_rules: u32,
    /// Flows of isolated pods tracked so that their replies pass.
    #[arg(long, default_value_t = weft_common::POL_CT_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    policy_ct: u32,
    /// Service ports (frontends, NodePorts included) the load-balancer holds.
    #[arg(long, default_value_t = weft_common::LB_SERVICES_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    lb_services: u32,
    /// Backends (endpoint address and port pairs) it holds.
    #[arg(long, default_value_t = weft_common::LB_BACKENDS_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    lb_backends: u32,
    /// Maglev slots over all services (a service takes 251 to 65 521).
    #[arg(long, default_value_t = weft_common::LB_MAGLEV_MAX, value_parser = clap::value_parser!(u32).range(251..))]
    lb_maglev_slots: u32,
    /// Connection-tracking entries (two per flow on the packet path).
    #[arg(long, default_value_t = weft_common::LB_CT_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    lb_ct: u32,
    /// Session-affinity entries.
    #[arg(long, default_value_t = weft_common::LB_AFFINITY_MAX, value_parser = clap::value_parser!(u32).range(1..))]
    lb_affinity: u32,
    /// The cgroup v2 directory whose processes have Service addresses
    /// translated at connect() (default: the node's own, weft/<instance>,
    /// which holds the agent and the pods). On a dedicated node, the v2
    /// root also covers the host's own processes.
    #[arg(long)]
    lb_cgroup: Option<PathBuf>,
    /// Source ports for NodePort connections sent on to a pod of another
    /// node (FIRST-LAST); a closed connection's port is reused 2 s later.
    #[arg(long, default_value = "61000-65000", value_parser = parse_port_range)]
    nodeport_snat_ports: std::ops::RangeInclusive<u16>,
    /// Socket translations (one per TCP socket connected to a Service, two
    /// per UDP socket).
    #[arg(long, default_value_t = weft_common::LB_SOCK_MAX, value_parser = clap::value_parser!(u32).range(2..))]
    lb_sock: u32,
    /// Upstream resolver for names outside the cluster zone (IP or
    /// IP:PORT; repeat for more). Default: the nameservers of
    /// --dns-resolv-conf.
    #[arg(long = "dns-upstream", value_parser = weft_agent::dns::forward::parse_upstream)]
    dns_upstreams: Vec<std::net::SocketAddr>,
    /// The resolv.conf whose nameservers are the upstream resolvers (when
    /// no --dns-upstream is given).
    #[arg(long, default_value = "/etc/resolv.conf")]
    dns_resolv_conf: PathBuf,
    /// TTL of the cluster zone's answers, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=2_147_483_647))]
    dns_ttl: u32,
    /// Answered upstream names kept in the DNS cache.
    #[arg(long, default_value_t = weft_agent::dns::forward::DEFAULT_CACHE_SIZE, value_parser = clap::value_parser!(u64).range(1..))]
    dns_cache_size: u64,
    /// Resolve a local pod's search-path misses (`NAME.<ns>.svc.cluster.local`)
    /// on its behalf and answer with the final result (autopath).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    dns_search_shortcut: bool,
    /// DNS queries (UDP to port 53) one pod may send per second, as many at
    /// once; past it they are dropped at its veth and counted (0: no limit).
    #[arg(long, default_value_t = weft_agent::node::DEFAULT_DNS_RATE_LIMIT)]
    dns_rate_limit: u32,
    /// A name unique on this machine for the node's cgroups and pod
    /// namespaces (default: the node name; labs set it).
    #[arg(long, hide = true)]
    instance: Option<String>,
}

#[derive(Subcommand)]
enum ControllerCmd {
    /// Print the token of a node's agent, creating it when the node has none.
    NodeToken {
        /// The node's name.
        node: String,
    },
    /// Write a kubeconfig for a person or a program: a client certificate
    /// signed by the cluster CA (CN the user, O each group), as
    /// kube-apiserver reads them. What the user may do is RBAC's
    /// (docs/ACCESS.md).
    UserKubeconfig {
        /// The user's name.
        name: String,
        /// A group the user is in (repeat for more).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// The API's URL as the user reaches it (default: the admin
        /// kubeconfig's server).
        #[arg(long)]
        server: Option<String>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
    },
    /// Write a kubeconfig for a node's agent: its token and the cluster's CA.
    NodeKubeconfig {
        /// The node's name.
        node: String,
        /// The API's URL as the node reaches it.
        #[arg(long)]
        server: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab: underlay, N node namespaces, the controller and one
    /// agent per node; writes the admin kubeconfig to ~/.weft/config (or
    /// the file `--kubeconfig` names; never $KUBECONFIG).
    Up {
        /// Number of nodes (1-100).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The controller's store.
        #[arg(long, value_parser = ["sqlite", "etcd"], default_value = "sqlite")]
        store: String,
        /// Route pod blocks over VXLAN instead of host-gw.
        #[arg(long)]
        vxlan: bool,
        /// The port on 127.0.0.1 where clients on this host reach the API.
        #[arg(long, default_value_t = 16443)]
        api_port: u16,
    },
    /// Remove the lab and everything in it. Safe to run twice.
    Down,
    /// List the lab's pods.
    Pods,
    /// Run a command in a pod's container, passing output and exit code through.
    Exec {
        /// Namespace of the pod.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Pod name.
        pod: String,
        /// Container (default: the first).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Write an OCI image layout of a busybox image built from Debian's busybox-static.
    BuildBusybox {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Reference to name the image.
        #[arg(long, default_value = BUSYBOX_IMAGE)]
        name: String,
    },
}

/// A log size such as 10Mi or 500Ki, from 16 KiB (one record) to 1 TiB.
fn parse_log_size(v: &str) -> Result<u64, String> {
    let bytes = weft_api::quantity::units(v)
        .ok_or_else(|| format!("{v:?} is not a quantity such as 10Mi"))?;
    if bytes < 16 * 1024 {
        return Err(format!("{v:?} is below 16Ki"));
    }
    if bytes > 1 << 40 {
        return Err(format!("{v:?} is above 1Ti"));
    }
    u64::try_from(bytes).map_err(|_| format!("{v:?} is above 1Ti"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Pause {
        hostname,
        root,
        netns,
        pid,
        ipc,
        uts,
    } = cli.cmd
    {
        let code = pause::run(&PauseArgs {
            namespaces: Namespaces { pid, ipc, uts },
            hostname,
            root,
            netns,
        });
        return ExitCode::from(code as u8);
    }
    if let Cmd::Shim {
        id,
        bundle,
        runc,
        runc_root,
        log,
        log_max_size,
        log_max_files,
        start,
        stdin,
        stdin_once,
        tty,
    } = cli.cmd
    {
        let code = shim::run(&ShimArgs {
            id,
            bundle,
            runc,
            runc_root,
            log,
            log_max_size,
            log_max_files,
            start,
            stdin,
            stdin_once,
            tty,
        });
        return ExitCode::from(code as u8);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli.cmd, cli.kubeconfig)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message
/// before it already carries (Weft's error messages include their cause).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if out.contains(&m) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&m);
    }
    out
}

async fn run(cmd: Cmd, kubeconfig: Option<PathBuf>) -> Result<u8> {
    match cmd {
        Cmd::Shim { .. } | Cmd::Pause { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Image {
            cmd: ImageCmd::BuildBusybox { out, name },
        } => {
            let d = build_layout(&out, std::path::Path::new(BUSYBOX_BIN), &name)?;
            println!("{name} -> {d} in {}", out.display());
            Ok(0)
        }
        Cmd::Lab { cmd } => lab_cmd(cmd, kubeconfig).await,
        Cmd::Controller(args) => controller_cmd(args).await,
        Cmd::Agent(args) => agent_cmd(args, kubeconfig).await,
        Cmd::Client(cmd) => client_cmds::run(cmd, kubeconfig).await,
    }
}

/// The server of the admin kubeconfig the controller wrote.
fn admin_server() -> Result<String> {
    let path = weft_controller::server::default_kubeconfig_path();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} for the API's URL (or pass --server)",
            path.display()
        )
    })?;
    let doc: serde_json::Value = serde_norway::from_str(&text)?;
    doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("{} names no server; pass --server", path.display()))
}

async fn controller_cmd(args: ControllerArgs) -> Result<u8> {
    use weft_controller::server::{ControllerConfig, StoreConfig, default_kubeconfig_path};
    if let Some(ControllerCmd::NodeToken { node }) = args.cmd {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("create {}", args.data_dir.display()))?;
        let tokens = weft_controller::apiserver::auth::Tokens::open(&args.data_dir)?;
        println!("{}", tokens.node_token(&node)?);
        return Ok(0);
    }
    if let Some(ControllerCmd::UserKubeconfig {
        name,
        groups,
        out,
        server,
        days,
    }) = args.cmd
    {
        let server = match server {
            Some(s) => s,
            None => admin_server()?,
        };
        if !server.starts_with("https://") {
            bail!("--server must be an https:// URL, not {server:?}");
        }
        let ca_path = args.data_dir.join("pki").join("ca.crt");
        let ca = std::fs::read_to_string(&ca_path).with_context(|| {
            format!(
                "read the cluster CA {} (run `weft controller --data-dir {}` once first)",
                ca_path.display(),
                args.data_dir.display()
            )
        })?;
        let (cert, key) = weft_controller::apiserver::tls::issue_client_cert(
            &args.data_dir,
            &name,
            &groups,
            days,
        )?;
        weft_controller::server::write_cert_kubeconfig(&out, &server, &ca, &name, &cert, &key)?;
        let groups = if groups.is_empty() {
            String::new()
        } else {
            format!(" in {}", groups.join(", "))
        };
        println!(
            "wrote {} for user {name}{groups}, valid {days} days",
            out.display()
        );
        return Ok(0);
    }
    if let Some(ControllerCmd::NodeKubeconfig { node, server, out }) = args.cmd {
        if !server.starts_with("https://") {
            bail!("--server must be an https:// URL, not {server:?}");
        }
        let ca_path = args.data_dir.join("pki").join("ca.crt");
        let ca = std::fs::read_to_string(&ca_path).with_context(|| {
            format!(
                "read the cluster CA {} (run `weft controller --data-dir {}` once first)",
                ca_path.display(),
                args.data_dir.display()
            )
        })?;
        let tokens = weft_controller::apiserver::auth::Tokens::open(&args.data_dir)?;
        let token = tokens.node_token(&node)?;
        weft_controller::server::write_kubeconfig_as(
            &out,
            &server,
            &ca,
            &token,
            &format!("system:node:{node}"),
        )?;
        println!("wrote {} for node {node}", out.display());
        return Ok(0);
    }
    // The allocator, chosen deliberately: glibc's, tuned so that memory
    // comes back after a burst. Fewer arenas: the controller's threads
    // (runtime workers, store readers, the writer) would each grow their
    // own, and their fragmentation shows up as resident memory. A fixed
    // mmap threshold: blocks of 256 KiB and more (large objects, their watch
    // encodings, list responses) are mapped on their own and unmapped when
    // freed, instead of glibc raising the threshold after the first free
    // and keeping them in the heap. What stays free in the heap is trimmed
    // (`server::spawn_heap_trimmer`); `/metrics` shows the heap.
    // SAFETY: mallopt only sets allocator parameters; called before the
    // controller starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
    // Every watch is a connection (HTTP/1.1 clients) or a stream: a soft
    // limit of 1024 descriptors would cap the watchers, so raise it to the
    // hard limit, as Go programs (kube-apiserver among them) do.
    if let Ok((_, hard)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        let _ =
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut cfg = ControllerConfig::new(&args.data_dir);
    cfg.listen = args.listen;
    cfg.advertise = args.advertise_address;
    cfg.extra_sans = args.tls_sans;
    cfg.store = match args.store.as_str() {
        "etcd" => StoreConfig::Etcd(args.etcd_endpoints),
        _ => StoreConfig::Sqlite,
    };
    cfg.kubeconfig = Some(args.kubeconfig_out.unwrap_or_else(default_kubeconfig_path));
    cfg.controllers.node_grace = args.node_grace;
    cfg.controllers.eviction_delay = args.eviction_delay;
    cfg.controllers.event_ttl = args.event_ttl;
    cfg.watch_history = args.watch_history;
    cfg.max_object_size = args.max_object_size;
    cfg.encryption_config = args.encryption_provider_config;
    cfg.pod_security_default =
        weft_controller::registry::pod_security::Level::parse(&args.pod_security_default)
            .expect("clap checked the level");
    cfg.bookmark_every = args.bookmark_interval;
    cfg.cluster_cidr = args.cluster_cidr;
    cfg.service_cidr = args.service_cidr;
    cfg.listen_fds = args.listen_fds;
    weft_controller::server::run(cfg).await?;
    Ok(0)
}

/// `FIRST-LAST`, both ports, FIRST ≤ LAST.
fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: write FIRST-LAST, e.g. 61000-65000"))?;
    let a: u16 = a.parse().map_err(|_| format!("{a:?} is not a port"))?;
    let b: u16 = b.parse().map_err(|_| format!("{b:?} is not a port"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 1 ≤ FIRST ≤ LAST"));
    }
    Ok(a..=b)
}

async fn agent_cmd(args: AgentArgs, kubeconfig: Option<PathBuf>) -> Result<u8> {
    use weft_agent::node::{AgentConfig, Routing};
    // kube-rs logs each failed connection at ERROR; the agent says what
    // failed and that it retries, once, in its own words. hickory logs
    // every DNS query at INFO: kept to warnings unless RUST_LOG names it.
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_client=off".into());
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("hickory")) {
        for d in [
            "hickory_server=warn",
            "hickory_proto=warn",
            "hickory_net=warn",
            "hickory_resolver=warn",
        ] {
            filter = filter.add_directive(d.parse()?);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let node_name = match args.node_name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .context("read the host name; pass --node-name")?
            .trim()
            .to_lowercase(),
    };
    if args.teardown {
        let instance = args.instance.clone().unwrap_or_else(|| node_name.clone());
        let pins = args
            .bpf_pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/weft").join(&instance));
        let removed = weft_agent::bpf::teardown(&args.uplink, &pins)?;
        for r in &removed {
            println!("removed {r}");
        }
        if removed.is_empty() {
            println!("nothing to remove: no load-balancer of node {node_name} here");
        }
        return Ok(0);
    }
    let kubeconfig = weft_api::client::kubeconfig_path(kubeconfig.as_deref());
    if !kubeconfig.exists() {
        bail!(
            "no kubeconfig at {}: pass --kubeconfig with the node's credentials (`weft controller node-token NODE` makes its token)",
            kubeconfig.display()
        );
    }
    let mut cfg = AgentConfig::new(&node_name, kubeconfig);
    cfg.instance = args.instance.unwrap_or_else(|| node_name.clone());
    cfg.state_dir = args.state_dir;
    cfg.node_ip = args.node_ip;
    cfg.uplink = args.uplink;
    cfg.bridge = args.bridge;
    cfg.mtu = args.mtu;
    cfg.routing = if args.routing == "vxlan" {
        Routing::Vxlan
    } else {
        Routing::HostGw
    };
    cfg.lease_interval = args.lease_interval;
    cfg.restart_backoff = args.restart_backoff;
    cfg.registry.plain_http = args.insecure_registries;
    cfg.max_pods = args.max_pods;
    cfg.pod_max_pids = (args.pod_max_pids > 0).then_some(args.pod_max_pids);
    cfg.system_reserved_pids = args.system_reserved_pids;
    cfg.container_log_max_size = args.container_log_max_size;
    cfg.container_log_max_files = args.container_log_max_files;
    cfg.server_port = args.port;
    cfg.cgroup_self = args.cgroup_self;
    if let Some(dir) = args.bpf_pin_dir {
        cfg.pin_dir = dir;
    } else {
        cfg.pin_dir = PathBuf::from("/sys/fs/bpf/weft").join(&cfg.instance);
    }
    cfg.lb_sizes = weft_agent::bpf::LbSizes {
        services: args.lb_services,
        backends: args.lb_backends,
        maglev: args.lb_maglev_slots,
        ct: args.lb_ct,
        affinity: args.lb_affinity,
        sock: args.lb_sock,
    };
    cfg.policy_sizes = weft_agent::bpf::PolicySizes {
        endpoints: args.policy_endpoints,
        identities: args.policy_identities,
        cidrs: args.policy_cidrs,
        rules: args.policy_rules,
        ct: args.policy_ct,
    };
    cfg.snat_ports = args.nodeport_snat_ports;
    cfg.lb_cgroup = args.lb_cgroup;
    cfg.dns = weft_agent::node::DnsConfig {
        upstreams: if args.dns_upstreams.is_empty() {
            weft_agent::dns::forward::Upstreams::ResolvConf(args.dns_resolv_conf)
        } else {
            weft_agent::dns::forward::Upstreams::Servers(args.dns_upstreams)
        },
        ttl: args.dns_ttl,
        cache_size: args.dns_cache_size,
        search_shortcut: args.dns_search_shortcut,
        rate_limit: args.dns_rate_limit,
    };
    weft_agent::node::run(cfg).await?;
    Ok(0)
}

async fn lab_cmd(cmd: LabCmd, kubeconfig: Option<PathBuf>) -> Result<u8> {
    let prefix = lab_prefix()?;
    let prefix = prefix.as_str();
    match cmd {
        LabCmd::Up {
            nodes,
            store,
            vxlan,
            api_port,
        } => {
            let mut spec = ClusterSpec::new(nodes);
            spec.lab.prefix = prefix.into();
            spec.lab.weft_bin = std::env::current_exe()?;
            if vxlan {
                spec.lab.routing = topology::Routing::Vxlan;
            }
            spec.lab.validate()?;
            spec.store = if store == "etcd" {
                Store::Etcd
            } else {
                Store::Sqlite
            };
            if api_port == 0 {
                bail!("--api-port must name a port (1-65535): clients find the API through it");
            }
            spec.host_api = Some(std::net::SocketAddr::from(([127, 0, 0, 1], api_port)));
            // Pods of a lost node move within a quarter minute, not
            // Kubernetes' five: a node is NotReady after the default 10 s of
            // silence, and its pods go 10 s later, so that a brief stall
            // (an agent restarting, a loaded machine) costs no pods.
            spec.controller_args = vec!["--eviction-delay".into(), "10s".into()];
            match topology::state(prefix) {
                topology::LabState::Up if topology::alive(prefix) => {
                    bail!(
                        "a lab is already up; `weft lab down` first (or use it: `weft get nodes`)"
                    )
                }
                topology::LabState::Up => {
                    bail!(
                        "a lab is up but its controller is not running (did the machine or a process crash?); `weft lab down` removes it"
                    )
                }
                topology::LabState::Partial => {
                    eprintln!("a previous `weft lab up` did not finish; removing what it left ...");
                    topology::remove_prefix(prefix);
                }
                topology::LabState::Absent => {}
            }
            let started = std::time::Instant::now();
            let step = std::sync::atomic::AtomicUsize::new(0);
            let cluster = Cluster::up(spec, |what| {
                let n = step.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprintln!("[{n}] {what} ...");
            })
            .await?;
            // The host's clients: the admin kubeconfig, pointed at the
            // loopback listener: where `--kubeconfig` says, else
            // ~/.weft/config; never a file $KUBECONFIG points at, which
            // may be another cluster's.
            let data = cluster.dir.join("controller");
            let ca = std::fs::read_to_string(data.join("pki").join("ca.crt"))?;
            let token = weft_controller::apiserver::auth::Tokens::open(&data)?
                .admin_token()
                .context("the lab's controller has no admin token")?;
            let path = kubeconfig
                .clone()
                .unwrap_or_else(weft_controller::server::default_kubeconfig_path);
            weft_controller::server::write_kubeconfig(
                &path,
                &format!("https://127.0.0.1:{api_port}"),
                &ca,
                &token,
            )?;
            let nodes = cluster.lab.nodes.clone();
            cluster.keep()?;
            println!(
                "\nThe lab is up: {} node(s) in {:.1} s; the admin kubeconfig is {}.",
                nodes.len(),
                started.elapsed().as_secs_f64(),
                path.display()
            );
            for n in &nodes {
                println!("  node {:<4} {:<12} netns {}", n.name, n.ip, n.netns);
            }
            // The command as this user can type it: `weft` when that is
            // what PATH finds, else the binary's path.
            let me = std::env::current_exe()?;
            let on_path = std::env::var_os("PATH").is_some_and(|p| {
                std::env::split_paths(&p).any(|d| {
                    std::fs::canonicalize(d.join("weft")).ok() == std::fs::canonicalize(&me).ok()
                })
            });
            let mut w = if on_path {
                "weft".to_string()
            } else {
                me.display().to_string()
            };
            if kubeconfig.is_some() {
                w = format!("{w} --kubeconfig {}", path.display());
            }
            // A lab of another name is taken down by that name.
            let down = match std::env::var("WEFT_LAB_NAME") {
                Ok(n) if !n.is_empty() => format!("WEFT_LAB_NAME={n} {w} lab down"),
                _ => format!("{w} lab down"),
            };
            println!(
                "\nTry:\n  {w} get nodes\n  {w} apply -f examples/\n  {w} get pods -o wide\n  {w} exec POD -- wget -qO- http://OTHER_POD_IP/\n  {w} get service web   # then wget its CLUSTER-IP from a pod\n  {w} lb show\n  {w} logs POD\n  kubectl --kubeconfig {} get pods\nLogs of the controller and agents: {}/*.log\nTear it down with:\n  {down}",
                path.display(),
                std::path::Path::new(STATE_ROOT).join(prefix).display()
            );
            Ok(0)
        }
        LabCmd::Down => {
            topology::remove_prefix(prefix);
            println!("lab removed");
            Ok(0)
        }
        LabCmd::Pods => {
            let pods = topology::pod_summaries(prefix)?;
            let mut rows = vec![
                ["NAMESPACE", "NAME", "NODE", "IP", "STATUS"]
                    .map(String::from)
                    .to_vec(),
            ];
            for p in pods {
                rows.push(vec![
                    p.record.namespace,
                    p.record.name,
                    p.node,
                    p.record.ip.to_string(),
                    p.status,
                ]);
            }
            print!("{}", weft_api::printer::align(&rows));
            Ok(0)
        }
        LabCmd::Exec {
            namespace,
            pod,
            container,
            cmd,
        } => {
            let Some((node, rec)) = topology::pods(prefix)?
                .into_iter()
                .find(|(_, r)| r.namespace == namespace && r.name == pod)
            else {
                bail!("pod {namespace}/{pod} not found in the lab (see `weft lab pods`)");
            };
            let id = match &container {
                Some(c) => rec
                    .containers
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, id)| id.clone())
                    .with_context(|| format!("pod {namespace}/{pod} has no container {c:?}"))?,
                None => rec
                    .containers
                    .first()
                    .map(|(_, id)| id.clone())
                    .context("pod has no containers")?,
            };
            let state = PathBuf::from(STATE_ROOT).join(prefix).join(&node);
            let rt = topology::node_runtime(&state, &std::env::current_exe()?, Default::default())?;
            let code = rt.exec_inherit(&id, &cmd)?;
            Ok(u8::try_from(code).unwrap_or(255))
        }
    }
}
