//! Teams and their tools (issue 20), in one run against one controller:
//! - RBAC's cost: p50/p99 of GET of one pod and LIST of 100 pods by a user
//!   whose access RBAC grants (with 100 Roles and 1 000 RoleBindings
//!   present) against the same requests with the admin token, interleaved
//!   round by round (target: at most 5% and 0.1 ms slower);
//! - protobuf against JSON: bytes and time of a LIST of 10 000 pods in each
//!   encoding;
//! - server-side apply of a 50-container Deployment against client-side
//!   apply of the same (kubectl's way: GET, a three-way strategic merge
//!   patch, the last-applied annotation), made then re-applied with one
//!   image changed each round: latency and bytes sent per apply.
//!
//! Run: `cargo build --release --bin weft && cargo bench -p weft-tests --bench access`
//! (scripts/bench.sh does both). Needs root (network namespaces).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;
use weft_tests::apitest::{self, client, post, raw, raw_accepting};
use weft_tests::control::{ControlOptions, ControlPlane};
use weft_tests::island::Island;
use weft_tests::stats::{ms, percentile};

const READER_TOKEN: &str = "benchreader0123456789abcdef0123456789";

fn on_island<T, F>(island: &Island, work: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let rt = island.runtime(2)?;
    rt.block_on(rt.spawn(work))?
}

async fn timed(c: &kube::Client, path: &str, accept: &str) -> Result<(Duration, usize)> {
    let t = Instant::now();
    let r = raw_accepting(c, "GET", path, None, "", Some(accept)).await?;
    let took = t.elapsed();
    ensure!(
        r.code == 200,
        "{path}: {} {}",
        r.code,
        &r.text[..r.text.len().min(300)]
    );
    Ok((took, r.bytes.len()))
}

