//! The API from inside pods: every pod runs as a service account whose
//! token, the cluster CA and its namespace are mounted at
//! /var/run/secrets/kubernetes.io/serviceaccount, and finds the API through
//! the `kubernetes` Service (KUBERNETES_SERVICE_HOST/PORT), load-balanced
//! by the agents' eBPF like any Service; what the token may do is RBAC's.
//! The clients are unmodified kube-rs (tests/src/bin/kube-incluster.rs)
//! and the official Python client (scripts/setup.sh's venv), run in pods
//! from the host's files through hostPath volumes.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};

fn up(nodes: usize) -> Result<Cluster> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(Cluster::up(ClusterSpec::new(nodes), |_| {}))
}

fn wait_running(c: &Cluster, ns: &str, name: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = c.get_json(&["-n", ns, "pod", name])?;
        if pod_ready(&p) && p["status"]["phase"] == "Running" {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pod {ns}/{name} did not start: {p}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `argv` in a pod of `team` as the `lister` account, with the host's
/// /usr (libraries, Python), the venv and `extra` (host path, pod path)
/// mounted read-only; waits for it to end and returns its phase and log.
fn run_client(
    c: &Cluster,
    name: &str,
    argv: &[&str],
    extra: &[(&str, &str)],
) -> Result<(String, String)> {
    let mut mounts = vec![
        ("/usr", "/usr"),
        ("/usr/lib", "/lib"),
        ("/usr/lib64", "/lib64"),
        ("/opt/weft/python", "/opt/weft/python"),
    ];
    mounts.extend_from_slice(extra);
    let volumes: Vec<Value> = mounts
        .iter()
        .enumerate()
        .map(|(i, (host, _))| serde_json::json!({"name": format!("host{i}"), "hostPath": {"path": host}}))
        .collect();
    let volume_mounts: Vec<Value> = mounts
        .iter()
        .enumerate()
        .map(|(i, (_, path))| serde_json::json!({"name": format!("host{i}"), "mountPath": path, "readOnly": true}))
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "team"},
        "spec": {
            "serviceAccountName": "lister",
            "restartPolicy": "Never",
            "volumes": volumes,
            "containers": [{"name": "main", "image": "weft.local/busybox:1.36",
                "command": argv, "volumeMounts": volume_mounts}],
        }
    });
    c.apply(&pod.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let phase = loop {
        let p = c.get_json(&["-n", "team", "pod", name])?;
        let phase = p["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        ensure!(Instant::now() < deadline, "{name} did not end: {p}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let log = c.weft(&["logs", "-n", "team", name])?;
    Ok((phase, log))
}

/// The JSON line a client printed for `step`.
fn step<'a>(lines: &'a [Value], step: &str, log: &str) -> Result<&'a Value> {
    lines
        .iter()
        .find(|l| l["step"] == step)
        .with_context(|| format!("no {step} step in:\n{log}"))
}

fn json_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The official Python client in a pod: in-cluster configuration, a list
/// of its namespace's pods, a ConfigMap made and deleted, and whether
/// another namespace answers 403.
const PYTHON: &str = r#"
import json
from kubernetes import client, config
config.load_incluster_config()
core = client.CoreV1Api()
ns = open("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read()
def out(step, **kw):
    kw["step"] = step
    print(json.dumps(kw), flush=True)
out("config", host=client.Configuration.get_default_copy().host)
try:
    out("list", pods=[p.metadata.name for p in core.list_namespaced_pod(ns).items])
except client.exceptions.ApiException as e:
    out("list", status=e.status, body=e.body)
    raise SystemExit(0)
cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="from-python"), data={"a": "1"}))
out("create", uid=cm.metadata.uid)
st = core.delete_namespaced_config_map("from-python", ns)
out("delete", status=st.status if not isinstance(st, dict) else st.get("status"))
try:
    core.list_namespaced_pod("default")
    out("elsewhere", status=200)
except client.exceptions.ApiException as e:
    out("elsewhere", status=e.status, body=e.body)
"#;

