//! The container runtime: a runc wrapper. Images come from the node's
//! [`image::ImageStore`]; each container gets an overlayfs rootfs over the
//! image's shared layers, an OCI bundle ([`bundle`]) and a shim
//! ([`shim`]) that keeps its logs and exit code. This module knows nothing
//! of pods beyond a container spec; the sandbox module groups containers.

pub mod attach;
pub mod bundle;
pub mod busybox;
pub mod image;
pub mod logfile;
pub mod pause;
pub mod reference;
pub mod registry;
pub mod security;
pub mod shim;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use self::{
    bundle::BundleError,
    image::{ImageError, ImageStore},
};

/// The registry name of images that exist only in nodes' image stores.
pub const LOCAL_REGISTRY: &str = "weft.local";

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// Image trouble (not found, bad reference, digest mismatch...).
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The container spec cannot be turned into a bundle.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// runc refused (the message is runc's).
    #[error("container {id}: {op}: {message}")]
    Runc {
        /// Container id.
        id: String,
        /// runc verb.
        op: &'static str,
        /// What runc said.
        message: String,
    },
    /// A container of that id exists already.
    #[error("container {0} already exists")]
    AlreadyExists(String),
    /// No container of that id.
    #[error("container {0} not found")]
    NotFound(String),
    /// An id that runc or the file system would refuse.
    #[error("invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-]")]
    InvalidId(String),
    /// I/O.
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

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.to_path_buf();
    move |source| RuntimeError::Io { op, path, source }
}

/// Where the runtime keeps things and which binaries it drives.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// State directory: `containers/<id>` bundles and `images/`.
    pub state_dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state root (per node, so that nodes of a lab do not share it).
    pub runc_root: PathBuf,
    /// The `weft` binary, run as `weft shim`.
    pub shim: PathBuf,
    /// How to reach registries for pulls.
    pub registry: registry::RegistryOptions,
    /// Where Localhost seccomp profiles are read from (kubelet's
    /// /var/lib/kubelet/seccomp).
    pub seccomp_dir: PathBuf,
    /// Size at which a container's log rotates.
    pub log_max_size: u64,
    /// Log files kept per container run, the current one included.
    pub log_max_files: u32,
}

/// What a container is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited with this code (128 + signal when killed).
    Exited(i32),
}

/// A container's observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    /// Id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// Its init process on the host.
    pub pid: Option<i32>,
}

/// A request to create a container.
#[derive(Clone, Debug)]
pub struct CreateRequest<'a> {
    /// Container id (unique on the node).
    pub id: &'a str,
    /// The Kubernetes container spec (image, command, env, limits...).
    pub container: &'a Container,
    /// Path of the network namespace to join.
    pub netns_path: PathBuf,
    /// The pod's security context (the container's own is in `container`).
    pub pod_security: Option<&'a PodSecurityContext>,
    /// The pod runs on the node's network (`netns_path` is the node's):
    /// no UTS namespace of its own, no network sysctls.
    pub host_network: bool,
    /// The pod shares the node's PID namespace.
    pub host_pid: bool,
    /// The pod shares the node's IPC namespace.
    pub host_ipc: bool,
    /// The pod's sandbox process and the namespaces it holds, which the
    /// container joins (see [`pause`]).
    pub sandbox: Option<(pause::Sandbox, pause::Namespaces)>,
    /// The directory bind-mounted at `/dev/shm` (the pod's tmpfs, or the
    /// node's /dev/shm with hostIPC); `None`: a tmpfs of the container's
    /// own.
    pub shm: Option<PathBuf>,
    /// Host name.
    pub hostname: String,
    /// runc cgroup path.
    pub cgroups_path: String,
    /// Files to bind-mount read-only (host path → container path).
    pub files: Vec<(PathBuf, String)>,
    /// The pod's volumes, which the container's `volumeMounts` name.
    pub volumes: &'a [k8s_openapi::api::core::v1::Volume],
    /// The node directory of each volume the agent made (every type but
    /// hostPath), by name.
    pub volume_dirs: std::collections::BTreeMap<String, PathBuf>,
    /// Where the container's `subPath` mounts are staged (one entry per
    /// volume mount index, see `bundle::stage_sub_path`): the agent's, out
    /// of every container's reach.
    pub subpaths: PathBuf,
    /// The file bind-mounted writable at the container's
    /// `terminationMessagePath` (node path, container path).
    pub termination_log: Option<(PathBuf, String)>,
    /// The process's OOM score adjustment (kubelet's, by QoS class).
    pub oom_score_adj: Option<i32>,
    /// Where the shim writes the container's output (`None`: in the bundle,
    /// see [`Runtime::log_path`]).
    pub log: Option<PathBuf>,
}

