//! Hostile pods (issue 17), on a 2-node lab cluster in one run:
//!
//! - **DNS flood**: a pod on each node sends DNS queries to its node's DNS
//!   as fast as one thread can, for 12 s, while another pod on that node
//!   asks every 20 ms (1 s timeout) and counts what it loses. Node n1's
//!   agent has the default per-pod rate limit; n2's has `--dns-rate-limit
//!   0` (none), the peer measured beside it: what the same server does
//!   with nothing but its sockets (SO_REUSEPORT, 4 MiB buffers) between
//!   the flood and the victim.
//! - **Log flood**: a pod on n1 writes its log as fast as it can for 60 s
//!   while `weft logs --tail 10` runs every 5 s; the agent's peak RSS
//!   (VmHWM) before and after, each read's time, and what is on disk.
//!
//! Run: `cargo build --release --bin weft && cargo bench -p weft-tests
//! --bench hostile` (part of `scripts/bench.sh`).

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};

const FLOOD_SECS: u64 = 12;
const LOG_SECS: u64 = 60;

fn pod(name: &str, node: &str, command: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: weft.local/busybox:1.36, command: {command}}}\n"
    )
}

fn wait_ready(c: &Cluster, names: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = c.get_json(&["pods"])?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        if names.iter().all(|n| {
            items
                .iter()
                .any(|p| p["metadata"]["name"] == *n && pod_ready(p))
        }) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "pods {names:?} not ready");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn netns_of(c: &Cluster, name: &str) -> Result<String> {
    Ok(weft_lab::topology::pods(&c.lab.prefix)?
        .into_iter()
        .find(|(_, r)| r.name == name)
        .with_context(|| format!("no record of {name}"))?
        .1
        .netns)
}

fn node_dns(c: &Cluster, node: &str) -> Result<SocketAddr> {
    let cidr: ipnetwork::Ipv4Network = c.get_json(&["node", node])?["spec"]["podCIDR"]
        .as_str()
        .context("podCIDR")?
        .parse()?;
    Ok(SocketAddr::new(
        weft_lab::topology::first_host(cidr).into(),
        53,
    ))
}

/// A name of the zone answered from memory.
const NAME: &str = "dns-version.cluster.local";

struct FloodFigures {
    sent: u64,
    asked: u32,
    lost: u32,
    limited: u64,
    reached: u64,
}

