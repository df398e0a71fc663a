//! Deployments, ReplicaSets and ReplicationControllers (the legacy kind, a
//! ReplicaSet with an equality selector): replicas and (for Deployments)
//! the rollout strategy defaulted, the pod template checked like a Pod's, a selector
//! that must select the template's labels and may never change.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    PodTemplateSpec, ReplicationController, ReplicationControllerSpec, ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use weft_api::error::Cause;

use super::kind::{Kind, kind_fields};
use super::validation::{
    check_expression_values, check_labels, check_pod_spec, default_pod_spec, selector_error,
    selector_is_empty, selects,
};

/// What a Deployment and a ReplicaSet check alike: replicas, selector,
/// template.
pub(super) fn check_workload(
    out: &mut Vec<Cause>,
    replicas: Option<i32>,
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
) {
    if let Some(r) = replicas
        && r < 0
    {
        out.push(Cause::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone());
    if let Some(e) = selector_error(selector) {
        out.push(Cause::invalid("spec.selector", json!(selector), e));
    } else if check_expression_values(out, "spec.selector", selector) {
        if selector_is_empty(selector) {
            out.push(Cause::required("spec.selector"));
        } else if !selects(selector, &labels.clone().unwrap_or_default()) {
            out.push(Cause::invalid(
                "spec.template.metadata.labels",
                serde_json::to_string(&labels).unwrap_or_default(),
                "`selector` does not match template `labels`",
            ));
        }
    }
    check_template(out, template);
}

/// A workload's pod template: its labels, pod spec and annotations.
pub(super) fn check_template(out: &mut Vec<Cause>, template: Option<&PodTemplateSpec>) {
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone());
    check_labels(out, "spec.template.metadata.labels", labels.as_ref());
    check_pod_spec(
        out,
        template.and_then(|t| t.spec.as_ref()),
        "spec.template.spec",
    );
    weft_api::security::check_annotations(
        out,
        template
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref()),
        "spec.template.metadata",
    );
}

fn selector_unchanged(old: &LabelSelector, new: &LabelSelector) -> Vec<Cause> {
    if old == new {
        return Vec::new();
    }
    vec![Cause::invalid(
        "spec.selector",
        serde_json::to_string(new).unwrap_or_default(),
        "field is immutable",
    )]
}

#[async_trait]
impl Kind for Deployment {
    kind_fields!(spec: DeploymentSpec, status: DeploymentStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec.strategy.get_or_insert_with(Default::default);
        strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            let quarter = || IntOrString::String("25%".into());
            ru.max_surge.get_or_insert_with(quarter);
            ru.max_unavailable.get_or_insert_with(quarter);
        }
        default_pod_spec(spec.template.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = DeploymentSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        check_workload(
            &mut out,
            spec.replicas,
            &spec.selector,
            Some(&spec.template),
        );
        if let Some(t) = spec.strategy.as_ref().and_then(|s| s.type_.as_deref())
            && !["RollingUpdate", "Recreate"].contains(&t)
        {
            out.push(Cause::not_supported(
                "spec.strategy.type",
                t,
                &["RollingUpdate", "Recreate"],
            ));
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let sel = |d: &Deployment| {
            d.spec
                .as_ref()
                .map(|s| s.selector.clone())
                .unwrap_or_default()
        };
        selector_unchanged(&sel(old), &sel(self))
    }
}

#[async_trait]
impl Kind for ReplicaSet {
    kind_fields!(spec: ReplicaSetSpec, status: ReplicaSetStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if let Some(template) = spec.template.as_mut() {
            default_pod_spec(template.spec.get_or_insert_with(Default::default));
        }
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = ReplicaSetSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        check_workload(
            &mut out,
            spec.replicas,
            &spec.selector,
            spec.template.as_ref(),
        );
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let sel = |r: &ReplicaSet| {
            r.spec
                .as_ref()
                .map(|s| s.selector.clone())
                .unwrap_or_default()
        };
        selector_unchanged(&sel(old), &sel(self))
    }
}

#[async_trait]
impl Kind for ReplicationController {
    kind_fields!(spec: ReplicationControllerSpec, status: ReplicationControllerStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    /// As kube's defaults: an empty selector (and empty labels) take the
    /// template's labels.
    fn default_fields(&mut self) {
        let template_labels = self
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if spec.selector.as_ref().is_none_or(|s| s.is_empty()) && !template_labels.is_empty() {
            spec.selector = Some(template_labels.clone());
        }
        if let Some(template) = spec.template.as_mut() {
            default_pod_spec(template.spec.get_or_insert_with(Default::default));
        }
        if self.metadata.labels.as_ref().is_none_or(|l| l.is_empty()) && !template_labels.is_empty()
        {
            self.metadata.labels = Some(template_labels);
        }
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = ReplicationControllerSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        if spec.template.is_none() {
            out.push(Cause::required("spec.template"));
        }
        let selector = LabelSelector {
            match_labels: spec.selector.clone(),
            match_expressions: None,
        };
        check_workload(&mut out, spec.replicas, &selector, spec.template.as_ref());
        let restart = spec
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.restart_policy.as_deref());
        if let Some(p) = restart
            && p != "Always"
        {
            out.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                p,
                &["Always"],
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(selector: serde_json::Value) -> ReplicaSet {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"selector": selector, "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }))
        .expect("a ReplicaSet")
    }

    #[test]
    fn selector_expressions_need_their_values_and_must_select_the_template() {
        assert!(
            rs(serde_json::json!({"matchLabels": {"app": "web"}}))
                .validate()
                .is_empty()
        );
        let causes = rs(serde_json::json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn"}]}))
        .validate();
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.selector.matchExpressions[0].values");
        assert_eq!(causes[0].reason, "FieldValueRequired");
        let causes = rs(serde_json::json!({"matchLabels": {"app": "db"}})).validate();
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        let causes = rs(serde_json::json!({})).validate();
        assert_eq!(causes[0].field, "spec.selector");
    }
}
