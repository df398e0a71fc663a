//! What a Job's pods carry and how their ends are read, in one place for
//! the API server (which validates index lists and failure policies) and
//! the job controller (which writes and reads them): the labels,
//! annotations and finalizer of a Job's pods, completion indexes and their
//! compressed form (`"0,2-4"`, as `status.completedIndexes`), and the pod
//! failure policy's matching of a failed pod; and what a write of a Job's
//! status may not do.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::{
    Job, JobStatus, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::error::Cause;

/// The label (and generated selector key) naming the owning Job's uid.
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The same, as Kubernetes before 1.27 wrote it (still set by kube).
pub const LEGACY_CONTROLLER_UID: &str = "controller-uid";
/// The label naming the owning Job.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The same, as Kubernetes before 1.27 wrote it.
pub const LEGACY_JOB_NAME: &str = "job-name";
/// The annotation (and label) with an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
/// The annotation with the failures an index had before this pod.
pub const INDEX_FAILURE_COUNT: &str = "batch.kubernetes.io/job-index-failure-count";
/// The finalizer that keeps a Job's pod until the Job has counted it.
pub const TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// The environment variable with the completion index.
pub const INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
/// The most completions (and parallelism) an Indexed Job may ask for.
/// Kubernetes caps parallelism there; Weft caps completions too (each
/// completed index is kept in memory while the Job runs).
pub const MAX_INDEXED_COMPLETIONS: i32 = 100_000;

/// Parses a list of indexes such as `"1,3-5"`: numbers and inclusive
/// ranges, ascending and not overlapping, each below `limit` when given.
///
/// # Errors
/// What is wrong with the first bad element.
pub fn parse_indexes(text: &str, limit: Option<i32>) -> Result<BTreeSet<i32>, String> {
    let mut out = BTreeSet::new();
    if text.is_empty() {
        return Ok(out);
    }
    let mut last: Option<i32> = None;
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let number = |s: &str| {
            s.parse::<i32>()
                .ok()
                .filter(|n| *n >= 0 && !s.starts_with('+'))
                .ok_or_else(|| format!("cannot convert {s:?} to an index"))
        };
        let (lo, hi) = (number(lo)?, number(hi)?);
        if lo > hi {
            return Err(format!("range {part:?} must be ascending"));
        }
        if let Some(l) = limit
            && hi >= l
        {
            return Err(format!("too large: index {hi} must be less than {l}"));
        }
        if last.is_some_and(|l| lo <= l) {
            return Err(format!(
                "{part:?} overlaps or is not after the previous element"
            ));
        }
        last = Some(hi);
        // A range of a million is a client's mistake, not a reason to
        // allocate; the callers' limits (completions) bound real lists.
        if out.len() + (hi - lo) as usize > MAX_INDEXED_COMPLETIONS as usize {
            return Err(format!(
                "more than {MAX_INDEXED_COMPLETIONS} indexes cannot be listed"
            ));
        }
        out.extend(lo..=hi);
    }
    Ok(out)
}

/// The compressed form of `indexes`: ascending, runs of three or more as
/// ranges (`"0,2-4,7"`), as Kubernetes writes `completedIndexes`.
#[must_use]
pub fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        match end - start {
            0 => parts.push(start.to_string()),
            1 => {
                parts.push(start.to_string());
                parts.push(end.to_string());
            }
            _ => parts.push(format!("{start}-{end}")),
        }
    }
    parts.join(",")
}

fn annotation_number(pod: &Pod, key: &str) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)?
        .parse()
        .ok()
        .filter(|n: &i32| *n >= 0)
}

/// An Indexed Job pod's completion index.
#[must_use]
pub fn index_of(pod: &Pod) -> Option<i32> {
    annotation_number(pod, COMPLETION_INDEX)
}

/// The failures the pod's index had before this pod was made.
#[must_use]
pub fn failures_before(pod: &Pod) -> i32 {
    annotation_number(pod, INDEX_FAILURE_COUNT).unwrap_or(0)
}

/// A failed pod matched by a pod failure policy rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyMatch {
    /// `FailJob`, `FailIndex`, `Ignore` or `Count`.
    pub action: String,
    /// The rule's position in `podFailurePolicy.rules`.
    pub rule: usize,
    /// Why, as the job controller says it in the Job's condition.
    pub message: String,
}

