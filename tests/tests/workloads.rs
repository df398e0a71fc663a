//! The pod contract on a real lab (controller, agent, runc): each clause a
//! pod asks for is observed from inside its container (an env value, a
//! file's content, /etc/hosts), and a reference that cannot be met shows
//! in the status as kubelet words it, until it can.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec};

fn up(nodes: usize) -> Result<Cluster> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut spec = ClusterSpec::new(nodes);
    spec.agent_args = vec!["--restart-backoff".into(), "1s".into()];
    rt.block_on(Cluster::up(spec, |_| {}))
}

/// The first container status of pod `name`.
fn container_status(c: &Cluster, name: &str) -> Result<Value> {
    let p = c.get_json(&["pod", name])?;
    Ok(p["status"]["containerStatuses"][0].clone())
}

/// Waits until pod `name`'s log holds `marker`, and returns the log.
fn wait_log(c: &Cluster, name: &str, marker: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = c.weft(&["logs", name]).unwrap_or_default();
        if log.contains(marker) {
            return Ok(log);
        }
        if Instant::now() > deadline {
            let status = container_status(c, name).unwrap_or_default();
            bail!("pod {name} did not log {marker:?}: {log}\nstatus: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `KEY=value` lines of a log.
fn env_of(log: &str) -> std::collections::BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn configuration_reaches_the_container() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: app}
data: {color: blue, size: large}
---
apiVersion: v1
kind: Secret
metadata: {name: db}
stringData: {password: s3cr3t, user: admin}
---
apiVersion: v1
kind: Pod
metadata:
  name: env
  labels: {app: envtest, tier: back}
spec:
  hostAliases:
  - ip: 10.9.8.7
    hostnames: [db.internal, db]
  containers:
  - name: main
    image: weft.local/busybox:1.36
    workingDir: /tmp
    command: ["sh", "-c"]
    args: ["env | sort; echo 'CMD=$(GREETING) $$(LITERAL)'; echo PWD_IS=$(pwd); grep db.internal /etc/hosts | tr '\t' ' ' | sed 's/^/HOSTS=/'; echo END=1; sleep 3600"]
    resources:
      limits: {memory: 64Mi, cpu: 500m}
    envFrom:
    - configMapRef: {name: app}
      prefix: CFG_
    - secretRef: {name: db}
    env:
    - name: COLOR
      valueFrom: {configMapKeyRef: {name: app, key: color}}
    - name: PASS
      valueFrom: {secretKeyRef: {name: db, key: password}}
    - name: GREETING
      value: "hello $(COLOR) from $(POD_NAME)"
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    - name: TIER
      valueFrom: {fieldRef: {fieldPath: "metadata.labels['tier']"}}
    - name: MEM_MI
      valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}
    - name: CPU_M
      valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}
    - name: MISSING_OK
      valueFrom: {configMapKeyRef: {name: app, key: nope, optional: true}}
"#,
    )?;
    let log = wait_log(&c, "env", "END=1", Duration::from_secs(60))?;
    let env = env_of(&log);
    let pod = c.get_json(&["pod", "env"])?;
    let want = [
        ("CFG_color", "blue"),
        ("CFG_size", "large"),
        ("password", "s3cr3t"),
        ("user", "admin"),
        ("COLOR", "blue"),
        ("PASS", "s3cr3t"),
        // POD_NAME is declared after GREETING: not expanded, as in kube.
        ("GREETING", "hello blue from $(POD_NAME)"),
        ("POD_NAME", "env"),
        (
            "POD_IP",
            pod["status"]["podIP"].as_str().context("pod IP")?,
        ),
        ("NODE", pod["spec"]["nodeName"].as_str().context("node")?),
        ("TIER", "back"),
        ("MEM_MI", "64"),
        ("CPU_M", "500"),
        ("CMD", "hello blue from $(POD_NAME) $(LITERAL)"),
        ("PWD_IS", "/tmp"),
        ("HOSTS", "10.9.8.7 db.internal db"),
    ];
    for (k, v) in want {
        ensure!(env.get(k).map(String::as_str) == Some(v), "{k}: want {v:?}\n{log}");
    }
    ensure!(!env.contains_key("MISSING_OK"), "{log}");

    // A missing reference: CreateContainerConfigError with kubelet's
    // words, until the object exists; then the pod starts by itself.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "echo GOT=$LATE; sleep 3600"]
    env:
    - name: LATE
      valueFrom: {configMapKeyRef: {name: late, key: k}}
"#,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = container_status(&c, "waits")?;
        let w = &s["state"]["waiting"];
        if w["reason"] == "CreateContainerConfigError" {
            ensure!(w["message"] == "configmap \"late\" not found", "{s}");
            break;
        }
        ensure!(Instant::now() < deadline, "no CreateContainerConfigError: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {other: x}\n")?;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let s = container_status(&c, "waits")?;
        if s["state"]["waiting"]["message"] == "couldn't find key k in ConfigMap default/late" {
            break;
        }
        ensure!(Instant::now() < deadline, "the missing key is not reported: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {k: arrived}\n")?;
    wait_log(&c, "waits", "GOT=arrived", Duration::from_secs(45))?;
    // The agent never logs a value.
    let agent = c.agent_log(&c.get_json(&["pod", "env"])?["spec"]["nodeName"].as_str().unwrap_or_default().to_string());
    ensure!(!agent.contains("s3cr3t"), "a Secret's value is in the agent's log");
    Ok(())
}
