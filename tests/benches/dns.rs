//! Cluster DNS against Knot DNS, side by side in one run:
//! - dnsperf (Debian) against Weft's DNS server (the agent's hickory server
//!   and zone, in a process of its own) and against Knot (Debian's knotd)
//!   serving the same 1 000 Service A records from a zone file; each server
//!   pinned to CPU 0 with one worker, dnsperf to CPU 1: queries per second
//!   at saturation;
//! - latency percentiles below saturation, at a fixed rate from a client of
//!   this bench (dnsperf 2.10 reports no percentiles);
//! - resident memory of the DNS part with 1 000 Services and 10 000 pods:
//!   the server process's RSS after the zone is built and the load has run,
//!   less its RSS before the zone was made;
//! - on a 1-node lab cluster with 1 000 Services: from `weft apply` (or
//!   `weft delete`) of a Service to the node's DNS answering the change.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench dns`
//! after `cargo build --release --bin weft`).

use std::{
    collections::HashMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use weft_agent::{
    dns::{
        records::{PodInfo, ServiceInfo, Zone},
        server::{Handler, Options},
    },
    netlink::{Netlink, netns},
};
use weft_lab::cluster::{Cluster, ClusterSpec};

const SERVICES: u32 = 1_000;
const PODS: u32 = 10_000;
const NAMESPACES: u32 = 10;
const WEFT_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 53);
const KNOT_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 3), 53);
/// The fixed rate of the latency runs (queries per second).
const LATENCY_QPS: u32 = 20_000;

fn svc_name(i: u32) -> String {
    format!("svc-{i}.ns-{}.svc.cluster.local.", i % NAMESPACES)
}

fn svc_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i)
}

fn pod_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 2)) + i)
}

fn rss_kb(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")
}

/// The server side: Weft's DNS handler on one thread, with the zone of
/// 1 000 Services and 10 000 pods. Prints its RSS before and after.
fn serve_main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let me = std::process::id();
    let before = rss_kb(me)?;
    let mut z = Zone::new("cluster.local", 5)?;
    for i in 0..SERVICES {
        z.set_service(
            &format!("ns-{}", i % NAMESPACES),
            &format!("svc-{i}"),
            Some(ServiceInfo {
                cluster_ips: vec![svc_ip(i).into()],
                ports: vec![("http".into(), "tcp".into(), 80)],
                ..ServiceInfo::default()
            }),
        );
    }
    for i in 0..PODS {
        z.set_pod(
            &format!("ns-{}/pod-{i}", i % NAMESPACES),
            Some(PodInfo {
                namespace: format!("ns-{}", i % NAMESPACES),
                ip: pod_ip(i),
                local: i < 110,
            }),
        );
    }
    z.set_synced();
    z.set_pods_synced();
    let handler = Handler::new(
        Arc::new(RwLock::new(z)),
        Options {
            forwarder: None,
            search_shortcut: true,
        },
    );
    rt.block_on(async move {
        let udp = tokio::net::UdpSocket::bind(WEFT_ADDR).await?;
        let tcp = tokio::net::TcpListener::bind(WEFT_ADDR).await?;
        println!("ready {before} {}", rss_kb(me)?);
        std::io::stdout().flush()?;
        weft_agent::dns::server::serve(handler, vec![udp], tcp).await
    })
}

