//! OCI bundles (config.json, built with oci-spec) from a Kubernetes
//! container spec and its image's configuration.
//!
//! Kubernetes' rules for the process: `command` replaces the image's
//! entrypoint and `args` its cmd; with only `args`, the entrypoint stays.
//! `env` is appended to the image's env (later entries win), `workingDir`
//! replaces the image's. Limits become cgroup limits.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use k8s_openapi::{api::core::v1::Container, apimachinery::pkg::api::resource::Quantity};

use super::{CreateRequest, security};
use oci_spec::{
    image::ImageConfiguration,
    runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder,
        LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, MountBuilder,
        ProcessBuilder, RootBuilder, Spec, UserBuilder, get_default_maskedpaths,
        get_default_mounts, get_default_readonly_paths,
    },
};

/// A bind mount of a volume: node path, container path, read-only.
type VolumeMount = (PathBuf, String, bool);

/// The container's volume mounts as (node path, container path, read-only),
/// each `hostPath` checked against its `type` (and made, for the
/// `...OrCreate` types) as kubelet does. A `subPath` is opened inside its
/// volume and bind-mounted from that open descriptor under `staging` (see
/// [`stage_sub_path`]), which runc then mounts: a symlink a container
/// plants, even one swapped in at the last moment, never leads out of the
/// volume. Errors: the mount's index and why.
fn volume_mounts(
    c: &Container,
    volumes: &[k8s_openapi::api::core::v1::Volume],
    dirs: &BTreeMap<String, PathBuf>,
    staging: &Path,
) -> Result<Vec<VolumeMount>, (usize, String)> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, OpenOptionsExt as _};
    let mut out = Vec::new();
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let fail = |why: String| (j, why);
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| fail(format!("no volume named {:?}", m.name)))?;
        // A volume the agent made: its directory, read-only when its
        // content comes from other objects (as kubelet mounts them).
        let Some(hp) = v.host_path.as_ref() else {
            let root = dirs
                .get(&v.name)
                .ok_or_else(|| fail(format!("volume {:?}: no such volume was made", v.name)))?;
            let projected = weft_api::volumes::is_projected(v);
            // Missing directories are made in the volumes the pod writes
            // (emptyDir, a claim), as kubelet does; the agent's files are
            // as the agent wrote them.
            let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) => stage_sub_path(root, sub, !projected, &staging.join(j.to_string()))
                    .map_err(fail)?,
                None => root.clone(),
            };
            out.push((
                src,
                m.mount_path.clone(),
                projected || m.read_only.unwrap_or(false),
            ));
            continue;
        };
        let root = PathBuf::from(&hp.path);
        let ty = hp.type_.as_deref().unwrap_or_default();
        let meta = std::fs::metadata(&root);
        let wrong = |what: &str| {
            fail(format!(
                "hostPath type check failed: {} is not a {what}",
                root.display()
            ))
        };
        match ty {
            "DirectoryOrCreate" if meta.is_err() => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&root)
                    .map_err(|e| fail(format!("create {}: {e}", root.display())))?;
            }
            "FileOrCreate" if meta.is_err() => {
                if let Some(parent) = root.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| fail(format!("create {}: {e}", parent.display())))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(&root)
                    .map_err(|e| fail(format!("create {}: {e}", root.display())))?;
            }
            _ => {}
        }
        if !ty.is_empty() {
            let ft = std::fs::metadata(&root)
                .map_err(|e| {
                    fail(format!(
                        "hostPath type check failed: {}: {e}",
                        root.display()
                    ))
                })?
                .file_type();
            let ok = match ty {
                "DirectoryOrCreate" | "Directory" => ft.is_dir(),
                "FileOrCreate" | "File" => ft.is_file(),
                "Socket" => ft.is_socket(),
                "CharDevice" => ft.is_char_device(),
                "BlockDevice" => ft.is_block_device(),
                _ => true,
            };
            if !ok {
                return Err(wrong(match ty {
                    "DirectoryOrCreate" | "Directory" => "directory",
                    "FileOrCreate" | "File" => "file",
                    "Socket" => "socket",
                    "CharDevice" => "character device",
                    _ => "block device",
                }));
            }
        }
        let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                stage_sub_path(&root, sub, true, &staging.join(j.to_string())).map_err(fail)?
            }
            None => root.clone(),
        };
        out.push((src, m.mount_path.clone(), m.read_only.unwrap_or(false)));
    }
    Ok(out)
}

