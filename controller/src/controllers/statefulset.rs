//! StatefulSet controller, as kube-controller-manager's: pods with stable
//! names (`<set>-<ordinal>`, from `ordinals.start`), host names and, through
//! the governing Service (`serviceName`, a headless Service), stable DNS
//! names (`<pod>.<service>.<namespace>.svc.cluster.local`); one
//! PersistentVolumeClaim per ordinal and claim template
//! (`<template>-<set>-<ordinal>`), made before its pod and kept across the
//! pod's re-creation, so a pod comes back to its data (and, with a local
//! volume, to its node).
//!
//! OrderedReady (the default) makes pods in ordinal order, each once the
//! one before is Running and Ready (available, with `minReadySeconds`),
//! and removes them from the highest ordinal, one at a time, only while
//! the others are healthy. Parallel makes and removes them all at once.
//!
//! Updates (history as ControllerRevisions, see [`super::history`]): with
//! RollingUpdate, pods at or above the partition are replaced from the
//! highest ordinal down, at most `maxUnavailable` (default 1) unavailable
//! at a time; pods below it stay at (and are made again at) the current
//! revision. With OnDelete, a deleted pod comes back at the update
//! revision. `persistentVolumeClaimRetentionPolicy`: `whenScaled: Delete`
//! deletes the claims of ordinals scaled away once their pod is gone;
//! `whenDeleted: Delete` makes the set an owner of its claims, so that the
//! garbage collector deletes them with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, StatefulSet, StatefulSetSpec, StatefulSetStatus,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::pod::{available_in, is_ready};

use super::deployment::resolve;
use super::history::{self, REVISION_HASH, hash_of};
use super::{
    Action, Controller, Ctx, adopt, await_availability, controller_ref, delete_pods, record_event,
};
use crate::registry::{Write, revision_of};

/// The label with the pod's name (what a per-pod Service selects).
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

/// Pods a pass creates at most (Parallel); the rest in the next pass.
const MAX_CREATES: usize = 500;
const COMPONENT: &str = "statefulset-controller";

pub fn start(ctx: &Ctx) {
    Controller::<StatefulSet>::new("statefulset", ctx)
        .owns::<Pod>()
        .owns::<ControllerRevision>()
        .run(2, |sts, ctx| async move { reconcile(&sts, &ctx).await });
}

