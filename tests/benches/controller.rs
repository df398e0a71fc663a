//! Control-plane benchmark (issue 3): with 100 and 1 000 simulated nodes
//! (Node objects whose Leases a load generator renews every 5 s), create
//! 10 000 pods through the API, as bare pods and as one Deployment, on SQLite
//! (durable: synchronous=FULL) and on a single-member etcd. Reports pods/s
//! from the first create to the last pod bound with an IP, API write latency
//! (p50/p99), watch delivery latency to 100 concurrent watchers (p50/p99,
//! from the create's acknowledgement to the ADDED event), and the
//! controller's peak RSS. The floor beside it: the same 10 000 creates
//! written straight into the store (no API, no controllers), in the same run.
//!
//! Run: `cargo build --release --bin weft && cargo bench -p weft-tests --bench controller`
//! (scripts/bench.sh does both). Needs root (network namespaces).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_controller::store::{Compare, EtcdStore, Op, SqliteOptions, SqliteStore, Store, Txn};
use weft_tests::apitest::{self, client, post, raw};
use weft_tests::control::{Backend, ControlOptions, ControlPlane};
use weft_tests::island::{Etcd, Island};

const PODS: usize = 10_000;
const WATCHERS: usize = 100;
/// Clients creating at once. The write latency below is measured at this
/// load (by Little's law, p50 is about CREATORS / throughput).
const CREATORS: usize = 16;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Follows pod events and records when each pod was first seen bound with an
/// IP; relists and watches again if its watch ends (as a client must on 410).
async fn observe_bound(
    c: kube::Client,
    rv: String,
    done: Arc<Mutex<HashMap<String, Instant>>>,
) -> Result<()> {
    use http_body_util::BodyExt;
    let mut rv = rv;
    loop {
        let path = format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}");
        let req = http::Request::builder()
            .uri(path)
            .body(kube::client::Body::empty())?;
        let mut body = c.send(req).await?.into_body();
        let mut buf = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            apitest::take_lines(&mut buf, &data, |line| {
                let e: Value = serde_json::from_slice(line)?;
                let o = &e["object"];
                if o["spec"]["nodeName"].is_string() && o["status"]["podIP"].is_string() {
                    let name = o["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    done.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
                Ok(())
            })?;
        }
        let list = raw(&c, "GET", "/api/v1/namespaces/default/pods", None, "")
            .await?
            .body;
        for o in list["items"].as_array().cloned().unwrap_or_default() {
            if o["spec"]["nodeName"].is_string() && o["status"]["podIP"].is_string() {
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                done.lock()
                    .unwrap()
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
        rv = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("0")
            .to_string();
    }
}

/// A watcher that notes when each pod's ADDED event arrived (scanning the
/// line, not decoding it, so 100 of them do not starve the controller).
async fn watch_added(
    c: kube::Client,
    rv: String,
    seen: Arc<Mutex<Vec<(String, Instant)>>>,
) -> Result<()> {
    use http_body_util::BodyExt;
    let path = format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}");
    let req = http::Request::builder()
        .uri(path)
        .body(kube::client::Body::empty())?;
    let mut body = c.send(req).await?.into_body();
    let mut buf = Vec::new();
    let mut local = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        let now = Instant::now();
        apitest::take_lines(&mut buf, &data, |line| {
            if !line.starts_with(b"{\"type\":\"ADDED\"") {
                return Ok(());
            }
            let text = String::from_utf8_lossy(line);
            if let Some(start) = text.find("\"name\":\"") {
                let rest = &text[start + 8..];
                if let Some(end) = rest.find('"') {
                    local.push((rest[..end].to_string(), now));
                }
            }
            Ok(())
        })?;
        if !local.is_empty() {
            seen.lock().unwrap().append(&mut local);
        }
    }
    Ok(())
}

struct Outcome {
    pods_per_sec: f64,
    write_p50_ms: f64,
    write_p99_ms: f64,
    watch_p50_ms: f64,
    watch_p99_ms: f64,
    rss_mb: f64,
}

async fn register_nodes(c: &kube::Client, n: usize) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = c.clone();
        tasks.spawn(async move {
            let r = post(
                &c,
                "/api/v1/nodes",
                &apitest::node_object(&format!("node-{i:04}"), "16", "64Gi", json!({})),
            )
            .await?;
            ensure!(r.code == 201, "node {i}: {} {}", r.code, r.text);
            apitest::renew_lease(&c, &format!("node-{i:04}")).await
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.expect("task")??;
        }
    }
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    Ok(())
}

