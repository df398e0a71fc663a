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

#[async_trait]
impl Kind for Node {
    kind_fields!(spec: NodeSpec, status: NodeStatus);

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
        claim_block(reg, self, txn).await
    }

    async fn on_update(
        &mut self,
        old: &Self,
        reg: &Registry,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
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
