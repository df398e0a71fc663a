//! The Node object: registration with capacity and addresses, the pod block
//! the controller assigns, the Lease renewed every few seconds, and the
//! Ready condition put back after the node controller marked it unknown.

use std::collections::BTreeMap;
use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node as NodeObject, NodeCondition},
};
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{
    AgentConfig, Node,
    api::{Api, describe, is_conflict, is_not_found, micro_now, weft_now},
};

/// The Node annotation announcing the SHA-256 of the agent's serving
/// certificate, by which the controller trusts it.
pub(super) const CERT_ANNOTATION: &str = "weft.dev/serving-cert-sha256";

/// Longest pause between attempts to reach the controller.
const MAX_RETRY: Duration = Duration::from_secs(10);

/// Registers (or re-registers) the Node and returns its pod block. Waits,
/// saying why, for as long as the controller cannot be reached or refuses.
pub(super) async fn register(
    api: &Api,
    cfg: &AgentConfig,
    node_ip: Ipv4Addr,
    cert_sha256: &str,
    mut want_block: Option<Ipv4Network>,
) -> Result<Ipv4Network> {
    let nodes = api.all::<NodeObject>();
    let mut pause = Duration::from_millis(250);
    loop {
        match try_register(&nodes, cfg, node_ip, cert_sha256, want_block).await {
            Err(e) if want_block.is_some() && e.contains("spec.podCIDR") => {
                tracing::warn!(node = %cfg.node_name, error = %e, "the node's previous pod block is not free; asking for any");
                want_block = None;
                continue;
            }
            Ok(Some(block)) => return Ok(block),
            Ok(None) => tracing::warn!(
                node = %cfg.node_name,
                "registered, but the controller has no pod block for it yet (is the cluster CIDR full?); waiting"
            ),
            Err(e) => tracing::warn!(
                node = %cfg.node_name,
                server = %api.server,
                error = %e,
                "cannot register with the controller; retrying in {:?}",
                pause
            ),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY);
    }
}

async fn try_register(
    nodes: &kube::Api<NodeObject>,
    cfg: &AgentConfig,
    node_ip: Ipv4Addr,
    cert_sha256: &str,
    want_block: Option<Ipv4Network>,
) -> Result<Option<Ipv4Network>, String> {
    let status = node_status(cfg, node_ip, &BTreeMap::new(), &BTreeMap::new());
    let spec = want_block.map_or_else(|| json!({}), |b| json!({"podCIDR": b.to_string()}));
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": cfg.node_name,
            "labels": {
                "kubernetes.io/hostname": cfg.node_name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            },
            "annotations": {CERT_ANNOTATION: cert_sha256},
        },
        "spec": spec,
        "status": status,
    });
    let obj_status = obj["status"].clone();
    let node: NodeObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
    let created = match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => n,
        Err(e) if is_conflict(&e) => nodes
            .patch(
                &cfg.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {CERT_ANNOTATION: cert_sha256}}})),
            )
            .await
            .map_err(|e| describe(&e))?,
        Err(e) => return Err(describe(&e)),
    };
    // Status is written through its subresource, whatever create kept.
    let patched = nodes
        .patch_status(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": obj_status})),
        )
        .await
        .map_err(|e| describe(&e))?;
    let cidr = patched
        .spec
        .as_ref()
        .or(created.spec.as_ref())
        .and_then(|s| s.pod_cidr.clone());
    cidr.map(|c| {
        c.parse::<Ipv4Network>()
            .map_err(|e| format!("the controller gave an invalid pod block {c:?}: {e}"))
    })
    .transpose()
}

/// The node's status as the agent sees it: capacity, addresses, facts and
/// a Ready condition.
fn node_status(
    cfg: &AgentConfig,
    node_ip: Ipv4Addr,
    lb: &BTreeMap<String, String>,
    policy: &BTreeMap<String, String>,
) -> Value {
    let (cpu, memory) = capacity();
    let now = weft_now();
    let ready = json!({
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "weft agent is posting ready status",
        "lastHeartbeatTime": now, "lastTransitionTime": now,
    });
    let pressure = |t: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": "False", "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let mut capacity = json!({"cpu": cpu.to_string(), "memory": format!("{}Ki", memory / 1024), "pods": cfg.max_pods.to_string()});
    // The file system of the state directory: what local persistent
    // volumes (and emptyDirs) share.
    if let Some(bytes) = disk_bytes(&cfg.state_dir) {
        capacity["ephemeral-storage"] = json!(format!("{}Ki", bytes / 1024));
    }
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": node_ip.to_string()},
            {"type": "Hostname", "address": cfg.node_name},
        ],
        "conditions": [
            pressure("MemoryPressure", "KubeletHasSufficientMemory", "weft agent has sufficient memory available"),
            pressure("DiskPressure", "KubeletHasNoDiskPressure", "weft agent has no disk pressure"),
            pressure("PIDPressure", "KubeletHasSufficientPID", "weft agent has sufficient PID available"),
            map_condition(LB_CONDITION, lb),
            map_condition(POLICY_CONDITION, policy),
            ready,
        ],
        "nodeInfo": node_info(),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.server_port}},
    })
}

