//! ReplicaSet controller: keeps `spec.replicas` pods from the template, owned
//! by the ReplicaSet, and reports how many exist and are ready.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::selector::LabelSelector;

use super::{
    Ctx, Queue, controller_of, owner_ref, pod_gone, pod_ready, record_event, res, run_workers,
    split_key,
};
use crate::registry::Write;

/// Pod creations or deletions in flight per reconcile.
const BURST: usize = 64;

pub fn start(ctx: Ctx) {
    let queue = Queue::new();
    super::follow_owner_and_children(&ctx, &queue, res("apps", "replicasets"), "Pod");
    let ctx = Arc::new(ctx);
    run_workers("replicaset", queue, 4, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|_| None) }
    });
}

/// The order pods are removed in when scaling down: unscheduled, then
/// pending, then not ready, then the youngest.
fn deletion_rank(pod: &Value) -> (u8, u8, u8, std::cmp::Reverse<String>) {
    let scheduled = pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let running = pod["status"]["phase"] == "Running";
    (
        scheduled as u8,
        running as u8,
        pod_ready(pod) as u8,
        std::cmp::Reverse(
            pod["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
    )
}

/// A pod made from the ReplicaSet's template.
pub fn pod_from_template(rs: &Value) -> Value {
    let template = &rs["spec"]["template"];
    let mut meta = json!({
        "generateName": format!("{}-", rs["metadata"]["name"].as_str().unwrap_or_default()),
        "ownerReferences": [owner_ref(rs)],
    });
    for field in ["labels", "annotations"] {
        if template["metadata"][field].is_object() {
            meta[field] = template["metadata"][field].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]})
}

pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    let (ns, name) = split_key(key);
    let rs_res = res("apps", "replicasets");
    let pods_res = res("", "pods");
    let Some(rs) = ctx.cache.get(rs_res, ns, name) else {
        return Ok(());
    };
    if rs["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let uid = rs["metadata"]["uid"].clone();
    let selector =
        LabelSelector::from_k8s(&rs["spec"]["selector"]).map_err(ApiError::bad_request)?;
    let owned: Vec<Arc<Value>> = ctx.cache.list(pods_res, ns, |p| {
        controller_of(p).is_some_and(|o| o["uid"] == uid) && !pod_gone(p)
    });
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let mut last_rev = 0i64;
    if owned.len() < want {
        let template = pod_from_template(&rs);
        // Results are folded as they come: holding 10 000 created pods
        // until the last one lands would cost more memory than the cache.
        let (rev, created, names, failure) = futures::stream::iter(0..want - owned.len())
            .map(|_| ctx.reg.create(pods_res, ns, template.clone()))
            .buffer_unordered(BURST)
            .fold(
                (0i64, 0usize, Vec::new(), None),
                |(rev, n, mut names, failure), r| async move {
                    match r {
                        Ok(pod) => {
                            if names.len() < 5 {
                                names.push(
                                    pod["metadata"]["name"]
                                        .as_str()
                                        .unwrap_or_default()
                                        .to_string(),
                                );
                            }
                            (
                                rev.max(super::resource_version(&pod)),
                                n + 1,
                                names,
                                failure,
                            )
                        }
                        Err(e) => (rev, n, names, Some(e)),
                    }
                },
            )
            .await;
        last_rev = rev;
        if created > 0 {
            record_event(
                &ctx.reg,
                &rs,
                "Normal",
                "SuccessfulCreate",
                &created_message("Created", created, &names),
                "replicaset-controller",
            )
            .await;
        }
        if let Some(e) = failure {
            record_event(
                &ctx.reg,
                &rs,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {e}"),
                "replicaset-controller",
            )
            .await;
            return Err(e);
        }
    } else if owned.len() > want {
        let mut victims = owned.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        let results: Vec<Result<Value, ApiError>> =
            futures::stream::iter(victims.into_iter().take(owned.len() - want))
                .map(|p| {
                    let name = p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    async move { ctx.reg.delete(pods_res, ns, &name, (None, None)).await }
                })
                .buffer_unordered(BURST)
                .collect()
                .await;
        let mut names = Vec::new();
        for r in results {
            match r {
                Ok(p) => names.push(
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
                Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !names.is_empty() {
            record_event(
                &ctx.reg,
                &rs,
                "Normal",
                "SuccessfulDelete",
                &created_message("Deleted", names.len(), &names),
                "replicaset-controller",
            )
            .await;
        }
        last_rev = ctx
            .reg
            .store
            .revision()
            .await
            .map_err(crate::registry::store_error)?;
    }
    if last_rev > 0 {
        // Expectations, the simple way: the next look at this ReplicaSet
        // must see the pods just made or removed.
        ctx.cache.wait_for(last_rev).await;
    }
    let owned: Vec<Arc<Value>> = ctx.cache.list(pods_res, ns, |p| {
        controller_of(p).is_some_and(|o| o["uid"] == uid) && !pod_gone(p)
    });
    let ready = owned.iter().filter(|p| pod_ready(p)).count();
    let labeled = owned.iter().filter(|p| selector.matches_object(p)).count();
    let status = json!({
        "replicas": owned.len(),
        "fullyLabeledReplicas": labeled,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"]["generation"],
    });
    if rs["status"] != status {
        ctx.reg
            .modify(rs_res, ns, name, Write::Status, |mut obj| {
                obj["status"] = status.clone();
                Ok(obj)
            })
            .await?;
    }
    Ok(())
}

/// "Created pod: a" or "Created 12 pods: a, b, c, ...": one Event per
/// batch, not per pod, to keep a burst of creates from doubling the writes.
fn created_message(verb: &str, count: usize, names: &[String]) -> String {
    match names {
        [one] if count == 1 => format!("{verb} pod: {one}"),
        some => {
            let shown: Vec<&str> = some.iter().take(5).map(String::as_str).collect();
            let more = if count > shown.len() { ", ..." } else { "" };
            format!("{verb} {count} pods: {}{more}", shown.join(", "))
        }
    }
}
