//! Kinds the API server stores as they come, with no more than their names
//! checked: ServiceAccounts, Endpoints and EndpointSlices (written by the endpoints
//! controller), Events (which a node's agent may write only about itself
//! and its pods), and Leases (node heartbeats).

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Endpoints, Event, Pod};
use weft_api::error::ApiError;

use super::Registry;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::kind::{Kind, kind_fields};

#[async_trait]
impl Kind for Endpoints {
    kind_fields!();
}

/// A ServiceAccount: a name pods run as, in its namespace. Its tokens are
/// issued on request (TokenRequest, `apiserver::satoken`), bound to a pod
/// and short-lived, as kube's since 1.24; none is stored.
#[async_trait]
impl Kind for k8s_openapi::api::core::v1::ServiceAccount {
    kind_fields!();
}

#[async_trait]
impl Kind for EndpointSlice {
    kind_fields!();
}

#[async_trait]
impl Kind for Event {
    kind_fields!();

    /// A node's agent writes Events only about its own Node and the pods
    /// bound to it (and, updating one, only one that was about them).
    async fn admit_node(
        &self,
        old: Option<&Self>,
        node: &str,
        reg: &Registry,
    ) -> Result<(), ApiError> {
        for event in old.into_iter().chain(std::iter::once(self)) {
            about_own(event, node, reg).await?;
        }
        Ok(())
    }
}

/// Whether `event` is about node `node` or a pod bound to it.
async fn about_own(event: &Event, node: &str, reg: &Registry) -> Result<(), ApiError> {
    let about = &event.involved_object;
    let kind = about.kind.as_deref().unwrap_or_default();
    let name = about.name.as_deref().unwrap_or_default();
    let deny = |why: String| {
        Err(ApiError::forbidden(format!(
            "node \"{node}\" may only write Events about itself and the pods bound to it: {why}"
        )))
    };
    match kind {
        "Node" if name == node => Ok(()),
        "Node" => deny(format!("this Event is about node \"{name}\"")),
        "Pod" => {
            let ns = about.namespace.as_deref().unwrap_or_default();
            if event.metadata.namespace.as_deref() != Some(ns) {
                return deny(format!(
                    "this Event about pod {ns}/{name} is not in the pod's namespace"
                ));
            }
            match reg.find::<Pod>(Some(ns), name).await? {
                Some((pod, _))
                    if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node) =>
                {
                    Ok(())
                }
                Some(_) => deny(format!("pod {ns}/{name} is not bound to it")),
                None => deny(format!("pod {ns}/{name} does not exist")),
            }
        }
        other => deny(format!("this Event is about a {other:?}")),
    }
}

#[async_trait]
impl Kind for Lease {
    kind_fields!(spec: LeaseSpec);
}
