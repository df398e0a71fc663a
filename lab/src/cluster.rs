//! A whole Weft cluster inside a lab: the underlay and node namespaces of
//! [`crate::topology`], a `weft controller` (SQLite or etcd) in the underlay
//! namespace at 192.0.2.1:6443, and a `weft agent` in every node's
//! namespace, each with its own token. `weft lab up` and the end-to-end
//! tests both build it with [`Cluster::up`].
//!
//! Processes are started with `setns` into their namespace rather than
//! `ip netns exec`, which would also give them a private /sys without the
//! cgroup and bpffs mounts an agent needs. They run in their own session,
//! so `weft lab up` can return and leave the cluster running.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use weft_agent::{
    netlink::netns,
    runtime::busybox::{BUSYBOX_BIN, BUSYBOX_IMAGE, build_layout},
    runtime::reference::ImageRef,
};

use crate::topology::{self, Lab, LabNode, LabSpec, Routing, STATE_ROOT};

/// Where the controller listens inside the lab (the underlay's first address).
pub const API_ADDR: &str = "192.0.2.1:6443";

/// A second name of the busybox image on every node, for rolling updates.
pub const SECOND_IMAGE: &str = "weft.local/busybox:v2";

/// Which store the lab's controller uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The embedded SQLite file.
    Sqlite,
    /// Debian's etcd, started in the underlay namespace.
    Etcd,
}

/// What cluster to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// The lab underneath (nodes, segments, routing, prefix, binary).
    pub lab: LabSpec,
    /// The controller's store.
    pub store: Store,
    /// Also serve the API on this host address through an inherited socket
    /// (`weft lab up` uses 127.0.0.1 so that clients on the host work).
    pub host_api: Option<SocketAddr>,
    /// Extra flags for `weft controller`.
    pub controller_args: Vec<String>,
    /// Extra flags for every `weft agent`.
    pub agent_args: Vec<String>,
    /// Extra flags for one node's agent (after `agent_args`).
    pub node_agent_args: BTreeMap<String, Vec<String>>,
}

impl ClusterSpec {
    /// A cluster of `nodes` nodes on SQLite, for tests (unique prefix).
    #[must_use]
    pub fn new(nodes: usize) -> Self {
        let mut lab = LabSpec::new(nodes);
        lab.agents = true;
        Self {
            lab,
            store: Store::Sqlite,
            host_api: None,
            controller_args: Vec::new(),
            agent_args: Vec::new(),
            node_agent_args: BTreeMap::new(),
        }
    }
}

/// A running cluster. Dropping it removes everything (unless kept).
pub struct Cluster {
    /// The lab underneath.
    pub lab: Lab,
    /// The lab's state directory (/run/weft/<prefix>).
    pub dir: PathBuf,
    /// The admin kubeconfig, valid inside the lab's namespaces.
    pub kubeconfig: PathBuf,
    spec: ClusterSpec,
    agents: BTreeMap<String, Child>,
    controller: Option<Child>,
    etcd: Option<Child>,
    kept: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.lab.prefix)
            .finish_non_exhaustive()
    }
}

/// Makes `cmd` run inside the named network namespace (and, with
/// `session`, in a session of its own, so it outlives its parent's
/// terminal).
///
/// # Errors
/// When the namespace cannot be opened.
pub fn in_netns(cmd: &mut Command, ns: &str, session: bool) -> Result<()> {
    let ns_file =
        std::fs::File::open(netns::path(ns)).with_context(|| format!("open the namespace {ns}"))?;
    // SAFETY: between fork and exec only setns(2) and setsid(2) run, both
    // async-signal-safe system calls on a descriptor opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            if session {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    Ok(())
}

/// Spawns `cmd` inside the named network namespace, in a session of its
/// own, with output appended to `log`.
fn spawn_in(ns: &str, mut cmd: Command, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    in_netns(&mut cmd, ns, true)?;
    cmd.spawn()
        .with_context(|| format!("start {:?}", cmd.get_program()))
}

/// Whether a pod (as JSON) is Ready and not being deleted.
#[must_use]
pub fn pod_ready(p: &serde_json::Value) -> bool {
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(p.clone())
        .is_ok_and(|p| p.metadata.deletion_timestamp.is_none() && weft_api::pod::is_ready(&p))
}

