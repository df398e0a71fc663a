//! Pod sandboxes: one call creates a pod (network namespace, veth, IP, its
//! containers) from a Kubernetes Pod spec and an assigned IP; one call
//! removes all of it. A record per pod is written to disk *before* anything
//! is created, so that after a crash [`Sandbox::recover`] can finish the
//! cleanup, and [`Sandbox::sweep`] removes anything (namespace, veth,
//! container) that no record accounts for.
//!
//! By concern: [`records`] (the records and the claims on addresses and
//! names), [`files`] (resolv.conf, host name), [`cgroups`], and
//! [`lifecycle`] (a running pod's sync: probes, restarts, back-off); this
//! module creates and removes pods and recovers after a crash.

mod cgroups;
pub mod env;
mod files;
mod lifecycle;
mod records;
pub mod volumes;

pub use cgroups::{cgroup_roots, cgroup_v2_root, kill_all, machine_pids, procs, remove_cgroups};
pub use files::resolv_conf;
pub use lifecycle::{BACKOFF_RESET, MAX_BACKOFF, PodSync, is_sidecar};
pub use records::{Phase, PodRecord};

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Pod;
use weft_api::meta::{dns_label_error, dns_subdomain_error};

use self::{
    files::hostname_of,
    lifecycle::Observed,
    records::{Claim, name_key},
};

use crate::{
    bpf::Datapath,
    netlink::{Netlink, NetlinkError, VethAttachment, netns},
    runtime::{CreateRequest, Runtime, RuntimeError, pause},
};

/// Prefix of host-side pod veth names (`wft` + 12 hex digits of the UID).
pub const POD_VETH_PREFIX: &str = "wft";

/// Errors of the sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A container's configuration cannot be made: a ConfigMap, Secret or
    /// key it references is missing (kubelet's words, which the status
    /// shows as they are).
    #[error("{message}")]
    Config {
        /// namespace/name.
        pod: String,
        /// The container.
        container: String,
        /// What is missing.
        message: String,
    },
    /// A container's postStart hook failed; the container was stopped.
    #[error("{message}")]
    Hook {
        /// namespace/name.
        pod: String,
        /// The container.
        container: String,
        /// What failed.
        message: String,
    },
    /// A volume cannot be made (a missing ConfigMap or Secret, in
    /// kubelet's words).
    #[error("{message}")]
    Mount {
        /// namespace/name.
        pod: String,
        /// What failed.
        message: String,
    },
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
    /// The PIDs one pod may hold (kubelet's `--pod-max-pids`); `None`: no
    /// limit of its own.
    pub pod_max_pids: Option<u64>,
    /// PIDs the pods together may not take: the machine's less these stay
    /// for the agent and the rest of the node (kubelet's
    /// `--system-reserved=pid=`).
    pub system_reserved_pids: u64,
    /// The node's address (`status.hostIP` for the downward API).
    pub node_ip: Ipv4Addr,
    /// The node's allocatable CPUs in millicores and memory in bytes: the
    /// limits the downward API reports for a container without its own.
    pub allocatable: (u64, u64),
}

/// How long a postStart hook may take before it counts as failed.
pub const POST_START_TIMEOUT: Duration = Duration::from_secs(120);

/// Default of [`NodeConfig::pod_max_pids`].
pub const DEFAULT_POD_MAX_PIDS: u64 = 4096;