fn exit_code_matches(req: &PodFailurePolicyOnExitCodesRequirement, code: i32) -> bool {
    let listed = req.values.contains(&code);
    match req.operator.as_str() {
        "In" => listed,
        "NotIn" => !listed,
        _ => false,
    }
}

/// The first container (of `statuses`) that ended with a non-zero exit
/// code the requirement matches, with that code.
fn matching_container<'a>(
    statuses: &'a [ContainerStatus],
    req: &PodFailurePolicyOnExitCodesRequirement,
) -> Option<(&'a str, i32)> {
    statuses.iter().find_map(|s| {
        if req.container_name.as_deref().is_some_and(|n| n != s.name) {
            return None;
        }
        let code = s.state.as_ref()?.terminated.as_ref()?.exit_code;
        (code != 0 && exit_code_matches(req, code)).then_some((s.name.as_str(), code))
    })
}

/// The first rule of `policy` that matches the failed `pod`, as the job
/// controller evaluates it: exit codes of the containers, then of the
/// init containers (0 never matches); or a condition of the pod with the
/// pattern's type and status.
#[must_use]
pub fn match_failure_policy(policy: &PodFailurePolicy, pod: &Pod) -> Option<PolicyMatch> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref();
    for (i, rule) in policy.rules.iter().enumerate() {
        let found = if let Some(req) = &rule.on_exit_codes {
            let lists = [
                status.and_then(|s| s.container_statuses.as_deref()),
                status.and_then(|s| s.init_container_statuses.as_deref()),
            ];
            lists
                .into_iter()
                .flatten()
                .find_map(|l| matching_container(l, req))
                .map(|(c, code)| {
                    format!(
                        "Container {c} for pod {ns}/{name} failed with exit code {code} matching {} rule at index {i}",
                        rule.action
                    )
                })
        } else {
            let conditions = status
                .and_then(|s| s.conditions.as_deref())
                .unwrap_or_default();
            rule.on_pod_conditions.iter().flatten().find_map(|p| {
                conditions
                    .iter()
                    .find(|c| c.type_ == p.type_ && c.status == p.status)
                    .map(|c| {
                        format!(
                            "Pod {ns}/{name} has condition {} matching {} rule at index {i}",
                            c.type_, rule.action
                        )
                    })
            })
        };
        if let Some(message) = found {
            return Some(PolicyMatch {
                action: rule.action.clone(),
                rule: i,
                message,
            });
        }
    }
    None
}

/// Whether the Job's condition `type_` is True.
#[must_use]
pub fn has_condition(status: Option<&JobStatus>, type_: &str) -> bool {
    status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|l| l.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// A broken rule, worded as kube words one without a value.
fn status_rule(field: &str, why: impl std::fmt::Display) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!("Invalid value: {why}"),
        field: field.into(),
    }
}

/// A missing field, with why it is needed.
fn status_required(field: &str, why: &str) -> Cause {
    Cause {
        reason: "FieldValueRequired",
        message: format!("Required value: {why}"),
        field: field.into(),
    }
}

