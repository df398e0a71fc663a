//! The container shim (`weft shim`): one small process per container that
//! outlives the agent, as conmon or containerd-shim do. It runs
//! `runc create` (or `runc run --detach` to start at once), becomes the container's reaper, writes its stdout and
//! stderr to a log file in the CRI format (`<RFC 3339 time> <stream> F <line>`,
//! what `kubectl logs` shows), and records the exit code when it exits.
//!
//! The log file is the caller's choice (the sandbox keeps one per restart,
//! as kubelet does, so that the previous run's log survives a restart); it
//! rotates at `log_max_size`, keeping `log_max_files` files
//! ([`super::logfile`]).
//!
//! It tells the agent how creation went with one line on its stdout,
//! `ok <pid>` or `err <message>`, then detaches from it.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::attach::{self, Hub, Input};
use super::logfile::{self, RotatingLog};
use nix::{
    sys::wait::{WaitStatus, waitpid},
    unistd::{Pid, pipe, setsid},
};

/// Arguments of `weft shim`.
#[derive(Clone, Debug)]
pub struct ShimArgs {
    /// Container id.
    pub id: String,
    /// Bundle directory (holds config.json; the shim writes pid, exit and log files there).
    pub bundle: PathBuf,
    /// runc binary.
    pub runc: PathBuf,
    /// runc state root.
    pub runc_root: PathBuf,
    /// Log file (CRI format), appended to.
    pub log: PathBuf,
    /// Size at which the log rotates.
    pub log_max_size: u64,
    /// Log files kept, the current one included.
    pub log_max_files: u32,
    /// Start the container too (`runc run --detach`), saving a `runc start`.
    pub start: bool,
    /// Keep the container's stdin open for attached clients (`stdin: true`).
    pub stdin: bool,
    /// Close it when the first attached client leaves (`stdinOnce`).
    pub stdin_once: bool,
    /// Run the container on a terminal (`tty: true`; its config.json says
    /// `terminal: true`).
    pub tty: bool,
}

/// File in the bundle holding the container's exit code once it exited.
pub const EXIT_FILE: &str = "exit_code";
/// File in the bundle holding the container's pid.
pub const PID_FILE: &str = "init.pid";
/// runc's own log (errors of create/start).
pub const RUNC_LOG: &str = "runc.log";

/// Writes the one line a helper process of the agent (`weft shim`, `weft
/// pause`) reports on its stdout: `ok <pid>`, or `err <message>` on one
/// line. Returns the helper's exit code (0 or 1).
pub(super) fn report(result: Result<i32, &str>) -> i32 {
    let mut out = std::io::stdout();
    let (line, code) = match result {
        Ok(pid) => (format!("ok {pid}"), 0),
        Err(msg) => (format!("err {}", msg.replace('\n', " ")), 1),
    };
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    code
}

/// What helper process `who` reported (see [`report`]): its PID, or its
/// error.
pub(super) fn parse_report(who: &str, line: &str) -> Result<i32, String> {
    let line = line.trim();
    match line.strip_prefix("ok ") {
        Some(pid) => pid.parse().map_err(|_| format!("{who} reported {line:?}")),
        None => Err(line
            .strip_prefix("err ")
            .map_or_else(|| format!("{who} exited without a report"), str::to_string)),
    }
}

/// The last error runc wrote to its JSON log, if any.
#[must_use]
pub fn runc_error(bundle: &Path) -> Option<String> {
    let text = fs::read_to_string(bundle.join(RUNC_LOG)).ok()?;
    text.lines().rev().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        (v["level"] == "error").then(|| v["msg"].as_str().unwrap_or_default().to_string())
    })
}

fn pump(
    src: OwnedFd,
    stream: &'static str,
    log: Arc<Mutex<RotatingLog>>,
    hub: Arc<Hub>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let chan = if stream == "stderr" {
        attach::STDERR
    } else {
        attach::STDOUT
    };
    std::thread::Builder::new()
        .name(format!("log-{stream}"))
        .spawn(move || {
            let mut r = File::from(src);
            let mut buf = vec![0u8; 64 * 1024];
            // An unfinished line, at most MAX_LINE bytes: the shim's memory
            // does not grow with what the container writes.
            let mut partial = Vec::new();
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // Written before the next read: a container that writes
                // faster than the disk takes waits on its full pipe.
                if let Ok(mut f) = log.lock() {
                    let _ = logfile::records(stream, &buf[..n], &mut partial, |rec| {
                        f.write_record(rec)
                    });
                }
                hub.broadcast(chan, &buf[..n]);
            }
            if !partial.is_empty()
                && let Ok(mut f) = log.lock()
            {
                let _ = logfile::records(stream, b"\n", &mut partial, |rec| f.write_record(rec));
            }
        })
}

/// The console socket runc connects to, and the thread that takes the
/// terminal's master from it.
struct ConsoleReceiver {
    /// What runc is told (`/proc/self/fd/N/console.sock`, N inherited).
    path: String,
    /// The bundle's descriptor runc inherits for that path.
    _dir: OwnedFd,
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<std::io::Result<OwnedFd>>,
}

fn console_receiver(bundle: &Path) -> std::io::Result<ConsoleReceiver> {
    let listener = attach::bind(bundle, attach::CONSOLE_SOCKET)?;
    listener.set_nonblocking(true)?;
    let dir = OwnedFd::from(File::open(bundle)?);
    // Inherited by runc (not close-on-exec).
    nix::fcntl::fcntl(
        &dir,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .map_err(std::io::Error::from)?;
    let path = format!(
        "/proc/self/fd/{}/{}",
        dir.as_raw_fd(),
        attach::CONSOLE_SOCKET
    );
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let thread = std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false)?;
                        return attach::receive_fd(&stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if flag.load(std::sync::atomic::Ordering::Acquire) {
                            return Err(std::io::Error::other("runc did not connect"));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e),
                }
            }
        })?;
    Ok(ConsoleReceiver {
        path,
        _dir: dir,
        done,
        thread,
    })
}