/// Default of [`NodeConfig::system_reserved_pids`].
pub const DEFAULT_SYSTEM_RESERVED_PIDS: u64 = 1000;

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
    /// Where the pods' ConfigMaps and Secrets are read from.
    objects: std::sync::Arc<dyn env::ObjectSource>,
    /// Sidecars stopped because their pod finished (by runtime id, with when
    /// the stop was last asked): not restarted.
    done_sidecars: std::sync::Mutex<HashMap<String, std::time::Instant>>,
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
        // Pods' files hold their secrets (volumes, resolved env): root's
        // only, as kubelet keeps its pods directory.
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&cfg.state_dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict", &cfg.state_dir))?;
        }
        let net = Netlink::open(cfg.node_netns.as_deref())?;
        // The node's cgroup, parent of its pods', for as long as it lives.
        let node_cgroup = format!("weft/{}", cfg.node);
        cgroups::ensure_cgroup(&node_cgroup)
            .map_err(io_err("create the cgroup", Path::new(&node_cgroup)))?;
        // What the pods may take together.
        let pods_cgroup = format!("{node_cgroup}/pods");
        let machine = cgroups::machine_pids();
        let pods_max = machine.saturating_sub(cfg.system_reserved_pids);
        if pods_max < 1024 {
            return Err(io_err("limit the PIDs of", Path::new(&pods_cgroup))(
                std::io::Error::other(format!(
                    "--system-reserved-pids {} leaves {pods_max} of the machine's {machine} PIDs for every pod together; at least 1024 must be left",
                    cfg.system_reserved_pids
                )),
            ));
        }
        match cgroups::set_pids_max(&pods_cgroup, Some(pods_max)) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "no cgroup hierarchy has the pids controller: pods' PIDs are not limited"
            ),
            Err(e) => return Err(io_err("limit the PIDs of", Path::new(&pods_cgroup))(e)),
        }
        Ok(Self {
            cfg,
            net,
            runtime,
            datapath: datapath.map(std::sync::Mutex::new),
            observed: Default::default(),
            objects: std::sync::Arc::new(env::NoObjects),
            done_sidecars: Default::default(),
        })
    }

    /// The node paths the pods on this node mount through their claims.
    #[must_use]
    pub fn claimed_paths(&self) -> HashSet<String> {
        let pods = self.cfg.state_dir.join("pods");
        fs::read_dir(&pods)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| volumes::claimed_paths(&e.path()))
            .collect()
    }

    /// Where Weft's local persistent volumes keep their data on this node.
    #[must_use]
    pub fn persistent_root(&self) -> PathBuf {
        self.cfg.state_dir.join(volumes::PERSISTENT_DIR)
    }

    /// What the downward API reads of the node and of the pod's record.
    fn facts(&self, rec: &PodRecord) -> env::PodFacts {
        env::PodFacts {
            pod_ip: if rec.host_network {
                self.cfg.node_ip
            } else {
                rec.ip
            },
            host_ip: self.cfg.node_ip,
            node_cpu_millis: self.cfg.allocatable.0,
            node_memory: self.cfg.allocatable.1,
        }
    }

    /// Rewrites the pod's configMap, secret, downwardAPI and projected
    /// volumes whose sources changed (`pod` is the API's current copy).
    /// Returns the volumes rewritten.
    ///
    /// # Errors
    /// When a source cannot be read or a volume written (the others are
    /// still refreshed).
    pub async fn refresh_volumes(&self, pod: &Pod) -> Result<Vec<String>, SandboxError> {
        // Most pods have nothing to refresh: no file read for them.
        let any = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(volumes::is_projected);
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !any || !self.record_path(&uid).exists() {
            return Ok(Vec::new());
        }
        let rec = self.load_record(&uid)?;
        if rec.phase != Phase::Ready {
            return Ok(Vec::new());
        }
        volumes::refresh(
            &self.pod_dir(&uid),
            pod,
            &self.facts(&rec),
            self.objects.as_ref(),
        )
        .await
        .map_err(|message| SandboxError::Mount {
            pod: pod_name(&rec),
            message,
        })
    }

    /// The eviction message when one of the pod's disk emptyDirs holds more
    /// than its `sizeLimit` (kubelet's words), else `None`.
    pub async fn empty_dir_over_limit(&self, pod: &Pod) -> Option<String> {
        let uid = pod.metadata.uid.clone()?;
        let dir = self.pod_dir(&uid).join(volumes::VOLUMES_DIR);
        let limits: Vec<(String, String, u64)> = pod
            .spec
            .as_ref()?
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                let ed = v.empty_dir.as_ref()?;
                if ed.medium.as_deref() == Some("Memory") {
                    return None; // a sized tmpfs: the kernel bounds it
                }
                let q = ed.size_limit.as_ref()?;
                let bytes = u64::try_from(weft_api::quantity::units(&q.0)?).ok()?;
                Some((v.name.clone(), q.0.clone(), bytes))
            })
            .collect();
        if limits.is_empty() {
            return None;
        }
        tokio::task::spawn_blocking(move || {
            limits.into_iter().find_map(|(name, shown, bytes)| {
                (volumes::usage(&dir.join(&name)) > bytes).then(|| {
                    format!("Usage of EmptyDir volume \"{name}\" exceeds the limit \"{shown}\". ")
                })
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// Reads the pods' ConfigMaps and Secrets from `objects` (the API).
    #[must_use]
    pub fn with_objects(mut self, objects: std::sync::Arc<dyn env::ObjectSource>) -> Self {
        self.objects = objects;
        self
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
        // On the node's network the pod has the node's address (whatever
        // `ip` says) and claims none of the block.
        let host_network = spec.host_network == Some(true);
        if !host_network {
            self.check_ip_range(ip)?;
        }
        // Images are made present (pulled if need be) before anything is
        // made, so a missing image leaves nothing behind and says so.
        // The pod's registry logins (kubelet goes on without one it cannot
        // read, and says so).
        let mut pull_configs: Vec<Vec<u8>> = Vec::new();
        for s in spec.image_pull_secrets.iter().flatten() {
            match self.objects.secret(&namespace, &s.name).await {
                Ok(Some(secret)) => {
                    for key in [".dockerconfigjson", ".dockercfg"] {
                        if let Some(v) = secret.data.as_ref().and_then(|d| d.get(key)) {
                            pull_configs.push(v.0.clone());
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(pod = %full, secret = %s.name, "image pull secret not found; pulling without it")
                }
                Err(e) => {
                    tracing::warn!(pod = %full, secret = %s.name, error = %e, "cannot read an image pull secret; pulling without it")
                }
            }
        }
        let pull_configs = std::sync::Arc::new(pull_configs);
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
        {
            let (c2, configs) = (c.clone(), pull_configs.clone());
            self.runtime_call(&full, &c.name, move |rt| rt.ensure_image_as(&c2, &configs))
                .await?;
        }
        let su = short_uid(&uid);
        let mut rec = PodRecord {
            uid: uid.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            netns: if host_network {
                String::new()
            } else {
                format!("{}{su}", self.cfg.pod_netns_prefix)
            },
            host_veth: if host_network {
                String::new()
            } else {
                veth_name(&uid)
            },
            ip,
            containers: spec
                .containers
                .iter()
                .map(|c| (c.name.clone(), format!("{}-{su}-{}", self.cfg.node, c.name)))
                .collect(),
            init_containers: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| (c.name.clone(), format!("{}-{su}-{}", self.cfg.node, c.name)))
                .collect(),
            initialized: spec.init_containers.as_ref().is_none_or(Vec::is_empty),
            phase: Phase::Creating,
            restarts: Default::default(),
            host_network,
            released: false,
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
        if !host_network && let Err(e) = self.claim_ip(ip, &uid) {
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
        let t0 = std::time::Instant::now();
        if !rec.host_network {
            self.build_network(rec).await?;
        }
        let network = t0.elapsed();
        self.build_files_and_containers(pod, rec).await?;
        tracing::debug!(
            pod = %pod_name(rec),
            network_ms = network.as_secs_f64() * 1e3,
            files_and_containers_ms = (t0.elapsed() - network).as_secs_f64() * 1e3,
            "pod sandbox built"
        );
        Ok(())
    }

    /// The pod's own network: namespace, veth on the bridge, guarded.
    async fn build_network(&self, rec: &PodRecord) -> Result<(), SandboxError> {
        netns::ensure(&rec.netns)?;
        let ifindex = self
            .net
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
            let mac = self.pod_mac(&rec.netns).await?;
            let mut dp = dp.lock().expect("datapath lock");
            // Guarded before any program judges its frames.
            dp.guard_pod(ifindex, rec.ip, mac)?;
            dp.attach_pod(&rec.host_veth)?;
        }
        Ok(())
    }

    async fn build_files_and_containers(
        &self,
        pod: &Pod,
        rec: &PodRecord,
    ) -> Result<(), SandboxError> {
        let cgroup = self.pod_cgroup(&rec.uid);
        cgroups::set_pids_max(&cgroup, self.cfg.pod_max_pids)
            .map_err(io_err("limit the PIDs of", Path::new(&cgroup)))?;
        let dir = self.pod_dir(&rec.uid);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        // The pod first: what follows reads it (its hostname).
        let pod_json = dir.join("pod.json");
        fs::write(
            &pod_json,
            serde_json::to_vec(pod).expect("a Pod serializes"),
        )
        .map_err(io_err("write", &pod_json))?;
        let resolv = dir.join("resolv.conf");
        let host = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        fs::write(
            &resolv,
            resolv_conf(pod, &rec.namespace, self.cfg.dns, &host),
        )
        .map_err(io_err("write", &resolv))?;
        let hosts = dir.join("hosts");
        fs::write(&hosts, hosts_file(pod, rec.ip, &self.hostname(rec)))
            .map_err(io_err("write", &hosts))?;
        let hostname = dir.join("hostname");
        fs::write(&hostname, format!("{}\n", self.hostname(rec)))
            .map_err(io_err("write", &hostname))?;
        volumes::prepare(
            &dir,
            pod,
            &self.facts(rec),
            self.objects.as_ref(),
            self.cfg.allocatable.1,
        )
        .await
        .map_err(|message| SandboxError::Mount {
            pod: pod_name(rec),
            message,
        })?;
        volumes::prepare_claims(&dir, &self.persistent_root(), pod, self.objects.as_ref())
            .await
            .map_err(|message| SandboxError::Mount {
                pod: pod_name(rec),
                message,
            })?;
        // With init containers, the first is started here and the rest of
        // the sequence (then the containers) by the pod's syncs.
        if !rec.initialized {
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .and_then(|v| v.first())
                .expect("a pod not initialized has init containers");
            return self
                .start_container(rec, pod, c, &rec.init_containers[0].1)
                .await;
        }
        let spec = pod.spec.as_ref().expect("checked");
        for (c, (_, id)) in spec.containers.iter().zip(&rec.containers) {
            self.start_container(rec, pod, c, id).await?;
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
        let res = match tokio::task::spawn_blocking(move || f(rt)).await {
            Ok(r) => r,
            Err(e) => Err(RuntimeError::Io {
                op: "run a runtime task",
                path: PathBuf::from(container),
                source: std::io::Error::other(e.to_string()),
            }),
        };
        res.map_err(|source| SandboxError::Container {
            pod: pod.to_string(),
            container: container.to_string(),
            source: Box::new(source),
        })
    }

    /// Creates and starts one container of the pod (also used for restarts).
    async fn start_container(
        &self,
        rec: &PodRecord,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
    ) -> Result<(), SandboxError> {
        let spec = pod.spec.as_ref().expect("checked");
        let dir = self.pod_dir(&rec.uid);
        let facts = self.facts(rec);
        let container = env::resolve(c, pod, &facts, self.objects.as_ref())
            .await
            .map_err(|message| SandboxError::Config {
                pod: pod_name(rec),
                container: c.name.clone(),
                message,
            })?;
        let pod_security = spec.security_context.clone();
        let (volumes, read_only_claims) =
            volumes::with_claims(&dir, spec.volumes.as_deref().unwrap_or_default());
        let volume_dirs = volumes::dirs(&dir, spec);
        let subpaths = dir.join(volumes::SUBPATHS_DIR).join(&c.name);
        let mut container = container;
        for m in container.volume_mounts.iter_mut().flatten() {
            if read_only_claims.contains(&m.name) {
                m.read_only = Some(true);
            }
        }
        let memory_request = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|m| m.get("memory"))
            .and_then(|q| weft_api::quantity::units(&q.0))
            .and_then(|b| u64::try_from(b).ok())
            .unwrap_or(0);
        let adj = weft_api::pod::oom_score_adj(
            weft_api::pod::qos_class(Some(spec)),
            memory_request,
            self.cfg.allocatable.1,
        );
        let oom_score_adj = Some(oom_floor().map_or(adj, |floor| adj.max(floor)));
        let (host_pid, host_ipc) = (
            spec.host_pid.unwrap_or(false),
            spec.host_ipc.unwrap_or(false),
        );
        let sandbox = self.ensure_pause(rec, spec).await?;
        let shm = if host_ipc {
            Some(PathBuf::from("/dev/shm"))
        } else {
            Some(
                volumes::mount_shm(&dir).map_err(|message| SandboxError::Mount {
                    pod: pod_name(rec),
                    message,
                })?,
            )
        };
        let id_owned = id.to_string();
        let id = id.to_string();
        let netns_path = self.pod_netns_path(rec);
        let host_network = rec.host_network;
        let hostname = self.hostname(rec);
        let cgroups_path = format!("/{}", self.container_cgroup(&rec.uid, &c.name));
        let files = ["resolv.conf", "hosts", "hostname"]
            .iter()
            .map(|f| (dir.join(f), format!("/etc/{f}")))
            .collect();
        let restarts = rec.restarts.get(&c.name).copied().unwrap_or(0);
        let log = self.log_path(&rec.uid, &c.name, restarts);
        // This run's log and the previous one's are kept (as kubelet keeps
        // one dead container per container), not every run's of a
        // container that crashes for days; and the one before, which a
        // reader of the record saved before this start still calls the
        // previous run's.
        if let Some(dir) = log.parent() {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let run: Option<i32> = name.split('.').next().and_then(|n| n.parse().ok());
                if run.is_some_and(|r| r < restarts - 2) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let log = Some(log);
        // A fresh, empty termination message file for this run, writable
        // by whatever user the container runs as.
        let termination_log = {
            let path = self.termination_path(&rec.uid, &c.name, restarts);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                // Earlier runs' files go, as their logs do.
                for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some((n, run)) = name.rsplit_once('.')
                        && n == c.name
                        && run.parse::<i32>().is_ok_and(|r| r < restarts)
                    {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
            let _ = fs::remove_file(&path);
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
            }
            {
                use std::os::unix::fs::PermissionsExt as _;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
                    .map_err(io_err("chmod", &path))?;
            }
            let at = c
                .termination_message_path
                .clone()
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| "/dev/termination-log".into());
            Some((path, at))
        };
        self.runtime_call(&pod_name(rec), &c.name, move |rt| {
            let req = CreateRequest {
                id: &id,
                container: &container,
                netns_path,
                pod_security: pod_security.as_ref(),
                host_network,
                host_pid,
                host_ipc,
                sandbox,
                shm,
                hostname,
                cgroups_path,
                files,
                volumes: &volumes,
                volume_dirs,
                subpaths,
                termination_log,
                oom_score_adj,
                log,
            };
            rt.run(&req).map(drop)
        })
        .await?;
        // postStart: the container is not started until its hook is done;
        // a failed hook stops it (kubelet's FailedPostStartHook).
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.clone()) {
            let outcome = self
                .run_hook(rec, c, &id_owned, hook, POST_START_TIMEOUT)
                .await;
            if let crate::probe::Outcome::Failure(why) = outcome {
                let grace = Duration::from_secs(
                    u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30))
                        .unwrap_or(30),
                );
                let id2 = id_owned.clone();
                let _ = self
                    .runtime_call(&pod_name(rec), &c.name, move |rt| rt.stop(&id2, grace))
                    .await;
                return Err(SandboxError::Hook {
                    pod: pod_name(rec),
                    container: c.name.clone(),
                    message: format!("PostStartHook failed: {why}"),
                });
            }
        }
        Ok(())
    }

    /// The pod's sandbox process, started if it is not running (the pod's
    /// first container, or one that found it gone: the namespaces it held
    /// went with it, and the containers that start from now on share new
    /// ones). `None` when the pod has no namespace of its own to share.
    async fn ensure_pause(
        &self,
        rec: &PodRecord,
        spec: &k8s_openapi::api::core::v1::PodSpec,
    ) -> Result<Option<(pause::Sandbox, pause::Namespaces)>, SandboxError> {
        let namespaces = pod_namespaces(spec, rec.host_network);
        if !namespaces.any() {
            return Ok(None);
        }
        let file = self.pod_dir(&rec.uid).join("pause");
        let known = pause::Sandbox::load(&file);
        if let Some(s) = known.filter(pause::Sandbox::alive) {
            return Ok(Some((s, namespaces)));
        }
        if known.is_some() {
            tracing::warn!(pod = %pod_name(rec), "the pod's sandbox process is gone; starting a new one");
        }
        let hostname = self.hostname(rec);
        let netns = self.pod_netns_path(rec);
        let started = self
            .runtime_call(&pod_name(rec), "(sandbox)", move |rt| {
                rt.start_pause(namespaces, &hostname, netns)
            })
            .await?;
        let cgroup = format!("{}/{PAUSE_CGROUP}", self.pod_cgroup(&rec.uid));
        let placed = cgroups::enter(&cgroup, started.pid)
            .map_err(io_err("move the sandbox process into", Path::new(&cgroup)))
            .and_then(|()| {
                // Kubelet's score for its pause container (floored at the
                // agent's own, which it cannot go below).
                let adj = oom_floor().map_or(-998, |floor| floor.max(-998));
                let p = PathBuf::from(format!("/proc/{}/oom_score_adj", started.pid));
                fs::write(&p, adj.to_string()).map_err(io_err("write", &p))
            })
            .and_then(|()| started.save(&file).map_err(io_err("write", &file)));
        if let Err(e) = placed {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(started.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
        Ok(Some((started, namespaces)))
    }

    /// The pod's network namespace: its own, or on the node's network the
    /// node's (the agent's own when it runs in it: runc, and the sandbox
    /// process, resolve /proc/self in their own process, a child of the
    /// agent's).
    fn pod_netns_path(&self, rec: &PodRecord) -> PathBuf {
        match (rec.host_network, &self.cfg.node_netns) {
            (false, _) => netns::path(&rec.netns),
            (true, Some(node)) => netns::path(node),
            (true, None) => PathBuf::from("/proc/self/ns/net"),
        }
    }

    /// Runs a lifecycle hook of container `c`, bounded by `timeout`.
    async fn run_hook(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        hook: k8s_openapi::api::core::v1::LifecycleHandler,
        timeout: Duration,
    ) -> crate::probe::Outcome {
        self.check_in(rec, c, id, move |t, rt| {
            crate::probe::run_hook(&hook, t, rt, timeout)
        })
        .await
    }

    /// Runs `check` (a probe, a hook) against container `c` of the pod:
    /// blocking work, off the async workers.
    pub(super) async fn check_in(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        check: impl FnOnce(crate::probe::Target<'_>, &Runtime) -> crate::probe::Outcome + Send + 'static,
    ) -> crate::probe::Outcome {
        let (c, id, rt, ip, ns) = (
            c.clone(),
            id.to_string(),
            self.runtime.clone(),
            rec.ip,
            self.cfg.node_netns.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let target = crate::probe::Target {
                container: &c,
                container_id: &id,
                pod_ip: ip,
                node_netns: ns.as_deref(),
            };
            check(target, &rt)
        })
        .await
        .unwrap_or_else(|e| crate::probe::Outcome::Failure(e.to_string()))
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
        self.stop_all(rec, grace).await?;
        self.free_network(rec).await?;
        remove_cgroups(&self.pod_cgroup(&rec.uid));
        let dir = self.pod_dir(&rec.uid);
        if dir.exists() {
            volumes::teardown(&dir);
            if let Some(m) = volumes::mounted_under(&dir) {
                return Err(SandboxError::Io {
                    op: "unmount",
                    path: PathBuf::from(m),
                    source: std::io::Error::other("still mounted; the pod's directory is kept"),
                });
            }
            fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
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

    /// Frees what a finished pod holds, as kubelet stops a finished pod's
    /// sandbox: whatever of it still runs (sidecars) is stopped within
    /// `grace`, its containers, sandbox process, cgroups, volume mounts,
    /// network namespace, veth and address go. Its record, logs and
    /// termination messages stay until the pod is deleted, so that `logs`
    /// works on a finished pod. Idempotent (an interrupted release is done
    /// again); a pod still being created or removed is left alone.
    ///
    /// # Errors
    /// When a step fails (tried again on the next call).
    pub async fn release_finished(&self, uid: &str, grace: Duration) -> Result<(), SandboxError> {
        if !self.record_path(uid).exists() {
            return Ok(());
        }
        let rec = self.load_record(uid)?;
        if rec.released || rec.phase != Phase::Ready {
            return Ok(());
        }
        self.stop_all(&rec, grace).await?;
        self.free_network(&rec).await?;
        remove_cgroups(&self.pod_cgroup(&rec.uid));
        let dir = self.pod_dir(&rec.uid);
        volumes::teardown(&dir);
        if let Some(m) = volumes::mounted_under(&dir) {
            return Err(SandboxError::Io {
                op: "unmount",
                path: PathBuf::from(m),
                source: std::io::Error::other("still mounted"),
            });
        }
        for d in [
            volumes::VOLUMES_DIR,
            volumes::SUBPATHS_DIR,
            volumes::SHM_DIR,
            "pause",
        ] {
            let p = dir.join(d);
            let gone = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            match gone {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &p)(e)),
            }
        }
        tracing::info!(pod = %pod_name(&rec), "finished pod's sandbox released");
        self.save(&PodRecord {
            released: true,
            ..rec
        })?;
        Ok(())
    }

    /// Stops every container of the pod (preStop hooks first, within
    /// `grace`), kills what is left through its cgroup and deletes the
    /// containers from the runtime.
    async fn stop_all(&self, rec: &PodRecord, grace: Duration) -> Result<(), SandboxError> {
        // preStop hooks first, within the grace period; what they leave of
        // it is the stop's (at least 2 s, as kubelet gives).
        let deadline = std::time::Instant::now() + grace;
        if let Ok((_, pod)) = self.load_pod(&rec.uid) {
            let spec = pod.spec.clone().unwrap_or_default();
            let mut hooks = Vec::new();
            let all = spec.containers.iter().zip(&rec.containers).chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .zip(&rec.init_containers),
            );
            for (c, (_, id)) in all {
                let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.clone()) else {
                    continue;
                };
                let id2 = id.clone();
                let running = self
                    .runtime_call(&pod_name(rec), &c.name, move |rt| rt.state(&id2))
                    .await
                    .is_ok_and(|s| s.status == crate::runtime::Status::Running);
                if running {
                    hooks.push(async move {
                        let outcome = self.run_hook(rec, c, id, hook, grace).await;
                        if let crate::probe::Outcome::Failure(why) = outcome {
                            tracing::info!(pod = %pod_name(rec), container = %c.name, %why, "preStop hook failed");
                        }
                    });
                }
            }
            futures::future::join_all(hooks).await;
        }
        let grace = deadline
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_secs(2).min(grace));
        let deadline = std::time::Instant::now() + grace;
        // A failure to stop is not the end: the cgroup kill follows.
        let stop = |name: String, id: String, grace: Duration| async move {
            self.runtime_call(&pod_name(rec), &name, move |rt| {
                if rt.state(&id).is_ok() {
                    rt.stop(&id, grace)?;
                }
                Ok(())
            })
            .await
        };
        // The containers all at once, within the one grace period; then
        // the sidecars in reverse order, in what is left of it (as kubelet
        // stops them, so that a sidecar outlives what it serves).
        futures::future::join_all(
            rec.containers
                .iter()
                .map(|(name, id)| stop(name.clone(), id.clone(), grace)),
        )
        .await;
        for (name, id) in rec.init_containers.iter().rev() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let _ = stop(name.clone(), id.clone(), left).await;
        }
        // Whatever runc could not stop (or no longer knows) is killed
        // through the pod's cgroup; until it is empty the pod keeps its
        // address, namespace and record, and the removal is tried again.
        let cgroup = self.pod_cgroup(&rec.uid);
        let empty =
            tokio::task::spawn_blocking(move || cgroups::kill_all(&cgroup, Duration::from_secs(5)))
                .await
                .unwrap_or(false);
        if !empty {
            return Err(SandboxError::Io {
                op: "kill the processes of",
                path: PathBuf::from(self.pod_cgroup(&rec.uid)),
                source: std::io::Error::other("processes survive SIGKILL"),
            });
        }
        for (name, id) in rec.all_containers() {
            let id2 = id.clone();
            self.runtime_call(&pod_name(rec), name, move |rt| rt.delete(&id2))
                .await?;
            self.observed.lock().expect("observed lock").remove(id);
            self.done_sidecars.lock().expect("lock").remove(id);
        }
        Ok(())
    }

    /// Takes down the pod's network (programs, veth, namespace) and frees
    /// its address on the node; nothing for a pod on the node's network or
    /// one whose sandbox was already released.
    async fn free_network(&self, rec: &PodRecord) -> Result<(), SandboxError> {
        if rec.host_network || rec.released {
            return Ok(());
        }
        let ifindex = self.net.link(&rec.host_veth).await?.map(|l| l.index);
        if let Some(dp) = &self.datapath {
            dp.lock()
                .expect("datapath lock")
                .detach_pod(&rec.host_veth, ifindex);
        }
        self.net.detach_veth(&rec.host_veth).await?;
        netns::delete(&rec.netns)?;
        self.release("ips", &rec.ip.to_string(), &rec.uid);
        Ok(())
    }

    /// Attaches this agent's programs to every recorded pod's veth,
    /// replacing those an earlier agent left in place.
    ///
    /// # Errors
    /// When attaching fails.
    pub async fn reattach(&self) -> Result<(), SandboxError> {
        let Some(dp) = &self.datapath else {
            return Ok(());
        };
        for r in self.records()?.into_iter().filter(|r| !r.host_network) {
            let Some(link) = self.net.link(&r.host_veth).await? else {
                continue;
            };
            let mac = self.pod_mac(&r.netns).await?;
            let mut dp = dp.lock().expect("datapath lock");
            dp.guard_pod(link.index, r.ip, mac)?;
            dp.attach_pod(&r.host_veth)?;
        }
        Ok(())
    }

    /// The pod's host name: from its name, or on the node's network the
    /// node's (its UTS namespace is the node's too).
    fn hostname(&self, rec: &PodRecord) -> String {
        if rec.host_network {
            return self.cfg.node.clone();
        }
        // The pod's `hostname` when it sets one, else its name.
        let own = self
            .load_pod(&rec.uid)
            .ok()
            .and_then(|(_, p)| p.spec.and_then(|s| s.hostname))
            .filter(|h| !h.is_empty());
        hostname_of(own.as_deref().unwrap_or(&rec.name))
    }

    /// The MAC of the pod's eth0, inside its namespace.
    async fn pod_mac(&self, pod_netns: &str) -> Result<[u8; 6], SandboxError> {
        let pod = Netlink::open(Some(pod_netns))?;
        let eth0 = pod
            .link("eth0")
            .await?
            .ok_or_else(|| NetlinkError::NotFound {
                what: "interface",
                name: format!("{pod_netns}:eth0"),
            })?;
        eth0.mac.as_slice().try_into().map_err(|_| {
            SandboxError::Net(NetlinkError::NotFound {
                what: "MAC address of",
                name: format!("{pod_netns}:eth0"),
            })
        })
    }

    /// DNS queries the node's pods sent past their rate limit (dropped).
    #[must_use]
    pub fn dns_rate_limited(&self) -> u64 {
        self.datapath.as_ref().map_or(0, |dp| {
            dp.lock()
                .expect("datapath lock")
                .dns_rate_limited()
                .unwrap_or(0)
        })
    }

    /// What the pod sent with addresses not its own (dropped).
    ///
    /// # Errors
    /// When the datapath is off or the map unreadable.
    pub async fn spoofed(&self, uid: &str) -> Result<weft_common::SpoofCounters, SandboxError> {
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
            Some(dp) => Ok(dp.lock().expect("datapath lock").spoofed(idx)?),
            None => Ok(weft_common::SpoofCounters::default()),
        }
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
            .flat_map(|r| r.all_containers().map(|(_, id)| id.as_str()))
            .collect();
        // Bundles, and what runc knows without a bundle (a removal that
        // lost the bundle but not the container).
        let mut known = self
            .runtime
            .list()
            .map_err(|e| SandboxError::Runtime(Box::new(e)))?;
        let rt = self.runtime.clone();
        if let Ok(Ok(ids)) = tokio::task::spawn_blocking(move || rt.runc_ids()).await {
            known.extend(ids);
        }
        known.sort();
        known.dedup();
        for id in known {
            if !ids.contains(id.as_str()) {
                let rt = self.runtime.clone();
                let id2 = id.clone();
                let _ = tokio::task::spawn_blocking(move || rt.delete(&id2)).await;
                removed.push(format!("container {id}"));
            }
        }
        // Sandbox processes no record names: an agent killed between
        // starting one and recording it (or moving it into the pod's
        // cgroup, so the cgroup sweep below would not find it).
        let recorded: HashSet<i32> = recs
            .iter()
            .filter_map(|r| self.sandbox_process(&r.uid))
            .map(|s| s.pid)
            .collect();
        for s in self.runtime.pause_processes() {
            if !recorded.contains(&s.pid) && s.alive() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(s.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                removed.push(format!("sandbox process {}", s.pid));
            }
        }
        // Pod cgroups without a record: their processes killed, then gone.
        let pod_groups: HashSet<String> = recs.iter().map(|r| short_uid(&r.uid)).collect();
        let mut orphans: Vec<String> = cgroup_roots()
            .iter()
            .flat_map(|root| {
                fs::read_dir(root.join(self.pods_cgroup()))
                    .into_iter()
                    .flatten()
            })
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !pod_groups.contains(n))
            .collect();
        orphans.sort();
        orphans.dedup();
        for o in orphans {
            let rel = format!("{}/{o}", self.pods_cgroup());
            let rel2 = rel.clone();
            let empty = tokio::task::spawn_blocking(move || {
                cgroups::kill_all(&rel2, Duration::from_secs(5))
            })
            .await
            .unwrap_or(false);
            if empty {
                remove_cgroups(&rel);
                removed.push(format!("cgroup {rel}"));
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
                volumes::teardown(&p);
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

    /// The pod's sandbox process as recorded (it may have exited since).
    #[must_use]
    pub fn sandbox_process(&self, uid: &str) -> Option<pause::Sandbox> {
        pause::Sandbox::load(&self.pod_dir(uid).join("pause"))
    }

    /// How many forks the pod's PID limit has refused.
    #[must_use]
    pub fn pids_refused(&self, uid: &str) -> u64 {
        cgroups::pids_refused(&self.pod_cgroup(uid))
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

/// The lowest OOM score adjustment the agent can give its containers when
/// it lacks CAP_SYS_RESOURCE (its own: a process may only raise it), or
/// `None` when it can give any. Without it, Guaranteed and Burstable pods
/// get no protection below the agent's own score (as kubelet in a user
/// namespace), and the agent says so once.
fn oom_floor() -> Option<i32> {
    static FLOOR: std::sync::OnceLock<Option<i32>> = std::sync::OnceLock::new();
    *FLOOR.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        const CAP_SYS_RESOURCE: u32 = 24;
        if eff & (1 << CAP_SYS_RESOURCE) != 0 {
            return None;
        }
        let own = fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        tracing::warn!(
            floor = own,
            "no CAP_SYS_RESOURCE: containers' OOM score adjustments cannot go below the agent's own"
        );
        Some(own)
    })
}

/// The pod's /etc/hosts, as kubelet writes it: localhost, the pod's own
/// name, then its `hostAliases`.
fn hosts_file(pod: &Pod, ip: Ipv4Addr, hostname: &str) -> String {
    let mut out = format!(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
    );
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if aliases.is_some_and(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases.into_iter().flatten() {
            // The API checked them; a line never carries a newline.
            let names: Vec<&str> = a
                .hostnames
                .iter()
                .flatten()
                .map(String::as_str)
                .filter(|h| !h.contains(char::is_whitespace))
                .collect();
            if !a.ip.contains(char::is_whitespace) && !names.is_empty() {
                out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
            }
        }
    }
    out
}

/// The cgroup (under the pod's) of its sandbox process: not a DNS label,
/// so no container's.
const PAUSE_CGROUP: &str = "_pause";

/// The namespaces a pod's containers share through its sandbox process:
/// IPC and UTS unless they are the node's, PID with `shareProcessNamespace`.
fn pod_namespaces(
    spec: &k8s_openapi::api::core::v1::PodSpec,
    host_network: bool,
) -> pause::Namespaces {
    pause::Namespaces {
        pid: spec.share_process_namespace == Some(true) && spec.host_pid != Some(true),
        ipc: spec.host_ipc != Some(true),
        uts: !host_network,
    }
}

fn pod_name(rec: &PodRecord) -> String {
    format!("{}/{}", rec.namespace, rec.name)
}
