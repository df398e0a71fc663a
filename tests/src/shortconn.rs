//! A short-connection load generator and HTTP/1.0 server for benchmarks:
//! each connection connects, sends a request, reads the whole response and
//! ends with a reset (no TIME_WAIT), so the rate and the latency of a
//! connection's whole life are measured. The generator runs as a child
//! process (the benchmark binary again, with [`LOADGEN_ENV`] set) so that it
//! can join a network namespace and, optionally, a cgroup.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use weft_agent::netlink::netns;

/// The environment variable that makes a benchmark binary the generator.
pub const LOADGEN_ENV: &str = "WEFT_LOADGEN";
/// Seconds per measurement.
pub const RUN_SECS: u64 = 3;
/// Connections in flight (generator threads).
pub const CONCURRENCY: usize = 8;
/// What the server answers.
pub const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

/// What one measurement gave.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Connections per second.
    pub rps: f64,
    /// Median connection time, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Connections that failed.
    pub errors: usize,
}

/// The generator's body: `spec` is `netns|cgroup or -|targets,...`. Prints
/// rate, p50, p99 and errors.
///
/// # Errors
/// A bad spec, or a namespace or cgroup that cannot be joined.
pub fn loadgen_main(spec: &str) -> Result<()> {
    // netns|cgroup or -|targets comma-separated
    let parts: Vec<&str> = spec.split('|').collect();
    ensure!(parts.len() == 3, "bad loadgen spec {spec}");
    if parts[1] != "-" {
        std::fs::write(
            PathBuf::from(parts[1]).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .context("join the cgroup")?;
    }
    let file = std::fs::File::open(netns::path(parts[0]))?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let targets: Vec<SocketAddrV4> = parts[2]
        .split(',')
        .map(|t| t.parse().context("target"))
        .collect::<Result<_>>()?;
    let deadline = Instant::now() + Duration::from_secs(RUN_SECS);
    let threads: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let targets = targets.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(100_000);
                let mut errors = 0usize;
                let mut i = t;
                let mut buf = [0u8; 256];
                while Instant::now() < deadline {
                    let to = targets[i % targets.len()];
                    i += 1;
                    let start = Instant::now();
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        // The client ends each connection with a reset once
                        // it has the whole response, so no TIME_WAIT is left
                        // anywhere: otherwise a client addressing one VIP
                        // runs out of ports for it (a VIP is one
                        // destination, two pod IPs are two), and flows of
                        // different paths meet each other's TIME_WAIT on
                        // the servers. Every path is measured the same way.
                        let mut got = 0;
                        while got < RESPONSE.len() {
                            let n = s.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            got += n;
                        }
                        linger_zero(&s);
                        if got == RESPONSE.len() {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("short response"))
                        }
                    })();
                    match ok {
                        Ok(()) => lat.push(start.elapsed().as_micros() as u32),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (l, e) = t.join().expect("loadgen thread");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        f64::from(all[((all.len() - 1) as f64 * p / 100.0).round() as usize])
    };
    println!(
        "{} {} {} {}",
        all.len() as f64 / RUN_SECS as f64,
        pct(50.0),
        pct(99.0),
        errors
    );
    Ok(())
}

/// SO_LINGER with a zero timeout: close() sends a reset.
pub fn linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const l).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
}

/// Runs the generator from `netns` (and `cgroup`) against `targets`.
///
/// # Errors
/// When the generator fails.
pub fn load(netns: &str, cgroup: Option<&PathBuf>, targets: &[SocketAddrV4]) -> Result<Figures> {
    let spec = format!(
        "{netns}|{}|{}",
        cgroup.map_or("-".into(), |c| c.display().to_string()),
        targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new(std::env::current_exe()?)
        .env(LOADGEN_ENV, spec)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "load generator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    ensure!(v.len() == 4, "load generator said {text:?}");
    Ok(Figures {
        rps: v[0],
        p50_us: v[1],
        p99_us: v[2],
        errors: v[3] as usize,
    })
}

/// An HTTP/1.0 server in namespace `netns_name` on `port`: answers every request, then closes once
/// the client has.
///
/// # Errors
/// When the port cannot be bound in the namespace.
pub fn serve(netns_name: &str, port: u16, stop: Arc<AtomicBool>) -> Result<()> {
    let l = netns::run_in(Some(netns_name), move || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    })??;
    let l = Arc::new(l);
    for _ in 0..CONCURRENCY / 2 {
        let l = l.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(RESPONSE);
                // Wait for the client's close before closing.
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
    }
    Ok(())
}