/// A Node condition the agent keeps for what its maps could not take: the
/// load-balancer's (every Service frontend in its maps is `False`) or the
/// policy engine's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MapCondition {
    /// The condition's type.
    pub(crate) kind: &'static str,
    /// Its message when all is in the maps.
    ok: &'static str,
    /// What the problems are, counted.
    what: &'static str,
    /// Its reason when something is wrong.
    reason: &'static str,
}

pub(crate) const LB_CONDITION: MapCondition = MapCondition {
    kind: "LoadBalancerMapsFull",
    ok: "every Service frontend is in the eBPF load-balancer's maps",
    what: "Service frontend(s) not load-balanced",
    reason: "MapFull",
};

pub(crate) const POLICY_CONDITION: MapCondition = MapCondition {
    kind: "NetworkPolicyNotEnforced",
    ok: "every NetworkPolicy is enforced in the eBPF maps",
    what: "network policy problem(s)",
    reason: "PolicyProblem",
};

/// The condition `c` says for these `problems` (none: all is well).
fn map_condition(c: MapCondition, problems: &BTreeMap<String, String>) -> NodeCondition {
    let now = Some(weft_api::meta::now_time());
    let (status, reason, message) = if problems.is_empty() {
        ("False", "MapsHaveRoom", c.ok.to_string())
    } else {
        let mut msg = format!("{} {}: ", problems.len(), c.what);
        for (i, (what, why)) in problems.iter().enumerate() {
            if i == 3 {
                msg.push_str("; ...");
                break;
            }
            if i > 0 {
                msg.push_str("; ");
            }
            msg.push_str(&format!("{what}: {why}"));
        }
        ("True", c.reason, msg)
    };
    NodeCondition {
        type_: c.kind.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_heartbeat_time: now.clone(),
        last_transition_time: now,
    }
}

fn lb_problems(node: &Node) -> BTreeMap<String, String> {
    node.lb.lock().expect("balancer lock").full()
}

fn policy_problems(node: &Node) -> BTreeMap<String, String> {
    node.policy
        .lock()
        .expect("policy lock")
        .engine
        .problems()
        .clone()
}

/// Keeps the Node's condition `c` in step with what the load-balancer (or
/// the policy engine) could not install. Never returns.
pub(super) async fn report_problems(
    node: Arc<Node>,
    mut problems: tokio::sync::watch::Receiver<BTreeMap<String, String>>,
    c: MapCondition,
) -> Result<()> {
    let nodes: kube::Api<NodeObject> = node.api.all();
    loop {
        let current = problems.borrow_and_update().clone();
        // Retried until it lands or something newer is to be said.
        loop {
            match set_condition(&nodes, &node.cfg.node_name, &current, c).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, condition = c.kind, "cannot report on the Node");
                    tokio::time::sleep(node.cfg.lease_interval).await;
                    if problems.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
        if problems.changed().await.is_err() {
            return Ok(());
        }
    }
}

async fn set_condition(
    nodes: &kube::Api<NodeObject>,
    name: &str,
    problems: &BTreeMap<String, String>,
    c: MapCondition,
) -> Result<()> {
    let current = nodes
        .get(name)
        .await
        .map_err(|e| anyhow::anyhow!(describe(&e)))?;
    let mut conditions = current
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    if !weft_api::conditions::set(&mut conditions, map_condition(c, problems)) {
        return Ok(());
    }
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map_err(|e| anyhow::anyhow!(describe(&e)))?;
    Ok(())
}

/// CPUs and bytes of memory this node offers: the machine's, or less when
/// the agent's cgroup limits it.
/// The size of the file system holding `dir` (or its nearest existing
/// parent).
fn disk_bytes(dir: &std::path::Path) -> Option<u64> {
    let mut at = Some(dir);
    while let Some(p) = at {
        if let Ok(st) = nix::sys::statvfs::statvfs(p) {
            return Some(st.blocks() * st.fragment_size());
        }
        at = p.parent();
    }
    None
}

pub(super) fn capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let limit = cgroup_memory_limit().unwrap_or(u64::MAX);
    (cpus, mem_total.min(limit))
}

