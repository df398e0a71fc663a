//! The pod contract's costs, each beside its floor in the same run:
//!
//! 1. Pod start on one node (the sandbox, as `pod_start` measures it) of a
//!    plain busybox pod and of one with 2 configMap volumes, 1 secret
//!    volume, an emptyDir and 10 env values from a ConfigMap, interleaved
//!    with a bare `runc run --detach` of a prepared bundle. The objects come
//!    from memory here: in a cluster each is also one API read (measured in
//!    3).
//! 2. On a 1-node cluster: from a ConfigMap change (`weft apply`) to the new
//!    content inside a running pod, over 20 changes (the pod polls its file
//!    every 20 ms and prints what it sees; the shim stamps the line).
//! 3. Secret reads through the API, with Secrets encrypted at rest (the
//!    default) and without (an identity-only EncryptionConfiguration): GET
//!    latency of one 4 KiB Secret, 400 reads each, one controller after the
//!    other on the same machine.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench
//! workloads` after `cargo build --release --bin weft`).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, ensure};
use async_trait::async_trait;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Pod, Secret, Service},
};
use weft_agent::{runtime::busybox::BUSYBOX_IMAGE, sandbox::env::ObjectSource};
use weft_lab::cluster::{Cluster, ClusterSpec};
use weft_lab::topology::{Lab, LabSpec};
use weft_tests::apitest::{client, post, raw};
use weft_tests::control::{ControlOptions, ControlPlane};
use weft_tests::floor::Floor;
use weft_tests::island::Island;
use weft_tests::stats::{ms, percentile};

const PODS: u32 = 60;

/// Two ConfigMaps and a Secret, from memory.
struct Objects;

#[async_trait]
impl ObjectSource for Objects {
    async fn config_map(&self, _: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        let data = (0..10)
            .map(|i| (format!("key{i}"), format!("{name}-value-{i}")))
            .collect();
        Ok(Some(Arc::new(ConfigMap {
            data: Some(data),
            ..ConfigMap::default()
        })))
    }
    async fn secret(&self, _: &str, _: &str) -> Result<Option<Arc<Secret>>, String> {
        Ok(Some(Arc::new(Secret {
            data: Some(
                [
                    ("tls.crt".to_string(), ByteString(vec![b'c'; 2048])),
                    ("tls.key".to_string(), ByteString(vec![b'k'; 1024])),
                ]
                .into(),
            ),
            ..Secret::default()
        })))
    }
    async fn services(&self, _: &str) -> Result<Vec<Arc<Service>>, String> {
        Ok(Vec::new())
    }
}

fn pod(i: u32, volumes: bool) -> Pod {
    let mut c =
        serde_json::json!({"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "600"]});
    let mut spec = serde_json::json!({});
    if volumes {
        c["env"] = (0..10)
            .map(|k| serde_json::json!({"name": format!("V{k}"), "valueFrom": {"configMapKeyRef": {"name": "env", "key": format!("key{k}")}}}))
            .collect();
        c["volumeMounts"] = serde_json::json!([
            {"name": "a", "mountPath": "/etc/a"}, {"name": "b", "mountPath": "/etc/b"},
            {"name": "s", "mountPath": "/etc/s"}, {"name": "e", "mountPath": "/scratch"}]);
        spec["volumes"] = serde_json::json!([
            {"name": "a", "configMap": {"name": "a"}}, {"name": "b", "configMap": {"name": "b"}},
            {"name": "s", "secret": {"secretName": "s"}}, {"name": "e", "emptyDir": {}}]);
    }
    spec["containers"] = serde_json::json!([c]);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{}{i}", if volumes { "v" } else { "p" }), "namespace": "default",
                     "uid": format!("{i:08x}-{}-4000-8000-{:012x}", if volumes { "5555" } else { "4444" }, std::process::id())},
        "spec": spec,
    }))
    .expect("pod")
}

fn row(name: &str, s: &[Duration]) {
    println!(
        "| {name} | {} | {} |",
        ms(percentile(s, 50.0)),
        ms(percentile(s, 99.0))
    );
}

