//! `weft logs`, `weft exec` and `weft top`: what the controller relays from
//! the pods' agents.

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, LogParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_api::client::Client;
use weft_api::debug::stats::{CpuStats, MemoryStats, Summary};
use weft_api::selector::LabelSelector;

/// What `weft logs` asks of a container's log.
pub struct LogOptions {
    /// Keep streaming.
    pub follow: bool,
    /// The last N lines (negative: all).
    pub tail: Option<i64>,
    /// The run before the last restart.
    pub previous: bool,
    /// Only what was written in this last while.
    pub since: Option<std::time::Duration>,
    /// At most this many bytes.
    pub limit_bytes: Option<i64>,
    /// Each line with its time.
    pub timestamps: bool,
}

/// `weft logs`.
pub async fn logs(
    c: &Client,
    ns: &str,
    pod: &str,
    container: Option<String>,
    o: LogOptions,
) -> Result<u8> {
    // As kubectl: -1 means every line, and less is refused.
    if o.tail.is_some_and(|t| t < -1) {
        bail!("--tail must be greater than or equal to -1");
    }
    let tail = o.tail.filter(|t| *t >= 0);
    let pod = &pod_of(c, ns, pod).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(c.kube().clone(), ns);
    let container = default_container(&pods, pod, container).await?;
    let params = LogParams {
        container,
        follow: o.follow,
        tail_lines: tail,
        previous: o.previous,
        // kubectl rounds up to whole seconds, at least one.
        since_seconds: o.since.map(|d| {
            i64::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0))
                .unwrap_or(i64::MAX)
                .max(1)
        }),
        limit_bytes: o.limit_bytes,
        timestamps: o.timestamps,
        ..LogParams::default()
    };
    // The bytes as they come, as kubectl prints them (a log cut by
    // --limit-bytes may end inside a line).
    let mut log = pods
        .log_stream(pod, &params)
        .await
        .map_err(|e| api_error(c, e))?;
    let mut out = tokio::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = futures::AsyncReadExt::read(&mut log, &mut buf)
            .await
            .context("read the log stream")?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).await?;
        out.flush().await?;
    }
    Ok(0)
}

/// `weft exec`: the command's exit code becomes ours.
pub async fn exec(
    c: &Client,
    ns: &str,
    pod: &str,
    container: Option<String>,
    stdin: bool,
    command: Vec<String>,
) -> Result<u8> {
    let pod = &pod_of(c, ns, pod).await?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(c.kube().clone(), ns);
    let container = default_container(&pods, pod, container).await?;
    let mut params = AttachParams::default()
        .stdin(stdin)
        .stdout(true)
        .stderr(true);
    if let Some(ct) = container {
        params = params.container(ct);
    }
    let mut proc = pods
        .exec(pod, command.clone(), &params)
        .await
        .map_err(|e| api_error(c, e))?;
    let status = proc.take_status();
    let mut tasks = Vec::new();
    if let Some(mut o) = proc.stdout() {
        tasks.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut o, &mut tokio::io::stdout()).await;
        }));
    }
    if let Some(mut e) = proc.stderr() {
        tasks.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut e, &mut tokio::io::stderr()).await;
        }));
    }
    if let Some(mut w) = proc.stdin() {
        tokio::spawn(async move {
            let mut input = tokio::io::stdin();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match input.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = w.shutdown().await;
        });
    }
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    for t in tasks {
        let _ = t.await;
    }
    let _ = proc.join().await;
    let Some(status) = status else {
        bail!("the exec session ended without an exit status");
    };
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse::<i64>().ok());
    match code {
        Some(code) => Ok(u8::try_from(code).unwrap_or(255)),
        None => bail!(
            "{}",
            status
                .message
                .unwrap_or_else(|| "the command failed".into())
        ),
    }
}

/// The kinds whose pods `TYPE/NAME` may name, as kubectl's: those with a
/// label selector of their pods.
const POD_OWNERS: [&str; 7] = [
    "Job",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "ReplicationController",
    "Service",
];

