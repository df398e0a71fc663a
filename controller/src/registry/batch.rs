//! Jobs (batch/v1), as kube-apiserver's job strategy: the defaults
//! (completions and parallelism, backoffLimit, completion mode, the
//! replacement policy), a selector and template labels generated from the
//! Job's uid unless `manualSelector` says otherwise, the checks of each
//! field, and what may change after creation.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, CronJobStatus, Job, JobSpec, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;
use weft_api::error::Cause;
use weft_api::job::{self as rules, MAX_INDEXED_COMPLETIONS};

use super::apps::{check_template, check_workload};
use super::kind::{Kind, kind_fields};
use super::validation::{check_labels, default_pod_spec, non_negative};
use weft_api::cron::Schedule;

/// The labels a Job whose selector is generated gives its template.
fn generated_labels(uid: &str, name: &str) -> BTreeMap<String, String> {
    [
        (rules::CONTROLLER_UID, uid),
        (rules::LEGACY_CONTROLLER_UID, uid),
        (rules::JOB_NAME, name),
        (rules::LEGACY_JOB_NAME, name),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn generated_selector(uid: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([(rules::CONTROLLER_UID.to_string(), uid.to_string())].into()),
        match_expressions: None,
    }
}

/// A list at `field` of `len` items must have between `lo` and `hi`.
fn count_between(
    out: &mut Vec<Cause>,
    field: String,
    len: usize,
    lo: usize,
    hi: usize,
    what: &str,
) {
    if len < lo || len > hi {
        out.push(Cause::invalid(
            field,
            len,
            format!("must have between {lo} and {hi} {what}"),
        ));
    }
}

/// The checks of a Job's spec at `path` (`spec`, or a CronJob's
/// `spec.jobTemplate.spec`), after defaulting.
pub(super) fn check_job_spec(out: &mut Vec<Cause>, spec: &JobSpec, path: &str) {
    let at = |f: &str| format!("{path}.{f}");
    non_negative(out, &at("parallelism"), spec.parallelism);
    non_negative(out, &at("completions"), spec.completions);
    non_negative(out, &at("backoffLimit"), spec.backoff_limit);
    non_negative(
        out,
        &at("activeDeadlineSeconds"),
        spec.active_deadline_seconds,
    );
    non_negative(
        out,
        &at("ttlSecondsAfterFinished"),
        spec.ttl_seconds_after_finished,
    );
    non_negative(
        out,
        &at("backoffLimitPerIndex"),
        spec.backoff_limit_per_index,
    );
    non_negative(out, &at("maxFailedIndexes"), spec.max_failed_indexes);
    let mut inner = Vec::new();
    match &spec.selector {
        Some(selector) => check_workload(&mut inner, None, selector, Some(&spec.template)),
        // A CronJob's template: its Jobs get their selectors when made.
        None => check_template(&mut inner, Some(&spec.template)),
    }
    // check_workload speaks of `spec.`; a CronJob's job spec is deeper.
    out.extend(inner.into_iter().map(|mut c| {
        if let Some(rest) = c.field.strip_prefix("spec.") {
            c.field = at(rest);
        }
        c
    }));
    let pod_spec = spec.template.spec.as_ref();
    let restart = pod_spec.and_then(|s| s.restart_policy.as_deref());
    if let Some(p) = restart
        && !["OnFailure", "Never"].contains(&p)
    {
        out.push(Cause::not_supported(
            at("template.spec.restartPolicy"),
            p,
            &["OnFailure", "Never"],
        ));
    }
    let indexed = match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => false,
        Some("Indexed") => true,
        Some(other) => {
            out.push(Cause::not_supported(
                at("completionMode"),
                other,
                &["NonIndexed", "Indexed"],
            ));
            false
        }
    };
    if indexed {
        match spec.completions {
            None => out.push(Cause::required(at("completions"))),
            Some(c) if c > MAX_INDEXED_COMPLETIONS => out.push(Cause::invalid(
                at("completions"),
                c,
                format!("must be less than or equal to {MAX_INDEXED_COMPLETIONS} when completion mode is Indexed"),
            )),
            _ => {}
        }
        if let Some(p) = spec.parallelism
            && p > MAX_INDEXED_COMPLETIONS
        {
            out.push(Cause::invalid(
                at("parallelism"),
                p,
                format!("must be less than or equal to {MAX_INDEXED_COMPLETIONS} when completion mode is Indexed"),
            ));
        }
    }
    if spec.backoff_limit_per_index.is_some() && !indexed {
        out.push(Cause::forbidden(
            at("backoffLimitPerIndex"),
            "requires indexed completion mode",
        ));
    }
    if let Some(m) = spec.max_failed_indexes {
        if spec.backoff_limit_per_index.is_none() {
            out.push(Cause::required(format!(
                "{}: when maxFailedIndexes is specified",
                at("backoffLimitPerIndex")
            )));
        }
        if spec.completions.is_some_and(|c| m > c) {
            out.push(Cause::invalid(
                at("maxFailedIndexes"),
                m,
                "must be less than or equal to completions",
            ));
        }
    }
    if let Some(p) = spec.pod_replacement_policy.as_deref() {
        if !["TerminatingOrFailed", "Failed"].contains(&p) {
            out.push(Cause::not_supported(
                at("podReplacementPolicy"),
                p,
                &["TerminatingOrFailed", "Failed"],
            ));
        } else if spec.pod_failure_policy.is_some() && p != "Failed" {
            out.push(Cause::not_supported(
                at("podReplacementPolicy"),
                p,
                &["Failed"],
            ));
        }
    }
    if let Some(policy) = &spec.pod_failure_policy {
        if restart != Some("Never") {
            out.push(Cause::invalid(
                at("template.spec.restartPolicy"),
                restart.unwrap_or_default(),
                "only \"Never\" is supported when podFailurePolicy is specified",
            ));
        }
        check_failure_policy(out, policy, &at("podFailurePolicy"), spec);
    }
    if let Some(policy) = &spec.success_policy {
        let p = at("successPolicy");
        if !indexed {
            out.push(Cause::invalid(
                &p,
                json!(policy),
                "requires indexed completion mode",
            ));
        }
        count_between(
            out,
            format!("{p}.rules"),
            policy.rules.len(),
            1,
            20,
            "rules",
        );
        for (i, r) in policy.rules.iter().enumerate() {
            let rp = format!("{p}.rules[{i}]");
            let mut listed = None;
            if let Some(s) = &r.succeeded_indexes {
                match rules::parse_indexes(s, spec.completions) {
                    Ok(set) => listed = Some(set.len()),
                    Err(e) => out.push(Cause::invalid(format!("{rp}.succeededIndexes"), s, e)),
                }
            }
            match r.succeeded_count {
                None if r.succeeded_indexes.is_none() => out.push(Cause::required(format!(
                    "{rp}: at least one of succeededCount or succeededIndexes must be specified"
                ))),
                Some(n) if n <= 0 => out.push(Cause::invalid(
                    format!("{rp}.succeededCount"),
                    n,
                    "must be greater than 0",
                )),
                Some(n) if spec.completions.is_some_and(|c| n > c) => out.push(Cause::invalid(
                    format!("{rp}.succeededCount"),
                    n,
                    "must be less than or equal to completions",
                )),
                Some(n) if listed.is_some_and(|l| n as usize > l) => out.push(Cause::invalid(
                    format!("{rp}.succeededCount"),
                    n,
                    "must be less than or equal to the number of succeededIndexes",
                )),
                _ => {}
            }
        }
    }
    if let Some(m) = spec.managed_by.as_deref()
        && (m.is_empty() || m.len() > 63 || !m.contains('/'))
    {
        out.push(Cause::invalid(
            at("managedBy"),
            m,
            "must be a domain-prefixed path of at most 63 characters (such as \"acme.io/foo\")",
        ));
    }
}