/// Opens `path` relative to the directory `dir` with `openat2`, every
/// symlink on the way resolved by the kernel and refused if it leads out of
/// `dir` (`RESOLVE_BENEATH`) or is a /proc magic link: an `O_PATH`
/// descriptor of what it names.
fn open_beneath(dir: &OwnedFd, path: &Path) -> std::io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    /// The kernel's `struct open_how` (libc's cannot be built outside it).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: a live descriptor, a NUL-terminated path and an open_how of
    // the size given; the kernel returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just gave us, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes `sub` (a relative path without `..`) of the volume at `root`
/// available at `staging`, a path of the agent's that no container can
/// reach, and returns `staging`.
///
/// Each component is opened with [`open_beneath`] from the volume's root
/// (missing directories made when `create`), so symlinks are followed only
/// within the volume; the last one is then bind-mounted from its open
/// descriptor (`/proc/self/fd/N`), as kubelet mounts subpaths: what is
/// mounted is what was opened, whatever a container swaps in afterwards.
/// A mount left at `staging` by an earlier run is replaced.
fn stage_sub_path(root: &Path, sub: &str, create: bool, staging: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    if !weft_api::volumes::is_contained_relative(sub) {
        return Err(format!("subPath {sub:?} must be relative, without '..'"));
    }
    let root_fd: OwnedFd = std::fs::File::open(root)
        .map_err(|e| format!("{}: {e}", root.display()))?
        .into();
    let refused = |e: std::io::Error| {
        if e.raw_os_error() == Some(libc::EXDEV) || e.raw_os_error() == Some(libc::ELOOP) {
            format!("subPath {sub:?} leads outside its volume (through a symlink)")
        } else {
            format!("subPath {sub:?}: {e}")
        }
    };
    let mut prefix = PathBuf::new();
    let mut parent = root_fd.try_clone().map_err(|e| e.to_string())?;
    for part in Path::new(sub).components() {
        prefix.push(part);
        let opened = match open_beneath(&root_fd, &prefix) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let name = std::ffi::CString::new(part.as_os_str().as_encoded_bytes())
                    .map_err(|_| format!("subPath {sub:?} holds a NUL"))?;
                // SAFETY: a live directory descriptor and a NUL-terminated
                // name; mkdirat never follows a symlink in its last part.
                let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) };
                if made != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::AlreadyExists {
                        return Err(format!("subPath {sub:?}: create {}: {e}", prefix.display()));
                    }
                }
                open_beneath(&root_fd, &prefix)
            }
            other => other,
        };
        parent = match opened {
            Ok(fd) => fd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    "subPath {sub:?} does not exist in the volume (or is a dangling symlink)"
                ));
            }
            Err(e) => return Err(refused(e)),
        };
    }
    let target = parent;
    let is_dir = nix::sys::stat::fstat(&target)
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .map_err(|e| format!("subPath {sub:?}: {e}"))?;
    // The staging point: an empty directory or file, as the target is.
    if staging.exists() || staging.symlink_metadata().is_ok() {
        let _ = nix::mount::umount2(staging, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(staging).or_else(|_| std::fs::remove_file(staging));
    }
    if let Some(dir) = staging.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    if is_dir {
        std::fs::DirBuilder::new().mode(0o755).create(staging)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(staging)
            .map(drop)
    }
    .map_err(|e| format!("create {}: {e}", staging.display()))?;
    let source = format!("/proc/self/fd/{}", target.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        staging,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("subPath {sub:?}: bind-mount it: {e}"))?;
    Ok(staging.to_path_buf())
}

