//! A container's security context as the OCI spec expresses it, field by
//! field as Kubernetes defines it: the user and groups it runs as (the
//! image's user resolved in its own /etc/passwd and /etc/group), its
//! capabilities, privileged mode, `no_new_privileges`, the seccomp filter
//! and the pod's sysctls.
//!
//! Container fields win over the pod's (`runAsUser`, `runAsGroup`,
//! `runAsNonRoot`, `seccompProfile`); `supplementalGroups`, `fsGroup` and
//! `sysctls` are the pod's only; `capabilities`, `privileged`,
//! `allowPrivilegeEscalation` and `readOnlyRootFilesystem` the container's.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fs,
    path::Path,
};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SeccompProfile};
use oci_spec::runtime::{
    Arch, Capability, LinuxDevice, LinuxDeviceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall,
    LinuxSyscallBuilder,
};
use weft_api::security::SAFE_SYSCTLS;

/// The capabilities of a container whose spec adds and drops none: the
/// container runtimes' default set (containerd's and CRI-O's).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// A field that cannot be honoured: its path under the container and why.
pub type Refusal = (String, String);

fn refuse(field: &str, reason: impl Into<String>) -> Refusal {
    (field.to_string(), reason.into())
}

/// A capability by its Kubernetes name (`NET_ADMIN`, or `CAP_NET_ADMIN`).
#[must_use]
pub fn capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// Whether the container is privileged.
#[must_use]
pub fn privileged(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false)
}

/// The container's capability set, as containerd computes it: all of
/// them when privileged; else the default set, with `add: [ALL]` giving
/// all and `drop: [ALL]` taking all, then each named one added and then
/// each named one dropped (a capability both added and dropped is dropped).
///
/// # Errors
/// A capability name the kernel does not know.
pub fn capabilities(c: &Container) -> Result<HashSet<Capability>, Refusal> {
    // The agent's bounding set does not change while it runs.
    static BOUNDING: std::sync::OnceLock<HashSet<Capability>> = std::sync::OnceLock::new();
    capabilities_within(c, BOUNDING.get_or_init(bounding_set))
}

/// The capabilities this process may hand on: its bounding set (a node
/// may run the agent without some), as containerd gives a privileged
/// container "all current capabilities".
#[must_use]
pub fn bounding_set() -> HashSet<Capability> {
    let mask = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    weft_api::security::ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1 << bit) != 0)
        .filter_map(|(_, n)| capability(n))
        .collect()
}

/// [`capabilities`] within the set `available`: what `ALL` and privileged
/// mean, and what a named capability must be in.
///
/// # Errors
/// As [`capabilities`], and a capability added by name that is not
/// available.
pub fn capabilities_within(
    c: &Container,
    available: &HashSet<Capability>,
) -> Result<HashSet<Capability>, Refusal> {
    let all = || available.iter().copied();
    if privileged(c) {
        return Ok(all().collect());
    }
    let mut set: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref());
    let add = caps.and_then(|c| c.add.clone()).unwrap_or_default();
    let drop = caps.and_then(|c| c.drop.clone()).unwrap_or_default();
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if add.iter().any(is_all) {
        set.extend(all());
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for (list, field, adding) in [(&add, "add", true), (&drop, "drop", false)] {
        for (i, n) in list.iter().enumerate().filter(|(_, n)| !is_all(n)) {
            let cap = capability(n).ok_or_else(|| {
                refuse(
                    &format!("securityContext.capabilities.{field}[{i}]"),
                    format!("unknown capability {n:?}"),
                )
            })?;
            if adding {
                if !available.contains(&cap) {
                    return Err(refuse(
                        &format!("securityContext.capabilities.{field}[{i}]"),
                        format!("{n} is not in this node's capability bounding set"),
                    ));
                }
                set.insert(cap);
            } else {
                set.remove(&cap);
            }
        }
    }
    set.retain(|c| available.contains(c));
    Ok(set)
}

/// Who the container's process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
    /// Its supplementary groups.
    pub additional_gids: Vec<u32>,
}

/// One line of an /etc/passwd or /etc/group file: name, id, and for
/// passwd the primary gid, for group its members.
struct Entry {
    name: String,
    id: u32,
    third: String,
}

