//! The pods' cgroups: where they live in each hierarchy (cgroup v2, or
//! the v1 controllers and the v2 tree of a hybrid host), what the kernel's
//! OOM killer did in them, and their removal.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{Sandbox, short_uid};

impl Sandbox {
    /// The cgroup (relative to each hierarchy's root) of all of this
    /// node's pods: `weft/<node>`.
    #[must_use]
    pub fn node_cgroup(&self) -> String {
        format!("weft/{}", self.cfg.node)
    }

    /// The parent of all of the node's pods, `weft/<node>/pods`, apart
    /// from the agent's own `weft/<node>/agent`: its PID limit is what the
    /// pods may take together, so that they never take the agent's.
    #[must_use]
    pub fn pods_cgroup(&self) -> String {
        format!("weft/{}/pods", self.cfg.node)
    }

    /// The cgroup of one pod, parent of its containers' cgroups.
    #[must_use]
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/{}", self.pods_cgroup(), short_uid(uid))
    }

    /// The cgroup of one container of a pod.
    #[must_use]
    pub fn container_cgroup(&self, uid: &str, container: &str) -> String {
        format!("{}/{container}", self.pod_cgroup(uid))
    }
}

/// The PID limit of the cgroup `rel`: `pids.max` in the v1 pids
/// hierarchy, or in the v2 tree when its root hands the pids controller
/// down (enabled from there down to `rel`'s parent on the way; the root's
/// own setting is never changed). `None` writes `max`. Makes `rel`.
///
/// # Errors
/// When the cgroup cannot be made or the limit written; `Ok(false)` when
/// no hierarchy has the pids controller.
pub(super) fn set_pids_max(rel: &str, limit: Option<u64>) -> std::io::Result<bool> {
    let value = limit.map_or_else(|| "max".to_string(), |l| l.to_string());
    let mut done = false;
    for root in cgroup_roots() {
        let v1 = root
            .file_name()
            .is_some_and(|n| n.to_string_lossy().split(',').any(|c| c == "pids"));
        // On v2, only when the machine's root already hands pids down
        // (systemd does): the root cgroup is the machine's, not Weft's.
        let v2 = !v1
            && fs::read_to_string(root.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
        if !v1 && !v2 {
            continue;
        }
        let dir = root.join(rel);
        fs::create_dir_all(&dir)?;
        if v2 {
            // Each of Weft's ancestors hands the controller down to its
            // children (the root's is on, checked above).
            let mut at = root.clone();
            for part in Path::new(rel).components() {
                let ctl = at.join("cgroup.subtree_control");
                let on = fs::read_to_string(&ctl)
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "pids"));
                if !on {
                    fs::write(&ctl, "+pids")?;
                }
                at = at.join(part);
            }
        }
        fs::write(dir.join("pids.max"), &value)?;
        done = true;
    }
    Ok(done)
}

/// How often a PID limit refused a fork in cgroup `rel`: the largest
/// `max` of the `pids.events` in it and below, from whichever hierarchy
/// has them (kernels differ on where they count it: the limiting cgroup,
/// or, on v1 since 6.12, the cgroup of the task that forked).
pub(super) fn pids_refused(rel: &str) -> u64 {
    fn walk(dir: &Path, best: &mut u64) {
        if let Ok(t) = fs::read_to_string(dir.join("pids.events"))
            && let Some(n) = t
                .lines()
                .find_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok())
        {
            *best = (*best).max(n);
        }
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), best);
            }
        }
    }
    let mut best = 0;
    for root in cgroup_roots() {
        walk(&root.join(rel), &mut best);
    }
    best
}