/// Renews every node's Lease every 5 s, spread over the interval.
fn renew_leases(c: kube::Client, n: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let gap = Duration::from_secs(5) / n as u32;
        loop {
            for i in 0..n {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = apitest::renew_lease(&c, &format!("node-{i:04}")).await;
                });
                tokio::time::sleep(gap).await;
            }
        }
    })
}

fn run_case(backend_name: &str, nodes: usize, deployment: bool) -> Result<Outcome> {
    let island = Island::new("bench")?;
    let etcd = if backend_name == "etcd" {
        Some(Etcd::start(&island)?)
    } else {
        None
    };
    let backend = match &etcd {
        Some(e) => Backend::Etcd(e.endpoint.clone()),
        None => Backend::Sqlite,
    };
    // A lease grace comfortably above the renewal interval under load.
    // 1 000 nodes need 1 000 /24 blocks: a /13 pod network (10.244.0.0/16,
    // the default, holds 256).
    let args = ["--node-grace", "20s", "--cluster-cidr", "10.128.0.0/13"]
        .map(String::from)
        .to_vec();
    let cp = ControlPlane::start(&island, ControlOptions { backend, args })?;
    let pid = cp.pid().context("controller pid")?;
    // Two worker threads: the load generator (100 watchers, the creators and
    // the lease renewer) must not be what limits the measurement.
    island.runtime(2)?.block_on(async {
        let c = client(&cp, None).await?;
        register_nodes(&c, nodes).await?;
        let renewer = renew_leases(c.clone(), nodes);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rv = raw(&c, "GET", "/api/v1/namespaces/default/pods", None, "").await?.body["metadata"]["resourceVersion"].as_str().unwrap_or("0").to_string();
        let bound: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let mut observer = tokio::spawn(observe_bound(client(&cp, None).await?, rv.clone(), bound.clone()));
        let seen: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
        let mut watchers = Vec::new();
        if !deployment {
            for _ in 0..WATCHERS {
                watchers.push(tokio::spawn(watch_added(client(&cp, None).await?, rv.clone(), seen.clone())));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let acks: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
        let start = Instant::now();
        if deployment {
            let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bench"},
                "spec": {"replicas": PODS, "selector": {"matchLabels": {"app": "bench"}},
                    "template": {"metadata": {"labels": {"app": "bench"}}, "spec": {"containers": [{"name": "c", "image": "weft.local/busybox:1.36"}]}}}});
            let t = Instant::now();
            let r = post(&c, "/apis/apps/v1/namespaces/default/deployments", &d).await?;
            ensure!(r.code == 201, "{}", r.text);
            latencies.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let mut creators = Vec::new();
            for _ in 0..CREATORS {
                let (c, next, acks, latencies) = (c.clone(), next.clone(), acks.clone(), latencies.clone());
                creators.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= PODS {
                            return anyhow::Ok(());
                        }
                        let name = format!("p{i:05}");
                        let t = Instant::now();
                        let r = post(&c, "/api/v1/namespaces/default/pods", &apitest::pod(&name, json!({"app": "bare"}), json!({}))).await?;
                        let now = Instant::now();
                        ensure!(r.code == 201, "{} {}", r.code, r.text);
                        latencies.lock().unwrap().push((now - t).as_secs_f64() * 1000.0);
                        acks.lock().unwrap().insert(name, now);
                    }
                }));
            }
            for cr in creators {
                cr.await??;
            }
        }
        // Wait until every pod is bound with an address.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = bound.lock().unwrap().len();
            if n >= PODS {
                break;
            }
            if Instant::now() > deadline {
                let seen = bound.lock().unwrap().clone();
                bail!("only {n} of {PODS} pods bound within 10 minutes; {}", not_bound(&c, &seen, &cp.log()).await);
            }
            if observer.is_finished() {
                // It only returns on an error: say which, now.
                let why = (&mut observer).await;
                let seen = bound.lock().unwrap().clone();
                bail!("the watch of bound pods stopped with {n} of {PODS} seen: {why:?}; {}", not_bound(&c, &seen, &cp.log()).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last = bound.lock().unwrap().values().max().copied().expect("pods");
        let pods_per_sec = PODS as f64 / (last - start).as_secs_f64();
        // Give watchers a moment to receive the tail, then measure.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut writes = latencies.lock().unwrap().clone();
        writes.sort_by(f64::total_cmp);
        let mut delivery: Vec<f64> = {
            let acks = acks.lock().unwrap();
            seen.lock().unwrap().iter().filter_map(|(name, at)| acks.get(name).map(|ack| at.saturating_duration_since(*ack).as_secs_f64() * 1000.0)).collect()
        };
        if !deployment {
            ensure!(delivery.len() >= PODS * WATCHERS * 99 / 100, "watchers saw only {} of {} ADDED events", delivery.len(), PODS * WATCHERS);
        }
        delivery.sort_by(f64::total_cmp);
        renewer.abort();
        observer.abort();
        for w in watchers {
            w.abort();
        }
        Ok(Outcome {
            pods_per_sec,
            write_p50_ms: pct(&writes, 0.5),
            write_p99_ms: pct(&writes, 0.99),
            watch_p50_ms: pct(&delivery, 0.5),
            watch_p99_ms: pct(&delivery, 0.99),
            rss_mb: peak_rss_mb(pid),
        })
    })
}

