//! Nodes: each holds a /24 pod block of the cluster network (the one it
//! asks for, if free, or any free one), claimed when it registers and freed
//! when it is deleted; once set, its block never changes.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use weft_api::error::{ApiError, Cause};

use super::Registry;
use super::kind::{Kind, kind_fields};
use crate::ipam::{self, IpamError};
use crate::store::Txn;

fn cidr(node: &Node) -> Option<&str> {
    node.spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .filter(|c| !c.is_empty())
}

/// Claims the node's block and writes it into its spec.
async fn claim_block(reg: &Registry, node: &mut Node, txn: &mut Txn) -> Result<(), ApiError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let want = cidr(node).map(str::to_string);
    let who = ipam::owner(&name, node.metadata.uid.as_deref());
    let block = reg
        .ipam
        .claim_block(reg.store.as_ref(), want.as_deref(), &name, &who, txn)
        .await
        .map_err(|e| match e {
            IpamError::Invalid(why) => ApiError::invalid(
                "Node",
                "",
                &name,
                vec![Cause::invalid(
                    "spec.podCIDR",
                    want.as_deref().unwrap_or_default(),
                    why,
                )],
            ),
            IpamError::Exhausted(why) => ApiError::forbidden(why),
            IpamError::Store(e) => super::store_error(e),
        })?;
    let spec = node.spec.get_or_insert_with(Default::default);
    spec.pod_cidr = Some(block.to_string());
    spec.pod_cidrs = Some(vec![block.to_string()]);
    Ok(())
}

/// Labels of the `kubernetes.io` and `k8s.io` namespaces a node's agent
/// may set on its own Node (kubelet's own labels), as kube's
/// NodeRestriction allows.
const AGENT_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

/// Whether a node's agent may not set or change label `key` on its Node:
/// `node-restriction.kubernetes.io/` ones (which admins set to place
/// workloads, so nodes must not claim them), and the `kubernetes.io` and
/// `k8s.io` namespaces (roles such as `node-role.kubernetes.io/*` among
/// them) but for kubelet's own labels and the `kubelet.kubernetes.io` and
/// `node.kubernetes.io` prefixes.
pub fn restricted_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    let under = |domain: &str| prefix == domain || prefix.ends_with(&format!(".{domain}"));
    if under("node-restriction.kubernetes.io") {
        return true;
    }
    if !(under("kubernetes.io") || under("k8s.io")) {
        return false;
    }
    !(AGENT_LABELS.contains(&key) || under("kubelet.kubernetes.io") || under("node.kubernetes.io"))
}

#[async_trait]
impl Kind for Node {
    kind_fields!(spec: NodeSpec, status: NodeStatus);

    async fn admit_node(
        &self,
        old: Option<&Self>,
        node: &str,
        _reg: &Registry,
    ) -> Result<(), ApiError> {
        let none = Default::default();
        let new_labels = self.metadata.labels.as_ref().unwrap_or(&none);
        let old_labels = old
            .and_then(|o| o.metadata.labels.as_ref())
            .unwrap_or(&none);
        // Set, changed or removed: labels left as an admin set them pass.
        let touched: std::collections::BTreeSet<&str> = new_labels
            .keys()
            .chain(old_labels.keys())
            .filter(|k| new_labels.get(*k) != old_labels.get(*k))
            .filter(|k| restricted_label(k))
            .map(String::as_str)
            .collect();
        if !touched.is_empty() {
            return Err(ApiError::forbidden(format!(
                "node \"{node}\" is not allowed to modify labels: {} (NodeRestriction: a node may not give itself a role or a label of the kubernetes.io, k8s.io or node-restriction.kubernetes.io namespaces beyond the agent's own)",
                touched.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(old) = old {
            let taints = |n: &Node| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
            };
            if taints(old) != taints(self) {
                return Err(ApiError::forbidden(format!(
                    "node \"{node}\" is not allowed to modify taints (NodeRestriction)"
                )));
            }
        }
        Ok(())
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        match (cidr(old), cidr(self)) {
            (Some(a), Some(b)) if a != b => {
                vec![Cause::invalid(
                    "spec.podCIDR",
                    b,
                    "field is immutable once set",
                )]
            }
            _ => Vec::new(),
        }
    }

    async fn on_create(&mut self, reg: &Registry, txn: &mut Txn) -> Result<(), ApiError> {
        stamp_no_execute_taints(self, None);
        claim_block(reg, self, txn).await
    }

    async fn on_update(
        &mut self,
        old: &Self,
        reg: &Registry,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        stamp_no_execute_taints(self, Some(old));
        match old.spec.as_ref().and_then(|s| s.pod_cidr.clone()) {
            Some(cidr) => {
                let spec = self.spec.get_or_insert_with(Default::default);
                spec.pod_cidrs = Some(vec![cidr.clone()]);
                spec.pod_cidr = Some(cidr);
                Ok(())
            }
            None => claim_block(reg, self, txn).await,
        }
    }

    fn on_delete(&self, reg: &Registry, txn: &mut Txn) {
        if let Some(block) = self.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()) {
            reg.ipam.release_block(block, txn);
        }
    }
}

/// As kube-apiserver: a NoExecute taint carries the time it was added (kept
/// from the node before when the taint was there already), from which the
/// taint-eviction controller counts the pods' `tolerationSeconds`.
fn stamp_no_execute_taints(node: &mut Node, old: Option<&Node>) {
    let before: Vec<k8s_openapi::api::core::v1::Taint> = old
        .and_then(|o| o.spec.as_ref())
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let now = weft_api::meta::now_time();
    for t in node
        .spec
        .iter_mut()
        .flat_map(|s| s.taints.iter_mut().flatten())
        .filter(|t| t.effect == "NoExecute" && t.time_added.is_none())
    {
        let kept = before
            .iter()
            .find(|b| b.key == t.key && b.value == t.value && b.effect == t.effect)
            .and_then(|b| b.time_added.clone());
        t.time_added = Some(kept.unwrap_or_else(|| now.clone()));
    }
}