async fn pod_start() -> Result<()> {
    let lab = Lab::up(LabSpec::new(1)).await?;
    let node = lab.node("n1").clone();
    let state = lab.node_state_dir(&node);
    let sb = lab.sandbox(&node)?.with_objects(Arc::new(Objects));
    lab.load_busybox(&sb)?;
    let tpl = sb.create_pod(&pod(999, false), sb.free_ip()?).await?;
    let bundles = Floor::prepare(&sb, &node, &state, &tpl, PODS as usize, None)?;
    let (mut floor, mut plain, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PODS {
        floor.push(bundles.start(i as usize)?);
        let t = Instant::now();
        sb.create_pod(&pod(i, false), sb.free_ip()?).await?;
        plain.push(t.elapsed());
        let t = Instant::now();
        let rec = sb.create_pod(&pod(i, true), sb.free_ip()?).await?;
        with.push(t.elapsed());
        if i == 0 {
            // The pod got what it asked for.
            let (code, out) = sb.runtime().exec_capture(
                &rec.containers[0].1,
                &[
                    "sh".into(),
                    "-c".into(),
                    "echo $V3; cat /etc/a/key1; echo; wc -c < /etc/s/tls.key".into(),
                ],
                Duration::from_secs(10),
            )?;
            ensure!(
                code == 0
                    && out.split_whitespace().collect::<Vec<_>>()
                        == ["env-value-3", "a-value-1", "1024"],
                "{out}"
            );
        }
    }
    bundles.remove();
    sb.remove_all(Duration::ZERO).await?;

    println!("## Pod start, {PODS} of each on one node, interleaved (ms)\n");
    println!("| | p50 | p99 |");
    println!("|---|---|---|");
    row("floor: runc run --detach of a prepared bundle", &floor);
    row("plain pod (create_pod)", &plain);
    row(
        "pod with 2 configMap + 1 secret + 1 emptyDir volumes, 10 env from a ConfigMap",
        &with,
    );
    let f = percentile(&floor, 50.0).as_secs_f64();
    println!(
        "\nplain / floor (p50) = {:.2}; with volumes / floor (p50) = {:.2}; with volumes / plain (p50) = {:.2}\n",
        percentile(&plain, 50.0).as_secs_f64() / f,
        percentile(&with, 50.0).as_secs_f64() / f,
        percentile(&with, 50.0).as_secs_f64() / percentile(&plain, 50.0).as_secs_f64()
    );
    Ok(())
}

fn config_updates() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let c = rt.block_on(Cluster::up(ClusterSpec::new(1), |_| {}))?;
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: live}\ndata: {v: start}\n")?;
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: reader}}
spec:
  volumes: [{{name: c, configMap: {{name: live}}}}]
  containers:
  - name: main
    image: {BUSYBOX_IMAGE}
    volumeMounts: [{{name: c, mountPath: /c}}]
    command: [sh, -c, "last=; while true; do v=$(cat /c/v); if [ \"$v\" != \"$last\" ]; then echo \"seen $v\"; last=$v; fi; usleep 20000; done"]
"#
    ))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c
        .weft(&["logs", "reader"])
        .unwrap_or_default()
        .contains("seen start")
    {
        ensure!(Instant::now() < deadline, "the reader never started");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut lat = Vec::new();
    for i in 0..20 {
        let sent = SystemTime::now();
        c.apply(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: live}}\ndata: {{v: change{i}}}\n"
        ))?;
        let want = format!("seen change{i}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let stamp = loop {
            let log = c.weft(&["logs", "reader", "--timestamps"])?;
            if let Some(line) = log.lines().find(|l| l.ends_with(&want)) {
                break line
                    .split_whitespace()
                    .next()
                    .context("a timestamp")?
                    .to_string();
            }
            ensure!(Instant::now() < deadline, "change {i} never arrived");
            std::thread::sleep(Duration::from_millis(50));
        };
        let at: k8s_openapi::jiff::Timestamp = stamp.parse()?;
        let sent_ns = sent.duration_since(SystemTime::UNIX_EPOCH)?.as_nanos();
        let seen_ns = u128::try_from(at.as_nanosecond()).unwrap_or(0);
        lat.push(Duration::from_nanos(
            u64::try_from(seen_ns.saturating_sub(sent_ns)).unwrap_or(0),
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("## ConfigMap change to new content inside a running pod, 20 changes (ms)\n");
    println!("| | p50 | max |");
    println!("|---|---|---|");
    println!(
        "| `weft apply` of the ConfigMap to the pod's read of it (20 ms polling in the pod) | {} | {} |\n",
        ms(percentile(&lat, 50.0)),
        ms(*lat.iter().max().expect("20 samples"))
    );
    Ok(())
}

fn secret_reads() -> Result<()> {
    let island = Island::new("bsecret")?;
    let plain_cfg = tempfile::NamedTempFile::new()?;
    std::fs::write(
        plain_cfg.path(),
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - identity: {}\n",
    )?;
    let encrypted = ControlPlane::start(&island, ControlOptions::default())?;
    let (mut enc, mut clear) = (Vec::new(), Vec::new());
    island.block_on(async {
        let c = client(&encrypted, None).await?;
        let body = serde_json::json!({"metadata": {"name": "s"}, "stringData": {"tls.key": "k".repeat(4096)}});
        ensure!(post(&c, "/api/v1/namespaces/default/secrets", &body).await?.code == 201);
        for _ in 0..400 {
            let t = Instant::now();
            let r = raw(&c, "GET", "/api/v1/namespaces/default/secrets/s", None, "").await?;
            enc.push(t.elapsed());
            ensure!(r.code == 200);
        }
        anyhow::Ok(())
    })??;
    drop(encrypted);
    let island2 = Island::new("bsecret2")?;
    let identity = ControlPlane::start(
        &island2,
        ControlOptions {
            args: vec![
                "--encryption-provider-config".into(),
                plain_cfg.path().display().to_string(),
            ],
            ..ControlOptions::default()
        },
    )?;
    island2.block_on(async {
        let c = client(&identity, None).await?;
        let body = serde_json::json!({"metadata": {"name": "s"}, "stringData": {"tls.key": "k".repeat(4096)}});
        ensure!(post(&c, "/api/v1/namespaces/default/secrets", &body).await?.code == 201);
        for _ in 0..400 {
            let t = Instant::now();
            let r = raw(&c, "GET", "/api/v1/namespaces/default/secrets/s", None, "").await?;
            clear.push(t.elapsed());
            ensure!(r.code == 200);
        }
        anyhow::Ok(())
    })??;
    println!("## Secret GET through the API, 4 KiB Secret, 400 reads each (ms)\n");
    println!("| | p50 | p99 |");
    println!("|---|---|---|");
    row("encrypted at rest (AES-256-GCM, the default)", &enc);
    row("stored in clear (identity provider)", &clear);
    Ok(())
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(pod_start())?;
    drop(rt);
    config_updates()?;
    secret_reads()?;
    Ok(())
}
