//! Deployment controller: one ReplicaSet per pod template; a template change
//! rolls pods from the old ReplicaSets to the new one within maxSurge and
//! maxUnavailable (or all at once with Recreate).

use std::sync::Arc;

use serde_json::{Value, json};
use weft_api::ApiError;

use super::{Ctx, Queue, controller_of, owner_ref, record_event, res, run_workers, split_key};
use crate::registry::Write;

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";

pub fn start(ctx: Ctx) {
    let queue = Queue::new();
    super::follow_owner_and_children(&ctx, &queue, res("apps", "deployments"), "ReplicaSet");
    let ctx = Arc::new(ctx);
    run_workers("deployment", queue, 4, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|_| None) }
    });
}

/// FNV-1a of the template, as a short label value.
pub fn template_hash(template: &Value) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    let mut h: u64 = 0xcbf29ce484222325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

/// The template without the hash label: what a Deployment's template is
/// compared with.
fn plain_template(rs: &Value) -> Value {
    let mut t = rs["spec"]["template"].clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    t
}

/// An int-or-percent of `total`, rounded up or down.
pub fn resolve(v: &Value, total: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) => {
                let x = p * total;
                if round_up { (x + 99) / 100 } else { x / 100 }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1).max(0)
}

fn status_num(obj: &Value, field: &str) -> i64 {
    obj["status"][field].as_i64().unwrap_or(0)
}

/// Ready pods of a ReplicaSet, counted from the pods themselves (the
/// ReplicaSet's status may lag).
fn available_pods(ctx: &Ctx, rs: &Value) -> i64 {
    let uid = &rs["metadata"]["uid"];
    ctx.cache
        .list(res("", "pods"), rs["metadata"]["namespace"].as_str(), |p| {
            controller_of(p).is_some_and(|o| o["uid"] == *uid)
                && !super::pod_gone(p)
                && super::pod_ready(p)
        })
        .len() as i64
}

