//! The control plane under load and abuse (issue 16), on SQLite (durable)
//! and on a single-member etcd, in one run:
//! - watch memory: the controller's RSS when idle, at its peak while 2 000
//!   watchers of /api/v1/pods get a 1 MiB pod patched five times, and how
//!   long after they close it takes to come back within 200 MB of idle;
//! - bulk deletion: a namespace of 10 000 pods bound to 40 simulated nodes
//!   (each renewing its Lease every 2 s with its own token, as agents do)
//!   deleted; seconds until it is gone and the slowest Lease renewal;
//! - a waiting scheduler: pods/s to bound for 10 000 pods on 200 nodes, then
//!   (same controller) for 10 000 more with 10 000 unschedulable pods
//!   pending, each tried and reported first.
//!
//! Run: `cargo build --release --bin weft && cargo bench -p weft-tests --bench control_load`
//! (scripts/bench.sh does both). Needs root (network namespaces).
//! `WEFT_BENCH_ONLY=sqlite:watch` (or `:delete`, `:pending`) runs one case.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt as _;
use serde_json::json;
use weft_tests::apitest::{self, client, open_watch, post, raw, read_lines, rss};
use weft_tests::control::{Backend, ControlOptions, ControlPlane};
use weft_tests::island::{Etcd, Island};

const MIB: f64 = 1024.0 * 1024.0;

/// Runs `work` on a two-thread runtime inside the island: on its worker
/// threads (`block_on` would run it on this thread, outside the island).
fn on_island<T, F>(island: &Island, work: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let rt = island.runtime(2)?;
    rt.block_on(rt.spawn(work))?
}

/// A controller on `backend` ("sqlite" or "etcd") in a fresh island.
fn control_plane(backend: &str, args: &[&str]) -> Result<(Island, Option<Etcd>, ControlPlane)> {
    let island = Island::new("load")?;
    let etcd = if backend == "etcd" {
        Some(Etcd::start(&island)?)
    } else {
        None
    };
    let backend = match &etcd {
        Some(e) => Backend::Etcd(e.endpoint.clone()),
        None => Backend::Sqlite,
    };
    let args = args.iter().map(|a| (*a).to_string()).collect();
    let cp = ControlPlane::start(&island, ControlOptions { backend, args })?;
    Ok((island, etcd, cp))
}

