//! What a Job's pods carry and how their ends are read, in one place for
//! the API server (which validates index lists and failure policies) and
//! the job controller (which writes and reads them): the labels,
//! annotations and finalizer of a Job's pods, completion indexes and their
//! compressed form (`"0,2-4"`, as `status.completedIndexes`), and the pod
//! failure policy's matching of a failed pod.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::{PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
