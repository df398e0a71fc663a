//! Pods: a new pod starts Pending with its QoS class; only its images (and
//! tolerations, activeDeadlineSeconds) may change; a pod bound to a node
//! holds an address of the node's block; deleting a pod that runs on a node
//! only marks it, so that its agent stops it within its grace period. The
//! binding subresource, which the scheduler uses, is here too.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Node, Pod, PodIP, PodSpec, PodStatus};
use weft_api::error::{ApiError, Cause};
use weft_api::pod::{SANDBOX_CONDITION, sandbox_released};

use super::kind::{Kind, kind_fields};
use super::validation::{check_pod_spec, default_pod_spec};
use super::{Registry, object};
use crate::ipam::{self, IpamError};
use crate::store::{Compare, Op, Txn};

pub use weft_api::pod::qos_class;

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn who(pod: &Pod) -> Vec<u8> {
    ipam::owner(&weft_api::meta::key_of(pod), pod.metadata.uid.as_deref())
}

fn invalid(pod: &Pod, cause: Cause) -> ApiError {
    ApiError::invalid(
        "Pod",
        "",
        pod.metadata.name.as_deref().unwrap_or_default(),
        vec![cause],
    )
}

/// Gives `pod` (bound to `node`) a free address of the node's block, claimed
/// in `txn`.
async fn assign_address(
    reg: &Registry,
    pod: &mut Pod,
    node: &str,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    let node_obj = reg.find::<Node>(None, node).await?;
    assign_address_on(reg, pod, node, node_obj.map(|n| n.0), txn).await
}

/// [`assign_address`] with the node already read (`None`: it does not
/// exist).
async fn assign_address_on(
    reg: &Registry,
    pod: &mut Pod,
    node: &str,
    node_obj: Option<Node>,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    let node_obj = node_obj
        .ok_or_else(|| invalid(pod, Cause::invalid("spec.nodeName", node, "no such node")))?;
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        // On the node's own network: its address, as kubelet reports it;
        // nothing of the pod network is claimed.
        let node_ip = node_obj
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
            .map(|a| a.address.clone());
        if let Some(ip) = node_ip {
            let status = pod.status.get_or_insert_with(Default::default);
            status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
            status.pod_ip = Some(ip);
        }
        return Ok(());
    }
    let block = node_obj
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no pod block yet")))?;
    let ip = reg
        .ipam
        .pick_pod_ip(reg.store.as_ref(), block, node)
        .await
        .map_err(|e| match e {
            IpamError::Store(e) => super::store_error(e),
            other => ApiError::forbidden(other.to_string()),
        })?;
    reg.ipam.claim_pod_ip(ip, &who(pod), txn);
    let status = pod.status.get_or_insert_with(Default::default);
    status.pod_ip = Some(ip.to_string());
    status.pod_ips = Some(vec![PodIP { ip: ip.to_string() }]);
    Ok(())
}

#[async_trait]
impl Kind for Pod {
    kind_fields!(spec: PodSpec, status: PodStatus);

    fn prepare_for_create(&mut self) {
        self.status = Some(PodStatus {
            phase: Some("Pending".into()),
            qos_class: Some(qos_class(self.spec.as_ref()).into()),
            ..PodStatus::default()
        });
    }