/// Reads /etc/`file` of the container's root, refusing symlinks on the
/// way (an image's /etc may point anywhere on the host).
fn etc_entries(rootfs: &Path, file: &str) -> Vec<Entry> {
    let etc = rootfs.join("etc");
    let path = etc.join(file);
    let plain = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| !m.file_type().is_symlink());
    if !plain(&etc) || !plain(&path) {
        return Vec::new();
    }
    let Ok(text) = fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let id = f.get(2)?.parse().ok()?;
            Some(Entry {
                name: f[0].to_string(),
                id,
                third: f.get(3).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

fn id_in_range(field: &str, v: i64) -> Result<u32, Refusal> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v <= i32::MAX as u32)
        .ok_or_else(|| refuse(field, format!("{v} is not between 0 and 2147483647")))
}

/// The user, group and supplementary groups of the container: the image's
/// `User` (a name or uid, with an optional group) resolved in the image's
/// own /etc/passwd and /etc/group, overridden by `runAsUser` and
/// `runAsGroup` (the container's over the pod's); the groups the image
/// lists the user in, the pod's `supplementalGroups` and its `fsGroup`
/// added, as containerd does with the default `Merge` policy; and
/// `runAsNonRoot` checked as kubelet does, with kubelet's messages.
///
/// # Errors
/// A user or group the image does not have, an id out of range, or a
/// root user where `runAsNonRoot` forbids it.
pub fn user(
    rootfs: &Path,
    image_user: &str,
    pod: Option<&PodSecurityContext>,
    c: &Container,
) -> Result<User, Refusal> {
    let sc = c.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or(pod.and_then(|p| p.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or(pod.and_then(|p| p.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or(pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let passwd = etc_entries(rootfs, "passwd");
    let groups = etc_entries(rootfs, "group");
    let (user_part, group_part) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };

    if non_root {
        match run_as_user {
            Some(0) => {
                return Err(refuse(
                    "securityContext.runAsNonRoot",
                    "container's runAsUser breaks non-root policy",
                ));
            }
            Some(_) => {}
            None => match user_part.parse::<i64>() {
                Ok(0) => {
                    return Err(refuse(
                        "securityContext.runAsNonRoot",
                        "container has runAsNonRoot and image will run as root",
                    ));
                }
                Ok(_) => {}
                Err(_) if user_part.is_empty() => {
                    return Err(refuse(
                        "securityContext.runAsNonRoot",
                        "container has runAsNonRoot and image will run as root",
                    ));
                }
                Err(_) => {
                    return Err(refuse(
                        "securityContext.runAsNonRoot",
                        format!(
                            "container has runAsNonRoot and image has non-numeric user ({user_part}), cannot verify user is non-root"
                        ),
                    ));
                }
            },
        }
    }

    // The uid, and the name /etc/group lists members by.
    let (uid, name) = match run_as_user {
        Some(u) => {
            let uid = id_in_range("securityContext.runAsUser", u)?;
            (
                uid,
                passwd.iter().find(|e| e.id == uid).map(|e| e.name.clone()),
            )
        }
        None if user_part.is_empty() => (0, Some("root".to_string())),
        None => {
            match user_part.parse::<u32>() {
                Ok(uid) => (
                    uid,
                    passwd.iter().find(|e| e.id == uid).map(|e| e.name.clone()),
                ),
                Err(_) => {
                    let e = passwd.iter().find(|e| e.name == user_part).ok_or_else(|| {
                    refuse(
                        "image user",
                        format!("the image runs as {user_part:?}, which its /etc/passwd does not have"),
                    )
                })?;
                    (e.id, Some(e.name.clone()))
                }
            }
        }
    };
    let primary_of_user = || {
        passwd
            .iter()
            .find(|e| e.id == uid)
            .and_then(|e| e.third.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let gid = match (run_as_group, run_as_user, group_part) {
        (Some(g), _, _) => id_in_range("securityContext.runAsGroup", g)?,
        // runAsUser alone: that user's group in the image, or 0.
        (None, Some(_), _) | (None, None, None) => primary_of_user(),
        (None, None, Some(g)) => match g.parse::<u32>() {
            Ok(g) => g,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.id)
                .ok_or_else(|| {
                    refuse(
                        "image user",
                        format!(
                            "the image runs as group {g:?}, which its /etc/group does not have"
                        ),
                    )
                })?,
        },
    };
    let mut extra: BTreeSet<u32> = BTreeSet::new();
    // Strict: only the groups the spec names, not the image's.
    let strict = pod.and_then(|p| p.supplemental_groups_policy.as_deref()) == Some("Strict");
    if let (Some(name), false) = (&name, strict) {
        for g in &groups {
            if g.third.split(',').any(|m| m == name) {
                extra.insert(g.id);
            }
        }
    }
    for (i, g) in pod
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        extra.insert(id_in_range(
            &format!("pod securityContext.supplementalGroups[{i}]"),
            g,
        )?);
    }
    if let Some(g) = pod.and_then(|p| p.fs_group) {
        extra.insert(id_in_range("pod securityContext.fsGroup", g)?);
    }
    extra.remove(&gid);
    Ok(User {
        uid,
        gid,
        additional_gids: extra.into_iter().collect(),
    })
}

/// The seccomp profile a container asks for: its own, else the pod's;
/// none at all means RuntimeDefault in Weft (Kubernetes' default is
/// Unconfined; see docs/AGENT.md).
#[must_use]
pub fn seccomp_profile<'a>(
    pod: Option<&'a PodSecurityContext>,
    c: &'a Container,
) -> Option<&'a SeccompProfile> {
    c.security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()))
}

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// Syscalls the default profile refuses with EPERM unless the container
/// holds the capability that makes them safe to allow (as the container
/// runtimes' default profiles do); `None`: refused whatever it holds.
const GUARDED: &[(Option<&str>, &[&str])] = &[
    // Not namespaced, obsolete, or an easy kernel attack surface.
    (
        None,
        &[
            "add_key",
            "request_key",
            "keyctl",
            "uselib",
            "ustat",
            "sysfs",
            "_sysctl",
            "vm86",
            "vm86old",
            "nfsservctl",
            "get_kernel_syms",
            "query_module",
            "create_module",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
        ],
    ),
    (
        Some("SYS_ADMIN"),
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "setns",
            "unshare",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "quotactl",
            "quotactl_fd",
            "swapon",
            "swapoff",
            "fanotify_init",
            "lookup_dcookie",
            "bpf",
            "perf_event_open",
        ],
    ),
    (
        Some("DAC_READ_SEARCH"),
        &["name_to_handle_at", "open_by_handle_at"],
    ),
    (
        Some("SYS_MODULE"),
        &["init_module", "finit_module", "delete_module"],
    ),
    (
        Some("SYS_TIME"),
        &["settimeofday", "stime", "clock_settime", "clock_adjtime"],
    ),
    (
        Some("SYS_BOOT"),
        &["reboot", "kexec_load", "kexec_file_load"],
    ),
    (Some("SYS_PACCT"), &["acct"]),
    (Some("SYS_RAWIO"), &["iopl", "ioperm"]),
    (Some("SYS_PTRACE"), &["kcmp", "userfaultfd"]),
    (
        Some("SYS_NICE"),
        &["get_mempolicy", "set_mempolicy", "mbind", "move_pages"],
    ),
    (Some("SYS_TTY_CONFIG"), &["vhangup"]),
    (Some("SYSLOG"), &["syslog"]),
];

