//! The pod's sandbox process (`weft pause`): one small process per pod that
//! holds the namespaces its containers share, as the pause container does
//! for kubelet. Its IPC namespace (unless the pod asks for the node's), its
//! UTS namespace (unless the pod is on the node's network) and, with
//! `shareProcessNamespace`, its PID namespace, of which it is PID 1: it
//! reaps the orphans of every container, and a container that restarts
//! finds the others still there.
//!
//! It holds nothing else. Before it waits it gives up what a container
//! sharing its PID namespace could reach through `/proc/1`: it changes its
//! root to an empty directory, becomes uid and gid 65535 with no groups
//! and no capabilities, sets no_new_privs and is not dumpable (so its
//! `/proc/1/root`, `environ` and memory need CAP_SYS_PTRACE, which pods do
//! not get). As PID 1 of its namespace it only dies of a signal sent from
//! outside it: the agent's SIGKILL through the pod's cgroup.
//!
//! It reports to the agent with one line on its stdout, `ok <pid>` (its PID
//! on the node) or `err <message>`, then detaches.

use std::{
    ffi::CString,
    fs,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{
    sched::{CloneFlags, unshare},
    sys::{
        signal::{SigSet, Signal},
        wait::{WaitPidFlag, waitpid},
    },
    unistd::{ForkResult, Pid, fork, setsid},
};

/// The unprivileged user and group the sandbox process runs as.
pub const PAUSE_UID: u32 = 65_535;

/// Which namespaces of its own the pod's sandbox process holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Namespaces {
    /// A PID namespace its containers share (`shareProcessNamespace`).
    pub pid: bool,
    /// An IPC namespace its containers share (all but `hostIPC` pods).
    pub ipc: bool,
    /// A UTS namespace (host name) its containers share (all but
    /// `hostNetwork` pods).
    pub uts: bool,
}

impl Namespaces {
    /// Whether there is anything to hold.
    #[must_use]
    pub fn any(self) -> bool {
        self.pid || self.ipc || self.uts
    }
}

/// Arguments of `weft pause`.
#[derive(Clone, Debug)]
pub struct PauseArgs {
    /// The namespaces to make.
    pub namespaces: Namespaces,
    /// Host name to set in the UTS namespace.
    pub hostname: String,
    /// An empty directory to make its root.
    pub root: PathBuf,
    /// The pod's network namespace, which it joins first (as kubelet's
    /// pause container is in it): `None` stays in the caller's.
    pub netns: Option<PathBuf>,
}

/// A running sandbox process: its PID on the node and its start time (in
/// clock ticks since boot, field 22 of `/proc/<pid>/stat`), which tells it
/// from a later process that got the same PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sandbox {
    /// PID on the node.
    pub pid: i32,
    /// Start time, in clock ticks since boot.
    pub start: u64,
}

impl Sandbox {
    /// The sandbox process of that PID, if one runs (its start time read now).
    #[must_use]
    pub fn of_pid(pid: i32) -> Option<Self> {
        start_time(pid).map(|start| Self { pid, start })
    }

    /// Whether it still runs (the same process, not a reuse of its PID).
    #[must_use]
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !zombie(self.pid)
    }

    /// Path of one of its namespaces (`pid`, `ipc`, `uts`).
    #[must_use]
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }

    /// Reads it back from a file written by [`Sandbox::save`].
    #[must_use]
    pub fn load(path: &Path) -> Option<Self> {
        let text = fs::read_to_string(path).ok()?;
        let (pid, start) = text.trim().split_once(' ')?;
        Some(Self {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }

    /// Writes it to `path` (atomically).
    ///
    /// # Errors
    /// On I/O errors.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{} {}\n", self.pid, self.start))?;
        fs::rename(&tmp, path)
    }
}

/// Field 22 of `/proc/<pid>/stat` (after the command, which may hold spaces
/// and parentheses: counted from the last `)`).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn start_time(pid: i32) -> Option<u64> {
    // After the command: state is field 3, start time field 22.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s == "Z" || s == "X"))
}

/// The sandbox processes running with `root` as their root directory (the
/// `--root` of their command line): the ones one runtime started, whatever
/// became of its records. A process whose command line cannot be read (it
/// exited meanwhile) is left out.
#[must_use]
pub fn running_under(root: &Path) -> Vec<Sandbox> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
            argv.get(1) == Some(&&b"pause"[..])
                && argv.windows(2).any(|w| {
                    w[0] == b"--root" && Path::new(std::ffi::OsStr::from_bytes(w[1])) == root
                })
        })
        .filter_map(Sandbox::of_pid)
        .collect()
}

