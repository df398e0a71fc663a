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
kind: Service
metadata: {name: web-front}
spec:
  selector: {app: nothing}
  ports: [{name: http, port: 8080}]
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
        ("POD_IP", pod["status"]["podIP"].as_str().context("pod IP")?),
        ("NODE", pod["spec"]["nodeName"].as_str().context("node")?),
        ("TIER", "back"),
        ("MEM_MI", "64"),
        ("CPU_M", "500"),
        ("CMD", "hello blue from $(POD_NAME) $(LITERAL)"),
        ("PWD_IS", "/tmp"),
        ("HOSTS", "10.9.8.7 db.internal db"),
    ];
    for (k, v) in want {
        ensure!(
            env.get(k).map(String::as_str) == Some(v),
            "{k}: want {v:?}\n{log}"
        );
    }
    ensure!(!env.contains_key("MISSING_OK"), "{log}");
    // Service links, as Kubernetes gives them by default.
    let svc = c.get_json(&["service", "web-front"])?;
    let ip = svc["spec"]["clusterIP"].as_str().context("cluster IP")?;
    ensure!(
        env.get("WEB_FRONT_SERVICE_HOST").map(String::as_str) == Some(ip),
        "{log}"
    );
    ensure!(
        env.get("WEB_FRONT_SERVICE_PORT_HTTP").map(String::as_str) == Some("8080"),
        "{log}"
    );
    ensure!(
        env.get("WEB_FRONT_PORT").map(String::as_str) == Some(format!("tcp://{ip}:8080").as_str()),
        "{log}"
    );

    // A missing reference: CreateContainerConfigError with kubelet's
    // words, until the object exists; then the pod starts by itself.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  enableServiceLinks: false
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "echo GOT=$LATE; echo LINKS=${WEB_FRONT_SERVICE_HOST:-none}; sleep 3600"]
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
        ensure!(
            Instant::now() < deadline,
            "no CreateContainerConfigError: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {other: x}\n")?;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let s = container_status(&c, "waits")?;
        if s["state"]["waiting"]["message"] == "couldn't find key k in ConfigMap default/late" {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the missing key is not reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {k: arrived}\n")?;
    let log = wait_log(&c, "waits", "GOT=arrived", Duration::from_secs(45))?;
    ensure!(
        log.contains("LINKS=none"),
        "enableServiceLinks: false: {log}"
    );
    // A restart whose configuration went missing waits, saying why, and
    // recovers when it is back (kubelet's CreateContainerConfigError).
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: come-and-go}\ndata: {k: v1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: restarts}\nspec:\n  containers:\n  - name: main\n    image: weft.local/busybox:1.36\n    command: [sh, -c, 'echo K=$K; sleep 2; exit 1']\n    env: [{name: K, valueFrom: {configMapKeyRef: {name: come-and-go, key: k}}}]\n")?;
    wait_log(&c, "restarts", "K=v1", Duration::from_secs(40))?;
    c.weft(&["delete", "configmap", "come-and-go"])?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let s = container_status(&c, "restarts")?;
        if s["state"]["waiting"]["reason"] == "CreateContainerConfigError" {
            ensure!(
                s["state"]["waiting"]["message"] == "configmap \"come-and-go\" not found",
                "{s}"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the failed restart is not reported: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: come-and-go}\ndata: {k: v2}\n")?;
    wait_log(&c, "restarts", "K=v2", Duration::from_secs(60))?;
    // The agent never logs a value.
    let node = c.get_json(&["pod", "env"])?["spec"]["nodeName"].clone();
    let agent = c.agent_log(node.as_str().unwrap_or_default());
    ensure!(
        !agent.contains("s3cr3t"),
        "a Secret's value is in the agent's log"
    );
    Ok(())
}

/// Runs `sh -c script` in pod `name` and returns its output (status 0).
fn sh(c: &Cluster, name: &str, script: &str) -> Result<String> {
    let (code, out) = c.exec("default", name, &["sh", "-c", script])?;
    ensure!(code == 0, "{script}: exit {code}: {out}");
    Ok(out.trim().to_string())
}

/// The pod's own directory on the node, as the mount table shows it.
fn pod_mounts(uid: &str) -> Result<Vec<String>> {
    let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.contains(&format!("/pods/{short}/")))
        .map(str::to_string)
        .collect())
}

const VOLUME_POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: vol
  labels: {tier: back}
spec:
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    resources:
      limits: {memory: 128Mi}
    volumeMounts:
    - {name: cfg, mountPath: /etc/cfg}
    - {name: one, mountPath: /etc/one}
    - {name: sec, mountPath: /etc/sec}
    - {name: down, mountPath: /etc/pod}
    - {name: proj, mountPath: /etc/proj}
    - {name: scratch, mountPath: /scratch}
    - {name: mem, mountPath: /mem}
    - {name: cfg, mountPath: /etc/single.conf, subPath: app.conf}
  volumes:
  - name: cfg
    configMap: {name: web}
  - name: one
    configMap:
      name: web
      items: [{key: app.conf, path: conf/app.conf, mode: 0400}]
  - name: sec
    secret: {secretName: creds, defaultMode: 0440}
  - name: down
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: mem, resourceFieldRef: {containerName: main, resource: limits.memory, divisor: 1Mi}}
  - name: proj
    projected:
      sources:
      - configMap: {name: web, items: [{key: color, path: color}]}
      - secret: {name: creds, items: [{key: password, path: secret/pw}]}
      - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}
  - name: scratch
    emptyDir: {}
  - name: mem
    emptyDir: {medium: Memory, sizeLimit: 1Mi}
"#;