/// The processes in cgroup `rel` and its descendants, in any hierarchy.
pub fn procs(rel: &str) -> Vec<i32> {
    fn walk(dir: &Path, out: &mut Vec<i32>) {
        if let Ok(t) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    for root in cgroup_roots() {
        walk(&root.join(rel), &mut out);
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Kills every process of cgroup `rel` and its descendants and waits for
/// them to be gone, for a container runc could not stop (or that runc no
/// longer knows): `cgroup.kill` where the v2 tree has it (atomic, even
/// against a fork bomb), else the v1 freezer around SIGKILLs, else
/// SIGKILLs until the cgroup is empty. Returns whether it is empty.
pub fn kill_all(rel: &str, timeout: std::time::Duration) -> bool {
    use nix::{sys::signal, unistd::Pid};
    let deadline = std::time::Instant::now() + timeout;
    if let Some(v2) = cgroup_v2_root() {
        let kill = v2.join(rel).join("cgroup.kill");
        if kill.exists() {
            let _ = fs::write(&kill, "1");
        }
    }
    let freezer = cgroup_roots()
        .into_iter()
        .find(|r| r.file_name().is_some_and(|n| n == "freezer"))
        .map(|r| r.join(rel).join("freezer.state"))
        .filter(|p| p.exists());
    loop {
        let pids = procs(rel);
        if pids.is_empty() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            tracing::warn!(cgroup = rel, left = pids.len(), "processes survive SIGKILL");
            return false;
        }
        // Frozen, nothing forks between the listing and the kill.
        if let Some(f) = &freezer {
            let _ = fs::write(f, "FROZEN");
        }
        for pid in procs(rel) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
        if let Some(f) = &freezer {
            let _ = fs::write(f, "THAWED");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Moves process `pid` into cgroup `rel` in every hierarchy, making it
/// (on v1, `cpuset.cpus` and `cpuset.mems` are copied down each new level,
/// as runc does, for a process cannot join a cpuset without them).
///
/// # Errors
/// When a directory cannot be made or the process moved.
pub(super) fn enter(rel: &str, pid: i32) -> std::io::Result<()> {
    for root in cgroup_roots() {
        let cpuset = root.join("cpuset.cpus").exists() && !root.join("cgroup.controllers").exists();
        let mut at = root.clone();
        for part in Path::new(rel).components() {
            let parent = at.clone();
            at = at.join(part);
            match fs::create_dir(&at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            if cpuset {
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let empty = fs::read_to_string(at.join(f)).is_ok_and(|v| v.trim().is_empty());
                    if empty {
                        fs::write(at.join(f), fs::read_to_string(parent.join(f))?.trim())?;
                    }
                }
            }
        }
        fs::write(at.join("cgroup.procs"), pid.to_string())?;
    }
    Ok(())
}

/// The most PIDs this machine has (the smaller of `kernel.pid_max` and
/// `kernel.threads-max`).
#[must_use]
pub fn machine_pids() -> u64 {
    let read = |f: &str| {
        fs::read_to_string(f)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    read("/proc/sys/kernel/pid_max")
        .into_iter()
        .chain(read("/proc/sys/kernel/threads-max"))
        .min()
        .unwrap_or(32_768)
}

/// Whether the kernel's OOM killer killed a process of cgroup `rel` (v2
/// `memory.events`, or v1 `memory.oom_control`), which kubelet reports as
/// `OOMKilled`.
pub(super) fn oom_killed(rel: &str) -> bool {
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

/// Removes the cgroup directory `rel` (e.g. `weft/n1/<pod>`, or a node's
/// `weft/n1` at its teardown) and its empty descendants (the containers'
/// cgroups) in every hierarchy (v1 controllers and the v2 tree); at a
/// node's teardown, `weft` too once no node is left in it.
///
/// A pod's removal never takes its parents: runc makes a new pod's cgroup
/// one level at a time (copying cpuset.cpus down on v1), and a parent
/// removed meanwhile failed that pod's start with ENOENT. A node's cgroup is
/// made when its sandbox opens ([`ensure_cgroup`]) and holds `weft` while
/// the node lives, so `weft` only goes when no node is there.
pub fn remove_cgroups(rel: &str) {
    for root in cgroup_roots() {
        let target = root.join(rel);
        remove_tree(&target);
        if target.parent() == Some(root.join("weft").as_path()) {
            let _ = fs::remove_dir(root.join("weft"));
        }
    }
}

/// Makes the cgroup directory `rel` (a node's `weft/<node>`) in every
/// hierarchy, trying again when another node's teardown removed `weft`
/// under it.
pub(super) fn ensure_cgroup(rel: &str) -> std::io::Result<()> {
    for root in cgroup_roots() {
        let dir = root.join(rel);
        let mut tries = 0;
        loop {
            match fs::create_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
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
    // A process killed a moment ago may still be leaving the cgroup
    // (EBUSY): up to a second for it, so that a teardown right after a
    // kill leaves no directory behind.
    for _ in 0..50 {
        match fs::remove_dir(p) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            _ => return,
        }
    }
}
