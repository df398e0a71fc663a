//! Named network namespaces, compatible with `ip netns`: each is a bind mount
//! of a namespace file at /run/netns/NAME, so `ip netns exec` works on them.
//!
//! Switching namespaces is per thread in Linux, so every operation that must
//! run inside a namespace runs on a short-lived thread of its own; the
//! caller's threads (and the tokio workers) never change namespace.

use std::{
    fs::{self, File, OpenOptions},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

use super::NetlinkError;

/// Where `ip netns` keeps its namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Longest namespace name we accept (a file name, plus room for suffixes).
const MAX_NAME: usize = 200;

/// Path of the named namespace's file.
#[must_use]
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn validate(name: &str) -> Result<(), NetlinkError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(NetlinkError::InvalidName {
            name: name.to_string(),
            reason: "network namespace names are 1-200 characters of [A-Za-z0-9._-]",
        })
    }
}

/// Whether `p` is a mount point in this mount namespace.
fn is_mount_point(p: &Path) -> io::Result<bool> {
    let wanted = p.to_string_lossy();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    // Field 5 of each line is the mount point (octal-escaped; our paths have no spaces).
    Ok(mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == wanted))
}

/// Makes /run/netns a shared mount, as `ip netns add` does, so that a
/// namespace unmounted here is also released in mount namespaces that copied
/// it (for example containers started while it existed).
fn prepare_dir() -> Result<(), NetlinkError> {
    let dir = Path::new(NETNS_DIR);
    fs::create_dir_all(dir).map_err(|e| NetlinkError::io("create /run/netns", e))?;
    if !is_mount_point(dir).map_err(|e| NetlinkError::io("read mountinfo", e))? {
        mount(
            Some(dir),
            dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| NetlinkError::sys("bind-mount /run/netns", e))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| NetlinkError::sys("make /run/netns shared", e))
}

/// Whether a namespace of that name exists (its file is a live nsfs mount).
#[must_use]
pub fn exists(name: &str) -> bool {
    let p = path(name);
    p.exists() && is_mount_point(&p).unwrap_or(false)
}

/// Creates the named namespace with its loopback down (as the kernel makes it).
///
/// # Errors
/// [`NetlinkError::AlreadyExists`] if it exists; nothing is left behind on failure.
pub fn create(name: &str) -> Result<(), NetlinkError> {
    validate(name)?;
    prepare_dir()?;
    let p = path(name);
    if exists(name) {
        return Err(NetlinkError::AlreadyExists {
            what: "network namespace",
            name: name.to_string(),
        });
    }
    // A stale plain file (from a crash between create and mount) is reused.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| NetlinkError::io("create namespace file", e))?;
    let target = p.clone();
    // A thread of its own unshares, so the caller's namespace never
    // changes; a thread that cannot be made (EAGAIN: PIDs or memory out)
    // is an error, not a panic.
    let res = std::thread::Builder::new()
        .name("netns-create".into())
        .spawn(move || -> Result<(), NetlinkError> {
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetlinkError::sys("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| NetlinkError::sys("bind-mount the new namespace", e))
        })
        .map_err(|e| NetlinkError::io("start a thread to make the namespace", e))
        .and_then(|h| h.join().map_err(|_| NetlinkError::ThreadPanicked)?);
    if res.is_err() {
        let _ = fs::remove_file(&p);
    }
    res
}

/// Creates the namespace unless it exists. Returns whether it was created.
///
/// # Errors
/// As [`create`], except that an existing namespace is not an error.
pub fn ensure(name: &str) -> Result<bool, NetlinkError> {
    match create(name) {
        Ok(()) => Ok(true),
        Err(NetlinkError::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the named namespace; a missing one is not an error (idempotent).
/// Interfaces inside it go away with it once no process holds it.
///
/// # Errors
/// When the mount cannot be removed.
pub fn delete(name: &str) -> Result<(), NetlinkError> {
    validate(name)?;
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    match umount2(&p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(NetlinkError::sys("unmount namespace", e)),
    }
    match fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetlinkError::io("remove namespace file", e)),
    }
}

/// Names of all namespaces under /run/netns, sorted.
///
/// # Errors
/// When /run/netns cannot be read.
pub fn list() -> Result<Vec<String>, NetlinkError> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(NetlinkError::io("read /run/netns", e)),
    };
    for e in entries {
        let e = e.map_err(|e| NetlinkError::io("read /run/netns", e))?;
        if let Some(n) = e.file_name().to_str() {
            out.push(n.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Opens the namespace file (to pass as IFLA_NET_NS_FD or to `setns`).
///
/// # Errors
/// [`NetlinkError::NotFound`] when there is no such namespace.
pub fn open(name: &str) -> Result<File, NetlinkError> {
    validate(name)?;
    if !exists(name) {
        return Err(NetlinkError::NotFound {
            what: "network namespace",
            name: name.to_string(),
        });
    }
    File::open(path(name)).map_err(|e| NetlinkError::io("open namespace", e))
}

/// Runs `f` on a fresh thread that has joined the namespace (`None`: the
/// caller's namespace), and returns its result.
///
/// # Errors
/// When the namespace cannot be opened or joined.
pub fn run_in<F, R>(name: Option<&str>, f: F) -> Result<R, NetlinkError>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let file = name.map(open).transpose()?;
    // A scoped thread may borrow from the caller; it ends (and with it the
    // namespace switch) before this returns.
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(s, move || -> Result<R, NetlinkError> {
                if let Some(file) = file {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(|e| NetlinkError::sys("setns(CLONE_NEWNET)", e))?;
                }
                Ok(f())
            })
            .map_err(|e| NetlinkError::io("start a thread to enter the namespace", e))?
            .join()
            .map_err(|_| NetlinkError::ThreadPanicked)?
    })
}

/// Writes a sysctl under /proc/sys/net inside the named namespace only.
/// /proc/sys/net files act on the network namespace of the thread that
/// opens them, so this never touches the host's settings.
///
/// # Errors
/// When the namespace or the file cannot be opened or written.
pub fn set_sysctl(name: &str, key: &str, value: &str) -> Result<(), NetlinkError> {
    if !key.starts_with("net/") || key.contains("..") {
        return Err(NetlinkError::InvalidName {
            name: key.to_string(),
            reason: "only per-namespace net/ sysctls may be set",
        });
    }
    let file = format!("/proc/sys/{key}");
    let value = value.to_string();
    run_in(Some(name), move || fs::write(&file, value.as_bytes()))?
        .map_err(|e| NetlinkError::io("write sysctl", e))
}

/// Reads a /proc/sys/net sysctl as seen inside the named namespace.
///
/// # Errors
/// When the namespace or the file cannot be read.
pub fn get_sysctl(name: &str, key: &str) -> Result<String, NetlinkError> {
    let file = format!("/proc/sys/{key}");
    run_in(Some(name), move || fs::read_to_string(&file))?
        .map(|s| s.trim().to_string())
        .map_err(|e| NetlinkError::io("read sysctl", e))
}
