//! Teams and their tools (issue 20), in one run against one controller:
//! - RBAC's cost: p50/p99 of GET of one pod and LIST of 100 pods by a user
//!   whose access RBAC grants (with 100 Roles and 1 000 RoleBindings
//!   present) against the same requests with the admin token, interleaved
//!   round by round (target: at most 5% and 0.1 ms slower);
//! - protobuf against JSON: bytes and time of a LIST of 10 000 pods in each
//!   encoding.
//!
//! Run: `cargo build --release --bin weft && cargo bench -p weft-tests --bench access`
//! (scripts/bench.sh does both). Needs root (network namespaces).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;
use weft_tests::apitest::{self, client, post, raw_accepting};
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
    let (rbac, proto) = on_island(&island, {
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
            Ok((rbac, (jt, pt, jb, pb)))
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