/// clone(2) flags that make namespaces: refused without CAP_SYS_ADMIN,
/// one rule each (seccomp compares masked values for equality only).
const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

fn errno_rule(names: &[&str], errno: u32) -> Result<LinuxSyscall, oci_spec::OciSpecError> {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno)
        .build()
}

/// Weft's RuntimeDefault seccomp profile for a container holding `caps`:
/// every syscall is allowed except those the container runtimes' default
/// profiles keep from unprivileged containers (the table above, each
/// unless its capability is held), namespace-making clone flags without
/// CAP_SYS_ADMIN, and clone3 (ENOSYS, so that the C library falls back to
/// clone, whose flags the filter can see).
///
/// # Errors
/// Never in practice (oci-spec's builders).
pub fn default_seccomp(caps: &HashSet<Capability>) -> Result<LinuxSeccomp, oci_spec::OciSpecError> {
    let holds = |name: &str| capability(name).is_some_and(|c| caps.contains(&c));
    let mut denied: Vec<&str> = Vec::new();
    for (cap, names) in GUARDED {
        let allowed = match cap {
            None => false,
            Some("SYS_ADMIN") => holds("SYS_ADMIN"),
            Some(c) => holds(c),
        };
        if !allowed {
            denied.extend(names.iter().copied());
        }
    }
    // bpf and perf_event_open have capabilities of their own since 5.8.
    if holds("BPF") {
        denied.retain(|n| *n != "bpf");
    }
    if holds("PERFMON") {
        denied.retain(|n| *n != "perf_event_open");
    }
    let mut syscalls = vec![errno_rule(&denied, EPERM)?];
    if !holds("SYS_ADMIN") {
        syscalls.push(errno_rule(&["clone3"], ENOSYS)?);
        for flag in CLONE_NAMESPACE_FLAGS {
            let arg = LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?;
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec!["clone".to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(EPERM)
                    .args(vec![arg])
                    .build()?,
            );
        }
    }
    let architectures = if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    };
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()
}