/// The memory limit of the agent's own cgroup (v2 `memory.max` or v1
/// `memory.limit_in_bytes`), if it has one.
fn cgroup_memory_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(file)
            && let Ok(n) = v.trim().parse::<u64>()
        {
            return Some(n);
        }
    }
    None
}

fn node_info() -> Value {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into());
    let runc = std::process::Command::new("runc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(2).map(String::from))
        })
        .unwrap_or_else(|| "unknown".into());
    json!({
        "architecture": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
        "bootID": read("/proc/sys/kernel/random/boot_id"),
        "containerRuntimeVersion": format!("runc://{runc}"),
        "kernelVersion": read("/proc/sys/kernel/osrelease"),
        "kubeProxyVersion": "",
        "kubeletVersion": concat!("v1.33.0+weft-", env!("CARGO_PKG_VERSION")),
        "machineID": read("/etc/machine-id"),
        "operatingSystem": "linux",
        "osImage": os_image,
        "systemUUID": read("/sys/class/dmi/id/product_uuid"),
    })
}

/// Renews the Lease every `lease_interval` and puts the Ready condition
/// back whenever the node controller took it away (after an outage of the
/// agent or of the controller). Never returns; failures are logged and
/// retried on the next tick.
pub(super) async fn heartbeat(node: Arc<Node>) -> Result<()> {
    let name = node.cfg.node_name.clone();
    let leases = node.api.namespaced::<Lease>("kube-node-lease");
    let nodes = node.api.all::<NodeObject>();
    let mut failing = false;
    let mut ticks = 0u64;
    loop {
        let r = renew(&leases, &name, node.cfg.lease_interval).await;
        match (&r, failing) {
            (Err(e), false) => {
                tracing::warn!(node = %name, error = %e, "cannot renew the node's lease; retrying");
                failing = true;
            }
            (Ok(()), true) => {
                tracing::info!(node = %name, "lease renewed again");
                failing = false;
            }
            _ => {}
        }
        // The Ready condition: checked every 5 ticks, and rewritten when it
        // is not True (or its heartbeat is a minute old).
        if r.is_ok()
            && ticks.is_multiple_of(5)
            && let Err(e) = refresh_ready(&nodes, &node).await
        {
            tracing::warn!(node = %name, error = %e, "cannot update the node's status");
        }
        ticks += 1;
        tokio::time::sleep(node.cfg.lease_interval).await;
    }
}

async fn renew(leases: &kube::Api<Lease>, name: &str, every: Duration) -> Result<(), String> {
    // Kubernetes' lease duration is 40 s for a 10 s renewal: 4 renewals.
    let duration = (every.as_secs() * 4).max(10);
    let spec =
        json!({"holderIdentity": name, "leaseDurationSeconds": duration, "renewTime": micro_now()});
    match leases
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => {
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": spec,
            }))
            .map_err(|e| e.to_string())?;
            match leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(describe(&e)),
            }
        }
        Err(e) => Err(describe(&e)),
    }
}

async fn refresh_ready(nodes: &kube::Api<NodeObject>, node: &Node) -> Result<()> {
    let name = &node.cfg.node_name;
    let current = match nodes.get(name).await {
        Ok(n) => n,
        Err(e) if is_not_found(&e) => {
            // Deleted while we ran: register again; the block must not change
            // under running pods.
            let block = register(
                &node.api,
                &node.cfg,
                node.node_ip,
                &node.cert_sha256,
                Some(node.block),
            )
            .await?;
            if block != node.block {
                anyhow::bail!(
                    "the node was deleted and registered again with block {block} instead of {}; restart the agent",
                    node.block
                );
            }
            return Ok(());
        }
        Err(e) => anyhow::bail!(describe(&e)),
    };
    let ready = weft_api::node::ready_condition(&current).cloned();
    // The certificate the controller trusts must be this agent's.
    let announced = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CERT_ANNOTATION));
    if announced != Some(&node.cert_sha256) {
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {CERT_ANNOTATION: node.cert_sha256}}}),
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))
            .context("announce the agent's certificate")?;
        tracing::warn!(node = %name, "the Node announced another certificate; announced this agent's again");
    }
    let stale = ready.as_ref().is_none_or(|c| {
        c.status != "True"
            || c.last_heartbeat_time.as_ref().is_none_or(|t| {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                age.as_secs() >= 60
            })
    });
    if stale {
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": node_status(&node.cfg, node.node_ip, &lb_problems(node), &policy_problems(node))}),
                ),
            )
            .await
            .map_err(|e| anyhow::anyhow!(describe(&e)))
            .context("post Ready status")?;
        tracing::info!(node = %name, "node status posted: Ready");
    }
    Ok(())
}