fn check_failure_policy(
    out: &mut Vec<Cause>,
    policy: &k8s_openapi::api::batch::v1::PodFailurePolicy,
    path: &str,
    spec: &JobSpec,
) {
    if policy.rules.len() > 20 {
        out.push(Cause::too_long(format!("{path}.rules"), 20));
    }
    let containers: Vec<&str> = spec
        .template
        .spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .map(|c| c.name.as_str())
        .collect();
    for (i, r) in policy.rules.iter().enumerate() {
        let rp = format!("{path}.rules[{i}]");
        let actions = ["FailJob", "FailIndex", "Ignore", "Count"];
        if !actions.contains(&r.action.as_str()) {
            out.push(Cause::not_supported(
                format!("{rp}.action"),
                &r.action,
                &actions,
            ));
        } else if r.action == "FailIndex" && spec.backoff_limit_per_index.is_none() {
            out.push(Cause::forbidden(
                format!("{rp}.action"),
                "requires the backoffLimitPerIndex to be set",
            ));
        }
        match (&r.on_exit_codes, &r.on_pod_conditions) {
            (Some(_), Some(_)) | (None, None) => out.push(Cause::invalid(
                &rp,
                json!(r),
                "specifying one of OnExitCodes and OnPodConditions is required",
            )),
            (Some(req), None) => {
                let ep = format!("{rp}.onExitCodes");
                if !["In", "NotIn"].contains(&req.operator.as_str()) {
                    out.push(Cause::not_supported(
                        format!("{ep}.operator"),
                        &req.operator,
                        &["In", "NotIn"],
                    ));
                }
                if let Some(c) = req.container_name.as_deref()
                    && !containers.contains(&c)
                {
                    out.push(Cause::invalid(
                        format!("{ep}.containerName"),
                        c,
                        "must be one of the container or initContainer names in the pod template",
                    ));
                }
                count_between(
                    out,
                    format!("{ep}.values"),
                    req.values.len(),
                    1,
                    255,
                    "values",
                );
                for (j, v) in req.values.iter().enumerate() {
                    if j > 0 && *v <= req.values[j - 1] {
                        out.push(Cause::invalid(
                            format!("{ep}.values[{j}]"),
                            v,
                            "must be ordered and unique",
                        ));
                    }
                    if *v == 0 && req.operator == "In" {
                        out.push(Cause::invalid(
                            format!("{ep}.values[{j}]"),
                            v,
                            "must not be 0 for the In operator",
                        ));
                    }
                }
            }
            (None, Some(patterns)) => {
                count_between(
                    out,
                    format!("{rp}.onPodConditions"),
                    patterns.len(),
                    1,
                    20,
                    "patterns",
                );
                for (j, p) in patterns.iter().enumerate() {
                    let pp = format!("{rp}.onPodConditions[{j}]");
                    if p.type_.is_empty() {
                        out.push(Cause::required(format!("{pp}.type")));
                    }
                    if !["True", "False", "Unknown"].contains(&p.status.as_str()) {
                        out.push(Cause::not_supported(
                            format!("{pp}.status"),
                            &p.status,
                            &["True", "False", "Unknown"],
                        ));
                    }
                }
            }
        }
    }
}

