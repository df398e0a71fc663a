//! Issue 19's Job measure, beside its floor in the same run:
//!
//! 1. The floor: 100 bare `runc run` of prepared busybox bundles whose
//!    process is `true`, one after the other (each to its exit), on one lab
//!    node: the sum of their times is what 100 pods cost the runtime alone.
//! 2. On a 2-node cluster (controller and agents, release build): a Job of
//!    100 completions, parallelism 10, of a busybox `true`, from `weft
//!    apply` to its `Complete` condition (polled every 100 ms through the
//!    API), three runs.
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
    Ok(())
}