#[test]
fn pods_use_the_api_with_their_tokens_as_rbac_allows() -> Result<()> {
    let c = up(2)?;
    c.apply(
        r#"apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: lister, namespace: team}
imagePullSecrets: [{name: regcred}]
---
apiVersion: v1
kind: Pod
metadata: {name: talker, namespace: team}
spec:
  serviceAccountName: lister
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sh", "-c", "echo talker-says-hi; exec sleep 3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: team}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
"#,
    )?;
    let pod = wait_running(&c, "team", "talker")?;
    // What the admission added: the volume and its mount.
    let volumes = pod["spec"]["volumes"].to_string();
    ensure!(
        volumes.contains("kube-api-access-") && volumes.contains("serviceAccountToken"),
        "{pod}"
    );
    ensure!(pod["spec"]["serviceAccountName"] == "lister", "{pod}");
    // The account's registry logins, copied as kube's admission does.
    ensure!(
        pod["spec"]["imagePullSecrets"] == serde_json::json!([{"name": "regcred"}]),
        "{pod}"
    );
    let files = c.exec(
        "team",
        "talker",
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount"],
    )?;
    ensure!(
        files.1.contains("token") && files.1.contains("ca.crt") && files.1.contains("namespace"),
        "{files:?}"
    );
    let (_, ca) = c.exec(
        "team",
        "talker",
        &[
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        ],
    )?;
    ensure!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let (_, env) = c.exec("team", "talker", &["env"])?;
    ensure!(
        env.contains("KUBERNETES_SERVICE_HOST=") && env.contains("KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );

    // Refused until bound, in kube's words.
    let (phase, log) = run_client(
        &c,
        "py-before",
        &["/opt/weft/python/bin/python", "-c", PYTHON],
        &[],
    )?;
    let lines = json_lines(&log);
    ensure!(phase == "Succeeded", "{phase}: {log}");
    let list = step(&lines, "list", &log)?;
    ensure!(
        list["status"] == 403
            && list["body"]
                .as_str()
                .is_some_and(|b| b.contains("system:serviceaccount:team:lister")),
        "before the binding: {log}"
    );

    c.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lister-edit, namespace: team}
subjects:
- {kind: ServiceAccount, name: lister, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
"#,
    )?;

    // The Python client, bound: its namespace only.
    let (phase, log) = run_client(
        &c,
        "py-after",
        &["/opt/weft/python/bin/python", "-c", PYTHON],
        &[],
    )?;
    let lines = json_lines(&log);
    ensure!(phase == "Succeeded", "{phase}: {log}");
    let host = step(&lines, "config", &log)?["host"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        host.starts_with("https://10.") && host.ends_with(":443"),
        "the Service's address: {log}"
    );
    let listed = step(&lines, "list", &log)?["pods"].to_string();
    ensure!(
        listed.contains("\"talker\"") && listed.contains("\"py-after\""),
        "{log}"
    );
    ensure!(step(&lines, "create", &log)?["uid"].is_string(), "{log}");
    ensure!(
        step(&lines, "delete", &log)?["status"] == "Success",
        "{log}"
    );
    ensure!(step(&lines, "elsewhere", &log)?["status"] == 403, "{log}");

    // kube-rs, the same way an operator runs: list, watch, create, patch,
    // logs, exec, delete, and another namespace refused.
    let bin = env!("CARGO_BIN_EXE_kube-incluster");
    let (phase, log) = run_client(
        &c,
        "kube-rs",
        &["/kube-incluster", "talker"],
        &[(bin, "/kube-incluster")],
    )?;
    let lines = json_lines(&log);
    ensure!(phase == "Succeeded", "{phase}: {log}");
    let config = step(&lines, "config", &log)?;
    ensure!(
        config["namespace"] == "team"
            && config["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://10.")),
        "{log}"
    );
    ensure!(
        step(&lines, "list", &log)?["pods"]
            .to_string()
            .contains("\"talker\""),
        "{log}"
    );
    let created = step(&lines, "create", &log)?;
    ensure!(created["namespace"] == "team", "{log}");
    ensure!(
        step(&lines, "watch", &log)?["uid"] == created["uid"],
        "the watch saw another object: {log}"
    );
    let patched = step(&lines, "patch", &log)?;
    ensure!(
        patched["labels"]["by"] == "kube-rs" && patched["data"]["a"] == "2",
        "{log}"
    );
    ensure!(
        step(&lines, "logs", &log)?["text"] == "talker-says-hi\n",
        "{log}"
    );
    let exec = step(&lines, "exec", &log)?;
    ensure!(
        exec["stdout"] == "exec-from-kube-rs\n" && exec["status"] == "Success",
        "{log}"
    );
    let tty = step(&lines, "tty", &log)?;
    let shown = tty["stdout"].as_str().unwrap_or_default();
    ensure!(
        shown.contains("33 101\r\n")
            && shown.contains("/dev/pts/")
            && tty["status"] == "Failure"
            && tty["code"] == "5",
        "the terminal: {log}"
    );
    ensure!(step(&lines, "delete", &log)?["status"] == true, "{log}");
    let elsewhere = step(&lines, "elsewhere", &log)?;
    ensure!(
        elsewhere["code"] == 403
            && elsewhere["message"].as_str().is_some_and(|m| m.contains(
                "cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
            )),
        "{log}"
    );
    ensure!(
        c.get_json(&["-n", "team", "configmap", "from-kube-rs"])
            .is_err(),
        "the ConfigMap outlived its delete"
    );

    // A pod that opted out has no token.
    wait_running(&c, "team", "opted-out")?;
    let (code, _) = c.exec(
        "team",
        "opted-out",
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
    )?;
    ensure!(code != 0, "opted out, yet a token");
    // A pod naming an account that does not exist is refused.
    let err = c
        .apply(
            r#"apiVersion: v1
kind: Pod
metadata: {name: stray, namespace: team}
spec:
  serviceAccountName: nobody
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
"#,
        )
        .expect_err("no such account");
    ensure!(
        format!("{err:#}").contains("serviceaccount \"nobody\" not found"),
        "{err:#}"
    );
    Ok(())
}