/// The defaults kube-apiserver fills in a Job spec.
pub(super) fn default_job_spec(spec: &mut JobSpec) {
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    spec.parallelism.get_or_insert(1);
    let per_index = spec.backoff_limit_per_index.is_some();
    spec.backoff_limit
        .get_or_insert(if per_index { i32::MAX } else { 6 });
    spec.completion_mode
        .get_or_insert_with(|| "NonIndexed".into());
    spec.suspend.get_or_insert(false);
    let replacement = if spec.pod_failure_policy.is_some() {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.pod_replacement_policy
        .get_or_insert_with(|| replacement.into());
    for r in spec
        .pod_failure_policy
        .iter_mut()
        .flat_map(|p| p.rules.iter_mut())
    {
        for p in r.on_pod_conditions.iter_mut().flatten() {
            if p.status.is_empty() {
                p.status = "True".into();
            }
        }
    }
    default_pod_spec(spec.template.spec.get_or_insert_with(Default::default));
}

/// What of a Job's spec may change once it exists: parallelism, the
/// deadline, the limits, suspend and the TTL; while it is suspended and
/// has never started, its template's scheduling too (as kube's job
/// strategy); an Indexed Job's completions together with an equal
/// parallelism (elastic Indexed Jobs).
fn immutable_changes(old: &JobSpec, new: &JobSpec, old_status: Option<&JobStatus>) -> Vec<Cause> {
    let mut out = Vec::new();
    let mut a = old.clone();
    let mut b = new.clone();
    for s in [&mut a, &mut b] {
        s.parallelism = None;
        s.active_deadline_seconds = None;
        s.backoff_limit = None;
        s.max_failed_indexes = None;
        s.suspend = None;
        s.ttl_seconds_after_finished = None;
        s.pod_replacement_policy = None;
        s.manual_selector = None;
    }
    let elastic = new.completion_mode.as_deref() == Some("Indexed")
        && new.completions == new.parallelism
        && old.completion_mode == new.completion_mode;
    if elastic {
        a.completions = None;
        b.completions = None;
    }
    let never_started =
        old.suspend == Some(true) && old_status.is_none_or(|s| s.start_time.is_none());
    if never_started {
        for s in [&mut a, &mut b] {
            if let Some(t) = s.template.spec.as_mut() {
                t.node_selector = None;
                t.tolerations = None;
                t.affinity = None;
                t.scheduling_gates = None;
            }
            if let Some(m) = s.template.metadata.as_mut() {
                m.labels = None;
                m.annotations = None;
            }
        }
    }
    if a.template != b.template {
        out.push(Cause::invalid(
            "spec.template",
            "(the template)",
            "field is immutable",
        ));
        a.template = b.template.clone();
    }
    if a != b {
        let fields = [
            ("completions", a.completions != b.completions),
            ("selector", a.selector != b.selector),
            ("completionMode", a.completion_mode != b.completion_mode),
            (
                "podFailurePolicy",
                a.pod_failure_policy != b.pod_failure_policy,
            ),
            ("successPolicy", a.success_policy != b.success_policy),
            (
                "backoffLimitPerIndex",
                a.backoff_limit_per_index != b.backoff_limit_per_index,
            ),
            ("managedBy", a.managed_by != b.managed_by),
        ];
        for (f, changed) in fields {
            if changed {
                let value = serde_json::to_value(&b)
                    .map(|v| v[f].to_string())
                    .unwrap_or_default();
                out.push(Cause::invalid(
                    format!("spec.{f}"),
                    value,
                    "field is immutable",
                ));
            }
        }
    }
    out
}

#[async_trait]
impl Kind for Job {
    kind_fields!(spec: JobSpec, status: JobStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let name = self.metadata.name.clone().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.manual_selector != Some(true) {
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            labels.extend(generated_labels(&uid, &name));
            spec.selector
                .get_or_insert_with(|| generated_selector(&uid));
        }
    }

    fn default_fields(&mut self) {
        default_job_spec(self.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = JobSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        if spec.manual_selector != Some(true)
            && let Some(uid) = &self.metadata.uid
            && spec.selector.as_ref() != Some(&generated_selector(uid))
        {
            out.push(Cause::invalid(
                "spec.selector",
                json!(spec.selector),
                "`selector` not auto-generated (set spec.manualSelector: true to choose it)",
            ));
        }
        if spec.manual_selector == Some(true) && spec.selector.is_none() {
            out.push(Cause::required("spec.selector"));
        }
        // An Indexed Job's pods are named `NAME-INDEX` as hosts: that must
        // stay a DNS label (kube's check).
        if spec.completion_mode.as_deref() == Some("Indexed")
            && let (Some(name), Some(c)) = (self.metadata.name.as_deref(), spec.completions)
            && name.len() + 1 + (c.max(1) - 1).to_string().len() > 63
        {
            out.push(Cause::invalid(
                "metadata.name",
                name,
                "will not able to create pod with invalid DNS label",
            ));
        }
        check_job_spec(&mut out, spec, "spec");
        out
    }

    fn validate_status_update(&self, old: &Self) -> Vec<Cause> {
        weft_api::job::status_update_errors(self, old)
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let empty = JobSpec::default();
        immutable_changes(
            old.spec.as_ref().unwrap_or(&empty),
            self.spec.as_ref().unwrap_or(&empty),
            old.status.as_ref(),
        )
    }
}

/// The longest CronJob name: its Jobs add 11 characters (`-` and the
/// scheduled minute) and stay valid label values.
const MAX_CRONJOB_NAME: usize = 52;

#[async_trait]
impl Kind for CronJob {
    kind_fields!(spec: CronJobSpec, status: CronJobStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.concurrency_policy
            .get_or_insert_with(|| "Allow".into());
        spec.suspend.get_or_insert(false);
        spec.successful_jobs_history_limit.get_or_insert(3);
        spec.failed_jobs_history_limit.get_or_insert(1);
        let job = spec.job_template.spec.get_or_insert_with(Default::default);
        default_pod_spec(job.template.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let name = self.metadata.name.as_deref().unwrap_or_default();
        if name.len() > MAX_CRONJOB_NAME {
            out.push(Cause::invalid(
                "metadata.name",
                name,
                format!("must be no more than {MAX_CRONJOB_NAME} characters"),
            ));
        }
        let empty = CronJobSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        if spec.schedule.trim().is_empty() {
            out.push(Cause::required("spec.schedule"));
        } else if let Err(e) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            let field = if e.starts_with("unknown time zone") {
                "spec.timeZone"
            } else {
                "spec.schedule"
            };
            let value = if field == "spec.timeZone" {
                spec.time_zone.clone().unwrap_or_default()
            } else {
                spec.schedule.clone()
            };
            out.push(Cause::invalid(field, value, e));
        }
        let policies = ["Allow", "Forbid", "Replace"];
        if let Some(p) = spec.concurrency_policy.as_deref()
            && !policies.contains(&p)
        {
            out.push(Cause::not_supported("spec.concurrencyPolicy", p, &policies));
        }
        non_negative(
            &mut out,
            "spec.startingDeadlineSeconds",
            spec.starting_deadline_seconds,
        );
        non_negative(
            &mut out,
            "spec.successfulJobsHistoryLimit",
            spec.successful_jobs_history_limit,
        );
        non_negative(
            &mut out,
            "spec.failedJobsHistoryLimit",
            spec.failed_jobs_history_limit,
        );
        // The Jobs' labels, checked now rather than failing
        // at every scheduled time, as kube-apiserver checks them.
        if let Some(meta) = &spec.job_template.metadata {
            check_labels(
                &mut out,
                "spec.jobTemplate.metadata.labels",
                meta.labels.as_ref(),
            );
        }
        let mut job = spec.job_template.spec.clone().unwrap_or_default();
        if let Some(sel) = job.selector.take() {
            out.push(Cause::invalid(
                "spec.jobTemplate.spec.selector",
                json!(sel),
                "`selector` will be auto-generated",
            ));
        }
        if job.manual_selector == Some(true) {
            out.push(Cause::not_supported(
                "spec.jobTemplate.spec.manualSelector",
                "true",
                &["nil", "false"],
            ));
        }
        check_job_spec(&mut out, &job, "spec.jobTemplate.spec");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value) -> Job {
        let mut j: Job = serde_json::from_value(json!({
            "metadata": {"name": "pi", "namespace": "ns", "uid": "u-1"},
            "spec": spec,
        }))
        .expect("a Job");
        j.prepare_for_create();
        j.default_fields();
        j
    }

    fn template(restart: &str) -> serde_json::Value {
        json!({"spec": {"restartPolicy": restart,
            "containers": [{"name": "main", "image": "busybox"}]}})
    }

    #[test]
    fn a_job_gets_kubes_defaults_and_a_selector_of_its_uid() {
        let j = job(json!({"template": template("Never")}));
        assert!(j.validate().is_empty(), "{:?}", j.validate());
        let spec = j.spec.as_ref().expect("spec");
        assert_eq!((spec.completions, spec.parallelism), (Some(1), Some(1)));
        assert_eq!(spec.backoff_limit, Some(6));
        assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
        assert_eq!(
            spec.pod_replacement_policy.as_deref(),
            Some("TerminatingOrFailed")
        );
        let labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref());
        assert_eq!(
            labels
                .and_then(|l| l.get(rules::JOB_NAME))
                .map(String::as_str),
            Some("pi")
        );
        assert_eq!(spec.selector, Some(generated_selector("u-1")));
        // A work queue: parallelism without completions.
        let j = job(json!({"parallelism": 3, "template": template("OnFailure")}));
        let spec = j.spec.as_ref().expect("spec");
        assert_eq!((spec.completions, spec.parallelism), (None, Some(3)));
    }

    #[test]
    fn job_fields_are_checked_as_kube_checks_them() {
        let causes = |spec| {
            job(spec)
                .validate()
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            causes(json!({"template": template("Always")})),
            ["spec.template.spec.restartPolicy"]
        );
        assert_eq!(
            causes(
                json!({"completionMode": "Indexed", "completions": null, "parallelism": 2,
                "template": template("Never")})
            ),
            ["spec.completions"]
        );
        assert_eq!(
            causes(json!({"backoffLimitPerIndex": 1, "template": template("Never")})),
            ["spec.backoffLimitPerIndex"]
        );
        assert_eq!(
            causes(json!({"podFailurePolicy": {"rules": [{"action": "FailJob",
                "onExitCodes": {"operator": "In", "values": [0, 3, 2]}}]},
                "template": template("OnFailure")})),
            [
                "spec.template.spec.restartPolicy",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[0]",
                "spec.podFailurePolicy.rules[0].onExitCodes.values[2]",
            ]
        );
        assert_eq!(
            causes(json!({"completionMode": "Indexed", "completions": 3,
                "successPolicy": {"rules": [{"succeededIndexes": "0-3"}]},
                "template": template("Never")})),
            ["spec.successPolicy.rules[0].succeededIndexes"]
        );
        let mut chosen = job(json!({"selector": {"matchLabels": {"a": "b"}},
            "template": template("Never")}));
        assert_eq!(chosen.validate()[0].field, "spec.selector");
        chosen.spec.as_mut().expect("spec").manual_selector = Some(true);
        // Manual, but the template's labels do not match it.
        assert_eq!(chosen.validate()[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn cronjobs_are_checked_as_kube_checks_them() {
        let cj = |name: &str, spec: serde_json::Value| {
            let mut c: CronJob = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": "u"},
                "spec": spec,
            }))
            .expect("a CronJob");
            c.prepare_for_create();
            c.default_fields();
            c.validate()
                .into_iter()
                .map(|c| c.field)
                .collect::<Vec<_>>()
        };
        let template = json!({"spec": {"template": template("OnFailure")}});
        assert!(
            cj(
                "nightly",
                json!({"schedule": "0 3 * * *", "timeZone": "Europe/Paris",
            "jobTemplate": template})
            )
            .is_empty()
        );
        assert_eq!(
            cj(
                "nightly",
                json!({"schedule": "0 3 * * *", "timeZone": "Moon/Base",
                "jobTemplate": template})
            ),
            ["spec.timeZone"]
        );
        assert_eq!(
            cj(
                "nightly",
                json!({"schedule": "0 3 * *", "jobTemplate": template})
            ),
            ["spec.schedule"]
        );
        let mut labelled = template.clone();
        labelled["metadata"] = json!({"labels": {"bad key!": "x"}});
        assert_eq!(
            cj(
                "nightly",
                json!({"schedule": "0 3 * * *", "jobTemplate": labelled})
            ),
            ["spec.jobTemplate.metadata.labels"]
        );
        assert_eq!(
            cj(
                &"n".repeat(53),
                json!({"schedule": "@daily", "jobTemplate": template})
            ),
            ["metadata.name"]
        );
        // The template's pods keep kube's restartPolicy rule; a selector
        // is the Jobs' to get.
        assert_eq!(
            cj(
                "nightly",
                json!({"schedule": "@daily", "concurrencyPolicy": "Sometimes",
                "jobTemplate": {"spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}})
            ),
            [
                "spec.concurrencyPolicy",
                "spec.jobTemplate.spec.selector",
                "spec.jobTemplate.spec.template.spec.restartPolicy",
            ]
        );
    }

    #[test]
    fn only_what_kube_lets_change_may_change() {
        let old = job(json!({"parallelism": 2, "completions": 4, "template": template("Never")}));
        let mut new = old.clone();
        let s = new.spec.as_mut().expect("spec");
        s.parallelism = Some(5);
        s.suspend = Some(true);
        s.active_deadline_seconds = Some(60);
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().expect("spec").completions = Some(9);
        let causes = new.validate_update(&old);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.completions");
        let mut new = old.clone();
        new.spec
            .as_mut()
            .expect("spec")
            .template
            .spec
            .as_mut()
            .expect("pod")
            .containers[0]
            .image = Some("alpine".into());
        assert_eq!(new.validate_update(&old)[0].field, "spec.template");
        // Suspended and never started: its scheduling may change.
        let mut old = old;
        old.spec.as_mut().expect("spec").suspend = Some(true);
        let mut new = old.clone();
        new.spec
            .as_mut()
            .expect("spec")
            .template
            .spec
            .as_mut()
            .expect("pod")
            .node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
        assert!(new.validate_update(&old).is_empty());
        // Elastic Indexed: completions with an equal parallelism.
        let old = job(
            json!({"completionMode": "Indexed", "parallelism": 3, "completions": 3,
            "template": template("Never")}),
        );
        let mut new = old.clone();
        let s = new.spec.as_mut().expect("spec");
        s.completions = Some(5);
        s.parallelism = Some(5);
        assert!(new.validate_update(&old).is_empty());
    }
}
