//! Disruption controller, as kube-controller-manager's: keeps each
//! PodDisruptionBudget's status (`expectedPods`, `currentHealthy`,
//! `desiredHealthy`, `disruptionsAllowed`, the `DisruptionAllowed`
//! condition) from the pods it selects, which the eviction subresource
//! reads and decrements (`crate::registry` `evict`). Pods an eviction
//! admitted stay in `disruptedPods` until they are gone or two minutes
//! have passed, so two evictions cannot spend one disruption.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::pod::{is_finished, is_ready};

use super::deployment::resolve;
use super::{Action, Controller, Ctx};
use crate::registry::Write;
use crate::registry::selects_pod;

/// How long a pod an eviction admitted counts as disrupted while it is
/// not yet being deleted (kube's DeletionTimeout).
pub const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

pub fn start(ctx: &Ctx) {
    Controller::<PodDisruptionBudget>::new("disruption", ctx)
        .watches::<Pod>(|change, cache| {
            let mut keys = BTreeSet::new();
            for pod in [&change.new, &change.old].into_iter().flatten() {
                let ns = pod.metadata.namespace.as_deref();
                for pdb in cache.store::<PodDisruptionBudget>().list(ns) {
                    if selects_pod(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()), pod) {
                        keys.insert(weft_api::meta::key_of(&*pdb));
                    }
                }
            }
            keys.into_iter().collect()
        })
        .run(2, |pdb, ctx| async move { reconcile(&pdb, &ctx).await });
}

/// The scale of the controllers of `pods` (a Deployment's replicas for
/// the pods of its ReplicaSets), each counted once; an error names a pod
/// whose controller has no scale Weft knows.
fn expected_scale(ctx: &Ctx, pods: &[Arc<Pod>]) -> Result<i32, String> {
    let mut seen = BTreeSet::new();
    let mut total = 0;
    for p in pods {
        let Some(owner) = p
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
        else {
            return Err(format!("found no controllers for pod {:?}", p.name_any()));
        };
        let ns = p.metadata.namespace.as_deref();
        let scale = match owner.kind.as_str() {
            "ReplicaSet" => {
                let rs = ctx.cache.store::<ReplicaSet>().get(ns, &owner.name);
                let deployment = rs.as_ref().and_then(|rs| {
                    let d = rs
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|r| r.controller == Some(true) && r.kind == "Deployment")?;
                    ctx.cache.store::<Deployment>().get(ns, &d.name)
                });
                match (deployment, rs) {
                    (Some(d), _) => Some((
                        d.metadata.uid.clone(),
                        d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )),
                    (None, Some(rs)) => Some((
                        rs.metadata.uid.clone(),
                        rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )),
                    (None, None) => None,
                }
            }
            "StatefulSet" => ctx
                .cache
                .store::<k8s_openapi::api::apps::v1::StatefulSet>()
                .get(ns, &owner.name)
                .map(|s| {
                    (
                        s.metadata.uid.clone(),
                        s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )
                }),
            "ReplicationController" => ctx
                .cache
                .store::<k8s_openapi::api::core::v1::ReplicationController>()
                .get(ns, &owner.name)
                .map(|rc| {
                    (
                        rc.metadata.uid.clone(),
                        rc.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                    )
                }),
            _ => None,
        };
        let Some((uid, n)) = scale else {
            return Err(format!(
                "pod {:?} is controlled by a {} whose scale is not known",
                p.name_any(),
                owner.kind
            ));
        };
        if seen.insert(uid) {
            total += n;
        }
    }
    Ok(total)
}

pub async fn reconcile(pdb: &PodDisruptionBudget, ctx: &Ctx) -> Result<Action, ApiError> {
    if pdb.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pdb.namespace();
    let ns = ns.as_deref();
    let spec = pdb.spec.clone().unwrap_or_default();
    let pods: Vec<Arc<Pod>> = ctx
        .cache
        .store::<Pod>()
        .list(ns)
        .into_iter()
        .filter(|p| !is_finished(p) && selects_pod(spec.selector.as_ref(), p))
        .collect();
    let now = SystemTime::now();
    let old = pdb.status.clone().unwrap_or_default();
    // Disrupted pods stay so until they are being deleted or gone, or
    // the timeout passed.
    let mut disrupted = BTreeMap::new();
    let mut next_expiry: Option<Duration> = None;
    for (name, at) in old.disrupted_pods.iter().flatten() {
        let pending = pods
            .iter()
            .any(|p| p.name_any() == *name && p.metadata.deletion_timestamp.is_none());
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(at.0.as_second().max(0) as u64);
        let left = (since + DISRUPTION_TIMEOUT)
            .duration_since(now)
            .unwrap_or_default();
        if pending && !left.is_zero() {
            disrupted.insert(name.clone(), at.clone());
            next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
                && !disrupted.contains_key(&p.name_any())
        })
        .count() as i32;
    let (expected, desired, error) = if let Some(max) = spec.max_unavailable.as_ref() {
        match expected_scale(ctx, &pods) {
            Ok(e) => (e, e - resolve(Some(max), i64::from(e), true) as i32, None),
            Err(why) => (0, 0, Some(why)),
        }
    } else {
        match spec.min_available.as_ref() {
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                (pods.len() as i32, *n, None)
            }
            Some(pct) => match expected_scale(ctx, &pods) {
                Ok(e) => (e, resolve(Some(pct), i64::from(e), true) as i32, None),
                Err(why) => (0, 0, Some(why)),
            },
            // Neither: at least one... kube defaults minAvailable to 1 in
            // v1beta1 only; in policy/v1 a budget without either allows
            // every disruption.
            None => (pods.len() as i32, 0, None),
        }
    };
    let allowed = if error.is_some() {
        0
    } else {
        (healthy - desired).max(0)
    };
    let (cond_status, reason, message) = match &error {
        Some(why) => ("False", "SyncFailed", why.clone()),
        None if allowed > 0 => ("True", "SufficientPods", String::new()),
        None => ("False", "InsufficientPods", String::new()),
    };
    let old_condition = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionAllowed");
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: cond_status.into(),
        reason: reason.into(),
        message,
        observed_generation: pdb.metadata.generation,
        last_transition_time: match old_condition {
            Some(c) if c.status == cond_status => c.last_transition_time.clone(),
            _ => weft_api::meta::now_time(),
        },
    };
    let status = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        expected_pods: expected,
        current_healthy: healthy,
        desired_healthy: desired,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        conditions: Some(vec![condition]),
    };
    if pdb.status.as_ref() != Some(&status) {
        let name = pdb.name_any();
        let seen = pdb.status.clone();
        ctx.reg
            .modify::<PodDisruptionBudget>(ns, &name, Write::Status, |mut p| {
                // An eviction spent a disruption since this look: look
                // again rather than give it back.
                if p.status != seen {
                    return Err(ApiError::conflict(
                        "poddisruptionbudgets",
                        "policy",
                        &name,
                        "the status changed meanwhile",
                    ));
                }
                p.status = Some(status.clone());
                Ok(p)
            })
            .await?;
    }
    Ok(next_expiry.map_or(Action::await_change(), |d| {
        Action::requeue(d + Duration::from_millis(100))
    }))
}