/// The seccomp filter of a container: `None` when privileged (always, as
/// in containerd) or Unconfined; the default profile for RuntimeDefault or
/// when nothing is asked; a Localhost profile read from `dir` (an OCI or
/// Docker-format seccomp JSON file, as kubelet reads them from
/// /var/lib/kubelet/seccomp).
///
/// # Errors
/// An unknown type, or a Localhost profile that is missing, outside `dir`
/// or not a seccomp profile.
pub fn seccomp(
    profile: Option<&SeccompProfile>,
    privileged: bool,
    caps: &HashSet<Capability>,
    dir: &Path,
) -> Result<Option<LinuxSeccomp>, Refusal> {
    const FIELD: &str = "securityContext.seccompProfile";
    let oci = |e: oci_spec::OciSpecError| refuse(FIELD, e.to_string());
    match profile.map(|p| p.type_.as_str()) {
        // containerd runs a privileged container without a filter, whatever
        // the pod or container asks.
        _ if privileged => Ok(None),
        None | Some("RuntimeDefault") => default_seccomp(caps).map(Some).map_err(oci),
        Some("Unconfined") => Ok(None),
        Some("Localhost") => {
            let rel = profile
                .and_then(|p| p.localhost_profile.as_deref())
                .unwrap_or_default();
            let path = Path::new(rel);
            if rel.is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(refuse(
                    &format!("{FIELD}.localhostProfile"),
                    format!(
                        "{rel:?} must be a relative path inside {} without '..'",
                        dir.display()
                    ),
                ));
            }
            let file = dir.join(path);
            let text = fs::read(&file).map_err(|e| {
                refuse(
                    FIELD,
                    format!("cannot load seccomp profile {}: {e}", file.display()),
                )
            })?;
            let p: LinuxSeccomp = serde_json::from_slice(&text).map_err(|e| {
                refuse(
                    FIELD,
                    format!("seccomp profile {} is not valid: {e}", file.display()),
                )
            })?;
            Ok(Some(p))
        }
        Some(other) => Err(refuse(
            &format!("{FIELD}.type"),
            format!("{other:?} is not RuntimeDefault, Unconfined or Localhost"),
        )),
    }
}

/// The pod's sysctls for the OCI spec, refusing any outside the safe set
/// (kubelet's SysctlForbidden) and network ones for a pod on the node's
/// network.
///
/// # Errors
/// A sysctl outside the safe set, or a net.* one with hostNetwork.
pub fn sysctls(
    pod: Option<&PodSecurityContext>,
    host_network: bool,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut out = BTreeMap::new();
    for (i, s) in pod
        .and_then(|p| p.sysctls.clone())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let field = format!("pod securityContext.sysctls[{i}]");
        let name = s.name.replace('/', ".");
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(refuse(
                &field,
                format!(
                    "SysctlForbidden: {name} is not in the safe set ({})",
                    SAFE_SYSCTLS.join(", ")
                ),
            ));
        }
        if host_network && name.starts_with("net.") {
            return Err(refuse(
                &field,
                format!(
                    "SysctlForbidden: {name} would change the node's network namespace (hostNetwork)"
                ),
            ));
        }
        out.insert(name, s.value);
    }
    Ok(out)
}

