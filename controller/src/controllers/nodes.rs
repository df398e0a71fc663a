//! Node lifecycle: a node whose Lease is not renewed within the grace period
//! becomes NotReady (Ready=Unknown) and is tainted unreachable; after the
//! eviction delay its pods are deleted, so their controllers make new ones
//! elsewhere. A node that renews again loses the taints. Pods bound to a
//! node that no longer exists are deleted too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::meta::{now_rfc3339, parse_rfc3339};

use super::{Ctx, record_event, res};
use crate::registry::Write;

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

pub fn start(ctx: Ctx) {
    tokio::spawn(async move {
        let every =
            (ctx.cfg.node_grace / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
        loop {
            if let Err(e) = sweep(&ctx).await {
                tracing::warn!("node lifecycle: {e}");
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch of an RFC 3339 time, fractions included.
fn parse_time(t: &str) -> Option<f64> {
    let whole = parse_rfc3339(t)? as f64;
    let frac = t
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches('Z'))
        .and_then(|f| format!("0.{f}").parse::<f64>().ok());
    Some(whole + frac.unwrap_or(0.0))
}

/// When the node last showed it is alive: its Lease, else its Ready
/// condition's heartbeat, else its creation.
fn last_heartbeat(ctx: &Ctx, node: &Value) -> f64 {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let lease = ctx.cache.get(
        res("coordination.k8s.io", "leases"),
        Some("kube-node-lease"),
        name,
    );
    let from_lease = lease.and_then(|l| l["spec"]["renewTime"].as_str().and_then(parse_time));
    let from_condition =
        ready_condition(node).and_then(|c| c["lastHeartbeatTime"].as_str().and_then(parse_time));
    let created = node["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(parse_time)
        .unwrap_or(0.0);
    from_lease
        .into_iter()
        .chain(from_condition)
        .fold(created, f64::max)
}

fn ready_condition(node: &Value) -> Option<&Value> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

fn unreachable_taint(node: &Value) -> Option<&Value> {
    node["spec"]["taints"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == UNREACHABLE && t["effect"] == "NoExecute")
}

/// How long a pod stays on an unreachable node: its toleration's seconds,
/// forever for a toleration without them, else the controller's delay.
fn tolerated_for(pod: &Value, default: Duration) -> Option<Duration> {
    let tolerations = pod["spec"]["tolerations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for t in tolerations {
        let key_ok = t["key"] == UNREACHABLE
            || (t["key"].as_str().unwrap_or_default().is_empty() && t["operator"] == "Exists");
        let effect_ok = t["effect"]
            .as_str()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        if key_ok && effect_ok {
            return t["tolerationSeconds"]
                .as_i64()
                .map(|s| Duration::from_secs(s.max(0) as u64));
        }
    }
    Some(default)
}

async fn sweep(ctx: &Ctx) -> Result<(), ApiError> {
    let nodes_res = res("", "nodes");
    let pods_res = res("", "pods");
    let grace = ctx.cfg.node_grace.as_secs_f64();
    let now = now_secs();
    // Pods by node, in one pass: a pass per node made the sweep cost nodes
    // times pods (40 silent nodes and 10 000 pods kept a core 6% busy).
    let mut by_node: std::collections::HashMap<String, Vec<std::sync::Arc<Value>>> =
        std::collections::HashMap::new();
    for pod in ctx.cache.list(pods_res, None, |p| {
        p["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    }) {
        let node = pod["spec"]["nodeName"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        by_node.entry(node).or_default().push(pod);
    }
    let nodes = ctx.cache.list(nodes_res, None, |_| true);
    let known: std::collections::HashSet<&str> = nodes
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    let pods_of = |name: &str| by_node.get(name).cloned().unwrap_or_default();
    for node in nodes.iter().cloned() {
        let name = node["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let silent = now - last_heartbeat(ctx, &node) > grace;
        let tainted = unreachable_taint(&node).is_some();
        if silent && !tainted {
            let stamp = now_rfc3339();
            ctx.reg
                .modify(nodes_res, None, &name, Write::Status, |mut n| {
                    let conditions = n["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let mut out: Vec<Value> = conditions.into_iter().filter(|c| c["type"] != "Ready").collect();
                    out.push(json!({
                        "type": "Ready",
                        "status": "Unknown",
                        "reason": "NodeStatusUnknown",
                        "message": "Kubelet stopped posting node status.",
                        "lastHeartbeatTime": ready_condition(&n).map(|c| c["lastHeartbeatTime"].clone()).unwrap_or(Value::Null),
                        "lastTransitionTime": stamp,
                    }));
                    n["status"]["conditions"] = json!(out);
                    Ok(n)
                })
                .await?;
            ctx.reg
                .modify(nodes_res, None, &name, Write::Update, |mut n| {
                    let mut taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
                    taints.retain(|t| t["key"] != UNREACHABLE);
                    taints.push(
                        json!({"key": UNREACHABLE, "effect": "NoSchedule", "timeAdded": stamp}),
                    );
                    taints.push(
                        json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp}),
                    );
                    n["spec"]["taints"] = json!(taints);
                    Ok(n)
                })
                .await?;
            // As kube's MarkPodsNotReady: nobody vouches for its pods any
            // more, so they leave their Services' endpoints now, not at
            // eviction.
            for pod in pods_of(&name) {
                let (ns, pod_name) = (
                    pod["metadata"]["namespace"].as_str(),
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                );
                let r = ctx
                    .reg
                    .modify(pods_res, ns, pod_name, Write::Status, |mut p| {
                        if let Some(cs) = p["status"]["conditions"].as_array_mut() {
                            for c in cs.iter_mut() {
                                if c["type"] == "Ready" && c["status"] != "False" {
                                    c["status"] = json!("False");
                                    c["reason"] = json!("NodeNotReady");
                                    c["lastTransitionTime"] = json!(stamp);
                                }
                            }
                        }
                        Ok(p)
                    })
                    .await;
                if let Err(e) = r
                    && e.code != 404
                {
                    tracing::warn!(pod = %pod_name, error = %e, "cannot mark the pod not ready");
                }
            }
            record_event(
                &ctx.reg,
                &node,
                "Normal",
                "NodeNotReady",
                &format!("Node {name} status is now: NodeNotReady"),
                "node-controller",
            )
            .await;
            tracing::info!(node = %name, "node stopped renewing its lease: NotReady");
        } else if !silent && tainted {
            ctx.reg
                .modify(nodes_res, None, &name, Write::Update, |mut n| {
                    if let Some(taints) = n["spec"]["taints"].as_array_mut() {
                        taints.retain(|t| t["key"] != UNREACHABLE);
                    }
                    Ok(n)
                })
                .await?;
            tracing::info!(node = %name, "node renews its lease again");
        } else if let Some(taint) = unreachable_taint(&node) {
            let since = taint["timeAdded"]
                .as_str()
                .and_then(parse_time)
                .unwrap_or(now);
            for pod in pods_of(&name) {
                let Some(delay) = tolerated_for(&pod, ctx.cfg.eviction_delay) else {
                    continue;
                };
                if now - since < delay.as_secs_f64() {
                    continue;
                }
                let (ns, pod_name) = (
                    pod["metadata"]["namespace"].as_str(),
                    pod["metadata"]["name"].as_str().unwrap_or_default(),
                );
                match ctx
                    .reg
                    .delete_with(
                        pods_res,
                        ns,
                        pod_name,
                        (pod["metadata"]["uid"].as_str().map(String::from), None),
                        Some(0),
                    )
                    .await
                {
                    Ok(_) => {
                        record_event(
                            &ctx.reg,
                            &pod,
                            "Normal",
                            "TaintManagerEviction",
                            &format!("Marking for deletion Pod {}", super::key_of(&pod)),
                            "taint-eviction-controller",
                        )
                        .await;
                    }
                    Err(ApiError {
                        code: 404 | 409, ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Pods bound to a node that does not exist: nothing will ever run them.
    let orphans = by_node
        .iter()
        .filter(|(n, _)| !known.contains(n.as_str()))
        .flat_map(|(_, pods)| pods.iter().cloned());
    for pod in orphans.collect::<Vec<_>>() {
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        // Registered since the pods were listed: not an orphan.
        if ctx.cache.get(nodes_res, None, node).is_none() {
            let age = now
                - pod["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(parse_time)
                    .unwrap_or(now);
            if age < 5.0 {
                continue; // the node may be registering right now
            }
            let (ns, name) = (
                pod["metadata"]["namespace"].as_str(),
                pod["metadata"]["name"].as_str().unwrap_or_default(),
            );
            match ctx
                .reg
                .delete_with(
                    pods_res,
                    ns,
                    name,
                    (pod["metadata"]["uid"].as_str().map(String::from), None),
                    Some(0),
                )
                .await
            {
                Ok(_)
                | Err(ApiError {
                    code: 404 | 409, ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_fractions() {
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Some(1_700_000_000.0));
        let t = parse_time("2023-11-14T22:13:20.250000Z").unwrap();
        assert!((t - 1_700_000_000.25).abs() < 1e-6);
    }
}
