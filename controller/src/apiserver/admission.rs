//! Admission of what a request writes, beyond the kind's own validation:
//! Pod Security ([`crate::registry::pod_security`]) for pods and the pod
//! templates of workloads, against the labels of their namespace.

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{Namespace, Pod, PodSpec},
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
    let cached = st
        .registry
        .namespaces
        .as_ref()
        .and_then(|c| c.namespace(ns));
    let labels = match cached {
        Some(n) => n.metadata.labels.clone().unwrap_or_default(),
        None => match st.registry.get::<Namespace>(None, ns).await {
            Ok(n) => n.metadata.labels.unwrap_or_default(),
            // The create itself says the namespace is missing.
            Err(_) => return Ok(Vec::new()),
        },
    };
    let mut warnings = Vec::new();
    let (level, version) =
        psa::level(&labels, "enforce").unwrap_or((st.pod_security_default, "latest".into()));
    let broken = psa::violations(level, spec);
    if !broken.is_empty() {
        let summary = psa::summary(level, &version, &broken);
        if is_pod {
            return Err(ApiError::forbidden(format!(
                "pods {:?} is forbidden: violates {summary}",
                obj.name
            )));
        }
        warnings.push(format!("would violate {summary}"));
    }
    if let Some((warn, version)) = psa::level(&labels, "warn")
        && (warn != level || is_pod)
    {
        let broken = psa::violations(warn, spec);
        if !broken.is_empty() {
            warnings.push(format!(
                "would violate {}",
                psa::summary(warn, &version, &broken)
            ));
        }
    }
    if let Some((audit, version)) = psa::level(&labels, "audit") {
        let broken = psa::violations(audit, spec);
        if !broken.is_empty() {
            tracing::info!(
                namespace = ns,
                name = %obj.name,
                audit = %format!("violates {}", psa::summary(audit, &version, &broken)),
                "pod security audit"
            );
        }
    }
    Ok(warnings)
}