/// CFS period used for CPU limits (the kernel's and Kubernetes' default).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Errors building a bundle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// A field of the container spec that cannot be honoured. The message
    /// leaves the container out: every caller's error names it already.
    #[error("{field}: {reason}")]
    Invalid {
        /// Container name.
        container: String,
        /// Field path, e.g. `resources.limits.memory`.
        field: String,
        /// Why.
        reason: String,
    },
    /// Neither the spec nor the image says what to run.
    #[error(
        "container {0}: no command: the image has no entrypoint or cmd and the spec gives none"
    )]
    NoCommand(String),
    /// oci-spec refused a value.
    #[error("building config.json: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
}

/// A memory limit in bytes, from a Kubernetes quantity ("64Mi", "1G",
/// "1e3"), parsed by the API's one quantity parser so that the cgroup limit
/// and the scheduler's accounting agree.
///
/// # Errors
/// When it is not a quantity, or not a positive number of bytes.
pub fn parse_memory(q: &str) -> Result<i64, String> {
    let bytes = weft_api::quantity::units(q).ok_or_else(|| format!("{q:?} is not a quantity"))?;
    i64::try_from(bytes)
        .ok()
        .filter(|b| *b >= 1)
        .ok_or_else(|| format!("{q:?} is out of range"))
}

/// A CPU limit in millicores, from a Kubernetes quantity ("250m", "1.5",
/// "2"), parsed by the API's one quantity parser.
///
/// # Errors
/// When it is not a quantity, or not above zero.
pub fn parse_cpu_millis(q: &str) -> Result<u64, String> {
    let millis =
        weft_api::quantity::parse(q).ok_or_else(|| format!("{q:?} is not a CPU quantity"))?;
    match u64::try_from(millis) {
        Ok(0) => Err(format!("{q:?} is zero")),
        Ok(m) if m < 1_000_000_000_000 => Ok(m),
        _ => Err(format!("{q:?} is out of range")),
    }
}

/// The argv the container runs, per Kubernetes' command/args rules.
///
/// # Errors
/// [`BundleError::NoCommand`] when nothing says what to run.
pub fn argv(c: &Container, image: &ImageConfiguration) -> Result<Vec<String>, BundleError> {
    let cfg = image.config().as_ref();
    let entrypoint = cfg.and_then(|c| c.entrypoint().clone()).unwrap_or_default();
    let cmd = cfg.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let v: Vec<String> = match (&c.command, &c.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => entrypoint.iter().chain(&cmd).cloned().collect(),
    };
    if v.is_empty() {
        return Err(BundleError::NoCommand(c.name.clone()));
    }
    Ok(v)
}

fn quantity<'a>(c: &'a Container, which: &str) -> Option<&'a Quantity> {
    c.resources.as_ref()?.limits.as_ref()?.get(which)
}