/// The host's devices, for a privileged container (as containerd gives
/// it): every character and block device under /dev, except the
/// container's own pseudo-terminals and shared memory.
#[must_use]
pub fn host_devices() -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    fn walk(dir: &Path, out: &mut Vec<LinuxDevice>, depth: u32) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = m.file_type();
            if ft.is_dir() {
                let skip = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts"];
                if depth < 4 && !skip.iter().any(|s| p.file_name() == Some((*s).as_ref())) {
                    walk(&p, out, depth + 1);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rdev = m.rdev();
            let mut d = LinuxDevice::default();
            d.set_path(p);
            d.set_typ(typ);
            d.set_major(i64::from(nix::sys::stat::major(rdev) as u32));
            d.set_minor(i64::from(nix::sys::stat::minor(rdev) as u32));
            d.set_file_mode(Some(m.mode() & 0o7777));
            d.set_uid(Some(m.uid()));
            d.set_gid(Some(m.gid()));
            out.push(d);
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out, 0);
    // /dev/console and the ptmx of the host are not the container's.
    out.retain(|d| {
        let p = d.path();
        p != Path::new("/dev/console") && p != Path::new("/dev/ptmx") && p != Path::new("/dev/tty")
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(sc: serde_json::Value) -> Container {
        serde_json::from_value(serde_json::json!({"name": "c", "securityContext": sc})).unwrap()
    }

    fn capabilities(c: &Container) -> Result<HashSet<Capability>, Refusal> {
        let all = weft_api::security::ALL_CAPABILITIES
            .iter()
            .filter_map(|n| capability(n))
            .collect();
        capabilities_within(c, &all)
    }

    #[test]
    fn capabilities_follow_containerd() {
        let c = container(serde_json::json!({}));
        assert_eq!(capabilities(&c).unwrap().len(), 14);
        let c = container(serde_json::json!({"capabilities": {"drop": ["NET_RAW"]}}));
        let caps = capabilities(&c).unwrap();
        assert!(!caps.contains(&Capability::NetRaw));
        assert_eq!(caps.len(), 13);
        let c = container(
            serde_json::json!({"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CAP_NET_ADMIN"]}}),
        );
        let caps = capabilities(&c).unwrap();
        assert_eq!(
            caps,
            [Capability::NetBindService, Capability::NetAdmin]
                .into_iter()
                .collect()
        );
        let c = container(
            serde_json::json!({"capabilities": {"add": ["SYS_TIME"], "drop": ["SYS_TIME"]}}),
        );
        assert!(!capabilities(&c).unwrap().contains(&Capability::SysTime));
        let c = container(serde_json::json!({"capabilities": {"add": ["ALL"]}}));
        assert_eq!(capabilities(&c).unwrap().len(), 41);
        let c =
            container(serde_json::json!({"privileged": true, "capabilities": {"drop": ["ALL"]}}));
        assert_eq!(capabilities(&c).unwrap().len(), 41);
        let mut no_time: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        no_time.remove(&Capability::Chown);
        let c = container(serde_json::json!({"capabilities": {"add": ["ALL"]}}));
        assert_eq!(
            capabilities_within(&c, &no_time).unwrap(),
            no_time,
            "ALL is what the node has"
        );
        let c = container(serde_json::json!({"capabilities": {"add": ["SYS_TIME"]}}));
        assert!(
            capabilities_within(&c, &no_time)
                .unwrap_err()
                .1
                .contains("bounding set")
        );
        let c = container(serde_json::json!({"capabilities": {"add": ["NET_SPOOF"]}}));
        let (field, why) = capabilities(&c).unwrap_err();
        assert_eq!(field, "securityContext.capabilities.add[0]");
        assert!(why.contains("NET_SPOOF"), "{why}");
    }

    fn rootfs() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("etc")).unwrap();
        fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\napp:x:1001:\naudio:x:29:app,www\n",
        )
        .unwrap();
        d
    }

    fn pod_sc(v: serde_json::Value) -> PodSecurityContext {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn users_resolve_in_the_image_and_yield_to_the_spec() {
        let r = rootfs();
        let c = container(serde_json::json!({}));
        let u = user(r.path(), "", None, &c).unwrap();
        assert_eq!((u.uid, u.gid), (0, 0));
        let u = user(r.path(), "app", None, &c).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1001, vec![29])
        );
        let u = user(r.path(), "www:app", None, &c).unwrap();
        assert_eq!((u.uid, u.gid), (33, 1001));
        let u = user(r.path(), "4242", None, &c).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 0));
        assert!(user(r.path(), "nobody", None, &c).is_err());
        // runAsUser: the container's over the pod's; its group from the image.
        let pod = pod_sc(
            serde_json::json!({"runAsUser": 33, "supplementalGroups": [5, 6], "fsGroup": 2000}),
        );
        let u = user(r.path(), "app", Some(&pod), &c).unwrap();
        assert_eq!((u.uid, u.gid), (33, 33));
        assert_eq!(u.additional_gids, vec![5, 6, 29, 2000]);
        let c2 = container(serde_json::json!({"runAsUser": 1000, "runAsGroup": 7}));
        let u = user(r.path(), "", Some(&pod), &c2).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 7));
    }

    #[test]
    fn run_as_non_root_is_checked_as_kubelet_does() {
        let r = rootfs();
        let non_root = container(serde_json::json!({"runAsNonRoot": true}));
        let why = |u: &str, c: &Container| user(r.path(), u, None, c).unwrap_err().1;
        assert!(why("", &non_root).contains("image will run as root"));
        assert!(why("0:0", &non_root).contains("image will run as root"));
        assert!(why("app", &non_root).contains("non-numeric user (app)"));
        assert!(user(r.path(), "1000", None, &non_root).is_ok());
        let root = container(serde_json::json!({"runAsNonRoot": true, "runAsUser": 0}));
        assert!(why("1000", &root).contains("runAsUser breaks non-root policy"));
        // The pod's setting applies to every container.
        let pod = pod_sc(serde_json::json!({"runAsNonRoot": true}));
        let plain = container(serde_json::json!({}));
        assert!(user(r.path(), "", Some(&pod), &plain).is_err());
        let c = container(serde_json::json!({"runAsUser": 5}));
        assert_eq!(user(r.path(), "", Some(&pod), &c).unwrap().uid, 5);
    }

    #[test]
    fn an_etc_that_points_out_of_the_image_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("etc")).unwrap();
        let c = container(serde_json::json!({}));
        assert!(
            user(d.path(), "root", None, &c).is_err(),
            "the host's /etc/passwd was read"
        );
    }

    #[test]
    fn the_default_profile_relaxes_with_capabilities() {
        let names = |caps: &HashSet<Capability>| -> Vec<String> {
            default_seccomp(caps).unwrap().syscalls().clone().unwrap()[0]
                .names()
                .clone()
        };
        let plain: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        let denied = names(&plain);
        for n in [
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "reboot",
            "init_module",
        ] {
            assert!(denied.contains(&n.to_string()), "{n} allowed");
        }
        let rules = default_seccomp(&plain).unwrap().syscalls().clone().unwrap();
        assert_eq!(rules.len(), 2 + CLONE_NAMESPACE_FLAGS.len());
        let mut admin = plain.clone();
        admin.insert(Capability::SysAdmin);
        let denied = names(&admin);
        assert!(!denied.contains(&"mount".to_string()));
        assert!(
            denied.contains(&"keyctl".to_string()),
            "keyctl is never allowed"
        );
        assert_eq!(
            default_seccomp(&admin)
                .unwrap()
                .syscalls()
                .clone()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn seccomp_choices() {
        let d = tempfile::tempdir().unwrap();
        let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
        let p = |v: serde_json::Value| -> SeccompProfile { serde_json::from_value(v).unwrap() };
        assert!(seccomp(None, false, &caps, d.path()).unwrap().is_some());
        assert!(seccomp(None, true, &caps, d.path()).unwrap().is_none());
        let unconfined = p(serde_json::json!({"type": "Unconfined"}));
        assert!(
            seccomp(Some(&unconfined), false, &caps, d.path())
                .unwrap()
                .is_none()
        );
        fs::write(
            d.path().join("deny-mkdir.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let local =
            p(serde_json::json!({"type": "Localhost", "localhostProfile": "deny-mkdir.json"}));
        let got = seccomp(Some(&local), false, &caps, d.path())
            .unwrap()
            .unwrap();
        assert_eq!(got.syscalls().clone().unwrap()[0].names()[0], "mkdir");
        for bad in ["../etc/x.json", "/etc/x.json", "missing.json", ""] {
            let local = p(serde_json::json!({"type": "Localhost", "localhostProfile": bad}));
            assert!(
                seccomp(Some(&local), false, &caps, d.path()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_safe_sysctls() {
        let pod = pod_sc(
            serde_json::json!({"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}),
        );
        assert_eq!(
            sysctls(Some(&pod), false).unwrap()["net.ipv4.tcp_syncookies"],
            "1"
        );
        assert!(
            sysctls(Some(&pod), true).is_err(),
            "net sysctl on the host network"
        );
        let pod = pod_sc(serde_json::json!({"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}));
        assert!(
            sysctls(Some(&pod), false)
                .unwrap_err()
                .1
                .contains("SysctlForbidden")
        );
    }
}
