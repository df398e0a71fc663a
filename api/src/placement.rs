//! Where a pod may run, by the rules of its spec alone: its tolerations of a
//! node's taints, its `nodeSelector` and its required node affinity. The
//! scheduler applies them to choose a node, and the DaemonSet controller to
//! decide which nodes should run a daemon pod, so both read them here.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

/// Whether one of `tolerations` tolerates `taint`.
#[must_use]
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let key = t.key.as_deref().unwrap_or_default();
        let op = t.operator.as_deref().unwrap_or("Equal");
        let effect = t.effect.as_deref().unwrap_or_default();
        let key_ok = (key.is_empty() && op == "Exists") || key == taint.key;
        let value_ok = op == "Exists"
            || t.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default();
        let effect_ok = effect.is_empty() || effect == taint.effect;
        key_ok && value_ok && effect_ok
    })
}

/// The first of `taints` that `spec` does not tolerate, if any.
#[must_use]
pub fn untolerated<'a>(spec: Option<&PodSpec>, taints: &'a [Taint]) -> Option<&'a Taint> {
    let tolerations = spec
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    taints.iter().find(|t| !tolerates(tolerations, t))
}

/// The pod's required node affinity terms (ORed), if it has any.
#[must_use]
pub fn required_node_affinity(spec: Option<&PodSpec>) -> Option<&Vec<NodeSelectorTerm>> {
    spec?
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .map(|s| &s.node_selector_terms)
}

/// Whether a node (its name and labels) satisfies a node selector term:
/// every expression on its labels and every field (`metadata.name`). An
/// empty term matches nothing, as in Kubernetes.
#[must_use]
pub fn term_matches(
    term: &NodeSelectorTerm,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let has_any = term
        .match_expressions
        .as_ref()
        .is_some_and(|v| !v.is_empty())
        || term.match_fields.as_ref().is_some_and(|v| !v.is_empty());
    has_any
        && term
            .match_expressions
            .iter()
            .flatten()
            .all(|e| requirement(e, labels.get(&e.key).map(String::as_str)))
        && term
            .match_fields
            .iter()
            .flatten()
            .all(|e| e.key == "metadata.name" && requirement(e, Some(name)))
}

/// Whether `value` (a label's, `None` when the label is absent) meets `e`.
#[must_use]
pub fn requirement(e: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = e.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    match e.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((value.and_then(number), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Whether the node's name and labels satisfy the pod's required node
/// affinity (any term).
#[must_use]
pub fn affinity_allows(
    spec: Option<&PodSpec>,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    required_node_affinity(spec)
        .is_none_or(|terms| terms.iter().any(|t| term_matches(t, name, labels)))
}

/// Whether the node's labels carry every label of the pod's `nodeSelector`.
#[must_use]
pub fn selector_allows(spec: Option<&PodSpec>, labels: &BTreeMap<String, String>) -> bool {
    spec.and_then(|s| s.node_selector.as_ref())
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(String::from),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn toleration(
        key: Option<&str>,
        op: &str,
        value: Option<&str>,
        effect: Option<&str>,
    ) -> Toleration {
        Toleration {
            key: key.map(String::from),
            operator: Some(op.into()),
            value: value.map(String::from),
            effect: effect.map(String::from),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_match_key_value_and_effect() {
        let t = taint("dedicated", Some("gpu"), "NoSchedule");
        assert!(tolerates(
            &[toleration(Some("dedicated"), "Equal", Some("gpu"), None)],
            &t
        ));
        assert!(!tolerates(
            &[toleration(Some("dedicated"), "Equal", Some("cpu"), None)],
            &t
        ));
        assert!(tolerates(
            &[toleration(
                Some("dedicated"),
                "Exists",
                None,
                Some("NoSchedule")
            )],
            &t
        ));
        assert!(!tolerates(
            &[toleration(
                Some("dedicated"),
                "Exists",
                None,
                Some("NoExecute")
            )],
            &t
        ));
        // An empty key with Exists tolerates everything.
        assert!(tolerates(&[toleration(None, "Exists", None, None)], &t));
        assert!(!tolerates(&[], &t));
    }

    #[test]
    fn terms_need_every_expression_and_empty_terms_match_nothing() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_string()).collect()),
        };
        let term = NodeSelectorTerm {
            match_expressions: Some(vec![req("zone", "In", &["a", "b"])]),
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(term_matches(&term, "n1", &labels));
        assert!(!term_matches(&term, "n2", &labels));
        assert!(!term_matches(&NodeSelectorTerm::default(), "n1", &labels));
        assert!(requirement(&req("x", "DoesNotExist", &[]), None));
        assert!(requirement(&req("x", "Gt", &["3"]), Some("4")));
        assert!(!requirement(&req("x", "Lt", &["3"]), Some("4")));
    }
}