/// Builds the runtime spec for one container from its request and its
/// image's configuration, with its security context ([`security`]): the
/// image's user is resolved in `rootfs` (mounted), Localhost seccomp
/// profiles are read from `seccomp_dir`.
///
/// # Errors
/// [`BundleError`] naming the field at fault.
pub fn build_spec(
    p: &CreateRequest<'_>,
    image: &ImageConfiguration,
    rootfs: &Path,
    seccomp_dir: &Path,
) -> Result<Spec, BundleError> {
    let c = p.container;
    let invalid = |field: &str, reason: String| BundleError::Invalid {
        container: c.name.clone(),
        field: field.to_string(),
        reason,
    };
    let args = argv(c, image)?;
    let img_cfg = image.config().as_ref();
    // Env: image first, then the pod's (later wins, as in Kubernetes).
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut put = |k: String, v: String, env: &mut BTreeMap<String, String>| {
        if env.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    for kv in img_cfg.and_then(|c| c.env().clone()).unwrap_or_default() {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        put(k.to_string(), v.to_string(), &mut env);
    }
    if !env.contains_key("PATH") {
        put(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            &mut env,
        );
    }
    put("HOSTNAME".into(), p.hostname.clone(), &mut env);
    // On a terminal, as kubelet's runtimes set it (the pod's env may say
    // otherwise).
    if c.tty == Some(true) && !env.contains_key("TERM") {
        put("TERM".into(), "xterm".into(), &mut env);
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if e.value_from.is_some() {
            return Err(invalid(
                &format!("env[{i}].valueFrom"),
                "valueFrom is not supported yet; give a value".into(),
            ));
        }
        put(
            e.name.clone(),
            e.value.clone().unwrap_or_default(),
            &mut env,
        );
    }
    let env: Vec<String> = order.iter().map(|k| format!("{k}={}", env[k])).collect();
    let cwd = c
        .working_dir
        .clone()
        .or_else(|| img_cfg.and_then(|c| c.working_dir().clone()))
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(invalid(
            "workingDir",
            format!("{cwd:?} is not an absolute path"),
        ));
    }

    let refused = |(field, reason): security::Refusal| invalid(&field, reason);
    let caps = security::capabilities(c).map_err(refused)?;
    let privileged = security::privileged(c);
    let sc = c.security_context.as_ref();
    let image_user = img_cfg.and_then(|c| c.user().clone()).unwrap_or_default();
    let user = security::user(rootfs, &image_user, p.pod_security, c).map_err(refused)?;
    let capabilities = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        // oci-spec's builder fills these with a default set of its own:
        // none is inherited, none is ambient (a non-root process would
        // keep them across execve; containerd sets none either).
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()?;
    // allowPrivilegeEscalation: false is no_new_privs; unset, Kubernetes
    // lets the process gain privileges (setuid binaries, file caps).
    let no_new_privileges = sc
        .and_then(|s| s.allow_privilege_escalation)
        .is_some_and(|allow| !allow);
    let mut process = ProcessBuilder::default();
    if let Some(adj) = p.oom_score_adj {
        process = process.oom_score_adj(adj);
    }
    let process = process
        .terminal(c.tty.unwrap_or(false))
        .user(
            UserBuilder::default()
                .uid(user.uid)
                .gid(user.gid)
                .additional_gids(user.additional_gids.clone())
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(no_new_privileges)
        .build()?;
    let seccomp = security::seccomp(
        security::seccomp_profile(p.pod_security, c),
        privileged,
        &caps,
        seccomp_dir,
    )
    .map_err(refused)?;
    let sysctl = security::sysctls(p.pod_security, p.host_network).map_err(refused)?;

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(q) = quantity(c, "memory") {
        let bytes = parse_memory(&q.0).map_err(|r| invalid("resources.limits.memory", r))?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(bytes).build()?);
    }
    // The CPU request is the container's share of a busy node (cpu.shares,
    // a cgroup v2 weight through runc); the limit, a CFS quota.
    let request = c
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get("cpu"));
    let request = match request {
        Some(q) => Some(parse_cpu_millis(&q.0).map_err(|r| invalid("resources.requests.cpu", r))?),
        None => None,
    };
    let mut cpu = LinuxCpuBuilder::default().shares(weft_api::pod::cpu_shares(request));
    if let Some(q) = quantity(c, "cpu") {
        let millis = parse_cpu_millis(&q.0).map_err(|r| invalid("resources.limits.cpu", r))?;
        let quota = (millis * CPU_PERIOD_US / 1000).max(1000) as i64;
        cpu = cpu.quota(quota).period(CPU_PERIOD_US);
    }
    resources = resources.cpu(cpu.build()?);
    // hostPID and hostIPC: the node's namespaces, by not making new ones;
    // hostNetwork: the node's network (and, as in Kubernetes, its UTS).
    // Those the pod's sandbox process holds are joined: they are the pod's.
    let (sandbox, held) = match p.sandbox {
        Some((s, held)) => (Some(s), held),
        None => (None, super::pause::Namespaces::default()),
    };
    let own = |held: bool, kind: &str| match (held, sandbox) {
        (true, Some(s)) => Some(s.ns_path(kind)),
        _ => None,
    };
    let mut kinds = vec![(LinuxNamespaceType::Network, Some(p.netns_path.clone()))];
    if !p.host_pid {
        kinds.push((LinuxNamespaceType::Pid, own(held.pid, "pid")));
    }
    if !p.host_ipc {
        kinds.push((LinuxNamespaceType::Ipc, own(held.ipc, "ipc")));
    }
    if !p.host_network {
        kinds.push((LinuxNamespaceType::Uts, own(held.uts, "uts")));
    }
    kinds.push((LinuxNamespaceType::Mount, None));
    let namespaces = kinds
        .into_iter()
        .map(|(typ, path)| {
            let b = LinuxNamespaceBuilder::default().typ(typ);
            match path {
                Some(path) => b.path(path).build(),
                None => b.build(),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&p.cgroups_path))
        .sysctl(
            sysctl
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    if privileged {
        // All of the host's devices, nothing masked or read-only in /proc
        // and /sys (containerd's privileged mode).
        let all = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()?;
        resources = resources.devices(vec![all]);
        linux = linux
            .devices(security::host_devices())
            .masked_paths(Vec::new())
            .readonly_paths(Vec::new());
    } else {
        linux = linux
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths());
    }
    if let Some(seccomp) = seccomp {
        linux = linux.seccomp(seccomp);
    }
    let linux = linux.resources(resources.build()?).build()?;

    let mut mounts = get_default_mounts();
    // The pod's /dev/shm (or the node's, with hostIPC) in place of one of
    // the container's own: POSIX shared memory is the pod's, as its IPC
    // namespace is.
    if let Some(shm) = &p.shm {
        for m in &mut mounts {
            if m.destination() == Path::new("/dev/shm") {
                *m = MountBuilder::default()
                    .destination(PathBuf::from("/dev/shm"))
                    .typ("bind")
                    .source(shm.clone())
                    .options(vec![
                        "rbind".into(),
                        "rprivate".into(),
                        "nosuid".into(),
                        "nodev".into(),
                        "noexec".into(),
                    ])
                    .build()?;
            }
        }
    }
    if privileged {
        // /sys writable, as the devices are.
        for m in &mut mounts {
            if m.destination() == Path::new("/sys") {
                let opts = m.options().clone().unwrap_or_default();
                m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }
    for (src, dst) in &p.files {
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(dst))
                .typ("bind")
                .source(src.clone())
                .options(vec!["rbind".into(), "ro".into()])
                .build()?,
        );
    }
    if let Some((src, dst)) = &p.termination_log {
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(dst))
                .typ("bind")
                .source(src.clone())
                .options(vec!["rbind".into(), "rprivate".into()])
                .build()?,
        );
    }
    for (src, dst, ro) in volume_mounts(c, p.volumes, &p.volume_dirs, &p.subpaths)
        .map_err(|(j, reason)| invalid(&format!("volumeMounts[{j}]"), reason))?
    {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if ro {
            options.push("ro".into());
        }
        mounts.push(
            MountBuilder::default()
                .destination(PathBuf::from(dst))
                .typ("bind")
                .source(src)
                .options(options)
                .build()?,
        );
    }
    let mut spec = Spec::default();
    // Spec::default() names a host of its own; on the node's network the
    // UTS namespace is the node's and no name may be set.
    spec.set_hostname((!p.host_network).then(|| p.hostname.clone()));
    spec.set_process(Some(process));
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(
                sc.and_then(|s| s.read_only_root_filesystem)
                    .unwrap_or(false),
            )
            .build()?,
    ));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Writes `config.json` into the bundle directory.
