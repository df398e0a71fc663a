//! kubectl, unmodified, against `weft controller`: the kubectl this machine
//! ships (/usr/bin/kubectl) and the oldest and newest of the versioned ones.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, ensure};
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

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: httpd
        image: weft.local/busybox:1.36
        command: ["httpd", "-f", "-p", "80"]
        ports:
        - containerPort: 80
          name: http
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: http
---
apiVersion: v1
kind: Service
metadata:
  name: plain
spec:
  selector: {app: web}
  ports:
  - port: 81
    targetPort: 80
"#;

fn kubectl_session(minor: Option<u32>) -> Result<()> {
    ensure!(
        kubectl_path(minor).exists(),
        "{} is missing on this machine",
        kubectl_path(minor).display()
    );
    let island = Island::new("kubectl")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let k = |args: &[&str]| -> Result<String> {
        let out = cp.kubectl(minor, args)?;
        let t = text(&out);
        ensure!(out.status.success(), "kubectl {}: {t}", args.join(" "));
        Ok(t)
    };
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, APP)?;
    let f = file.to_string_lossy().to_string();

    let v: Value = serde_json::from_str(&String::from_utf8_lossy(
        &cp.kubectl(minor, &["version", "-o", "json"])?.stdout,
    ))?;
    ensure!(
        v["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("v1.33.0"),
        "{v}"
    );

    // explain reads the OpenAPI v3 documents; api-resources reads
    // (aggregated) discovery.
    let t = k(&["explain", "deployment.spec.strategy"])?;
    ensure!(
        t.contains("The deployment strategy to use to replace existing pods")
            && t.contains("rollingUpdate"),
        "{t}"
    );
    let t = k(&["explain", "pods.spec.containers.image"])?;
    ensure!(t.contains("Container image name"), "{t}");
    let t = k(&["api-resources"])?;
    ensure!(
        t.lines()
            .any(|l| l.starts_with("deployments") && l.contains("deploy") && l.contains("apps/v1")),
        "{t}"
    );

    // Imperative create: kubectl >= 1.32 sends these bodies as protobuf.
    let t = k(&["create", "namespace", "team"])?;
    ensure!(t.contains("namespace/team created"), "{t}");
    k(&[
        "create",
        "-n",
        "team",
        "deployment",
        "imp",
        "--image=weft.local/busybox:1.36",
        "--replicas=0",
        "--port=8080",
    ])?;
    k(&[
        "create",
        "-n",
        "team",
        "configmap",
        "conf",
        "--from-literal=colour=blue",
    ])?;
    k(&[
        "create",
        "-n",
        "team",
        "secret",
        "generic",
        "key",
        "--from-literal=token=s3cret",
    ])?;
    k(&[
        "create",
        "-n",
        "team",
        "service",
        "clusterip",
        "imp",
        "--tcp=80:8080",
    ])?;
    let get = |what: &[&str]| -> Result<Value> {
        let mut args = vec!["get", "-n", "team", "-o", "json"];
        args.extend_from_slice(what);
        Ok(serde_json::from_str(&k(&args)?)?)
    };
    let d = get(&["deploy", "imp"])?;
    ensure!(
        d["spec"]["replicas"] == 0
            && d["spec"]["template"]["spec"]["containers"][0]["image"] == "weft.local/busybox:1.36"
            && d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 8080
            && d["spec"]["selector"]["matchLabels"]["app"] == "imp",
        "{d}"
    );
    ensure!(get(&["cm", "conf"])?["data"]["colour"] == "blue");
    ensure!(
        get(&["secret", "key"])?["data"]["token"] == "czNjcmV0",
        "s3cret in base64"
    );
    let svc = get(&["svc", "imp"])?;
    ensure!(
        svc["spec"]["ports"][0]["port"] == 80
            && svc["spec"]["ports"][0]["targetPort"] == 8080
            && svc["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("10.")),
        "{svc}"
    );
    let t = k(&["create", "-n", "team", "-f", &f])?;
    ensure!(
        t.contains("deployment.apps/web created") && t.contains("service/web created"),
        "{t}"
    );
    // Server-side tables: real columns.
    let t = k(&["get", "-n", "team", "deployments"])?;
    ensure!(
        t.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{t}"
    );
    ensure!(t.contains("web") && t.contains("0/2"), "{t}");
    let t = k(&["get", "-n", "team", "pods", "-o", "wide"])?;
    let header: Vec<&str> = t
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header.starts_with(&["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]),
        "{t}"
    );
    ensure!(
        t.lines().count() == 3 && t.contains("Pending"),
        "two pending pods (no nodes): {t}"
    );
    let t = k(&["get", "-n", "team", "svc", "web"])?;
    ensure!(
        t.contains("ClusterIP") && t.contains("10.") && t.contains("80/TCP"),
        "{t}"
    );
    let t = k(&["get", "all", "-n", "team"])?;
    ensure!(
        t.contains("deployment.apps/web")
            && t.contains("service/web")
            && t.contains("replicaset.apps/web-"),
        "{t}"
    );
    // -o json and -o yaml.
    let d: Value =
        serde_json::from_str(&k(&["get", "-n", "team", "deploy", "web", "-o", "json"])?)?;
    ensure!(d["spec"]["replicas"] == 2 && d["metadata"]["uid"].is_string());
    let t = k(&["get", "-n", "team", "deploy", "web", "-o", "yaml"])?;
    ensure!(t.contains("kind: Deployment") && t.contains("replicas: 2"));
    // Client-side apply: configured, then unchanged; the annotation is kept.
    std::fs::write(
        &file,
        APP.replace("replicas: 2", "replicas: 3")
            .replace("busybox:1.36", "busybox:1.37"),
    )?;
    let t = k(&["apply", "-n", "team", "-f", &f])?;
    ensure!(t.contains("deployment.apps/web configured"), "{t}");
    let t = k(&["apply", "-n", "team", "-f", &f])?;
    ensure!(
        t.contains("deployment.apps/web unchanged") && t.contains("service/web unchanged"),
        "{t}"
    );
    let d: Value =
        serde_json::from_str(&k(&["get", "-n", "team", "deploy", "web", "-o", "json"])?)?;
    ensure!(
        d["spec"]["replicas"] == 3
            && d["spec"]["template"]["spec"]["containers"][0]["image"] == "weft.local/busybox:1.37"
    );
    ensure!(
        d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"] == "http",
        "strategic merge kept the port"
    );
    ensure!(
        d["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );
    // Scale, describe.
    let t = k(&["scale", "-n", "team", "deploy/web", "--replicas=5"])?;
    ensure!(t.contains("scaled"), "{t}");
    let t = k(&["describe", "-n", "team", "deploy", "web"])?;
    ensure!(
        t.contains("Replicas:") && t.contains("5 desired") && t.contains("ScalingReplicaSet"),
        "{t}"
    );
    let t = k(&["describe", "-n", "team", "svc", "web"])?;
    ensure!(t.contains("TargetPort:") && t.contains("http/TCP"), "{t}");
    // A Service whose port has no name: its EndpointSlice names it "", as
    // kube's, which kubectl 1.32 and 1.33 describe reads (a missing name
    // made them panic).
    let t = k(&["describe", "-n", "team", "svc", "plain"])?;
    ensure!(t.contains("81/TCP"), "{t}");
    // Watch: kubectl get -w prints changes as they happen.
    let mut watch = Command::new("ip")
        .args(["netns", "exec", island.name()])
        .arg(kubectl_path(minor))
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["get", "-n", "team", "deploy", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    k(&["scale", "-n", "team", "deploy/web", "--replicas=1"])?;
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let out = watch.wait_with_output()?;
    let t = text(&out);
    ensure!(
        t.contains("ADDED") && t.contains("MODIFIED") && t.contains("web"),
        "kubectl get -w: {t}"
    );
    // Strict field validation: an unknown field is an error naming it.
    let bad = APP.replace("replicas: 2", "replicas: 2\n  replicaz: 3");
    std::fs::write(&file, &bad)?;
    let out = cp.kubectl(minor, &["create", "-n", "team", "-f", &f])?;
    ensure!(
        !out.status.success() && text(&out).contains("replicaz"),
        "{}",
        text(&out)
    );
    // Delete waits until the objects are gone.
    std::fs::write(&file, APP)?;
    let t = k(&["delete", "-n", "team", "-f", &f, "--timeout=20s"])?;
    ensure!(
        t.contains("deployment.apps \"web\" deleted") && t.contains("service \"web\" deleted"),
        "{t}"
    );
    let out = cp.kubectl(minor, &["get", "-n", "team", "deploy", "web"])?;
    ensure!(
        !out.status.success() && text(&out).contains("NotFound"),
        "{}",
        text(&out)
    );
    let t = k(&["delete", "namespace", "team", "--timeout=30s"])?;
    ensure!(t.contains("deleted"), "{t}");
    // Logs need the node agent; the error says so instead of hanging.
    Ok(())
}

#[test]
fn kubectl_default() -> Result<()> {
    kubectl_session(None)
}

#[test]
fn kubectl_oldest_1_27() -> Result<()> {
    kubectl_session(Some(27))
}

#[test]
fn kubectl_newest_1_33() -> Result<()> {
    kubectl_session(Some(33))
}

#[test]
fn kubectl_1_30() -> Result<()> {
    kubectl_session(Some(30))
}