#[test]
fn volumes_are_mounted_as_asked_and_updated_in_place() -> Result<()> {
    let c = up(1)?;
    c.apply(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {color: blue, app.conf: \"port=80\"}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: creds}\nstringData: {password: s3cr3t}\n",
    )?;
    c.apply(VOLUME_POD)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while container_status(&c, "vol")?["state"]["running"].is_null() {
        ensure!(
            Instant::now() < deadline,
            "not running: {}",
            container_status(&c, "vol")?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Contents, as the container's user reads them.
    ensure!(sh(&c, "vol", "id -u")? == "1000");
    ensure!(sh(&c, "vol", "cat /etc/cfg/color")? == "blue");
    ensure!(sh(&c, "vol", "cat /etc/cfg/app.conf")? == "port=80");
    ensure!(sh(&c, "vol", "cat /etc/single.conf")? == "port=80");
    ensure!(sh(&c, "vol", "ls /etc/one/conf")? == "app.conf");
    ensure!(sh(&c, "vol", "cat /etc/sec/password")? == "s3cr3t");
    ensure!(sh(&c, "vol", "cat /etc/pod/name")? == "vol");
    ensure!(sh(&c, "vol", "cat /etc/pod/labels")? == "tier=\"back\"");
    ensure!(sh(&c, "vol", "cat /etc/pod/mem")? == "128");
    ensure!(
        sh(
            &c,
            "vol",
            "for f in color secret/pw ns; do cat /etc/proj/$f; echo; done"
        )? == "blue\ns3cr3t\ndefault"
    );
    // Modes and the fsGroup: the 0440 secret is readable through the
    // group; the 0400 item gets g+r too, as kubelet sets it.
    ensure!(sh(&c, "vol", "stat -L -c '%a %g' /etc/sec/password")? == "440 2000");
    ensure!(sh(&c, "vol", "stat -L -c '%a %g' /etc/one/conf/app.conf")? == "440 2000");
    ensure!(
        sh(&c, "vol", "id -G")?
            .split_whitespace()
            .any(|g| g == "2000")
    );
    // Read-only where kube mounts read-only; the emptyDir is the pod's.
    let (code, _) = c.exec("default", "vol", &["sh", "-c", "echo x > /etc/cfg/new"])?;
    ensure!(code != 0, "a configMap volume is writable");
    ensure!(sh(&c, "vol", "echo data > /scratch/f && cat /scratch/f")? == "data");
    // Secrets and memory emptyDirs are tmpfs; the memory one is bounded.
    let mounts = sh(&c, "vol", "cat /proc/mounts")?;
    for at in ["/etc/sec", "/mem"] {
        ensure!(
            mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == Some(at) && l.starts_with("tmpfs ")),
            "{at} is not a tmpfs: {mounts}"
        );
    }
    let (code, out) = c.exec(
        "default",
        "vol",
        &["sh", "-c", "dd if=/dev/zero of=/mem/big bs=64k count=64"],
    )?;
    ensure!(
        code != 0 && out.contains("No space left"),
        "2 MiB fit in a 1Mi emptyDir: {out}"
    );

    // A change reaches the running pod in place, atomically.
    let before = Instant::now();
    c.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata: {color: green, app.conf: \"port=80\"}\n")?;
    loop {
        if sh(&c, "vol", "cat /etc/cfg/color")? == "green" {
            break;
        }
        ensure!(
            before.elapsed() < Duration::from_secs(10),
            "the change never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = before.elapsed();
    ensure!(sh(&c, "vol", "cat /etc/proj/color")? == "green");
    ensure!(sh(&c, "vol", "readlink /etc/cfg/color")? == "..data/color");
    eprintln!("configMap update seen in the pod after {took:?}");
    // The labels too.
    c.apply(&VOLUME_POD.replace("labels: {tier: back}", "labels: {tier: front}"))?;
    let before = Instant::now();
    while sh(&c, "vol", "cat /etc/pod/labels")? != "tier=\"front\"" {
        ensure!(
            before.elapsed() < Duration::from_secs(10),
            "the label change never arrived"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A missing source: the pod waits, saying why in kubelet's words.
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: nocm}\nspec:\n  containers:\n  - {name: main, image: weft.local/busybox:1.36, command: [sleep, '3600'], volumeMounts: [{name: c, mountPath: /c}]}\n  volumes:\n  - {name: c, configMap: {name: nope}}\n",
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let w = container_status(&c, "nocm")?["state"]["waiting"].clone();
        if w["message"]
            == "MountVolume.SetUp failed for volume \"c\" : configmap \"nope\" not found"
        {
            ensure!(w["reason"] == "ContainerCreating", "{w}");
            break;
        }
        ensure!(Instant::now() < deadline, "no FailedMount: {w}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = c.weft(&["get", "events"])?;
    ensure!(events.contains("FailedMount"), "{events}");

    // A disk emptyDir over its sizeLimit: the pod is evicted, as kubelet
    // does, and its writes stop.
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: hog}\nspec:\n  containers:\n  - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, 'dd if=/dev/zero of=/d/f bs=1M count=3; sleep 3600'], volumeMounts: [{name: d, mountPath: /d}]}\n  volumes:\n  - {name: d, emptyDir: {sizeLimit: 1Mi}}\n",
    )?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let p = c.get_json(&["pod", "hog"])?;
        if p["status"]["phase"] == "Failed" {
            ensure!(p["status"]["reason"] == "Evicted", "{}", p["status"]);
            ensure!(
                p["status"]["message"]
                    == "Usage of EmptyDir volume \"d\" exceeds the limit \"1Mi\". ",
                "{}",
                p["status"]
            );
            ensure!(
                p["status"]["conditions"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|c| {
                        c["type"] == "DisruptionTarget"
                            && c["status"] == "True"
                            && c["reason"] == "TerminationByKubelet"
                    })),
                "{}",
                p["status"]
            );
            break;
        }
        ensure!(Instant::now() < deadline, "not evicted: {}", p["status"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(c.weft(&["get", "events"])?.contains("Evicted"));

    // Deleted: nothing stays mounted on the node.
    let uid = c.get_json(&["pod", "vol"])?["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .to_string();
    ensure!(
        !pod_mounts(&uid)?.is_empty(),
        "the test cannot see the pod's mounts"
    );
    c.weft(&["delete", "pod", "vol"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pod_mounts(&uid)?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "left mounted: {:?}",
            pod_mounts(&uid)?
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Waits until `check` holds for pod `name` (as JSON).
fn wait_pod(
    c: &Cluster,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let p = c.get_json(&["pod", name])?;
        if check(&p) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pod {name}: {what}: {}", p["status"]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn row_of(c: &Cluster, name: &str) -> Result<String> {
    let table = c.weft(&["get", "pods"])?;
    Ok(table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_default()
        .to_string())
}

#[test]
fn init_containers_run_in_order_and_sidecars_alongside() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: inits}
spec:
  volumes: [{name: w, emptyDir: {}}]
  initContainers:
  - {name: first, image: weft.local/busybox:1.36, command: [sh, -c, "sleep 1; echo first >> /w/order"], volumeMounts: [{name: w, mountPath: /w}]}
  - name: side
    image: weft.local/busybox:1.36
    restartPolicy: Always
    command: [sh, -c, "echo side >> /w/order; trap 'exit 0' TERM; while true; do sleep 1; done"]
    volumeMounts: [{name: w, mountPath: /w}]
  - {name: last, image: weft.local/busybox:1.36, command: [sh, -c, "echo last >> /w/order"], volumeMounts: [{name: w, mountPath: /w}]}
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, "cat /w/order; echo main-done; trap 'exit 0' TERM; while true; do sleep 1; done"], volumeMounts: [{name: w, mountPath: /w}]}
---
apiVersion: v1
kind: Pod
metadata: {name: initfail}
spec:
  restartPolicy: Never
  initContainers:
  - {name: broken, image: weft.local/busybox:1.36, command: [sh, -c, "exit 3"]}
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: initretry}
spec:
  initContainers:
  - {name: flaky, image: weft.local/busybox:1.36, command: [sh, -c, "exit 1"]}
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  initContainers:
  - {name: proxy, image: weft.local/busybox:1.36, restartPolicy: Always, command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]}
  containers:
  - {name: work, image: weft.local/busybox:1.36, command: [sh, -c, "sleep 1; exit 0"]}
---
apiVersion: v1
kind: Pod
metadata: {name: slowside}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 8
  initContainers:
  - {name: proxy, image: weft.local/busybox:1.36, restartPolicy: Always, command: [sleep, "3600"]}
  containers:
  - {name: work, image: weft.local/busybox:1.36, command: [sh, -c, "sleep 2; exit 0"]}
"#,
    )?;
    // In order: first (which takes a second), then the sidecar, then last,
    // then the container; the sidecar keeps running.
    let log = wait_log(&c, "inits", "main-done", Duration::from_secs(60))?;
    ensure!(log.starts_with("first\nside\nlast\n"), "{log}");
    let p = wait_pod(&c, "inits", Duration::from_secs(30), "Ready", |p| {
        weft_lab::cluster::pod_ready(p)
    })?;
    let inits = p["status"]["initContainerStatuses"]
        .as_array()
        .context("init statuses")?;
    ensure!(inits.len() == 3, "{inits:?}");
    ensure!(
        inits[0]["state"]["terminated"]["reason"] == "Completed",
        "{inits:?}"
    );
    ensure!(inits[1]["state"]["running"].is_object(), "{inits:?}");
    ensure!(
        inits[2]["state"]["terminated"]["exitCode"] == 0,
        "{inits:?}"
    );
    ensure!(
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Initialized" && c["status"] == "True"),
        "{}",
        p["status"]
    );
    // Their logs, by name.
    let (code, out) = c.exec("default", "inits", &["cat", "/w/order"])?;
    ensure!(
        code == 0 && out.lines().count() == 3,
        "init containers ran again: {out}"
    );
    ensure!(c.weft(&["logs", "inits", "-c", "first"]).is_ok());

    // A failed init container fails a Never pod; its containers never run.
    let p = wait_pod(&c, "initfail", Duration::from_secs(30), "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })?;
    ensure!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing",
        "{}",
        p["status"]
    );
    ensure!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 3,
        "{}",
        p["status"]
    );
    ensure!(
        row_of(&c, "initfail")?.contains("Init:Error"),
        "{}",
        row_of(&c, "initfail")?
    );
    // Otherwise it is retried with back-off, the pod Pending.
    let p = wait_pod(&c, "initretry", Duration::from_secs(40), "restarted", |p| {
        p["status"]["initContainerStatuses"][0]["restartCount"].as_i64() >= Some(2)
    })?;
    ensure!(p["status"]["phase"] == "Pending", "{}", p["status"]);
    ensure!(
        row_of(&c, "initretry")?.contains("Init:"),
        "{}",
        row_of(&c, "initretry")?
    );

    // A Job-like pod with a sidecar finishes when its container does.
    let p = wait_pod(&c, "job", Duration::from_secs(40), "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    let side = &p["status"]["initContainerStatuses"][0];
    ensure!(
        side["state"]["running"].is_null(),
        "the sidecar outlived its pod: {side}"
    );
    // A sidecar that takes its whole grace period to stop (sleep ignores
    // SIGTERM) does not hide the container's end: that is reported while
    // the sidecar still runs, as kubelet reports it.
    let p = wait_pod(&c, "slowside", Duration::from_secs(40), "work ended", |p| {
        p["status"]["containerStatuses"][0]["state"]["terminated"].is_object()
    })?;
    ensure!(
        p["status"]["initContainerStatuses"][0]["state"]["running"].is_object()
            && p["status"]["phase"] == "Running",
        "{}",
        p["status"]
    );
    wait_pod(&c, "slowside", Duration::from_secs(30), "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    })?;
    Ok(())
}

#[test]
fn resources_become_cgroup_settings_and_oom_scores() -> Result<()> {
    let c = up(1)?;
    let pod = |name: &str, resources: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: main\n    image: weft.local/busybox:1.36\n    command: [sleep, '3600']\n    resources: {resources}\n"
        )
    };
    c.apply(
        &[
            pod("guaranteed", "{limits: {cpu: 500m, memory: 128Mi}}"),
            pod(
                "burstable",
                "{requests: {cpu: 250m, memory: 1Gi}, limits: {memory: 2Gi}}",
            ),
            pod("besteffort", "{}"),
        ]
        .join("---\n"),
    )?;
    for name in ["guaranteed", "burstable", "besteffort"] {
        wait_pod(&c, name, Duration::from_secs(60), "running", |p| {
            p["status"]["phase"] == "Running"
        })?;
    }
    let node = c.get_json(&["nodes"])?["items"][0].clone();
    let ki: u64 = node["status"]["capacity"]["memory"]
        .as_str()
        .and_then(|m| m.strip_suffix("Ki"))
        .context("memory in Ki")?
        .parse()?;
    let burstable_adj = (1000 - (1000 * (1u64 << 30) / (ki * 1024)) as i64).clamp(2, 999);
    // Without CAP_SYS_RESOURCE (some sandboxes), no score goes below the
    // agent's own (0): the agent runs with the test's capabilities.
    let status = std::fs::read_to_string("/proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("CapEff")?;
    let floor = if eff & (1 << 24) != 0 { -1000 } else { 0 };
    let guaranteed_adj = (-997i64).max(floor);
    let shares = "cat /sys/fs/cgroup/cpu/cpu.shares 2>/dev/null || cat /sys/fs/cgroup/cpu,cpuacct/cpu.shares 2>/dev/null || cat /sys/fs/cgroup/cpu.weight";
    for (name, qos, adj, cpu) in [
        // Shares 512 (v1), or weight 1 + (512-2)*9999/262142 = 20 (v2).
        ("guaranteed", "Guaranteed", guaranteed_adj, ["512", "20"]),
        ("burstable", "Burstable", burstable_adj, ["256", "10"]),
        ("besteffort", "BestEffort", 1000, ["2", "1"]),
    ] {
        let p = c.get_json(&["pod", name])?;
        ensure!(p["status"]["qosClass"] == qos, "{name}: {}", p["status"]);
        ensure!(
            sh(&c, name, "cat /proc/self/oom_score_adj")? == adj.to_string(),
            "{name}: oom_score_adj"
        );
        let got = sh(&c, name, shares)?;
        ensure!(
            cpu.contains(&got.as_str()),
            "{name}: cpu shares/weight {got}, want one of {cpu:?}"
        );
    }
    // Limits: the quota and the memory limit, whichever cgroup version.
    let quota = sh(
        &c,
        "guaranteed",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max",
    )?;
    ensure!(quota == "50000", "cpu quota {quota}");
    let mem = sh(
        &c,
        "guaranteed",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max",
    )?;
    ensure!(mem == (128u64 << 20).to_string(), "memory limit {mem}");
    // A limit alone requests as much (kube's defaulting).
    let p = c.get_json(&["pod", "guaranteed"])?;
    ensure!(
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"] == "500m",
        "{}",
        p["spec"]
    );
    Ok(())
}

