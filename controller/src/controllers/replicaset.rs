//! ReplicaSet controller: keeps `spec.replicas` pods from the template, owned
//! by the ReplicaSet, and reports how many exist and are ready. The same
//! loop runs ReplicationControllers (the legacy kind: a ReplicaSet with an
//! equality selector), through [`Replicated`].

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{
    Pod, PodTemplateSpec, ReplicationController, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::pod::{is_gone, is_ready};

use super::{Action, Controller, Ctx, controller_ref, delete_pods, record_event};
use crate::registry::{Write, revision_of, store_error};

/// Pod creations or deletions in flight per reconcile.
const BURST: usize = 64;

/// Pods created or deleted per reconcile at most, as kube-controller-manager's
/// `burstReplicas`: the next pass reads `spec.replicas` again, so a scale to
/// a million that is taken back stops within a batch.
const BURST_REPLICAS: usize = 500;

/// What the replica loop reads and writes of its kind.
pub trait Replicated: crate::registry::Kind {
    /// The component its Events name.
    const COMPONENT: &'static str;
    /// `spec.replicas` (1 when unset).
    fn replicas(&self) -> i32;
    /// The pod template.
    fn template(&self) -> Option<PodTemplateSpec>;
    /// The selector (an equality one, for a ReplicationController).
    fn selector(&self) -> LabelSelector;
    /// `spec.minReadySeconds`.
    fn min_ready_seconds(&self) -> i32;
    /// Writes `counts` as its status.
    fn set_counts(&mut self, counts: &Counts);
    /// Whether the status already says `counts`.
    fn reports(&self, counts: &Counts) -> bool {
        let mut probe = self.clone();
        probe.set_counts(counts);
        probe.status() == self.status()
    }
}

/// What the loop counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    replicas: i32,
    labeled: i32,
    ready: i32,
    available: i32,
    observed_generation: Option<i64>,
}

impl Replicated for ReplicaSet {
    const COMPONENT: &'static str = "replicaset-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }
    fn selector(&self) -> LabelSelector {
        self.spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default()
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn set_counts(&mut self, c: &Counts) {
        self.status = Some(ReplicaSetStatus {
            replicas: c.replicas,
            fully_labeled_replicas: Some(c.labeled),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.available),
            observed_generation: c.observed_generation,
            ..ReplicaSetStatus::default()
        });
    }
}

impl Replicated for ReplicationController {
    const COMPONENT: &'static str = "replication-controller";
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn template(&self) -> Option<PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.clone())
    }
    fn selector(&self) -> LabelSelector {
        LabelSelector {
            match_labels: self.spec.as_ref().and_then(|s| s.selector.clone()),
            match_expressions: None,
        }
    }
    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }
    fn set_counts(&mut self, c: &Counts) {
        self.status = Some(ReplicationControllerStatus {
            replicas: c.replicas,
            fully_labeled_replicas: Some(c.labeled),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.available),
            observed_generation: c.observed_generation,
            ..ReplicationControllerStatus::default()
        });
    }
}

pub fn start(ctx: &Ctx) {
    Controller::<ReplicaSet>::new("replicaset", ctx)
        .owns::<Pod>()
        .run(4, |rs, ctx| async move { reconcile(&*rs, &ctx).await });
    Controller::<ReplicationController>::new("replicationcontroller", ctx)
        .owns::<Pod>()
        .run(2, |rc, ctx| async move { reconcile(&*rc, &ctx).await });
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
pub fn pod_from_template<K: Replicated>(rs: &K) -> Pod {
    let template = rs.template().unwrap_or_default();
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

fn owned_pods<K: Replicated>(ctx: &Ctx, rs: &K) -> Vec<Arc<Pod>> {
    let uid = rs.meta().uid.as_deref().unwrap_or_default();
    let mut pods = ctx.cache.store::<Pod>().controlled_by(uid);
    pods.retain(|p| !is_gone(p));
    pods
}

pub async fn reconcile<K: Replicated>(rs: &K, ctx: &Ctx) -> Result<Action, ApiError> {
    if rs.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = rs.namespace();
    let ns = ns.as_deref();
    let name = rs.name_any();
    let owned = owned_pods(ctx, rs);
    let want = rs.replicas().max(0) as usize;
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
                K::COMPONENT,
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
                K::COMPONENT,
            )
            .await;
            return Err(e);
        }
    } else if owned.len() > want {
        let mut victims = owned.clone();
        victims.sort_by_key(|p| deletion_rank(p));
        let doomed: Vec<Arc<Pod>> = victims
            .into_iter()
            .take((owned.len() - want).min(BURST_REPLICAS))
            .collect();
        let names = delete_pods(ctx, ns, &doomed, false).await?;
        if !names.is_empty() {
            record_event(
                &ctx.reg,
                rs,
                "Normal",
                "SuccessfulDelete",
                &created_message("Deleted", names.len(), &names),
                K::COMPONENT,
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
    let min_ready = rs.min_ready_seconds();
    let now = std::time::SystemTime::now();
    let waits: Vec<std::time::Duration> = owned
        .iter()
        .filter_map(|p| weft_api::pod::available_in(p, min_ready, now))
        .collect();
    let available = waits.iter().filter(|w| w.is_zero()).count() as i32;
    let next_available = waits.iter().filter(|w| !w.is_zero()).min().copied();
    let selector = rs.selector();
    let labeled = owned
        .iter()
        .filter(|p| {
            crate::registry::validation::selects(
                &selector,
                p.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
        })
        .count() as i32;
    let counts = Counts {
        replicas: owned.len() as i32,
        labeled,
        ready,
        available,
        observed_generation: rs.meta().generation,
    };
    if !rs.reports(&counts) {
        ctx.reg
            .modify::<K>(ns, &name, Write::Status, |mut obj| {
                obj.set_counts(&counts);
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
