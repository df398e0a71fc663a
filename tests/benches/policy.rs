//! NetworkPolicy's cost, side by side in one run on a 2-node lab cluster:
//!
//! - short TCP connections (connect, request, response, reset) from a
//!   client pod on n1 to a server pod on n2: with no policy; with 1 policy
//!   isolating the server and allowing the client; and with that policy
//!   plus 1 000 policies selecting other pods and 10 000 other pods'
//!   identities in every agent's maps (pods bound to 40 registered nodes
//!   that run no agent, so they have addresses but no containers);
//! - the bare floor beside them: the same traffic between two pods made
//!   by this bench on the same bridges (n1 to n2), whose veths carry no
//!   weft program (no counters, no policy, no anti-spoofing);
//! - at that size, how long one policy change takes to be enforced on each
//!   node: from just before `weft apply` to the agent's log line written
//!   once its maps hold the change.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench
//! policy` after `cargo build --release --bin weft`).

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ipnetwork::Ipv4Network;
use k8s_openapi::jiff::Timestamp;
use weft_agent::netlink::{Netlink, VethAttachment, netns};
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};
use weft_lab::topology::{NODE_BRIDGE, first_host};
use weft_tests::shortconn::{self, CONCURRENCY, Figures, RUN_SECS};

const ROUNDS: usize = 5;
const IDENTITIES: usize = 10_000;
const POLICIES: usize = 1_000;
/// Registered nodes without an agent that the crowd of pods is bound to
/// (each has a /24: 250 pods apiece).
const GHOSTS: usize = 40;
const CHANGES: usize = 5;

fn pod(name: &str, ns: &str, labels: &str, node: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  tolerations: [{{operator: Exists}}]\n  containers:\n  - {{name: c, image: weft.local/busybox:1.36, command: [sleep, '86400']}}\n"
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n"
    )
}

/// The policy under measurement: the server is isolated and lets in every
/// pod of the cluster on port 80, so its rules grow with the pods: a
/// handful of entries before the crowd, 10 004 with it.
fn server_policy() -> String {
    policy(
        "bench",
        "server",
        "  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n    ports: [{port: 80}]",
    )
}

/// `weft apply` of many documents, split over `parallel` processes.
fn apply_many(c: &Cluster, docs: &[String], parallel: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let per = docs.len().div_ceil(parallel);
    let mut children = Vec::new();
    for (i, chunk) in docs.chunks(per).enumerate() {
        let f = dir.path().join(format!("part-{i}.yaml"));
        std::fs::write(&f, chunk.concat())?;
        let mut cmd = c.weft_command(&["apply", "-f", f.to_str().unwrap_or_default()])?;
        cmd.stdout(std::process::Stdio::null());
        children.push(cmd.spawn()?);
    }
    for mut ch in children {
        ensure!(ch.wait()?.success(), "weft apply failed");
    }
    Ok(())
}