fn revision_of(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn set_replicas(ctx: &Ctx, rs: &Value, n: i64) -> Result<(), ApiError> {
    if replicas(rs) == n {
        return Ok(());
    }
    let (ns, name) = (
        rs["metadata"]["namespace"].as_str(),
        rs["metadata"]["name"].as_str().unwrap_or_default(),
    );
    ctx.reg
        .modify(
            res("apps", "replicasets"),
            ns,
            name,
            Write::Update,
            |mut obj| {
                obj["spec"]["replicas"] = json!(n);
                Ok(obj)
            },
        )
        .await?;
    Ok(())
}

pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    let (ns, name) = split_key(key);
    let d_res = res("apps", "deployments");
    let rs_res = res("apps", "replicasets");
    let Some(d) = ctx.cache.get(d_res, ns, name) else {
        return Ok(());
    };
    if d["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let uid = d["metadata"]["uid"].clone();
    let mut all: Vec<Arc<Value>> = ctx.cache.list(rs_res, ns, |rs| {
        controller_of(rs).is_some_and(|o| o["uid"] == uid)
    });
    all.sort_by_key(|rs| revision_of(rs));
    let template = &d["spec"]["template"];
    let want = replicas(&d);
    let new = all
        .iter()
        .find(|rs| plain_template(rs) == *template)
        .cloned();
    let olds: Vec<Arc<Value>> = all
        .iter()
        .filter(|rs| plain_template(rs) != *template)
        .cloned()
        .collect();
    let next_revision = all.iter().map(|rs| revision_of(rs)).max().unwrap_or(0) + 1;

    let strategy = d["spec"]["strategy"]["type"]
        .as_str()
        .unwrap_or("RollingUpdate");
    let old_total: i64 = olds.iter().map(|rs| replicas(rs)).sum();
    let old_pods: i64 = olds.iter().map(|rs| status_num(rs, "replicas")).sum();

    let new = match new {
        Some(rs) => rs,
        None => {
            let hash = template_hash(template);
            let mut t = template.clone();
            t["metadata"]["labels"][HASH_LABEL] = json!(hash);
            let mut selector = d["spec"]["selector"].clone();
            selector["matchLabels"][HASH_LABEL] = json!(hash);
            let initial = if olds.is_empty() { want } else { 0 };
            let rs = json!({
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("{name}-{hash}"),
                    "namespace": ns,
                    "labels": t["metadata"]["labels"],
                    "annotations": {REVISION: next_revision.to_string()},
                    "ownerReferences": [owner_ref(&d)],
                },
                "spec": {"replicas": initial, "selector": selector, "template": t},
            });
            let created = ctx.reg.create(rs_res, ns, rs).await?;
            if initial > 0 {
                let name = created["metadata"]["name"].as_str().unwrap_or_default();
                record_event(
                    &ctx.reg,
                    &d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {initial}"),
                    "deployment-controller",
                )
                .await;
            }
            // The Deployment carries the revision of its newest ReplicaSet,
            // as Kubernetes' does (kubectl rollout history reads it).
            ctx.reg
                .modify(d_res, ns, name, Write::Update, |mut obj| {
                    obj["metadata"]["annotations"][REVISION] = json!(next_revision.to_string());
                    Ok(obj)
                })
                .await?;
            let rev = super::resource_version(&created);
            ctx.cache.wait_for(rev).await;
            Arc::new(created)
        }
    };

    if olds.is_empty() || strategy == "Recreate" && old_pods == 0 && old_total == 0 {
        if replicas(&new) != want {
            set_replicas(ctx, &new, want).await?;
            let verb = if want > replicas(&new) { "up" } else { "down" };
            record_event(
                &ctx.reg,
                &d,
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled {verb} replica set {} from {} to {want}",
                    new["metadata"]["name"].as_str().unwrap_or_default(),
                    replicas(&new)
                ),
                "deployment-controller",
            )
            .await;
        }
    } else if strategy == "Recreate" {
        for rs in &olds {
            set_replicas(ctx, rs, 0).await?;
        }
    } else {
        let ru = &d["spec"]["strategy"]["rollingUpdate"];
        let surge = resolve(&ru["maxSurge"], want, true);
        let mut unavailable = resolve(&ru["maxUnavailable"], want, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let total = old_total + replicas(&new);
        // Scale the new ReplicaSet up as far as the surge allows.
        let room = want + surge - total;
        let new_target = (replicas(&new) + room.max(0)).min(want);
        if new_target > replicas(&new) {
            set_replicas(ctx, &new, new_target).await?;
            record_event(
                &ctx.reg,
                &d,
                "Normal",
                "ScalingReplicaSet",
                &format!(
                    "Scaled up replica set {} from {} to {new_target}",
                    new["metadata"]["name"].as_str().unwrap_or_default(),
                    replicas(&new)
                ),
                "deployment-controller",
            )
            .await;
        }
        // Scale old ones down as far as availability allows: first what is
        // not available anyway, then more while enough stay available. A
        // ReplicaSet counts at most its desired size as available, so pods
        // about to be removed are not counted twice while their deletion is
        // in flight.
        let min_available = want - unavailable;
        let available: i64 = all
            .iter()
            .map(|rs| available_pods(ctx, rs).min(replicas(rs)))
            .sum();
        let mut removable = (available - min_available).max(0);
        for rs in &olds {
            let current = replicas(rs);
            if current == 0 {
                continue;
            }
            let unhealthy = (current - available_pods(ctx, rs)).max(0);
            let cut = (unhealthy + removable).min(current);
            if cut > 0 {
                removable -= (cut - unhealthy).max(0);
                set_replicas(ctx, rs, current - cut).await?;
                record_event(
                    &ctx.reg,
                    &d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled down replica set {} from {current} to {}",
                        rs["metadata"]["name"].as_str().unwrap_or_default(),
                        current - cut
                    ),
                    "deployment-controller",
                )
                .await;
            }
        }
    }

    // History: keep revisionHistoryLimit scaled-down old ReplicaSets.
    let limit = d["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let idle: Vec<&Arc<Value>> = olds
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_num(rs, "replicas") == 0)
        .collect();
    if idle.len() > limit {
        for rs in &idle[..idle.len() - limit] {
            let name = rs["metadata"]["name"].as_str().unwrap_or_default();
            match ctx.reg.delete(rs_res, ns, name, (None, None)).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    // Status, from what the ReplicaSets report.
    let all: Vec<Arc<Value>> = ctx.cache.list(rs_res, ns, |rs| {
        controller_of(rs).is_some_and(|o| o["uid"] == uid)
    });
    let total: i64 = all.iter().map(|rs| status_num(rs, "replicas")).sum();
    let ready: i64 = all.iter().map(|rs| status_num(rs, "readyReplicas")).sum();
    let available: i64 = all
        .iter()
        .map(|rs| status_num(rs, "availableReplicas"))
        .sum();
    let updated = all
        .iter()
        .find(|rs| plain_template(rs) == *template)
        .map(|rs| status_num(rs, "replicas"))
        .unwrap_or(0);
    let unavailable_allowed = resolve(
        &d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        want,
        false,
    );
    let is_available = available >= want - unavailable_allowed;
    let complete = updated == want && total == want && available == want;
    let now = weft_api::meta::now_rfc3339();
    let keep_time = |kind: &str, status: &str| -> Value {
        d["status"]["conditions"]
            .as_array()
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == kind && c["status"] == status)
            })
            .map(|c| c["lastTransitionTime"].clone())
            .unwrap_or_else(|| json!(now))
    };
    let available_status = if is_available { "True" } else { "False" };
    let new_name = all
        .iter()
        .find(|rs| plain_template(rs) == *template)
        .map(|rs| rs["metadata"]["name"].clone())
        .unwrap_or(Value::Null);
    let status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (want - available).max(0),
        "conditions": [
            {
                "type": "Available",
                "status": available_status,
                "reason": if is_available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                "message": if is_available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                "lastTransitionTime": keep_time("Available", available_status),
                "lastUpdateTime": keep_time("Available", available_status),
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": if complete { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" },
                "message": if complete {
                    format!("ReplicaSet \"{}\" has successfully progressed.", new_name.as_str().unwrap_or_default())
                } else {
                    format!("ReplicaSet \"{}\" is progressing.", new_name.as_str().unwrap_or_default())
                },
                "lastTransitionTime": keep_time("Progressing", "True"),
                "lastUpdateTime": keep_time("Progressing", "True"),
            }
        ],
    });
    if d["status"] != status {
        ctx.reg
            .modify(d_res, ns, name, Write::Status, |mut obj| {
                obj["status"] = status.clone();
                Ok(obj)
            })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent() {
        assert_eq!(resolve(&json!("25%"), 10, true), 3);
        assert_eq!(resolve(&json!("25%"), 10, false), 2);
        assert_eq!(resolve(&json!(2), 10, false), 2);
        assert_ne!(
            template_hash(&json!({"a": 1})),
            template_hash(&json!({"a": 2}))
        );
    }
}