fn main() -> Result<()> {
    if std::env::var_os("WEFT_DNS_BENCH_SERVE").is_some() {
        return serve_main();
    }
    for tool in ["dnsperf", "knotd", "taskset", "dig"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()?
                .success(),
            "{tool} is missing: run scripts/setup.sh"
        );
    }
    println!(
        "machine: {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    servers()?;
    freshness()
}

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn servers() -> Result<()> {
    let ns = Ns(format!("weft-bdns-{}", std::process::id()));
    netns::create(&ns.0)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async { Netlink::open(Some(&ns.0))?.loopback_up().await })?;
    let dir = tempfile::tempdir()?;

    // Weft: this bench in server mode, pinned to CPU 0.
    let exe = std::env::current_exe()?;
    let mut weft = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "taskset", "-c", "0"])
            .arg(&exe)
            .env("WEFT_DNS_BENCH_SERVE", "1")
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(weft.0.stdout.take().context("stdout")?),
        &mut line,
    )?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let [rss_before, rss_ready] = f[..] else {
        bail!("the server said {line:?}");
    };
    // The zone file Knot serves: the same 1 000 A records.
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n@ SOA ns.dns hostmaster 1 7200 1800 86400 5\n@ NS ns.dns\nns.dns A 127.0.0.3\n",
    );
    for i in 0..SERVICES {
        zone.push_str(&format!("{} A {}\n", svc_name(i), svc_ip(i)));
    }
    std::fs::write(dir.path().join("cluster.local.zone"), zone)?;
    let d = dir.path().display();
    std::fs::write(
        dir.path().join("knot.conf"),
        format!(
            "server:\n  rundir: \"{d}\"\n  listen: {}@53\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\ndatabase:\n  storage: \"{d}\"\ntemplate:\n  - id: default\n    storage: \"{d}\"\nzone:\n  - domain: cluster.local\n    file: \"{d}/cluster.local.zone\"\nlog:\n  - target: stderr\n    any: error\n",
            KNOT_ADDR.ip()
        ),
    )?;
    let _knot = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, "taskset", "-c", "0", "knotd", "-c"])
            .arg(dir.path().join("knot.conf"))
            .spawn()?,
    );
    let queries = dir.path().join("queries");
    let mut q = String::new();
    for i in 0..SERVICES {
        q.push_str(&format!("{} A\n", svc_name(i)));
    }
    std::fs::write(&queries, q)?;
    for addr in [WEFT_ADDR, KNOT_ADDR] {
        wait_answer(&ns.0, addr)?;
    }

    println!("\nA queries for {SERVICES} Services (uniform), server on CPU 0, client on CPU 1");
    println!(
        "{:<8} {:>10} {:>14}   {:>9} {:>9} {:>9}   (at {LATENCY_QPS} q/s)",
        "server", "q/s", "avg latency", "p50", "p99", "p99.9"
    );
    let mut qps = HashMap::new();
    for (name, addr) in [("weft", WEFT_ADDR), ("knot", KNOT_ADDR)] {
        let (rate, avg) = dnsperf(&ns.0, addr, &queries)?;
        let lat = latency(&ns.0, addr, LATENCY_QPS, Duration::from_secs(5))?;
        qps.insert(name, rate);
        println!(
            "{name:<8} {rate:>10.0} {:>11.3} ms   {:>6.3} ms {:>6.3} ms {:>6.3} ms",
            avg * 1e3,
            lat[0],
            lat[1],
            lat[2]
        );
    }
    println!(
        "weft / knot throughput: {:.2}",
        qps["weft"] / qps["knot"].max(1.0)
    );
    let rss_after = rss_kb(weft.0.id()).or_else(|_| {
        // `ip netns exec` and taskset exec into the server: same pid.
        bail!("the weft server is gone")
    })?;
    println!(
        "\nweft DNS memory with {SERVICES} Services and {PODS} pods: {:.1} MB over the process's {:.1} MB before the zone ({:.1} MB after building it, {:.1} MB after the load)",
        (rss_after.max(rss_ready) - rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_ready as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    Ok(())
}

fn wait_answer(ns: &str, addr: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "dig", "+short", "+time=1", "+tries=1"])
            .arg(format!("@{}", addr.ip()))
            .arg(svc_name(7))
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == svc_ip(7).to_string() {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{addr} does not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dnsperf at saturation for 10 s: (queries per second, average latency s).
fn dnsperf(ns: &str, addr: SocketAddrV4, queries: &Path) -> Result<(f64, f64)> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "taskset", "-c", "1", "dnsperf"])
        .args(["-s", &addr.ip().to_string(), "-d"])
        .arg(queries)
        .args(["-l", "10", "-c", "4", "-q", "200", "-T", "1"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    // Every answer must be the record asked for, or the rate means nothing.
    ensure!(
        text.lines().any(|l| l.trim().starts_with("Response codes:")
            && l.contains("NOERROR")
            && l.contains("(100.00%)")),
        "not every answer was NOERROR: {text}"
    );
    let lost = field("Queries lost:").unwrap_or(0.0);
    let rate = field("Queries per second:").context(format!("dnsperf said: {text}"))?;
    let avg = field("Average Latency (s):").context("latency")?;
    if lost > 0.0 {
        println!("  ({addr}: {lost} queries lost)");
    }
    Ok((rate, avg))
}

/// Sends A queries at `qps` for `dur` from CPU 1 and returns the p50, p99
/// and p99.9 latencies in ms (a lost query counts as the worst). One
/// thread sends when a query is due and reads answers in between, so the
/// client never waits on itself.
fn latency(ns: &str, addr: SocketAddrV4, qps: u32, dur: Duration) -> Result<[f64; 3]> {
    pin(1);
    let sock = netns::run_in(Some(ns), || UdpSocket::bind("127.0.0.1:0"))??;
    sock.connect(addr)?;
    sock.set_nonblocking(true)?;
    let total = (f64::from(qps) * dur.as_secs_f64()) as usize;
    let msgs: Vec<Vec<u8>> = (0..SERVICES)
        .map(|i| {
            let mut m = Message::new(0, MessageType::Query, OpCode::Query);
            m.add_query(Query::query(
                Name::from_ascii(svc_name(i)).expect("name"),
                RecordType::A,
            ));
            m.to_vec().expect("encode")
        })
        .collect();
    let mut sent: Vec<Option<Instant>> = vec![None; 65_536];
    let mut lat = Vec::with_capacity(total);
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let gap = Duration::from_secs_f64(1.0 / f64::from(qps));
    let mut k = 0;
    let mut last_send = start;
    while lat.len() < total && last_send.elapsed() < Duration::from_millis(500) {
        if k < total && Instant::now() >= start + gap * u32::try_from(k)? {
            let id = u16::try_from(k % 65_536)?;
            let mut m = msgs[k % msgs.len()].clone();
            m[..2].copy_from_slice(&id.to_be_bytes());
            sent[usize::from(id)] = Some(Instant::now());
            sock.send(&m)?;
            k += 1;
            last_send = Instant::now();
        }
        while let Ok(n) = sock.recv(&mut buf) {
            if n >= 2 {
                let id = u16::from_be_bytes([buf[0], buf[1]]);
                if let Some(t) = sent[usize::from(id)].take() {
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    let lost = total.saturating_sub(lat.len());
    lat.extend(std::iter::repeat_n(f64::INFINITY, lost));
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Ok([pct(0.50), pct(0.99), pct(0.999)])
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity
    // only touch it and this thread's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One question to `server` from a socket in `ns`: the response code and
/// the answers as text.
fn ask(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
) -> Result<(ResponseCode, Vec<String>)> {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    sock.send_to(&m.to_vec()?, server)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf)?;
        let r = Message::from_vec(&buf[..n])?;
        if r.metadata.id == m.metadata.id {
            return Ok((
                r.metadata.response_code,
                r.answers.iter().map(|a| a.data.to_string()).collect(),
            ));
        }
    }
}

fn rand_id() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

fn services_yaml(from: u32, to: u32) -> String {
    (from..to)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: default}}\nspec:\n  selector: {{app: none}}\n  ports:\n  - {{name: http, port: 80}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// From `weft apply`/`weft delete` to the node's DNS answering the change,
/// with 1 000 Services in the cluster.
fn freshness() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let c = rt.block_on(Cluster::up(ClusterSpec::new(1), |_| {}))?;
    let started = Instant::now();
    for chunk in 0..10 {
        c.apply(&services_yaml(chunk * 100, chunk * 100 + 100))?;
    }
    println!(
        "\nlab cluster: {SERVICES} Services applied in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let node = c.lab.nodes[0].clone();
    let cidr: ipnetwork::Ipv4Network = c.get_json(&["node", &node.name])?["spec"]["podCIDR"]
        .as_str()
        .context("podCIDR")?
        .parse()?;
    let dns = SocketAddr::from((weft_lab::topology::first_host(cidr), 53));
    let sock = netns::run_in(Some(&node.netns), || UdpSocket::bind("0.0.0.0:0"))??;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    // Every Service is in the node's DNS before measuring.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ask(
        &sock,
        dns,
        &format!("svc-{}.default.svc.cluster.local.", SERVICES - 1),
        RecordType::A,
    )?
    .0 != ResponseCode::NoError
    {
        ensure!(Instant::now() < deadline, "the 1 000 Services never showed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let until = |name: &str,
                 qtype: RecordType,
                 ok: &dyn Fn(ResponseCode, &[String]) -> bool|
     -> Result<f64> {
        let t = Instant::now();
        loop {
            let (code, answers) = ask(&sock, dns, name, qtype)?;
            if ok(code, &answers) {
                return Ok(t.elapsed().as_secs_f64() * 1e3);
            }
            ensure!(
                t.elapsed() < Duration::from_secs(10),
                "{name}: no change after 10 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (mut created, mut changed, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10 {
        let name = format!("probe-{round}");
        let fqdn = format!("{name}.default.svc.cluster.local.");
        let srv = format!("_http._tcp.{fqdn}");
        let yaml = |port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  selector: {{app: none}}\n  ports:\n  - {{name: http, port: {port}}}\n"
            )
        };
        // The clock starts before the client is spawned: the CLI and the
        // API's work count.
        let t = Instant::now();
        c.apply(&yaml(80))?;
        until(&fqdn, RecordType::A, &|code, a| {
            code == ResponseCode::NoError && !a.is_empty()
        })?;
        created.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.apply(&yaml(8080))?;
        until(&srv, RecordType::SRV, &|_, a| {
            a.iter().any(|r| r.contains(" 8080 "))
        })?;
        changed.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.weft(&["delete", "service", &name])?;
        until(&fqdn, RecordType::A, &|code, _| {
            code == ResponseCode::NXDomain
        })?;
        deleted.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("from the weft command to the node's DNS answering the change, 10 rounds (ms):");
    for (what, v) in [
        ("created", &mut created),
        ("changed", &mut changed),
        ("deleted", &mut deleted),
    ] {
        v.sort_by(f64::total_cmp);
        println!(
            "  {what:<8} median {:>6.0}   max {:>6.0}",
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    Ok(())
}