/// The policy maps' fill on the node of `pod`, from `weft policy show`.
fn fill(c: &Cluster, pod: &str) -> Result<BTreeMap<String, u64>> {
    let v: serde_json::Value =
        serde_json::from_str(&c.weft(&["policy", "show", pod, "-o", "json"])?)?;
    Ok(v["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["map"].as_str().unwrap_or_default().to_string(),
                m["used"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

/// Timestamps of the agent's "network policy applied" lines, and how long
/// each took inside the agent (ms).
fn applied(c: &Cluster, node: &str) -> Vec<(Timestamp, f64)> {
    c.agent_log(node)
        .lines()
        .filter(|l| l.contains("network policy applied"))
        .filter_map(|l| {
            let ts: Timestamp = l.split_whitespace().next()?.parse().ok()?;
            let took = l
                .split("took_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((ts, took))
        })
        .collect()
}

/// CPU seconds used so far by every `weft` process (controller, agents,
/// shims), from /proc: what the cluster itself spends during a run.
fn weft_cpu() -> f64 {
    let tick = 100.0;
    let mut total = 0.0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(weft") {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
        let t: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|x| x.parse::<f64>().ok()))
            .sum();
        total += t / tick;
    }
    total
}

/// A measurement, with the CPU the cluster's own processes used meanwhile.
fn measure(netns: &str, target: &[SocketAddrV4], cpu: &mut Vec<f64>) -> Result<Figures> {
    let before = weft_cpu();
    let f = shortconn::load(netns, None, target)?;
    cpu.push(weft_cpu() - before);
    Ok(f)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn med(figs: &[Figures]) -> Figures {
    Figures {
        rps: median(figs.iter().map(|f| f.rps).collect()),
        p50_us: median(figs.iter().map(|f| f.p50_us).collect()),
        p99_us: median(figs.iter().map(|f| f.p99_us).collect()),
        errors: figs.iter().map(|f| f.errors).sum(),
    }
}

/// A pod the bench makes itself on `node`'s bridge: a namespace and a veth
/// with no program attached, at the 250th address of the node's block
/// (which the controller hands out only after 249 others). The agent
/// leaves it alone: its veth is not named as the agent's are.
async fn bare_pod(c: &Cluster, node: &str) -> Result<(String, std::net::Ipv4Addr)> {
    let cidr: Ipv4Network = c.get_json(&["node", node])?["spec"]["podCIDR"]
        .as_str()
        .context("the node's podCIDR")?
        .parse()?;
    let ip = std::net::Ipv4Addr::from(u32::from(cidr.network()) + 250);
    let name = format!("{}-bare-{node}", c.lab.prefix);
    netns::create(&name)?;
    Netlink::open(Some(&c.lab.node(node).netns))?
        .attach_veth(&VethAttachment {
            host_veth: format!("bare{node}"),
            netns: name.clone(),
            bridge: NODE_BRIDGE.into(),
            address: Ipv4Network::new(ip, cidr.prefix())?,
            gateway: Some(first_host(cidr)),
            mtu: 1500,
        })
        .await?;
    Ok((name, ip))
}

fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(shortconn::LOADGEN_ENV) {
        return shortconn::loadgen_main(&spec);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = rt.block_on(Cluster::up(ClusterSpec::new(2), |_| {}))?;
    let r = rt
        .block_on(async {
            Ok::<_, anyhow::Error>((bare_pod(&c, "n1").await?, bare_pod(&c, "n2").await?))
        })
        .and_then(|bare| run(&c, &bare));
    drop(c);
    r
}

type BarePods = ((String, std::net::Ipv4Addr), (String, std::net::Ipv4Addr));

fn run(c: &Cluster, bare: &BarePods) -> Result<()> {
    let ((bare_client, _), (bare_server, bare_ip)) = bare;
    c.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")?;
    c.apply(
        &(pod("server", "bench", "app: server", "n2")
            + &pod("client", "bench", "app: client", "n1")),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.get_json(&["pods", "-n", "bench"])?["items"]
        .as_array()
        .is_some_and(|v| v.len() == 2 && v.iter().all(pod_ready))
    {
        ensure!(Instant::now() < deadline, "bench pods not ready");
        std::thread::sleep(Duration::from_millis(300));
    }
    let recs = weft_lab::topology::pods(&c.lab.prefix)?;
    let find = |n: &str| {
        recs.iter()
            .find(|(_, r)| r.namespace == "bench" && r.name == n)
            .map(|(_, r)| r.clone())
            .with_context(|| format!("no record of {n}"))
    };
    let (server, client) = (find("server")?, find("client")?);
    let stop = Arc::new(AtomicBool::new(false));
    shortconn::serve(&server.netns, 80, stop.clone())?;
    let target = [SocketAddrV4::new(server.ip, 80)];
    shortconn::serve(bare_server, 80, stop.clone())?;
    let bare_target = [SocketAddrV4::new(*bare_ip, 80)];
    // Warm up (ARP, caches).
    shortconn::load(&client.netns, None, &target)?;
    shortconn::load(bare_client, None, &bare_target)?;

    let mut rows: BTreeMap<&str, Vec<Figures>> = BTreeMap::new();
    let show = |what: &str| -> Result<()> {
        let v: serde_json::Value =
            serde_json::from_str(&c.weft(&["policy", "show", "bench/server", "-o", "json"])?)?;
        eprintln!(
            "  {what}: server ingress isolated {}, {} rule entries",
            v["ingress_isolated"], v["rule_entries"]
        );
        Ok(())
    };
    let mut cpu: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut one = |rows: &mut BTreeMap<&str, Vec<Figures>>, k: &'static str| -> Result<()> {
        let f = if k.contains("bare floor") {
            measure(bare_client, &bare_target, cpu.entry(k).or_default())?
        } else {
            measure(&client.netns, &target, cpu.entry(k).or_default())?
        };
        rows.entry(k).or_default().push(f);
        Ok(())
    };
    for round in 0..ROUNDS {
        eprintln!("round {}", round + 1);
        one(
            &mut rows,
            "0 bare floor: pods with no weft program on their veths",
        )?;
        one(&mut rows, "1 no policy")?;
        c.apply(&server_policy())?;
        std::thread::sleep(Duration::from_millis(500));
        show("1 policy")?;
        one(&mut rows, "2 one policy")?;
        c.weft(&["delete", "networkpolicy", "server", "-n", "bench"])?;
        std::thread::sleep(Duration::from_millis(500));
    }

    // The crowd: 10 000 pods with labels of their own on nodes without an
    // agent, and 1 000 policies selecting some of them.
    let start = Instant::now();
    let nodes: Vec<String> = (0..GHOSTS)
        .map(|i| format!("---\napiVersion: v1\nkind: Node\nmetadata: {{name: ghost-{i}}}\n"))
        .collect();
    apply_many(c, &nodes, 4)?;
    c.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: crowd}\n")?;
    let pods: Vec<String> = (0..IDENTITIES)
        .map(|i| {
            pod(
                &format!("p{i}"),
                "crowd",
                &format!("id: p{i}"),
                &format!("ghost-{}", i % GHOSTS),
            )
        })
        .collect();
    apply_many(c, &pods, 8)?;
    let policies: Vec<String> = (0..POLICIES)
        .map(|i| {
            policy(
                "crowd",
                &format!("q{i}"),
                &format!(
                    "  podSelector: {{matchLabels: {{id: p{i}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{id: p{}}}}}}}]\n    ports: [{{port: 8080}}, {{port: 9000, endPort: 9100}}]",
                    (i + 1) % IDENTITIES
                ),
            )
        })
        .collect();
    apply_many(c, &policies, 4)?;
    c.apply(&server_policy())?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (f1, f2) = (fill(c, "bench/client")?, fill(c, "bench/server")?);
        let ids = |f: &BTreeMap<String, u64>| f.get("WEFT_POL_IDENTITIES").copied().unwrap_or(0);
        if ids(&f1) >= (IDENTITIES + 2) as u64 && ids(&f2) >= (IDENTITIES + 2) as u64 {
            eprintln!(
                "crowd in place after {:?}: n1 {f1:?}, n2 {f2:?}",
                start.elapsed()
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the crowd never reached the maps: {f1:?} {f2:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    show("at scale")?;
    // The controller digests 10 000 new pods and 40 nodes that never
    // report for a while: wait until the cluster's own processes are
    // nearly idle again, so that their work is not measured as policy's.
    let settle = Instant::now();
    loop {
        let before = weft_cpu();
        std::thread::sleep(Duration::from_secs(3));
        let used = weft_cpu() - before;
        if used < 0.3 || settle.elapsed() > Duration::from_secs(180) {
            eprintln!(
                "settled after {:?}: weft processes used {used:.2} CPU-s in 3 s",
                settle.elapsed()
            );
            break;
        }
    }
    // Side by side at that size: the server under its policy, and under
    // none (the cluster's own background work is the same in both).
    for round in 0..ROUNDS {
        eprintln!("round {} at scale", round + 1);
        one(&mut rows, "5 bare floor, during the rounds at scale")?;
        one(&mut rows, "3 one policy + 1 000 others + 10 000 identities")?;
        c.weft(&["delete", "networkpolicy", "server", "-n", "bench"])?;
        std::thread::sleep(Duration::from_millis(500));
        one(
            &mut rows,
            "4 no policy on the server + 1 000 others + 10 000 identities",
        )?;
        c.apply(&server_policy())?;
        std::thread::sleep(Duration::from_millis(500));
    }

    // One change, on both nodes: a rule for every bench pod letting the
    // client in on one more port (the client on n1 becomes isolated, the
    // server on n2 gets an entry more).
    let mut lags: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut inside: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..CHANGES {
        let before = [applied(c, "n1").len(), applied(c, "n2").len()];
        let port = 9000 + i;
        let t0 = Timestamp::now();
        c.apply(&policy(
            "bench",
            "extra",
            &format!(
                "  podSelector: {{}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: client}}}}}}]\n    ports: [{{port: {port}}}]"
            ),
        ))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        for (k, node) in ["n1", "n2"].iter().enumerate() {
            let (ts, took) = loop {
                let a = applied(c, node);
                if a.len() > before[k] {
                    break a[before[k]];
                }
                if Instant::now() > deadline {
                    bail!("{node} never applied change {i}");
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let lag = ts.duration_since(t0).as_secs_f64() * 1e3;
            lags.entry(node).or_default().push(lag);
            inside.entry(node).or_default().push(took);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // The client is still let in after all that (the data path agrees).
    let after = shortconn::load(&client.netns, None, &target)?;
    ensure!(
        after.errors == 0 && after.rps > 0.0,
        "the client is still allowed: {after:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let base = med(&rows["1 no policy"]);
    let floor = med(&rows["0 bare floor: pods with no weft program on their veths"]);
    let floor_at_scale = med(&rows["5 bare floor, during the rounds at scale"]);
    let mut out = format!(
        "Short TCP connections pod (n1) -> pod (n2) ({CONCURRENCY} in flight, {RUN_SECS} s per run, median of {ROUNDS} rounds)\n\n| variant | connections/s | p50 µs | p99 µs | errors | rate vs no policy | p99 vs no policy | rate vs bare floor | p99 vs bare floor | weft processes' CPU during the run (s) |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
    );
    for (k, v) in &rows {
        let m = med(v);
        // Rows at scale against the floor measured in the same rounds.
        let f = if k.starts_with('3') || k.starts_with('4') || k.starts_with('5') {
            &floor_at_scale
        } else {
            &floor
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {} | {:+.1}% | {:+.1}% | {:.2}x | {:.2}x | {:.2} |\n",
            &k[2..],
            m.rps,
            m.p50_us,
            m.p99_us,
            m.errors,
            (m.rps / base.rps - 1.0) * 100.0,
            (m.p99_us / base.p99_us - 1.0) * 100.0,
            m.rps / f.rps,
            m.p99_us / f.p99_us,
            median(cpu[k].clone())
        ));
    }
    let (with, without) = (
        med(&rows["3 one policy + 1 000 others + 10 000 identities"]),
        med(&rows["4 no policy on the server + 1 000 others + 10 000 identities"]),
    );
    out.push_str(&format!(
        "\nAt that size, the policy against none: rate {:+.1}%, p99 {:+.1}%\n",
        (with.rps / without.rps - 1.0) * 100.0,
        (with.p99_us / without.p99_us - 1.0) * 100.0
    ));
    out.push_str(&format!(
        "\nOne policy change at {POLICIES} policies and {IDENTITIES} identities, {CHANGES} changes: from before `weft apply` to the maps written (agent log), ms\n\n| node | median | max | inside the agent (median ms) |\n| --- | --- | --- | --- |\n"
    ));
    for (node, v) in &lags {
        let max = v.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {node} | {:.1} | {:.1} | {:.2} |\n",
            median(v.clone()),
            max,
            median(inside[node].clone())
        ));
    }
    println!("{out}");
    Ok(())
}
