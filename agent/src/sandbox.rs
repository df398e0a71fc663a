//! Pod sandboxes: one call creates a pod (network namespace, veth, IP, its
//! containers) from a Kubernetes Pod spec and an assigned IP; one call
//! removes all of it. A record per pod is written to disk *before* anything
//! is created, so that after a crash [`Sandbox::recover`] can finish the
//! cleanup, and [`Sandbox::sweep`] removes anything (namespace, veth,
//! container) that no record accounts for.

use std::{
    collections::HashSet,
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnetwork::Ipv4Network;
use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, Pod, Probe,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use weft_api::meta::{dns_label_error, dns_subdomain_error};

use crate::{
    bpf::Datapath,
    netlink::{Netlink, NetlinkError, VethAttachment, netns},
    runtime::{CreateRequest, Runtime, RuntimeError},
};

/// Prefix of host-side pod veth names (`wft` + 12 hex digits of the UID).
pub const POD_VETH_PREFIX: &str = "wft";

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The pod spec cannot be run.
    #[error("pod {pod}: {field}: {reason}")]
    InvalidPod {
        /// namespace/name.
        pod: String,
        /// Field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// That pod (same UID, or same namespace/name) is already on the node.
    #[error("pod {pod} already exists on this node (uid {uid})")]
    DuplicatePod {
        /// namespace/name.
        pod: String,
        /// The UID (and for a name clash, the existing pod).
        uid: String,
    },
    /// The IP is not usable for a pod on this node.
    #[error("address {ip} is not usable for a pod on this node: {reason}")]
    BadAddress {
        /// The address.
        ip: Ipv4Addr,
        /// Why.
        reason: String,
    },
    /// No free address left in the node's block.
    #[error("address block {block} of node {node} is exhausted")]
    AddressBlockExhausted {
        /// The block.
        block: Ipv4Network,
        /// The node.
        node: String,
    },
    /// Networking failed.
    #[error(transparent)]
    Net(#[from] NetlinkError),
    /// A container failed.
    #[error("pod {pod}: container {container}: {source}")]
    Container {
        /// namespace/name of its pod.
        pod: String,
        /// Container name.
        container: String,
        /// Cause (boxed: runtime errors are large).
        #[source]
        source: Box<RuntimeError>,
    },
    /// The runtime failed outside any one container.
    #[error(transparent)]
    Runtime(Box<RuntimeError>),
    /// eBPF attach failed.
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    /// State files.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// How far a pod's creation got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Being created: an interrupted creation is rolled back on recovery.
    Creating,
    /// Fully created.
    Ready,
    /// Being removed: an interrupted removal is finished on recovery.
    Removing,
}

/// What the node keeps on disk per pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth.
    pub host_veth: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Container (name, runtime id).
    pub containers: Vec<(String, String)>,
    /// Creation progress.
    pub phase: Phase,
    /// Restarts per container name (kept across agent restarts).
    #[serde(default)]
    pub restarts: std::collections::BTreeMap<String, i32>,
}

/// The node facts a sandbox needs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Node name (cgroup and container ids use it).
    pub node: String,
    /// The node's network namespace (`None`: the agent's own).
    pub node_netns: Option<String>,
    /// Prefix of pod namespace names (the node's, so nodes never collide).
    pub pod_netns_prefix: String,
    /// The node's pod bridge.
    pub bridge: String,
    /// The node's pod block.
    pub block: Ipv4Network,
    /// Pod MTU.
    pub mtu: u32,
    /// Where pod records and per-pod files live.
    pub state_dir: PathBuf,
    /// DNS server pods are told to use (the node's gateway address).
    pub dns: Ipv4Addr,
    /// First restart back-off; it doubles per restart up to
    /// [`MAX_BACKOFF`] (Kubernetes: 10 s).
    pub restart_backoff: Duration,
}

/// Longest restart back-off (Kubernetes: 5 minutes).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting restarts its back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

impl NodeConfig {
    /// The gateway address of the block (first host address).
    #[must_use]
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.block.network()) + 1)
    }
}

/// Host-side veth name for a pod UID: `wft` + 12 hex digits (15 bytes, IFNAMSIZ).
#[must_use]
pub fn veth_name(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("{POD_VETH_PREFIX}{hex}")
}

fn short_uid(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect()
}

/// The pod sandbox manager of one node.
pub struct Sandbox {
    cfg: NodeConfig,
    net: Netlink,
    runtime: Runtime,
    datapath: Option<std::sync::Mutex<Datapath>>,
    /// What the node observes of each container between syncs (by runtime
    /// id): probe counters, back-off. Rebuilt from scratch after a restart
    /// of the agent, as kubelet's is.
    observed: std::sync::Mutex<std::collections::HashMap<String, Observed>>,
}

/// Per-container observations between syncs.
#[derive(Clone, Debug)]
struct Observed {
    started: Instant,
    started_at: Timestamp,
    next_liveness: Instant,
    liveness_failures: i32,
    next_readiness: Instant,
    readiness_successes: i32,
    readiness_failures: i32,
    ready: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Why it last ended: (exit code, reason, message).
    last: Option<(i32, String, String)>,
    /// Set when the node killed it (liveness), so the exit is explained.
    killed_for: Option<String>,
}

