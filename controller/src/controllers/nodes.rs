//! Node lifecycle: a node whose Lease is not renewed within the grace period
//! becomes NotReady (Ready=Unknown) and is tainted unreachable; after the
//! eviction delay its pods are deleted, so their controllers make new ones
//! elsewhere. A node that renews again loses the taints. Pods bound to a
//! node that no longer exists are deleted too.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use weft_api::ApiError;

use super::{Ctx, record_event};
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

/// Seconds since the epoch, fractions included.
fn secs(t: &Timestamp) -> f64 {
    t.as_second() as f64 + f64::from(t.subsec_nanosecond()) * 1e-9
}

/// When the node last showed it is alive: its Lease, else its Ready
/// condition's heartbeat, else its creation.
fn last_heartbeat(ctx: &Ctx, node: &Node) -> f64 {
    let lease = ctx
        .cache
        .store::<Lease>()
        .get(Some("kube-node-lease"), &node.name_any());
    let from_lease = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| secs(&t.0)));
    let from_condition = weft_api::node::ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| secs(&t.0)));
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0.0, |t| secs(&t.0));
    from_lease
        .into_iter()
        .chain(from_condition)
        .fold(created, f64::max)
}

fn unreachable_taint(node: &Node) -> Option<&Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
}

/// How long a pod stays on an unreachable node: its toleration's seconds,
/// forever for a toleration without them, else the controller's delay.
fn tolerated_for(pod: &Pod, default: Duration) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    for t in tolerations {
        let key = t.key.as_deref().unwrap_or_default();
        let key_ok =
            key == UNREACHABLE || (key.is_empty() && t.operator.as_deref() == Some("Exists"));
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        if key_ok && effect_ok {
            return t
                .toleration_seconds
                .map(|s| Duration::from_secs(s.max(0).unsigned_abs()));
        }
    }
    Some(default)
}

/// Deletes a pod at once (its node will never stop it).
async fn delete_now(ctx: &Ctx, pod: &Pod) -> Result<bool, ApiError> {
    match ctx
        .reg
        .delete::<Pod>(
            pod.namespace().as_deref(),
            &pod.name_any(),
            (pod.metadata.uid.clone(), None),
            Some(0),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(false),
        Err(e) => Err(e),
    }
}

async fn mark_not_ready(ctx: &Ctx, node: &Node) -> Result<(), ApiError> {
    let name = node.name_any();
    let stamp = weft_api::meta::now_time();
    ctx.reg
        .modify::<Node>(None, &name, Write::Status, |mut n| {
            let status = n.status.get_or_insert_with(Default::default);
            let heartbeat =
                weft_api::node::status_ready(status).and_then(|c| c.last_heartbeat_time.clone());
            let mut out: Vec<NodeCondition> = status
                .conditions
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.type_ != "Ready")
                .collect();
            out.push(NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some("Kubelet stopped posting node status.".into()),
                last_heartbeat_time: heartbeat,
                last_transition_time: Some(stamp.clone()),
            });
            status.conditions = Some(out);
            Ok(n)
        })
        .await?;
    ctx.reg
        .modify::<Node>(None, &name, Write::Update, |mut n| {
            let taints = n
                .spec
                .get_or_insert_with(Default::default)
                .taints
                .get_or_insert_with(Vec::new);
            taints.retain(|t| t.key != UNREACHABLE);
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: UNREACHABLE.into(),
                    effect: effect.into(),
                    time_added: Some(stamp.clone()),
                    value: None,
                });
            }
            Ok(n)
        })
        .await?;
    // As kube's MarkPodsNotReady: nobody vouches for its pods any more, so
    // they leave their Services' endpoints now, not at eviction.
    for pod in ctx.cache.store::<Pod>().on_node(&name) {
        let r = ctx
            .reg
            .modify::<Pod>(
                pod.namespace().as_deref(),
                &pod.name_any(),
                Write::Status,
                |mut p| {
                    let conditions = p
                        .status
                        .as_mut()
                        .and_then(|s| s.conditions.as_mut())
                        .into_iter()
                        .flatten();
                    for c in conditions.filter(|c| c.type_ == "Ready" && c.status != "False") {
                        c.status = "False".into();
                        c.reason = Some("NodeNotReady".into());
                        c.last_transition_time = Some(stamp.clone());
                    }
                    Ok(p)
                },
            )
            .await;
        if let Err(e) = r
            && e.code != 404
        {
            tracing::warn!(pod = %pod.name_any(), error = %e, "cannot mark the pod not ready");
        }
    }
    record_event(
        &ctx.reg,
        node,
        "Normal",
        "NodeNotReady",
        &format!("Node {name} status is now: NodeNotReady"),
        "node-controller",
    )
    .await;
    tracing::info!(node = %name, "node stopped renewing its lease: NotReady");
    Ok(())
}

async fn sweep(ctx: &Ctx) -> Result<(), ApiError> {
    let grace = ctx.cfg.node_grace.as_secs_f64();
    let now = now_secs();
    let pods = ctx.cache.store::<Pod>();
    let nodes = ctx.cache.store::<Node>().list(None);
    let known: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    for node in &nodes {
        let name = node.name_any();
        let silent = now - last_heartbeat(ctx, node) > grace;
        let tainted = unreachable_taint(node).is_some();
        if silent && !tainted {
            mark_not_ready(ctx, node).await?;
        } else if !silent && tainted {
            ctx.reg
                .modify::<Node>(None, &name, Write::Update, |mut n| {
                    if let Some(taints) = n.spec.as_mut().and_then(|s| s.taints.as_mut()) {
                        taints.retain(|t| t.key != UNREACHABLE);
                    }
                    Ok(n)
                })
                .await?;
            tracing::info!(node = %name, "node renews its lease again");
        } else if let Some(taint) = unreachable_taint(node) {
            let since = taint.time_added.as_ref().map_or(now, |t| secs(&t.0));
            for pod in pods.on_node(&name) {
                let Some(delay) = tolerated_for(&pod, ctx.cfg.eviction_delay) else {
                    continue;
                };
                if now - since < delay.as_secs_f64() {
                    continue;
                }
                if delete_now(ctx, &pod).await? {
                    record_event(
                        &ctx.reg,
                        &*pod,
                        "Normal",
                        "TaintManagerEviction",
                        &format!("Marking for deletion Pod {}", weft_api::meta::key_of(&*pod)),
                        "taint-eviction-controller",
                    )
                    .await;
                }
            }
        }
    }
    // Pods bound to a node that does not exist: nothing will ever run them.
    for node in pods.nodes().into_iter().filter(|n| !known.contains(n)) {
        for pod in pods.on_node(&node) {
            // Registered since the nodes were listed: not an orphan.
            if ctx.cache.store::<Node>().get(None, &node).is_some() {
                break;
            }
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| secs(&t.0));
            if now - created < 5.0 {
                continue; // the node may be registering right now
            }
            delete_now(ctx, &pod).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_fractions() {
        let t: Timestamp = "2023-11-14T22:13:20.250000Z".parse().expect("a time");
        assert!((secs(&t) - 1_700_000_000.25).abs() < 1e-6);
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [],
            "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7}]}}))
        .expect("a pod");
        assert_eq!(
            tolerated_for(&pod, Duration::from_secs(30)),
            Some(Duration::from_secs(7))
        );
        let plain: Pod =
            serde_json::from_value(serde_json::json!({"spec": {"containers": []}})).expect("a pod");
        assert_eq!(
            tolerated_for(&plain, Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
    }
}
