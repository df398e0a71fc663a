//! Address management: a /24 pod block per node, each pod's IP from its
//! node's block when it is bound, ClusterIPs and node ports for Services.
//!
//! Every allocation is a key in the store, claimed with a "must not exist"
//! compare in the same transaction that writes the object using it, and
//! released in the transaction that deletes that object. So an address is
//! never handed out twice: not across controller restarts (the claims are
//! stored), not between concurrent requests (the loser's compare fails and it
//! picks again), and a crash between the two writes cannot happen because
//! there is only one write.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Value, json};
use weft_api::error::{ApiError, Cause};
use weft_api::resources::{self, Resource};

use crate::registry::{Registry, name_of, namespace_of, store_error};
use crate::store::{Compare, Op, Txn, TxnOutcome};

/// The cluster's pod network by default; every node gets a /24 of it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Prefix length of a node's pod block.
pub const BLOCK_PREFIX: u8 = 24;
/// Where Service ClusterIPs come from by default.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The node port range, as in Kubernetes.
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const BLOCKS: &str = "/registry/ipam/blocks/";
const POD_IPS: &str = "/registry/ipam/pods/";
const SERVICE_IPS: &str = "/registry/ipam/services/";
const NODE_PORT_KEYS: &str = "/registry/ipam/nodeports/";

static NETWORKS: std::sync::OnceLock<(Ipv4Network, Ipv4Network)> = std::sync::OnceLock::new();

/// Sets the pod and Service networks, once, before the API serves. The pod
/// network must hold whole /24 blocks, the two must not overlap.
pub fn configure(cluster: Ipv4Network, services: Ipv4Network) -> Result<(), String> {
    if cluster.prefix() > BLOCK_PREFIX {
        return Err(format!(
            "the cluster CIDR {cluster} is smaller than one /{BLOCK_PREFIX} node block"
        ));
    }
    if cluster.overlaps(services) {
        return Err(format!(
            "the cluster CIDR {cluster} overlaps the Service CIDR {services}"
        ));
    }
    if services.prefix() > 28 {
        return Err(format!("the Service CIDR {services} is too small"));
    }
    NETWORKS
        .set((cluster, services))
        .map_err(|_| "the networks are already configured".to_string())
}

fn cluster() -> Ipv4Network {
    NETWORKS
        .get()
        .map(|n| n.0)
        .unwrap_or_else(|| CLUSTER_CIDR.parse().expect("valid CIDR"))
}

fn services() -> Ipv4Network {
    NETWORKS
        .get()
        .map(|n| n.1)
        .unwrap_or_else(|| SERVICE_CIDR.parse().expect("valid CIDR"))
}

fn owner(obj: &Value) -> Vec<u8> {
    let who = match namespace_of(obj) {
        Some(ns) => format!("{ns}/{}", name_of(obj)),
        None => name_of(obj).to_string(),
    };
    serde_json::to_vec(&json!({"owner": who, "uid": obj["metadata"]["uid"]})).expect("encodes")
}

fn block_key(block: Ipv4Network) -> String {
    format!("{BLOCKS}{}", block.network())
}

fn pod_ip_key(ip: Ipv4Addr) -> String {
    let block = Ipv4Network::new(ip, BLOCK_PREFIX).expect("valid prefix");
    format!("{POD_IPS}{}/{ip}", block.network())
}

fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4();
    u32::from_le_bytes(b.as_bytes()[..4].try_into().expect("4 bytes"))
}