impl Observed {
    fn new(base: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            started_at: now_timestamp(),
            next_liveness: now,
            liveness_failures: 0,
            next_readiness: now,
            readiness_successes: 0,
            readiness_failures: 0,
            ready: false,
            restart_at: None,
            backoff: base,
            last: None,
            killed_for: None,
        }
    }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("node", &self.cfg.node)
            .finish_non_exhaustive()
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { op, path, source }
}

impl Sandbox {
    /// Opens the node's sandbox manager. `datapath` attaches the eBPF
    /// counters to every pod veth when given.
    ///
    /// # Errors
    /// When the state directory or the node's namespace is unusable.
    pub fn new(
        cfg: NodeConfig,
        runtime: Runtime,
        datapath: Option<Datapath>,
    ) -> Result<Self, SandboxError> {
        for d in ["pods", "ips", "names"] {
            let p = cfg.state_dir.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let net = Netlink::open(cfg.node_netns.as_deref())?;
        Ok(Self {
            cfg,
            net,
            runtime,
            datapath: datapath.map(std::sync::Mutex::new),
            observed: Default::default(),
        })
    }

    /// The node configuration.
    #[must_use]
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// The runtime (for logs and exec).
    #[must_use]
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("pods")
            .join(format!("{}.json", short_uid(uid)))
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(short_uid(uid))
    }

