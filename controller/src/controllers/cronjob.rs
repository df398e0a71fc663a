//! CronJob controller, as kube-controller-manager's (v2): at each
//! scheduled time a Job from the template, named by the CronJob and the
//! scheduled minute (`NAME-<unix minutes>`, so a time is never run twice),
//! within the concurrency policy; the active list and the last schedule
//! and success in the status; finished Jobs beyond the history limits
//! deleted.
//!
//! Missed times (the controller was down, or the CronJob suspended) are
//! handled as kube handles them: only the latest one runs, once, if it is
//! still within `startingDeadlineSeconds`; more than 100 missed times are
//! reported with a Warning Event.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::cron::Schedule;

use super::{Action, Controller, Ctx, controller_ref, record_event};
use crate::registry::{Write, revision_of, store_error};

/// The component Events name.
const COMPONENT: &str = "cronjob-controller";
/// Missed times beyond which kube gives up counting and warns.
const MAX_MISSED: usize = 100;
/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// The scheduled time each CronJob last said it would not start (one
/// Event per refused time, not one per look while its Job runs).
static REFUSED: LazyLock<Mutex<HashMap<String, i64>>> = LazyLock::new(Mutex::default);

/// Whether starting the CronJob `uid` at `at` is refused for the first time.
fn first_refusal(uid: &str, at: i64) -> bool {
    let mut refused = REFUSED.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded by the CronJobs there are; gone ones are dropped now and
    // then.
    if refused.len() > 10_000 {
        refused.clear();
    }
    refused.insert(uid.to_string(), at) != Some(at)
}

pub fn start(ctx: &Ctx) {
    Controller::<CronJob>::new("cronjob", ctx)
        .owns::<Job>()
        .run(2, |cj, ctx| async move { reconcile(&cj, &ctx).await });
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn secs_of(t: &Time) -> i64 {
    t.0.as_second()
}

fn time_of(secs: i64) -> Time {
    weft_api::meta::time_at(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// `Complete` or `Failed`, once the Job has ended.
fn ended(job: &Job) -> Option<&'static str> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    ["Complete", "Failed"].into_iter().find(|t| {
        conditions
            .iter()
            .any(|c| c.type_ == *t && c.status == "True")
    })
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}

/// The Job for the time `at`.
fn job_for(cj: &CronJob, at: i64, schedule: &Schedule) -> Job {
    let template = cj
        .spec
        .as_ref()
        .map(|s| s.job_template.clone())
        .unwrap_or_default();
    let tmeta = template.metadata.unwrap_or_default();
    let mut annotations = tmeta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_AT.into(), schedule.format(at));
    Job {
        metadata: ObjectMeta {
            name: Some(job_name(&cj.name_any(), at)),
            labels: tmeta.labels,
            annotations: Some(annotations),
            owner_references: controller_ref(cj),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Whether `job` is one this controller made for a scheduled time: named
/// `CRONJOB-<minutes>` and stamped with that time.
fn made_here(cronjob: &str, job: &Job) -> bool {
    let stamped = job
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SCHEDULED_AT) && !a.contains_key(MANUAL));
    let minute = job
        .name_any()
        .strip_prefix(cronjob)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|m| !m.is_empty() && m.chars().all(|c| c.is_ascii_digit()));
    stamped && minute
}

/// The annotation kubectl puts on a Job made by hand from a CronJob.
const MANUAL: &str = "cronjob.kubernetes.io/instantiate";

/// kube's name for the Job of the time `at`: the CronJob's name and the
/// scheduled minute since the epoch.
fn job_name(cronjob: &str, at: i64) -> String {
    format!("{cronjob}-{}", at.div_euclid(60))
}

