//! What a pod's fields mean, where more than one component needs to know:
//! its readiness, whether it has finished, and the address it owns.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod, PodCondition, PodSpec};

/// Every container of a pod spec, init containers first, each with the
/// field path of its entry under the spec (`initContainers[0]`,
/// `containers[2]`), for validation that names the field at fault.
pub fn containers_with_paths(spec: &PodSpec) -> impl Iterator<Item = (String, &Container)> {
    let init = spec.init_containers.iter().flatten().enumerate();
    init.map(|(i, c)| (format!("initContainers[{i}]"), c))
        .chain(
            spec.containers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("containers[{i}]"), c)),
        )
}

/// What a pod's spec reads from other objects of its namespace: ConfigMaps
/// and Secrets (volumes, projected sources, env and envFrom, image pull
/// secrets) and PersistentVolumeClaims, as (plural resource, name). What a
/// node's agent may read is what its pods reference (kube's node
/// authorizer), and the agent fetches exactly these.
#[must_use]
pub fn references(spec: &PodSpec) -> std::collections::BTreeSet<(&'static str, String)> {
    let mut out = std::collections::BTreeSet::new();
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            out.insert(("configmaps", cm.name.clone()));
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            out.insert(("secrets", s));
        }
        if let Some(c) = &v.persistent_volume_claim {
            out.insert(("persistentvolumeclaims", c.claim_name.clone()));
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                out.insert(("configmaps", cm.name.clone()));
            }
            if let Some(s) = &src.secret {
                out.insert(("secrets", s.name.clone()));
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        out.insert(("secrets", s.name.clone()));
    }
    for (_, c) in containers_with_paths(spec) {
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                out.insert(("configmaps", r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                out.insert(("secrets", r.name.clone()));
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                out.insert(("configmaps", r.name.clone()));
            }
            if let Some(r) = &f.secret_ref {
                out.insert(("secrets", r.name.clone()));
            }
        }
    }
    out.retain(|(_, name)| !name.is_empty());
    out
}

/// The QoS class Kubernetes gives a pod from its containers' resources
/// (init containers included): Guaranteed when every container has CPU and
/// memory limits equal to its requests, BestEffort when none has any,
/// Burstable otherwise. The controller reports it, the agent sets OOM
/// scores by it.
#[must_use]
pub fn qos_class(spec: Option<&PodSpec>) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    let containers = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    for c in containers {
        let resources = c.resources.as_ref();
        for r in ["cpu", "memory"] {
            let req = resources
                .and_then(|x| x.requests.as_ref())
                .and_then(|m| m.get(r));
            let lim = resources
                .and_then(|x| x.limits.as_ref())
                .and_then(|m| m.get(r));
            if req.is_some() || lim.is_some() {
                any = true;
            }
            let eq = match (req, lim) {
                (Some(a), Some(b)) => crate::quantity::parse(&a.0) == crate::quantity::parse(&b.0),
                (None, Some(_)) => true,
                _ => false,
            };
            if !eq {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The OOM score adjustment kubelet gives a container of a pod of class
/// `qos`, requesting `memory_request` bytes on a node of `capacity` bytes:
/// -997 for Guaranteed, 1000 for BestEffort, and for Burstable the less the
/// larger its share of the node, between 2 and 999.
#[must_use]
pub fn oom_score_adj(qos: &str, memory_request: u64, capacity: u64) -> i32 {
    match qos {
        "Guaranteed" => -997,
        "BestEffort" => 1000,
        _ => {
            let share = (1000 * u128::from(memory_request) / u128::from(capacity.max(1))).min(1000);
            let adj = 1000 - i32::try_from(share).unwrap_or(1000);
            adj.clamp(2, 999)
        }
    }
}

/// Kubernetes' CPU shares for a CPU request of `millis` (2 without one),
/// which runc turns into a cgroup v2 weight.
#[must_use]
pub fn cpu_shares(millis: Option<u64>) -> u64 {
    millis.map_or(2, |m| (m * 1024 / 1000).clamp(2, 262_144))
}

/// Whether an init container is a sidecar (`restartPolicy: Always`): it
/// starts in order with the init containers and runs beside the
/// containers.
#[must_use]
pub fn is_sidecar(c: &Container) -> bool {
    c.restart_policy.as_deref() == Some("Always")
}

/// Whether the pod's Ready condition is True (what Services and
/// ReplicaSets count).
#[must_use]
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// How long until a ready pod counts as available with `min_ready`
/// seconds (a Deployment's or ReplicaSet's `minReadySeconds`): `Some(0)`
/// when it is (Ready for at least that long, as kube counts it), `Some(d)`
/// when it will be in `d`, `None` when it is not ready.
#[must_use]
pub fn available_in(
    pod: &Pod,
    min_ready: i32,
    now: std::time::SystemTime,
) -> Option<std::time::Duration> {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let need = std::time::Duration::from_secs(u64::try_from(min_ready).unwrap_or(0));
    if need.is_zero() {
        return Some(std::time::Duration::ZERO);
    }
    let Some(since) = ready.last_transition_time.as_ref() else {
        return Some(std::time::Duration::ZERO);
    };
    let since = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(since.0.as_second()).unwrap_or(0));
    let ready_for = now.duration_since(since).unwrap_or_default();
    Some(need.saturating_sub(ready_for))
}

/// Kubernetes' defaults of a probe's timing, which the API server stores
/// and the agent's probes run by.
pub mod probe_defaults {
    /// `timeoutSeconds`.
    pub const TIMEOUT_S: i32 = 1;
    /// `periodSeconds`.
    pub const PERIOD_S: i32 = 10;
    /// `failureThreshold`.
    pub const FAILURE_THRESHOLD: i32 = 3;
    /// `successThreshold`.
    pub const SUCCESS_THRESHOLD: i32 = 1;
}

/// Fills a probe's unset timing with [`probe_defaults`], as kube-apiserver
/// stores it.
pub fn default_probe(p: &mut k8s_openapi::api::core::v1::Probe) {
    p.timeout_seconds.get_or_insert(probe_defaults::TIMEOUT_S);
    p.period_seconds.get_or_insert(probe_defaults::PERIOD_S);
    p.failure_threshold
        .get_or_insert(probe_defaults::FAILURE_THRESHOLD);
    p.success_threshold
        .get_or_insert(probe_defaults::SUCCESS_THRESHOLD);
}

/// Whether the pod has finished: phase Succeeded or Failed.
#[must_use]
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The condition by which a pod's node says whether its sandbox (network
/// namespace, address) exists, as kubelet reports it.
pub const SANDBOX_CONDITION: &str = "PodReadyToStartContainers";

/// Whether the pod has finished and its node has torn its sandbox down
/// ([`SANDBOX_CONDITION`] False): its address may go to another pod. The
/// agent frees the sandbox, then says so; the controller then frees the
/// address in its IPAM (and not again when the pod is deleted).
#[must_use]
pub fn sandbox_released(pod: &Pod) -> bool {
    is_finished(pod)
        && pod.spec.as_ref().and_then(|s| s.host_network) != Some(true)
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == SANDBOX_CONDITION && c.status == "False")
            })
}

