//! Server-side apply with kubectl 1.27, 1.30 and 1.33, unmodified: apply on
//! create, field ownership in managedFields, a conflict with another
//! manager (and `--force-conflicts`), fields an applier stops setting
//! removed, `--dry-run=server`, the upgrade from client-side apply that
//! kubectl performs, and `kubectl diff`; then the same through kube-rs'
//! `Patch::Apply`.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::control::{ControlOptions, ControlPlane, kubectl_path};
use weft_tests::island::Island;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn deployment(replicas: u32, image: &str, extra_label: bool) -> String {
    let label = if extra_label { ", tier: front" } else { "" };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ssa
  labels: {{app: web{label}}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: main
        image: {image}
        command: ["sleep", "3600"]
"#
    )
}

/// The managers of `obj` and the fields each holds (fieldsV1 as text).
fn managers(obj: &Value) -> Vec<(String, String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or_default().to_string(),
                e["operation"].as_str().unwrap_or_default().to_string(),
                e["fieldsV1"].to_string(),
            )
        })
        .collect()
}

fn session(minor: u32) -> Result<()> {
    let path = kubectl_path(Some(minor));
    ensure!(
        path.exists(),
        "{} is missing on this machine",
        path.display()
    );
    let island = Island::new("ssa")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let run = |args: &[&str]| cp.kubectl(Some(minor), args);
    let k = |args: &[&str]| -> Result<String> {
        let out = run(args)?;
        let t = text(&out);
        ensure!(out.status.success(), "kubectl {}: {t}", args.join(" "));
        Ok(t)
    };
    let get = |what: &[&str]| -> Result<Value> {
        let mut args = vec!["get", "-n", "ssa", "-o", "json", "--show-managed-fields"];
        args.extend_from_slice(what);
        Ok(serde_json::from_str(&k(&args)?)?)
    };
    let dir = tempfile::tempdir()?;
    let write = |name: &str, body: &str| -> Result<String> {
        let p = dir.path().join(name);
        std::fs::write(&p, body)?;
        Ok(p.to_string_lossy().into_owned())
    };
    k(&["create", "namespace", "ssa"])?;

    // Apply on create: the object is made, and kubectl owns what it set.
    let f = write("v1.yaml", &deployment(2, "weft.local/busybox:1.36", true))?;
    let t = k(&["apply", "--server-side", "-f", &f])?;
    ensure!(t.contains("deployment.apps/web serverside-applied"), "{t}");
    let d = get(&["deployment", "web"])?;
    let m = managers(&d);
    let kubectl = m
        .iter()
        .find(|(n, op, _)| n == "kubectl" && op == "Apply")
        .with_context(|| format!("no kubectl Apply manager: {m:?}"))?;
    ensure!(
        kubectl.2.contains("f:replicas") && kubectl.2.contains(r#"k:{\"name\":\"main\"}"#),
        "{m:?}"
    );
    ensure!(d["spec"]["replicas"] == 2, "{d}");

    // Someone else scales it: applying another count conflicts, in kube's words.
    k(&["scale", "-n", "ssa", "deployment", "web", "--replicas=5"])?;
    let f2 = write("v2.yaml", &deployment(3, "weft.local/busybox:1.36", true))?;
    let out = run(&["apply", "--server-side", "-f", &f2])?;
    let t = text(&out);
    ensure!(!out.status.success(), "a conflict was expected: {t}");
    ensure!(
        t.contains("Apply failed with 1 conflict")
            && t.contains(".spec.replicas")
            && t.contains("conflict with \"kubectl"),
        "{t}"
    );
    ensure!(
        get(&["deployment", "web"])?["spec"]["replicas"] == 5,
        "a refused apply changed the object"
    );

    // Forced: kubectl takes spec.replicas; the scaler keeps nothing of it.
    k(&["apply", "--server-side", "--force-conflicts", "-f", &f2])?;
    let d = get(&["deployment", "web"])?;
    ensure!(d["spec"]["replicas"] == 3, "{d}");
    for (name, _, fields) in managers(&d) {
        let fields: Value = serde_json::from_str(&fields)?;
        ensure!(
            name == "kubectl" || fields["f:spec"].get("f:replicas").is_none(),
            "{name} still holds spec.replicas: {fields}"
        );
    }

    // A field kubectl no longer sets goes (the label); a dry run changes
    // nothing.
    let f3 = write("v3.yaml", &deployment(3, "weft.local/busybox:v2", false))?;
    let t = k(&["apply", "--server-side", "--dry-run=server", "-f", &f3])?;
    ensure!(t.contains("serverside-applied (server dry run)"), "{t}");
    let d = get(&["deployment", "web"])?;
    ensure!(
        d["metadata"]["labels"]["tier"] == "front",
        "a dry run changed it: {d}"
    );
    k(&["apply", "--server-side", "-f", &f3])?;
    let d = get(&["deployment", "web"])?;
    ensure!(d["metadata"]["labels"].get("tier").is_none(), "{d}");
    ensure!(
        d["spec"]["template"]["spec"]["containers"][0]["image"] == "weft.local/busybox:v2",
        "{d}"
    );

    // kubectl diff (a server dry run) shows the change and exits 1.
    let f4 = write("v4.yaml", &deployment(4, "weft.local/busybox:v2", false))?;
    let out = run(&["diff", "--server-side", "-f", &f4])?;
    let t = text(&out);
    ensure!(out.status.code() == Some(1), "diff: {t}");
    ensure!(
        t.contains("-  replicas: 3") && t.contains("+  replicas: 4"),
        "{t}"
    );
    let out = run(&["diff", "--server-side", "-f", &f3])?;
    ensure!(
        out.status.code() == Some(0),
        "no difference: {}",
        text(&out)
    );

    // Client-side apply, then server-side: kubectl moves the fields from
    // kubectl-client-side-apply to its apply manager, without a conflict.
    let cm = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: conf\n  namespace: ssa\ndata:\n  colour: {v}\n"
        )
    };
    let c1 = write("cm1.yaml", &cm("blue"))?;
    k(&["apply", "-f", &c1])?;
    let c = get(&["configmap", "conf"])?;
    ensure!(
        managers(&c)
            .iter()
            .any(|(n, op, f)| n == "kubectl-client-side-apply"
                && op == "Update"
                && f.contains("f:colour")),
        "{:?}",
        managers(&c)
    );
    let t = k(&["diff", "-f", &write("cm2.yaml", &cm("green"))?])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(t.contains("+  colour: green"), "client-side diff: {t}");
    k(&[
        "apply",
        "--server-side",
        "-f",
        &write("cm3.yaml", &cm("red"))?,
    ])?;
    let c = get(&["configmap", "conf"])?;
    ensure!(c["data"]["colour"] == "red", "{c}");
    let m = managers(&c);
    ensure!(
        m.iter()
            .any(|(n, op, f)| n == "kubectl" && op == "Apply" && f.contains("f:colour")),
        "{m:?}"
    );
    ensure!(
        !m.iter()
            .any(|(n, _, f)| n == "kubectl-client-side-apply" && f.contains("f:colour")),
        "{m:?}"
    );
    k(&["delete", "namespace", "ssa", "--timeout=30s"])?;
    Ok(())
}

#[test]
fn server_side_apply_with_kubectl_1_27() -> Result<()> {
    session(27)
}

#[test]
fn server_side_apply_with_kubectl_1_30() -> Result<()> {
    session(30)
}

#[test]
fn server_side_apply_with_kubectl_1_33() -> Result<()> {
    session(33)
}
