//! Deployment controller: one ReplicaSet per pod template; a template change
//! rolls pods from the old ReplicaSets to the new one within maxSurge and
//! maxUnavailable (or all at once with Recreate).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt as _;
use weft_api::ApiError;

use super::{Action, Controller, Ctx, controller_ref, record_event};
use crate::registry::{Write, revision_of};

pub const HASH_LABEL: &str = "pod-template-hash";
pub const REVISION: &str = "deployment.kubernetes.io/revision";

pub fn start(ctx: &Ctx) {
    Controller::<Deployment>::new("deployment", ctx)
        .owns::<ReplicaSet>()
        .run(4, |d, ctx| async move { reconcile(&d, &ctx).await });
}

/// FNV-1a of the template (its JSON, keys sorted), as a short label value.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let text = serde_json::to_value(template)
        .map(|v| v.to_string())
        .unwrap_or_default();
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
fn plain_template(rs: &ReplicaSet) -> PodTemplateSpec {
    let mut t = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    t
}

/// An int-or-percent of `total`, rounded up or down.
pub fn resolve(v: Option<&IntOrString>, total: i64, round_up: bool) -> i64 {
    match v {
        Some(IntOrString::Int(n)) => i64::from(*n),
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
                Some(p) => {
                    let x = p * total;
                    if round_up { (x + 99) / 100 } else { x / 100 }
                }
                None => s.parse().unwrap_or(0),
            }
        }
        None => 0,
    }
}

fn replicas(rs: &ReplicaSet) -> i64 {
    rs.spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(1, i64::from)
        .max(0)
}

fn status_replicas(rs: &ReplicaSet) -> i64 {
    rs.status.as_ref().map_or(0, |s| i64::from(s.replicas))
}

fn status_num(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> Option<i32>,
) -> i64 {
    rs.status.as_ref().and_then(f).map_or(0, i64::from)
}

/// Available pods of a ReplicaSet (ready for its minReadySeconds),
/// counted from the pods themselves (the ReplicaSet's status may lag).
fn available_pods(ctx: &Ctx, rs: &ReplicaSet) -> i64 {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let now = std::time::SystemTime::now();
    ctx.cache
        .store::<Pod>()
        .controlled_by(uid)
        .iter()
        .filter(|p| {
            !weft_api::pod::is_gone(p)
                && weft_api::pod::available_in(p, min_ready, now).is_some_and(|w| w.is_zero())
        })
        .count() as i64
}