/// The pod `arg` names: `NAME` or `pod/NAME` is that pod; `TYPE/NAME` (a
/// Job, Deployment, ReplicaSet, StatefulSet, DaemonSet,
/// ReplicationController or Service) is one of the pods its selector
/// selects, chosen as kubectl chooses (see [`for_logging`]) and named on
/// stderr when there were several.
async fn pod_of(c: &Client, ns: &str, arg: &str) -> Result<String> {
    let Some((kind, name)) = arg.split_once('/') else {
        return Ok(arg.to_string());
    };
    if name.is_empty() || name.contains('/') {
        bail!("{arg:?} is not TYPE/NAME");
    }
    let res = weft_api::resources::RESOURCES
        .iter()
        .find(|r| r.matches(kind))
        .with_context(|| format!("the server doesn't have a resource type \"{kind}\""))?;
    if res.kind == "Pod" {
        return Ok(name.to_string());
    }
    if !POD_OWNERS.contains(&res.kind) {
        bail!(
            "cannot get the pods of a {} (pods of a Job, Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController or Service can be named)",
            res.kind
        );
    }
    let obj = c
        .get(&weft_api::client::object_path(res, Some(ns), name))
        .await?;
    let raw = &obj["spec"]["selector"];
    // Services and ReplicationControllers select with a plain map.
    let selector = if matches!(res.kind, "Service" | "ReplicationController") {
        if raw.as_object().is_none_or(serde_json::Map::is_empty) {
            bail!("{arg} has no selector: it selects no pods");
        }
        LabelSelector::from_k8s(&serde_json::json!({"matchLabels": raw}))
    } else {
        LabelSelector::from_k8s(raw)
    }
    .map_err(|e| anyhow::anyhow!("{arg}: {e}"))?;
    let list: kube::api::ObjectList<Pod> = kube::Api::namespaced(c.kube().clone(), ns)
        .list(&kube::api::ListParams::default())
        .await
        .map_err(|e| api_error(c, e))?;
    let mut pods: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            selector.matches(
                &p.metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            )
        })
        .collect();
    if pods.is_empty() {
        bail!("no pods found for {arg} in namespace {ns}");
    }
    pods.sort_by(for_logging);
    let chosen = pods[0].metadata.name.clone().unwrap_or_default();
    if pods.len() > 1 {
        eprintln!("Found {} pods, using pod/{chosen}", pods.len());
    }
    Ok(chosen)
}

/// kubectl's order of pods for logs and exec (its `ByLogging`): bound
/// before unbound; Running (or finished) before Unknown before Pending;
/// ready before not; ready longer before ready shorter; more restarts
/// before fewer; older before newer.
fn for_logging(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(str::is_empty)
    };
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Unknown") => 1,
        Some("Pending") => 2,
        _ => 0,
    };
    let ready_since = |p: &Pod| {
        weft_api::pod::condition(p, "Ready")
            .filter(|c| c.status == "True")
            .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
    };
    let restarts = |p: &Pod| {
        p.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .map(|c| c.restart_count)
            .max()
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    node(a)
        .cmp(&node(b))
        .then_with(|| phase(a).cmp(&phase(b)))
        .then_with(|| ready_since(b).is_some().cmp(&ready_since(a).is_some()))
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => std::cmp::Ordering::Equal,
            },
        )
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| match (created(a), created(b)) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        })
}

/// The container to use: the one named, else the pod's
/// `kubectl.kubernetes.io/default-container`, else its first, saying so
/// when there was a choice (as kubectl does).
async fn default_container(
    pods: &kube::Api<Pod>,
    pod: &str,
    named: Option<String>,
) -> Result<Option<String>> {
    if named.is_some() {
        return Ok(named);
    }
    let Ok(p) = pods.get(pod).await else {
        // Let the request itself report what is wrong.
        return Ok(None);
    };
    let names: Vec<String> = p
        .spec
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    if names.len() < 2 {
        return Ok(None);
    }
    let chosen = p
        .metadata
        .annotations
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container").cloned())
        .filter(|d| names.contains(d))
        .unwrap_or_else(|| names[0].clone());
    eprintln!(
        "Defaulted container \"{chosen}\" out of: {}",
        names.join(", ")
    );
    Ok(Some(chosen))
}