#[test]
fn hooks_startup_probes_and_termination_messages() -> Result<()> {
    let c = up(1)?;
    let marks = tempfile::Builder::new().prefix("weft-hooks-").tempdir()?;
    let dir = marks.path().display().to_string();
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 20
  volumes: [{{name: m, hostPath: {{path: {dir}, type: Directory}}}}]
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sh, -c, "trap 'echo term-at-$(date +%s) >> /m/log; exit 0' TERM; while true; do sleep 0.2; done"]
    volumeMounts: [{{name: m, mountPath: /m}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "echo post-start >> /m/log"]}}}}
      preStop: {{exec: {{command: [sh, -c, "echo pre-stop-at-$(date +%s) >> /m/log; sleep 2"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: badhook}}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sleep, "3600"]
    lifecycle:
      postStart: {{httpGet: {{path: /, port: 9}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: slowstart}}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sh, -c, "sleep 3; touch /tmp/up; sleep 3600"]
    startupProbe: {{exec: {{command: [test, -f, /tmp/up]}}, periodSeconds: 1, failureThreshold: 30}}
    readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: neverstarts}}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sleep, "3600"]
    startupProbe: {{exec: {{command: ["false"]}}, periodSeconds: 1, failureThreshold: 2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: lastwords}}
spec:
  restartPolicy: Never
  containers:
  - {{name: file, image: weft.local/busybox:1.36, command: [sh, -c, "echo bye from file > /dev/termination-log; exit 3"]}}
  - {{name: custom, image: weft.local/busybox:1.36, terminationMessagePath: /tmp/why, command: [sh, -c, "echo custom path > /tmp/why"]}}
  - {{name: logs, image: weft.local/busybox:1.36, terminationMessagePolicy: FallbackToLogsOnError, command: [sh, -c, "echo first; echo it broke; exit 2"]}}