///
/// # Errors
/// On I/O errors.
pub fn write_spec(bundle: &Path, spec: &Spec) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let data = serde_json::to_vec_pretty(spec).map_err(std::io::Error::other)?;
    // 0600: it holds the container's env, secret values included.
    let path = bundle.join("config.json");
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Staged subpaths, unmounted when the test ends however it ends.
    struct Unmount(Vec<PathBuf>);
    impl Drop for Unmount {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    /// Needs root (a bind mount), as CI runs.
    #[test]
    fn a_sub_path_stays_in_its_volume_and_is_mounted_as_opened() {
        let dir = tempfile::tempdir().unwrap();
        let (root, stage) = (dir.path().join("vol"), dir.path().join("stage"));
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/f"), "mine").unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/secret"), "node's").unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
        std::os::unix::fs::symlink("data", root.join("alias")).unwrap();
        let mut staged = Unmount(Vec::new());

        // A symlink that stays inside is followed.
        let s0 = stage_sub_path(&root, "alias", false, &stage.join("0")).unwrap();
        staged.0.push(s0.clone());
        assert_eq!(std::fs::read_to_string(s0.join("f")).unwrap(), "mine");
        // Those that lead out are refused, and nothing is made through them.
        for sub in ["abs", "rel", "rel/made", "abs/etc"] {
            let e = stage_sub_path(&root, sub, true, &stage.join("x")).unwrap_err();
            assert!(e.contains("outside its volume"), "{sub}: {e}");
        }
        assert!(!dir.path().join("outside/made").exists());
        assert!(stage_sub_path(&root, "missing", false, &stage.join("x")).is_err());
        // Missing directories are made when asked.
        let s1 = stage_sub_path(&root, "new/deeper", true, &stage.join("1")).unwrap();
        staged.0.push(s1);
        assert!(root.join("new/deeper").is_dir());
        // A file is staged on a file.
        let s2 = stage_sub_path(&root, "data/f", false, &stage.join("2")).unwrap();
        staged.0.push(s2.clone());
        assert_eq!(std::fs::read_to_string(&s2).unwrap(), "mine");
        // Swapping a symlink in after the check changes nothing: the mount
        // is of what was opened.
        std::fs::rename(root.join("data"), root.join("data.old")).unwrap();
        std::os::unix::fs::symlink("/", root.join("data")).unwrap();
        assert_eq!(std::fs::read_to_string(s0.join("f")).unwrap(), "mine");
        assert!(!s0.join("etc").exists());
        // Staging again (a restart) replaces the earlier mount.
        let e = stage_sub_path(&root, "alias", false, &stage.join("0")).unwrap_err();
        assert!(e.contains("outside its volume"), "{e}");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("64Mi").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_memory("1G").unwrap(), 1_000_000_000);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("5Qi").is_err());
        assert_eq!(parse_cpu_millis("250m").unwrap(), 250);
        assert_eq!(parse_cpu_millis("1.5").unwrap(), 1500);
        assert!(parse_cpu_millis("0").is_err());
        // The API's parser: exponents and every suffix it accepts.
        assert_eq!(parse_memory("1e3").unwrap(), 1000);
        assert_eq!(parse_memory("1Pi").unwrap(), 1 << 50);
        assert_eq!(parse_cpu_millis("1e0").unwrap(), 1000);
        assert!(parse_memory("-1Mi").is_err());
    }

    #[test]
    fn command_and_args_follow_kubernetes() {
        let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Entrypoint": ["/ep"], "Cmd": ["c1"]},
            "rootfs": {"type": "layers", "diff_ids": []}
        }))
        .unwrap();
        let mut c = Container {
            name: "x".into(),
            ..Default::default()
        };
        assert_eq!(argv(&c, &image).unwrap(), ["/ep", "c1"]);
        c.args = Some(vec!["a".into()]);
        assert_eq!(argv(&c, &image).unwrap(), ["/ep", "a"]);
        c.command = Some(vec!["/cmd".into()]);
        assert_eq!(argv(&c, &image).unwrap(), ["/cmd", "a"]);
        c.args = None;
        assert_eq!(argv(&c, &image).unwrap(), ["/cmd"]);
    }
}