/// The floor: 10 000 pod-sized creates straight into the store, 64 at a time.
fn store_floor(backend: &str) -> Result<f64> {
    let island = Island::new("floor")?;
    let etcd = if backend == "etcd" {
        Some(Etcd::start(&island)?)
    } else {
        None
    };
    let dir = tempfile::tempdir()?;
    island.block_on(async {
        let store: Arc<dyn Store> = match &etcd {
            Some(e) => Arc::new(EtcdStore::connect(std::slice::from_ref(&e.endpoint)).await?),
            None => Arc::new(SqliteStore::open(
                dir.path().join("s.db"),
                SqliteOptions::default(),
            )?),
        };
        let value = serde_json::to_vec(&apitest::pod("x", json!({"app": "bare"}), json!({})))?;
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..CREATORS {
            let (store, next, value) = (store.clone(), next.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= PODS {
                        return anyhow::Ok(());
                    }
                    let key = format!("/registry/core/pods/default/p{i:05}");
                    store
                        .txn(
                            Txn::new()
                                .when(Compare::absent(&key))
                                .then(Op::put(&key, value.clone())),
                        )
                        .await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(PODS as f64 / start.elapsed().as_secs_f64())
    })?
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "machine: {cpus} CPUs, kernel {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!();
    println!(
        "| store | nodes | workload | pods/s to bound+IP | write p50 / p99 (ms) | watch delivery p50 / p99 (ms, {WATCHERS} watchers) | controller peak RSS (MB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut floors = Vec::new();
    // WEFT_BENCH_ONLY=sqlite:1000:deploy runs one case (for quick checks).
    let only = std::env::var("WEFT_BENCH_ONLY").ok();
    for backend in ["sqlite", "etcd"] {
        for nodes in [100, 1000] {
            for deployment in [false, true] {
                let case = format!(
                    "{backend}:{nodes}:{}",
                    if deployment { "deploy" } else { "bare" }
                );
                if only.as_ref().is_some_and(|o| *o != case) {
                    continue;
                }
                let o = run_case(backend, nodes, deployment)?;
                let workload = if deployment {
                    "Deployment of 10 000"
                } else {
                    "10 000 bare pods"
                };
                let watch = if deployment {
                    "-".to_string()
                } else {
                    format!("{:.1} / {:.1}", o.watch_p50_ms, o.watch_p99_ms)
                };
                let writes = if deployment {
                    format!("{:.1} (1 create)", o.write_p50_ms)
                } else {
                    format!("{:.1} / {:.1}", o.write_p50_ms, o.write_p99_ms)
                };
                println!(
                    "| {backend} | {nodes} | {workload} | {:.0} | {writes} | {watch} | {:.0} |",
                    o.pods_per_sec, o.rss_mb
                );
            }
        }
        if only.is_none() {
            floors.push((backend, store_floor(backend)?));
        }
    }
    println!();
    println!(
        "Floor, same run: pod-sized creates straight into the store ({CREATORS} in flight, no API, no controllers):"
    );
    for (backend, rate) in floors {
        println!("- {backend}: {rate:.0} creates/s");
    }
    Ok(())
}

/// What the store holds for the pods a watch has not reported bound, and
/// the controller's warnings: were they never bound, or was an event lost?
async fn not_bound(c: &kube::Client, seen: &HashMap<String, Instant>, log: &str) -> String {
    let list = match raw(c, "GET", "/api/v1/namespaces/default/pods", None, "").await {
        Ok(r) => r.body,
        Err(e) => return format!("the pods could not be listed: {e}"),
    };
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let missing: Vec<String> = items
        .iter()
        .filter(|o| !seen.contains_key(o["metadata"]["name"].as_str().unwrap_or_default()))
        .take(20)
        .map(|o| {
            format!(
                "{} node={} ip={} rv={}",
                o["metadata"]["name"],
                o["spec"]["nodeName"],
                o["status"]["podIP"],
                o["metadata"]["resourceVersion"]
            )
        })
        .collect();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" INFO "))
        .take(20)
        .collect();
    format!(
        "the store has {} pods; not seen bound (first 20): {missing:?}; controller warnings: {warnings:#?}",
        items.len()
    )
}