    fn default_fields(&mut self) {
        default_pod_spec(self.spec.get_or_insert_with(Default::default));
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_pod_spec(&mut out, self.spec.as_ref(), "spec");
        weft_api::security::check_annotations(
            &mut out,
            self.metadata.annotations.as_ref(),
            "metadata",
        );
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        // As in Kubernetes: only images (and tolerations, activeDeadline)
        // of a pod may change; the rest means a new pod.
        let mutable_cleared = |p: &Pod| {
            let mut spec = p.spec.clone().unwrap_or_default();
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.image = None;
            }
            spec.tolerations = None;
            spec.active_deadline_seconds = None;
            spec
        };
        if mutable_cleared(old) != mutable_cleared(self) {
            return vec![Cause {
                reason: "FieldValueForbidden",
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)".into(),
                field: "spec".into(),
            }];
        }
        Vec::new()
    }

    fn validate_status_update(&self, old: &Self) -> Vec<Cause> {
        // As kube-apiserver: a finished pod stays finished (its address
        // may already be another pod's).
        let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
        if weft_api::pod::is_finished(old) && phase(self) != phase(old) {
            return vec![Cause {
                reason: "FieldValueForbidden",
                message: format!(
                    "Forbidden: cannot transition from the terminal phase {}",
                    phase(old).unwrap_or_default()
                ),
                field: "status.phase".into(),
            }];
        }
        // Its sandbox and address are gone (maybe another pod's by now):
        // a writer may not say otherwise.
        if sandbox_released(old) && !sandbox_released(self) {
            return vec![Cause::forbidden(
                "status.conditions",
                format!(
                    "{SANDBOX_CONDITION} cannot become True again: the finished pod's sandbox and address were released"
                ),
            )];
        }
        Vec::new()
    }

    async fn admit(&mut self, reg: &Registry) -> Result<(), ApiError> {
        super::serviceaccount::admit_pod(reg, self).await?;
        super::quota::limit_pod(reg, self).await
    }

    async fn on_create(&mut self, reg: &Registry, txn: &mut Txn) -> Result<(), ApiError> {
        if let Some(spec) = &self.spec {
            super::pod_security::enforce(
                reg,
                self.metadata.namespace.as_deref().unwrap_or("default"),
                self.metadata.name.as_deref().unwrap_or_default(),
                spec,
            )
            .await?;
        }
        if let Some(node) = node_of(self).map(str::to_string) {
            assign_address(reg, self, &node, txn).await?;
        }
        Ok(())
    }

    async fn on_update(
        &mut self,
        old: &Self,
        reg: &Registry,
        txn: &mut Txn,
    ) -> Result<(), ApiError> {
        // The assigned address stays, whatever a status writer sends (a
        // finished pod keeps showing it, as in Kubernetes).
        if let Some(ip) = old.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            let status = self.status.get_or_insert_with(Default::default);
            status.pod_ips = Some(vec![PodIP { ip: ip.clone() }]);
            status.pod_ip = Some(ip);
        }
        if sandbox_released(old) {
            // Its address was freed: that stays so (the condition is what
            // tells a deletion not to free it again, when it may be
            // another pod's by then).
            weft_api::pod::set_condition(self, SANDBOX_CONDITION, "False", None, None);
        } else if sandbox_released(self)
            && let Some(ip) = self.status.as_ref().and_then(|s| s.pod_ip.as_deref())
        {
            // Finished, and its node has torn its sandbox down: the
            // address may go to the node's next pod.
            reg.ipam.release_pod_ip(ip, txn);
        }
        Ok(())
    }

    fn on_delete(&self, reg: &Registry, txn: &mut Txn) {
        let host_network = self.spec.as_ref().and_then(|s| s.host_network) == Some(true);
        if let (false, false, Some(ip)) = (
            host_network,
            sandbox_released(self),
            self.status.as_ref().and_then(|s| s.pod_ip.as_deref()),
        ) {
            reg.ipam.release_pod_ip(ip, txn);
        }
    }

    fn node_name(&self) -> Option<&str> {
        node_of(self)
    }

    /// As kube-apiserver does: a pod bound to a node and not finished is
    /// only marked (deletionTimestamp now + grace) so that its node's agent
    /// stops its containers and then deletes it with grace 0. `grace` None
    /// takes the pod's terminationGracePeriodSeconds (30 s by default); 0
    /// deletes at once (`--force --grace-period=0`, and the agent's final
    /// delete). Unbound and finished pods go at once.
    fn graceful_deletion(&self, grace: Option<i64>) -> Option<i64> {
        if grace == Some(0) || node_of(self).is_none() || weft_api::pod::is_finished(self) {
            return None;
        }
        Some(
            grace
                .or_else(|| {
                    self.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0),
        )
    }
}

/// Why a pod is being deleted against its will: the reason and message of
/// the `DisruptionTarget` condition it is given first, as Kubernetes gives
/// it (a Job's pod failure policy reads it).
pub type Disruption = (&'static str, &'static str);

/// Deleted through the eviction subresource (a drain).
pub const EVICTION_BY_API: Disruption = ("EvictionByEvictionAPI", "Eviction API: evicting");
/// Deleted by the taint eviction (a NoExecute taint, an unreachable node).
pub const DELETION_BY_TAINT: Disruption = (
    "DeletionByTaintManager",
    "Taint manager: deleting due to NoExecute taint",
);
/// Deleted because its node no longer exists.
pub const DELETION_BY_POD_GC: Disruption = ("DeletionByPodGC", "PodGC: node no longer exists");