"#
    ))?;
    // postStart ran before the pod counted as running.
    wait_pod(&c, "hooked", Duration::from_secs(60), "Running", |p| {
        p["status"]["phase"] == "Running"
    })?;
    let log = std::fs::read_to_string(marks.path().join("log")).unwrap_or_default();
    ensure!(log.starts_with("post-start"), "{log}");
    // A failed postStart: the container is killed and says why.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let events = c.weft(&["get", "events"])?;
        if events.contains("FailedPostStartHook") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no FailedPostStartHook: {events}\n{}",
            container_status(&c, "badhook")?
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = container_status(&c, "badhook")?;
    ensure!(
        st["state"]["running"].is_null(),
        "a container whose postStart failed runs: {st}"
    );
    // Startup probe: not started (nor ready) until it passes.
    let p = wait_pod(&c, "slowstart", Duration::from_secs(30), "running", |p| {
        p["status"]["containerStatuses"][0]["state"]["running"].is_object()
    })?;
    let st = &p["status"]["containerStatuses"][0];
    if st["started"] == false {
        ensure!(st["ready"] == false, "ready before started: {st}");
    }
    wait_pod(
        &c,
        "slowstart",
        Duration::from_secs(30),
        "started and ready",
        |p| {
            let st = &p["status"]["containerStatuses"][0];
            st["started"] == true && st["ready"] == true
        },
    )?;
    let p = wait_pod(
        &c,
        "neverstarts",
        Duration::from_secs(40),
        "restarted",
        |p| p["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(1),
    )?;
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    ensure!(
        last["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Startup probe failed"),
        "{last}"
    );
    // Termination messages.
    let p = wait_pod(&c, "lastwords", Duration::from_secs(40), "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })?;
    let by_name = |n: &str| {
        p["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == n)
            .map(|s| s["state"]["terminated"]["message"].clone())
            .unwrap_or_default()
    };
    ensure!(by_name("file") == "bye from file\n", "{}", p["status"]);
    ensure!(by_name("custom") == "custom path\n", "{}", p["status"]);
    ensure!(by_name("logs") == "first\nit broke", "{}", p["status"]);
    // preStop runs before SIGTERM, and the deletion waits for it.
    let before = Instant::now();
    c.weft(&["delete", "pod", "hooked"])?;
    let took = before.elapsed();
    let log = std::fs::read_to_string(marks.path().join("log"))?;
    let lines: Vec<&str> = log.lines().collect();
    ensure!(
        lines.len() == 3
            && lines[1].starts_with("pre-stop-at-")
            && lines[2].starts_with("term-at-"),
        "{log}"
    );
    let at = |l: &str| {
        l.rsplit('-')
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ensure!(
        at(lines[2]) >= at(lines[1]) + 2,
        "SIGTERM came before the hook's 2 s: {log}"
    );
    ensure!(
        took >= Duration::from_secs(2),
        "the deletion did not wait for preStop: {took:?}"
    );
    Ok(())
}

/// kubectl 1.33 on the lab, in its underlay namespace.
fn kubectl(c: &Cluster, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.33");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    let out = c.output_in(&c.lab.underlay, cmd)?;
    ensure!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn node_affinity_hostname_readiness_gates_and_deadlines() -> Result<()> {
    let c = up(2)?;
    let nodes = c.get_json(&["nodes"])?;
    let names: Vec<String> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    ensure!(names.len() == 2, "{names:?}");
    let target = &names[1];
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: pinned}}
spec:
  hostname: custom-host
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchFields: [{{key: metadata.name, operator: In, values: [{target}]}}]
  containers:
  - {{name: main, image: weft.local/busybox:1.36, command: [sh, -c, "hostname; sleep 3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: nowhere}}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{{key: no-such-label, operator: Exists}}]
  containers:
  - {{name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: gated}}
spec:
  readinessGates: [{{conditionType: example.com/ready}}]
  containers:
  - {{name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: deadline}}
spec:
  activeDeadlineSeconds: 3
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}}
"#
    ))?;
    // Required node affinity: on that node, and nowhere when nothing fits.
    let p = wait_pod(&c, "pinned", Duration::from_secs(60), "running", |p| {
        p["status"]["phase"] == "Running"
    })?;
    ensure!(
        p["spec"]["nodeName"] == target.as_str(),
        "{}",
        p["spec"]["nodeName"]
    );
    ensure!(wait_log(&c, "pinned", "custom-host", Duration::from_secs(20)).is_ok());
    let p = wait_pod(
        &c,
        "nowhere",
        Duration::from_secs(30),
        "unschedulable",
        |p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        },
    )?;
    ensure!(p["spec"]["nodeName"].is_null(), "{}", p["spec"]);
    // A readiness gate holds Ready until its condition is True.
    let p = wait_pod(
        &c,
        "gated",
        Duration::from_secs(60),
        "containers ready",
        |p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "ContainersReady" && c["status"] == "True")
        },
    )?;
    let ready = |p: &Value| {
        p["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    ensure!(!ready(&p), "Ready with its gate closed: {}", p["status"]);
    kubectl(
        &c,
        &[
            "patch",
            "pod",
            "gated",
            "--subresource=status",
            "--type=strategic",
            "-p",
            r#"{"status":{"conditions":[{"type":"example.com/ready","status":"True"}]}}"#,
        ],
    )?;
    wait_pod(&c, "gated", Duration::from_secs(20), "Ready", ready)?;
    // activeDeadlineSeconds: the pod is ended, Failed, DeadlineExceeded.
    let p = wait_pod(&c, "deadline", Duration::from_secs(40), "Failed", |p| {
        p["status"]["phase"] == "Failed"
    })?;
    ensure!(
        p["status"]["reason"] == "DeadlineExceeded",
        "{}",
        p["status"]
    );
    Ok(())
}

fn pvc_json(c: &Cluster, name: &str) -> Result<Value> {
    c.get_json(&["pvc", name])
}

#[test]
fn persistent_volumes_keep_data_across_pods_and_agent_restarts() -> Result<()> {
    let mut c = up(2)?;
    let host = tempfile::Builder::new().prefix("weft-pv-").tempdir()?;
    std::fs::write(host.path().join("greeting"), "from the host\n")?;
    let pod = |name: &str, claim: &str, cmd: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{extra}  terminationGracePeriodSeconds: 1\n  volumes: [{{name: d, persistentVolumeClaim: {{claimName: {claim}}}}}]\n  containers:\n  - {{name: main, image: weft.local/busybox:1.36, command: [sh, -c, \"{cmd}; sleep 3600\"], volumeMounts: [{{name: d, mountPath: /data}}]}}\n"
        )
    };
    // The default class: WaitForFirstConsumer, so the claim waits for a pod.
    let classes = c.weft(&["get", "storageclasses"])?;
    ensure!(
        classes.contains("local-path (default)") && classes.contains("WaitForFirstConsumer"),
        "{classes}"
    );
    c.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: data}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}\n")?;
    let pvc = pvc_json(&c, "data")?;
    ensure!(
        pvc["spec"]["storageClassName"] == "local-path" && pvc["status"]["phase"] == "Pending",
        "{pvc}"
    );
    c.apply(&pod("writer", "data", "echo kept > /data/f", ""))?;
    wait_pod(&c, "writer", Duration::from_secs(60), "running", |p| {
        p["status"]["phase"] == "Running"
    })?;
    let pvc = pvc_json(&c, "data")?;
    ensure!(
        pvc["status"]["phase"] == "Bound" && pvc["status"]["capacity"]["storage"] == "64Mi",
        "{pvc}"
    );
    let pv_name = pvc["spec"]["volumeName"]
        .as_str()
        .context("bound")?
        .to_string();
    let pv = c.get_json(&["pv", &pv_name])?;
    let node = c.get_json(&["pod", "writer"])?["spec"]["nodeName"]
        .as_str()
        .context("node")?
        .to_string();
    ensure!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchFields"][0]["values"]
            [0]
            == node.as_str(),
        "{pv}"
    );
    ensure!(
        pv["status"]["phase"] == "Bound" && pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete",
        "{pv}"
    );
    // The pod goes; a new one returns to the data, on its node, although
    // the other node is emptier (a pod holding a CPU of this one).
    c.weft(&["delete", "pod", "writer"])?;
    c.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: ballast}}\nspec:\n  nodeSelector: {{kubernetes.io/hostname: {node}}}\n  containers:\n  - {{name: main, image: weft.local/busybox:1.36, command: [sleep, '3600'], resources: {{requests: {{cpu: 900m}}}}}}\n"
    ))?;
    c.apply(&pod("reader", "data", "cat /data/f", ""))?;
    let log = wait_log(&c, "reader", "kept", Duration::from_secs(60))?;
    ensure!(log.contains("kept"));
    ensure!(
        c.get_json(&["pod", "reader"])?["spec"]["nodeName"] == node.as_str(),
        "the pod left its data"
    );
    // An agent restart keeps it.
    c.kill_agent(&node)?;
    c.start_agent(&node)?;
    c.wait_nodes_ready(Duration::from_secs(60))?;
    let (code, out) = c.exec("default", "reader", &["cat", "/data/f"])?;
    ensure!(
        code == 0 && out.trim() == "kept",
        "after an agent restart: {out}"
    );
    // The claim goes: its volume is Released, then deleted with its data.
    c.weft(&["delete", "pod", "reader"])?;
    c.weft(&["delete", "pvc", "data"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.weft_output(&["get", "pv", &pv_name])?.status.success() {
        ensure!(
            Instant::now() < deadline,
            "the volume of a deleted claim stays: {}",
            c.weft(&["get", "pv"])?
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // ... and its node's agent removes the data.
    let data = c
        .lab
        .node_state_dir(c.lab.node(&node))
        .join("sandbox/persistent")
        .join(&pv_name);
    wait_until(Duration::from_secs(40), || (!data.exists()).then_some(()))
        .with_context(|| format!("{} stays", data.display()))?;
    // Retain keeps volume and data.
    c.apply("apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: keep}\nprovisioner: weft.dev/local-path\nreclaimPolicy: Retain\nvolumeBindingMode: WaitForFirstConsumer\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: kept}\nspec: {storageClassName: keep, accessModes: [ReadWriteOnce], resources: {requests: {storage: 10Mi}}}\n")?;
    c.apply(&pod("keeper", "kept", "echo precious > /data/f", ""))?;
    wait_pod(&c, "keeper", Duration::from_secs(60), "running", |p| {
        p["status"]["phase"] == "Running"
    })?;
    let kept_pv = pvc_json(&c, "kept")?["spec"]["volumeName"]
        .as_str()
        .context("bound")?
        .to_string();
    c.weft(&["delete", "pod", "keeper"])?;
    c.weft(&["delete", "pvc", "kept"])?;
    let pv = wait_until(Duration::from_secs(20), || {
        let pv = c.get_json(&["pv", &kept_pv]).ok()?;
        (pv["status"]["phase"] == "Released").then_some(pv)
    })?;
    ensure!(pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain");
    let kept_node =
        c.get_json(&["pv", &kept_pv])?["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
            ["matchFields"][0]["values"][0]
            .clone();
    let kept_data = c
        .lab
        .node_state_dir(c.lab.node(kept_node.as_str().unwrap_or_default()))
        .join("sandbox/persistent")
        .join(&kept_pv)
        .join("f");
    std::thread::sleep(Duration::from_secs(12));
    ensure!(
        std::fs::read_to_string(&kept_data)?.trim() == "precious",
        "Retain lost the data"
    );
    // A volume an admin made (hostPath) binds to a claim of its class.
    c.apply(&format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: manual}}\nspec:\n  storageClassName: manual\n  capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{path: {}, type: Directory}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: static}}\nspec: {{storageClassName: manual, accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 100Mi}}}}}}\n",
        host.path().display()
    ))?;
    wait_until(Duration::from_secs(20), || {
        (pvc_json(&c, "static").ok()?["spec"]["volumeName"] == "manual").then_some(())
    })?;
    c.apply(&pod("static-reader", "static", "cat /data/greeting", ""))?;
    wait_log(
        &c,
        "static-reader",
        "from the host",
        Duration::from_secs(60),
    )?;
    // A claim no volume can hold stays Pending, and its pod unscheduled.
    c.apply("apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: huge}\nspec: {storageClassName: manual, accessModes: [ReadWriteOnce], resources: {requests: {storage: 5Gi}}}\n")?;
    c.apply(&pod("waiting", "huge", "true", ""))?;
    let p = wait_pod(
        &c,
        "waiting",
        Duration::from_secs(20),
        "unschedulable",
        |p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        },
    )?;
    ensure!(
        p.to_string()
            .contains("unbound immediate PersistentVolumeClaims"),
        "{}",
        p["status"]
    );
    Ok(())
}

fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The bcrypt hash of `weft-pull-test` (the registry's htpasswd entry).
const PULL_HASH: &str = "$2b$12$XRXMkVSf0aY4RZSkxluy3uLHipcLKuDSWxz/8hckOkolB6AI4q2tq";

#[test]
fn private_registries_need_their_pull_secret() -> Result<()> {
    const ADDR: &str = "192.0.2.1:5001";
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut spec = ClusterSpec::new(1);
    spec.agent_args = ["--restart-backoff", "1s", "--insecure-registry", ADDR]
        .map(String::from)
        .to_vec();
    let c = rt.block_on(Cluster::up(spec, |_| {}))?;
    // A registry that wants a login, in the lab's underlay.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("htpasswd"), format!("puller:{PULL_HASH}\n"))?;
    let cfg = dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {ADDR}}}\nauth:\n  htpasswd: {{realm: weft, path: {}}}\n",
            dir.path().join("data").display(),
            dir.path().join("htpasswd").display()
        ),
    )?;
    let mut cmd = std::process::Command::new("docker-registry");
    cmd.arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    weft_lab::cluster::in_netns(&mut cmd, &c.lab.underlay, false)?;
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _registry = Kill(cmd.spawn().context("start docker-registry")?);
    use weft_agent::runtime::registry::{Credentials, RegistryOptions};
    let n1 = c.lab.node("n1").clone();
    let opts = RegistryOptions {
        plain_http: vec![ADDR.into()],
        netns: Some(n1.netns.clone()),
        timeout: Some(Duration::from_secs(3)),
    };
    let runtime =
        weft_lab::topology::node_runtime(&c.dir.join("n1"), &c.lab.weft_bin, opts.clone())?;
    let image = format!("{ADDR}/private/busybox:1");
    let login = Credentials {
        username: "puller".into(),
        password: "weft-pull-test".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match runtime.images().push_as(
            weft_agent::runtime::busybox::BUSYBOX_IMAGE,
            &image,
            &opts,
            Some(&login),
        ) {
            Ok(_) => break,
            Err(e) => ensure!(Instant::now() < deadline, "push: {e}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    ensure!(
        runtime
            .images()
            .push(weft_agent::runtime::busybox::BUSYBOX_IMAGE, &image, &opts)
            .is_err(),
        "the registry takes anonymous pushes: the test proves nothing"
    );
    use base64::Engine as _;
    let config = |user: &str, pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        base64::engine::general_purpose::STANDARD
            .encode(format!(r#"{{"auths":{{"{ADDR}":{{"auth":"{auth}"}}}}}}"#))
    };
    let pod = |name: &str, secret: Option<&str>| {
        let secrets = secret.map_or(String::new(), |s| {
            format!("  imagePullSecrets: [{{name: {s}}}]\n")
        });
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{secrets}  containers:\n  - {{name: main, image: '{image}', imagePullPolicy: Always, command: [sleep, '3600']}}\n"
        )
    };
    c.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred}}\ntype: kubernetes.io/dockerconfigjson\ndata: {{.dockerconfigjson: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: wrong}}\ntype: kubernetes.io/dockerconfigjson\ndata: {{.dockerconfigjson: {}}}\n",
        config("puller", "weft-pull-test"),
        config("puller", "not-it")
    ))?;
    c.apply(
        &[
            pod("with", Some("regcred")),
            pod("without", None),
            pod("badlogin", Some("wrong")),
        ]
        .join("---\n"),
    )?;
    wait_pod(&c, "with", Duration::from_secs(60), "Running", |p| {
        p["status"]["phase"] == "Running"
    })?;
    for name in ["without", "badlogin"] {
        let p = wait_pod(&c, name, Duration::from_secs(40), "a pull error", |p| {
            matches!(
                p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].as_str(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        })?;
        let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"].to_string();
        ensure!(
            msg.to_lowercase().contains("not authorized"),
            "{name}: {msg}"
        );
    }
    let agent = c.agent_log("n1");
    ensure!(
        !agent.contains("weft-pull-test") && !agent.contains("not-it"),
        "a password is in the agent's log"
    );
    Ok(())
}

