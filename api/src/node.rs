//! The Node rule more than one place needs: its Ready condition.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};

use crate::conditions;

/// The node's Ready condition, if it reports one.
pub fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref().and_then(status_ready)
}

/// The Ready condition in a node's status.
pub fn status_ready(status: &NodeStatus) -> Option<&NodeCondition> {
    conditions::find(status.conditions.as_deref()?, "Ready")
}

/// Whether the node is Ready: its Ready condition is True (False, Unknown
/// and none are not).
pub fn is_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::is_ready;

    #[test]
    fn ready_only_when_true() {
        let node = |conditions: serde_json::Value| {
            serde_json::from_value(serde_json::json!({"status": {"conditions": conditions}}))
                .expect("a node")
        };
        let with = |status: &str| {
            node(serde_json::json!([
                {"type": "MemoryPressure", "status": "True"},
                {"type": "Ready", "status": status}
            ]))
        };
        assert!(is_ready(&with("True")));
        assert!(!is_ready(&with("False")));
        assert!(!is_ready(&with("Unknown")));
        assert!(!is_ready(&node(
            serde_json::json!([{"type": "DiskPressure", "status": "True"}])
        )));
        assert!(!is_ready(&k8s_openapi::api::core::v1::Node::default()));
    }
}
