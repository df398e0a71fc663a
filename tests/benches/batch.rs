//! Issue 19's measures, each beside its floor in the same run:
//!
//! 1. The floor: 100 bare `runc run` of prepared busybox bundles whose
//!    process is `true`, one after the other (each to its exit), on one lab
//!    node: the sum of their times is what 100 pods cost the runtime alone.
//! 2. On a 2-node cluster (controller and agents, release build): a Job of
//!    100 completions, parallelism 10, of a busybox `true`, from `weft
//!    apply` to its `Complete` condition (polled every 100 ms through the
//!    API), three runs.
//!
//! 3. A DaemonSet on a 10-node lab: five times, a node leaves (its agent
//!    stopped, its Node deleted) and joins again; the time from the first
//!    poll that sees it Ready to the first that sees its daemon pod Running
//!    (polls every 50 ms through `weft get`, each taking some 20-40 ms: the
//!    figures are good to about 0.1 s).
//! 4. On the same lab: one pod of a StatefulSet's template, from `weft
//!    apply` to Ready, five times, less the client's share (a `weft apply`
//!    of an unchanged pod and one poll, five times): the medians' difference
//!    is "one pod's start"; then a StatefulSet of 10 with OrderedReady, from
//!    `weft apply` to all Ready.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench
//! batch` after `cargo build --release --bin weft`).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use weft_agent::runtime::busybox::BUSYBOX_IMAGE;
use weft_lab::cluster::{Cluster, ClusterSpec};
use weft_lab::topology::{Lab, LabSpec};
use weft_tests::floor::Floor;
use weft_tests::stats::{ms, percentile};

const COMPLETIONS: usize = 100;
const PARALLELISM: usize = 10;
const RUNS: usize = 3;

async fn floor() -> Result<Vec<Duration>> {
    let lab = Lab::up(LabSpec::new(1)).await?;
    let node = lab.node("n1").clone();
    let state = lab.node_state_dir(&node);
    let sb = lab.sandbox(&node)?;
    lab.load_busybox(&sb)?;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "template", "namespace": "default", "uid": "f1000000-0000-4000-8000-000000000019"},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "600"]}]},
    }))?;
    let tpl = sb.create_pod(&pod, sb.free_ip()?).await?;
    let bundles = Floor::prepare(&sb, &node, &state, &tpl, COMPLETIONS, Some(&["true"]))?;
    let mut times = Vec::new();
    for i in 0..COMPLETIONS {
        times.push(bundles.run(i)?);
    }
    bundles.remove();
    sb.remove_all(Duration::ZERO).await?;
    Ok(times)
}

fn job_runs() -> Result<Vec<Duration>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = rt.block_on(Cluster::up(ClusterSpec::new(2), |_| {}))?;
    let mut out = Vec::new();
    for run in 0..RUNS {
        let name = format!("batch{run}");
        let t = Instant::now();
        c.apply(&format!(
            r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  completions: {COMPLETIONS}
  parallelism: {PARALLELISM}
  template:
    spec:
      restartPolicy: Never
      containers:
      - {{name: main, image: {BUSYBOX_IMAGE}, command: ["true"]}}
"#
        ))?;
        loop {
            let job = c.get_json(&["job", &name])?;
            let done = job["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed")
                });
            if let Some(cond) = done {
                ensure!(cond["type"] == "Complete", "{}", job["status"]);
                ensure!(
                    job["status"]["succeeded"] == COMPLETIONS,
                    "{}",
                    job["status"]
                );
                out.push(t.elapsed());
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(600),
                "{name} did not end: {}",
                job["status"]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c.weft(&["delete", "job", &name])?;
    }
    Ok(out)
}

const NODES: usize = 10;
const REJOINS: usize = 5;
const SET_SIZE: usize = 10;

/// Whether the pod (as JSON) is Ready.
fn ready(p: &serde_json::Value) -> bool {
    weft_lab::cluster::pod_ready(p)
}

/// DaemonSet: node Ready to daemon pod Running, per rejoin; then one pod's
/// start and a StatefulSet of 10 (OrderedReady) to all Ready.
/// What [`sets`] measured.
struct SetFigures {
    /// Node Ready to daemon pod Running, per rejoin.
    rejoins: Vec<Duration>,
    /// One pod, `weft apply` to Ready.
    singles: Vec<Duration>,
    /// The client's share of a single (apply of an unchanged pod, one poll).
    overhead: Vec<Duration>,
    /// The StatefulSet of 10, `weft apply` to all Ready.
    set: Duration,
}