/// Runs `sh -c script` in container `container` of pod `name`: (exit code,
/// standard output and error).
fn sh_in(c: &Cluster, name: &str, container: &str, script: &str) -> Result<(i32, String)> {
    let out = c.weft_output(&["exec", name, "-c", container, "--", "sh", "-c", script])?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text.trim().to_string()))
}

/// The sandbox processes (`weft pause`) on this machine of pods whose host
/// name is `hostname`: their PIDs.
fn pause_pids(hostname: &str) -> Vec<i32> {
    let wanted = format!("pause\0--hostname\0{hostname}\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&wanted))
        })
        .collect()
}

#[test]
fn containers_of_a_pod_share_its_namespaces_and_processes_when_asked() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  containers:
  - {name: app, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
  - {name: tool, image: weft.local/busybox:1.36, command: [sleep, "3601"]}
---
apiVersion: v1
kind: Pod
metadata: {name: apart}
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - {name: app, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
  - {name: tool, image: weft.local/busybox:1.36, command: [sleep, "3601"]}
  - {name: third, image: weft.local/busybox:1.36, command: [sleep, "3602"]}
"#,
    )?;
    for name in ["shared", "apart"] {
        wait_pod(&c, name, Duration::from_secs(60), "running", |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|s| s.len() >= 2 && s.iter().all(|s| s["ready"] == true))
        })?;
    }
    let ns = |pod: &str, container: &str| -> Result<String> {
        let (code, out) = sh_in(
            &c,
            pod,
            container,
            "for n in pid ipc uts; do readlink /proc/self/ns/$n; done; hostname",
        )?;
        ensure!(code == 0, "{pod}/{container}: {out}");
        Ok(out)
    };
    // Both pods: one IPC and one UTS namespace (the pod's host name) for
    // all their containers, and not another pod's.
    let (shared_app, shared_tool) = (ns("shared", "app")?, ns("shared", "tool")?);
    let (apart_app, apart_tool) = (ns("apart", "app")?, ns("apart", "tool")?);
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    let (sa, st, aa, at) = (
        lines(&shared_app),
        lines(&shared_tool),
        lines(&apart_app),
        lines(&apart_tool),
    );
    ensure!(sa.len() == 4 && aa.len() == 4, "{sa:?} {aa:?}");
    ensure!(sa == st, "shared: {sa:?} vs {st:?}");
    ensure!(sa[3] == "shared" && aa[3] == "apart", "{sa:?} {aa:?}");
    ensure!(
        aa[1..] == at[1..],
        "apart: IPC and UTS shared: {aa:?} vs {at:?}"
    );
    ensure!(
        aa[0] != at[0],
        "apart: a PID namespace each: {aa:?} vs {at:?}"
    );
    ensure!(
        sa[1] != aa[1],
        "each pod its own IPC namespace: {sa:?} {aa:?}"
    );

    // POSIX shared memory is the pod's too: one /dev/shm (a tmpfs of the
    // pod's), not another pod's.
    let (code, out) = sh_in(&c, "apart", "app", "echo pod-memory > /dev/shm/mark")?;
    ensure!(code == 0, "{out}");
    let (code, out) = sh_in(&c, "apart", "tool", "cat /dev/shm/mark")?;
    ensure!(code == 0 && out == "pod-memory", "{out}");
    let (code, out) = sh_in(&c, "shared", "tool", "cat /dev/shm/mark")?;
    ensure!(code != 0, "another pod's /dev/shm: {out}");
    let apart_uid = c.get_json(&["pod", "apart"])?["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        pod_mounts(&apart_uid)?.iter().any(|m| m.ends_with("/shm")),
        "{:?}",
        pod_mounts(&apart_uid)?
    );

    // Without sharing, each container is PID 1 of its own namespace.
    let (_, pid1) = sh_in(&c, "apart", "tool", "cat /proc/1/cmdline | tr '\\0' ' '")?;
    ensure!(pid1.starts_with("sleep 3601"), "{pid1}");
    // With it, PID 1 is the pod's sandbox process and the other
    // container's processes are in sight.
    let (_, pid1) = sh_in(&c, "shared", "tool", "cat /proc/1/cmdline | tr '\\0' ' '")?;
    ensure!(pid1.contains(" pause "), "{pid1}");
    let (_, ps) = sh_in(&c, "shared", "tool", "ps -o pid,args")?;
    ensure!(
        ps.contains("sleep 3600") && ps.contains("sleep 3601"),
        "{ps}"
    );

    // The sandbox process as an attacker in the pod sees it: root with
    // CAP_KILL cannot kill it, and its root, environment and memory are
    // closed (no CAP_SYS_PTRACE, not dumpable).
    let (_, out) = sh_in(
        &c,
        "shared",
        "tool",
        "kill -9 1; kill -TERM 1; sleep 0.5; kill -0 1 && echo alive; \
         ls /proc/1/root/ >/dev/null 2>&1 && echo root-open; \
         cat /proc/1/environ >/dev/null 2>&1 && echo environ-open; \
         cat /proc/1/maps >/dev/null 2>&1 && echo maps-open; true",
    )?;
    ensure!(out == "alive", "{out}");
    // On the node: unprivileged, in the pod's cgroup.
    let pauses = pause_pids("shared");
    ensure!(pauses.len() == 1, "{pauses:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", pauses[0]))?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    ensure!(field("Uid:") == "65535 65535 65535 65535", "{status}");
    ensure!(field("CapEff:") == "0000000000000000", "{status}");
    ensure!(field("NoNewPrivs:") == "1", "{status}");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pauses[0]))?;
    ensure!(cgroup.contains("/_pause"), "{cgroup}");
    // In the pod's network namespace, as kubelet's pause container is.
    let (_, pod_net) = sh_in(&c, "shared", "tool", "readlink /proc/self/ns/net")?;
    let pause_net = std::fs::read_link(format!("/proc/{}/ns/net", pauses[0]))?;
    ensure!(
        pause_net.to_string_lossy() == pod_net,
        "{pause_net:?} vs {pod_net}"
    );

    // One container signals another (the reason to share): it restarts,
    // in the same PID namespace.
    let (code, out) = sh_in(
        &c,
        "shared",
        "tool",
        "for p in /proc/[0-9]*; do \
           [ \"$(tr '\\0' ' ' < $p/cmdline)\" = 'sleep 3600 ' ] && kill ${p#/proc/} && echo killed; \
         done; true",
    )?;
    ensure!(code == 0 && out == "killed", "{out}");
    wait_pod(
        &c,
        "shared",
        Duration::from_secs(60),
        "app restarted",
        |p| {
            p["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "app" && s["restartCount"] == 1 && s["ready"] == true)
        },
    )?;
    ensure!(
        lines(&ns("shared", "app")?) == sa,
        "the same namespaces after a restart"
    );

    // Deleting the pods takes their sandbox processes. The containers stop
    // together, within the one grace period: three that ignore SIGTERM
    // (each is PID 1 of its namespace) take one grace period, not three.
    let t0 = Instant::now();
    c.weft(&["delete", "pod", "apart"])?;
    let took = t0.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "a 4 s grace period took {took:?} for three containers"
    );
    c.weft(&["delete", "pod", "shared"])?;
    ensure!(
        pod_mounts(&apart_uid)?.is_empty(),
        "{:?}",
        pod_mounts(&apart_uid)?
    );
    wait_until(Duration::from_secs(60), || {
        (pause_pids("shared").is_empty() && pause_pids("apart").is_empty()).then_some(())
    })
    .context("sandbox processes outlive their pods")?;
    Ok(())
}

