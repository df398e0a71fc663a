//! ReplicaSet controller: keeps `spec.replicas` pods from the template, owned
//! by the ReplicaSet, and reports how many exist and are ready.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::pod::{is_gone, is_ready};

use super::{Action, Controller, Ctx, controller_ref, record_event};
use crate::registry::{Write, revision_of, store_error};

/// Pod creations or deletions in flight per reconcile.
const BURST: usize = 64;

/// Pods created or deleted per reconcile at most, as kube-controller-manager's
/// `burstReplicas`: the next pass reads `spec.replicas` again, so a scale to
/// a million that is taken back stops within a batch.
const BURST_REPLICAS: usize = 500;

pub fn start(ctx: &Ctx) {
    Controller::<ReplicaSet>::new("replicaset", ctx)
        .owns::<Pod>()
        .run(4, |rs, ctx| async move { reconcile(&rs, &ctx).await });
}

/// The order pods are removed in when scaling down: unscheduled, then
/// pending, then not ready, then the youngest.
fn deletion_rank(pod: &Pod) -> (u8, u8, u8, std::cmp::Reverse<Option<Time>>) {
    let scheduled = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    let created = pod.metadata.creation_timestamp.clone();
    (
        scheduled as u8,
        running as u8,
        is_ready(pod) as u8,
        std::cmp::Reverse(created),
    )
}

/// A pod made from the ReplicaSet's template, owned by it.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            owner_references: controller_ref(rs),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

fn owned_pods(ctx: &Ctx, rs: &ReplicaSet) -> Vec<Arc<Pod>> {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let mut pods = ctx.cache.store::<Pod>().controlled_by(uid);
    pods.retain(|p| !is_gone(p));
    pods
}

pub async fn reconcile(rs: &ReplicaSet, ctx: &Ctx) -> Result<Action, ApiError> {
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace();
    let ns = ns.as_deref();
    let name = rs.name_any();
    let owned = owned_pods(ctx, rs);
    let want = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let mut last_rev = 0i64;
    let capped = owned.len().abs_diff(want) > BURST_REPLICAS;
    if owned.len() < want {
        let template = pod_from_template(rs);
        // Results are folded as they come: holding 10 000 created pods
        // until the last one lands would cost more memory than the cache.
        let (rev, created, names, failure) =
            futures::stream::iter(0..(want - owned.len()).min(BURST_REPLICAS))
                .map(|_| ctx.reg.create(ns, template.clone()))
                .buffer_unordered(BURST)
                .fold(
                    (0i64, 0usize, Vec::new(), None),
                    |(rev, n, mut names, failure), r| async move {
                        match r {
                            Ok(pod) => {
                                if names.len() < 5 {
                                    names.push(pod.name_any());
                                }
                                (rev.max(revision_of(&pod)), n + 1, names, failure)
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
                rs,
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
                rs,
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
        let results: Vec<Result<Pod, ApiError>> = futures::stream::iter(
            victims
                .into_iter()
                .take((owned.len() - want).min(BURST_REPLICAS)),
        )
        .map(|p| async move {
            ctx.reg
                .delete::<Pod>(ns, &p.name_any(), (None, None), None)
                .await
        })
        .buffer_unordered(BURST)
        .collect()
        .await;
        let mut names = Vec::new();
        for r in results {
            match r {
                Ok(p) => names.push(p.name_any()),
                Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if !names.is_empty() {
            record_event(
                &ctx.reg,
                rs,
                "Normal",
                "SuccessfulDelete",
                &created_message("Deleted", names.len(), &names),
                "replicaset-controller",
            )
            .await;
        }
        last_rev = ctx.reg.store.revision().await.map_err(store_error)?;
    }
    if last_rev > 0 {
        // Expectations, the simple way: the next look at this ReplicaSet
        // must see the pods just made or removed.
        ctx.cache.wait_for(last_rev).await;
    }
    let owned = owned_pods(ctx, rs);
    let ready = owned.iter().filter(|p| is_ready(p)).count() as i32;
    // Available: ready for minReadySeconds; the soonest to become so
    // brings the ReplicaSet back then.
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = std::time::SystemTime::now();
    let waits: Vec<std::time::Duration> = owned
        .iter()
        .filter_map(|p| weft_api::pod::available_in(p, min_ready, now))
        .collect();
    let available = waits.iter().filter(|w| w.is_zero()).count() as i32;
    let next_available = waits.iter().filter(|w| !w.is_zero()).min().copied();
    let selector = rs
        .spec
        .as_ref()
        .map(|s| s.selector.clone())
        .unwrap_or_default();
    let labeled = owned
        .iter()
        .filter(|p| {
            crate::registry::validation::selects(
                &selector,
                p.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
        })
        .count() as i32;
    let status = ReplicaSetStatus {
        replicas: owned.len() as i32,
        fully_labeled_replicas: Some(labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        ..ReplicaSetStatus::default()
    };
    if rs.status.as_ref() != Some(&status) {
        ctx.reg
            .modify::<ReplicaSet>(ns, &name, Write::Status, |mut obj| {
                obj.status = Some(status.clone());
                Ok(obj)
            })
            .await?;
    }
    if capped {
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    if let Some(wait) = next_available {
        return Ok(Action::requeue(
            wait + std::time::Duration::from_millis(100),
        ));
    }
    Ok(Action::await_change())
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