fn sets() -> Result<SetFigures> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut c = rt.block_on(Cluster::up(ClusterSpec::new(NODES), |_| {}))?;
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: everywhere}}
spec:
  selector: {{matchLabels: {{app: everywhere}}}}
  template:
    metadata: {{labels: {{app: everywhere}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: main, image: {BUSYBOX_IMAGE}, command: [sleep, "3600"]}}
"#
    ))?;
    let on_node = |c: &Cluster, node: &str| -> Result<Option<String>> {
        let list = c.get_json(&[
            "pods",
            "-l",
            "app=everywhere",
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .and_then(|p| p["status"]["phase"].as_str().map(String::from)))
    };
    let t = Instant::now();
    loop {
        let list = c.get_json(&["pods", "-l", "app=everywhere"])?;
        let running = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        if running == NODES {
            break;
        }
        ensure!(
            t.elapsed() < Duration::from_secs(300),
            "{running} of {NODES} daemon pods running"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut rejoins = Vec::new();
    for i in 0..REJOINS {
        let node = format!("n{}", NODES - i);
        c.kill_agent(&node)?;
        c.weft(&["delete", "node", &node])?;
        let t = Instant::now();
        while on_node(&c, &node)?.is_some() {
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{node}'s daemon pod stays"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c.start_agent(&node)?;
        let t = Instant::now();
        while !c.node_ready(&node).unwrap_or(false) {
            ensure!(t.elapsed() < Duration::from_secs(120), "{node} not Ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let ready_at = Instant::now();
        while on_node(&c, &node)?.as_deref() != Some("Running") {
            ensure!(
                ready_at.elapsed() < Duration::from_secs(120),
                "no daemon pod on {node}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        rejoins.push(ready_at.elapsed());
    }
    c.weft(&["delete", "ds", "everywhere"])?;

    let template = |name: &str| {
        format!(
            r#"    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: main, image: {BUSYBOX_IMAGE}, command: [sleep, "3600"]}}
"#
        )
    };
    let wait_ready = |c: &Cluster, app: &str, n: usize, t: Instant| -> Result<Duration> {
        loop {
            let list = c.get_json(&["pods", "-l", &format!("app={app}")])?;
            let items = list["items"].as_array().cloned().unwrap_or_default();
            if items.len() == n && items.iter().all(ready) {
                return Ok(t.elapsed());
            }
            ensure!(t.elapsed() < Duration::from_secs(300), "{app}: not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut singles = Vec::new();
    for i in 0..5 {
        let name = format!("single{i}");
        let t = Instant::now();
        c.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: {BUSYBOX_IMAGE}, command: [sleep, \"3600\"]}}\n"
        ))?;
        singles.push(wait_ready(&c, &name, 1, t)?);
        c.weft(&["delete", "pod", &name])?;
    }
    // What the client side costs in those figures: a `weft apply` of an
    // object that is already there, then one poll.
    let mut overhead = Vec::new();
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: still, labels: {{app: still}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: {BUSYBOX_IMAGE}, command: [sleep, \"3600\"]}}\n"
    ))?;
    wait_ready(&c, "still", 1, Instant::now())?;
    for _ in 0..5 {
        let t = Instant::now();
        c.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: still, labels: {{app: still}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: main, image: {BUSYBOX_IMAGE}, command: [sleep, \"3600\"]}}\n"
        ))?;
        overhead.push(wait_ready(&c, "still", 1, t)?);
    }
    c.weft(&["delete", "pod", "still"])?;
    let t = Instant::now();
    c.apply(&format!(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: ordered}}
spec:
  serviceName: ordered
  replicas: {SET_SIZE}
  selector: {{matchLabels: {{app: ordered}}}}
  template:
{}"#,
        template("ordered")
    ))?;
    let set = wait_ready(&c, "ordered", SET_SIZE, t)?;
    Ok(SetFigures {
        rejoins,
        singles,
        overhead,
        set,
    })
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let floor = rt.block_on(floor())?;
    let sum: Duration = floor.iter().sum();
    let runs = job_runs()?;
    println!(
        "## A Job of {COMPLETIONS} completions, parallelism {PARALLELISM}, busybox `true` (2-node lab)\n"
    );
    println!("| | time |");
    println!("|---|---|");
    println!(
        "| floor: {COMPLETIONS} bare `runc run` to exit, one after the other (sum) | {} ms (per run p50 {} ms, p99 {} ms) |",
        ms(sum),
        ms(percentile(&floor, 50.0)),
        ms(percentile(&floor, 99.0))
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "| Job run {}: `weft apply` to Complete | {} ms ({:.2}× the floor) |",
            i + 1,
            ms(*r),
            r.as_secs_f64() / sum.as_secs_f64()
        );
    }
    println!();
    let SetFigures {
        rejoins,
        singles,
        overhead,
        set,
    } = sets()?;
    println!("## A DaemonSet on a {NODES}-node lab: a node Ready to its daemon pod Running\n");
    println!("| rejoin | time (ms) |");
    println!("|---|---|");
    for (i, r) in rejoins.iter().enumerate() {
        println!("| {} | {} |", i + 1, ms(*r));
    }
    println!(
        "| p50 / max | {} / {} |\n",
        ms(percentile(&rejoins, 50.0)),
        ms(*rejoins.iter().max().unwrap_or(&Duration::ZERO))
    );
    let gross = percentile(&singles, 50.0);
    let client = percentile(&overhead, 50.0);
    let one = gross.saturating_sub(client);
    println!("## A StatefulSet of {SET_SIZE}, OrderedReady, to all Ready (same lab)\n");
    println!("| | time |");
    println!("|---|---|");
    println!(
        "| one pod of the template, `weft apply` to Ready (p50 of {}) | {} ms |",
        singles.len(),
        ms(gross)
    );
    println!(
        "| the client's share of that: `weft apply` of an unchanged pod, then one poll (p50 of {}) | {} ms |",
        overhead.len(),
        ms(client)
    );
    println!("| one pod's start (the difference) | {} ms |", ms(one));
    println!("| {SET_SIZE}× one pod | {} ms |", ms(one * SET_SIZE as u32));
    println!(
        "| the StatefulSet, `weft apply` to all Ready | {} ms ({:.2}× {SET_SIZE} pods) |",
        ms(set),
        set.as_secs_f64() / (one * SET_SIZE as u32).as_secs_f64()
    );
    println!();
    Ok(())
}