    fn save(&self, r: &PodRecord) -> Result<(), SandboxError> {
        let p = self.record_path(&r.uid);
        let tmp = p.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(r).map_err(|e| SandboxError::Io {
            op: "encode record",
            path: p.clone(),
            source: e.into(),
        })?;
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io_err("rename", &p))
    }

    /// All pod records on disk.
    ///
    /// # Errors
    /// When the state directory cannot be read.
    pub fn records(&self) -> Result<Vec<PodRecord>, SandboxError> {
        let d = self.cfg.state_dir.join("pods");
        let mut v = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err("read", &d))? {
            let p = e.map_err(io_err("read", &d))?.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(data) = fs::read(&p)
                && let Ok(r) = serde_json::from_slice::<PodRecord>(&data)
            {
                v.push(r);
            }
        }
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(v)
    }

    /// The cgroup (relative to each hierarchy's root) of all of this
    /// node's pods: `weft/<node>`.
    #[must_use]
    pub fn node_cgroup(&self) -> String {
        format!("weft/{}", self.cfg.node)
    }

    /// The cgroup of one pod, parent of its containers' cgroups.
    #[must_use]
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("weft/{}/{}", self.cfg.node, short_uid(uid))
    }

    /// The record of the pod of that UID, if it is on this node.
    #[must_use]
    pub fn record(&self, uid: &str) -> Option<PodRecord> {
        self.load_record(uid).ok()
    }

    /// The lowest free address of the block (skipping network, gateway and broadcast).
    ///
    /// # Errors
    /// [`SandboxError::AddressBlockExhausted`].
    pub fn free_ip(&self) -> Result<Ipv4Addr, SandboxError> {
        let used = self.claimed_ips()?;
        let b = self.cfg.block;
        (u32::from(b.network()) + 2..u32::from(b.broadcast()))
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or(SandboxError::AddressBlockExhausted {
                block: b,
                node: self.cfg.node.clone(),
            })
    }

    /// Addresses claimed on this node: one file per address under `ips/`,
    /// holding the pod's UID. Listing names is all it takes, however many
    /// pods there are.
    fn claimed_ips(&self) -> Result<HashSet<Ipv4Addr>, SandboxError> {
        let d = self.cfg.state_dir.join("ips");
        Ok(fs::read_dir(&d)
            .map_err(io_err("read", &d))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Claims `ip` for `uid`: the file is created with O_EXCL, so two
    /// concurrent creations can never both get it.
    fn claim_ip(&self, ip: Ipv4Addr, uid: &str) -> Result<(), SandboxError> {
        self.check_ip_range(ip)?;
        self.claim("ips", &ip.to_string(), uid, "claim address")
            .map_err(|who| match who {
                Claim::Taken(uid) => SandboxError::BadAddress {
                    ip,
                    reason: format!("in use by pod {}", self.describe(&uid)),
                },
                Claim::Failed(e) => e,
            })
    }

    /// Claims `key` in the claims directory `kind` for `uid`: a file created
    /// with O_EXCL, so two concurrent creations can never both get it.
    fn claim(&self, kind: &str, key: &str, uid: &str, op: &'static str) -> Result<(), Claim> {
        let p = self.cfg.state_dir.join(kind).join(key);
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(uid.as_bytes())
                    .map_err(|e| Claim::Failed(io_err("write", &p)(e)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&p).unwrap_or_default();
                Err(Claim::Taken(owner.trim().to_string()))
            }
            Err(e) => Err(Claim::Failed(SandboxError::Io {
                op,
                path: p,
                source: e,
            })),
        }
    }

    /// Releases a claim, if it is still `uid`'s: after a crash another pod
    /// may hold it since.
    fn release(&self, kind: &str, key: &str, uid: &str) {
        let p = self.cfg.state_dir.join(kind).join(key);
        if fs::read_to_string(&p).is_ok_and(|o| o.trim() == uid) {
            let _ = fs::remove_file(&p);
        }
    }

    /// Whether `ip` may hold a pod on this node at all.
    fn check_ip_range(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
        let b = self.cfg.block;
        let bad = |reason: String| SandboxError::BadAddress { ip, reason };
        if !b.contains(ip) {
            return Err(bad(format!("outside the node's block {b}")));
        }
        if ip == b.network() || ip == b.broadcast() || ip == self.cfg.gateway() {
            return Err(bad(
                "the block's network, broadcast or gateway address".into()
            ));
        }
        Ok(())
    }

    /// `namespace/name (uid ...)` of a pod on this node, or its UID alone.
    fn describe(&self, uid: &str) -> String {
        self.load_record(uid).map_or_else(
            |_| format!("uid {uid}"),
            |r| format!("{}/{} (uid {})", r.namespace, r.name, r.uid),
        )
    }

    fn load_record(&self, uid: &str) -> Result<PodRecord, SandboxError> {
        let p = self.record_path(uid);
        let data = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&data).map_err(|e| SandboxError::Io {
            op: "decode record",
            path: p,
            source: e.into(),
        })
    }

    /// Creates the pod with address `ip`: namespace, veth, resolv.conf and
    /// hosts files, then every container, started in order. On failure
    /// everything is removed and the error says what failed.
    ///
    /// # Errors
    /// Bad spec, duplicate pod, unusable address, or the failing step.
    pub async fn create_pod(&self, pod: &Pod, ip: Ipv4Addr) -> Result<PodRecord, SandboxError> {
        let meta = &pod.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone().unwrap_or_default();
        let full = format!("{namespace}/{name}");
        let invalid = |field: &str, reason: &str| SandboxError::InvalidPod {
            pod: full.clone(),
            field: field.to_string(),
            reason: reason.to_string(),
        };
        let uid = meta
            .uid
            .clone()
            .filter(|u| short_uid(u).len() == 12)
            .ok_or_else(|| {
                invalid(
                    "metadata.uid",
                    "a UID with at least 12 hex digits is required",
                )
            })?;
        if dns_subdomain_error(&name).is_some() {
            return Err(invalid(
                "metadata.name",
                "must be a DNS subdomain: 1-253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            ));
        }
        if dns_label_error(&namespace).is_some() {
            return Err(invalid(
                "metadata.namespace",
                "must be a DNS label: 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
            ));
        }
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| invalid("spec", "required"))?;
        if spec.containers.is_empty() {
            return Err(invalid(
                "spec.containers",
                "at least one container is required",
            ));
        }
        let mut seen = HashSet::new();
        for (i, c) in spec.containers.iter().enumerate() {
            if c.name.is_empty()
                || c.name.len() > 63
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid(
                    &format!("spec.containers[{i}].name"),
                    "1-63 lowercase letters, digits or '-'",
                ));
            }
            if !seen.insert(&c.name) {
                return Err(invalid(
                    &format!("spec.containers[{i}].name"),
                    "duplicate container name",
                ));
            }
            if c.image.as_deref().unwrap_or_default().is_empty() {
                return Err(invalid(&format!("spec.containers[{i}].image"), "required"));
            }
        }
        if self.record_path(&uid).exists() {
            let other = self.load_record(&uid)?;
            return Err(if other.uid == uid {
                SandboxError::DuplicatePod { pod: full, uid }
            } else {
                SandboxError::InvalidPod {
                    pod: full,
                    field: "metadata.uid".into(),
                    reason: format!(
                        "its first 12 hex digits are those of pod {}/{} (uid {}); node-local names derive from them",
                        other.namespace, other.name, other.uid
                    ),
                }
            });
        }
        self.check_ip_range(ip)?;
        // Images are made present (pulled if need be) before anything is
        // made, so a missing image leaves nothing behind and says so.
        for c in &spec.containers {
            let c2 = c.clone();
            self.runtime_call(&full, &c.name, move |rt| rt.ensure_image(&c2))
                .await?;
        }
        let su = short_uid(&uid);
        let mut rec = PodRecord {
            uid: uid.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            netns: format!("{}{su}", self.cfg.pod_netns_prefix),
            host_veth: veth_name(&uid),
            ip,
            containers: spec
                .containers
                .iter()
                .map(|c| (c.name.clone(), format!("{}-{su}-{}", self.cfg.node, c.name)))
                .collect(),
            phase: Phase::Creating,
            restarts: Default::default(),
        };
        // One pod per namespace/name on a node, whatever its UID.
        let key = name_key(&namespace, &name);
        self.claim("names", &key, &uid, "claim pod name")
            .map_err(|c| match c {
                Claim::Taken(who) => SandboxError::DuplicatePod {
                    pod: full.clone(),
                    uid: who,
                },
                Claim::Failed(e) => e,
            })?;
        if let Err(e) = self.claim_ip(ip, &uid) {
            self.release("names", &key, &uid);
            return Err(e);
        }
        if let Err(e) = self.save(&rec) {
            self.release("ips", &ip.to_string(), &uid);
            self.release("names", &key, &uid);
            return Err(e);
        }
        match self.build(pod, &rec).await {
            Ok(()) => {
                rec.phase = Phase::Ready;
                self.save(&rec)?;
                Ok(rec)
            }
            Err(e) => {
                let _ = self.remove_record(&rec, Duration::ZERO).await;
                Err(e)
            }
        }
    }

    async fn build(&self, pod: &Pod, rec: &PodRecord) -> Result<(), SandboxError> {
        netns::ensure(&rec.netns)?;
        self.net
            .attach_veth(&VethAttachment {
                host_veth: rec.host_veth.clone(),
                netns: rec.netns.clone(),
                bridge: self.cfg.bridge.clone(),
                address: Ipv4Network::new(rec.ip, self.cfg.block.prefix()).expect("block prefix"),
                gateway: Some(self.cfg.gateway()),
                mtu: self.cfg.mtu,
            })
            .await?;
        if let Some(dp) = &self.datapath {
            dp.lock()
                .expect("datapath lock")
                .attach_pod(&rec.host_veth)?;
        }
        let dir = self.pod_dir(&rec.uid);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let resolv = dir.join("resolv.conf");
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        fs::write(
            &resolv,
            resolv_conf(pod, &rec.namespace, self.cfg.dns, &host),
        )
        .map_err(io_err("write", &resolv))?;
        let hosts = dir.join("hosts");
        fs::write(
            &hosts,
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
                rec.ip,
                hostname_of(&rec.name)
            ),
        )
        .map_err(io_err("write", &hosts))?;
        let hostname = dir.join("hostname");
        fs::write(&hostname, format!("{}\n", hostname_of(&rec.name)))
            .map_err(io_err("write", &hostname))?;
        let pod_json = dir.join("pod.json");
        fs::write(
            &pod_json,
            serde_json::to_vec(pod).expect("a Pod serializes"),
        )
        .map_err(io_err("write", &pod_json))?;
        let spec = pod.spec.as_ref().expect("checked");
        for (c, (_, id)) in spec.containers.iter().zip(&rec.containers) {
            self.start_container(rec, c, id).await?;
        }
        Ok(())
    }

    /// Runs a blocking runtime call (runc, the shim handshake, a pull) off
    /// the async workers; its error is reported as the container's.
    async fn runtime_call<T: Send + 'static>(
        &self,
        pod: &str,
        container: &str,
        f: impl FnOnce(Runtime) -> Result<T, RuntimeError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || f(rt))
            .await
            .expect("runtime task panicked")
            .map_err(|source| SandboxError::Container {
                pod: pod.to_string(),
                container: container.to_string(),
                source: Box::new(source),
            })
    }

    /// Creates and starts one container of the pod (also used for restarts).
    async fn start_container(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
    ) -> Result<(), SandboxError> {
        let dir = self.pod_dir(&rec.uid);
        let container = c.clone();
        let id = id.to_string();
        let netns_path = netns::path(&rec.netns);
        let hostname = hostname_of(&rec.name);
        let cgroups_path = format!("/weft/{}/{}/{}", self.cfg.node, short_uid(&rec.uid), c.name);
        let files = ["resolv.conf", "hosts", "hostname"]
            .iter()
            .map(|f| (dir.join(f), format!("/etc/{f}")))
            .collect();
        let restarts = rec.restarts.get(&c.name).copied().unwrap_or(0);
        let log = Some(self.log_path(&rec.uid, &c.name, restarts));
        self.runtime_call(&pod_name(rec), &c.name, move |rt| {
            let req = CreateRequest {
                id: &id,
                container: &container,
                netns_path,
                hostname,
                cgroups_path,
                files,
                log,
            };
            rt.run(&req).map(drop)
        })
        .await
    }

    /// Removes the pod of that UID: containers (SIGTERM, then SIGKILL after
    /// `grace`), veth, namespace, cgroups, files and record. Idempotent.
    ///
    /// # Errors
    /// When a step fails; the record stays so that a retry finishes the job.
    pub async fn remove_pod(&self, uid: &str, grace: Duration) -> Result<(), SandboxError> {
        if !self.record_path(uid).exists() {
            return Ok(());
        }
        let rec = self.load_record(uid)?;
        self.remove_record(&rec, grace).await
    }

    async fn remove_record(&self, rec: &PodRecord, grace: Duration) -> Result<(), SandboxError> {
        // Say so on disk first, so that a crash half-way is finished by
        // `recover` instead of leaving a pod that is neither here nor gone.
        if rec.phase != Phase::Removing && self.record_path(&rec.uid).exists() {
            self.save(&PodRecord {
                phase: Phase::Removing,
                ..rec.clone()
            })?;
        }
        for (name, id) in &rec.containers {
            let id2 = id.clone();
            self.runtime_call(&pod_name(rec), name, move |rt| {
                if rt.state(&id2).is_ok() {
                    let _ = rt.stop(&id2, grace);
                }
                rt.delete(&id2)
            })
            .await?;
            self.observed.lock().expect("observed lock").remove(id);
        }
        let ifindex = self.net.link(&rec.host_veth).await?.map(|l| l.index);
        if let Some(dp) = &self.datapath {
            dp.lock()
                .expect("datapath lock")
                .detach_pod(&rec.host_veth, ifindex);
        }
        self.net.detach_veth(&rec.host_veth).await?;
        netns::delete(&rec.netns)?;
        remove_cgroups(&format!("weft/{}/{}", self.cfg.node, short_uid(&rec.uid)));
        let dir = self.pod_dir(&rec.uid);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        self.release("ips", &rec.ip.to_string(), &rec.uid);
        self.release("names", &name_key(&rec.namespace, &rec.name), &rec.uid);
        match fs::remove_file(self.record_path(&rec.uid)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(SandboxError::Io {
                op: "remove record",
                path: self.record_path(&rec.uid),
                source: e,
            }),
        }
    }

    /// Attaches this agent's programs to every recorded pod's veth,
    /// replacing those an earlier agent left in place.
    ///
    /// # Errors
    /// When attaching fails.
    pub fn reattach(&self) -> Result<(), SandboxError> {
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        let mut dp = dp.lock().expect("datapath lock");
        for r in self.records()? {
            dp.attach_pod(&r.host_veth)?;
        }
        Ok(())
    }

    /// Rolls back pods whose creation was interrupted and finishes removals
    /// that were. Returns their UIDs.
    ///
    /// # Errors
    /// When a rollback step fails.
    pub async fn recover(&self) -> Result<Vec<String>, SandboxError> {
        let mut out = Vec::new();
        for r in self.records()? {
            if r.phase != Phase::Ready {
                self.remove_record(&r, Duration::ZERO).await?;
                out.push(r.uid);
            }
        }
        Ok(out)
    }

    /// Removes what no pod record accounts for: pod namespaces of this node,
    /// `wft*` veths on the node and containers in the runtime's state.
    /// Returns what it removed.
    ///
    /// # Errors
    /// When listing or removing fails.
    pub async fn sweep(&self) -> Result<Vec<String>, SandboxError> {
        let recs = self.records()?;
        let mut removed = Vec::new();
        let ids: HashSet<&str> = recs
            .iter()
            .flat_map(|r| r.containers.iter().map(|(_, id)| id.as_str()))
            .collect();
        for id in self
            .runtime
            .list()
            .map_err(|e| SandboxError::Runtime(Box::new(e)))?
        {
            if !ids.contains(id.as_str()) {
                let rt = self.runtime.clone();
                let id2 = id.clone();
                let _ = tokio::task::spawn_blocking(move || rt.delete(&id2)).await;
                removed.push(format!("container {id}"));
            }
        }
        let veths: HashSet<&str> = recs.iter().map(|r| r.host_veth.as_str()).collect();
        for l in self.net.links().await? {
            if l.kind == "veth"
                && l.name.starts_with(POD_VETH_PREFIX)
                && !veths.contains(l.name.as_str())
            {
                self.net.detach_veth(&l.name).await?;
                removed.push(format!("veth {}", l.name));
            }
        }
        let nss: HashSet<&str> = recs.iter().map(|r| r.netns.as_str()).collect();
        for n in netns::list()? {
            if n.starts_with(&self.cfg.pod_netns_prefix) && !nss.contains(n.as_str()) {
                netns::delete(&n)?;
                removed.push(format!("netns {n}"));
            }
        }
        let uids: HashSet<&str> = recs.iter().map(|r| r.uid.as_str()).collect();
        for kind in ["ips", "names"] {
            let d = self.cfg.state_dir.join(kind);
            for e in fs::read_dir(&d).map_err(io_err("read", &d))?.flatten() {
                let owner = fs::read_to_string(e.path()).unwrap_or_default();
                if !uids.contains(owner.trim()) {
                    let _ = fs::remove_file(e.path());
                    removed.push(format!("{kind} claim {}", e.file_name().to_string_lossy()));
                }
            }
        }
        let dir = self.cfg.state_dir.join("pods");
        let known: HashSet<String> = recs.iter().map(|r| short_uid(&r.uid)).collect();
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))?.flatten() {
            let p = e.path();
            if p.is_dir() && !known.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_dir_all(&p);
                removed.push(format!("files {}", p.display()));
            }
        }
        Ok(removed)
    }

    /// Removes every pod of the node (node teardown).
    ///
    /// # Errors
    /// When a removal fails.
    pub async fn remove_all(&self, grace: Duration) -> Result<(), SandboxError> {
        for r in self.records()? {
            self.remove_record(&r, grace).await?;
        }
        self.sweep().await?;
        remove_cgroups(&format!("weft/{}", self.cfg.node));
        Ok(())
    }

    /// The log of a container's run number `restart` (0 for the first), as
    /// kubelet lays them out: `<pod dir>/logs/<container>/<restart>.log`.
    #[must_use]
    pub fn log_path(&self, uid: &str, container: &str, restart: i32) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    fn load_pod(&self, uid: &str) -> Result<(PodRecord, Pod), SandboxError> {
        let rec = self.load_record(uid)?;
        let pj = self.pod_dir(uid).join("pod.json");
        let data = fs::read(&pj).map_err(io_err("read", &pj))?;
        let pod: Pod = serde_json::from_slice(&data).map_err(|e| SandboxError::Io {
            op: "decode pod",
            path: pj.clone(),
            source: e.into(),
        })?;
        Ok((rec, pod))
    }

    /// One reconcile step for a pod: reads every container's state, runs
    /// the liveness and readiness probes that are due, kills a container
    /// whose liveness probe failed `failureThreshold` times, and restarts
    /// exited containers per `restartPolicy` with exponential back-off.
    /// Returns the containers' statuses as the API reports them. The agent
    /// calls this about once a second per pod; it never blocks for long.
    ///
    /// # Errors
    /// When the pod is unknown or a restart fails.
    pub async fn sync_pod(&self, uid: &str) -> Result<Vec<ContainerStatus>, SandboxError> {
        let (mut rec, pod) = self.load_pod(uid)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let grace = Duration::from_secs(
            u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
        );
        let mut out = Vec::new();
        for (c, (_, id)) in spec.containers.iter().zip(rec.containers.clone()) {
            let id2 = id.clone();
            let state = self
                .runtime_call(&pod_name(&rec), &c.name, move |rt| rt.state(&id2))
                .await?;
            let mut obs = self.observed(&id);
            let restarts = rec.restarts.get(&c.name).copied().unwrap_or(0);
            let mut status = ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                container_id: Some(format!("runc://{id}")),
                restart_count: restarts,
                ..Default::default()
            };
            match state.status {
                crate::runtime::Status::Running => {
                    self.probe(&rec, c, &id, &mut obs, grace).await;
                    status.ready = obs.ready;
                    status.started = Some(true);
                    status.state = Some(ContainerState {
                        running: Some(ContainerStateRunning {
                            started_at: Some(Time(obs.started_at)),
                        }),
                        ..Default::default()
                    });
                }
                crate::runtime::Status::Created => {
                    status.state = Some(waiting("ContainerCreating", ""));
                }
                crate::runtime::Status::Exited(code) => {
                    let cgroup =
                        format!("weft/{}/{}/{}", self.cfg.node, short_uid(&rec.uid), c.name);
                    let reason = obs.killed_for.clone().map_or_else(
                        || {
                            if code == 0 {
                                "Completed".to_string()
                            } else if oom_killed(&cgroup) {
                                "OOMKilled".to_string()
                            } else {
                                "Error".to_string()
                            }
                        },
                        |_| "Unhealthy".to_string(),
                    );
                    let message = obs.killed_for.clone().unwrap_or_default();
                    let again = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if !again {
                        status.state = Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                reason: Some(reason),
                                message: (!message.is_empty()).then_some(message),
                                ..Default::default()
                            }),
                            ..Default::default()
                        });
                    } else {
                        let now = Instant::now();
                        let due = *obs.restart_at.get_or_insert_with(|| {
                            if obs.started.elapsed() >= BACKOFF_RESET {
                                obs.backoff = self.cfg.restart_backoff;
                            }
                            now + obs.backoff
                        });
                        obs.last = Some((code, reason, message));
                        if now >= due {
                            let id2 = id.clone();
                            self.runtime_call(&pod_name(&rec), &c.name, move |rt| rt.delete(&id2))
                                .await?;
                            // Counted first, so that this run logs to `<n>.log`.
                            let n = restarts + 1;
                            rec.restarts.insert(c.name.clone(), n);
                            self.start_container(&rec, c, &id).await?;
                            self.save(&rec)?;
                            status.restart_count = n;
                            let next = (obs.backoff * 2).min(MAX_BACKOFF);
                            let last = obs.last.take();
                            obs = Observed::new(self.cfg.restart_backoff);
                            obs.backoff = next;
                            obs.last = last;
                            status.state = Some(waiting("ContainerCreating", ""));
                        } else {
                            let left = due.saturating_duration_since(now);
                            status.state = Some(waiting(
                                "CrashLoopBackOff",
                                &format!(
                                    "back-off {}s restarting failed container {}",
                                    left.as_secs() + 1,
                                    c.name
                                ),
                            ));
                        }
                    }
                }
            }
            if let Some((code, reason, message)) = &obs.last {
                status.last_state = Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: *code,
                        reason: Some(reason.clone()),
                        message: (!message.is_empty()).then(|| message.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            self.observed
                .lock()
                .expect("observed lock")
                .insert(id.clone(), obs);
            out.push(status);
        }
        Ok(out)
    }

    fn observed(&self, id: &str) -> Observed {
        self.observed
            .lock()
            .expect("observed lock")
            .get(id)
            .cloned()
            .unwrap_or_else(|| Observed::new(self.cfg.restart_backoff))
    }

    /// Runs the container's due probes and updates `obs`; kills the
    /// container when liveness fails past its threshold.
    async fn probe(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        obs: &mut Observed,
        grace: Duration,
    ) {
        let now = Instant::now();
        let run = |p: &Probe| {
            let (p, c, id, rt, ip, ns) = (
                p.clone(),
                c.clone(),
                id.to_string(),
                self.runtime.clone(),
                rec.ip,
                self.cfg.node_netns.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::probe::run(
                    &p,
                    crate::probe::Target {
                        container: &c,
                        container_id: &id,
                        pod_ip: ip,
                        node_netns: ns.as_deref(),
                    },
                    &rt,
                )
            })
        };
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        if let Some(p) = &c.liveness_probe {
            let start = obs.started + secs(p.initial_delay_seconds, 0);
            if now >= start && now >= obs.next_liveness {
                obs.next_liveness = now
                    + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                        .max(Duration::from_millis(100));
                match run(p).await.expect("probe task") {
                    crate::probe::Outcome::Success => obs.liveness_failures = 0,
                    crate::probe::Outcome::Failure(why) => {
                        obs.liveness_failures += 1;
                        if obs.liveness_failures
                            >= p.failure_threshold
                                .unwrap_or(crate::probe::defaults::FAILURE_THRESHOLD)
                        {
                            tracing::info!(container = %id, %why, "liveness probe failed; killing");
                            obs.killed_for = Some(format!("Liveness probe failed: {why}"));
                            let rt = self.runtime.clone();
                            let id2 = id.to_string();
                            let _ = tokio::task::spawn_blocking(move || rt.stop(&id2, grace)).await;
                        }
                    }
                }
            }
        }
        match &c.readiness_probe {
            None => obs.ready = true,
            Some(p) => {
                let start = obs.started + secs(p.initial_delay_seconds, 0);
                if now >= start && now >= obs.next_readiness {
                    obs.next_readiness = now
                        + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                            .max(Duration::from_millis(100));
                    match run(p).await.expect("probe task") {
                        crate::probe::Outcome::Success => {
                            obs.readiness_failures = 0;
                            obs.readiness_successes += 1;
                            if obs.readiness_successes
                                >= p.success_threshold
                                    .unwrap_or(crate::probe::defaults::SUCCESS_THRESHOLD)
                            {
                                obs.ready = true;
                            }
                        }
                        crate::probe::Outcome::Failure(_) => {
                            obs.readiness_successes = 0;
                            obs.readiness_failures += 1;
                            if obs.readiness_failures
                                >= p.failure_threshold
                                    .unwrap_or(crate::probe::defaults::FAILURE_THRESHOLD)
                            {
                                obs.ready = false;
                            }
                        }
                    }
                }
            }
        }
    }

    /// eBPF counters of a pod's veth.
    ///
    /// # Errors
    /// When the datapath is off or the map unreadable.
    pub async fn counters(&self, uid: &str) -> Result<weft_common::IfCounters, SandboxError> {
        let host_veth = veth_name(uid);
        let idx = self
            .net
            .link(&host_veth)
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                what: "interface",
                name: host_veth.clone(),
            })?
            .index;
        match &self.datapath {
            Some(dp) => Ok(dp.lock().expect("datapath lock").counters(idx)?),
            None => Ok(weft_common::IfCounters::default()),
        }
    }
}

