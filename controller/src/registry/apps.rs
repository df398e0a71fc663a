//! Deployments, ReplicaSets, ReplicationControllers (the legacy kind, a
//! ReplicaSet with an equality selector), DaemonSets and the
//! ControllerRevisions that hold a DaemonSet's history: replicas and the
//! rollout strategy defaulted, the pod template checked like a Pod's, a selector
//! that must select the template's labels and may never change.

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus, DaemonSetUpdateStrategy,
    Deployment, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec, ReplicaSetStatus,
    RollingUpdateDaemonSet, RollingUpdateDeployment, RollingUpdateStatefulSetStrategy, StatefulSet,
    StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetStatus,
    StatefulSetUpdateStrategy,
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
    check_expression_values, check_int_or_percent, check_labels, check_pod_spec,
    check_selector_labels, default_pod_spec, non_negative, selector_error, selector_is_empty,
    selects,
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
    } else if check_selector_labels(out, "spec.selector", selector)
        && check_expression_values(out, "spec.selector", selector)
    {
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
        non_negative(&mut out, "spec.minReadySeconds", spec.min_ready_seconds);
        non_negative(
            &mut out,
            "spec.revisionHistoryLimit",
            spec.revision_history_limit,
        );
        non_negative(
            &mut out,
            "spec.progressDeadlineSeconds",
            spec.progress_deadline_seconds,
        );
        if let (Some(deadline), Some(ready)) =
            (spec.progress_deadline_seconds, spec.min_ready_seconds)
            && deadline >= 0
            && deadline <= ready
        {
            out.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                deadline,
                "must be greater than minReadySeconds",
            ));
        }
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
        non_negative(&mut out, "spec.minReadySeconds", spec.min_ready_seconds);
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
        non_negative(&mut out, "spec.minReadySeconds", spec.min_ready_seconds);
        check_long_running(&mut out, spec.template.as_ref());
        out
    }
}

/// A template whose pods must keep running: `restartPolicy` Always and no
/// `activeDeadlineSeconds` (what DaemonSets and ReplicationControllers
/// require of theirs).
fn check_long_running(out: &mut Vec<Cause>, template: Option<&PodTemplateSpec>) {
    let spec = template.and_then(|t| t.spec.as_ref());
    if let Some(p) = spec.and_then(|s| s.restart_policy.as_deref())
        && p != "Always"
    {
        out.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            p,
            &["Always"],
        ));
    }
    if spec.and_then(|s| s.active_deadline_seconds).is_some() {
        out.push(Cause::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in a workload's pod template is not supported",
        ));
    }
}