#[test]
fn sub_paths_of_writable_volumes_are_mounted_and_cannot_escape() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: subs}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: scratch, emptyDir: {}}
  initContainers:
  - name: seed
    image: weft.local/busybox:1.36
    command: [sh, -c, "mkdir -p /s/data && echo seeded > /s/data/f && ln -s data /s/alias"]
    volumeMounts: [{name: scratch, mountPath: /s}]
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sh, -c, "echo via=$(cat /d/f) alias=$(cat /a/f); echo new > /n/w; echo done; sleep 3600"]
    volumeMounts:
    - {name: scratch, mountPath: /d, subPath: data}
    - {name: scratch, mountPath: /a, subPath: alias}
    - {name: scratch, mountPath: /n, subPath: made/here}
  - name: peek
    image: weft.local/busybox:1.36
    command: [sleep, "3600"]
    volumeMounts: [{name: scratch, mountPath: /s}]
---
apiVersion: v1
kind: Pod
metadata: {name: escape}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: scratch, emptyDir: {}}
  initContainers:
  - name: plant
    image: weft.local/busybox:1.36
    command: [sh, -c, "ln -s / /s/root && ln -s ../../../../../.. /s/up"]
    volumeMounts: [{name: scratch, mountPath: /s}]
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sh, -c, "ls /host; sleep 3600"]
    volumeMounts: [{name: scratch, mountPath: /host, subPath: root}]