fn dns_flood(c: &Cluster, node: &str, flooder: &str, victim: &str) -> Result<FloodFigures> {
    let server = node_dns(c, node)?;
    let (flood_ns, victim_ns) = (netns_of(c, flooder)?, netns_of(c, victim)?);
    let stats = |c: &Cluster| -> Result<(u64, u64)> {
        let v: serde_json::Value =
            serde_json::from_str(&c.weft(&["dns", "stats", "--node", node, "-o", "json"])?)?;
        Ok((
            v[node]["ratelimited"].as_u64().context("ratelimited")?,
            v[node]["queries"].as_u64().context("queries")?,
        ))
    };
    let (limited0, reached0) = stats(c)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let flood = std::thread::spawn(move || {
        weft_agent::netlink::netns::run_in(Some(&flood_ns), || -> Result<u64> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            let q = weft_tests::probe::dns_query(1, NAME);
            let mut sent = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                if s.send(&q).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let probe = weft_tests::probe::dns_loss(&victim_ns, server, NAME, FLOOD_SECS - 1)?;
    stop.store(true, Ordering::Relaxed);
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flooder panicked"))???;
    let (limited1, reached1) = stats(c)?;
    Ok(FloodFigures {
        sent,
        asked: probe.0,
        lost: probe.1,
        limited: limited1 - limited0,
        reached: reached1 - reached0,
    })
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut spec = ClusterSpec::new(2);
    spec.node_agent_args
        .insert("n2".into(), vec!["--dns-rate-limit".into(), "0".into()]);
    let c = rt.block_on(Cluster::up(spec, |_| {}))?;
    let r = run(&c);
    drop(c);
    r
}

fn run(c: &Cluster) -> Result<()> {
    let sleep = "[sleep, '86400']";
    c.apply(
        &[
            pod("flood1", "n1", sleep),
            pod("victim1", "n1", sleep),
            pod("flood2", "n2", sleep),
            pod("victim2", "n2", sleep),
        ]
        .concat(),
    )?;
    wait_ready(c, &["flood1", "victim1", "flood2", "victim2"])?;
    println!(
        "Hostile pods ({} CPUs, kernel {})\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    println!(
        "DNS flood: one pod sends as fast as one thread can for {FLOOD_SECS} s; another pod on the node asks every 20 ms (1 s timeout)\n"
    );
    println!(
        "| node's agent | flood sent (q/s) | dropped at the flooder's veth | reached the server (q/s) | victim asked | victim lost | loss |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (node, label, flooder, victim) in [
        ("n1", "default rate limit", "flood1", "victim1"),
        ("n2", "--dns-rate-limit 0 (none)", "flood2", "victim2"),
    ] {
        let f = dns_flood(c, node, flooder, victim)?;
        ensure!(f.asked > 0, "the victim asked nothing");
        println!(
            "| {label} | {} ({:.0}) | {} | {} ({:.0}) | {} | {} | {:.2}% |",
            f.sent,
            f.sent as f64 / FLOOD_SECS as f64,
            f.limited,
            f.reached,
            f.reached as f64 / FLOOD_SECS as f64,
            f.asked,
            f.lost,
            f64::from(f.lost) * 100.0 / f64::from(f.asked)
        );
    }

    // The log flood, on n1.
    for p in ["flood1", "flood2", "victim2"] {
        c.weft(&["delete", "pod", p])?;
    }
    c.apply(&pod(
        "logger",
        "n1",
        r#"["sh", "-c", "yes $(seq -s , 1 150)"]"#,
    ))?;
    wait_ready(c, &["logger"])?;
    let agent = c.agent_pid("n1").context("the agent's pid")?;
    let (rss0, peak0) = weft_tests::apitest::rss(agent)?;
    let uid = c.get_json(&["pod", "logger"])?["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .replace('-', "");
    let dir = c
        .lab
        .node_state_dir(c.lab.node("n1"))
        .join("sandbox/pods")
        .join(&uid[..12])
        .join("logs/main");
    let started = Instant::now();
    let mut reads = Vec::new();
    let mut on_disk_max = 0u64;
    while started.elapsed() < Duration::from_secs(LOG_SECS) {
        let t = Instant::now();
        let tail = c.weft(&["logs", "logger", "--tail", "10"])?;
        reads.push(t.elapsed());
        ensure!(tail.lines().count() == 10, "--tail 10 gave {tail:?}");
        let on_disk: u64 = std::fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        on_disk_max = on_disk_max.max(on_disk);
        std::thread::sleep(Duration::from_secs(5).saturating_sub(t.elapsed()));
    }
    let (rss1, peak1) = weft_tests::apitest::rss(agent)?;
    let rotated = std::fs::read_dir(&dir)?.flatten().count();
    let p = |q: f64| weft_tests::stats::ms(weft_tests::stats::percentile(&reads, q));
    println!(
        "\nLog flood: `yes` with 400-byte lines for {LOG_SECS} s, `weft logs --tail 10` every 5 s ({} reads), agent flags default (10 MiB x 5 files)\n",
        reads.len()
    );
    println!("| | value |\n|---|---|");
    println!(
        "| agent RSS before / after | {} MB / {} MB |",
        rss0 >> 20,
        rss1 >> 20
    );
    println!(
        "| agent peak RSS (VmHWM) before / after | {} MB / {} MB |",
        peak0 >> 20,
        peak1 >> 20
    );
    println!(
        "| `logs --tail 10` p50 / max (ms) | {} / {} |",
        p(50.0),
        p(100.0)
    );
    println!(
        "| log files / most bytes on disk seen | {rotated} / {} MiB |",
        on_disk_max >> 20
    );
    ensure!(
        dir.join("0.log.1").exists(),
        "the flood never rotated: it did not test anything"
    );
    Ok(())
}