impl Registry {
    /// Gives a pod that has not finished the `DisruptionTarget=True`
    /// condition, before it is deleted for `why`. A pod that is gone, or
    /// is not the one named by `uid`, is left alone.
    ///
    /// # Errors
    /// What the status write answers, but 404 and 409.
    pub async fn mark_disrupted(
        &self,
        ns: &str,
        name: &str,
        uid: Option<&str>,
        (reason, message): Disruption,
    ) -> Result<(), ApiError> {
        let r = self
            .modify::<Pod>(Some(ns), name, super::Write::Status, |mut pod| {
                if uid.is_some_and(|u| pod.metadata.uid.as_deref() != Some(u)) {
                    return Err(ApiError::conflict("pods", "", name, "another pod"));
                }
                if !weft_api::pod::is_finished(&pod)
                    && weft_api::pod::condition(&pod, "DisruptionTarget")
                        .is_none_or(|c| c.status != "True")
                {
                    weft_api::pod::set_condition(
                        &mut pod,
                        "DisruptionTarget",
                        "True",
                        Some(reason),
                        Some(message),
                    );
                }
                Ok(pod)
            })
            .await;
        match r {
            Ok(_)
            | Err(ApiError {
                code: 404 | 409, ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Binds a pending pod to `node` and gives it an address from the
    /// node's block, in one transaction: the pod's binding subresource,
    /// which the scheduler uses too.
    ///
    /// # Errors
    /// A pod already bound or being deleted (409), a missing pod (404) or
    /// node (422), or a full block (403).
    pub async fn bind(&self, ns: &str, name: &str, node: &str) -> Result<Pod, ApiError> {
        let key = Pod::resource().key(Some(ns), name);
        for _ in 0..64 {
            // The pod and the node, read at once.
            let (pod, node_obj) = tokio::try_join!(
                self.find::<Pod>(Some(ns), name),
                self.find::<Node>(None, node)
            )?;
            let Some((mut pod, rev)) = pod else {
                return Err(ApiError::not_found("pods", "", name));
            };
            if let Some(bound) = node_of(&pod) {
                return Err(ApiError::conflict(
                    "pods",
                    "",
                    name,
                    format!("pod {name} is already assigned to node \"{bound}\""),
                ));
            }
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::conflict(
                    "pods",
                    "",
                    name,
                    "the pod is being deleted",
                ));
            }
            let mut txn = Txn::new().when(Compare::at(&key, rev));
            pod.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
            assign_address_on(self, &mut pod, node, node_obj.map(|n| n.0), &mut txn).await?;
            weft_api::pod::set_condition(&mut pod, "PodScheduled", "True", None, None);
            if self.dry_run {
                return Ok(pod);
            }
            txn.ops.push(Op::put(&key, object::encode(&pod)));
            if self.commit(txn, &mut pod).await? {
                return Ok(pod);
            }
        }
        Err(ApiError::conflict(
            "pods",
            "",
            name,
            "too many concurrent writers; try again",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn qos_classes() {
        let best = pod(serde_json::json!({"spec": {"containers": [{"name": "a"}]}}));
        assert_eq!(qos_class(best.spec.as_ref()), "BestEffort");
        let guaranteed = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}}}]}}));
        assert_eq!(qos_class(guaranteed.spec.as_ref()), "Guaranteed");
        let burstable = pod(serde_json::json!({"spec": {"containers": [{"name": "a",
            "resources": {"requests": {"cpu": "100m"}}}]}}));
        assert_eq!(qos_class(burstable.spec.as_ref()), "Burstable");
    }

    #[test]
    fn only_bound_running_pods_are_deleted_gracefully() {
        let bound = pod(
            serde_json::json!({"spec": {"containers": [], "nodeName": "n1",
            "terminationGracePeriodSeconds": 5}, "status": {"phase": "Running"}}),
        );
        assert_eq!(bound.graceful_deletion(None), Some(5));
        assert_eq!(bound.graceful_deletion(Some(2)), Some(2));
        assert_eq!(bound.graceful_deletion(Some(0)), None);
        let pending = pod(serde_json::json!({"spec": {"containers": []}}));
        assert_eq!(pending.graceful_deletion(None), None);
        let done = pod(
            serde_json::json!({"spec": {"containers": [], "nodeName": "n1"},
            "status": {"phase": "Succeeded"}}),
        );
        assert_eq!(done.graceful_deletion(None), None);
    }
}
