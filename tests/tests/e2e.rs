//! End to end on a real 3-node lab: a `weft controller` and three `weft
//! agent` processes in network namespaces, driven through the `weft` CLI as
//! a user would, with traffic between real pods (runc, veths, routes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};

/// A web Deployment: every replica serves "<page> from <pod name>" and
/// exits at once on SIGTERM (a shell as PID 1 would otherwise ignore it and
/// wait out the grace period).
fn web(replicas: u32, image: &str, page: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: httpd
        image: {image}
        command: ["sh", "-c", "mkdir -p /www && echo {page} from $(hostname) > /www/index.html && httpd -f -p 80 -h /www & trap 'exit 0' TERM; wait"]
        readinessProbe:
          httpGet: {{path: /, port: 80}}
          periodSeconds: 1
"#
    )
}

/// A cluster of `nodes` nodes with these extra controller and agent flags.
fn up(nodes: usize, controller_args: &[&str], agent_args: &[&str]) -> Result<Cluster> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut spec = ClusterSpec::new(nodes);
    spec.controller_args = controller_args.iter().map(|a| (*a).to_string()).collect();
    spec.agent_args = agent_args.iter().map(|a| (*a).to_string()).collect();
    rt.block_on(Cluster::up(spec, |_| {}))
}

fn pods(c: &Cluster, selector: &str) -> Result<Vec<Value>> {
    let v = c.get_json(&["pods", "-l", selector])?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

fn name(p: &Value) -> String {
    p["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ready(p: &Value) -> bool {
    pod_ready(p) && p["status"]["phase"] == "Running"
}

/// Waits until exactly `n` pods match `selector`, all Ready (and none
/// terminating); returns them.
fn wait_ready(c: &Cluster, selector: &str, n: usize, timeout: Duration) -> Result<Vec<Value>> {
    wait_ready_where(c, selector, n, timeout, |_| true)
}

/// [`wait_ready`], where every pod also passes `also`.
fn wait_ready_where(
    c: &Cluster,
    selector: &str,
    n: usize,
    timeout: Duration,
    also: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let ps = pods(c, selector)?;
        if ps.len() == n && ps.iter().all(|p| ready(p) && also(p)) {
            return Ok(ps);
        }
        if Instant::now() > deadline {
            let summary: Vec<String> = ps
                .iter()
                .map(|p| format!("{} {} ready={}", name(p), p["status"]["phase"], ready(p)))
                .collect();
            bail!(
                "after {timeout:?}, {} pods instead of {n} ready: {summary:?}\ncontroller:\n{}\nagent n1:\n{}",
                ps.len(),
                tail(&c.controller_log()),
                tail(&c.agent_log("n1"))
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn by_node(ps: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for p in ps {
        m.entry(
            p["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
        .or_default()
        .push(p.clone());
    }
    m
}

/// From one pod on every node, fetches every pod's page by its IP and
/// checks that the right pod answered.
fn check_reachable(c: &Cluster, ps: &[Value], page: &str) -> Result<()> {
    for (node, on_node) in by_node(ps) {
        let from = name(&on_node[0]);
        for target in ps {
            let ip = target["status"]["podIP"].as_str().context("no podIP")?;
            // busybox's wget -T crashes; timeout(1) bounds it instead.
            let (code, out) = c.exec(
                "default",
                &from,
                &["timeout", "5", "wget", "-qO-", &format!("http://{ip}/")],
            )?;
            let want = format!("{page} from {}", name(target));
            if code != 0 || out.trim() != want {
                bail!(
                    "{from} on {node} -> {} at {ip} on {}: exit {code}, {out:?} (wanted {want:?})",
                    name(target),
                    target["spec"]["nodeName"]
                );
            }
        }
    }
    Ok(())
}

/// Every node holds exactly the pods the API binds to it: records,
/// containers, namespaces and veths, one each per pod.
fn check_nothing_left(c: &Cluster, ps: &[Value]) -> Result<()> {
    let api = by_node(ps);
    for n in &c.lab.nodes {
        let want: BTreeSet<String> = api
            .get(&n.name)
            .map(|v| v.iter().map(|p| format!("default/{}", name(p))).collect())
            .unwrap_or_default();
        let [records, containers, namespaces, veths] = c.node_inventory(&n.name)?;
        let got: BTreeSet<String> = records.iter().cloned().collect();
        if got != want
            || containers.len() != want.len()
            || namespaces.len() != want.len()
            || veths.len() != want.len()
        {
            bail!(
                "node {}: API has {want:?}; node has records {records:?}, containers {containers:?}, namespaces {namespaces:?}, veths {veths:?}",
                n.name
            );
        }
    }
    Ok(())
}

#[test]
fn deployment_spreads_reaches_scales_and_rolls() -> Result<()> {
    let c = up(3, &[], &[])?;

    // Six replicas, all Running and Ready, spread over the three nodes.
    c.apply(&web(6, "weft.local/busybox:1.36", "v1"))?;
    let ps = wait_ready(&c, "app=web", 6, Duration::from_secs(60))?;
    let spread = by_node(&ps);
    let counts: Vec<usize> = spread.values().map(Vec::len).collect();
    assert_eq!(spread.len(), 3, "pods on every node: {spread:?}");
    assert!(
        counts.iter().max() <= Some(&2),
        "six replicas spread evenly over three nodes: {counts:?}"
    );
    for p in &ps {
        let node = c
            .lab
            .node(p["spec"]["nodeName"].as_str().unwrap_or_default());
        assert_eq!(
            p["status"]["hostIP"],
            node.ip.to_string(),
            "hostIP of {}",
            name(p)
        );
    }
    let table = c.weft(&["get", "pods", "-l", "app=web", "--no-headers"])?;
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(table.lines().all(|l| l.starts_with("web-")), "{table}");
    // Every pod reachable by IP from pods on every node.
    check_reachable(&c, &ps, "v1")?;

    // Scale to 12 and back to 3: nothing left behind on any node.
    c.weft(&["scale", "deployment", "web", "--replicas", "12"])?;
    let ps = wait_ready(&c, "app=web", 12, Duration::from_secs(60))?;
    check_nothing_left(&c, &ps)?;
    c.weft(&["scale", "deployment", "web", "--replicas", "3"])?;
    let ps = wait_ready(&c, "app=web", 3, Duration::from_secs(60))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match check_nothing_left(&c, &ps) {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }

    // A rolling update to a new image: the old pods are replaced one by one
    // and the number of Ready pods never drops below the replica count
    // (maxUnavailable 25% of 3 rounds down to 0).
    c.apply(&web(3, "weft.local/busybox:v2", "v2"))?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut min_ready = usize::MAX;
    let ps = loop {
        let ps = pods(&c, "app=web")?;
        min_ready = min_ready.min(ps.iter().filter(|p| ready(p)).count());
        let done = ps.len() == 3
            && ps.iter().all(|p| {
                ready(p) && p["spec"]["containers"][0]["image"] == "weft.local/busybox:v2"
            });
        if done {
            break ps;
        }
        if Instant::now() > deadline {
            bail!("the rollout did not finish: {ps:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        min_ready >= 3,
        "Ready pods dropped to {min_ready} during the rollout"
    );
    check_reachable(&c, &ps, "v2")?;
    let statuses: Vec<&Value> = ps
        .iter()
        .map(|p| &p["status"]["containerStatuses"][0])
        .collect();
    for s in statuses {
        assert_eq!(s["image"], "weft.local/busybox:v2");
        assert_eq!(s["restartCount"], 0);
    }
    Ok(())
}

#[test]
fn agent_restart_and_node_failure() -> Result<()> {
    let grace = Duration::from_secs(6);
    let mut c = up(3, &["--node-grace", "6s", "--eviction-delay", "0s"], &[])?;
    c.apply(&web(6, "weft.local/busybox:1.36", "v1"))?;
    let before = wait_ready(&c, "app=web", 6, Duration::from_secs(60))?;

    // An agent restart changes nothing for the running pods: same pods,
    // same containers (start time, restart count), same addresses.
    let snapshot = |ps: &[Value]| -> BTreeMap<String, (Value, Value, Value)> {
        ps.iter()
            .map(|p| {
                let s = &p["status"]["containerStatuses"][0];
                (
                    p["metadata"]["uid"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    (
                        s["state"]["running"]["startedAt"].clone(),
                        s["restartCount"].clone(),
                        p["status"]["podIP"].clone(),
                    ),
                )
            })
            .collect()
    };
    let [_, containers_before, _, _] = c.node_inventory("n1")?;
    c.kill_agent("n1")?;
    c.start_agent("n1")?;
    // Long enough for the new agent to list, adopt and sync every pod.
    std::thread::sleep(Duration::from_secs(4));
    let after = wait_ready(&c, "app=web", 6, Duration::from_secs(30))?;
    assert_eq!(
        snapshot(&before),
        snapshot(&after),
        "an agent restart changed the pods"
    );
    let [_, containers_after, _, _] = c.node_inventory("n1")?;
    assert_eq!(containers_before, containers_after);
    assert!(
        c.agent_log("n1").matches("pod started").count()
            == before
                .iter()
                .filter(|p| p["spec"]["nodeName"] == "n1")
                .count(),
        "the restarted agent started pods again:\n{}",
        c.agent_log("n1")
    );
    check_reachable(&c, &after, "v1")?;

    // A pod deleted while its agent is down is cleaned up when it returns.
    let on_n2: Vec<String> = after
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n2")
        .map(name)
        .collect();
    let victim = on_n2.first().context("no pod on n2")?.clone();
    c.kill_agent("n2")?;
    c.weft(&["delete", "pod", &victim, "--wait=false"])?;
    c.start_agent("n2")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let [records, ..] = c.node_inventory("n2")?;
        let gone_from_api = !pods(&c, "app=web")?.iter().any(|p| name(p) == victim);
        if gone_from_api && !records.contains(&format!("default/{victim}")) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{victim} still there after its agent came back: records {records:?}\n{}",
                c.agent_log("n2")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let now = wait_ready(&c, "app=web", 6, Duration::from_secs(30))?;

    // A StatefulSet's pod on n3, to see that a lost node does not let its
    // identity run twice.
    c.apply(
        "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db}\nspec:\n  serviceName: db\n  replicas: 1\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec:\n      nodeSelector: {kubernetes.io/hostname: n3}\n      terminationGracePeriodSeconds: 1\n      containers:\n      - {name: main, image: weft.local/busybox:1.36, command: [sleep, '3600']}\n",
    )?;
    let db = wait_ready(&c, "app=db", 1, Duration::from_secs(60))?;
    let db_uid = db[0]["metadata"]["uid"].clone();

    // Node n3 fails: its agent is killed and its containers are gone.
    let lost: Vec<String> = now
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n3")
        .map(name)
        .collect();
    assert!(!lost.is_empty(), "n3 runs some of the pods");
    c.fail_node("n3")?;
    let failed_at = Instant::now();
    // NotReady within the grace period (plus a lease interval and one of the
    // node controller's sweeps, every grace/5).
    let not_ready_after = loop {
        if !c.node_ready("n3")? {
            break failed_at.elapsed();
        }
        if failed_at.elapsed() > grace + Duration::from_secs(10) {
            bail!(
                "n3 still Ready {:?} after its agent died",
                failed_at.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        not_ready_after <= grace + Duration::from_secs(3),
        "NotReady after {not_ready_after:?}, grace {grace:?}"
    );
    // Its pods are recreated on the other nodes and reachable again.
    let moved = wait_ready_where(&c, "app=web", 6, Duration::from_secs(30), |p| {
        p["spec"]["nodeName"] != "n3"
    })?;
    let failover = failed_at.elapsed();
    assert!(
        moved.iter().all(|p| !lost.contains(&name(p))),
        "the lost pods were replaced"
    );
    assert!(
        failover <= grace + Duration::from_secs(10),
        "failover took {failover:?} (NotReady after {not_ready_after:?}); pods: {:#?}\ncontroller:\n{}",
        moved
            .iter()
            .map(|p| format!(
                "{} on {} created {} conditions {}",
                name(p),
                p["spec"]["nodeName"],
                p["metadata"]["creationTimestamp"],
                p["status"]["conditions"]
            ))
            .collect::<Vec<_>>(),
        tail(&c.controller_log())
    );
    check_reachable(&c, &moved, "v1")?;
    // The set's pod was evicted too, but only marked: the same pod stays,
    // Terminating, and no second db-0 is made while n3 may still run it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = c.get_json(&["pod", "db-0"])?;
        ensure!(
            p["metadata"]["uid"] == db_uid,
            "db-0 was made again: {}",
            p["metadata"]
        );
        if p["metadata"]["deletionTimestamp"].is_string() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "db-0 not evicted: {}",
            p["metadata"]
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(3));
    let p = c.get_json(&["pod", "db-0"])?;
    ensure!(
        p["metadata"]["uid"] == db_uid,
        "db-0 was made again: {}",
        p["metadata"]
    );
    c.weft(&["delete", "sts", "db"])?;

    // Routes follow the Nodes: n3's Node deleted, its block leaves the
    // other nodes' routes; n3 registers again, with the same block, and
    // the route is back.
    let n3_block = c.get_json(&["node", "n3"])?["spec"]["podCIDR"]
        .as_str()
        .context("n3 has no block")?
        .to_string();
    assert!(
        route_to(&c, "n1", &n3_block)?,
        "n1 has no route to {n3_block}"
    );
    c.weft(&["delete", "node", "n3"])?;
    // With its Node gone, the set's pod goes too (kube's pod GC).
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get_json(&["pod", "db-0"]).is_ok() {
        ensure!(
            Instant::now() < deadline,
            "db-0 stayed after its Node was deleted"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while route_to(&c, "n1", &n3_block)? || route_to(&c, "n2", &n3_block)? {
        if Instant::now() > deadline {
            bail!("the route to deleted node n3's block {n3_block} stayed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // n3 comes back: Ready again, and what was left of its pods is removed.
    c.start_agent("n3")?;
    c.wait_nodes_ready(Duration::from_secs(30))?;
    let again = c.get_json(&["node", "n3"])?["spec"]["podCIDR"].clone();
    assert_eq!(again, n3_block.as_str(), "n3 came back with another block");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(route_to(&c, "n1", &n3_block)? && route_to(&c, "n2", &n3_block)?) {
        if Instant::now() > deadline {
            bail!("no route to n3's block {n3_block} after it came back");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let [records, containers, namespaces, veths] = c.node_inventory("n3")?;
        if records.is_empty() && containers.is_empty() && namespaces.is_empty() && veths.is_empty()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "n3 kept {records:?} {containers:?} {namespaces:?} {veths:?}\n{}",
                c.agent_log("n3")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Whether node `from` routes `block` via n3 (192.0.2.13).
fn route_to(c: &Cluster, from: &str, block: &str) -> Result<bool> {
    let mut ip = std::process::Command::new("ip");
    ip.args(["route", "show", block]);
    let out = c.output_in(&c.lab.node(from).netns, ip)?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("via 192.0.2.13"))
}

/// The pod's first container status.
fn container_status(c: &Cluster, pod: &str) -> Result<Value> {
    let p = c.get_json(&["pod", pod])?;
    Ok(p["status"]["containerStatuses"][0].clone())
}

#[test]
fn bad_input_shows_in_status_and_leaves_nothing() -> Result<()> {
    let c = up(2, &[], &["--restart-backoff", "1s"])?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers:
  - {name: c, image: weft.local/nosuch:1}
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - {name: c, image: weft.local/busybox:1.36, command: ["sh", "-c", "echo dying; exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: nocmd}
spec:
  containers:
  - {name: c, image: weft.local/busybox:1.36, command: ["/nonexistent"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived"]
    resources:
      limits: {memory: 16Mi}
---
apiVersion: v1
kind: Pod
metadata: {name: sick}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {command: ["false"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut image_ok, mut crash_ok, mut nocmd_ok) = (false, false, false);
    while !(image_ok && crash_ok && nocmd_ok) {
        if Instant::now() > deadline {
            bail!(
                "statuses: noimage {} crash {} nocmd {}",
                container_status(&c, "noimage")?,
                container_status(&c, "crash")?,
                container_status(&c, "nocmd")?
            );
        }
        std::thread::sleep(Duration::from_millis(300));
        let s = container_status(&c, "noimage")?;
        image_ok = matches!(
            s["state"]["waiting"]["reason"].as_str(),
            Some("ErrImagePull" | "ImagePullBackOff")
        ) && s["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("weft.local/nosuch") || m.contains("registry weft.local"));
        let s = container_status(&c, "crash")?;
        crash_ok = s["restartCount"].as_i64() >= Some(1)
            && s["lastState"]["terminated"]["exitCode"] == 3
            && matches!(
                s["state"]["waiting"]["reason"].as_str(),
                Some("CrashLoopBackOff")
            );
        let s = container_status(&c, "nocmd")?;
        nocmd_ok = matches!(
            s["state"]["waiting"]["reason"].as_str(),
            Some("RunContainerError" | "CrashLoopBackOff")
        ) && s["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent"));
    }
    for p in ["noimage", "crash", "nocmd"] {
        let phase = c.get_json(&["pod", p])?["status"]["phase"].clone();
        assert!(
            phase == "Pending" || phase == "Running",
            "{p}: phase {phase}"
        );
    }
    // Events say why, as kubelet's do.
    let events = c.get_json(&["events"])?;
    let warned = |pod: &str| {
        events["items"].as_array().is_some_and(|es| {
            es.iter()
                .any(|e| e["involvedObject"]["name"] == pod && e["type"] == "Warning")
        })
    };
    assert!(warned("noimage"), "no Warning event for noimage: {events}");
    assert!(warned("nocmd"), "no Warning event for nocmd: {events}");
    let backoff = events["items"].as_array().is_some_and(|es| {
        es.iter().any(|e| {
            e["involvedObject"]["name"] == "crash"
                && e["reason"] == "BackOff"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("Back-off restarting failed container c"))
        })
    });
    assert!(backoff, "no BackOff event for crash: {events}");
    // Each start of a container is an Event in kubelet's words: crash's
    // container started more than once (its restarts).
    let starts = events["items"].as_array().map_or(0, |es| {
        es.iter()
            .filter(|e| {
                e["involvedObject"]["name"] == "crash"
                    && e["reason"] == "Started"
                    && e["message"] == "Started container c"
            })
            .count()
    });
    assert!(starts >= 2, "{starts} Started events for crash: {events}");
    // A container over its memory limit is OOMKilled, and the pod Failed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = container_status(&c, "hog")?;
        if s["state"]["terminated"]["reason"] == "OOMKilled" {
            assert_eq!(s["state"]["terminated"]["exitCode"], 137, "{s}");
            assert_eq!(c.get_json(&["pod", "hog"])?["status"]["phase"], "Failed");
            break;
        }
        if Instant::now() > deadline {
            bail!("hog was not OOMKilled: {s}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A failing liveness probe restarts the container, and says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = c.get_json(&["events"])?;
        let unhealthy = events["items"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["involvedObject"]["name"] == "sick"
                    && e["reason"] == "Unhealthy"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("Liveness probe failed"))
            })
        });
        if unhealthy && container_status(&c, "sick")?["restartCount"].as_i64() >= Some(1) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "no Unhealthy event or restart for sick: {}",
                container_status(&c, "sick")?
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A local-only image is not looked for in a registry.
    let s = container_status(&c, "noimage")?;
    assert!(
        s["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found on this node")),
        "{s}"
    );
    // Nothing half-made: the pods that cannot start hold no sandbox.
    for n in &c.lab.nodes {
        let [records, ..] = c.node_inventory(&n.name)?;
        assert!(
            !records
                .iter()
                .any(|r| r == "default/noimage" || r == "default/nocmd"),
            "node {} keeps a sandbox of a pod that cannot start: {records:?}",
            n.name
        );
    }

    // An agent with a wrong token, or without a reachable controller, says
    // so and keeps trying; it makes nothing meanwhile.
    let good = std::fs::read_to_string(c.dir.join("agent-n1.kubeconfig"))?;
    let token = good
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .context("token line")?
        .to_string();
    for (what, kubeconfig, expect) in [
        (
            "wrong token",
            good.replace(&token, "not-a-token"),
            "401 Unauthorized",
        ),
        (
            "unreachable controller",
            good.replace(":6443", ":6999"),
            "Connection refused",
        ),
    ] {
        let dir = tempfile::tempdir()?;
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, kubeconfig)?;
        let state = dir.path().join("state");
        let mut cmd = std::process::Command::new("timeout");
        cmd.args(["5"])
            .arg(&c.lab.weft_bin)
            .arg("--kubeconfig")
            .arg(&kc)
            .args([
                "agent",
                "--node-name",
                "stray",
                "--instance",
                "weft-stray",
                "--port",
                "10251",
            ])
            .arg("--state-dir")
            .arg(&state);
        let out = c.output_in(&c.lab.node("n1").netns, cmd)?;
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(124),
            "{what}: the agent gave up instead of retrying:\n{log}"
        );
        assert!(
            log.contains(expect) && log.contains("retrying"),
            "{what}: {log}"
        );
        assert!(
            log.matches("cannot register").count() >= 2,
            "{what}: tried once only:\n{log}"
        );
        assert!(!state.exists(), "{what}: the agent made {state:?}");
    }
    let nodes = c.get_json(&["nodes"])?;
    assert_eq!(
        nodes["items"].as_array().map(Vec::len),
        Some(2),
        "a stray node registered: {nodes}"
    );

    // A second agent of a running node stops before it touches the Node,
    // and the first one's endpoint keeps working.
    let node = c.get_json(&["pod", "crash"])?["spec"]["nodeName"]
        .as_str()
        .context("crash is not bound")?
        .to_string();
    let mut dup = std::process::Command::new("timeout");
    dup.args(["10"])
        .arg(&c.lab.weft_bin)
        .arg("--kubeconfig")
        .arg(c.dir.join(format!("agent-{node}.kubeconfig")))
        .args(["agent", "--node-name", &node, "--instance", "weft-dup"])
        .arg("--state-dir")
        .arg(c.dir.join("dup-state"));
    let out = c.output_in(&c.lab.node(&node).netns, dup)?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("already running"), "{log}");
    let out = c.weft_output(&["logs", "crash", "-p"])?;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("dying"),
        "logs after a duplicate agent: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `weft delete` waits, as kubectl does, until the pod has stopped and
    // is gone; a negative grace period is refused.
    let out = c.weft_output(&["delete", "pod", "crash", "--grace-period", "-1"])?;
    assert!(!out.status.success());
    c.weft(&["delete", "pod", "crash", "--grace-period", "5"])?;
    let out = c.weft_output(&["get", "pod", "crash"])?;
    assert!(!out.status.success(), "the pod outlived `weft delete`");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    Ok(())
}

#[test]
fn logs_exec_and_top_through_the_controller() -> Result<()> {
    let c = up(2, &[], &["--restart-backoff", "1s"])?;
    c.apply(r#"apiVersion: v1
kind: Pod
metadata: {name: talker}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "echo line1; echo line2; echo oops >&2; trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.3; done"]
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sh", "-c", "echo run-$(cat /proc/uptime | cut -d' ' -f1); exit 1"]}
---
apiVersion: v1
kind: Pod
metadata: {name: duo}
spec:
  containers:
  - {name: a, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
  - {name: b, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: reader}
spec:
  containers:
  - name: main
    image: weft.local/busybox:1.36
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read x; do echo got-$x; done; echo stdin-closed; sleep 3600"]
"#,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let talker = c.get_json(&["pod", "talker"])?;
        let crasher = container_status(&c, "crasher")?;
        if ready(&talker) && crasher["restartCount"].as_i64() >= Some(1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("pods did not start: {talker} {crasher}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // Logs: the whole log, its tail, the previous run, stdout and stderr.
    let log = c.weft(&["logs", "talker"])?;
    let lines: Vec<&str> = log.lines().collect();
    // stdout and stderr are separate pipes: only each one's order is kept.
    let out_lines: Vec<&str> = lines.iter().copied().filter(|l| *l != "oops").collect();
    assert_eq!(&out_lines[..2], ["line1", "line2"], "{log}");
    assert!(lines.contains(&"oops"), "{log}");
    let ticks: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| *l != "oops")
        .skip(2)
        .collect();
    assert!(
        !ticks.is_empty() && ticks.iter().all(|l| l.starts_with("tick")),
        "{log}"
    );
    let all = c.weft(&["logs", "talker", "--tail", "-1"])?;
    assert!(
        all.lines().count() >= lines.len(),
        "--tail -1 is every line"
    );
    let tail = c.weft(&["logs", "talker", "--tail", "1"])?;
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.starts_with("tick"), "{tail}");
    let previous = c.weft(&["logs", "crasher", "-p"])?;
    assert!(previous.starts_with("run-"), "{previous}");
    let current = c.weft(&["logs", "crasher"]).unwrap_or_default();
    assert_ne!(
        previous, current,
        "the previous run's log is not the current one"
    );
    // Following: new lines arrive as the container writes them.
    let started = Instant::now();
    let mut child = c
        .weft_command(&["logs", "-f", "talker", "--tail", "0"])?
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .collect::<Result<Vec<_>, _>>()
    });
    while !reader.is_finished() && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let followed = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    assert_eq!(followed.len(), 3, "{followed:?}");
    assert!(
        followed.iter().all(|l| l.starts_with("tick")),
        "{followed:?}"
    );
    // kubectl logs reads the same path.
    let kubectl = |args: &[&str]| -> Result<std::process::Output> {
        let mut k = std::process::Command::new(weft_tests::control::kubectl_path(Some(33)));
        k.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
        c.output_in(&c.lab.underlay, k)
    };
    let out = kubectl(&["logs", "talker", "--tail", "2"])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    // Exec: output and exit code pass through, stdin too.
    let out = c.weft_output(&[
        "exec",
        "talker",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = {
        use std::io::Write as _;
        let mut child = c
            .weft_command(&["exec", "-i", "talker", "--", "tr", "a-z", "A-Z"])?
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(b"hello weft\n")?;
        child.wait_with_output()?
    };
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO WEFT\n");
    assert_eq!(out.status.code(), Some(0));
    let out = kubectl(&["exec", "talker", "--", "sh", "-c", "hostname; exit 7"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "talker\n");
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // On a terminal (`kubectl exec -it`, kubectl given one by script(1)):
    // the shell runs on a pseudo-terminal, its exit code passes through.
    let command = format!(
        "{} --kubeconfig {} exec -it talker -- sh -c 'tty; echo $((6*7)); exit 4'",
        weft_tests::control::kubectl_path(Some(33)).display(),
        c.kubeconfig.display()
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null());
    let out = c.output_in(&c.lab.underlay, script)?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("/dev/pts/") && shown.contains("42\r\n"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "{shown}");

    // Attach: the container's own output from now on; its stdin for one
    // with `stdin: true` (closed when kubectl's ends: stdinOnce).
    let kubectl_bin = weft_tests::control::kubectl_path(Some(33));
    let mut k = std::process::Command::new("timeout");
    k.arg("3")
        .arg(&kubectl_bin)
        .arg("--kubeconfig")
        .arg(&c.kubeconfig)
        .args(["attach", "talker"]);
    let out = c.output_in(&c.lab.underlay, k)?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("tick"),
        "attach showed: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&c.get_json(&["pod", "reader"])?) {
        anyhow::ensure!(Instant::now() < deadline, "the reader pod did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut k = std::process::Command::new("sh");
    k.arg("-c").arg(format!(
        "printf 'a\\nb\\n' | timeout 5 {} --kubeconfig {} attach -i reader",
        kubectl_bin.display(),
        c.kubeconfig.display()
    ));
    let out = c.output_in(&c.lab.underlay, k)?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("got-a") && shown.contains("got-b") && shown.contains("stdin-closed"),
        "attach -i showed: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // kubectl run -it: a pod on a terminal, typed into, removed after.
    let mut k = std::process::Command::new("sh");
    k.arg("-c").arg(format!(
        "printf 'echo in-tty-$((3*4))\\nexit 0\\n' | script -qec '{} --kubeconfig {} run -it --rm shell --image=weft.local/busybox:1.36 --restart=Never -- sh' /dev/null",
        kubectl_bin.display(),
        c.kubeconfig.display()
    ));
    let out = c.output_in(&c.lab.underlay, k)?;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("in-tty-12") && shown.contains("pod \"shell\" deleted"),
        "run -it showed: {shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without -c, the first container, as kubectl; a wrong one is named
    // with what exists.
    let out = c.weft_output(&["exec", "duo", "--", "hostname"])?;
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Defaulted container \"a\" out of: a, b")
    );
    let out = c.weft_output(&["exec", "duo", "-c", "z", "--", "true"])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("choose one of") && err.contains("\"a\""),
        "{err}"
    );
    let out = c.weft_output(&["exec", "duo", "-c", "b", "--", "hostname"])?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "duo\n");
    // The official Python client's interactive exec: it speaks
    // v4.channel.k8s.io and sends stdin as text frames.
    let script = c.dir.join("exec.py");
    std::fs::write(
        &script,
        r#"
import sys, time
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
resp = stream(core.connect_get_namespaced_pod_exec, "duo", "default", container="a",
              command=["head", "-c", "6"], stdin=True, stdout=True, stderr=True, tty=False,
              _preload_content=False)
resp.write_stdin("hello\n")
out = ""
deadline = time.time() + 15
while resp.is_open() and time.time() < deadline:
    resp.update(timeout=1)
    out += resp.read_stdout() or ""
print(repr(out))
"#,
    )?;
    // Bounded: stdin that never arrives leaves `head` waiting.
    let mut py = std::process::Command::new("timeout");
    py.args(["30", "/opt/weft/python/bin/python"])
        .arg(&script)
        .arg(&c.kubeconfig);
    let out = c.output_in(&c.lab.underlay, py)?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "'hello\\n'",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = c.weft_output(&["logs", "nosuch"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // Only admins: a node's token may not read logs or exec.
    let node_kc = c.dir.join("agent-n1.kubeconfig");
    let mut k = std::process::Command::new(&c.lab.weft_bin);
    k.arg("--kubeconfig").arg(&node_kc).args(["logs", "talker"]);
    let out = c.output_in(&c.lab.underlay, k)?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot get resource \"pods/log\""));

    // Top: every node and pod with CPU and memory from cgroups (the CPU
    // rate needs two samples, 2 s apart).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes = c.weft(&["top", "nodes"])?;
        let pods = c.weft(&["top", "pods"])?;
        let rows_ok = |text: &str, names: &[&str]| {
            names.iter().all(|n| {
                text.lines().any(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    f.first() == Some(n)
                        && f.get(1).is_some_and(|c| {
                            c.ends_with('m') && c[..c.len() - 1].parse::<u64>().is_ok()
                        })
                        && f.iter().any(|m| m.ends_with("Mi"))
                })
            })
        };
        if rows_ok(&nodes, &["n1", "n2"]) && rows_ok(&pods, &["talker", "duo"]) {
            // The agent counts in its node's memory: more than its pods.
            let node_mem: f64 = nodes
                .lines()
                .find(|l| l.starts_with("n1"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|m| m.trim_end_matches("Mi").parse().ok())
                .unwrap_or(0.0);
            assert!(node_mem >= 5.0, "node memory {node_mem}Mi:\n{nodes}");
            break;
        }
        if Instant::now() > deadline {
            bail!("top never showed usage:\n{nodes}\n{pods}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The controller killed for 60 s and started again (issue 16): a client
/// pod requesting a Service every 100 ms sees no request fail, during the
/// outage or after, and no node turns NotReady: the agents and the data
/// plane go on without the controller, and the restarted controller gives
/// every node a full grace period before it judges it.
#[test]
fn controller_outage_keeps_services_up() -> Result<()> {
    let mut c = up(2, &[], &[])?;
    c.apply(&web(2, "weft.local/busybox:1.36", "v1"))?;
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80}]
"#,
    )?;
    wait_ready(&c, "app=web", 2, Duration::from_secs(60))?;
    let vip = c.get_json(&["service", "web"])?["spec"]["clusterIP"]
        .as_str()
        .context("no ClusterIP")?
        .to_string();
    // One line per request: the time, and ok or FAIL.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client}}}}
spec:
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "trap 'exit 0' TERM; while true; do if timeout 2 wget -qO- http://{vip}/ >/dev/null 2>&1; then echo \"$(date +%s) ok\"; else echo \"$(date +%s) FAIL\"; fi; sleep 0.1; done"]
"#
    ))?;
    wait_ready(&c, "app=client", 1, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_secs(3));
    let before = c.weft(&["logs", "client", "--tail", "-1"])?;
    anyhow::ensure!(
        before.lines().any(|l| l.ends_with(" ok")) && !before.contains("FAIL"),
        "the client fails before the outage:\n{before}"
    );
    let since = Instant::now();
    c.kill_controller()?;
    std::thread::sleep(Duration::from_secs(60));
    c.restart_controller()?;
    // Thirty seconds after the restart: three grace periods.
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let nodes = c.get_json(&["nodes"])?;
        for n in nodes["items"].as_array().cloned().unwrap_or_default() {
            let ready = n["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .is_some_and(|c| c["status"] == "True");
            anyhow::ensure!(
                ready,
                "{} not Ready after the controller's restart:\n{}",
                n["metadata"]["name"],
                tail(&c.controller_log())
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let log = c.weft(&["logs", "client", "--tail", "-1"])?;
    let lines: Vec<&str> = log.lines().collect();
    let failed: Vec<&&str> = lines.iter().filter(|l| l.contains("FAIL")).collect();
    let ok = lines.iter().filter(|l| l.ends_with(" ok")).count();
    let window = since.elapsed().as_secs() as usize;
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\ncontroller:\n{}",
        failed.len(),
        lines.len(),
        failed.iter().take(10).collect::<Vec<_>>(),
        tail(&c.controller_log())
    );
    // At least five requests a second (wget and sleep 0.1 each) over the
    // outage and after it.
    anyhow::ensure!(
        ok >= window * 5,
        "only {ok} requests in {window} s: the client stalled"
    );
    Ok(())
}

/// A pod writing as fast as it can: its log rotates at the agent's
/// --container-log-max-size and keeps --container-log-max-files files, so
/// the node's disk holds a bounded amount; `weft logs --tail`, `--since`
/// and `--limit-bytes` answer from it meanwhile, and the agent's memory
/// stays bounded (its peak is read from /proc).
#[test]
fn a_log_flood_is_rotated_and_read_in_bounded_memory() -> Result<()> {
    const MAX_SIZE: u64 = 1024 * 1024;
    let c = up(
        1,
        &[],
        &[
            "--container-log-max-size",
            "1Mi",
            "--container-log-max-files",
            "3",
        ],
    )?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: flood}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sh", "-c", "yes $(seq -s , 1 150)"]}
"#,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(&c.get_json(&["pod", "flood"])?) {
        anyhow::ensure!(Instant::now() < deadline, "the flood pod did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let uid = c.get_json(&["pod", "flood"])?["metadata"]["uid"]
        .as_str()
        .context("uid")?
        .replace('-', "");
    let dir = c
        .lab
        .node_state_dir(c.lab.node("n1"))
        .join("sandbox/pods")
        .join(&uid[..12])
        .join("logs/main");
    let agent = c.agent_pid("n1").context("the agent's pid")?;
    let (_, peak_before) = weft_tests::apitest::rss(agent)?;
    let line: String = (1..=150)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let started = Instant::now();
    let mut written_max = 0u64;
    let mut most_files = 0;
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(20) {
        rounds += 1;
        let tail = c.weft(&["logs", "flood", "--tail", "10"])?;
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), 10, "--tail 10 gave {} lines", lines.len());
        assert!(
            lines.iter().all(|l| *l == line),
            "torn or foreign lines in the tail"
        );
        let recent = c.weft(&["logs", "flood", "--since", "10s", "--limit-bytes", "5000"])?;
        if recent.len() != 5000 {
            // What the log's newest line says of when it was written.
            let last = c.weft(&["logs", "flood", "--tail", "1", "--timestamps"])?;
            panic!(
                "--since 10s --limit-bytes 5000 gave {} bytes; the newest line: {:?}",
                recent.len(),
                last.split(' ').next()
            );
        }
        let stamped = c.weft(&["logs", "flood", "--tail", "1", "--timestamps"])?;
        let (time, text) = stamped
            .trim_end()
            .split_once(' ')
            .with_context(|| format!("no timestamp in {stamped:?}"))?;
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(text, line);
        // On disk: at most three files, each at most the size.
        let mut total = 0;
        let mut files = 0;
        for e in std::fs::read_dir(&dir)? {
            // A file listed may be rotated away before it is looked at.
            let len = match e?.metadata() {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            assert!(len <= MAX_SIZE, "a log file of {len} bytes");
            total += len;
            files += 1;
        }
        assert!(files <= 3, "{files} log files");
        most_files = most_files.max(files);
        written_max = written_max.max(total);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        most_files == 3 || dir.join("0.log.2").exists(),
        "the flood never rotated twice ({most_files} files at most, {written_max} bytes): it did not write fast enough to test anything"
    );
    let (_, peak_after) = weft_tests::apitest::rss(agent)?;
    eprintln!(
        "{rounds} rounds of reads; at most {written_max} bytes on disk; agent peak {} MB -> {} MB",
        peak_before >> 20,
        peak_after >> 20
    );
    assert!(
        peak_after < peak_before + (64 << 20),
        "the agent's peak grew from {} MB to {} MB",
        peak_before >> 20,
        peak_after >> 20
    );
    // Bad options are refused as kube-apiserver refuses them.
    let out = c.weft_output(&["logs", "flood", "--limit-bytes", "0"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("limitBytes"));
    Ok(())
}