fn now_timestamp() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanosecond(i128::try_from(d.as_nanos()).unwrap_or(0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Outcome of a failed claim.
enum Claim {
    /// Another pod holds it: its UID.
    Taken(String),
    /// The claim could not be made.
    Failed(SandboxError),
}

fn pod_name(rec: &PodRecord) -> String {
    format!("{}/{}", rec.namespace, rec.name)
}

/// The claim key of a pod name: `_` is in neither a namespace nor a name.
fn name_key(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

/// The pod's host name: its name cut to 63 characters (the kernel takes
/// 64), without a trailing '-' or '.', as kubelet does.
/// A pod's /etc/resolv.conf, per its `dnsPolicy` and `dnsConfig`:
/// ClusterFirst (the default) names the node's DNS with the cluster search
/// list and `ndots:5`; Default takes the host's (`host`, its resolv.conf
/// text); None starts empty. `dnsConfig` then adds nameservers and search
/// domains, and sets options (a later value of a name wins).
#[must_use]
pub fn resolv_conf(pod: &Pod, ns: &str, cluster_dns: Ipv4Addr, host: &str) -> String {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = match spec.and_then(|s| s.dns_policy.as_deref()) {
        None | Some("ClusterFirst") if host_network => "Default",
        None => "ClusterFirst",
        Some(p) => p,
    };
    let mut servers: Vec<String> = Vec::new();
    let mut search: Vec<String> = Vec::new();
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    let set_option =
        |options: &mut Vec<(String, Option<String>)>, n: &str, v: Option<String>| match options
            .iter_mut()
            .find(|(k, _)| k == n)
        {
            Some(o) => o.1 = v,
            None => options.push((n.to_string(), v)),
        };
    match policy {
        "ClusterFirst" | "ClusterFirstWithHostNet" => {
            servers.push(cluster_dns.to_string());
            search.extend([
                format!("{ns}.svc.cluster.local"),
                "svc.cluster.local".into(),
                "cluster.local".into(),
            ]);
            set_option(&mut options, "ndots", Some("5".into()));
        }
        "Default" => {
            for line in host.lines() {
                let mut w = line.split_whitespace();
                match w.next() {
                    Some("nameserver") => servers.extend(w.next().map(String::from)),
                    Some("search" | "domain") => search = w.map(String::from).collect(),
                    Some("options") => {
                        for o in w {
                            let (n, v) = o.split_once(':').map_or((o, None), |(n, v)| (n, Some(v)));
                            set_option(&mut options, n, v.map(String::from));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        for s in c.nameservers.iter().flatten() {
            if !servers.contains(s) {
                servers.push(s.clone());
            }
        }
        for s in c.searches.iter().flatten() {
            if !search.contains(s) {
                search.push(s.clone());
            }
        }
        for o in c.options.iter().flatten() {
            if let Some(n) = &o.name {
                set_option(&mut options, n, o.value.clone());
            }
        }
    }
    let mut out = String::new();
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !search.is_empty() {
        out.push_str(&format!("search {}\n", search.join(" ")));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(n, v)| v.as_ref().map_or_else(|| n.clone(), |v| format!("{n}:{v}")))
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

fn hostname_of(name: &str) -> String {
    let cut = &name[..name.len().min(63)];
    cut.trim_end_matches(['-', '.']).to_string()
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

/// Whether the kernel's OOM killer killed a process of cgroup `rel` (v2
/// `memory.events`, or v1 `memory.oom_control`), which kubelet reports as
/// `OOMKilled`.
fn oom_killed(rel: &str) -> bool {
    let base = Path::new("/sys/fs/cgroup");
    let file = if base.join("cgroup.procs").exists() {
        base.join(rel).join("memory.events")
    } else {
        base.join("memory").join(rel).join("memory.oom_control")
    };
    fs::read_to_string(file).is_ok_and(|t| {
        t.lines().any(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
        })
    })
}

/// Removes the cgroup directory `rel` (e.g. `weft/n1/<pod>`) and its empty
/// descendants in every hierarchy (v1 controllers and the v2 tree), then its
/// empty parents up to and including `weft`. runc leaves parents behind.
pub fn remove_cgroups(rel: &str) {
    for root in cgroup_roots() {
        let target = root.join(rel);
        remove_tree(&target);
        let mut cur = target.parent().map(Path::to_path_buf);
        while let Some(p) = cur {
            if !p.starts_with(root.join("weft")) {
                break;
            }
            if fs::remove_dir(&p).is_err() {
                break;
            }
            cur = p.parent().map(Path::to_path_buf);
        }
    }
}

/// The cgroup v2 hierarchy: /sys/fs/cgroup on a pure v2 host, its
/// `unified` tree on a hybrid one; `None` on a v1-only host.
#[must_use]
pub fn cgroup_v2_root() -> Option<PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| {
            nix::sys::statfs::statfs(p.as_path())
                .is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
        })
}

/// Roots of the mounted cgroup hierarchies: /sys/fs/cgroup itself on a pure
/// v2 host; each v1 controller and the `unified` v2 tree on a hybrid host.
#[must_use]
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        return vec![base.to_path_buf()];
    }
    let mut roots: Vec<PathBuf> = fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::canonicalize(e.path()).ok())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

fn remove_tree(p: &Path) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(p);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_follows_dns_policy_and_config() {
        let pod = |policy: Option<&str>, config: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "namespace": "team"},
                "spec": {"containers": [], "dnsPolicy": policy, "dnsConfig": config},
            }))
            .expect("pod")
        };
        let dns = Ipv4Addr::new(10, 244, 1, 1);
        let host = "nameserver 192.0.2.53\nsearch example.org\noptions timeout:2 rotate\n";
        assert_eq!(
            resolv_conf(&pod(None, serde_json::Value::Null), "team", dns, host),
            "nameserver 10.244.1.1\nsearch team.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(
                &pod(Some("Default"), serde_json::Value::Null),
                "team",
                dns,
                host
            ),
            "nameserver 192.0.2.53\nsearch example.org\noptions timeout:2 rotate\n"
        );
        let config = serde_json::json!({
            "nameservers": ["192.0.2.1"],
            "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        });
        assert_eq!(
            resolv_conf(&pod(Some("None"), config.clone()), "team", dns, host),
            "nameserver 192.0.2.1\nsearch corp.example\noptions ndots:2 edns0\n"
        );
        assert_eq!(
            resolv_conf(&pod(Some("ClusterFirst"), config), "team", dns, host),
            "nameserver 10.244.1.1\nnameserver 192.0.2.1\nsearch team.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn host_names_are_cut_as_kubelet_cuts_them() {
        assert_eq!(hostname_of("web-1"), "web-1");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(hostname_of(&long), "a".repeat(62));
        assert_eq!(hostname_of(&long).len(), 62);
    }
}