/// Whether a node (as JSON) has its Ready condition True.
fn ready_condition(node: &serde_json::Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

impl Cluster {
    /// Builds the lab, starts the controller and one agent per node, and
    /// waits until every node is Ready. `progress` hears each step. On
    /// failure everything made is removed.
    ///
    /// # Errors
    /// A bad spec, a missing tool (etcd, busybox-static), or a part that
    /// does not come up in time (its log is quoted).
    pub async fn up(spec: ClusterSpec, progress: impl Fn(&str)) -> Result<Self> {
        let mut lab_spec = spec.lab.clone();
        lab_spec.agents = true;
        progress(&format!(
            "building {} node namespace(s) on the underlay 192.0.2.0/24",
            lab_spec.nodes
        ));
        let lab = Lab::up(lab_spec).await?;
        let dir = Path::new(STATE_ROOT).join(&lab.prefix);
        std::fs::create_dir_all(&dir)?;
        let mut c = Cluster {
            kubeconfig: dir.join("admin.kubeconfig"),
            dir,
            lab,
            spec,
            agents: BTreeMap::new(),
            controller: None,
            etcd: None,
            kept: false,
        };
        // Drop removes the lab if any step below fails.
        c.start_control_plane(&progress)?;
        progress(&format!("loading {BUSYBOX_IMAGE} on every node"));
        c.load_images()?;
        progress("starting one agent per node");
        let nodes: Vec<LabNode> = c.lab.nodes.clone();
        for n in &nodes {
            c.start_agent(&n.name)?;
        }
        progress("waiting for every node to be Ready");
        c.wait_nodes_ready(Duration::from_secs(60))?;
        Ok(c)
    }

    fn start_control_plane(&mut self, progress: &impl Fn(&str)) -> Result<()> {
        if self.spec.store == Store::Etcd {
            progress("starting etcd in the underlay namespace");
            self.start_etcd()?;
        }
        self.start_controller(progress)
    }

    /// SIGKILLs the controller (the agents and their pods go on) and waits
    /// for it.
    ///
    /// # Errors
    /// When it was not started by this handle.
    pub fn kill_controller(&mut self) -> Result<()> {
        let mut c = self
            .controller
            .take()
            .context("no controller started here")?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// Starts the controller again on its data (after `kill_controller`),
    /// and waits until it serves.
    ///
    /// # Errors
    /// When it does not serve within 30 s.
    pub fn restart_controller(&mut self) -> Result<()> {
        if self.controller.is_some() {
            self.kill_controller()?;
        }
        self.start_controller(&|_: &str| {})
    }

    /// The controller's pid.
    #[must_use]
    pub fn controller_pid(&self) -> Option<u32> {
        self.controller.as_ref().map(Child::id)
    }

    fn start_controller(&mut self, progress: &impl Fn(&str)) -> Result<()> {
        let weft = self.lab.weft_bin.clone();
        let data = self.dir.join("controller");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new(&weft);
        cmd.args([
            "controller",
            "--listen",
            API_ADDR,
            "--advertise-address",
            "192.0.2.1",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--kubeconfig-out")
        .arg(&self.kubeconfig)
        .args(["--tls-san", "127.0.0.1", "--tls-san", "localhost"]);
        if self.spec.store == Store::Etcd {
            cmd.args([
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
            ]);
        }
        // The host's listener is opened here, in the host's namespace, and
        // handed down as descriptor 3.
        let host_listener = match self.spec.host_api {
            Some(addr) => Some(
                std::net::TcpListener::bind(addr)
                    .with_context(|| format!("listen on {addr} for the host's clients"))?,
            ),
            None => None,
        };
        if let Some(l) = &host_listener {
            use std::os::fd::AsRawFd as _;
            let fd = l.as_raw_fd();
            cmd.args(["--listen-fd", "3"]);
            // SAFETY: dup2 is async-signal-safe; it clears close-on-exec on
            // the copy, which the controller then owns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(&self.spec.controller_args).env("RUST_LOG", "info");
        progress(&format!(
            "starting the controller ({} store) at {API_ADDR}",
            if self.spec.store == Store::Etcd {
                "etcd"
            } else {
                "SQLite"
            }
        ));
        let child = spawn_in(&self.lab.underlay, cmd, &self.dir.join("controller.log"))?;
        drop(host_listener);
        self.controller = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.controller.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "the controller exited with {status}:\n{}",
                    self.controller_log()
                );
            }
            if self.kubeconfig.exists() && self.api_answers() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the controller did not serve within 30 s:\n{}",
                    self.controller_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_etcd(&mut self) -> Result<()> {
        let data = self.dir.join("etcd");
        std::fs::create_dir_all(&data)?;
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "lab", "--data-dir"]).arg(&data).args([
            "--listen-client-urls",
            "http://127.0.0.1:2379",
            "--advertise-client-urls",
            "http://127.0.0.1:2379",
            "--listen-peer-urls",
            "http://127.0.0.1:2380",
            "--log-level",
            "warn",
        ]);
        let child = spawn_in(&self.lab.underlay, cmd, &self.dir.join("etcd.log"))
            .context("start etcd (apt-get install etcd-server)")?;
        self.etcd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr: SocketAddr = "127.0.0.1:2379".parse()?;
        loop {
            let up = netns::run_in(Some(&self.lab.underlay), move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not answer within 20 s:\n{}",
                    std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the API answers /healthz from inside the lab.
    fn api_answers(&self) -> bool {
        self.weft_output(&["get", "namespaces", "-o", "name"])
            .is_ok_and(|o| o.status.success())
    }

    /// The controller's log so far.
    #[must_use]
    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controller.log")).unwrap_or_default()
    }

    /// A node agent's log so far.
    #[must_use]
    pub fn agent_log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("agent-{node}.log"))).unwrap_or_default()
    }

    fn load_images(&self) -> Result<()> {
        let layout = self.dir.join("busybox-layout");
        if !layout.join("index.json").exists() {
            build_layout(&layout, Path::new(BUSYBOX_BIN), BUSYBOX_IMAGE)
                .context("build the busybox image (apt-get install busybox-static)")?;
        }
        for n in &self.lab.nodes {
            let rt = topology::node_runtime(
                &self.lab.node_state_dir(n),
                &self.lab.weft_bin,
                Default::default(),
            )?;
            rt.images().import(&layout, None)?;
            // A second name for rolling updates to "a new image".
            let img = rt.images().resolve(BUSYBOX_IMAGE)?;
            rt.images().tag(
                &ImageRef::parse(SECOND_IMAGE).expect("a valid reference"),
                &img.manifest_digest,
            )?;
        }
        Ok(())
    }

    /// Writes `node`'s kubeconfig (its own token, the lab's CA) and starts
    /// its agent. Starting a node whose agent runs is an error.
    ///
    /// # Errors
    /// When the token cannot be made or the agent not started.
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        if self
            .agents
            .get_mut(node)
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
        {
            bail!("the agent of {node} is running");
        }
        let n = self.lab.node(node).clone();
        let kubeconfig = self.dir.join(format!("agent-{node}.kubeconfig"));
        if !kubeconfig.exists() {
            // What an operator runs on the controller's machine.
            let out = Command::new(&self.lab.weft_bin)
                .args(["controller", "--data-dir"])
                .arg(self.dir.join("controller"))
                .args([
                    "node-kubeconfig",
                    node,
                    "--server",
                    &format!("https://{API_ADDR}"),
                    "--out",
                ])
                .arg(&kubeconfig)
                .output()?;
            if !out.status.success() {
                bail!(
                    "node-kubeconfig {node}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let state = self.lab.node_state_dir(&n);
        std::fs::create_dir_all(&state)?;
        let mut cmd = Command::new(&self.lab.weft_bin);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                "agent",
                "--node-name",
                node,
                "--instance",
                &n.netns,
                "--uplink",
                "eth0",
                "--cgroup-self",
            ])
            .arg("--state-dir")
            .arg(&state)
            .args(["--insecure-registry", topology::REGISTRY_ADDR]);
        if self.lab.routing == Routing::Vxlan {
            cmd.args(["--routing", "vxlan"]);
        }
        cmd.args(&self.spec.agent_args)
            .args(self.spec.node_agent_args.get(node).into_iter().flatten())
            .env("RUST_LOG", "info");
        let child = spawn_in(&n.netns, cmd, &self.dir.join(format!("agent-{node}.log")))?;
        self.agents.insert(node.to_string(), child);
        Ok(())
    }

    /// Sets the extra flags of `node`'s agent for its next start.
    pub fn set_node_agent_args(&mut self, node: &str, args: &[&str]) {
        self.spec.node_agent_args.insert(
            node.to_string(),
            args.iter().map(|a| (*a).to_string()).collect(),
        );
    }

    /// SIGKILLs `node`'s agent (its pods go on running) and waits for it.
    ///
    /// # Errors
    /// When it was not started by this handle.
    pub fn kill_agent(&mut self, node: &str) -> Result<()> {
        let mut c = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent of {node} started here"))?;
        c.kill()?;
        c.wait()?;
        Ok(())
    }

    /// The pid of `node`'s agent.
    #[must_use]
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node).map(Child::id)
    }

    /// The token of `node`'s agent (made on first use).
    ///
    /// # Errors
    /// When `weft controller node-token` fails.
    pub fn node_token(&self, node: &str) -> Result<String> {
        let out = Command::new(&self.lab.weft_bin)
            .args(["controller", "--data-dir"])
            .arg(self.dir.join("controller"))
            .args(["node-token", node])
            .output()?;
        if !out.status.success() {
            bail!(
                "node-token {node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The `weft` CLI as the admin, set to run inside the underlay
    /// namespace (callers wire its streams).
    ///
    /// # Errors
    /// When the namespace cannot be opened.
    pub fn weft_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new(&self.lab.weft_bin);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        in_netns(&mut cmd, &self.lab.underlay, false)?;
        Ok(cmd)
    }

    /// Runs the `weft` CLI as the admin, inside the underlay namespace.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn weft_output(&self, args: &[&str]) -> Result<std::process::Output> {
        Ok(self.weft_command(args)?.stdin(Stdio::null()).output()?)
    }

    /// Runs the `weft` CLI as the admin and returns its standard output.
    ///
    /// # Errors
    /// When it fails (its standard error says why).
    pub fn weft(&self, args: &[&str]) -> Result<String> {
        let out = self.weft_output(args)?;
        if !out.status.success() {
            bail!(
                "weft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `weft apply -f` of the YAML text.
    ///
    /// # Errors
    /// When the apply fails.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        let f = tempfile::NamedTempFile::new()?;
        std::fs::write(f.path(), yaml)?;
        self.weft(&["apply", "-f", f.path().to_str().unwrap_or_default()])
            .map(drop)
    }

    /// Every node's iptables and nftables rule sets are empty: Weft's
    /// data path needs none.
    ///
    /// # Errors
    /// When a rule is found or a tool fails.
    pub fn assert_no_firewall_rules(&self) -> Result<()> {
        for n in &self.lab.nodes {
            let mut nft = Command::new("nft");
            nft.args(["list", "ruleset"]);
            let out = self.output_in(&n.netns, nft)?;
            ensure!(
                out.status.success(),
                "nft list ruleset failed on {}",
                n.name
            );
            let rules = String::from_utf8_lossy(&out.stdout);
            ensure!(
                rules.trim().is_empty(),
                "nftables rules on {}:\n{rules}",
                n.name
            );
            for tool in ["iptables-save", "iptables-legacy-save"] {
                let out = self.output_in(&n.netns, Command::new(tool))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
                    .collect();
                ensure!(lines.is_empty(), "{tool} on {}: {lines:?}", n.name);
            }
        }
        Ok(())
    }

    /// Runs `cmd` inside a namespace of the lab and collects its output.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn output_in(&self, ns: &str, mut cmd: Command) -> Result<std::process::Output> {
        in_netns(&mut cmd, ns, false)?;
        Ok(cmd.stdin(Stdio::null()).output()?)
    }

    /// Whether the Node `node`'s Ready condition is True.
    ///
    /// # Errors
    /// When the Node cannot be read.
    pub fn node_ready(&self, node: &str) -> Result<bool> {
        Ok(ready_condition(&self.get_json(&["node", node])?))
    }

    /// Fails node `node`: its agent is SIGKILLed and its containers killed,
    /// as when the machine dies.
    ///
    /// # Errors
    /// When the agent was not started here or runc refuses.
    pub fn fail_node(&mut self, node: &str) -> Result<()> {
        self.kill_agent(node)?;
        let runc_root = self.lab.node_state_dir(self.lab.node(node)).join("runc");
        let [_, containers, _, _] = self.node_inventory(node)?;
        for id in &containers {
            let out = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["kill", id, "KILL"])
                .output()?;
            if !out.status.success() {
                bail!("runc kill {id}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// Runs `argv` in the first container of pod `ns/name`, on whichever
    /// node holds it; returns its exit code and combined output.
    ///
    /// # Errors
    /// When the pod is not on any node or runc cannot be run.
    pub fn exec(&self, ns: &str, name: &str, argv: &[&str]) -> Result<(i32, String)> {
        let (node, rec) = topology::pods(&self.lab.prefix)?
            .into_iter()
            .find(|(_, r)| r.namespace == ns && r.name == name)
            .with_context(|| format!("pod {ns}/{name} is on no node"))?;
        let id = rec
            .containers
            .first()
            .map(|(_, id)| id.clone())
            .context("no containers")?;
        let rt = topology::node_runtime(
            &self.dir.join(&node),
            &self.lab.weft_bin,
            Default::default(),
        )?;
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_string()).collect();
        Ok(rt.exec_capture(&id, &argv, Duration::from_secs(20))?)
    }

    /// What is on `node`: (pod records, runc containers, pod namespaces,
    /// pod veths), each as a sorted list of names.
    ///
    /// # Errors
    /// When the node's state cannot be read.
    pub fn node_inventory(&self, node: &str) -> Result<[Vec<String>; 4]> {
        let n = self.lab.node(node);
        let state = self.lab.node_state_dir(n);
        let mut records: Vec<String> = topology::pods(&self.lab.prefix)?
            .into_iter()
            .filter(|(nn, _)| nn == node)
            .map(|(_, r)| format!("{}/{}", r.namespace, r.name))
            .collect();
        records.sort();
        let out = Command::new("runc")
            .arg("--root")
            .arg(state.join("runc"))
            .args(["list", "-q"])
            .output()?;
        let mut containers: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        containers.sort();
        let mut namespaces: Vec<String> = netns::list()?
            .into_iter()
            .filter(|x| x.starts_with(&format!("{}-p-", n.netns)))
            .collect();
        namespaces.sort();
        let mut ip = Command::new("ip");
        ip.args(["-o", "link", "show"]);
        let links = self.output_in(&n.netns, ip)?;
        let mut veths: Vec<String> = String::from_utf8_lossy(&links.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with(weft_agent::sandbox::POD_VETH_PREFIX))
            .collect();
        veths.sort();
        Ok([records, containers, namespaces, veths])
    }

    /// `weft get nodes -o json`, parsed.
    ///
    /// # Errors
    /// When the command fails.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let out = self.weft_output(&all)?;
        if !out.status.success() {
            bail!(
                "weft {}: {}",
                all.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until every lab node is registered and Ready.
    ///
    /// # Errors
    /// After `timeout`, with the agents' logs.
    pub fn wait_nodes_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, c) in &mut self.agents {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "the agent of {name} exited with {status}:\n{}",
                        std::fs::read_to_string(self.dir.join(format!("agent-{name}.log")))
                            .unwrap_or_default()
                    );
                }
            }
            let ready = self
                .get_json(&["nodes"])
                .map(|v| {
                    v["items"]
                        .as_array()
                        .map(|items| items.iter().filter(|n| ready_condition(n)).count())
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            if ready >= self.lab.nodes.len() {
                self.route_pod_blocks()?;
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .lab
                    .nodes
                    .iter()
                    .map(|n| format!("--- agent {}:\n{}", n.name, self.agent_log(&n.name)))
                    .collect();
                bail!(
                    "only {ready} of {} nodes became Ready within {timeout:?}\n{}",
                    self.lab.nodes.len(),
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Routes each node's pod block through that node in the underlay
    /// namespace, where the controller runs: the lab's "route table", as a
    /// cloud network or the controller's host routing gives it, so that
    /// pods reach the API (through the `kubernetes` Service) and its
    /// answers come back.
    ///
    /// # Errors
    /// When the nodes cannot be read or a route set.
    pub fn route_pod_blocks(&self) -> Result<()> {
        let nodes = self.get_json(&["nodes"])?;
        for n in nodes["items"].as_array().into_iter().flatten() {
            let Some(cidr) = n["spec"]["podCIDR"].as_str() else {
                continue;
            };
            let Some(ip) = n["status"]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["type"] == "InternalIP")
                .and_then(|a| a["address"].as_str())
            else {
                continue;
            };
            let mut cmd = Command::new("ip");
            cmd.args(["route", "replace", cidr, "via", ip]);
            let out = self.output_in(&self.lab.underlay, cmd)?;
            if !out.status.success() {
                bail!(
                    "route {cidr} via {ip} in the underlay: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Leaves the cluster running after this process exits (`weft lab up`).
    ///
    /// # Errors
    /// When the lab's ready mark cannot be written.
    pub fn keep(mut self) -> Result<()> {
        self.lab.set_keep()?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.kept {
            // The children run on after this process exits.
            return;
        }
        // Removing the lab kills every process in its namespaces; the
        // children are reaped here so that none is left a zombie.
        topology::remove_prefix(&self.lab.prefix);
        for c in self
            .agents
            .values_mut()
            .chain(self.controller.iter_mut())
            .chain(self.etcd.iter_mut())
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
