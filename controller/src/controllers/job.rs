//! Job controller, as kube-controller-manager's: runs a Job's pods to
//! `completions` successes (NonIndexed, or one per index with Indexed
//! completion), `parallelism` at a time, and ends the Job Complete or
//! Failed.
//!
//! Each finished pod is counted exactly once through the job-tracking
//! finalizer: its uid goes into `status.uncountedTerminatedPods` (one
//! status write), its finalizer comes off (a pod write), and then it moves
//! into `succeeded` or `failed` (a second status write). A crash between
//! any two steps resumes where it stopped, and a pod without the
//! finalizer is never counted again.
//!
//! Failures count against `backoffLimit` (with `restartPolicy:
//! OnFailure`, container restarts too) or, with `backoffLimitPerIndex`,
//! per index; the pod failure policy may fail the Job or the index at
//! once, or ignore a failure. New pods after a failure wait 10 s, doubled
//! per failure since the last success, up to 6 minutes. A Job that meets
//! its success or failure criteria first gets `SuccessCriteriaMet` or
//! `FailureTarget`, its remaining pods are deleted, and only once none is
//! left does it get `Complete` or `Failed` (as Kubernetes 1.31+).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobSpec, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::job::{self as rules, PolicyMatch};
use weft_api::pod::{is_finished, is_ready};

use super::{
    Action, Controller, Ctx, Queue, controller_ref, delete_pods, follow, record_event, run_queue,
};
use crate::registry::{Write, revision_of, store_error};

/// The component Events name.
const COMPONENT: &str = "job-controller";
/// The controller a Job's `managedBy` names when it is this one.
const MANAGER: &str = "kubernetes.io/job-controller";
/// Pod creations in flight per reconcile.
const BURST: usize = 32;
/// Pods created per reconcile at most (the next pass makes more).
const MAX_CREATES: usize = 500;
/// Finished pods recorded in `uncountedTerminatedPods` at a time.
const MAX_UNCOUNTED: usize = 500;
/// The first wait before a pod after a failure, doubled per failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

pub fn start(ctx: &Ctx) {
    Controller::<Job>::new("job", ctx)
        .owns::<Pod>()
        .run(4, |job, ctx| async move { reconcile(&job, &ctx).await });
    start_orphans(ctx);
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn secs_of(t: &Time) -> i64 {
    t.0.as_second()
}

fn has_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == rules::TRACKING_FINALIZER)
}

fn condition<'a>(status: Option<&'a JobStatus>, type_: &str) -> Option<&'a JobCondition> {
    status?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
}

fn new_condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = weft_api::meta::now_time();
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Sets condition `c` (replacing one of its type), keeping the time of a
/// transition that did not happen.
fn set_condition(status: &mut JobStatus, c: JobCondition) {
    let list = status.conditions.get_or_insert_with(Vec::new);
    match list.iter_mut().find(|o| o.type_ == c.type_) {
        Some(o) if o.status == c.status && o.reason == c.reason => {}
        Some(o) => *o = c,
        None => list.push(c),
    }
}

/// How a finished pod ends for its Job.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Succeeded,
    Failed,
    /// Its failure is not counted (the pod failure policy's Ignore, or a
    /// pod deleted because the Job was suspended or had already
    /// succeeded).
    Ignored,
}

/// When the pod ended, if it has: its phase says so, or it was deleted
/// and its node has let it go (grace period 0: nothing of it runs).
fn ended(pod: &Pod) -> Option<bool> {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Succeeded") => Some(true),
        Some("Failed") => Some(false),
        _ if pod.metadata.deletion_timestamp.is_some()
            && pod.metadata.deletion_grace_period_seconds.unwrap_or(0) == 0 =>
        {
            Some(false)
        }
        _ => None,
    }
}

/// When a pod finished (its last container's end, or its deletion).
fn finished_at(pod: &Pod) -> Option<i64> {
    let status = pod.status.as_ref();
    let ends = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(secs_of)
        .max();
    ends.or_else(|| pod.metadata.deletion_timestamp.as_ref().map(secs_of))
}

/// A Job's spec with what the controller reads of it.
struct Plan<'a> {
    spec: &'a JobSpec,
    indexed: bool,
    completions: Option<i32>,
    parallelism: i32,
}

impl<'a> Plan<'a> {
    fn of(spec: &'a JobSpec) -> Self {
        Self {
            spec,
            indexed: spec.completion_mode.as_deref() == Some("Indexed"),
            completions: spec.completions,
            parallelism: spec.parallelism.unwrap_or(1).max(0),
        }
    }
}