/// Whether the pod is finished or being deleted: what a controller no
/// longer counts as one of its replicas.
#[must_use]
pub fn is_gone(pod: &Pod) -> bool {
    is_finished(pod) || pod.metadata.deletion_timestamp.is_some()
}

/// The address a pod has of its own: `None` before it has one, with the
/// host's network, or once it has finished (its address may be reused).
#[must_use]
pub fn own_address(pod: &Pod) -> Option<Ipv4Addr> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) || is_finished(pod) {
        return None;
    }
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// Sets the pod condition `kind`, keeping its lastTransitionTime when its
/// status does not change (what the scheduler and the agent both do).
pub fn set_condition(
    pod: &mut Pod,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let conditions = pod
        .status
        .get_or_insert_with(Default::default)
        .conditions
        .get_or_insert_with(Vec::new);
    crate::conditions::set(
        conditions,
        PodCondition {
            type_: kind.to_string(),
            status: status.to_string(),
            reason: reason.map(String::from),
            message: message.map(String::from),
            last_transition_time: Some(crate::meta::now_time()),
            ..PodCondition::default()
        },
    );
}

/// The pod's condition `kind`, if it has one.
#[must_use]
pub fn condition<'a>(pod: &'a Pod, kind: &str) -> Option<&'a PodCondition> {
    crate::conditions::find(pod.status.as_ref()?.conditions.as_deref()?, kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn readiness_and_address() {
        let running = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": []},
            "status": {"phase": "Running", "podIP": "10.244.1.5",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }));
        assert!(is_ready(&running));
        assert!(!is_gone(&running));
        assert_eq!(own_address(&running), Some(Ipv4Addr::new(10, 244, 1, 5)));
        let done = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": []},
            "status": {"phase": "Succeeded", "podIP": "10.244.1.5"},
        }));
        assert!(!is_ready(&done));
        assert!(is_gone(&done));
        assert_eq!(own_address(&done), None, "a finished pod's address is free");
        let host = pod(json!({
            "metadata": {"name": "a"},
            "spec": {"containers": [], "hostNetwork": true},
            "status": {"phase": "Running", "podIP": "192.0.2.2"},
        }));
        assert_eq!(own_address(&host), None);
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_stays() {
        let mut p = pod(json!({"metadata": {"name": "a"}, "spec": {"containers": []}}));
        set_condition(
            &mut p,
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("no"),
        );
        let first = condition(&p, "PodScheduled").cloned().expect("set");
        let old = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        p.status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .expect("conditions")[0]
            .last_transition_time = Some(old.clone());
        set_condition(
            &mut p,
            "PodScheduled",
            "False",
            Some("Unschedulable"),
            Some("still no"),
        );
        let c = condition(&p, "PodScheduled").expect("set");
        assert_eq!(
            c.last_transition_time,
            Some(old.clone()),
            "same status: kept"
        );
        assert_eq!(c.message.as_deref(), Some("still no"));
        set_condition(&mut p, "PodScheduled", "True", None, None);
        let c = condition(&p, "PodScheduled").expect("set");
        assert_ne!(c.last_transition_time, Some(old), "a transition");
        assert_eq!(c.reason, None);
        assert_eq!(first.type_, "PodScheduled");
    }
}