/// The ordinal in a pod's name `<set>-<n>`, if it is one of the set's.
fn ordinal_of(set: &str, pod: &Pod) -> Option<i32> {
    let name = pod.metadata.name.as_deref()?;
    let n = name.strip_prefix(set)?.strip_prefix('-')?;
    if n.len() > 1 && n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

fn claim_name(template: &PersistentVolumeClaim, set: &str, ordinal: i32) -> String {
    format!(
        "{}-{set}-{ordinal}",
        template.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The set as a plain (not controlling) owner of a claim.
fn owner_of_claims(sts: &StatefulSet) -> Option<OwnerReference> {
    let mut r = controller_ref(sts)?.pop()?;
    r.controller = None;
    Some(r)
}

/// The pod of ordinal `ordinal` from `template` at revision `revision`.
fn stateful_pod(
    sts: &StatefulSet,
    spec: &StatefulSetSpec,
    template: &PodTemplateSpec,
    revision: &str,
    ordinal: i32,
) -> Pod {
    let set = sts.name_any();
    let name = format!("{set}-{ordinal}");
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), revision.into());
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(name.clone());
    pod_spec.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
    // Each claim template is the volume of its name, this ordinal's claim.
    let claims = spec.volume_claim_templates.as_deref().unwrap_or_default();
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    for t in claims {
        let vname = t.metadata.name.clone().unwrap_or_default();
        volumes.retain(|v| v.name != vname);
        volumes.push(Volume {
            name: vname,
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(t, &set, ordinal),
                read_only: None,
            }),
            ..Volume::default()
        });
    }
    if volumes.is_empty() {
        pod_spec.volumes = None;
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: controller_ref(sts),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Makes the ordinal's claims that do not exist yet, and keeps the set's
/// ownership of them as `whenDeleted` says.
async fn ensure_claims(
    sts: &StatefulSet,
    spec: &StatefulSetSpec,
    ordinal: i32,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let ns = sts.namespace();
    let ns = ns.as_deref();
    let set = sts.name_any();
    let delete_with_set = spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|r| r.when_deleted.as_deref())
        == Some("Delete");
    let owner = owner_of_claims(sts);
    let uid = sts.metadata.uid.clone();
    for t in spec.volume_claim_templates.as_deref().unwrap_or_default() {
        let name = claim_name(t, &set, ordinal);
        match ctx.cache.store::<PersistentVolumeClaim>().get(ns, &name) {
            Some(existing) => {
                let owned = existing
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| Some(&r.uid) == uid.as_ref());
                if owned != delete_with_set && existing.metadata.deletion_timestamp.is_none() {
                    let owner = owner.clone();
                    let uid = uid.clone();
                    ctx.reg
                        .modify::<PersistentVolumeClaim>(ns, &name, Write::Update, move |mut c| {
                            let refs = c.metadata.owner_references.get_or_insert_with(Vec::new);
                            refs.retain(|r| Some(&r.uid) != uid.as_ref());
                            if delete_with_set {
                                refs.extend(owner.clone());
                            }
                            Ok(c)
                        })
                        .await?;
                }
            }
            None => {
                let mut labels = t.metadata.labels.clone().unwrap_or_default();
                labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
                let claim = PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(labels),
                        annotations: t.metadata.annotations.clone(),
                        owner_references: delete_with_set
                            .then(|| owner.clone().into_iter().collect()),
                        ..ObjectMeta::default()
                    },
                    spec: t.spec.clone(),
                    status: None,
                };
                match ctx.reg.create(ns, claim).await {
                    Ok(c) => {
                        record_event(
                            &ctx.reg,
                            sts,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("create Claim {name} Pod {set}-{ordinal} in StatefulSet {set} success"),
                            COMPONENT,
                        )
                        .await;
                        ctx.cache.wait_for(revision_of(&c)).await;
                    }
                    Err(e) if e.code == 409 => {}
                    Err(e) => {
                        record_event(
                            &ctx.reg,
                            sts,
                            "Warning",
                            "FailedCreate",
                            &format!("create Claim {name} for Pod {set}-{ordinal} in StatefulSet {set} failed error: {e}"),
                            COMPONENT,
                        )
                        .await;
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Running, Ready and (with `minReadySeconds`) available, and not being
/// deleted.
fn healthy(pod: &Pod, min_ready: i32) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && is_ready(pod)
        && available_in(pod, min_ready, std::time::SystemTime::now()).is_some_and(|w| w.is_zero())
}

fn finished(pod: &Pod) -> bool {
    weft_api::pod::is_finished(pod)
}

pub async fn reconcile(sts: &StatefulSet, ctx: &Ctx) -> Result<Action, ApiError> {
    if sts.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sts.namespace();
    let ns = ns.as_deref();
    let set = sts.name_any();
    let spec = sts.spec.clone().unwrap_or_default();
    let uid = sts.metadata.uid.clone().unwrap_or_default();
    // What an earlier set of this name and selector left (deleted with
    // --cascade=orphan) is this one's now: its revisions, and its pods
    // that are members (`<set>-<ordinal>`).
    adopt::<StatefulSet, ControllerRevision>(ctx, sts, &spec.selector, |_| true).await?;
    adopt::<StatefulSet, Pod>(ctx, sts, &spec.selector, |p| ordinal_of(&set, p).is_some()).await?;
    let pods = ctx.cache.store::<Pod>().controlled_by(&uid);
    let update =
        history::sync(sts, &spec.template, spec.revision_history_limit, &pods, ctx).await?;
    let update_rev = update.name.clone();
    let current_rev = sts
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_rev.clone());
    // The current revision's template, for pods below the partition.
    let current_template = if current_rev == update_rev {
        None
    } else {
        ctx.cache
            .store::<ControllerRevision>()
            .get(ns, &current_rev)
            .and_then(|r| history::revision_template(&r))
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let first = spec
        .ordinals
        .as_ref()
        .and_then(|o| o.start)
        .unwrap_or(0)
        .max(0);
    let end = first.saturating_add(replicas);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let ordered = spec.pod_management_policy.as_deref() != Some("Parallel");
    let rolling = spec
        .update_strategy
        .as_ref()
        .filter(|s| s.type_.as_deref() != Some("OnDelete"))
        .map(|s| s.rolling_update.clone().unwrap_or_default());
    let partition = rolling
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0)
        .max(0);

    let mut by_ordinal: BTreeMap<i32, Arc<Pod>> = BTreeMap::new();
    let mut strays = Vec::new();
    for p in pods {
        match ordinal_of(&set, &p) {
            Some(n) => {
                by_ordinal.insert(n, p);
            }
            None => strays.push(p),
        }
    }
    if !strays.is_empty() {
        delete_pods(ctx, ns, &strays, true).await?;
    }

    // The claims of pods that run: their owners as `whenDeleted` says now
    // (a missing claim is made before its pod, below).
    for &ordinal in by_ordinal.range(first..end).map(|(n, _)| n) {
        ensure_claims(sts, &spec, ordinal, ctx).await?;
    }
    // Pods in the range, lowest first.
    let mut last_rev = 0i64;
    let mut blocked = false;
    // Parallel creations in one pass are capped (the next pass reads
    // spec.replicas again), as the ReplicaSet's are.
    let mut created = 0usize;
    let mut capped = false;
    for ordinal in first..end {
        match by_ordinal.get(&ordinal) {
            None if created >= MAX_CREATES => {
                capped = true;
                blocked = true;
                break;
            }
            None => {
                created += 1;
                ensure_claims(sts, &spec, ordinal, ctx).await?;
                let (template, revision) = match &current_template {
                    Some(t) if rolling.is_some() && ordinal < first + partition => {
                        (t.clone(), current_rev.as_str())
                    }
                    _ => (spec.template.clone(), update_rev.as_str()),
                };
                let pod = stateful_pod(sts, &spec, &template, revision, ordinal);
                match ctx.reg.create(ns, pod).await {
                    Ok(p) => {
                        last_rev = last_rev.max(revision_of(&p));
                        record_event(
                            &ctx.reg,
                            sts,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("create Pod {set}-{ordinal} in StatefulSet {set} successful"),
                            COMPONENT,
                        )
                        .await;
                    }
                    // The previous pod of that name is still going, or
                    // the name is another controller's pod: said once per
                    // pass, and looked at again when it changes.
                    Err(e) if e.code == 409 => {
                        let theirs = ctx
                            .cache
                            .store::<Pod>()
                            .get(ns, &format!("{set}-{ordinal}"))
                            .is_some_and(|p| {
                                crate::cache::controller_uid(&*p) != Some(uid.as_str())
                            });
                        if theirs {
                            record_event(
                                &ctx.reg,
                                sts,
                                "Warning",
                                "FailedCreate",
                                &format!("create Pod {set}-{ordinal} in StatefulSet {set} failed error: {e}"),
                                COMPONENT,
                            )
                            .await;
                        }
                    }
                    Err(e) => {
                        record_event(
                            &ctx.reg,
                            sts,
                            "Warning",
                            "FailedCreate",
                            &format!(
                                "create Pod {set}-{ordinal} in StatefulSet {set} failed error: {e}"
                            ),
                            COMPONENT,
                        )
                        .await;
                        return Err(e);
                    }
                }
                if ordered {
                    blocked = true;
                    break;
                }
            }
            Some(p) if finished(p) && p.metadata.deletion_timestamp.is_none() => {
                // A failed (or ended) pod is made again, under its name.
                delete_pods(ctx, ns, std::slice::from_ref(p), true).await?;
                if ordered {
                    blocked = true;
                    break;
                }
            }
            Some(p) => {
                if ordered && !healthy(p, min_ready) {
                    blocked = true;
                    break;
                }
            }
        }
    }

    // Scaled away: the highest ordinal first.
    let condemned: Vec<Arc<Pod>> = by_ordinal
        .iter()
        .rev()
        .filter(|(n, _)| **n < first || **n >= end)
        .map(|(_, p)| p.clone())
        .collect();
    if !condemned.is_empty() && !blocked {
        let in_range_healthy =
            (first..end).all(|n| by_ordinal.get(&n).is_some_and(|p| healthy(p, min_ready)));
        let going = condemned
            .iter()
            .any(|p| p.metadata.deletion_timestamp.is_some());
        let doomed: Vec<Arc<Pod>> = if ordered {
            if in_range_healthy && !going {
                condemned.iter().take(1).cloned().collect()
            } else {
                Vec::new()
            }
        } else {
            condemned
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .cloned()
                .collect()
        };
        for name in delete_pods(ctx, ns, &doomed, true).await? {
            record_event(
                &ctx.reg,
                sts,
                "Normal",
                "SuccessfulDelete",
                &format!("delete Pod {name} in StatefulSet {set} successful"),
                COMPONENT,
            )
            .await;
        }
        blocked = blocked || ordered;
    }
    if spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|r| r.when_scaled.as_deref())
        == Some("Delete")
    {
        delete_scaled_claims(sts, &spec, &by_ordinal, first, end, ctx).await?;
    }

    // Rolling update: from the highest ordinal down to the partition.
    if let Some(ru) = &rolling
        && !blocked
    {
        let max_unavailable =
            resolve(ru.max_unavailable.as_ref(), i64::from(replicas), true).max(1);
        // Missing or not healthy, counted without walking the range (a
        // client may ask for two billion replicas).
        let healthy_in_range = by_ordinal
            .range(first..end)
            .filter(|(_, p)| healthy(p, min_ready))
            .count() as i64;
        let mut unavailable = i64::from(end - first) - healthy_in_range;
        let mut doomed = Vec::new();
        // (A partition past the end leaves nothing to update.)
        let from = first.saturating_add(partition).min(end);
        for (_, p) in by_ordinal.range(from..end).rev() {
            if hash_of(p) == Some(update_rev.as_str()) || p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let already_down = !healthy(p, min_ready);
            if already_down {
                doomed.push(p.clone());
            } else if unavailable < max_unavailable {
                unavailable += 1;
                doomed.push(p.clone());
            } else {
                break;
            }
            if ordered && unavailable >= max_unavailable {
                break;
            }
        }
        for name in delete_pods(ctx, ns, &doomed, true).await? {
            record_event(
                &ctx.reg,
                sts,
                "Normal",
                "SuccessfulDelete",
                &format!("delete Pod {name} in StatefulSet {set} successful"),
                COMPONENT,
            )
            .await;
        }
    }
    if last_rev > 0 {
        ctx.cache.wait_for(last_rev).await;
    }
    write_status(sts, &spec, &update_rev, &current_rev, ctx).await?;
    if capped {
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    // Pods that become available with time bring the set back then.
    Ok(await_availability(ctx, &uid, min_ready))
}

/// Deletes the claims of ordinals outside the range whose pod is gone
/// (`whenScaled: Delete`).
async fn delete_scaled_claims(
    sts: &StatefulSet,
    spec: &StatefulSetSpec,
    by_ordinal: &BTreeMap<i32, Arc<Pod>>,
    first: i32,
    end: i32,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let ns = sts.namespace();
    let set = sts.name_any();
    for t in spec.volume_claim_templates.as_deref().unwrap_or_default() {
        let prefix = format!("{}-{set}-", t.metadata.name.as_deref().unwrap_or_default());
        for c in ctx
            .cache
            .store::<PersistentVolumeClaim>()
            .list(ns.as_deref())
        {
            let Some(n) = c
                .metadata
                .name
                .as_deref()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if (n < first || n >= end)
                && !by_ordinal.contains_key(&n)
                && c.metadata.deletion_timestamp.is_none()
            {
                match ctx
                    .reg
                    .delete::<PersistentVolumeClaim>(
                        ns.as_deref(),
                        &c.name_any(),
                        (c.metadata.uid.clone(), None),
                        None,
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
    }
    Ok(())
}

async fn write_status(
    sts: &StatefulSet,
    spec: &StatefulSetSpec,
    update_rev: &str,
    current_rev: &str,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let uid = sts.metadata.uid.as_deref().unwrap_or_default();
    let set = sts.name_any();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = std::time::SystemTime::now();
    let pods: Vec<Arc<Pod>> = ctx
        .cache
        .store::<Pod>()
        .controlled_by(uid)
        .into_iter()
        .filter(|p| ordinal_of(&set, p).is_some() && !finished(p))
        .collect();
    let count = |f: &dyn Fn(&Pod) -> bool| pods.iter().filter(|p| f(p)).count() as i32;
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let ready = count(&|p| p.metadata.deletion_timestamp.is_none() && is_ready(p));
    let available = count(&|p| {
        p.metadata.deletion_timestamp.is_none()
            && available_in(p, min_ready, now).is_some_and(|w| w.is_zero())
    });
    let updated = count(&|p| hash_of(p) == Some(update_rev));
    let current = count(&|p| hash_of(p) == Some(current_rev));
    // The update is done when every replica is at the update revision and
    // ready: it becomes the current revision.
    let done = updated == replicas && ready == replicas && pods.len() as i32 == replicas;
    let current_revision = if done { update_rev } else { current_rev };
    let status = StatefulSetStatus {
        replicas: pods.len() as i32,
        ready_replicas: Some(ready).filter(|n| *n > 0),
        available_replicas: Some(available).filter(|n| *n > 0),
        current_replicas: Some(if done { updated } else { current }).filter(|n| *n > 0),
        updated_replicas: Some(updated).filter(|n| *n > 0),
        current_revision: Some(current_revision.to_string()),
        update_revision: Some(update_rev.to_string()),
        observed_generation: sts.metadata.generation,
        collision_count: sts.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if sts.status.as_ref() == Some(&status) {
        return Ok(());
    }
    ctx.reg
        .modify::<StatefulSet>(
            sts.metadata.namespace.as_deref(),
            &set,
            Write::Status,
            |mut s| {
                s.status = Some(status.clone());
                Ok(s)
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pods_take_their_ordinal_name_host_name_and_claims() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "ns", "uid": "u1"},
            "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}}]},
        }))
        .expect("a StatefulSet");
        let spec = sts.spec.clone().expect("spec");
        let pod = stateful_pod(&sts, &spec, &spec.template, "db-abc", 2);
        assert_eq!(pod.metadata.name.as_deref(), Some("db-2"));
        assert_eq!(ordinal_of("db", &pod), Some(2));
        let ps = pod.spec.as_ref().expect("spec");
        assert_eq!(ps.hostname.as_deref(), Some("db-2"));
        assert_eq!(ps.subdomain.as_deref(), Some("db"));
        let volumes = ps.volumes.as_ref().expect("volumes");
        assert_eq!(volumes.len(), 1, "the claim replaces the template's volume");
        assert_eq!(
            volumes[0]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("data-db-2")
        );
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels[POD_NAME], "db-2");
        assert_eq!(labels[POD_INDEX], "2");
        assert_eq!(labels[REVISION_HASH], "db-abc");
        // Names that are not the set's ordinals.
        let other = |name: &str| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        assert_eq!(ordinal_of("db", &other("db-01")), None);
        assert_eq!(ordinal_of("db", &other("dbx-1")), None);
        assert_eq!(ordinal_of("db", &other("db-x")), None);
        assert_eq!(ordinal_of("db", &other("db-0")), Some(0));
    }
}