/// Claims whatever `obj` needs when it is created.
pub(crate) async fn on_create(
    reg: &Registry,
    res: &Resource,
    obj: &mut Value,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    match res.kind {
        "Node" => claim_block(reg, obj, txn).await,
        "Service" => {
            claim_cluster_ip(reg, obj, txn).await?;
            claim_node_ports(reg, None, obj, txn).await
        }
        "Pod"
            if obj["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty()) =>
        {
            let node = obj["spec"]["nodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ip = pick_pod_ip(reg, &node, name_of(obj)).await?;
            assign_pod_ip(obj, ip, txn);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Keeps what `old` had claimed and claims what `new` adds.
pub(crate) async fn on_update(
    reg: &Registry,
    res: &Resource,
    old: &Value,
    new: &mut Value,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    match res.kind {
        "Node" => {
            match old["spec"]["podCIDR"].as_str() {
                Some(cidr) => {
                    new["spec"]["podCIDR"] = json!(cidr);
                    new["spec"]["podCIDRs"] = json!([cidr]);
                }
                None => claim_block(reg, new, txn).await?,
            }
            Ok(())
        }
        "Service" => {
            let old_type = old["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let new_type = new["spec"]["type"].as_str().unwrap_or("ClusterIP");
            let old_ip = old["spec"]["clusterIP"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let external = new_type == "ExternalName";
            if !external
                && new["spec"]["clusterIP"].as_str().is_none_or(str::is_empty)
                && !old_ip.is_empty()
            {
                new["spec"]["clusterIP"] = old["spec"]["clusterIP"].clone();
                new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"].clone();
                new["spec"]["ipFamilies"] = old["spec"]["ipFamilies"].clone();
                new["spec"]["ipFamilyPolicy"] = old["spec"]["ipFamilyPolicy"].clone();
            }
            if external && old_type != "ExternalName" {
                release_cluster_ip(old, txn);
                if let Some(spec) = new["spec"].as_object_mut() {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            } else if !external && old_type == "ExternalName" {
                claim_cluster_ip(reg, new, txn).await?;
            }
            claim_node_ports(reg, Some(old), new, txn).await
        }
        "Pod" => {
            // The assigned address stays, whatever a status writer sends.
            if let Some(ip) = old["status"]["podIP"].as_str() {
                new["status"]["podIP"] = json!(ip);
                new["status"]["podIPs"] = json!([{"ip": ip}]);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Releases what `obj` had claimed, in the transaction deleting it.
pub(crate) fn on_delete(res: &Resource, obj: &Value, txn: &mut Txn) {
    match res.kind {
        "Node" => {
            if let Some(block) = obj["spec"]["podCIDR"]
                .as_str()
                .and_then(|c| c.parse::<Ipv4Network>().ok())
            {
                push(txn, Op::delete(block_key(block)));
            }
        }
        "Service" => {
            release_cluster_ip(obj, txn);
            for port in node_ports(obj) {
                push(txn, Op::delete(format!("{NODE_PORT_KEYS}{port}")));
            }
        }
        "Pod" => {
            if let Some(ip) = obj["status"]["podIP"]
                .as_str()
                .and_then(|i| i.parse::<Ipv4Addr>().ok())
                && cluster().contains(ip)
            {
                push(txn, Op::delete(pod_ip_key(ip)));
            }
        }
        _ => {}
    }
}

fn push(txn: &mut Txn, op: Op) {
    txn.ops.push(op);
}

async fn claim_block(reg: &Registry, node: &mut Value, txn: &mut Txn) -> Result<(), ApiError> {
    let cluster = cluster();
    let block = match node["spec"]["podCIDR"].as_str().filter(|c| !c.is_empty()) {
        Some(given) => {
            let block: Ipv4Network = given
                .parse()
                .map_err(|e| invalid_node(node, Cause::invalid("spec.podCIDR", given, e)))?;
            if block.prefix() != BLOCK_PREFIX
                || block.network() != block.ip()
                || !cluster.contains(block.ip())
            {
                return Err(invalid_node(
                    node,
                    Cause::invalid(
                        "spec.podCIDR",
                        given,
                        format!("must be a /{BLOCK_PREFIX} of {cluster}"),
                    ),
                ));
            }
            if reg
                .store
                .get(&block_key(block))
                .await
                .map_err(store_error)?
                .is_some()
            {
                return Err(invalid_node(
                    node,
                    Cause::invalid("spec.podCIDR", given, "already allocated to another node"),
                ));
            }
            block
        }
        None => {
            let (taken, _) = reg.store.list(BLOCKS).await.map_err(store_error)?;
            let taken: HashSet<String> = taken.into_iter().map(|kv| kv.key).collect();
            let count = 1u32 << (BLOCK_PREFIX - cluster.prefix());
            let mut found = None;
            // From a random block on, so that nodes registering at once
            // rarely race for the same one.
            let first = random_u32() % count;
            for i in 0..count {
                let index = (first + i) % count;
                let base = u32::from(cluster.network()) + (index << (32 - BLOCK_PREFIX));
                let block = Ipv4Network::new(Ipv4Addr::from(base), BLOCK_PREFIX).expect("valid");
                if taken.contains(&block_key(block)) {
                    continue;
                }
                // A block whose old pods still hold addresses is not free yet.
                let (held, _) = reg
                    .store
                    .list(&format!("{POD_IPS}{}/", block.network()))
                    .await
                    .map_err(store_error)?;
                if held.is_empty() {
                    found = Some(block);
                    break;
                }
            }
            found.ok_or_else(|| {
                ApiError::forbidden(format!(
                    "no free /{BLOCK_PREFIX} pod block left in {cluster} for node {}",
                    name_of(node)
                ))
            })?
        }
    };
    let cidr = block.to_string();
    node["spec"]["podCIDR"] = json!(cidr);
    node["spec"]["podCIDRs"] = json!([cidr]);
    txn.compares.push(Compare::absent(block_key(block)));
    push(txn, Op::put(block_key(block), owner(node)));
    Ok(())
}

fn invalid_node(node: &Value, cause: Cause) -> ApiError {
    ApiError::invalid("Node", "", name_of(node), vec![cause])
}

fn invalid_service(svc: &Value, cause: Cause) -> ApiError {
    ApiError::invalid("Service", "", name_of(svc), vec![cause])
}

async fn claim_cluster_ip(reg: &Registry, svc: &mut Value, txn: &mut Txn) -> Result<(), ApiError> {
    let spec = &svc["spec"];
    if spec["type"].as_str() == Some("ExternalName") {
        if spec["clusterIP"].as_str().is_some_and(|ip| !ip.is_empty()) {
            return Err(invalid_service(
                svc,
                Cause::invalid(
                    "spec.clusterIP",
                    spec["clusterIP"].clone(),
                    "must be empty for ExternalName services",
                ),
            ));
        }
        return Ok(());
    }
    let range = services();
    let requested = spec["clusterIP"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let ip = match requested.as_deref() {
        Some("None") => {
            svc["spec"]["clusterIPs"] = json!(["None"]);
            svc["spec"]["ipFamilies"] = json!(["IPv4"]);
            svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
            return Ok(());
        }
        Some(text) => {
            let ip: Ipv4Addr = text.parse().map_err(|_| {
                invalid_service(
                    svc,
                    Cause::invalid("spec.clusterIPs[0]", text, "must be a valid IPv4 address"),
                )
            })?;
            if !range.contains(ip) || ip == range.network() || ip == range.broadcast() {
                return Err(invalid_service(
                    svc,
                    Cause::invalid(
                        "spec.clusterIPs[0]",
                        text,
                        format!(
                            "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                        ),
                    ),
                ));
            }
            if reg
                .store
                .get(&format!("{SERVICE_IPS}{ip}"))
                .await
                .map_err(store_error)?
                .is_some()
            {
                return Err(invalid_service(
                    svc,
                    Cause::invalid(
                        "spec.clusterIPs[0]",
                        text,
                        format!("failed to allocate IP {ip}: provided IP is already allocated"),
                    ),
                ));
            }
            ip
        }
        None => {
            // Random, as Kubernetes does: concurrent creates rarely collide,
            // and a collision only costs a retry.
            let size = range.size() - 2;
            let mut chosen = None;
            for _ in 0..32 {
                let ip = Ipv4Addr::from(u32::from(range.network()) + 1 + random_u32() % size);
                if reg
                    .store
                    .get(&format!("{SERVICE_IPS}{ip}"))
                    .await
                    .map_err(store_error)?
                    .is_none()
                {
                    chosen = Some(ip);
                    break;
                }
            }
            chosen
                .ok_or_else(|| ApiError::forbidden(format!("no free ClusterIP found in {range}")))?
        }
    };
    let key = format!("{SERVICE_IPS}{ip}");
    svc["spec"]["clusterIP"] = json!(ip.to_string());
    svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
    svc["spec"]["ipFamilies"] = json!(["IPv4"]);
    svc["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    txn.compares.push(Compare::absent(&key));
    push(txn, Op::put(key, owner(svc)));
    Ok(())
}

fn release_cluster_ip(svc: &Value, txn: &mut Txn) {
    if let Some(ip) = svc["spec"]["clusterIP"]
        .as_str()
        .and_then(|i| i.parse::<Ipv4Addr>().ok())
    {
        push(txn, Op::delete(format!("{SERVICE_IPS}{ip}")));
    }
}

fn wants_node_ports(svc: &Value) -> bool {
    matches!(
        svc["spec"]["type"].as_str(),
        Some("NodePort") | Some("LoadBalancer")
    )
}

fn node_ports(svc: &Value) -> Vec<u16> {
    if !wants_node_ports(svc) {
        return Vec::new();
    }
    svc["spec"]["ports"]
        .as_array()
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| p["nodePort"].as_u64())
                .map(|p| p as u16)
                .collect()
        })
        .unwrap_or_default()
}

async fn claim_node_ports(
    reg: &Registry,
    old: Option<&Value>,
    svc: &mut Value,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    let held: Vec<u16> = old.map(node_ports).unwrap_or_default();
    if !wants_node_ports(svc) {
        if let Some(ports) = svc["spec"]["ports"].as_array_mut() {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                p.remove("nodePort");
            }
        }
        for port in held {
            push(txn, Op::delete(format!("{NODE_PORT_KEYS}{port}")));
        }
        return Ok(());
    }
    let old_ports: Vec<(u64, String, u16)> = old
        .filter(|o| wants_node_ports(o))
        .and_then(|o| o["spec"]["ports"].as_array())
        .map(|ports| {
            ports
                .iter()
                .filter_map(|p| {
                    Some((
                        p["port"].as_u64()?,
                        p["protocol"].as_str().unwrap_or("TCP").to_string(),
                        p["nodePort"].as_u64()? as u16,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let count = svc["spec"]["ports"].as_array().map(Vec::len).unwrap_or(0);
    let mut used: HashSet<u16> = HashSet::new();
    for i in 0..count {
        let port = svc["spec"]["ports"][i].clone();
        let wanted = match port["nodePort"].as_u64() {
            Some(p) => Some(p as u16),
            None => old_ports
                .iter()
                .find(|(n, proto, _)| {
                    Some(*n) == port["port"].as_u64()
                        && proto == port["protocol"].as_str().unwrap_or("TCP")
                })
                .map(|(_, _, np)| *np),
        };
        let chosen = match wanted {
            Some(p) if held.contains(&p) => p,
            Some(p) => {
                if used.contains(&p)
                    || reg
                        .store
                        .get(&format!("{NODE_PORT_KEYS}{p}"))
                        .await
                        .map_err(store_error)?
                        .is_some()
                {
                    return Err(invalid_service(
                        svc,
                        Cause::invalid(
                            format!("spec.ports[{i}].nodePort"),
                            p,
                            "provided port is already allocated",
                        ),
                    ));
                }
                p
            }
            None => {
                let span = (*NODE_PORTS.end() - *NODE_PORTS.start()) as u32 + 1;
                let mut found = None;
                for _ in 0..64 {
                    let p = *NODE_PORTS.start() + (random_u32() % span) as u16;
                    if used.contains(&p) || held.contains(&p) {
                        continue;
                    }
                    if reg
                        .store
                        .get(&format!("{NODE_PORT_KEYS}{p}"))
                        .await
                        .map_err(store_error)?
                        .is_none()
                    {
                        found = Some(p);
                        break;
                    }
                }
                found.ok_or_else(|| ApiError::forbidden("no free node port left in 30000-32767"))?
            }
        };
        used.insert(chosen);
        svc["spec"]["ports"][i]["nodePort"] = json!(chosen);
    }
    for p in &used {
        if !held.contains(p) {
            let key = format!("{NODE_PORT_KEYS}{p}");
            txn.compares.push(Compare::absent(&key));
            push(txn, Op::put(key, owner(svc)));
        }
    }
    for p in held {
        if !used.contains(&p) {
            push(txn, Op::delete(format!("{NODE_PORT_KEYS}{p}")));
        }
    }
    Ok(())
}

/// A free address in `node`'s block (the claim happens in the caller's txn).
async fn pick_pod_ip(reg: &Registry, node: &str, pod: &str) -> Result<Ipv4Addr, ApiError> {
    let nodes = resources::by_path("", "v1", "nodes").expect("nodes are served");
    let node_obj = reg
        .get_raw(nodes, None, node)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                "Pod",
                "",
                pod,
                vec![Cause::invalid("spec.nodeName", node, "no such node")],
            )
        })?
        .0;
    let block: Ipv4Network = node_obj["spec"]["podCIDR"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ApiError::unavailable(format!("node {node} has no pod block yet")))?;
    let prefix = format!("{POD_IPS}{}/", block.network());
    let (held, _) = reg.store.list(&prefix).await.map_err(store_error)?;
    let held: HashSet<String> = held.into_iter().map(|kv| kv.key).collect();
    // .0 is the network, .1 the node's bridge, the last the broadcast.
    let hosts = block.size() - 3;
    let start = random_u32() % hosts;
    for i in 0..hosts {
        let offset = 2 + (start + i) % hosts;
        let ip = Ipv4Addr::from(u32::from(block.network()) + offset);
        if !held.contains(&pod_ip_key(ip)) {
            return Ok(ip);
        }
    }
    Err(ApiError::forbidden(format!(
        "the pod block {block} of node {node} is full"
    )))
}

fn assign_pod_ip(pod: &mut Value, ip: Ipv4Addr, txn: &mut Txn) {
    let key = pod_ip_key(ip);
    pod["status"]["podIP"] = json!(ip.to_string());
    pod["status"]["podIPs"] = json!([{"ip": ip.to_string()}]);
    txn.compares.push(Compare::absent(&key));
    push(txn, Op::put(key, owner(pod)));
}

/// Binds a pending pod to `node` and gives it an address from the node's
/// block, in one transaction: the Binding subresource and the scheduler.
pub async fn bind(reg: &Registry, ns: &str, name: &str, node: &str) -> Result<Value, ApiError> {
    let pods = resources::by_path("", "v1", "pods").expect("pods are served");
    let key = pods.key(Some(ns), name);
    for _ in 0..64 {
        let Some((mut pod, rev)) = reg.get_raw(pods, Some(ns), name).await? else {
            return Err(ApiError::not_found("pods", "", name));
        };
        if let Some(bound) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                format!("pod {name} is already assigned to node \"{bound}\""),
            ));
        }
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(ApiError::conflict(
                "pods",
                "",
                name,
                "the pod is being deleted",
            ));
        }
        let ip = pick_pod_ip(reg, node, name).await?;
        let mut txn = Txn::new().when(Compare::at(&key, rev));
        pod["spec"]["nodeName"] = json!(node);
        assign_pod_ip(&mut pod, ip, &mut txn);
        set_condition(&mut pod, "PodScheduled", "True", None, None);
        let mut stored = pod.clone();
        if let Some(meta) = stored["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        txn.ops
            .push(Op::put(&key, serde_json::to_vec(&stored).expect("encodes")));
        if let TxnOutcome::Applied { revision } = reg.store.txn(txn).await.map_err(store_error)? {
            crate::registry::set_rv(&mut pod, revision);
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

/// Sets a pod condition, keeping lastTransitionTime when the status is unchanged.
pub fn set_condition(
    pod: &mut Value,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) {
    if !pod["status"]["conditions"].is_array() {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"].as_array_mut().expect("array");
    let now = weft_api::meta::now_rfc3339();
    let mut entry =
        json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        entry["reason"] = json!(r);
    }
    if let Some(m) = message {
        entry["message"] = json!(m);
    }
    match conditions.iter_mut().find(|c| c["type"] == kind) {
        Some(existing) => {
            if existing["status"] == status {
                entry["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            *existing = entry;
        }
        None => conditions.push(entry),
    }
}
