//! `weft`: one binary for every role. This file parses arguments, prints,
//! and calls into the libraries; nothing is decided here.

mod client_cmds;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use weft_agent::runtime::{
    busybox::{BUSYBOX_BIN, BUSYBOX_IMAGE, build_layout},
    shim::{self, ShimArgs},
};
use weft_tests::lab::{self, Lab, LabSpec, STATE_ROOT};

/// Name prefix of the lab `weft lab` manages (one per machine).
const LAB_PREFIX: &str = "weft-lab";

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
        #[arg(long)]
        start: bool,
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
    /// Revisions of history kept for watches (older resourceVersions get 410 Gone).
    #[arg(long, default_value_t = 100_000)]
    watch_history: i64,
    /// The pod network; every node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: ipnetwork::Ipv4Network,
    /// Where Service ClusterIPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cidr: ipnetwork::Ipv4Network,
    /// How often watches that allow bookmarks get one.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    bookmark_interval: std::time::Duration,
}

#[derive(Subcommand)]
enum ControllerCmd {
    /// Print the token of a node's agent, creating it when the node has none.
    NodeToken {
        /// The node's name.
        node: String,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build the lab: underlay, N nodes with pod networks, the busybox image
    /// on every node, and the pods of --pods (their spec.nodeName picks the node).
    Up {
        /// Number of nodes (1-100).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Route pod blocks over VXLAN instead of host-gw.
        #[arg(long)]
        vxlan: bool,
        /// YAML file of Pods to run (multi-document).
        #[arg(long)]
        pods: Option<PathBuf>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Shim {
        id,
        bundle,
        runc,
        runc_root,
        log,
        start,
    } = cli.cmd
    {
        let code = shim::run(&ShimArgs {
            id,
            bundle,
            runc,
            runc_root,
            log,
            start,
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
        Cmd::Shim { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Image {
            cmd: ImageCmd::BuildBusybox { out, name },
        } => {
            let d = build_layout(&out, std::path::Path::new(BUSYBOX_BIN), &name)?;
            println!("{name} -> {d} in {}", out.display());
            Ok(0)
        }
        Cmd::Lab { cmd } => lab_cmd(cmd).await,
        Cmd::Controller(args) => controller_cmd(args).await,
        Cmd::Client(cmd) => client_cmds::run(cmd, kubeconfig).await,
    }
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
    // Fewer malloc arenas: the controller's threads (runtime workers, store
    // readers, the writer) would each grow their own, and their
    // fragmentation shows up as resident memory.
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // controller starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
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
    cfg.watch_history = args.watch_history;
    cfg.bookmark_every = args.bookmark_interval;
    cfg.cluster_cidr = args.cluster_cidr;
    cfg.service_cidr = args.service_cidr;
    weft_controller::server::run(cfg).await?;
    Ok(0)
}

fn read_pods(path: &std::path::Path) -> Result<Vec<Pod>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut pods = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let v = serde_norway::Value::deserialize(doc)
            .with_context(|| format!("{}: document {}: not YAML", path.display(), i + 1))?;
        if v.is_null() {
            continue;
        }
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        if kind != "Pod" {
            bail!(
                "{}: document {}: kind {kind:?}: only Pods can be run in the lab until the controller lands",
                path.display(),
                i + 1
            );
        }
        let pod: Pod = serde_norway::from_value(v)
            .with_context(|| format!("{}: document {}", path.display(), i + 1))?;
        pods.push(pod);
    }
    Ok(pods)
}

use serde::Deserialize as _;

async fn lab_cmd(cmd: LabCmd) -> Result<u8> {
    match cmd {
        LabCmd::Up { nodes, vxlan, pods } => {
            let pods = pods.map(|p| read_pods(&p)).transpose()?.unwrap_or_default();
            let mut spec = LabSpec::new(nodes);
            spec.prefix = LAB_PREFIX.into();
            spec.weft_bin = std::env::current_exe()?;
            if vxlan {
                spec.routing = lab::Routing::Vxlan;
            }
            spec.validate()?;
            match lab::state(LAB_PREFIX) {
                lab::LabState::Up => {
                    bail!("a lab is already up; `weft lab down` first (or use it: `weft lab pods`)")
                }
                lab::LabState::Partial => {
                    eprintln!("a previous `weft lab up` did not finish; removing what it left ...");
                    lab::remove_prefix(LAB_PREFIX);
                }
                lab::LabState::Absent => {}
            }
            eprintln!("[1/3] building {nodes} node(s) on the underlay 192.0.2.0/24 ...");
            let lab = Lab::up(spec).await?;
            eprintln!("[2/3] loading {BUSYBOX_IMAGE} on every node ...");
            let mut sandboxes = Vec::new();
            for n in &lab.nodes {
                let sb = lab.sandbox(n)?;
                lab.load_busybox(&sb)?;
                sandboxes.push((n.clone(), sb));
            }
            eprintln!("[3/3] starting {} pod(s) ...", pods.len());
            for pod in pods {
                let (n, rec) = lab.run_pod(pod, &sandboxes).await?;
                println!(
                    "pod {}/{} on {} ({}) at {}",
                    rec.namespace, rec.name, n.name, n.ip, rec.ip
                );
            }
            lab.keep()?;
            println!(
                "\nThe lab is up. Try:\n  weft lab pods\n  weft lab exec POD -- wget -qO- http://IP/\nTear it down with:\n  weft lab down"
            );
            Ok(0)
        }
        LabCmd::Down => {
            lab::remove_prefix(LAB_PREFIX);
            println!("lab removed");
            Ok(0)
        }
        LabCmd::Pods => {
            let pods = lab::pod_summaries(LAB_PREFIX)?;
            println!(
                "{:<12} {:<20} {:<6} {:<15} STATUS",
                "NAMESPACE", "NAME", "NODE", "IP"
            );
            for p in pods {
                println!(
                    "{:<12} {:<20} {:<6} {:<15} {}",
                    p.record.namespace, p.record.name, p.node, p.record.ip, p.status
                );
            }
            Ok(0)
        }
        LabCmd::Exec {
            namespace,
            pod,
            container,
            cmd,
        } => {
            let Some((node, rec)) = lab::pods(LAB_PREFIX)?
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
            let state = PathBuf::from(STATE_ROOT).join(LAB_PREFIX).join(&node);
            let rt = lab::node_runtime(&state, &std::env::current_exe()?, Default::default())?;
            let code = rt.exec_inherit(&id, &cmd)?;
            Ok(u8::try_from(code).unwrap_or(255))
        }
    }
}