/// The runc wrapper of one node.
#[derive(Clone, Debug)]
pub struct Runtime {
    cfg: RuntimeConfig,
    images: ImageStore,
}

fn check_id(id: &str) -> Result<(), RuntimeError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

impl Runtime {
    /// Opens the runtime's state.
    ///
    /// # Errors
    /// When its directories cannot be created.
    pub fn new(cfg: RuntimeConfig) -> Result<Self, RuntimeError> {
        let images = ImageStore::open(cfg.state_dir.join("images"))?;
        for d in [cfg.state_dir.join("containers"), cfg.runc_root.clone()] {
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        // Bundles hold containers' env, secrets resolved: root's only.
        {
            use std::os::unix::fs::PermissionsExt as _;
            let containers = cfg.state_dir.join("containers");
            fs::set_permissions(&containers, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict", &containers))?;
        }
        Ok(Self { cfg, images })
    }

    /// Starts a pod's sandbox process (`weft pause`, see [`pause`]), its
    /// root the empty directory `pause-root` of the runtime's state.
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn start_pause(
        &self,
        namespaces: pause::Namespaces,
        hostname: &str,
        netns: PathBuf,
    ) -> Result<pause::Sandbox, RuntimeError> {
        let root = self.cfg.state_dir.join("pause-root");
        fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o555))
                .map_err(io_err("chmod", &root))?;
        }
        pause::start(
            &self.cfg.shim,
            &pause::PauseArgs {
                namespaces,
                hostname: hostname.to_string(),
                root,
                netns: Some(netns),
            },
        )
        .map_err(|e| RuntimeError::Io {
            op: "start the pod's sandbox process",
            path: self.cfg.shim.clone(),
            source: std::io::Error::other(e),
        })
    }

    /// The sandbox processes this runtime started that still run (see
    /// [`pause::running_under`]).
    #[must_use]
    pub fn pause_processes(&self) -> Vec<pause::Sandbox> {
        pause::running_under(&self.cfg.state_dir.join("pause-root"))
    }

    /// The node's image store.
    #[must_use]
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Makes the container's image present per its `imagePullPolicy`
    /// (Kubernetes' default: `Always` for `:latest` or untagged references,
    /// else `IfNotPresent`). Blocking: it may pull.
    ///
    /// # Errors
    /// A bad reference, an image not found locally under `Never`, or a
    /// failed pull.
    pub fn ensure_image(&self, container: &Container) -> Result<image::Image, RuntimeError> {
        self.ensure_image_as(container, &[])
    }

    /// As [`Runtime::ensure_image`], with the pod's registry logins: the
    /// one for the image's registry (the first that names it) is used.
    ///
    /// # Errors
    /// As [`Runtime::ensure_image`].
    pub fn ensure_image_as(
        &self,
        container: &Container,
        pull_configs: &[Vec<u8>],
    ) -> Result<image::Image, RuntimeError> {
        let reference = container.image.as_deref().unwrap_or_default();
        let r = reference::ImageRef::parse(reference).map_err(image::ImageError::from)?;
        // `weft.local/...` names images built and imported on the node (the
        // lab's busybox); there is no registry to ask.
        if r.registry == LOCAL_REGISTRY {
            return Ok(self.images.resolve(reference)?);
        }
        let creds = pull_configs
            .iter()
            .find_map(|c| registry::credentials_for(c, &r.registry));
        let policy = container.image_pull_policy.clone().unwrap_or_else(|| {
            if r.digest.is_none() && r.tag.as_deref() == Some("latest") {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        match policy.as_str() {
            "Never" => Ok(self.images.resolve(reference)?),
            "IfNotPresent" => match self.images.resolve(reference) {
                Ok(i) => Ok(i),
                Err(image::ImageError::ImageNotFound { .. }) => {
                    Ok(self
                        .images
                        .pull_as(reference, &self.cfg.registry, creds.as_ref())?)
                }
                Err(e) => Err(e.into()),
            },
            "Always" => Ok(self
                .images
                .pull_as(reference, &self.cfg.registry, creds.as_ref())?),
            other => Err(RuntimeError::Bundle(BundleError::Invalid {
                container: container.name.clone(),
                field: "imagePullPolicy".into(),
                reason: format!("{other:?} is not Always, IfNotPresent or Never"),
            })),
        }
    }

    /// The bundle directory of a container.
    #[must_use]
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join("containers").join(id)
    }

    /// The default log file of a container (CRI format), inside its bundle.
    #[must_use]
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.bundle_dir(id).join("container.log")
    }

    fn runc(&self) -> Command {
        let mut c = Command::new(&self.cfg.runc);
        c.arg("--root").arg(&self.cfg.runc_root);
        c
    }

    /// Creates the container (not started): rootfs, bundle and shim. On any
    /// failure everything made for it is removed again.
    ///
    /// # Errors
    /// Image, bundle and runc errors, with what was wrong.
    pub fn create(&self, req: &CreateRequest<'_>) -> Result<i32, RuntimeError> {
        self.create_or_run(req, false)
    }

    /// Creates and starts the container in one go (`runc run --detach`,
    /// one runc process instead of two). Cleans up on failure as
    /// [`Self::create`] does.
    ///
    /// # Errors
    /// As [`Self::create`].
    pub fn run(&self, req: &CreateRequest<'_>) -> Result<i32, RuntimeError> {
        self.create_or_run(req, true)
    }

    fn create_or_run(&self, req: &CreateRequest<'_>, start: bool) -> Result<i32, RuntimeError> {
        check_id(req.id)?;
        let dir = self.bundle_dir(req.id);
        if dir.exists() {
            return Err(RuntimeError::AlreadyExists(req.id.to_string()));
        }
        let image_ref = req.container.image.as_deref().unwrap_or_default();
        let image = self.images.resolve(image_ref)?;
        let res = self.create_in(&dir, req, &image, start);
        if res.is_err() {
            let _ = self.delete(req.id);
        }
        res
    }

    fn create_in(
        &self,
        dir: &Path,
        req: &CreateRequest<'_>,
        image: &image::Image,
        start: bool,
    ) -> Result<i32, RuntimeError> {
        let t0 = std::time::Instant::now();
        let lowers = self.images.lower_dirs(image)?;
        for d in ["rootfs", "upper", "work"] {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            dir.join("upper").display(),
            dir.join("work").display()
        );
        let rootfs = dir.join("rootfs");
        mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| RuntimeError::Io {
            op: "mount overlay rootfs",
            path: rootfs.clone(),
            source: e.into(),
        })?;
        // Built on the mounted root: the image's user is looked up in it.
        let spec = bundle::build_spec(req, &image.config, &rootfs, &self.cfg.seccomp_dir)?;
        bundle::write_spec(dir, &spec).map_err(io_err("write config.json", dir))?;
        let bundle_ready = t0.elapsed();

        let mut child = Command::new(&self.cfg.shim)
            .arg("shim")
            .arg("--id")
            .arg(req.id)
            .arg("--bundle")
            .arg(dir)
            .arg("--runc")
            .arg(&self.cfg.runc)
            .arg("--runc-root")
            .arg(&self.cfg.runc_root)
            .arg("--log")
            .arg(req.log.clone().unwrap_or_else(|| self.log_path(req.id)))
            .arg("--log-max-size")
            .arg(self.cfg.log_max_size.to_string())
            .arg("--log-max-files")
            .arg(self.cfg.log_max_files.to_string())
            .args(start.then_some("--start"))
            .args(req.container.stdin.unwrap_or(false).then_some("--stdin"))
            .args(
                req.container
                    .stdin_once
                    .unwrap_or(false)
                    .then_some("--stdin-once"),
            )
            .args(req.container.tty.unwrap_or(false).then_some("--tty"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_err("start shim", &self.cfg.shim))?;
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        let _ = BufReader::new(stdout).read_line(&mut line);
        // The shim lives on after its report; reap it when it ends. With
        // no thread to spare (PIDs out) it is left unreaped, which is
        // better than a panic in the pod's worker.
        if let Err(e) = std::thread::Builder::new()
            .name("shim-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            })
        {
            tracing::warn!(error = %e, "no thread to reap a shim; it stays a zombie until the agent exits");
        }
        let line = line.trim();
        // Where a start's time goes: the rootfs and config.json, then the
        // shim until runc has the container running.
        tracing::debug!(
            id = req.id,
            bundle_ms = bundle_ready.as_secs_f64() * 1e3,
            shim_ms = (t0.elapsed() - bundle_ready).as_secs_f64() * 1e3,
            "container started"
        );
        shim::parse_report("the shim", line).map_err(|message| RuntimeError::Runc {
            id: req.id.to_string(),
            op: if start { "run" } else { "create" },
            message,
        })
    }

    fn run_runc(&self, id: &str, op: &'static str, args: &[&str]) -> Result<String, RuntimeError> {
        let out = self
            .runc()
            .args(args)
            .output()
            .map_err(io_err("run runc", &self.cfg.runc))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(RuntimeError::Runc {
                id: id.to_string(),
                op,
                message: if msg.is_empty() {
                    format!("runc exited with {}", out.status)
                } else {
                    msg
                },
            })
        }
    }

    /// Starts a created container.
    ///
    /// # Errors
    /// runc's refusal.
    pub fn start(&self, id: &str) -> Result<(), RuntimeError> {
        check_id(id)?;
        self.run_runc(id, "start", &["start", id]).map(drop)
    }

    /// The container's state, from runc and the shim's exit file.
    ///
    /// # Errors
    /// [`RuntimeError::NotFound`] for an unknown id.
    pub fn state(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        check_id(id)?;
        let dir = self.bundle_dir(id);
        if let Ok(code) = fs::read_to_string(dir.join(shim::EXIT_FILE)) {
            return Ok(ContainerState {
                id: id.to_string(),
                status: Status::Exited(code.trim().parse().unwrap_or(255)),
                pid: None,
            });
        }
        let out = match self.run_runc(id, "state", &["state", id]) {
            Ok(o) => o,
            Err(_) if !dir.exists() => return Err(RuntimeError::NotFound(id.to_string())),
            Err(e) => return Err(e),
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let pid = v["pid"].as_i64().map(|p| p as i32).filter(|p| *p > 0);
        let status = match v["status"].as_str() {
            Some("created") => Status::Created,
            Some("running") | Some("paused") => Status::Running,
            // Stopped but the shim has not written the code yet.
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                let code = fs::read_to_string(dir.join(shim::EXIT_FILE)).ok();
                Status::Exited(code.and_then(|c| c.trim().parse().ok()).unwrap_or(255))
            }
        };
        Ok(ContainerState {
            id: id.to_string(),
            status,
            pid,
        })
    }

    /// Stops the container: SIGTERM, then SIGKILL after `grace`. Returns the
    /// exit status. A container that already exited is left as it is.
    ///
    /// # Errors
    /// When runc cannot signal it.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<Status, RuntimeError> {
        let st = self.state(id)?;
        if let Status::Exited(_) = st.status {
            return Ok(st.status);
        }
        let _ = self.run_runc(id, "kill", &["kill", id, "TERM"]);
        let deadline = Instant::now() + grace;
        loop {
            let st = self.state(id)?;
            if let Status::Exited(_) = st.status {
                return Ok(st.status);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.run_runc(id, "kill", &["kill", "--all", id, "KILL"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.state(id)?;
            if matches!(st.status, Status::Exited(_)) || Instant::now() >= deadline {
                return Ok(st.status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes the container: runc's state (forcing a running one down),
    /// the rootfs mount and the bundle. Idempotent.
    ///
    /// # Errors
    /// When the rootfs cannot be unmounted or the bundle removed.
    pub fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        check_id(id)?;
        if let Err(e) = self.run_runc(id, "delete", &["delete", "--force", id]) {
            // Still known to runc, it is not gone: the bundle stays, so
            // that a retry (or the sandbox's kill through the cgroup) can
            // finish, instead of a container that runs on unseen.
            if self.run_runc(id, "state", &["state", id]).is_ok() {
                return Err(e);
            }
        }
        let dir = self.bundle_dir(id);
        let rootfs = dir.join("rootfs");
        match umount2(&rootfs, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(RuntimeError::Io {
                    op: "unmount rootfs",
                    path: rootfs,
                    source: e.into(),
                });
            }
        }
        // The shim of a container that was just killed writes its exit
        // code into the bundle once it has drained the logs (up to 2 s
        // after the exit): a removal under way then finds a new file in
        // the directory. Tried again until the shim is done.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if e.kind() == std::io::ErrorKind::DirectoryNotEmpty
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(RuntimeError::Io {
                        op: "remove bundle",
                        path: dir,
                        source: e,
                    });
                }
            }
        }
    }

    /// Ids of the containers runc knows in this runtime's state root,
    /// bundle or not.
    ///
    /// # Errors
    /// When runc cannot list them.
    pub fn runc_ids(&self) -> Result<Vec<String>, RuntimeError> {
        let out = self.run_runc("-", "list", &["list", "-q"])?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Ids of the containers this runtime has bundles for.
    ///
    /// # Errors
    /// When the state directory cannot be read.
    pub fn list(&self) -> Result<Vec<String>, RuntimeError> {
        let d = self.cfg.state_dir.join("containers");
        let mut v = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err("read", &d))? {
            let e = e.map_err(io_err("read", &d))?;
            if let Some(n) = e.file_name().to_str() {
                v.push(n.to_string());
            }
        }
        v.sort();
        Ok(v)
    }
}

impl Runtime {
    /// The `runc exec` command that runs `argv` in a running container,
    /// for callers that wire its standard streams themselves.
    ///
    /// # Errors
    /// A bad id, or a container that is not running.
    pub fn exec_command(
        &self,
        id: &str,
        argv: &[String],
        tty: bool,
    ) -> Result<Command, RuntimeError> {
        check_id(id)?;
        let st = self.state(id)?;
        if st.status != Status::Running {
            return Err(RuntimeError::Runc {
                id: id.to_string(),
                op: "exec",
                message: format!("the container is not running ({:?})", st.status),
            });
        }
        let mut c = self.runc();
        c.arg("exec");
        if tty {
            // On a terminal, as kubelet's runtimes set it.
            c.args(["--tty", "--env", "TERM=xterm"]);
        }
        c.arg(id).args(argv);
        Ok(c)
    }

    /// Runs `argv` inside a running container (`runc exec`) with the
    /// caller's stdin, stdout and stderr; returns its exit code.
    ///
    /// # Errors
    /// When runc cannot be run.
    pub fn exec_inherit(&self, id: &str, argv: &[String]) -> Result<i32, RuntimeError> {
        let status = self
            .exec_command(id, argv, false)?
            .status()
            .map_err(io_err("run runc", &self.cfg.runc))?;
        Ok(status.code().unwrap_or(128 + 9))
    }
}

impl Runtime {
    /// Runs `argv` inside a running container and captures its combined
    /// output; kills it after `timeout` (exit code 124 then, like timeout(1)).
    ///
    /// # Errors
    /// When runc cannot be run.
    pub fn exec_capture(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(i32, String), RuntimeError> {
        check_id(id)?;
        let mut child = self
            .runc()
            .arg("exec")
            .arg(id)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("run runc", &self.cfg.runc))?;
        let deadline = Instant::now() + timeout;
        loop {
            match child
                .try_wait()
                .map_err(io_err("wait for runc", &self.cfg.runc))?
            {
                Some(status) => {
                    let out = child
                        .wait_with_output()
                        .map_err(io_err("read runc output", &self.cfg.runc))?;
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    return Ok((status.code().unwrap_or(128 + 9), text));
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok((124, format!("timed out after {timeout:?}")));
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}