/// The pod for one more run (of `index`, for an Indexed Job).
fn pod_for(job: &Job, index: Option<i32>, failures: i32) -> Pod {
    let spec = job.spec.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    let name = job.name_any();
    let mut pod_spec = spec.template.spec.unwrap_or_default();
    let mut generate_name = format!("{name}-");
    if let Some(i) = index {
        labels.insert(rules::COMPLETION_INDEX.into(), i.to_string());
        annotations.insert(rules::COMPLETION_INDEX.into(), i.to_string());
        if spec.backoff_limit_per_index.is_some() {
            annotations.insert(rules::INDEX_FAILURE_COUNT.into(), failures.to_string());
        }
        generate_name = format!("{name}-{i}-");
        // Its stable name, in DNS too through a headless Service named
        // by `subdomain`.
        pod_spec.hostname = Some(format!("{name}-{i}"));
        let env = EnvVar {
            name: rules::INDEX_ENV.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: format!("metadata.annotations['{}']", rules::COMPLETION_INDEX),
                }),
                ..EnvVarSource::default()
            }),
        };
        let containers = pod_spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(pod_spec.containers.iter_mut());
        for c in containers {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == rules::INDEX_ENV) {
                list.push(env.clone());
            }
        }
    }
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name),
            owner_references: controller_ref(job),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            finalizers: Some(vec![rules::TRACKING_FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// Takes the finalizer off `pod` (404: it is gone, which is as good).
async fn release(ctx: &Ctx, pod: &Pod) -> Result<i64, ApiError> {
    let ns = pod.namespace();
    match ctx
        .reg
        .modify::<Pod>(ns.as_deref(), &pod.name_any(), Write::Update, |mut p| {
            if let Some(f) = p.metadata.finalizers.as_mut() {
                f.retain(|f| f != rules::TRACKING_FINALIZER);
            }
            if p.metadata.finalizers.as_ref().is_some_and(Vec::is_empty) {
                p.metadata.finalizers = None;
            }
            Ok(p)
        })
        .await
    {
        Ok(p) => Ok(revision_of(&p)),
        Err(e) if e.code == 404 => Ok(0),
        Err(e) => Err(e),
    }
}

/// Deletes `pods` (the Job's, no longer wanted); their names. With
/// `uncounted`, each loses its tracking finalizer first, so that it is not
/// counted when it ends (pods removed for a lower parallelism, a
/// suspension or a surplus are not failures, as kube's `deleteJobPods`).
async fn delete_job_pods(
    ctx: &Ctx,
    ns: Option<&str>,
    pods: &[Arc<Pod>],
    uncounted: bool,
) -> Result<Vec<String>, ApiError> {
    if uncounted {
        let revs: Vec<Result<i64, ApiError>> = futures::stream::iter(pods.iter().cloned())
            .map(|p: Arc<Pod>| async move { release(ctx, &p).await })
            .buffer_unordered(BURST)
            .collect()
            .await;
        for r in revs {
            r?;
        }
    }
    delete_pods(ctx, ns, pods, true).await
}

/// What counting the finished pods found.
#[derive(Default)]
struct Counted {
    /// The pod failure policy's verdict that fails the Job.
    fail_job: Option<PolicyMatch>,
    /// Writes made (the cache must see them before the next look).
    last_rev: i64,
}

/// How a finished pod ends for the Job, by the pod failure policy when
/// it failed.
fn end_of(job: &Job, pod: &Pod, succeeded: bool) -> (End, Option<PolicyMatch>) {
    if succeeded {
        return (End::Succeeded, None);
    }
    let status = job.status.as_ref();
    let deleted_not_failed = pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed");
    if deleted_not_failed
        && (job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
            || condition(status, "SuccessCriteriaMet").is_some())
    {
        return (End::Ignored, None);
    }
    let policy = job
        .spec
        .as_ref()
        .and_then(|s| s.pod_failure_policy.as_ref());
    match policy.and_then(|p| rules::match_failure_policy(p, pod)) {
        Some(m) if m.action == "Ignore" => (End::Ignored, Some(m)),
        other => (End::Failed, other),
    }
}

/// A finished pod, as counting records it.
#[derive(Clone)]
struct Finished {
    uid: String,
    end: End,
    /// Its completion index (Indexed Jobs).
    index: Option<i32>,
    /// The pod failure policy's verdict on it.
    verdict: Option<PolicyMatch>,
    /// The failures of its index before it.
    before: i32,
}

/// Counts the Job's finished pods exactly once (see the module's note).
async fn count_finished(job: &Job, pods: &[Arc<Pod>], ctx: &Ctx) -> Result<Counted, ApiError> {
    let ns = job.namespace();
    let ns = ns.as_deref();
    let name = job.name_any();
    let mut out = Counted::default();
    let Some(spec) = job.spec.as_ref() else {
        return Ok(out);
    };
    let plan = Plan::of(spec);
    let limit_per_index = plan.spec.backoff_limit_per_index;
    // Step 1: record the newly finished in uncountedTerminatedPods, and
    // with them what they decide (completed and failed indexes, a
    // FailJob verdict).
    let mut fresh: Vec<Finished> = Vec::new();
    let mut ignored: Vec<Arc<Pod>> = Vec::new();
    for p in pods.iter().filter(|p| has_finalizer(p)) {
        let Some(ok) = ended(p) else { continue };
        let (end, verdict) = end_of(job, p, ok);
        if end == End::Ignored {
            ignored.push(p.clone());
            continue;
        }
        let uid = p.metadata.uid.clone().unwrap_or_default();
        let index = rules::index_of(p).filter(|i| plan.completions.is_some_and(|c| *i < c));
        fresh.push(Finished {
            uid,
            end,
            index,
            verdict,
            before: rules::failures_before(p),
        });
    }
    let tracked: BTreeSet<String> = {
        let u = job
            .status
            .as_ref()
            .and_then(|s| s.uncounted_terminated_pods.as_ref());
        u.iter()
            .flat_map(|u| {
                u.succeeded
                    .iter()
                    .flatten()
                    .chain(u.failed.iter().flatten())
            })
            .cloned()
            .collect()
    };
    // At most MAX_UNCOUNTED at a time, as kube: the uids must fit in the
    // Job's status (its object size is bounded); the next pass takes more.
    let new: Vec<_> = fresh
        .iter()
        .filter(|f| !tracked.contains(&f.uid))
        .take(MAX_UNCOUNTED.saturating_sub(tracked.len()))
        .cloned()
        .collect();
    for f in &fresh {
        if f.verdict.as_ref().is_some_and(|m| m.action == "FailJob") {
            out.fail_job = f.verdict.clone();
        }
    }
    if !new.is_empty() {
        let fail_job = out.fail_job.clone();
        let updated = ctx
            .reg
            .modify::<Job>(ns, &name, Write::Status, |mut j| {
                let status = j.status.get_or_insert_with(Default::default);
                let u = status
                    .uncounted_terminated_pods
                    .get_or_insert_with(UncountedTerminatedPods::default);
                let mut completed = rules::parse_indexes(
                    status.completed_indexes.as_deref().unwrap_or_default(),
                    None,
                )
                .unwrap_or_default();
                let mut failed_indexes = rules::parse_indexes(
                    status.failed_indexes.as_deref().unwrap_or_default(),
                    None,
                )
                .unwrap_or_default();
                for Finished {
                    uid,
                    end,
                    index,
                    verdict,
                    before,
                } in &new
                {
                    let list = match end {
                        End::Succeeded => u.succeeded.get_or_insert_with(Vec::new),
                        _ => u.failed.get_or_insert_with(Vec::new),
                    };
                    if !list.contains(uid) {
                        list.push(uid.clone());
                    }
                    match (end, index) {
                        (End::Succeeded, Some(i)) => {
                            completed.insert(*i);
                        }
                        (End::Failed, Some(i)) => {
                            let fail_index =
                                verdict.as_ref().is_some_and(|m| m.action == "FailIndex")
                                    || limit_per_index.is_some_and(|l| before + 1 > l);
                            if fail_index && !completed.contains(i) {
                                failed_indexes.insert(*i);
                            }
                        }
                        _ => {}
                    }
                }
                if plan.indexed {
                    // Empty is left out, as kube's omitempty string.
                    status.completed_indexes =
                        Some(rules::format_indexes(&completed)).filter(|s| !s.is_empty());
                    if limit_per_index.is_some() {
                        status.failed_indexes = Some(rules::format_indexes(&failed_indexes));
                    }
                }
                // A Job that has met its success criteria is not failed
                // by a pod that ends meanwhile, as in kube.
                if let Some(m) = &fail_job
                    && condition(Some(&*status), "FailureTarget").is_none()
                    && condition(Some(&*status), "SuccessCriteriaMet").is_none()
                {
                    set_condition(
                        status,
                        new_condition("FailureTarget", "PodFailurePolicy", &m.message),
                    );
                }
                Ok(j)
            })
            .await?;
        out.last_rev = out.last_rev.max(revision_of(&updated));
    }
    // Step 2: the finalizers come off what is recorded (and what is
    // ignored).
    let recorded: BTreeSet<String> = tracked
        .into_iter()
        .chain(new.iter().map(|f| f.uid.clone()))
        .collect();
    let to_release: Vec<&Arc<Pod>> = pods
        .iter()
        .filter(|p| has_finalizer(p))
        .filter(|p| {
            ignored.iter().any(|i| i.metadata.uid == p.metadata.uid)
                || p.metadata
                    .uid
                    .as_ref()
                    .is_some_and(|u| recorded.contains(u))
        })
        .collect();
    let revs: Vec<Result<i64, ApiError>> = futures::stream::iter(to_release.into_iter().cloned())
        .map(|p: Arc<Pod>| async move { release(ctx, &p).await })
        .buffer_unordered(BURST)
        .collect()
        .await;
    for r in revs {
        out.last_rev = out.last_rev.max(r?);
    }
    // Step 3: what is recorded and released is counted.
    if !recorded.is_empty() {
        let updated = ctx
            .reg
            .modify::<Job>(ns, &name, Write::Status, |mut j| {
                let status = j.status.get_or_insert_with(Default::default);
                let u = status
                    .uncounted_terminated_pods
                    .get_or_insert_with(UncountedTerminatedPods::default);
                let mut moved = (0, 0);
                for (list, n) in [
                    (&mut u.succeeded, &mut moved.0),
                    (&mut u.failed, &mut moved.1),
                ] {
                    if let Some(l) = list.as_mut() {
                        let before = l.len();
                        l.retain(|uid| !recorded.contains(uid));
                        *n += (before - l.len()) as i32;
                    }
                    if list.as_ref().is_some_and(Vec::is_empty) {
                        *list = None;
                    }
                }
                status.succeeded = Some(status.succeeded.unwrap_or(0) + moved.0);
                status.failed = Some(status.failed.unwrap_or(0) + moved.1);
                Ok(j)
            })
            .await?;
        out.last_rev = out.last_rev.max(revision_of(&updated));
    }
    Ok(out)
}

/// The wait before the next pod after failures: 10 s doubled per failure
/// since the last success, up to 6 minutes, from the last failure.
/// Failures the pod failure policy ignores do not count (`counts`).
fn backoff_left(pods: &[Arc<Pod>], counts: impl Fn(&Pod) -> bool, now: i64) -> Option<Duration> {
    let last_success = pods
        .iter()
        .filter(|p| ended(p) == Some(true))
        .filter_map(|p| finished_at(p))
        .max()
        .unwrap_or(i64::MIN);
    let failures: Vec<i64> = pods
        .iter()
        .filter(|p| ended(p) == Some(false) && counts(p))
        .filter_map(|p| finished_at(p))
        .filter(|t| *t >= last_success)
        .collect();
    let last = *failures.iter().max()?;
    let n = failures.len().min(16) as u32;
    let wait = BACKOFF_BASE.saturating_mul(1 << (n - 1)).min(BACKOFF_MAX);
    let until = last + wait.as_secs() as i64;
    (until > now).then(|| Duration::from_secs((until - now) as u64))
}

pub async fn reconcile(job: &Job, ctx: &Ctx) -> Result<Action, ApiError> {
    if job
        .spec
        .as_ref()
        .and_then(|s| s.managed_by.as_deref())
        .is_some_and(|m| m != MANAGER)
    {
        // Another controller runs it (`managedBy`), as in Kubernetes.
        return Ok(Action::await_change());
    }
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let ns = job.namespace();
    let ns = ns.as_deref();
    let name = job.name_any();
    let pods = ctx.cache.store::<Pod>().controlled_by(&uid);
    let finished = condition(job.status.as_ref(), "Complete").is_some()
        || condition(job.status.as_ref(), "Failed").is_some();
    if job.metadata.deletion_timestamp.is_some() || finished {
        // Nothing more is counted: the pods may go when they are deleted.
        let mut last_rev = 0;
        for p in pods.iter().filter(|p| has_finalizer(p)) {
            last_rev = last_rev.max(release(ctx, p).await?);
        }
        if last_rev > 0 {
            ctx.cache.wait_for(last_rev).await;
        }
        if finished && job.metadata.deletion_timestamp.is_none() {
            return expire(job, ctx).await;
        }
        return Ok(Action::await_change());
    }
    let counted = count_finished(job, &pods, ctx).await?;
    let mut last_rev = counted.last_rev;
    if last_rev > 0 {
        // Look at what was just written (counts, finalizers) before
        // deciding on more.
        ctx.cache.wait_for(last_rev).await;
        return Ok(Action::requeue(Duration::ZERO));
    }
    let Some(spec) = job.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let plan = Plan::of(spec);
    let old = job.status.clone().unwrap_or_default();
    let mut status = old.clone();
    let now = now_secs();
    let active: Vec<Arc<Pod>> = pods
        .iter()
        .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| !is_finished(p) && p.metadata.deletion_timestamp.is_some())
        .count() as i32;
    let succeeded = status.succeeded.unwrap_or(0);
    let failed = status.failed.unwrap_or(0);
    let completed = rules::parse_indexes(
        status.completed_indexes.as_deref().unwrap_or_default(),
        None,
    )
    .unwrap_or_default();
    let failed_indexes =
        rules::parse_indexes(status.failed_indexes.as_deref().unwrap_or_default(), None)
            .unwrap_or_default();
    let suspended = spec.suspend == Some(true);
    let mut events: Vec<(&str, String, String)> = Vec::new();

    // Suspension and resumption.
    let was_suspended = condition(Some(&old), "Suspended").is_some();
    if suspended && !was_suspended {
        set_condition(
            &mut status,
            new_condition("Suspended", "JobSuspended", "Job suspended"),
        );
        // The clock stops: a resumed Job's deadline counts from its
        // resumption, and its start time may be set again then.
        status.start_time = None;
        events.push(("Normal", "Suspended".into(), "Job suspended".into()));
    } else if !suspended && was_suspended {
        let mut c = new_condition("Suspended", "JobResumed", "Job resumed");
        c.status = "False".into();
        set_condition(&mut status, c);
        status.start_time = Some(weft_api::meta::now_time());
        events.push(("Normal", "Resumed".into(), "Job resumed".into()));
    }
    if !suspended && status.start_time.is_none() {
        status.start_time = Some(weft_api::meta::now_time());
    }

    // Has it met its end?
    let mut requeue: Option<Duration> = None;
    let ending = condition(Some(&status), "FailureTarget").is_some()
        || condition(Some(&status), "SuccessCriteriaMet").is_some();
    if !ending {
        // With OnFailure, the restarts of the running and pending pods'
        // containers (init containers too), as kube's
        // pastBackoffLimitOnFailure.
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarts: i32 = active
            .iter()
            .filter(|p| {
                matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Running" | "Pending")
                )
            })
            .flat_map(|p| {
                p.status.iter().flat_map(|s| {
                    s.container_statuses
                        .iter()
                        .flatten()
                        .chain(s.init_container_statuses.iter().flatten())
                })
            })
            .map(|c| c.restart_count)
            .sum();
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .filter(|_| !suspended)
            .map(|(d, s)| secs_of(s).saturating_add(d));
        let success_rule = spec.success_policy.as_ref().and_then(|p| {
            p.rules.iter().position(|r| {
                let listed = r
                    .succeeded_indexes
                    .as_deref()
                    .map(|s| rules::parse_indexes(s, None).unwrap_or_default());
                let done = match &listed {
                    Some(l) => l.intersection(&completed).count(),
                    None => completed.len(),
                };
                match (r.succeeded_count, &listed) {
                    (Some(n), _) => done >= n as usize,
                    (None, Some(l)) => done == l.len(),
                    (None, None) => false,
                }
            })
        });
        let all_done = match (plan.indexed, plan.completions) {
            (true, Some(c)) => completed.len() + failed_indexes.len() >= c as usize,
            (false, Some(c)) => succeeded >= c,
            (_, None) => succeeded > 0 && active.is_empty(),
        };
        let past_on_failure = on_failure
            && if backoff_limit == 0 {
                restarts > 0
            } else {
                restarts >= backoff_limit
            };
        let verdict: Option<(&str, &str, String)> = if failed > backoff_limit || past_on_failure {
            Some((
                "FailureTarget",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".into(),
            ))
        } else if spec
            .max_failed_indexes
            .is_some_and(|m| failed_indexes.len() > m.max(0) as usize)
        {
            Some((
                "FailureTarget",
                "MaxFailedIndexesExceeded",
                "Job has exceeded the specified maximal number of failed indexes".into(),
            ))
        } else if let Some(i) = success_rule {
            Some((
                "SuccessCriteriaMet",
                "SuccessPolicy",
                format!("Matched rules at index {i}"),
            ))
        } else if all_done && !failed_indexes.is_empty() {
            Some((
                "FailureTarget",
                "FailedIndexes",
                "Job has failed indexes".into(),
            ))
        } else if all_done {
            Some((
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods".into(),
            ))
        } else if deadline.is_some_and(|d| now >= d) {
            Some((
                "FailureTarget",
                "DeadlineExceeded",
                "Job was active longer than specified deadline".into(),
            ))
        } else {
            if let Some(d) = deadline {
                requeue = Some(Duration::from_secs((d - now).max(0) as u64 + 1));
            }
            None
        };
        if let Some((t, reason, message)) = verdict {
            set_condition(&mut status, new_condition(t, reason, &message));
        }
    }
    let ending = condition(Some(&status), "FailureTarget").is_some()
        || condition(Some(&status), "SuccessCriteriaMet").is_some();

    // The pods it should have.
    let mut deleted: Vec<String> = Vec::new();
    let mut created: Vec<String> = Vec::new();
    let mut create_error = None;
    if ending || suspended {
        // Pods of a Job that has failed count as failures (kube counts
        // them); those of a suspended or succeeded one do not.
        let counted = condition(Some(&status), "FailureTarget").is_some() && !suspended;
        deleted = delete_job_pods(ctx, ns, &active, !counted).await?;
    } else {
        // With podReplacementPolicy Failed a pod being deleted still holds
        // its place until it is gone.
        let holding = if spec.pod_replacement_policy.as_deref() == Some("Failed") {
            terminating
        } else {
            0
        };
        let room = (plan.parallelism - holding).max(0) as usize;
        // The back-off after failures: one per index with
        // backoffLimitPerIndex (an index waits after its own failures,
        // and others run meanwhile), else one for the Job, as kube.
        // Failures the pod failure policy ignores do not count.
        let counts = |p: &Pod| end_of(job, p, false).0 == End::Failed;
        let per_index = plan.spec.backoff_limit_per_index.is_some();
        let mut wait: Option<Duration> = None;
        let mut wanted: Vec<Option<i32>> = Vec::new();
        let mut surplus: Vec<Arc<Pod>> = Vec::new();
        if plan.indexed {
            let c = plan.completions.unwrap_or(0);
            let mut running: HashMap<i32, Vec<Arc<Pod>>> = HashMap::new();
            for p in &active {
                match rules::index_of(p).filter(|i| *i < c) {
                    Some(i) if !completed.contains(&i) && !failed_indexes.contains(&i) => {
                        running.entry(i).or_default().push(p.clone());
                    }
                    _ => surplus.push(p.clone()),
                }
            }
            // One pod per index: the oldest stays.
            for list in running.values_mut() {
                list.sort_by_key(|p| p.metadata.creation_timestamp.clone());
                surplus.extend(list.drain(1..));
            }
            let busy: BTreeSet<i32> = pods
                .iter()
                .filter(|p| !is_finished(p))
                .filter(|p| holding > 0 || p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| rules::index_of(p))
                .collect();
            let mut keep = running.len();
            if keep > room {
                let mut idx: Vec<i32> = running.keys().copied().collect();
                idx.sort_unstable();
                for i in idx.into_iter().rev().take(keep - room) {
                    surplus.extend(running.remove(&i).into_iter().flatten());
                }
                keep = room;
            }
            let mut failures: HashMap<i32, Vec<Arc<Pod>>> = HashMap::new();
            if per_index {
                for p in pods.iter().filter(|p| ended(p) == Some(false)) {
                    if let Some(i) = rules::index_of(p) {
                        failures.entry(i).or_default().push(p.clone());
                    }
                }
            }
            wanted = (0..c)
                .filter(|i| {
                    !completed.contains(i) && !failed_indexes.contains(i) && !busy.contains(i)
                })
                .filter(|i| {
                    let left = failures.get(i).and_then(|l| backoff_left(l, counts, now));
                    if let Some(l) = left {
                        wait = Some(wait.map_or(l, |w| w.min(l)));
                    }
                    left.is_none()
                })
                .take(room.saturating_sub(keep))
                .map(Some)
                .collect();
        } else {
            // A work queue (no completions) makes no more pods once one
            // has succeeded, and lets those running finish.
            let target = match plan.completions {
                Some(c) => room.min((c - succeeded).max(0) as usize),
                None if succeeded > 0 => active.len(),
                None => room,
            };
            if active.len() > target {
                let mut extra = active.clone();
                // The youngest and the least advanced go first.
                extra.sort_by_key(|p| {
                    (
                        is_ready(p),
                        std::cmp::Reverse(p.metadata.creation_timestamp.clone()),
                    )
                });
                surplus = extra.into_iter().take(active.len() - target).collect();
            } else {
                wanted = vec![None; target - active.len()];
            }
        }
        if !surplus.is_empty() {
            deleted = delete_job_pods(ctx, ns, &surplus, true).await?;
        }
        if !per_index && !wanted.is_empty() {
            wait = backoff_left(&pods, counts, now);
            if wait.is_some() {
                wanted.clear();
            }
        }
        if let Some(wait) = wait {
            requeue = Some(requeue.map_or(wait, |r| r.min(wait)));
        }
        if !wanted.is_empty() {
            let failures_of = |i: i32| {
                pods.iter()
                    .filter(|p| rules::index_of(p) == Some(i))
                    .map(|p| rules::failures_before(p) + i32::from(ended(p) == Some(false)))
                    .max()
                    .unwrap_or(0)
            };
            let results: Vec<Result<Pod, ApiError>> =
                futures::stream::iter(wanted.into_iter().take(MAX_CREATES))
                    .map(|index| {
                        let pod = pod_for(job, index, index.map_or(0, failures_of));
                        async move { ctx.reg.create(ns, pod).await }
                    })
                    .buffer_unordered(BURST)
                    .collect()
                    .await;
            for r in results {
                match r {
                    Ok(p) => {
                        last_rev = last_rev.max(revision_of(&p));
                        created.push(p.name_any());
                    }
                    Err(e) => create_error = Some(e),
                }
            }
        }
    }
    for n in &created {
        events.push((
            "Normal",
            "SuccessfulCreate".into(),
            format!("Created pod: {n}"),
        ));
    }
    for n in &deleted {
        events.push((
            "Normal",
            "SuccessfulDelete".into(),
            format!("Deleted pod: {n}"),
        ));
    }
    if let Some(e) = &create_error {
        events.push((
            "Warning",
            "FailedCreate".into(),
            format!("Error creating: {e}"),
        ));
    }
    if !deleted.is_empty() {
        last_rev = last_rev.max(ctx.reg.store.revision().await.map_err(store_error)?);
    }

    // The end, once no pod of it runs.
    let settled = ending && active.is_empty() && terminating == 0;
    if settled {
        // A finished Job has a start time, even one that ended while
        // suspended (completions: 0).
        status
            .start_time
            .get_or_insert_with(weft_api::meta::now_time);
        if let Some(c) = condition(Some(&status), "FailureTarget").cloned() {
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            set_condition(&mut status, new_condition("Failed", &reason, &message));
            events.push(("Warning", reason, message));
        } else {
            set_condition(
                &mut status,
                new_condition(
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            );
            if let Some(c) = condition(Some(&status), "SuccessCriteriaMet").cloned()
                && let Some(done) = status
                    .conditions
                    .as_mut()
                    .and_then(|l| l.iter_mut().find(|x| x.type_ == "Complete"))
            {
                done.reason = c.reason;
                done.message = c.message;
            }
            status.completion_time = Some(weft_api::meta::now_time());
            events.push(("Normal", "Completed".into(), "Job completed".into()));
        }
    }
    // What it has now.
    let live: Vec<&Arc<Pod>> = active
        .iter()
        .filter(|p| !deleted.contains(&p.name_any()))
        .collect();
    status.active = Some(live.len() as i32 + created.len() as i32);
    status.ready = Some(live.iter().filter(|p| is_ready(p)).count() as i32);
    status.terminating = Some(terminating + deleted.len() as i32);
    status.succeeded.get_or_insert(0);
    status.failed.get_or_insert(0);
    status
        .uncounted_terminated_pods
        .get_or_insert_with(Default::default);
    // The status write may fail; what this pass created is waited for
    // all the same, or a retry that runs before the cache has the new pods
    // would make them again.
    let mut written = Ok(());
    if status != old {
        let wanted = status.clone();
        let updated = ctx
            .reg
            .modify::<Job>(ns, &name, Write::Status, |mut j| {
                // Counts and uncounted pods are the store's (the counting
                // above wrote them); the rest is this pass's.
                let stored = j.status.clone().unwrap_or_default();
                let mut s = wanted.clone();
                s.succeeded = stored.succeeded;
                s.failed = stored.failed;
                s.uncounted_terminated_pods = stored.uncounted_terminated_pods;
                s.completed_indexes = stored
                    .completed_indexes
                    .or(s.completed_indexes)
                    .filter(|s| !s.is_empty());
                s.failed_indexes = stored.failed_indexes.or(s.failed_indexes);
                s.uncounted_terminated_pods
                    .get_or_insert_with(Default::default);
                j.status = Some(s);
                Ok(j)
            })
            .await;
        match updated {
            Ok(updated) => last_rev = last_rev.max(revision_of(&updated)),
            Err(e) => written = Err(e),
        }
    }
    for (kind, reason, message) in &events {
        record_event(&ctx.reg, job, kind, reason, message, COMPONENT).await;
    }
    if last_rev > 0 {
        ctx.cache.wait_for(last_rev).await;
    }
    written?;
    if let Some(e) = create_error {
        return Err(e);
    }
    if settled {
        return Ok(Action::requeue(Duration::ZERO));
    }
    Ok(requeue.map_or(Action::await_change(), Action::requeue))
}

/// A finished Job with `ttlSecondsAfterFinished` is deleted that long
/// after it finished, with its pods (as the TTL-after-finished
/// controller).
async fn expire(job: &Job, ctx: &Ctx) -> Result<Action, ApiError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return Ok(Action::await_change());
    };
    let status = job.status.as_ref();
    let end = condition(status, "Complete")
        .or_else(|| condition(status, "Failed"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(secs_of)
        .unwrap_or_else(now_secs);
    let due = end.saturating_add(i64::from(ttl.max(0)));
    let now = now_secs();
    if now < due {
        return Ok(Action::requeue(Duration::from_secs((due - now) as u64)));
    }
    let ns = job.namespace();
    match ctx
        .reg
        .delete::<Job>(
            ns.as_deref(),
            &job.name_any(),
            (job.metadata.uid.clone(), None),
            None,
        )
        .await
    {
        Ok(_)
        | Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Whether `pod` holds the tracking finalizer for a Job that is gone (or
/// no longer its controller).
fn orphan(pod: &Pod, cache: &crate::cache::Cache) -> bool {
    if !has_finalizer(pod) {
        return false;
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "Job" && r.api_version == "batch/v1");
    match owner {
        None => true,
        Some(r) => cache
            .store::<Job>()
            .get(pod.metadata.namespace.as_deref(), &r.name)
            .is_none_or(|j| j.metadata.uid.as_deref() != Some(r.uid.as_str())),
    }
}

/// Pods with the tracking finalizer whose Job is gone (deleted, or its
/// pods orphaned) lose the finalizer, so nothing holds them.
fn start_orphans(ctx: &Ctx) {
    let queue = Queue::new();
    let cache = ctx.cache.clone();
    {
        let (q, c1, c2) = (queue.clone(), cache.clone(), cache.clone());
        let q2 = queue.clone();
        follow::<Pod>(
            &cache,
            move |change| {
                if let Some(p) = &change.new
                    && orphan(p, &c1)
                {
                    q.add(change.key.clone());
                }
            },
            move || {
                for p in c2.store::<Pod>().list(None) {
                    if orphan(&p, &c2) {
                        q2.add(weft_api::meta::key_of(&*p));
                    }
                }
            },
        );
    }
    // Jobs going away orphan their pods too.
    {
        let (q, c1) = (queue.clone(), cache.clone());
        follow::<Job>(
            &cache,
            move |change| {
                if change.new.is_none()
                    && let Some(old) = &change.old
                    && let Some(uid) = old.metadata.uid.as_deref()
                {
                    for p in c1.store::<Pod>().owned_by(uid) {
                        if has_finalizer(&p) {
                            q.add(weft_api::meta::key_of(&*p));
                        }
                    }
                }
            },
            || {},
        );
    }
    let ctx = Arc::new(ctx.clone());
    run_queue("job-orphans", queue, 1, move |key| {
        let ctx = ctx.clone();
        async move {
            let Some(pod) = ctx.cache.store::<Pod>().get_key(&key) else {
                return Ok(Action::await_change());
            };
            if orphan(&pod, &ctx.cache) {
                release(&ctx, &pod).await?;
            }
            Ok(Action::await_change())
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(phase: &str, finished: i64, deleted: Option<i64>) -> Arc<Pod> {
        let at = |s: i64| {
            weft_api::meta::format_rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64))
        };
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {"phase": phase, "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "finishedAt": at(finished)}}}]},
        }))
        .expect("a pod");
        if let Some(d) = deleted {
            p.status.as_mut().expect("status").container_statuses = None;
            p.metadata.deletion_timestamp = Some(weft_api::meta::time_at(
                SystemTime::UNIX_EPOCH + Duration::from_secs(d as u64),
            ));
            p.metadata.deletion_grace_period_seconds = Some(0);
            p.status.as_mut().expect("status").phase = Some("Running".into());
        }
        Arc::new(p)
    }

    #[test]
    fn failures_since_the_last_success_back_off_exponentially() {
        assert_eq!(backoff_left(&[], |_| true, 1000), None);
        // One failure at 1000: 10 s from then.
        let one = [pod("Failed", 1000, None)];
        assert_eq!(
            backoff_left(&one, |_| true, 1004),
            Some(Duration::from_secs(6))
        );
        assert_eq!(backoff_left(&one, |_| true, 1010), None);
        // Three failures: 40 s from the last.
        let three = [
            pod("Failed", 900, None),
            pod("Failed", 950, None),
            pod("Failed", 1000, None),
        ];
        assert_eq!(
            backoff_left(&three, |_| true, 1000),
            Some(Duration::from_secs(40))
        );
        // A success after two of them resets the count.
        let reset = [
            pod("Failed", 900, None),
            pod("Succeeded", 960, None),
            pod("Failed", 1000, None),
        ];
        assert_eq!(
            backoff_left(&reset, |_| true, 1000),
            Some(Duration::from_secs(10))
        );
        // A deleted pod the node has let go counts as a failure.
        let gone = [pod("Running", 0, Some(2000))];
        assert_eq!(ended(&gone[0]), Some(false));
        assert_eq!(
            backoff_left(&gone, |_| true, 2001),
            Some(Duration::from_secs(9))
        );
        // Many: capped at 6 minutes.
        let many: Vec<_> = (0..20).map(|i| pod("Failed", 1000 + i, None)).collect();
        assert_eq!(backoff_left(&many, |_| true, 1019), Some(BACKOFF_MAX));
        // Failures the caller does not count (the failure policy ignored
        // them) do not delay.
        assert_eq!(backoff_left(&three, |_| false, 1000), None);
    }

    #[test]
    fn indexed_pods_carry_their_index_and_stable_hostname() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "work", "namespace": "ns", "uid": "u"},
            "spec": {"completionMode": "Indexed", "completions": 3, "backoffLimitPerIndex": 1,
                "template": {"metadata": {"labels": {"app": "w"}},
                    "spec": {"subdomain": "work", "restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .expect("a Job");
        let p = pod_for(&job, Some(2), 1);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("work-2-"));
        assert_eq!(rules::index_of(&p), Some(2));
        assert_eq!(rules::failures_before(&p), 1);
        let spec = p.spec.as_ref().expect("spec");
        assert_eq!(spec.hostname.as_deref(), Some("work-2"));
        let env = &spec.containers[0].env.as_ref().expect("env")[0];
        assert_eq!(env.name, "JOB_COMPLETION_INDEX");
        assert_eq!(
            p.metadata.finalizers.as_deref(),
            Some(&[rules::TRACKING_FINALIZER.to_string()][..])
        );
        assert_eq!(
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(rules::COMPLETION_INDEX))
                .map(String::as_str),
            Some("2")
        );
    }
}