/// What a write of a Job's status (the status subresource) may not do,
/// as kube-apiserver's Job status validation with its strict rules: counts
/// are not negative and the failed and succeeded ones do not go down,
/// `uncountedTerminatedPods` lists distinct uids, a terminal condition
/// (Complete, Failed, FailureTarget, SuccessCriteriaMet) stays once set and
/// agrees with the others, a finished Job has a start time and no active,
/// terminating or uncounted pods, `completionTime` comes with Complete
/// (after `startTime`) and never changes, and index lists parse and fit
/// the Job. As kube, a rule about a field is checked when the write
/// changes what it concerns, so that a stored status written before a
/// rule existed can still be updated.
#[must_use]
pub fn status_update_errors(job: &Job, old: &Job) -> Vec<Cause> {
    let empty = JobStatus::default();
    let s = job.status.as_ref().unwrap_or(&empty);
    let o = old.status.as_ref().unwrap_or(&empty);
    let spec = job.spec.as_ref();
    let is = |st: &JobStatus, t: &str| has_condition(Some(st), t);
    let changed = |t: &str| is(s, t) != is(o, t);
    let (complete, failed) = (is(s, "Complete"), is(s, "Failed"));
    let finished = complete || failed;
    let finished_changed = finished != (is(o, "Complete") || is(o, "Failed"));
    let active_changed = s.active != o.active;
    let mut out = Vec::new();

    for (field, value) in [
        ("status.active", s.active),
        ("status.succeeded", s.succeeded),
        ("status.failed", s.failed),
        ("status.ready", s.ready),
        ("status.terminating", s.terminating),
    ] {
        if let Some(v) = value.filter(|v| *v < 0) {
            out.push(Cause::invalid(
                field,
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
    if let Some(u) = &s.uncounted_terminated_pods {
        let mut seen = BTreeSet::new();
        for (list, name) in [(&u.succeeded, "succeeded"), (&u.failed, "failed")] {
            for (i, uid) in list.iter().flatten().enumerate() {
                let field = format!("status.uncountedTerminatedPods.{name}[{i}]");
                if uid.is_empty() {
                    out.push(Cause::invalid(field, "\"\"", "must not be empty"));
                } else if !seen.insert(uid.as_str()) {
                    out.push(Cause::duplicate(field, format!("{uid:?}")));
                }
            }
        }
    }
    for t in ["Complete", "Failed", "FailureTarget", "SuccessCriteriaMet"] {
        if is(o, t) && !is(s, t) {
            out.push(status_rule(
                "status.conditions",
                format!("cannot disable the terminal {t}=True condition"),
            ));
        }
    }
    if complete && failed && (changed("Complete") || changed("Failed")) {
        out.push(status_rule(
            "status.conditions",
            "cannot set Complete=True and Failed=True conditions",
        ));
    }
    if complete && is(s, "FailureTarget") && (changed("Complete") || changed("FailureTarget")) {
        out.push(status_rule(
            "status.conditions",
            "cannot set Complete=True and FailureTarget=True conditions",
        ));
    }
    if failed && !is(s, "FailureTarget") && (changed("Failed") || changed("FailureTarget")) {
        out.push(status_rule(
            "status.conditions",
            "cannot set Failed=True condition without the FailureTarget=True condition",
        ));
    }
    if complete
        && !is(s, "SuccessCriteriaMet")
        && (changed("Complete") || changed("SuccessCriteriaMet"))
    {
        out.push(status_rule(
            "status.conditions",
            "cannot set Complete=True condition without the SuccessCriteriaMet=True condition",
        ));
    }
    if is(s, "SuccessCriteriaMet") && (failed || is(s, "FailureTarget")) {
        out.push(status_rule(
            "status.conditions",
            "cannot set SuccessCriteriaMet=True together with Failed=True or FailureTarget=True",
        ));
    }
    let completion_changed = s.completion_time != o.completion_time;
    let start_changed = s.start_time != o.start_time;
    if s.completion_time.is_some() && !complete && (changed("Complete") || completion_changed) {
        out.push(status_rule(
            "status.completionTime",
            "cannot set completionTime when there is no Complete=True condition",
        ));
    }
    if complete && s.completion_time.is_none() && (changed("Complete") || completion_changed) {
        out.push(status_required(
            "status.completionTime",
            "completionTime is required for Complete jobs",
        ));
    }
    if let (Some(c), Some(_)) = (&o.completion_time, &s.completion_time)
        && completion_changed
    {
        out.push(Cause::invalid(
            "status.completionTime",
            c.0,
            "completionTime cannot be mutated",
        ));
    }
    if let (Some(start), Some(end)) = (&s.start_time, &s.completion_time)
        && end.0 < start.0
        && (start_changed || completion_changed)
    {
        out.push(status_rule(
            "status.completionTime",
            "completionTime cannot be set before startTime",
        ));
    }
    // A resumption (Suspended turning False) restarts the clock.
    let resumed = is(o, "Suspended") && !is(s, "Suspended");
    if o.start_time.is_some()
        && start_changed
        && !resumed
        && !spec.and_then(|s| s.suspend).unwrap_or(false)
    {
        out.push(status_required(
            "status.startTime",
            "startTime cannot be removed for unsuspended job",
        ));
    }
    if finished {
        if s.active.unwrap_or(0) > 0 && (finished_changed || active_changed) {
            out.push(status_rule(
                "status.active",
                "active>0 is invalid for finished job",
            ));
        }
        if s.terminating.unwrap_or(0) > 0 && (finished_changed || s.terminating != o.terminating) {
            out.push(status_rule(
                "status.terminating",
                "terminating>0 is invalid for finished job",
            ));
        }
        if s.start_time.is_none() && (finished_changed || start_changed) {
            out.push(status_required(
                "status.startTime",
                "startTime is required for finished job",
            ));
        }
        let uncounted = s.uncounted_terminated_pods.as_ref().map_or(0, |u| {
            u.succeeded.as_ref().map_or(0, Vec::len) + u.failed.as_ref().map_or(0, Vec::len)
        });
        if uncounted > 0
            && (finished_changed || s.uncounted_terminated_pods != o.uncounted_terminated_pods)
        {
            out.push(status_rule(
                "status.uncountedTerminatedPods",
                "uncountedTerminatedPods needs to be empty for finished job",
            ));
        }
    }
    if s.ready.unwrap_or(0) > s.active.unwrap_or(0) && (s.ready != o.ready || active_changed) {
        out.push(status_rule(
            "status.ready",
            "cannot set more ready pods than active",
        ));
    }
    for (field, new, before) in [
        ("status.failed", s.failed, o.failed),
        ("status.succeeded", s.succeeded, o.succeeded),
    ] {
        if new.unwrap_or(0) < before.unwrap_or(0) {
            out.push(status_rule(
                field,
                format!("cannot decrease the {} counter", &field[7..]),
            ));
        }
    }
    // Index lists.
    let indexed = spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
    let completions = spec.and_then(|s| s.completions);
    let per_index = spec.and_then(|s| s.backoff_limit_per_index).is_some();
    let completed_text = s.completed_indexes.as_deref().unwrap_or_default();
    let completed_changed = s.completed_indexes != o.completed_indexes;
    let failed_changed = s.failed_indexes != o.failed_indexes;
    let mut completed = BTreeSet::new();
    if completed_changed {
        if !indexed && !completed_text.is_empty() {
            out.push(status_rule(
                "status.completedIndexes",
                "cannot set non-empty completedIndexes when non-indexed completion mode",
            ));
        } else if let Some(c) = completions {
            match parse_indexes(completed_text, Some(c)) {
                Ok(set) => completed = set,
                Err(e) => out.push(status_rule(
                    "status.completedIndexes",
                    format!("error parsing completedIndexes: {e}"),
                )),
            }
        }
    }
    if let Some(text) = s.failed_indexes.as_deref()
        && (failed_changed || completed_changed)
    {
        if per_index {
            match parse_indexes(text, completions) {
                Ok(set) => {
                    if completed.is_empty() {
                        completed = parse_indexes(completed_text, completions).unwrap_or_default();
                    }
                    if let Some(i) = set.intersection(&completed).next() {
                        out.push(status_rule(
                            "status.failedIndexes",
                            format!("failedIndexes and completedIndexes overlap at index: {i}"),
                        ));
                    }
                }
                Err(e) if failed_changed => out.push(status_rule(
                    "status.failedIndexes",
                    format!("error parsing failedIndexes: {e}"),
                )),
                Err(_) => {}
            }
        } else if failed_changed {
            out.push(status_rule(
                "status.failedIndexes",
                "cannot set non-null failedIndexes when backoffLimitPerIndex is null",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value, status: serde_json::Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "spec": spec, "status": status}))
            .expect("job")
    }

    fn cond(t: &str) -> serde_json::Value {
        json!({"type": t, "status": "True"})
    }

    fn fields(errs: &[Cause]) -> Vec<String> {
        errs.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn job_status_writes_keep_kubes_rules() {
        let spec = json!({"template": {}});
        let t0 = "2026-01-01T00:00:00Z";
        let t1 = "2026-01-01T00:01:00Z";
        let running = job(
            spec.clone(),
            json!({"active": 2, "ready": 1, "startTime": t0, "succeeded": 1, "failed": 1}),
        );
        let done = job(
            spec.clone(),
            json!({"startTime": t0, "completionTime": t1, "succeeded": 3, "failed": 1,
                "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}),
        );
        // The controller's own steps pass.
        assert!(status_update_errors(&running, &job(spec.clone(), json!({}))).is_empty());
        assert!(
            status_update_errors(&done, &running).is_empty(),
            "{:?}",
            fields(&status_update_errors(&done, &running))
        );
        let failing = job(
            spec.clone(),
            json!({"startTime": t0, "failed": 2, "conditions": [cond("FailureTarget")]}),
        );
        let failed = job(
            spec.clone(),
            json!({"startTime": t0, "failed": 2, "conditions": [cond("FailureTarget"), cond("Failed")]}),
        );
        assert!(status_update_errors(&failed, &failing).is_empty());
        // What a careless client might write.
        let bad = [
            (
                running.clone(),
                json!({"active": -1, "startTime": t0, "succeeded": 1, "failed": 1}),
                "status.active",
            ),
            (
                running.clone(),
                json!({"active": 2, "startTime": t0, "succeeded": 0, "failed": 1}),
                "decrease the succeeded",
            ),
            (
                running.clone(),
                json!({"active": 2, "startTime": t0, "succeeded": 1, "failed": 0}),
                "decrease the failed",
            ),
            (
                running.clone(),
                json!({"active": 1, "ready": 2, "startTime": t0, "succeeded": 1, "failed": 1}),
                "more ready",
            ),
            (
                running.clone(),
                json!({"active": 2, "succeeded": 1, "failed": 1}),
                "startTime cannot be removed",
            ),
            (
                running.clone(),
                json!({"active": 2, "startTime": t0, "succeeded": 1, "failed": 1,
                "uncountedTerminatedPods": {"succeeded": ["a"], "failed": ["a"]}}),
                "Duplicate",
            ),
            (
                running.clone(),
                json!({"startTime": t0, "succeeded": 1, "failed": 1, "completionTime": t1}),
                "no Complete=True",
            ),
            (
                running.clone(),
                json!({"active": 2, "startTime": t0, "succeeded": 1, "failed": 1,
                "conditions": [cond("Complete"), cond("SuccessCriteriaMet")], "completionTime": t1}),
                "active>0",
            ),
            (
                running.clone(),
                json!({"startTime": t0, "succeeded": 1, "failed": 1,
                "conditions": [cond("Complete")], "completionTime": t1}),
                "without the SuccessCriteriaMet",
            ),
            (
                running.clone(),
                json!({"startTime": t0, "succeeded": 1, "failed": 1,
                "conditions": [cond("Failed")]}),
                "without the FailureTarget",
            ),
            (
                running.clone(),
                json!({"startTime": t1, "succeeded": 1, "failed": 1,
                "conditions": [cond("SuccessCriteriaMet"), cond("Complete")], "completionTime": t0}),
                "before startTime",
            ),
            (
                running.clone(),
                json!({"active": 2, "startTime": t0, "succeeded": 1, "failed": 1, "completedIndexes": "1"}),
                "non-indexed",
            ),
            (
                done.clone(),
                json!({"startTime": t0, "completionTime": t1, "succeeded": 3, "failed": 1}),
                "cannot disable the terminal Complete",
            ),
            (
                done.clone(),
                json!({"startTime": t0, "completionTime": t0, "succeeded": 3, "failed": 1,
                "conditions": [cond("SuccessCriteriaMet"), cond("Complete")]}),
                "cannot be mutated",
            ),
            (
                done.clone(),
                json!({"startTime": t0, "completionTime": t1, "succeeded": 3, "failed": 1,
                "conditions": [cond("SuccessCriteriaMet"), cond("Complete"), cond("Failed"), cond("FailureTarget")]}),
                "Complete=True and Failed=True",
            ),
        ];
        for (old, status, want) in bad {
            let new = job(spec.clone(), status);
            let errs = fields(&status_update_errors(&new, &old));
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        // Index lists fit an Indexed Job.
        let ispec = json!({"template": {}, "completionMode": "Indexed", "completions": 4, "backoffLimitPerIndex": 1});
        let old = job(ispec.clone(), json!({"startTime": t0}));
        let ok = job(
            ispec.clone(),
            json!({"startTime": t0, "completedIndexes": "0,1", "failedIndexes": "3"}),
        );
        assert!(status_update_errors(&ok, &old).is_empty());
        for (status, want) in [
            (
                json!({"startTime": t0, "completedIndexes": "0-4"}),
                "completedIndexes",
            ),
            (
                json!({"startTime": t0, "completedIndexes": "1", "failedIndexes": "1"}),
                "overlap at index: 1",
            ),
        ] {
            let errs = fields(&status_update_errors(&job(ispec.clone(), status), &old));
            assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
        }
        let plain = job(spec.clone(), json!({"startTime": t0, "failedIndexes": "1"}));
        assert!(
            fields(&status_update_errors(
                &plain,
                &job(spec.clone(), json!({"startTime": t0}))
            ))
            .iter()
            .any(|e| e.contains("backoffLimitPerIndex is null"))
        );
        // A resumption restarts the clock; a stored status that broke a
        // rule before it existed can still be written, untouched.
        let suspended = job(
            spec.clone(),
            json!({"startTime": t0, "conditions": [cond("Suspended")]}),
        );
        let resumed = job(
            spec.clone(),
            json!({"startTime": t1, "conditions": [{"type": "Suspended", "status": "False"}]}),
        );
        assert!(status_update_errors(&resumed, &suspended).is_empty());
        let legacy = job(spec.clone(), json!({"conditions": [cond("Complete")]}));
        assert!(status_update_errors(&legacy, &legacy).is_empty());
    }

    #[test]
    fn index_lists_round_trip_in_their_compressed_form() {
        let set = parse_indexes("0,2-4,7", Some(10)).expect("valid");
        assert_eq!(set.iter().copied().collect::<Vec<_>>(), [0, 2, 3, 4, 7]);
        assert_eq!(format_indexes(&set), "0,2-4,7");
        let pair: BTreeSet<i32> = [5, 6].into();
        assert_eq!(format_indexes(&pair), "5,6");
        assert_eq!(format_indexes(&BTreeSet::new()), "");
        assert!(parse_indexes("", Some(1)).expect("empty").is_empty());
        for bad in ["3-1", "1,1", "2,1", "a", "-1", "1-", "0-10", "+1"] {
            assert!(parse_indexes(bad, Some(10)).is_err(), "{bad}");
        }
        assert!(parse_indexes("0-2147483646", None).is_err(), "bounded");
    }

    fn failed_pod(codes: &[(&str, i32)], conditions: serde_json::Value) -> Pod {
        let statuses: Vec<_> = codes
            .iter()
            .map(|(n, c)| {
                json!({"name": n, "image": "busybox", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"terminated": {"exitCode": c}}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": "Failed", "containerStatuses": statuses, "conditions": conditions},
        }))
        .expect("a pod")
    }

    #[test]
    fn failure_policy_rules_match_in_order_and_skip_exit_code_zero() {
        let policy: PodFailurePolicy = serde_json::from_value(json!({"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
            {"action": "Count", "onExitCodes": {"operator": "NotIn", "values": [1]}},
        ]}))
        .expect("a policy");
        let m = match_failure_policy(
            &policy,
            &failed_pod(&[("side", 0), ("main", 42)], json!([])),
        )
        .expect("a match");
        assert_eq!((m.action.as_str(), m.rule), ("FailJob", 1));
        assert_eq!(
            m.message,
            "Container main for pod ns/p failed with exit code 42 matching FailJob rule at index 1"
        );
        // 1 is excluded by NotIn and 0 never matches.
        assert_eq!(
            match_failure_policy(&policy, &failed_pod(&[("main", 1), ("x", 0)], json!([]))),
            None
        );
        let m = match_failure_policy(&policy, &failed_pod(&[("x", 3)], json!([]))).expect("3");
        assert_eq!(m.action, "Count");
        let disrupted = failed_pod(
            &[("main", 42)],
            json!([{"type": "DisruptionTarget", "status": "True"}]),
        );
        let m = match_failure_policy(&policy, &disrupted).expect("the condition");
        assert_eq!((m.action.as_str(), m.rule), ("Ignore", 0));
    }
}
