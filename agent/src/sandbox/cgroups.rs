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

    /// The cgroup of one pod, parent of its containers' cgroups.
    #[must_use]
    pub fn pod_cgroup(&self, uid: &str) -> String {
        format!("weft/{}/{}", self.cfg.node, short_uid(uid))
    }
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
    let _ = fs::remove_dir(p);
}
