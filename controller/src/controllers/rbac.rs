//! ClusterRole aggregation, as kube-controller-manager's
//! clusterrole-aggregation controller: a ClusterRole with an
//! `aggregationRule` has as its rules those of every ClusterRole its
//! selectors match (in name order, without repeats). That is how `admin`,
//! `edit` and `view` gain what `system:aggregate-to-*` roles, and roles an
//! operator labels so, add.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};

use super::Ctx;
use crate::registry::Write;
use crate::registry::validation::selects;

/// The rules `role` aggregates from `all`; None when it aggregates nothing.
pub fn aggregated_rules(role: &ClusterRole, all: &[Arc<ClusterRole>]) -> Option<Vec<PolicyRule>> {
    let selectors = role
        .aggregation_rule
        .as_ref()?
        .cluster_role_selectors
        .as_ref()?;
    let mut sources: Vec<&Arc<ClusterRole>> = all
        .iter()
        .filter(|r| r.metadata.name != role.metadata.name)
        .filter(|r| {
            let labels = r.metadata.labels.clone().unwrap_or_default();
            selectors.iter().any(|s| selects(s, &labels))
        })
        .collect();
    sources.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut rules: Vec<PolicyRule> = Vec::new();
    for r in sources {
        for rule in r.rules.iter().flatten() {
            if !rules.contains(rule) {
                rules.push(rule.clone());
            }
        }
    }
    Some(rules)
}

async fn sync(ctx: &Ctx) {
    let all = ctx.cache.store::<ClusterRole>().list(None);
    for role in &all {
        let Some(want) = aggregated_rules(role, &all) else {
            continue;
        };
        if role.rules.as_ref().unwrap_or(&Vec::new()) == &want {
            continue;
        }
        let name = role.metadata.name.clone().unwrap_or_default();
        let result = ctx
            .reg
            .modify::<ClusterRole>(None, &name, Write::Update, |mut r| {
                r.rules = Some(want.clone());
                Ok(r)
            })
            .await;
        match result {
            Ok(_) => tracing::debug!(role = %name, rules = want.len(), "aggregated"),
            Err(e) if e.code == 404 => {}
            Err(e) => tracing::warn!(role = %name, error = %e, "cannot aggregate"),
        }
    }
}

pub fn start(ctx: &Ctx) {
    let ctx = ctx.clone();
    let mut changes = ctx.cache.store::<ClusterRole>().subscribe();
    tokio::spawn(async move {
        loop {
            sync(&ctx).await;
            // Wait for a change, then let a burst of them settle.
            match changes.recv().await {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while changes.try_recv().is_ok() {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn role(name: &str, labels: serde_json::Value, rules: serde_json::Value) -> Arc<ClusterRole> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": name, "labels": labels}, "rules": rules}),
            )
            .expect("a ClusterRole"),
        )
    }

    #[test]
    fn an_aggregated_role_gets_the_rules_of_the_roles_it_selects() {
        let r1 = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]);
        let r2 = json!([{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"]}]);
        let all = vec![
            role("b-source", json!({"agg": "true"}), r2.clone()),
            role("a-source", json!({"agg": "true"}), r1.clone()),
            role("dup", json!({"agg": "true"}), r1.clone()),
            role(
                "other",
                json!({}),
                json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
            ),
        ];
        let target: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": "target", "labels": {"agg": "true"}},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"agg": "true"}}]}}))
        .expect("a ClusterRole");
        let rules = aggregated_rules(&target, &all).expect("aggregates");
        let want: Vec<PolicyRule> =
            serde_json::from_value(json!([r1[0].clone(), r2[0].clone()])).expect("rules");
        assert_eq!(rules, want, "name order, once each, not the unselected");
        assert!(aggregated_rules(&all[0], &all).is_none());
    }
}
