//! Client libraries, unmodified, against `weft controller`: the official
//! Kubernetes Python client (37.0.3, installed by scripts/setup.sh in
//! /opt/weft/python) lists, watches, creates, patches, replaces and deletes
//! through its typed API, and reads what it gets back into its models (a
//! DELETE answered in the wrong shape made `delete_namespaced_deployment`
//! raise).

use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_tests::control::{ControlOptions, ControlPlane};
use weft_tests::island::Island;

const PYTHON: &str = "/opt/weft/python/bin/python";

/// The script: each step prints one JSON line `{"step": ..., ...}`; a
/// failure raises (and the test shows the traceback).
const SCRIPT: &str = r#"
import json, sys, threading, time
from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

def out(step, **kw):
    kw["step"] = step
    print(json.dumps(kw), flush=True)

names = [n.metadata.name for n in core.list_namespace().items]
out("list", namespaces=names)

core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))

# A watch, started before the pod it should see.
seen = []
def follow():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_pod, namespace="py", timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["object"].metadata.name == "watched":
            w.stop()
t = threading.Thread(target=follow)
t.start()
time.sleep(0.5)
pod = client.V1Pod(
    metadata=client.V1ObjectMeta(name="watched", labels={"app": "py"}),
    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="weft.local/busybox:1.36")]))
created = core.create_namespaced_pod("py", pod)
t.join(15)
out("watch", seen=seen, uid=created.metadata.uid)

dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        replicas=0,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="weft.local/busybox:1.36")]))))
d = apps.create_namespaced_deployment("py", dep)
out("create", replicas=d.spec.replicas, uid=d.metadata.uid)

p = apps.patch_namespaced_deployment("web", "py", {"metadata": {"labels": {"tier": "front"}}, "spec": {"replicas": 0}})
out("patch", labels=p.metadata.labels)

s = apps.patch_namespaced_deployment_scale("web", "py", {"spec": {"replicas": 0}})
out("scale", replicas=s.spec.replicas)

cm = core.create_namespaced_config_map("py", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="conf"), data={"a": "1"}))
cm.data = {"a": "2"}
r = core.replace_namespaced_config_map("conf", "py", cm)
out("replace", data=r.data)

listed = core.list_namespaced_pod("py", label_selector="app=py")
out("select", pods=[x.metadata.name for x in listed.items])

# Depending on the version, the client gives a V1Status or the body as a
# dict: either way, a Status naming what went.
def status_of(st):
    return st if isinstance(st, dict) else client.ApiClient().sanitize_for_serialization(st)

st = status_of(apps.delete_namespaced_deployment("web", "py"))
out("delete-deployment", kind=st.get("kind"), status=st.get("status"),
    details_kind=st["details"]["kind"], uid=st["details"]["uid"])

deleted = core.delete_namespaced_pod("watched", "py", grace_period_seconds=0)
out("delete-pod", type=type(deleted).__name__, name=deleted.metadata.name)

try:
    core.read_namespaced_pod("missing", "py")
    out("missing", status=None)
except client.exceptions.ApiException as e:
    out("missing", status=e.status, reason=e.reason)

st = status_of(core.delete_namespaced_config_map("conf", "py"))
out("delete-configmap", kind=st.get("kind"), status=st.get("status"))
"#;

#[test]
fn the_official_python_client() -> Result<()> {
    ensure!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/setup.sh"
    );
    let island = Island::new("pyclient")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("client.py");
    std::fs::write(&script, SCRIPT)?;
    let out = Command::new("ip")
        .args(["netns", "exec", island.name(), PYTHON])
        .arg(&script)
        .arg(cp.kubeconfig())
        .output()
        .context("run the Python client")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    ensure!(
        step("list")["namespaces"]
            .as_array()
            .is_some_and(|n| n.iter().any(|x| x == "kube-system")),
        "{stdout}"
    );
    let watched = step("watch");
    ensure!(
        watched["seen"]
            .as_array()
            .is_some_and(|s| s.iter().any(|e| e[0] == "ADDED" && e[1] == "watched")),
        "{watched}"
    );
    ensure!(step("create")["replicas"] == 0, "{stdout}");
    ensure!(step("patch")["labels"]["tier"] == "front", "{stdout}");
    ensure!(step("scale")["replicas"] == 0, "{stdout}");
    ensure!(step("replace")["data"]["a"] == "2", "{stdout}");
    ensure!(
        step("select")["pods"] == serde_json::json!(["watched"]),
        "{stdout}"
    );
    let d = step("delete-deployment");
    ensure!(
        d["kind"] == "Status"
            && d["status"] == "Success"
            && d["details_kind"] == "deployments"
            && d["uid"] == step("create")["uid"],
        "{d}"
    );
    let p = step("delete-pod");
    ensure!(p["type"] == "V1Pod" && p["name"] == "watched", "{p}");
    ensure!(step("missing")["status"] == 404, "{stdout}");
    ensure!(
        step("delete-configmap")["kind"] == "Status"
            && step("delete-configmap")["status"] == "Success",
        "{stdout}"
    );
    Ok(())
}