pub async fn reconcile(cj: &CronJob, ctx: &Ctx) -> Result<Action, ApiError> {
    let Some(spec) = cj.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let uid = cj.metadata.uid.clone().unwrap_or_default();
    let ns = cj.namespace();
    let ns = ns.as_deref();
    let name = cj.name_any();
    let jobs = ctx.cache.store::<Job>().controlled_by(&uid);
    let old = cj.status.clone().unwrap_or_default();
    let mut events: Vec<(&str, &str, String)> = Vec::new();
    let mut last_rev = 0;

    // What runs: the Jobs it made (in its active list, or named and
    // stamped by it: one made just before a crash), not a Job someone made
    // from it by hand (`kubectl create job --from=cronjob/...`), which is
    // only reported, as kube does.
    let mut active: Vec<ObjectReference> = Vec::new();
    for j in jobs
        .iter()
        .filter(|j| ended(j).is_none() && j.metadata.deletion_timestamp.is_none())
    {
        let listed = old.active.iter().flatten().any(|r| r.uid == j.metadata.uid);
        if listed || made_here(&name, j) {
            active.push(reference(j));
        } else if first_refusal(j.metadata.uid.as_deref().unwrap_or_default(), 0) {
            events.push((
                "Warning",
                "UnexpectedJob",
                format!(
                    "Saw a job that the controller did not create or forgot: {}",
                    j.name_any()
                ),
            ));
        }
    }
    for r in old.active.iter().flatten() {
        if active.iter().any(|a| a.uid == r.uid) {
            continue;
        }
        let job_name = r.name.clone().unwrap_or_default();
        match jobs
            .iter()
            .find(|j| j.metadata.uid == r.uid)
            .and_then(|j| ended(j))
        {
            Some(how) => events.push((
                "Normal",
                "SawCompletedJob",
                format!("Saw completed job: {job_name}, condition: {how}"),
            )),
            None if !jobs.iter().any(|j| j.metadata.uid == r.uid) => events.push((
                "Warning",
                "MissingJob",
                format!("Active job went missing: {job_name}"),
            )),
            None => {}
        }
    }
    let last_success = jobs
        .iter()
        .filter(|j| ended(j) == Some("Complete"))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .chain(old.last_successful_time.clone())
        .max_by_key(secs_of);
    let mut status = CronJobStatus {
        active: (!active.is_empty()).then(|| active.clone()),
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: last_success,
    };

    // Finished Jobs beyond the history limits go, the oldest first.
    let mut doomed: Vec<String> = Vec::new();
    for (how, limit) in [
        ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
        ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .map(|j| &**j)
            .filter(|j| ended(j) == Some(how) && j.metadata.deletion_timestamp.is_none())
            .collect();
        done.sort_by_key(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.clone())
                .or_else(|| j.metadata.creation_timestamp.clone())
        });
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(done.into_iter().take(extra).map(|j| j.name_any()));
    }
    for job in &doomed {
        match ctx.reg.delete::<Job>(ns, job, (None, None), None).await {
            Ok(_) | Err(ApiError { code: 404, .. }) => {
                events.push(("Normal", "SuccessfulDelete", format!("Deleted job {job}")));
            }
            Err(e) => return Err(e),
        }
    }
    if !doomed.is_empty() {
        last_rev = ctx.reg.store.revision().await.map_err(store_error)?;
    }

    let mut requeue = None;
    if cj.metadata.deletion_timestamp.is_none() && spec.suspend != Some(true) {
        match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Err(e) => {
                let reason = if e.starts_with("unknown time zone") {
                    "UnknownTimeZone"
                } else {
                    "UnparseableSchedule"
                };
                events.push(("Warning", reason, e));
            }
            Ok(schedule) => {
                let now_ms = now_millis();
                let now = now_ms.div_euclid(1000);
                let mut earliest = old
                    .last_schedule_time
                    .as_ref()
                    .or(cj.metadata.creation_timestamp.as_ref())
                    .map_or(now, secs_of);
                if let Some(deadline) = spec.starting_deadline_seconds {
                    earliest = earliest.max(now - deadline);
                }
                let (missed, latest) = schedule.between(earliest, now, MAX_MISSED);
                if missed > MAX_MISSED {
                    events.push((
                        "Warning",
                        "TooManyMissedTimes",
                        format!("too many missed start times: more than {MAX_MISSED}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"),
                    ));
                }
                if let Some(at) = latest {
                    let wanted = job_name(&name, at);
                    let exists = jobs.iter().any(|j| j.name_any() == wanted);
                    let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                    if exists {
                        status.last_schedule_time = Some(time_of(at));
                    } else if policy == "Forbid" && !active.is_empty() {
                        if first_refusal(&uid, at) {
                            events.push((
                            "Normal",
                            "JobAlreadyActive",
                            "Not starting job because prior execution is running and concurrency policy is Forbid".into(),
                        ));
                        }
                    } else {
                        if policy == "Replace" {
                            for r in &active {
                                let job = r.name.clone().unwrap_or_default();
                                match ctx
                                    .reg
                                    .delete::<Job>(ns, &job, (r.uid.clone(), None), None)
                                    .await
                                {
                                    Ok(_)
                                    | Err(ApiError {
                                        code: 404 | 409, ..
                                    }) => events.push((
                                        "Normal",
                                        "SuccessfulDelete",
                                        format!("Deleted job {job}"),
                                    )),
                                    Err(e) => return Err(e),
                                }
                            }
                            active.clear();
                        }
                        match ctx.reg.create(ns, job_for(cj, at, &schedule)).await {
                            Ok(job) => {
                                last_rev = last_rev.max(revision_of(&job));
                                events.push((
                                    "Normal",
                                    "SuccessfulCreate",
                                    format!("Created job {wanted}"),
                                ));
                                active.push(reference(&job));
                                status.last_schedule_time = Some(time_of(at));
                            }
                            Err(ApiError { code: 409, .. }) => {
                                status.last_schedule_time = Some(time_of(at));
                            }
                            Err(e) => {
                                record_event(
                                    &ctx.reg,
                                    cj,
                                    "Warning",
                                    "FailedCreate",
                                    &format!("Error creating job: {e}"),
                                    COMPONENT,
                                )
                                .await;
                                return Err(e);
                            }
                        }
                        status.active = (!active.is_empty()).then(|| active.clone());
                    }
                }
                if let Some(next) = schedule.next_after(now) {
                    let wait = (next * 1000 - now_ms).max(0) as u64 + 100;
                    requeue = Some(Duration::from_millis(wait));
                }
            }
        }
    }
    if status != old {
        let wanted = status.clone();
        let updated = ctx
            .reg
            .modify::<CronJob>(ns, &name, Write::Status, |mut c| {
                c.status = Some(wanted.clone());
                Ok(c)
            })
            .await?;
        last_rev = last_rev.max(revision_of(&updated));
    }
    for (kind, reason, message) in &events {
        record_event(&ctx.reg, cj, kind, reason, message, COMPONENT).await;
    }
    if last_rev > 0 {
        ctx.cache.wait_for(last_rev).await;
    }
    Ok(requeue.map_or(Action::await_change(), Action::requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_named_by_their_scheduled_minute() {
        assert_eq!(job_name("nightly", 1_767_225_600), "nightly-29453760");
        let cj: CronJob = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "nightly", "namespace": "ns", "uid": "u"},
            "spec": {"schedule": "0 9 * * *", "timeZone": "Asia/Tokyo",
                "jobTemplate": {"metadata": {"labels": {"team": "a"}},
                    "spec": {"template": {"spec": {"restartPolicy": "Never",
                        "containers": [{"name": "c", "image": "busybox"}]}}}}},
        }))
        .expect("a CronJob");
        let schedule = Schedule::parse("0 9 * * *", Some("Asia/Tokyo")).expect("valid");
        let job = job_for(&cj, 1_767_225_600, &schedule);
        assert_eq!(job.metadata.name.as_deref(), Some("nightly-29453760"));
        assert_eq!(
            job.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SCHEDULED_AT))
                .map(String::as_str),
            Some("2026-01-01T09:00:00+09:00")
        );
        assert_eq!(
            job.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("team"))
                .map(String::as_str),
            Some("a")
        );
        let owner = &job.metadata.owner_references.as_ref().expect("an owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("CronJob", Some(true))
        );
    }
}