fn api_error(c: &Client, e: kube::Error) -> anyhow::Error {
    match e {
        kube::Error::Api(s) => anyhow::anyhow!("{}", s.message),
        other => anyhow::anyhow!("{}: {other}", c.server()),
    }
}

/// `weft top nodes|pods`: usage from every node's stats, as kubectl top
/// prints it.
pub async fn top(c: &Client, what: &str, ns: Option<&str>) -> Result<u8> {
    let nodes = c.get("/api/v1/nodes").await?;
    let nodes: Vec<Value> = nodes["items"].as_array().cloned().unwrap_or_default();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let pods_view = what.starts_with("po");
    if pods_view {
        rows.push(
            ns.map_or_else(|| vec!["NAMESPACE".into()], |_| Vec::new())
                .into_iter()
                .chain(["NAME", "CPU(cores)", "MEMORY(bytes)"].map(String::from))
                .collect(),
        );
    } else {
        rows.push(
            ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
                .map(String::from)
                .to_vec(),
        );
    }
    let mut pod_rows = Vec::new();
    for n in &nodes {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let summary: Summary = match c
            .get(&format!("/api/v1/nodes/{name}/proxy/stats/summary"))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|v| serde_json::from_value(v).map_err(anyhow::Error::from))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("node {name}: no stats: {e}");
                continue;
            }
        };
        if pods_view {
            for p in summary.pods {
                if ns.is_some_and(|want| want != p.pod_ref.namespace) {
                    continue;
                }
                let mut row = if ns.is_none() {
                    vec![p.pod_ref.namespace]
                } else {
                    Vec::new()
                };
                row.push(p.pod_ref.name);
                row.push(cpu(p.cpu.as_ref()));
                row.push(mem(p.memory.as_ref()));
                pod_rows.push(row);
            }
        } else {
            // Allocatable, in cores and bytes (quantities are in thousandths).
            let allocatable = |r: &str| {
                n["status"]["allocatable"][r]
                    .as_str()
                    .and_then(weft_api::quantity::parse)
                    .map_or(0.0, |milli| milli as f64 / 1000.0)
            };
            let (alloc_cpu, alloc_mem) = (allocatable("cpu"), allocatable("memory"));
            let node = &summary.node;
            let nc = node.cpu.as_ref().and_then(|c| c.usage_nano_cores);
            let nm = node.memory.as_ref().map(|m| m.working_set_bytes);
            let pct = |v: Option<f64>, of: f64| match v {
                Some(v) if of > 0.0 => format!("{:.0}%", v / of * 100.0),
                _ => "-".into(),
            };
            rows.push(vec![
                name.to_string(),
                cpu(node.cpu.as_ref()),
                pct(nc.map(|v| v as f64 / 1e9), alloc_cpu),
                mem(node.memory.as_ref()),
                pct(nm.map(|b| b as f64), alloc_mem),
            ]);
        }
    }
    pod_rows.sort();
    rows.extend(pod_rows);
    if rows.len() == 1 {
        eprintln!("No resources found");
        return Ok(0);
    }
    print!("{}", weft_api::printer::align(&rows));
    Ok(0)
}

/// CPU as kubectl top prints it: millicores, or "-" before the first rate.
fn cpu(v: Option<&CpuStats>) -> String {
    v.and_then(|c| c.usage_nano_cores)
        .map_or_else(|| "-".into(), |n| format!("{:.0}m", n as f64 / 1e6))
}

/// Memory (working set) in MiB; one decimal below 10 MiB, where busybox
/// pods live.
fn mem(v: Option<&MemoryStats>) -> String {
    v.map(|m| m.working_set_bytes).map_or_else(
        || "-".into(),
        |b| {
            let mib = b as f64 / 1024.0 / 1024.0;
            if mib < 10.0 {
                format!("{mib:.1}Mi")
            } else {
                format!("{mib:.0}Mi")
            }
        },
    )
}