/// Starts a sandbox process with `exe pause ...` and returns it once it
/// holds its namespaces.
///
/// # Errors
/// When it cannot be started or reports an error.
pub fn start(exe: &Path, args: &PauseArgs) -> Result<Sandbox, String> {
    let ns = args.namespaces;
    let mut child = Command::new(exe)
        .arg("pause")
        .arg("--hostname")
        .arg(&args.hostname)
        .arg("--root")
        .arg(&args.root)
        .args(
            args.netns
                .iter()
                .flat_map(|n| [std::ffi::OsStr::new("--netns"), n.as_os_str()]),
        )
        .args(ns.pid.then_some("--pid"))
        .args(ns.ipc.then_some("--ipc"))
        .args(ns.uts.then_some("--uts"))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start {} pause: {e}", exe.display()))?;
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped");
    let _ = BufReader::new(stdout).read_line(&mut line);
    // The launcher exits as soon as it reported; the sandbox process is
    // its child, orphaned on purpose.
    let _ = child.wait();
    let pid = super::shim::parse_report("the sandbox process", &line)?;
    Sandbox::of_pid(pid).ok_or_else(|| "the sandbox process exited at once".to_string())
}

/// Runs `weft pause`; returns the launcher's exit code (the sandbox
/// process itself never returns).
#[must_use]
pub fn run(args: &PauseArgs) -> i32 {
    let fail = |msg: String| super::shim::report(Err(&msg));
    let _ = setsid();
    if let Some(path) = &args.netns {
        let joined = fs::File::open(path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())
            });
        if let Err(e) = joined {
            return fail(format!(
                "join the network namespace {}: {e}",
                path.display()
            ));
        }
    }
    let ns = args.namespaces;
    let mut flags = CloneFlags::empty();
    for (on, flag) in [
        (ns.pid, CloneFlags::CLONE_NEWPID),
        (ns.ipc, CloneFlags::CLONE_NEWIPC),
        (ns.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if on {
            flags |= flag;
        }
    }
    if let Err(e) = unshare(flags) {
        return fail(format!("unshare: {e}"));
    }
    if ns.uts {
        let name = args.hostname.as_bytes();
        // SAFETY: a pointer and length of a live byte slice.
        if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
            let e = std::io::Error::last_os_error();
            return fail(format!("sethostname {:?}: {e}", args.hostname));
        }
    }
    let Ok(root) = CString::new(args.root.as_os_str().as_encoded_bytes()) else {
        return fail("the root path holds a NUL".into());
    };
    // Everything the child needs is ready before the fork: after it, only
    // system calls.
    let null = match fs::File::options().read(true).write(true).open("/dev/null") {
        Ok(f) => f,
        Err(e) => return fail(format!("open /dev/null: {e}")),
    };
    let mut all = SigSet::all();
    all.remove(Signal::SIGKILL);
    all.remove(Signal::SIGSTOP);
    // SAFETY: this process has one thread (`weft pause` starts no runtime),
    // so the child may run anything; it only makes system calls.
    match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => super::shim::report(Ok(child.as_raw())),
        Ok(ForkResult::Child) => {
            // SAFETY: plain system calls on our own descriptors and
            // credentials.
            unsafe {
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(null.as_raw_fd(), 2);
                libc::close(null.as_raw_fd());
                // Anything else inherited goes (the agent's are CLOEXEC,
                // but no descriptor is worth keeping).
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                let gid = PAUSE_UID as libc::gid_t;
                let dropped = libc::chroot(root.as_ptr()) == 0
                    && libc::chdir(c"/".as_ptr()) == 0
                    && libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setresgid(gid, gid, gid) == 0
                    && libc::setresuid(PAUSE_UID, PAUSE_UID, PAUSE_UID) == 0
                    && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
                    && libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) == 0;
                if !dropped {
                    libc::_exit(1);
                }
            }
            // Signals wait, blocked, for sigwait: SIGCHLD to reap; any
            // other is taken and dropped (only SIGKILL from outside ends us).
            let _ = all.thread_block();
            loop {
                loop {
                    match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                        Ok(nix::sys::wait::WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = all.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_sandbox_reads_back_and_a_dead_one_is_not_alive() {
        let dir = tempfile::tempdir().unwrap();
        let me = Sandbox::of_pid(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let path = dir.path().join("pause");
        me.save(&path).unwrap();
        assert_eq!(Sandbox::load(&path), Some(me));
        // The same PID with another start time is another process.
        let other = Sandbox {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
        fs::write(&path, "garbage").unwrap();
        assert_eq!(Sandbox::load(&path), None);
    }
}