/// The Deployment's annotations its new ReplicaSet carries (as kube's
/// controller copies them, `kubernetes.io/change-cause` among them, which
/// `kubectl rollout history` shows), and its revision.
fn replica_set_annotations(d: &Deployment, revision: i64) -> BTreeMap<String, String> {
    const SKIP: [&str; 5] = [
        "kubectl.kubernetes.io/last-applied-configuration",
        REVISION,
        "deployment.kubernetes.io/revision-history",
        "deployment.kubernetes.io/desired-replicas",
        "deployment.kubernetes.io/max-replicas",
    ];
    let mut out: BTreeMap<String, String> = d
        .annotations()
        .iter()
        .filter(|(k, _)| !SKIP.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(REVISION.into(), revision.to_string());
    out
}

/// Whether the ReplicaSet already carries `want` (it may carry more).
fn carries(rs: &ReplicaSet, want: &BTreeMap<String, String>) -> bool {
    want.iter().all(|(k, v)| rs.annotations().get(k) == Some(v))
}

/// The current template's ReplicaSet as the newest revision: one that an
/// older revision held (a rollback, `kubectl rollout undo`) is renumbered
/// above the others, as kube does; it carries the Deployment's
/// annotations, and the Deployment its revision.
async fn adopt_revision(
    ctx: &Ctx,
    d: &Deployment,
    all: &[Arc<ReplicaSet>],
    rs: Arc<ReplicaSet>,
) -> Result<Arc<ReplicaSet>, ApiError> {
    let others = all
        .iter()
        .filter(|r| r.metadata.uid != rs.metadata.uid)
        .map(|r| revision_annotation(r))
        .max()
        .unwrap_or(0);
    let revision = revision_annotation(&rs).max(others + 1);
    let want = replica_set_annotations(d, revision);
    let ns = d.namespace();
    let rs = if carries(&rs, &want) {
        rs
    } else {
        let updated = ctx
            .reg
            .modify::<ReplicaSet>(ns.as_deref(), &rs.name_any(), Write::Update, |mut obj| {
                obj.annotations_mut().extend(want.clone());
                Ok(obj)
            })
            .await?;
        ctx.cache.wait_for(revision_of(&updated)).await;
        Arc::new(updated)
    };
    if d.annotations().get(REVISION) != Some(&revision.to_string()) {
        ctx.reg
            .modify::<Deployment>(ns.as_deref(), &d.name_any(), Write::Update, |mut obj| {
                obj.annotations_mut()
                    .insert(REVISION.into(), revision.to_string());
                Ok(obj)
            })
            .await?;
    }
    Ok(rs)
}

fn revision_annotation(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

async fn set_replicas(ctx: &Ctx, rs: &ReplicaSet, n: i64) -> Result<(), ApiError> {
    if replicas(rs) == n {
        return Ok(());
    }
    ctx.reg
        .modify::<ReplicaSet>(
            rs.namespace().as_deref(),
            &rs.name_any(),
            Write::Update,
            |mut obj| {
                obj.spec.get_or_insert_with(Default::default).replicas = Some(n as i32);
                Ok(obj)
            },
        )
        .await?;
    Ok(())
}

async fn scaled(ctx: &Ctx, d: &Deployment, message: &str) {
    record_event(
        &ctx.reg,
        d,
        "Normal",
        "ScalingReplicaSet",
        message,
        "deployment-controller",
    )
    .await;
}

pub async fn reconcile(d: &Deployment, ctx: &Ctx) -> Result<Action, ApiError> {
    if d.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = d.namespace();
    let ns = ns.as_deref();
    let name = d.name_any();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let rs_store = ctx.cache.store::<ReplicaSet>();
    let mut all: Vec<Arc<ReplicaSet>> = rs_store.controlled_by(&uid);
    all.sort_by_key(|rs| revision_annotation(rs));
    // The Deployment's minReadySeconds is its ReplicaSets' (kept in step
    // when it changes); they count available pods by it.
    for rs in &all {
        if rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != spec.min_ready_seconds {
            let want = spec.min_ready_seconds;
            ctx.reg
                .modify::<ReplicaSet>(ns, &rs.name_any(), Write::Update, |mut r| {
                    r.spec
                        .get_or_insert_with(Default::default)
                        .min_ready_seconds = want;
                    Ok(r)
                })
                .await?;
        }
    }
    let template = &spec.template;
    let want = i64::from(spec.replicas.unwrap_or(1)).max(0);
    let new = all
        .iter()
        .find(|rs| plain_template(rs) == *template)
        .cloned();
    let olds: Vec<Arc<ReplicaSet>> = all
        .iter()
        .filter(|rs| plain_template(rs) != *template)
        .cloned()
        .collect();
    let next_revision = all
        .iter()
        .map(|rs| revision_annotation(rs))
        .max()
        .unwrap_or(0)
        + 1;

    let strategy = spec
        .strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        .to_string();
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone());
    let old_total: i64 = olds.iter().map(|rs| replicas(rs)).sum();
    let old_pods: i64 = olds.iter().map(|rs| status_replicas(rs)).sum();

    let paused = spec.paused == Some(true);
    if paused {
        // Paused (`kubectl rollout pause`): no new ReplicaSet and no
        // rollout step; a scale still applies when one ReplicaSet runs.
        let active: Vec<&Arc<ReplicaSet>> = all.iter().filter(|rs| replicas(rs) > 0).collect();
        let target = match (active.as_slice(), &new) {
            ([one], _) => Some((*one).clone()),
            ([], Some(n)) => Some(n.clone()),
            _ => None,
        };
        if let Some(rs) = target
            && replicas(&rs) != want
        {
            let verb = if want > replicas(&rs) { "up" } else { "down" };
            set_replicas(ctx, &rs, want).await?;
            scaled(
                ctx,
                d,
                &format!(
                    "Scaled {verb} replica set {} from {} to {want}",
                    rs.name_any(),
                    replicas(&rs)
                ),
            )
            .await;
        }
    } else {
        let new = match new {
            Some(rs) => adopt_revision(ctx, d, &all, rs).await?,
            None => {
                let hash = template_hash(template);
                let mut t = template.clone();
                t.metadata
                    .get_or_insert_with(Default::default)
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let mut selector = spec.selector.clone();
                selector
                    .match_labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let initial = if olds.is_empty() { want } else { 0 };
                let rs = ReplicaSet {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-{hash}")),
                        namespace: ns.map(String::from),
                        labels: t.metadata.as_ref().and_then(|m| m.labels.clone()),
                        annotations: Some(replica_set_annotations(d, next_revision)),
                        owner_references: controller_ref(d),
                        ..ObjectMeta::default()
                    },
                    spec: Some(ReplicaSetSpec {
                        replicas: Some(initial as i32),
                        selector,
                        template: Some(t),
                        min_ready_seconds: d.spec.as_ref().and_then(|s| s.min_ready_seconds),
                    }),
                    status: None,
                };
                let created = ctx.reg.create(ns, rs).await?;
                if initial > 0 {
                    scaled(
                        ctx,
                        d,
                        &format!(
                            "Scaled up replica set {} from 0 to {initial}",
                            created.name_any()
                        ),
                    )
                    .await;
                }
                // The Deployment carries the revision of its newest ReplicaSet,
                // as Kubernetes' does (kubectl rollout history reads it).
                ctx.reg
                    .modify::<Deployment>(ns, &name, Write::Update, |mut obj| {
                        obj.annotations_mut()
                            .insert(REVISION.into(), next_revision.to_string());
                        Ok(obj)
                    })
                    .await?;
                ctx.cache.wait_for(revision_of(&created)).await;
                Arc::new(created)
            }
        };

        if olds.is_empty() || strategy == "Recreate" && old_pods == 0 && old_total == 0 {
            if replicas(&new) != want {
                set_replicas(ctx, &new, want).await?;
                let verb = if want > replicas(&new) { "up" } else { "down" };
                scaled(
                    ctx,
                    d,
                    &format!(
                        "Scaled {verb} replica set {} from {} to {want}",
                        new.name_any(),
                        replicas(&new)
                    ),
                )
                .await;
            }
        } else if strategy == "Recreate" {
            for rs in &olds {
                set_replicas(ctx, rs, 0).await?;
            }
        } else {
            let surge = resolve(
                rolling.as_ref().and_then(|r| r.max_surge.as_ref()),
                want,
                true,
            );
            let mut unavailable = resolve(
                rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()),
                want,
                false,
            );
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            let total = old_total + replicas(&new);
            // Scale the new ReplicaSet up as far as the surge allows.
            let room = want + surge - total;
            let new_target = (replicas(&new) + room.max(0)).min(want);
            if new_target > replicas(&new) {
                set_replicas(ctx, &new, new_target).await?;
                scaled(
                    ctx,
                    d,
                    &format!(
                        "Scaled up replica set {} from {} to {new_target}",
                        new.name_any(),
                        replicas(&new)
                    ),
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
                    scaled(
                        ctx,
                        d,
                        &format!(
                            "Scaled down replica set {} from {current} to {}",
                            rs.name_any(),
                            current - cut
                        ),
                    )
                    .await;
                }
            }
        }
    }

    // History: keep revisionHistoryLimit scaled-down old ReplicaSets.
    let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let idle: Vec<&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|rs| replicas(rs) == 0 && status_replicas(rs) == 0)
        .collect();
    if idle.len() > limit {
        for rs in &idle[..idle.len() - limit] {
            match ctx
                .reg
                .delete::<ReplicaSet>(ns, &rs.name_any(), (None, None), None)
                .await
            {
                Ok(_) | Err(ApiError { code: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    // Status, from what the ReplicaSets report.
    let all = rs_store.controlled_by(&uid);
    let total: i64 = all.iter().map(|rs| status_replicas(rs)).sum();
    let ready: i64 = all
        .iter()
        .map(|rs| status_num(rs, |s| s.ready_replicas))
        .sum();
    let available: i64 = all
        .iter()
        .map(|rs| status_num(rs, |s| s.available_replicas))
        .sum();
    let newest = all.iter().find(|rs| plain_template(rs) == *template);
    let updated = newest.map_or(0, |rs| status_replicas(rs));
    let unavailable_allowed = resolve(
        rolling.as_ref().and_then(|r| r.max_unavailable.as_ref()),
        want,
        false,
    );
    let is_available = available >= want - unavailable_allowed;
    let complete = updated == want && total == want && available == want;
    let now = weft_api::meta::now_time();
    let keep_time = |kind: &str, status: &str| -> Option<Time> {
        let kept = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == kind && c.status == status))
            .and_then(|c| c.last_transition_time.clone());
        Some(kept.unwrap_or_else(|| now.clone()))
    };
    // progressDeadlineSeconds, as kube's: the last time the rollout made
    // progress (more pods updated, ready or available, fewer in all) is
    // the Progressing condition's lastUpdateTime; an unfinished rollout
    // that made none for that long has exceeded its deadline.
    let was = d.status.clone().unwrap_or_default();
    let was_progressing = was
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        .cloned();
    let progressed = i64::from(was.updated_replicas.unwrap_or(0)) < updated
        || i64::from(was.replicas.unwrap_or(0)) > total
        || i64::from(was.ready_replicas.unwrap_or(0)) < ready
        || i64::from(was.available_replicas.unwrap_or(0)) < available
        || d.metadata.generation != was.observed_generation;
    let last_progress = match &was_progressing {
        Some(c) if !progressed && c.status != "Unknown" => {
            c.last_update_time.clone().unwrap_or_else(|| now.clone())
        }
        _ => now.clone(),
    };
    let deadline = spec
        .progress_deadline_seconds
        .filter(|s| *s != i32::MAX)
        .map(|s| std::time::Duration::from_secs(s.max(0).unsigned_abs().into()));
    let stalled_for = std::time::Duration::from_secs(
        (now.0.as_second() - last_progress.0.as_second())
            .max(0)
            .unsigned_abs(),
    );
    // Once timed out it stays so until the rollout moves again.
    let was_timed_out = was_progressing
        .as_ref()
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    let timed_out = !paused
        && !complete
        && deadline.is_some()
        && (was_timed_out && !progressed || deadline.is_some_and(|d| stalled_for >= d));
    let available_status = if is_available { "True" } else { "False" };
    let new_name = newest.map(|rs| rs.name_any()).unwrap_or_default();
    let status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total as i32),
        updated_replicas: Some(updated as i32),
        ready_replicas: Some(ready as i32),
        available_replicas: Some(available as i32),
        unavailable_replicas: Some((want - available).max(0) as i32),
        conditions: Some(vec![
            DeploymentCondition {
                type_: "Available".into(),
                status: available_status.into(),
                reason: Some(
                    if is_available {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    }
                    .into(),
                ),
                message: Some(
                    if is_available {
                        "Deployment has minimum availability."
                    } else {
                        "Deployment does not have minimum availability."
                    }
                    .into(),
                ),
                last_transition_time: keep_time("Available", available_status),
                last_update_time: keep_time("Available", available_status),
            },
            if paused {
                DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "Unknown".into(),
                    reason: Some("DeploymentPaused".into()),
                    message: Some("Deployment is paused".into()),
                    last_transition_time: keep_time("Progressing", "Unknown"),
                    last_update_time: keep_time("Progressing", "Unknown"),
                }
            } else if timed_out {
                DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "False".into(),
                    reason: Some("ProgressDeadlineExceeded".into()),
                    message: Some(format!(
                        "ReplicaSet \"{new_name}\" has timed out progressing."
                    )),
                    last_transition_time: keep_time("Progressing", "False"),
                    last_update_time: keep_time("Progressing", "False"),
                }
            } else {
                DeploymentCondition {
                    type_: "Progressing".into(),
                    status: "True".into(),
                    reason: Some(
                        if complete {
                            "NewReplicaSetAvailable"
                        } else {
                            "ReplicaSetUpdated"
                        }
                        .into(),
                    ),
                    message: Some(if complete {
                        format!("ReplicaSet \"{new_name}\" has successfully progressed.")
                    } else {
                        format!("ReplicaSet \"{new_name}\" is progressing.")
                    }),
                    last_transition_time: keep_time("Progressing", "True"),
                    last_update_time: Some(last_progress.clone()),
                }
            },
        ]),
        ..DeploymentStatus::default()
    };
    if d.status.as_ref() != Some(&status) {
        ctx.reg
            .modify::<Deployment>(ns, &name, Write::Status, |mut obj| {
                obj.status = Some(status.clone());
                Ok(obj)
            })
            .await?;
    }
    // An unfinished rollout is looked at again when its deadline passes.
    if let Some(d) = deadline
        && !paused
        && !complete
        && !timed_out
    {
        return Ok(Action::requeue(
            d.saturating_sub(stalled_for) + std::time::Duration::from_millis(500),
        ));
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(resolve(Some(&pct), 10, true), 3);
        assert_eq!(resolve(Some(&pct), 10, false), 2);
        assert_eq!(resolve(Some(&IntOrString::Int(2)), 10, false), 2);
        let t = |v: serde_json::Value| -> PodTemplateSpec {
            serde_json::from_value(v).expect("template")
        };
        assert_ne!(
            template_hash(&t(serde_json::json!({"metadata": {"labels": {"a": "1"}}}))),
            template_hash(&t(serde_json::json!({"metadata": {"labels": {"a": "2"}}})))
        );
    }
}