impl ConsoleReceiver {
    /// The master, once runc is done (it sends it before `create` returns).
    fn finish(self) -> std::io::Result<OwnedFd> {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        self.thread
            .join()
            .map_err(|_| std::io::Error::other("the console thread panicked"))?
    }
}

/// Runs the shim; returns the process exit code.
#[must_use]
pub fn run(args: &ShimArgs) -> i32 {
    let fail = |msg: String| report(Err(&msg));
    let _ = setsid();
    // SAFETY: plain prctl; makes orphaned descendants (the container) ours to reap.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let log_path = &args.log;
    if let Some(d) = log_path.parent() {
        let _ = fs::create_dir_all(d);
    }
    let log = match RotatingLog::open(log_path, args.log_max_size, args.log_max_files) {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => return fail(format!("open {}: {e}", log_path.display())),
    };
    let (Ok((out_r, out_w)), Ok((err_r, err_w))) = (pipe(), pipe()) else {
        return fail("pipe failed".into());
    };
    // Attaching: a socket in the bundle, served once the container runs.
    let attach_listener = match attach::bind(&args.bundle, attach::SOCKET) {
        Ok(l) => l,
        Err(e) => return fail(format!("bind the attach socket: {e}")),
    };
    // stdin: a pipe the shim keeps the writing end of.
    let (stdin_r, stdin_w) = if args.stdin && !args.tty {
        match pipe() {
            Ok((r, w)) => (Some(r), Some(w)),
            Err(_) => return fail("pipe failed".into()),
        }
    } else {
        (None, None)
    };
    // A terminal: runc sends its master over a console socket, reached
    // through a directory descriptor runc inherits (the bundle's path may
    // be too long for a socket address).
    let console = if args.tty {
        match console_receiver(&args.bundle) {
            Ok(c) => Some(c),
            Err(e) => return fail(format!("prepare the console socket: {e}")),
        }
    } else {
        None
    };
    let mut runc = Command::new(&args.runc);
    runc.arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(args.bundle.join(RUNC_LOG))
        .arg("--log-format")
        .arg("json")
        .args(if args.start {
            &["run", "--detach"][..]
        } else {
            &["create"][..]
        });
    if let Some(c) = &console {
        runc.arg("--console-socket").arg(&c.path);
    }
    let status = runc
        .arg("--bundle")
        .arg(&args.bundle)
        .arg("--pid-file")
        .arg(args.bundle.join(PID_FILE))
        .arg(&args.id)
        .stdin(stdin_r.map_or_else(Stdio::null, Stdio::from))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .status();
    // The command holds its copies of the pipes' writing ends: the log
    // pumps see their end only once they are closed.
    drop(runc);
    let master = match console.map(ConsoleReceiver::finish) {
        None => None,
        Some(Ok(m)) => Some(Arc::new(File::from(m))),
        Some(Err(e)) if matches!(status, Ok(s) if s.success()) => {
            return fail(format!("receive the container's terminal: {e}"));
        }
        Some(Err(_)) => None,
    };
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let why =
                runc_error(&args.bundle).unwrap_or_else(|| format!("runc create exited with {s}"));
            return fail(why);
        }
        Err(e) => return fail(format!("run {}: {e}", args.runc.display())),
    }
    let pid: i32 = match fs::read_to_string(args.bundle.join(PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(p) => p,
        None => return fail("runc wrote no pid".into()),
    };
    let input = match (stdin_w, &master) {
        (Some(w), _) => Some(Input::Pipe(File::from(w))),
        (None, Some(m)) if args.stdin => Some(Input::Terminal(m.clone())),
        _ => None,
    };
    let hub = Hub::new(input, master.clone(), args.stdin_once);
    // The write ends now live only in the container (runc passed them on);
    // on a terminal, everything comes from its master.
    let terminal = master
        .as_ref()
        .and_then(|m| m.try_clone().ok())
        .map(OwnedFd::from);
    let pumps = match (
        pump(
            terminal.unwrap_or(out_r),
            "stdout",
            log.clone(),
            hub.clone(),
        ),
        pump(err_r, "stderr", log, hub.clone()),
    ) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            // Nobody would read the container's output: stop it.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            return fail(format!("start the log threads: {e}"));
        }
    };
    hub.serve(attach_listener);
    report(Ok(pid));
    // Detach from the agent's pipes so that its reads end.
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdio descriptors.
        unsafe {
            libc::dup2(null.as_raw_fd(), 0);
            libc::dup2(null.as_raw_fd(), 1);
            libc::dup2(null.as_raw_fd(), 2);
        }
    }
    let code = loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(p, c)) if p == Pid::from_raw(pid) => break c,
            Ok(WaitStatus::Signaled(p, s, _)) if p == Pid::from_raw(pid) => break 128 + s as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            // No children left: the container is gone without us seeing it.
            Err(_) => break 255,
        }
    };
    // Give the log pumps a moment to drain what the container wrote last.
    let deadline = Instant::now() + Duration::from_secs(2);
    for p in pumps {
        while !p.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    hub.close_all();
    let _ = fs::remove_file(args.bundle.join(attach::SOCKET));
    let tmp = args.bundle.join(format!("{EXIT_FILE}.tmp"));
    if fs::write(&tmp, code.to_string()).is_ok() {
        let _ = fs::rename(&tmp, args.bundle.join(EXIT_FILE));
    }
    0
}
