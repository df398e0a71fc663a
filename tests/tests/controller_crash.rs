//! kill -9 the controller in the middle of a burst of creates, start it
//! again on the same data, and check that every acknowledged object is there
//! and that no address was handed out twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use weft_tests::apitest::{self, client, items, post, raw};
use weft_tests::control::{Backend, ControlOptions, ControlPlane};
use weft_tests::island::{Etcd, Island};

/// What the burst saw acknowledged: object path → the address it was given.
type Acked = Arc<Mutex<HashMap<String, String>>>;

async fn burst(c: kube::Client, worker: usize, acked: Acked) {
    // At most 100 pods per worker: 800 over 8 nodes fit their /24 blocks.
    for i in 0..200 {
        let (path, obj, ip_of): (String, Value, fn(&Value) -> String) = if i % 2 == 0 {
            let name = format!("s{worker}-{i}");
            (
                format!("/api/v1/namespaces/default/services/{name}"),
                json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}}),
                |o| {
                    o["spec"]["clusterIP"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                },
            )
        } else {
            let name = format!("p{worker}-{i}");
            (
                format!("/api/v1/namespaces/default/pods/{name}"),
                apitest::pod(
                    &name,
                    json!({}),
                    json!({"nodeName": format!("n{}", (i / 2) % 8)}),
                ),
                |o| {
                    o["status"]["podIP"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                },
            )
        };
        let collection = path
            .rsplit_once('/')
            .map(|(c, _)| c.to_string())
            .unwrap_or_default();
        match post(&c, &collection, &obj).await {
            Ok(r) if r.code == 201 => {
                acked.lock().unwrap().insert(path, ip_of(&r.body));
            }
            // The controller died: the burst is over.
            _ => return,
        }
    }
}

fn crash_and_check(backend_for: impl Fn(&Island) -> Result<(Backend, Option<Etcd>)>) -> Result<()> {
    let island = Island::new("crash")?;
    let (backend, _etcd) = backend_for(&island)?;
    let mut cp = ControlPlane::start(
        &island,
        ControlOptions {
            backend,
            args: vec!["--node-grace".into(), "1h".into()],
        },
    )?;
    let acked: Acked = Arc::default();
    let pid = cp.pid().expect("running");
    island.block_on({
        let acked = acked.clone();
        let cp = &cp;
        async move {
            let c = client(cp, None).await?;
            for n in 0..8 {
                ensure!(
                    post(
                        &c,
                        "/api/v1/nodes",
                        &apitest::node_object(&format!("n{n}"), "64", "64Gi", json!({}))
                    )
                    .await?
                    .code
                        == 201
                );
            }
            let workers: Vec<_> = (0..8)
                .map(|w| tokio::spawn(burst(c.clone(), w, acked.clone())))
                .collect();
            // Let the burst run, then kill the controller under it.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while acked.lock().unwrap().len() < 300 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            for w in workers {
                let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
            }
            anyhow::Ok(())
        }
    })??;
    let acked = acked.lock().unwrap().clone();
    ensure!(
        acked.len() >= 300 && acked.len() < 1600,
        "the burst was acknowledged only {} times before the kill",
        acked.len()
    );
    cp.restart()?;
    island.block_on(async {
        let c = client(&cp, None).await?;
        // Every acknowledged object is there, with the address it was given.
        for (path, ip) in &acked {
            let r = raw(&c, "GET", path, None, "").await?;
            ensure!(r.code == 200, "{path} was acknowledged but is gone after the crash: {}", r.code);
            let now = r.body["spec"]["clusterIP"].as_str().or(r.body["status"]["podIP"].as_str()).unwrap_or_default();
            ensure!(now == ip, "{path} had {ip}, now {now}");
        }
        // After the restart, new objects never get an address already in use.
        for i in 0..40 {
            let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("after{i}")}, "spec": {"ports": [{"port": 80}]}});
            ensure!(post(&c, "/api/v1/namespaces/default/services", &svc).await?.code == 201);
            let p = apitest::pod(&format!("after{i}"), json!({}), json!({"nodeName": format!("n{}", i % 8)}));
            ensure!(post(&c, "/api/v1/namespaces/default/pods", &p).await?.code == 201);
        }
        let mut seen = HashSet::new();
        let services = items(&raw(&c, "GET", "/api/v1/services", None, "").await?.body);
        let pods = items(&raw(&c, "GET", "/api/v1/pods", None, "").await?.body);
        for s in &services {
            let ip = s["spec"]["clusterIP"].as_str().unwrap_or_default().to_string();
            ensure!(seen.insert(ip.clone()), "ClusterIP {ip} given twice");
        }
        for p in &pods {
            let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
            ensure!(!ip.is_empty() && seen.insert(ip.clone()), "pod IP {ip:?} given twice or missing");
        }
        ensure!(services.len() + pods.len() >= acked.len() + 80);
        anyhow::Ok(())
    })??;
    Ok(())
}

#[test]
fn kill9_mid_burst_loses_nothing_on_sqlite() -> Result<()> {
    crash_and_check(|_| Ok((Backend::Sqlite, None)))
}

#[test]
fn kill9_mid_burst_loses_nothing_on_etcd() -> Result<()> {
    crash_and_check(|island| {
        let etcd = Etcd::start(island)?;
        Ok((Backend::Etcd(etcd.endpoint.clone()), Some(etcd)))
    })
}