#[async_trait]
impl Kind for DaemonSet {
    kind_fields!(spec: DaemonSetSpec, status: DaemonSetStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    /// kube's defaults: RollingUpdate, one pod unavailable at a time and
    /// no surge, ten old revisions kept.
    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.revision_history_limit.get_or_insert(10);
        let strategy = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_pod_spec(spec.template.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = DaemonSetSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        check_workload(&mut out, None, &spec.selector, Some(&spec.template));
        check_long_running(&mut out, Some(&spec.template));
        if spec.min_ready_seconds.is_some_and(|m| m < 0) {
            out.push(Cause::invalid(
                "spec.minReadySeconds",
                spec.min_ready_seconds.unwrap_or_default(),
                "must be greater than or equal to 0",
            ));
        }
        if spec.revision_history_limit.is_some_and(|m| m < 0) {
            out.push(Cause::invalid(
                "spec.revisionHistoryLimit",
                spec.revision_history_limit.unwrap_or_default(),
                "must be greater than or equal to 0",
            ));
        }
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        match strategy.type_.as_deref() {
            Some("RollingUpdate") => {
                let ru = strategy.rolling_update.unwrap_or_default();
                let (unavailable, surge) = (
                    "spec.updateStrategy.rollingUpdate.maxUnavailable",
                    "spec.updateStrategy.rollingUpdate.maxSurge",
                );
                check_int_or_percent(&mut out, unavailable, ru.max_unavailable.as_ref());
                check_int_or_percent(&mut out, surge, ru.max_surge.as_ref());
                let zero = |v: Option<&IntOrString>| match v {
                    None | Some(IntOrString::Int(0)) => true,
                    Some(IntOrString::String(s)) => s == "0%",
                    Some(IntOrString::Int(_)) => false,
                };
                if zero(ru.max_unavailable.as_ref()) && zero(ru.max_surge.as_ref()) {
                    out.push(Cause::invalid(
                        unavailable,
                        serde_json::to_string(&ru.max_unavailable).unwrap_or_default(),
                        "may not be 0 when `maxSurge` is 0",
                    ));
                }
            }
            Some("OnDelete") => {
                if strategy.rolling_update.is_some() {
                    out.push(Cause::forbidden(
                        "spec.updateStrategy.rollingUpdate",
                        "may not be specified when strategy `type` is 'OnDelete'",
                    ));
                }
            }
            Some(other) => out.push(Cause::not_supported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
            None => out.push(Cause::required("spec.updateStrategy.type")),
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let sel = |d: &DaemonSet| {
            d.spec
                .as_ref()
                .map(|s| s.selector.clone())
                .unwrap_or_default()
        };
        selector_unchanged(&sel(old), &sel(self))
    }
}

#[async_trait]
impl Kind for StatefulSet {
    kind_fields!(spec: StatefulSetSpec, status: StatefulSetStatus);

    fn prepare_for_create(&mut self) {
        self.status = None;
    }

    /// kube's defaults: one replica, OrderedReady, RollingUpdate from
    /// partition 0, claims retained, ten old revisions kept.
    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.pod_management_policy
            .get_or_insert_with(|| "OrderedReady".into());
        let strategy = spec
            .update_strategy
            .get_or_insert_with(StatefulSetUpdateStrategy::default);
        strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if strategy.type_.as_deref() == Some("RollingUpdate") {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateStatefulSetStrategy::default);
            ru.partition.get_or_insert(0);
        }
        let retention = spec
            .persistent_volume_claim_retention_policy
            .get_or_insert_with(StatefulSetPersistentVolumeClaimRetentionPolicy::default);
        retention
            .when_deleted
            .get_or_insert_with(|| "Retain".into());
        retention.when_scaled.get_or_insert_with(|| "Retain".into());
        for claim in spec.volume_claim_templates.iter_mut().flatten() {
            claim.default_fields();
        }
        default_pod_spec(spec.template.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = StatefulSetSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        // The template as its pods get it: each claim template is the
        // volume of its name (so mounts of it are found).
        let mut template = spec.template.clone();
        if let Some(pod) = template.spec.as_mut() {
            let volumes = pod.volumes.get_or_insert_with(Vec::new);
            for claim in spec.volume_claim_templates.iter().flatten() {
                let name = claim.metadata.name.clone().unwrap_or_default();
                volumes.retain(|v| v.name != name);
                volumes.push(k8s_openapi::api::core::v1::Volume {
                    persistent_volume_claim: Some(
                        k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                            claim_name: format!("{name}-claim"),
                            read_only: None,
                        },
                    ),
                    name,
                    ..Default::default()
                });
            }
        }
        check_workload(&mut out, spec.replicas, &spec.selector, Some(&template));
        check_long_running(&mut out, Some(&spec.template));
        // Its pods' revision label is `<name>-<hash>`, a label value.
        let name = self.metadata.name.as_deref().unwrap_or_default();
        if name.len() > 52 {
            out.push(Cause::invalid(
                "metadata.name",
                name,
                "must be no more than 52 characters",
            ));
        }
        if let Some(p) = spec.pod_management_policy.as_deref()
            && !["OrderedReady", "Parallel"].contains(&p)
        {
            out.push(Cause::not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
        if let Some(name) = spec.service_name.as_deref().filter(|n| !n.is_empty())
            && let Some(e) = weft_api::meta::dns_label_error(name)
        {
            out.push(Cause::invalid("spec.serviceName", name, e));
        }
        for (field, v) in [
            ("spec.minReadySeconds", spec.min_ready_seconds),
            ("spec.revisionHistoryLimit", spec.revision_history_limit),
            (
                "spec.ordinals.start",
                spec.ordinals.as_ref().and_then(|o| o.start),
            ),
        ] {
            if let Some(n) = v.filter(|n| *n < 0) {
                out.push(Cause::invalid(
                    field,
                    n,
                    "must be greater than or equal to 0",
                ));
            }
        }
        // Every ordinal must be an int32, as the pods' names and the
        // ordinal label carry it.
        let start = spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0);
        let replicas = spec.replicas.unwrap_or(1);
        if start >= 0 && replicas > 0 && start.checked_add(replicas).is_none() {
            out.push(Cause::invalid(
                "spec.ordinals.start",
                start,
                format!("start + replicas ({replicas}) must not exceed {}", i32::MAX),
            ));
        }
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        match strategy.type_.as_deref() {
            Some("RollingUpdate") => {
                let ru = strategy.rolling_update.unwrap_or_default();
                if let Some(p) = ru.partition.filter(|p| *p < 0) {
                    out.push(Cause::invalid(
                        "spec.updateStrategy.rollingUpdate.partition",
                        p,
                        "must be greater than or equal to 0",
                    ));
                }
                let field = "spec.updateStrategy.rollingUpdate.maxUnavailable";
                check_int_or_percent(&mut out, field, ru.max_unavailable.as_ref());
                if matches!(ru.max_unavailable, Some(IntOrString::Int(0)))
                    || matches!(&ru.max_unavailable, Some(IntOrString::String(s)) if s == "0%")
                {
                    out.push(Cause::invalid(field, 0, "must be greater than 0"));
                }
            }
            Some("OnDelete") => {
                if strategy.rolling_update.is_some() {
                    out.push(Cause::forbidden(
                        "spec.updateStrategy.rollingUpdate",
                        "only allowed for updateStrategy 'RollingUpdate'",
                    ));
                }
            }
            Some(other) => out.push(Cause::not_supported(
                "spec.updateStrategy.type",
                other,
                &["OnDelete", "RollingUpdate"],
            )),
            None => out.push(Cause::required("spec.updateStrategy.type")),
        }
        if let Some(r) = &spec.persistent_volume_claim_retention_policy {
            for (field, v) in [
                ("whenDeleted", r.when_deleted.as_deref()),
                ("whenScaled", r.when_scaled.as_deref()),
            ] {
                if let Some(v) = v
                    && !["Retain", "Delete"].contains(&v)
                {
                    out.push(Cause::not_supported(
                        format!("spec.persistentVolumeClaimRetentionPolicy.{field}"),
                        v,
                        &["Retain", "Delete"],
                    ));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, claim) in spec.volume_claim_templates.iter().flatten().enumerate() {
            let at = format!("spec.volumeClaimTemplates[{i}]");
            let name = claim.metadata.name.clone().unwrap_or_default();
            if let Some(e) = weft_api::meta::dns_label_error(&name) {
                out.push(Cause::invalid(format!("{at}.metadata.name"), &name, e));
            } else if !names.insert(name.clone()) {
                out.push(Cause::duplicate(format!("{at}.metadata.name"), &name));
            }
            for mut c in claim.validate() {
                c.field = format!("{at}.{}", c.field);
                out.push(c);
            }
        }
        out
    }

    /// As kube-apiserver: only these fields of a StatefulSet's spec change.
    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let fixed = |s: &StatefulSet| {
            let mut spec = s.spec.clone().unwrap_or_default();
            spec.replicas = None;
            spec.ordinals = None;
            spec.template = PodTemplateSpec::default();
            spec.update_strategy = None;
            spec.persistent_volume_claim_retention_policy = None;
            spec.min_ready_seconds = None;
            spec.revision_history_limit = None;
            spec
        };
        if fixed(self) != fixed(old) {
            return vec![Cause::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            )];
        }
        Vec::new()
    }
}

#[async_trait]
impl Kind for ControllerRevision {
    kind_fields!();

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        if self.revision < 0 {
            out.push(Cause::invalid(
                "revision",
                self.revision,
                "must be greater than or equal to 0",
            ));
        }
        out
    }

    /// As kube-apiserver: its data never changes (its revision number
    /// may, which is how a rollback makes an old template current again).
    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        if self.data != old.data {
            return vec![Cause::invalid("data", "", "field is immutable")];
        }
        Vec::new()
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
    fn counts_and_seconds_are_not_negative_and_ordinals_fit() {
        let fields = |v: serde_json::Value, kind: &str| -> Vec<String> {
            let mut obj = serde_json::json!({
                "metadata": {"name": "web"},
                "spec": {"selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
            });
            for (k, x) in v.as_object().into_iter().flatten() {
                obj["spec"][k] = x.clone();
            }
            let causes = match kind {
                "Deployment" => serde_json::from_value::<Deployment>(obj).map(|mut d| {
                    d.default_fields();
                    d.validate()
                }),
                "ReplicaSet" => serde_json::from_value::<ReplicaSet>(obj).map(|mut d| {
                    d.default_fields();
                    d.validate()
                }),
                _ => serde_json::from_value::<StatefulSet>(obj).map(|mut d| {
                    d.default_fields();
                    d.validate()
                }),
            }
            .expect("an object");
            causes.into_iter().map(|c| c.field).collect()
        };
        assert_eq!(
            fields(serde_json::json!({"minReadySeconds": -3}), "ReplicaSet"),
            ["spec.minReadySeconds"]
        );
        assert_eq!(
            fields(
                serde_json::json!({"revisionHistoryLimit": -1, "progressDeadlineSeconds": -1}),
                "Deployment"
            ),
            ["spec.revisionHistoryLimit", "spec.progressDeadlineSeconds"]
        );
        assert_eq!(
            fields(
                serde_json::json!({"progressDeadlineSeconds": 5, "minReadySeconds": 10}),
                "Deployment"
            ),
            ["spec.progressDeadlineSeconds"]
        );
        assert!(
            fields(
                serde_json::json!({"progressDeadlineSeconds": 600}),
                "Deployment"
            )
            .is_empty()
        );
        assert_eq!(
            fields(
                serde_json::json!({"serviceName": "web", "replicas": 10, "ordinals": {"start": 2147483640}}),
                "StatefulSet"
            ),
            ["spec.ordinals.start"]
        );
        assert!(
            fields(
                serde_json::json!({"serviceName": "web", "replicas": 7, "ordinals": {"start": 2147483640}}),
                "StatefulSet"
            )
            .is_empty()
        );
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
        // A key or value that is no label key or value is said to be so,
        // not reported as a selector that misses the template.
        let causes = rs(serde_json::json!({"matchLabels": {"bad key!": "web"}})).validate();
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.selector.matchLabels");
        let causes = rs(serde_json::json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "-x", "operator": "In", "values": ["a b"]}]}))
        .validate();
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.selector.matchExpressions[0].key",
                "spec.selector.matchExpressions[0].values[0]"
            ]
        );
    }
}
