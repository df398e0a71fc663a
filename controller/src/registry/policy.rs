//! PodDisruptionBudgets (policy/v1), as kube-apiserver's strategy: one of
//! `minAvailable` and `maxUnavailable` (an integer or a percentage), a
//! selector, the unhealthy pod eviction policy; the status is the
//! disruption controller's.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{
    PodDisruptionBudget, PodDisruptionBudgetSpec, PodDisruptionBudgetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, LabelSelector};
use weft_api::error::{ApiError, Cause};

use super::kind::{Kind, kind_fields};
use super::validation::{check_int_or_percent, check_selector};
use super::{Registry, Write};

#[async_trait]
impl Kind for PodDisruptionBudget {
    kind_fields!(spec: PodDisruptionBudgetSpec, status: PodDisruptionBudgetStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn default_fields(&mut self) {
        // kube-apiserver stores no default policy (absent means
        // IfHealthyBudget); nothing to fill.
        self.spec.get_or_insert_with(Default::default);
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = PodDisruptionBudgetSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        if spec.min_available.is_some() && spec.max_unavailable.is_some() {
            out.push(Cause::invalid(
                "spec",
                "(both)",
                "minAvailable and maxUnavailable cannot be both set",
            ));
        }
        check_int_or_percent(&mut out, "spec.minAvailable", spec.min_available.as_ref());
        check_int_or_percent(
            &mut out,
            "spec.maxUnavailable",
            spec.max_unavailable.as_ref(),
        );
        check_selector(&mut out, "spec.selector", spec.selector.as_ref());
        let policies = ["IfHealthyBudget", "AlwaysAllow"];
        if let Some(p) = spec.unhealthy_pod_eviction_policy.as_deref()
            && !policies.contains(&p)
        {
            out.push(Cause::not_supported(
                "spec.unhealthyPodEvictionPolicy",
                p,
                &policies,
            ));
        }
        out
    }
}

/// Whether a budget's selector takes `pod` in: a missing selector selects
/// nothing, an empty one every pod of the namespace (policy/v1).
pub fn selects_pod(selector: Option<&LabelSelector>, pod: &Pod) -> bool {
    selector.is_some_and(|s| {
        super::validation::selects(s, pod.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
    })
}

/// Tries of an eviction whose budget another eviction changed meanwhile.
const EVICTION_RETRIES: usize = 5;

/// kube's message for an eviction a budget refuses.
const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn too_many_requests(cause: String) -> ApiError {
    let mut e = ApiError::too_many_requests(REFUSED);
    e.causes.push(Cause {
        reason: "DisruptionBudget",
        message: cause,
        field: String::new(),
    });
    e
}

impl Registry {
    /// The eviction subresource: deletes pod `name` as `options` say,
    /// unless a PodDisruptionBudget that selects it has no disruption to
    /// spare (429, kube's message and cause); with one, the budget's
    /// `disruptionsAllowed` is spent (and the pod listed in
    /// `disruptedPods`) in the same compare-and-swap kube-apiserver does,
    /// before the pod is deleted.
    ///
    /// # Errors
    /// 404 for a missing pod, 429 when a budget refuses, 500 when more
    /// than one budget selects the pod, or what the deletion answers.
    pub async fn evict(
        &self,
        ns: &str,
        name: &str,
        options: Option<&DeleteOptions>,
    ) -> Result<(), ApiError> {
        let grace = options.and_then(|o| o.grace_period_seconds);
        let precondition = (
            options
                .and_then(|o| o.preconditions.as_ref())
                .and_then(|p| p.uid.clone()),
            options
                .and_then(|o| o.preconditions.as_ref())
                .and_then(|p| p.resource_version.as_deref())
                .and_then(|v| v.parse().ok()),
        );
        for _ in 0..EVICTION_RETRIES {
            let pod: Pod = self.get(Some(ns), name).await?;
            // Finished or already going: no budget to ask.
            if weft_api::pod::is_finished(&pod) || pod.metadata.deletion_timestamp.is_some() {
                self.delete::<Pod>(Some(ns), name, precondition.clone(), grace)
                    .await?;
                return Ok(());
            }
            let (budgets, _) = self
                .list_json(PodDisruptionBudget::resource(), Some(ns), |_| true)
                .await?;
            let budgets: Vec<PodDisruptionBudget> = budgets
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .filter(|b: &PodDisruptionBudget| {
                    selects_pod(b.spec.as_ref().and_then(|s| s.selector.as_ref()), &pod)
                })
                .collect();
            let budget = match budgets.as_slice() {
                [] => {
                    self.evict_now(ns, &pod, precondition.clone(), grace)
                        .await?;
                    return Ok(());
                }
                [one] => one.clone(),
                _ => {
                    return Err(ApiError::internal(
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                    ));
                }
            };
            let bname = budget.metadata.name.clone().unwrap_or_default();
            let status = budget.status.clone().unwrap_or_default();
            if status.observed_generation < budget.metadata.generation {
                return Err(too_many_requests(format!(
                    "The disruption budget {bname} is still being processed by the server."
                )));
            }
            let healthy = weft_api::pod::is_ready(&pod);
            let always = budget
                .spec
                .as_ref()
                .and_then(|s| s.unhealthy_pod_eviction_policy.as_deref())
                == Some("AlwaysAllow");
            if !healthy && (always || status.current_healthy >= status.desired_healthy) {
                // An unhealthy pod does not count against the budget.
                self.evict_now(ns, &pod, precondition.clone(), grace)
                    .await?;
                return Ok(());
            }
            if status.disruptions_allowed <= 0 {
                return Err(too_many_requests(format!(
                    "The disruption budget {bname} needs {} healthy pods and has {} currently",
                    status.desired_healthy, status.current_healthy
                )));
            }
            let mut spent = budget.clone();
            let s = spent.status.get_or_insert_with(Default::default);
            s.disruptions_allowed -= 1;
            s.disrupted_pods
                .get_or_insert_with(Default::default)
                .insert(name.to_string(), weft_api::meta::now_time());
            match self.update(Some(ns), &bname, spent, Write::Status).await {
                Ok(_) => {}
                // Another eviction spent it first: look again.
                Err(e) if e.code == 409 => continue,
                Err(e) => return Err(e),
            }
            self.evict_now(ns, &pod, precondition.clone(), grace)
                .await?;
            return Ok(());
        }
        Err(too_many_requests(
            "too many evictions at once against this budget; try again".into(),
        ))
    }

    /// Deletes a running pod for an eviction, marked `DisruptionTarget`
    /// first (unless a precondition already rules it out).
    async fn evict_now(
        &self,
        ns: &str,
        pod: &Pod,
        precondition: (Option<String>, Option<i64>),
        grace: Option<i64>,
    ) -> Result<(), ApiError> {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref();
        if precondition.0.as_deref().is_none_or(|u| Some(u) == uid) && !self.dry_run {
            self.mark_disrupted(ns, name, uid, super::EVICTION_BY_API)
                .await?;
        }
        self.delete::<Pod>(Some(ns), name, precondition, grace)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes(spec: serde_json::Value) -> Vec<String> {
        let pdb: PodDisruptionBudget = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"}, "spec": spec,
        }))
        .expect("a PDB");
        pdb.validate().into_iter().map(|c| c.field).collect()
    }

    #[test]
    fn budgets_are_checked_as_kube_checks_them() {
        assert!(
            causes(json!({"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}))
                .is_empty()
        );
        assert!(causes(json!({"maxUnavailable": "25%"})).is_empty());
        assert_eq!(
            causes(json!({"minAvailable": 1, "maxUnavailable": 1})),
            ["spec"]
        );
        assert_eq!(
            causes(json!({"minAvailable": "half"})),
            ["spec.minAvailable"]
        );
        assert_eq!(
            causes(json!({"maxUnavailable": "101%"})),
            ["spec.maxUnavailable"]
        );
        assert_eq!(causes(json!({"minAvailable": -1})), ["spec.minAvailable"]);
        assert_eq!(
            causes(json!({"minAvailable": 1, "unhealthyPodEvictionPolicy": "Never"})),
            ["spec.unhealthyPodEvictionPolicy"]
        );
    }
}
