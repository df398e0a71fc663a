//! The cluster on a 3-node lab, end to end through the API:
//! - from `weft apply` of a 30-replica Deployment to all 30 Ready, side by
//!   side with the floor: the same 30 pods created straight through the
//!   nodes' sandboxes (10 per node, 4 at a time, as the agents do), with no
//!   API, scheduler or status reports;
//! - from a node failure (agent and containers killed) to its replicas Ready
//!   elsewhere, split into detection (NotReady) and replacement;
//! - the agent's resident memory with 10 pods, and with 30 pods on one node.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench cluster`
//! after `cargo build --release --bin weft`).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use weft_agent::runtime::busybox::BUSYBOX_IMAGE;
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};
use weft_lab::topology::{Lab, LabSpec};

const REPLICAS: usize = 30;
const ROUNDS: usize = 3;
/// The lab's --node-grace.
const GRACE: Duration = Duration::from_secs(10);

fn deployment(name: &str, replicas: usize, node: Option<&str>) -> String {
    let selector = node.map_or_else(String::new, |n| {
        format!("      nodeSelector: {{kubernetes.io/hostname: {n}}}\n")
    });
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{selector}      containers:
      - name: httpd
        image: {BUSYBOX_IMAGE}
        command: ["sh", "-c", "httpd -f -p 80 -h / & trap 'exit 0' TERM; wait"]
        readinessProbe:
          tcpSocket: {{port: 80}}
          periodSeconds: 1
"#
    )
}

/// Polls until `n` pods of `app` are Ready and pass `also`.
fn wait(c: &Cluster, app: &str, n: usize, also: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = c.get_json(&["pods", "-l", &format!("app={app}")])?;
        let ps: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
        let good: Vec<Value> = ps.into_iter().filter(|p| pod_ready(p) && also(p)).collect();
        if good.len() == n {
            return Ok(good);
        }
        if Instant::now() > deadline {
            bail!("only {} of {n} pods of {app} Ready", good.len());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

fn pod(i: usize) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("f{i}"), "namespace": "default",
                     "uid": format!("{i:08x}-5555-4000-8000-{:012x}", std::process::id())},
        "spec": {"containers": [{"name": "httpd", "image": BUSYBOX_IMAGE,
                                 "command": ["sh", "-c", "httpd -f -p 80 -h / & trap 'exit 0' TERM; wait"]}]}
    }))
    .expect("pod")
}

/// The floor: 30 pods straight through three nodes' sandboxes.
async fn floor() -> Result<Duration> {
    let lab = Lab::up(LabSpec::new(3)).await?;
    let mut sandboxes = Vec::new();
    for n in &lab.nodes {
        let sb = lab.sandbox(n)?;
        lab.load_busybox(&sb)?;
        sandboxes.push(sb);
    }
    let started = Instant::now();
    let per_node = REPLICAS / sandboxes.len();
    let mut tasks = Vec::new();
    for (k, sb) in sandboxes.into_iter().enumerate() {
        let sb = std::sync::Arc::new(sb);
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
        let base = u32::from(lab.nodes[k].block.network()) + 10;
        for i in 0..per_node {
            let (sb, gate) = (sb.clone(), gate.clone());
            // Addresses fixed up front, as the controller's IPAM gives them.
            let ip = std::net::Ipv4Addr::from(base + i as u32);
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire().await?;
                sb.create_pod(&pod(k * 100 + i), ip).await?;
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let took = started.elapsed();
    drop(lab);
    Ok(took)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("## cluster: 3-node lab, {REPLICAS} replicas, {ROUNDS} rounds\n");
    println!(
        "| round | apply → 30 Ready | floor: 30 pods via sandboxes | NotReady after | failover: all Ready elsewhere | agent RSS, 10 pods (max of 3) | agent RSS, 30 pods on one node |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for round in 1..=ROUNDS {
        let floor = rt.block_on(floor())?;
        let mut spec = ClusterSpec::new(3);
        spec.controller_args = ["--node-grace", "10s", "--eviction-delay", "0s"]
            .map(String::from)
            .to_vec();
        let mut c = rt.block_on(Cluster::up(spec, |_| {}))?;

        // 30 replicas spread over 3 nodes.
        let t0 = Instant::now();
        c.apply(&deployment("spread", REPLICAS, None))?;
        wait(&c, "spread", REPLICAS, |_| true)?;
        let to_ready = t0.elapsed();
        // Let probes and stats settle before reading memory.
        std::thread::sleep(Duration::from_secs(3));
        let mut rss10 = 0f64;
        for n in ["n1", "n2", "n3"] {
            rss10 = rss10.max(rss_mib(c.agent_pid(n).context("agent pid")?)?);
        }

        // Node n3 fails: its agent and its containers are killed.
        let before = wait(&c, "spread", REPLICAS, |_| true)?;
        let lost = before
            .iter()
            .filter(|p| p["spec"]["nodeName"] == "n3")
            .count();
        c.fail_node("n3")?;
        let failed = Instant::now();
        let not_ready = loop {
            if !c.node_ready("n3")? {
                break failed.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        wait(&c, "spread", REPLICAS, |p| p["spec"]["nodeName"] != "n3")?;
        let failover = failed.elapsed();
        eprintln!("round {round}: {lost} replicas were on n3");

        // 30 pods on one node: the agent's memory at that load.
        c.weft(&["delete", "deployment", "spread"])?;
        c.apply(&deployment("one", REPLICAS, Some("n1")))?;
        wait(&c, "one", REPLICAS, |_| true)?;
        std::thread::sleep(Duration::from_secs(3));
        let rss30 = rss_mib(c.agent_pid("n1").context("agent pid")?)?;
        println!(
            "| {round} | {} | {} | {} | {} | {rss10:.1} MiB | {rss30:.1} MiB |",
            secs(to_ready),
            secs(floor),
            secs(not_ready),
            secs(failover),
        );
        drop(c);
    }
    println!(
        "\nTargets: 30 Ready ≤ 5 s; failover ≤ grace ({} s) + 5 s; agent RSS ≤ 50 MB with 30 pods.",
        GRACE.as_secs()
    );
    Ok(())
}