/// A Deployment of 50 containers, the `round`-th image in the first.
fn fifty(name: &str, round: usize) -> serde_json::Value {
    let containers: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            let image = if i == 0 {
                format!("weft.local/busybox:r{round}")
            } else {
                "weft.local/busybox:1.36".into()
            };
            json!({"name": format!("c{i}"), "image": image, "command": ["sleep", "3600"],
                "env": [{"name": "INDEX", "value": i.to_string()}, {"name": "ROLE", "value": "worker"}],
                "ports": [{"containerPort": 8000 + i, "name": format!("p{i}")}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}})
        })
        .collect();
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "bench", "labels": {"app": name}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}})
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// One client-side apply as kubectl makes it: GET; POST with the
/// last-applied annotation when missing, else a three-way strategic merge
/// patch. Returns the time and the bytes sent.
async fn client_side(c: &kube::Client, desired: &serde_json::Value) -> Result<(Duration, usize)> {
    let path = "/apis/apps/v1/namespaces/bench/deployments/csa";
    let t = Instant::now();
    let mut with = desired.clone();
    with["metadata"]["annotations"][LAST_APPLIED] = json!(desired.to_string());
    let live = raw(c, "GET", path, None, "").await?;
    let (code, sent) = if live.code == 404 {
        let body = serde_json::to_vec(&with)?;
        let n = body.len();
        let r = raw(
            c,
            "POST",
            "/apis/apps/v1/namespaces/bench/deployments?fieldManager=kubectl-client-side-apply",
            Some(body),
            "application/json",
        )
        .await?;
        (r.code, n)
    } else {
        let last: serde_json::Value = serde_json::from_str(
            live.body["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .unwrap_or("{}"),
        )?;
        let patch = weft_api::strategic::three_way(&last, &with);
        let body = serde_json::to_vec(&patch)?;
        let n = body.len();
        let r = raw(
            c,
            "PATCH",
            &format!("{path}?fieldManager=kubectl-client-side-apply"),
            Some(body),
            "application/strategic-merge-patch+json",
        )
        .await?;
        (r.code, n)
    };
    ensure!(code == 200 || code == 201, "client-side apply: {code}");
    Ok((t.elapsed(), sent))
}

/// One server-side apply: the whole configuration, one PATCH.
async fn server_side(c: &kube::Client, desired: &serde_json::Value) -> Result<(Duration, usize)> {
    let body = serde_json::to_vec(desired)?;
    let n = body.len();
    let t = Instant::now();
    let r = raw(
        c,
        "PATCH",
        "/apis/apps/v1/namespaces/bench/deployments/ssa?fieldManager=kubectl&force=true",
        Some(body),
        "application/apply-patch+yaml",
    )
    .await?;
    ensure!(
        r.code == 200 || r.code == 201,
        "server-side apply: {} {}",
        r.code,
        r.text
    );
    Ok((t.elapsed(), n))
}

fn main() -> Result<()> {
    let island = Island::new("access-bench")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    // The reader: a token user the admin binds `view` to in `bench`.
    let tokens = cp.data_dir().join("tokens.csv");
    let mut file = std::fs::read_to_string(&tokens)?;
    file.push_str(&format!("{READER_TOKEN},reader,reader,\"readers\"\n"));
    std::fs::write(&tokens, file)?;
    let admin = cp.admin_token()?;
    let kc = cp.kubeconfig().to_path_buf();
    let _ = kc;
    let (rbac, proto, applies) = on_island(&island, {
        let cp_admin = admin.clone();
        let cp_ref = std::sync::Arc::new(cp);
        async move {
            let c = client(&cp_ref, Some(&cp_admin)).await?;
            let reader = client(&cp_ref, Some(READER_TOKEN)).await?;
            let r = post(
                &c,
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
            )
            .await?;
            ensure!(r.code == 201, "{}", r.text);
            // 100 Roles and 1 000 RoleBindings for others, then the reader's.
            for i in 0..100 {
                let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": format!("role-{i}")},
                    "rules": [{"apiGroups": ["", "apps"], "resources": [format!("things-{i}"), "configmaps"], "verbs": ["get", "list"]},
                              {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"], "resourceNames": [format!("job-{i}")]}]});
                let r = post(
                    &c,
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/roles",
                    &role,
                )
                .await?;
                ensure!(r.code == 201, "{}", r.text);
            }
            for i in 0..1000 {
                let b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": format!("binding-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("role-{}", i % 100)},
                    "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": format!("user-{i}")},
                                 {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": format!("group-{}", i % 37)}]});
                let r = post(
                    &c,
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings",
                    &b,
                )
                .await?;
                ensure!(r.code == 201, "{}", r.text);
            }
            let b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "readers"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "readers"}]});
            let r = post(
                &c,
                "/apis/rbac.authorization.k8s.io/v1/namespaces/bench/rolebindings",
                &b,
            )
            .await?;
            ensure!(r.code == 201, "{}", r.text);
            for i in 0..100 {
                let r = post(
                    &c,
                    "/api/v1/namespaces/bench/pods",
                    &apitest::pod(&format!("p{i}"), json!({"app": "bench"}), json!({})),
                )
                .await?;
                ensure!(r.code == 201, "{}", r.text);
            }
            // Warm up both, then interleave: admin, reader, admin, ...
            let get = "/api/v1/namespaces/bench/pods/p0";
            let list = "/api/v1/namespaces/bench/pods";
            for _ in 0..50 {
                timed(&c, get, "application/json").await?;
                timed(&reader, get, "application/json").await?;
            }
            let (mut ga, mut gr, mut la, mut lr) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..3000 {
                ga.push(timed(&c, get, "application/json").await?.0);
                gr.push(timed(&reader, get, "application/json").await?.0);
                if round % 10 == 0 {
                    la.push(timed(&c, list, "application/json").await?.0);
                    lr.push(timed(&reader, list, "application/json").await?.0);
                }
            }
            let rbac = (ga, gr, la, lr);

            // 10 000 pods, listed in JSON and in protobuf.
            for i in 0..10_000 {
                let r = post(
                    &c,
                    "/api/v1/namespaces/default/pods",
                    &apitest::pod(
                        &format!("big-{i}"),
                        json!({"app": "big", "n": i.to_string()}),
                        json!({}),
                    ),
                )
                .await?;
                ensure!(r.code == 201, "{}", r.text);
            }
            let big = "/api/v1/namespaces/default/pods";
            let (mut jt, mut pt, mut jb, mut pb) = (Vec::new(), Vec::new(), 0, 0);
            timed(&c, big, "application/json").await?;
            timed(&c, big, "application/vnd.kubernetes.protobuf").await?;
            for _ in 0..7 {
                let (t, b) = timed(&c, big, "application/json").await?;
                jt.push(t);
                jb = b;
                let (t, b) = timed(&c, big, "application/vnd.kubernetes.protobuf").await?;
                pt.push(t);
                pb = b;
            }
            // Applies of a 50-container Deployment, interleaved: created
            // by the first, then one image changed per round.
            let (mut ct, mut cb, mut st, mut sb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..201 {
                let (t, b) = client_side(&c, &fifty("csa", round)).await?;
                let (t2, b2) = server_side(&c, &fifty("ssa", round)).await?;
                if round == 0 {
                    println!(
                        "apply on create: client-side {} ({b} bytes), server-side {} ({b2} bytes)",
                        ms(t),
                        ms(t2)
                    );
                    continue;
                }
                ct.push(t);
                cb.push(b);
                st.push(t2);
                sb.push(b2);
            }
            Ok((rbac, (jt, pt, jb, pb), (ct, cb, st, sb)))
        }
    })?;
    let (ga, gr, la, lr) = rbac;
    println!(
        "RBAC (100 Roles, 1 000 RoleBindings; {} GETs and {} LISTs of 100 pods each way)",
        ga.len(),
        la.len()
    );
    for (what, admin, user) in [("GET pod", &ga, &gr), ("LIST 100 pods", &la, &lr)] {
        let (a50, a99) = (percentile(admin, 50.0), percentile(admin, 99.0));
        let (u50, u99) = (percentile(user, 50.0), percentile(user, 99.0));
        let slower = |u: Duration, a: Duration| (u.as_secs_f64() / a.as_secs_f64() - 1.0) * 100.0;
        println!(
            "  {what:<14} admin p50 {} p99 {} | RBAC user p50 {} p99 {} | p50 {:+.1}% ({:+.3} ms), p99 {:+.1}%",
            ms(a50),
            ms(a99),
            ms(u50),
            ms(u99),
            slower(u50, a50),
            (u50.as_secs_f64() - a50.as_secs_f64()) * 1000.0,
            slower(u99, a99),
        );
    }
    let (ct, cb, st, sb) = applies;
    let mean = |v: &[usize]| v.iter().sum::<usize>() / v.len().max(1);
    println!(
        "Apply of a 50-container Deployment, one image changed ({} rounds): client-side p50 {} p99 {}, {} bytes sent; server-side p50 {} p99 {}, {} bytes sent",
        ct.len(),
        ms(percentile(&ct, 50.0)),
        ms(percentile(&ct, 99.0)),
        mean(&cb),
        ms(percentile(&st, 50.0)),
        ms(percentile(&st, 99.0)),
        mean(&sb),
    );
    let (jt, pt, jb, pb) = proto;
    println!(
        "LIST of 10 000 pods: JSON {} bytes, median {}; protobuf {} bytes ({:.0}% of JSON), median {}",
        jb,
        ms(percentile(&jt, 50.0)),
        pb,
        pb as f64 / jb as f64 * 100.0,
        ms(percentile(&pt, 50.0)),
    );
    Ok(())
}