"#,
    )?;
    // Directories of the volume, a symlink within it, and one made.
    let log = wait_log(&c, "subs", "done", Duration::from_secs(60))?;
    ensure!(log.contains("via=seeded alias=seeded"), "{log}");
    let (code, out) = sh_in(&c, "subs", "peek", "cat /s/made/here/w")?;
    ensure!(code == 0 && out == "new", "{out}");

    // A symlink planted to lead out of the volume: the container is not
    // started, and the status says why.
    let p = wait_pod(&c, "escape", Duration::from_secs(60), "refused", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("outside its volume"))
    })?;
    ensure!(
        p["status"]["containerStatuses"][0]["state"]["running"].is_null(),
        "{}",
        p["status"]
    );
    // Tried again with back-off (1 s here), and, never having run, not
    // counted as restarted; the reason is an Event too.
    std::thread::sleep(Duration::from_secs(4));
    let p = c.get_json(&["pod", "escape"])?;
    ensure!(
        p["status"]["containerStatuses"][0]["restartCount"] == 0,
        "{}",
        p["status"]
    );
    let events = c.weft(&["get", "events"])?;
    ensure!(
        events
            .lines()
            .any(|l| l.contains("Failed") && l.contains("outside its volume")),
        "{events}"
    );
    // The pod's cleanup unmounts its staged subpaths.
    let uid = c.get_json(&["pod", "subs"])?["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        pod_mounts(&uid)?.iter().any(|m| m.contains("/subpaths/")),
        "{:?}",
        pod_mounts(&uid)?
    );
    c.weft(&["delete", "pod", "subs", "escape"])?;
    ensure!(pod_mounts(&uid)?.is_empty(), "{:?}", pod_mounts(&uid)?);
    Ok(())
}

#[test]
fn a_deletion_does_not_wait_for_a_probe_kill_and_ended_runs_have_times() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  terminationGracePeriodSeconds: 6
  containers:
  - name: failing
    image: weft.local/busybox:1.36
    command: [sleep, "3600"]
    startupProbe: {exec: {command: ["false"]}, periodSeconds: 1, failureThreshold: 1}
  - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, "sleep 1; exit 3"]}
"#,
    )?;
    // A run that ended says when it started and finished (kubectl
    // describe shows both).
    let p = wait_pod(&c, "done", Duration::from_secs(60), "failed", |p| {
        p["status"]["phase"] == "Failed"
    })?;
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    let (started, finished) = (
        t["startedAt"].as_str().unwrap_or_default(),
        t["finishedAt"].as_str().unwrap_or_default(),
    );
    ensure!(
        t["exitCode"] == 3 && !started.is_empty() && finished > started,
        "{t}"
    );
    // The failing container is being killed (its sleep, PID 1, ignores
    // SIGTERM: the kill takes the 6 s grace period). A deletion meanwhile
    // starts at once: the pod is gone in one grace period, not two.
    let node = c.lab.nodes[0].name.clone();
    wait_until(Duration::from_secs(60), || {
        c.agent_log(&node)
            .contains("startup probe failed; killing")
            .then_some(())
    })
    .context("the startup probe never failed")?;
    let t0 = Instant::now();
    c.weft(&["delete", "pod", "probed"])?;
    let took = t0.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "a 6 s grace period took {took:?} while a probe kill was under way"
    );
    Ok(())
}

#[test]
fn a_deployment_counts_pods_available_after_min_ready_seconds() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: steady}
spec:
  replicas: 1
  minReadySeconds: 6
  selector: {matchLabels: {app: steady}}
  template:
    metadata: {labels: {app: steady}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    let ready_at = wait_until(Duration::from_secs(60), || {
        let d = c.get_json(&["deployment", "steady"]).ok()?;
        (d["status"]["readyReplicas"] == 1).then(Instant::now)
    })?;
    // Ready, not yet available: for minReadySeconds.
    let d = c.get_json(&["deployment", "steady"])?;
    ensure!(
        d["status"]["availableReplicas"].as_i64().unwrap_or(0) == 0,
        "available at once: {}",
        d["status"]
    );
    let rs = c.get_json(&["replicasets", "-l", "app=steady"])?;
    ensure!(
        rs["items"][0]["spec"]["minReadySeconds"] == 6,
        "{}",
        rs["items"][0]["spec"]
    );
    let available_at = wait_until(Duration::from_secs(30), || {
        let d = c.get_json(&["deployment", "steady"]).ok()?;
        (d["status"]["availableReplicas"] == 1).then(Instant::now)
    })?;
    let after = available_at - ready_at;
    ensure!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(15),
        "available {after:?} after ready"
    );
    Ok(())
}
