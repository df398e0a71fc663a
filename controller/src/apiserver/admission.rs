//! Admission of what a request writes, beyond the kind's own validation:
//! Pod Security ([`crate::registry::pod_security`]) for pods and the pod
//! templates of workloads, against the labels of their namespace.

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::{Pod, PodSpec, ReplicationController},
};
use weft_api::error::ApiError;

use super::ApiState;
use crate::registry::pod_security as psa;

/// The pod spec of a decoded object Pod Security looks at, with its name
/// and whether it is a pod (enforced) or a template (warned about).
fn pod_spec(obj: &crate::registry::Decoded) -> Option<(&PodSpec, bool)> {
    if let Some(p) = obj.peek::<Pod>() {
        return p.spec.as_ref().map(|s| (s, true));
    }
    if let Some(d) = obj.peek::<Deployment>() {
        return d.spec.as_ref()?.template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(d) = obj.peek::<StatefulSet>() {
        return d.spec.as_ref()?.template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(d) = obj.peek::<DaemonSet>() {
        return d.spec.as_ref()?.template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(c) = obj.peek::<CronJob>() {
        let job = c.spec.as_ref()?.job_template.spec.as_ref()?;
        return job.template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(r) = obj.peek::<ReplicationController>() {
        let template = r.spec.as_ref()?.template.as_ref()?;
        return template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(j) = obj.peek::<Job>() {
        return j.spec.as_ref()?.template.spec.as_ref().map(|s| (s, false));
    }
    if let Some(r) = obj.peek::<ReplicaSet>() {
        return r
            .spec
            .as_ref()?
            .template
            .as_ref()?
            .spec
            .as_ref()
            .map(|s| (s, false));
    }
    None
}

/// Checks a pod (or a workload's template) against its namespace's Pod
/// Security levels: a pod that breaks `enforce` is refused with 403, as
/// kube-apiserver refuses it; what breaks `warn` (and, for a template,
/// `enforce`) comes back as Warnings; what breaks `audit` is logged.
///
/// # Errors
/// 403 for a pod that breaks its namespace's enforced level.
pub(super) async fn pod_security(
    st: &ApiState,
    ns: Option<&str>,
    obj: &crate::registry::Decoded,
) -> Result<Vec<String>, ApiError> {
    let (Some((spec, is_pod)), Some(ns)) = (pod_spec(obj), ns) else {
        return Ok(Vec::new());
    };
    let Some(labels) = psa::namespace_labels(&st.registry, ns).await else {
        return Ok(Vec::new());
    };
    psa::check(
        st.registry.pod_security_default,
        &labels,
        ns,
        &obj.name,
        spec,
        is_pod,
    )
}

/// Warnings for what a pod spec asks and Weft treats as advisory, as
/// Kubernetes does preferences (`weft_api::workload::advisories`).
pub(super) fn advisories(obj: &crate::registry::Decoded) -> Vec<String> {
    match pod_spec(obj) {
        Some((spec, true)) => weft_api::workload::advisories(spec, "spec"),
        Some((spec, false)) => weft_api::workload::advisories(spec, "spec.template.spec"),
        None => Vec::new(),
    }
}

/// The labels of namespace `ns` that Pod Security judges a patch (or an
/// apply) of `plural` by ([`patched`]); `None` when it judges nothing: a
/// status write, or a kind without a pod spec.
pub(super) async fn patch_labels(
    st: &ApiState,
    plural: &str,
    write: crate::registry::Write,
    ns: Option<&str>,
) -> Option<std::collections::BTreeMap<String, String>> {
    match (write, ns) {
        (crate::registry::Write::Update, Some(ns))
            if matches!(plural, "pods" | "deployments" | "replicasets") =>
        {
            psa::namespace_labels(&st.registry, ns).await
        }
        _ => None,
    }
}

/// [`pod_security`] for a PATCH, on the object before and after it:
/// `plural`'s pod spec (a pod's own, a workload's template). As
/// kube-apiserver does, a patch that changes nothing of the spec but
/// images, tolerations or the deadline (labels, annotations, an image) is
/// not judged again, so a namespace labelled after its pods were made does
/// not lock them.
///
/// # Errors
/// 403 for a pod the patch makes break its namespace's enforced level.
pub(super) fn patched(
    default: psa::Level,
    labels: &std::collections::BTreeMap<String, String>,
    ns: &str,
    plural: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
) -> Result<Vec<String>, ApiError> {
    let (pointer, is_pod) = match plural {
        "pods" => ("/spec", true),
        "deployments" | "replicasets" => ("/spec/template/spec", false),
        _ => return Ok(Vec::new()),
    };
    let (Some(before), Some(after)) = (old.pointer(pointer), new.pointer(pointer)) else {
        return Ok(Vec::new());
    };
    // What a pod's spec may change at all besides these is refused by its
    // immutability anyway.
    let without_images = |spec: &serde_json::Value| {
        let mut s = spec.clone();
        if let Some(o) = s.as_object_mut() {
            o.remove("activeDeadlineSeconds");
            o.remove("tolerations");
        }
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            for c in s[list].as_array_mut().into_iter().flatten() {
                if let Some(c) = c.as_object_mut() {
                    c.remove("image");
                }
            }
        }
        s
    };
    if without_images(before) == without_images(after) {
        return Ok(Vec::new());
    }
    // A spec that does not decode is refused by the kind's own validation.
    let Ok(spec) = serde_json::from_value::<PodSpec>(after.clone()) else {
        return Ok(Vec::new());
    };
    let name = new["metadata"]["name"].as_str().unwrap_or_default();
    psa::check(default, labels, ns, name, &spec, is_pod)
}