/// RSS (MiB): idle, peak, and seconds after the watchers close until it is
/// within 200 MB of idle (None: not within 60 s), and the RSS then.
fn watch_memory(backend: &str) -> Result<(f64, f64, Option<f64>, f64)> {
    const WATCHERS: usize = 2_000;
    let (island, _etcd, cp) = control_plane(backend, &[])?;
    let backend = backend.to_string();
    let pid = cp.pid().context("pid")?;
    let cp = Arc::new(cp);
    on_island(&island, async move {
        let c = client(&cp, None).await?;
        let pod = apitest::pod("big", json!({}), json!({}));
        ensure!(
            post(&c, "/api/v1/namespaces/default/pods", &pod)
                .await?
                .code
                == 201
        );
        apitest::big_status(&c, "big", 'x', 1 << 20).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (idle, _) = rss(pid)?;
        let rv = raw(&c, "GET", "/api/v1/namespaces/default/pods/big", None, "")
            .await?
            .body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/pods?watch=1&resourceVersion={rv}");
        // Clients of their own, so that the watches spread over connections.
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(client(&cp, None).await?);
        }
        let watches: Vec<_> = futures::stream::iter(0..WATCHERS)
            .map(|i| open_watch(&clients[i % clients.len()], &path))
            .buffer_unordered(64)
            .collect()
            .await;
        let watches = watches.into_iter().collect::<Result<Vec<_>>>()?;
        let readers: Vec<_> = watches
            .into_iter()
            .map(|w| tokio::spawn(read_lines(w, 5)))
            .collect();
        for fill in ['a', 'b', 'c', 'd', 'e'] {
            apitest::big_status(&c, "big", fill, 1 << 20).await?;
        }
        for r in readers {
            let got = tokio::time::timeout(Duration::from_secs(300), r).await???;
            ensure!(got >= 5 << 20, "a watcher got {got} bytes");
        }
        let (_, peak) = rss(pid)?;
        drop(clients);
        let closed = Instant::now();
        let mut back = None;
        let mut now = peak;
        while closed.elapsed() < Duration::from_secs(60) {
            now = rss(pid)?.0;
            if now < idle + 200_000_000 {
                back = Some(closed.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // What the allocator says then.
        let metrics = raw(&c, "GET", "/metrics", None, "").await?.text;
        let heap: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("weft_controller_heap_"))
            .collect();
        println!(
            "  {backend}, heap after the watchers closed: {}",
            heap.join(", ")
        );
        Ok((idle as f64 / MIB, peak as f64 / MIB, back, now as f64 / MIB))
    })
}

/// Seconds until a namespace of 10 000 bound pods is gone, and the slowest
/// Lease renewal meanwhile (ms).
fn bulk_delete(backend: &str) -> Result<(f64, f64)> {
    const PODS: usize = 10_000;
    const NODES: usize = 40;
    let (island, _etcd, cp) = control_plane(backend, &["--node-grace", "10s"])?;
    let cp = Arc::new(cp);
    on_island(&island, async move {
        let c = client(&cp, None).await?;
        let names: Vec<String> = (0..NODES).map(|i| format!("n{i}")).collect();
        let mut nodes = Vec::new();
        for n in &names {
            let r = post(
                &c,
                "/api/v1/nodes",
                &apitest::node_object(n, "1000", "4000Gi", json!({})),
            )
            .await?;
            ensure!(r.code == 201, "{}", r.text);
            let nc = client(&cp, Some(&cp.node_token(n)?)).await?;
            apitest::renew_lease(&nc, n).await?;
            nodes.push((n.clone(), nc));
        }
        let worst = Arc::new(Mutex::new(Duration::ZERO));
        let renewers: Vec<_> = nodes
            .into_iter()
            .map(|(n, nc)| {
                let worst = worst.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        let t = Instant::now();
                        let _ = apitest::renew_lease(&nc, &n).await;
                        let took = t.elapsed();
                        let mut w = worst.lock().unwrap();
                        *w = (*w).max(took);
                    }
                })
            })
            .collect();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bulk"}});
        ensure!(post(&c, "/api/v1/namespaces", &ns).await?.code == 201);
        let created: Vec<Result<u16>> = futures::stream::iter(0..PODS)
            .map(|i| {
                let (c, node) = (c.clone(), names[i % NODES].clone());
                async move {
                    let p = apitest::pod(&format!("p{i}"), json!({}), json!({"nodeName": node}));
                    Ok(post(&c, "/api/v1/namespaces/bulk/pods", &p).await?.code)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        ensure!(
            created.iter().all(|r| matches!(r, Ok(201))),
            "creates failed"
        );
        // The agents' part: pods marked for deletion are deleted for good.
        let finisher = tokio::spawn({
            let c = c.clone();
            async move {
                let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                    kube::Api::namespaced(c, "bulk");
                let stream = kube::runtime::watcher(pods.clone(), Default::default());
                futures::pin_mut!(stream);
                let mut deleting = futures::stream::FuturesUnordered::new();
                loop {
                    tokio::select! {
                        ev = stream.next() => {
                            // Marked before the watcher's list (InitApply) or after.
                                let Some(Ok(kube::runtime::watcher::Event::Apply(p) | kube::runtime::watcher::Event::InitApply(p))) = ev else { continue };
                            if p.metadata.deletion_timestamp.is_some() {
                                let (pods, name) = (pods.clone(), p.metadata.name.clone().unwrap_or_default());
                                deleting.push(async move {
                                    let _ = pods.delete(&name, &kube::api::DeleteParams::default().grace_period(0)).await;
                                });
                            }
                        }
                        Some(()) = deleting.next(), if !deleting.is_empty() => {}
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        *worst.lock().unwrap() = Duration::ZERO;
        let start = Instant::now();
        ensure!(
            raw(&c, "DELETE", "/api/v1/namespaces/bulk", None, "")
                .await?
                .code
                == 200
        );
        loop {
            if raw(&c, "GET", "/api/v1/namespaces/bulk", None, "")
                .await?
                .code
                == 404
            {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(900),
                "not gone in 15 minutes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = start.elapsed().as_secs_f64();
        let worst = worst.lock().unwrap().as_secs_f64() * 1000.0;
        finisher.abort();
        for r in renewers {
            r.abort();
        }
        Ok((took, worst))
    })
}

/// Creates 10 000 pods in namespace `ns` and waits until all are bound:
/// pods/s.
async fn bind_rate(c: &kube::Client, ns: &str) -> Result<f64> {
    const PODS: usize = 10_000;
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    ensure!(post(c, "/api/v1/namespaces", &body).await?.code == 201);
    let start = Instant::now();
    let created: Vec<Result<u16>> = futures::stream::iter(0..PODS)
        .map(|i| {
            let c = c.clone();
            async move {
                let p = apitest::pod(&format!("p{i}"), json!({}), json!({}));
                Ok(post(&c, &format!("/api/v1/namespaces/{ns}/pods"), &p)
                    .await?
                    .code)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    ensure!(
        created.iter().all(|r| matches!(r, Ok(201))),
        "creates failed"
    );
    let unbound = format!("/api/v1/namespaces/{ns}/pods?fieldSelector=spec.nodeName%3D");
    loop {
        let r = raw(c, "GET", &unbound, None, "").await?;
        if apitest::items(&r.body).is_empty() {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(600),
            "not all bound in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(PODS as f64 / start.elapsed().as_secs_f64())
}

/// Pods/s to bound for 10 000 pods on 200 nodes, first with nothing
/// pending, then (same controller, 10 000 more pods in the store) with
/// 10 000 unschedulable pods pending.
fn create_rates(backend: &str) -> Result<(f64, f64)> {
    const NODES: usize = 200;
    const PENDING: usize = 10_000;
    let (island, _etcd, cp) = control_plane(backend, &["--node-grace", "30s"])?;
    let cp = Arc::new(cp);
    on_island(&island, async move {
        let c = client(&cp, None).await?;
        for i in 0..NODES {
            let n = format!("n{i}");
            ensure!(
                post(
                    &c,
                    "/api/v1/nodes",
                    &apitest::node_object(&n, "16", "64Gi", json!({}))
                )
                .await?
                .code
                    == 201
            );
            apitest::renew_lease(&c, &n).await?;
        }
        let renewer = tokio::spawn({
            let c = c.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    for i in 0..NODES {
                        let _ = apitest::renew_lease(&c, &format!("n{i}")).await;
                    }
                }
            }
        });
        let without = bind_rate(&c, "first").await?;
        let created: Vec<Result<u16>> = futures::stream::iter(0..PENDING)
            .map(|i| {
                let c = c.clone();
                async move {
                    let mut p = apitest::pod(&format!("waiting{i}"), json!({}), json!({}));
                    p["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": "64"}});
                    Ok(post(&c, "/api/v1/namespaces/default/pods", &p).await?.code)
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        ensure!(
            created.iter().all(|r| matches!(r, Ok(201))),
            "pending creates failed"
        );
        // Until the scheduler has tried each and said why it waits.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let r = raw(&c, "GET", "/api/v1/namespaces/default/pods", None, "").await?;
            let said = apitest::items(&r.body)
                .iter()
                .filter(|p| {
                    p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                    })
                })
                .count();
            if said >= PENDING {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "only {said} of {PENDING} pods reported unschedulable in 5 minutes"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let with = bind_rate(&c, "second").await?;
        renewer.abort();
        Ok((without, with))
    })
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
    let only = std::env::var("WEFT_BENCH_ONLY").ok();
    let run = |case: &str| only.as_ref().is_none_or(|o| o == case);
    for backend in ["sqlite", "etcd"] {
        if run(&format!("{backend}:watch")) {
            let (idle, peak, back, end) = watch_memory(backend)?;
            let back = match back {
                Some(s) => format!("{s:.1} s"),
                None => format!("not within 60 s ({end:.0} MiB)"),
            };
            println!(
                "{backend}: 2 000 watchers, 1 MiB pod patched 5 times: RSS idle {idle:.0} MiB, peak {peak:.0} MiB, within 200 MB of idle {back} after they closed"
            );
        }
        if run(&format!("{backend}:delete")) {
            let (took, worst) = bulk_delete(backend)?;
            println!(
                "{backend}: namespace of 10 000 pods on 40 nodes gone in {took:.1} s; slowest Lease renewal {worst:.0} ms"
            );
        }
        if run(&format!("{backend}:pending")) {
            // Each batch takes seconds: three controllers, and the medians.
            let mut rates = Vec::new();
            for _ in 0..3 {
                rates.push(create_rates(backend)?);
            }
            let median = |mut v: Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let without = median(rates.iter().map(|r| r.0).collect());
            let with = median(rates.iter().map(|r| r.1).collect());
            let each: Vec<String> = rates
                .iter()
                .map(|(a, b)| format!("{a:.0}/{b:.0}"))
                .collect();
            println!(
                "{backend}: 10 000 pods bound at {without:.0} pods/s; the next 10 000 with 10 000 unschedulable pending {with:.0} pods/s ({:+.0}%); medians of three controllers, each without/with: {}",
                (with / without - 1.0) * 100.0,
                each.join(", ")
            );
        }
    }
    Ok(())
}
