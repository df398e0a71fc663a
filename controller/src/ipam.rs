//! Address management: a /24 pod block per node, each pod's IP from its
//! node's block, ClusterIPs from the Service network and node ports.
//!
//! Every allocation is a key in the store, claimed with a "must not exist"
//! compare in the same transaction that writes the object using it, and
//! released in the transaction that deletes that object. So an address is
//! never handed out twice: not across controller restarts (the claims are
//! stored), not between concurrent requests (the loser's compare fails and it
//! picks again), and a crash between the two writes cannot happen because
//! there is only one write.
//!
//! [`Ipam`] knows the ranges (held by the registry, not a process global)
//! and the claim keys; which object field an allocation fills is the
//! business of that object's kind in the registry.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::json;

use crate::store::{Compare, Op, Store, StoreError, Txn};

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

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// What was asked for cannot be had (a 422 on the field that asked).
    #[error("{0}")]
    Invalid(String),
    /// Nothing is left (a 403, as kube-apiserver answers).
    #[error("{0}")]
    Exhausted(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The pod and Service networks of a cluster, and the claims on them.
#[derive(Debug, Clone)]
pub struct Ipam {
    cluster: Ipv4Network,
    services: Ipv4Network,
}

impl Default for Ipam {
    fn default() -> Self {
        Self {
            cluster: CLUSTER_CIDR.parse().expect("valid CIDR"),
            services: SERVICE_CIDR.parse().expect("valid CIDR"),
        }
    }
}

/// Who holds a claim: `namespace/name` (or `name`) and the object's UID.
pub fn owner(who: &str, uid: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&json!({"owner": who, "uid": uid})).expect("encodes")
}

fn block_key(block: Ipv4Network) -> String {
    format!("{BLOCKS}{}", block.network())
}

fn pod_ip_key(ip: Ipv4Addr) -> String {
    let block = Ipv4Network::new(ip, BLOCK_PREFIX).expect("valid prefix");
    format!("{POD_IPS}{}/{ip}", block.network())
}

fn node_port_key(port: u16) -> String {
    format!("{NODE_PORT_KEYS}{port}")
}

fn service_ip_key(ip: Ipv4Addr) -> String {
    format!("{SERVICE_IPS}{ip}")
}

/// Claims `key` for `owner` in `txn`: it must not exist when it applies.
fn claim(txn: &mut Txn, key: String, owner: &[u8]) {
    txn.compares.push(Compare::absent(&key));
    txn.ops.push(Op::put(key, owner.to_vec()));
}

async fn taken(store: &dyn Store, key: &str) -> Result<bool, StoreError> {
    Ok(store.get(key).await?.is_some())
}

/// A random number, for searches that start anywhere.
fn random_u32() -> u32 {
    let b = uuid::Uuid::new_v4();
    u32::from_le_bytes(b.as_bytes()[..4].try_into().expect("4 bytes"))
}

impl Ipam {
    /// The pod network `cluster` (holding whole /24 blocks) and the Service
    /// network `services`, which must not overlap.
    ///
    /// # Errors
    /// When the networks do not fit these rules.
    pub fn new(cluster: Ipv4Network, services: Ipv4Network) -> Result<Self, String> {
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
        Ok(Self { cluster, services })
    }

    /// The pod network.
    pub fn cluster(&self) -> Ipv4Network {
        self.cluster
    }

    /// The Service network.
    pub fn services(&self) -> Ipv4Network {
        self.services
    }

    /// Claims a node's pod block: `want` if given (it must be a free /24 of
    /// the pod network), else a free one.
    ///
    /// # Errors
    /// A bad or taken `want`, or no free block.
    pub async fn claim_block(
        &self,
        store: &dyn Store,
        want: Option<&str>,
        node: &str,
        who: &[u8],
        txn: &mut Txn,
    ) -> Result<Ipv4Network, IpamError> {
        let cluster = self.cluster;
        let block = match want {
            Some(given) => {
                let block: Ipv4Network = given
                    .parse()
                    .map_err(|e: ipnetwork::IpNetworkError| IpamError::Invalid(e.to_string()))?;
                if block.prefix() != BLOCK_PREFIX
                    || block.network() != block.ip()
                    || !cluster.contains(block.ip())
                {
                    return Err(IpamError::Invalid(format!(
                        "must be a /{BLOCK_PREFIX} of {cluster}"
                    )));
                }
                if taken(store, &block_key(block)).await? {
                    return Err(IpamError::Invalid(
                        "already allocated to another node".into(),
                    ));
                }
                block
            }
            None => {
                let (claims, _) = store.list(BLOCKS).await?;
                let claims: HashSet<String> = claims.into_iter().map(|kv| kv.key).collect();
                let count = 1u32 << (BLOCK_PREFIX - cluster.prefix());
                let mut found = None;
                // From a random block on, so that nodes registering at once
                // rarely race for the same one.
                let first = random_u32() % count;
                for i in 0..count {
                    let index = (first + i) % count;
                    let base = u32::from(cluster.network()) + (index << (32 - BLOCK_PREFIX));
                    let block =
                        Ipv4Network::new(Ipv4Addr::from(base), BLOCK_PREFIX).expect("valid");
                    if claims.contains(&block_key(block)) {
                        continue;
                    }
                    // A block whose old pods still hold addresses is not free yet.
                    let (held, _) = store
                        .list(&format!("{POD_IPS}{}/", block.network()))
                        .await?;
                    if held.is_empty() {
                        found = Some(block);
                        break;
                    }
                }
                found.ok_or_else(|| {
                    IpamError::Exhausted(format!(
                        "no free /{BLOCK_PREFIX} pod block left in {cluster} for node {node}"
                    ))
                })?
            }
        };
        claim(txn, block_key(block), who);
        Ok(block)
    }

    /// Frees a node's block.
    pub fn release_block(&self, block: &str, txn: &mut Txn) {
        if let Ok(block) = block.parse::<Ipv4Network>() {
            txn.ops.push(Op::delete(block_key(block)));
        }
    }

    /// Claims a ClusterIP: `want` if given (a free address of the Service
    /// network), else a random free one.
    ///
    /// # Errors
    /// A bad or taken `want`, or no free address.
    pub async fn claim_cluster_ip(
        &self,
        store: &dyn Store,
        want: Option<&str>,
        who: &[u8],
        txn: &mut Txn,
    ) -> Result<Ipv4Addr, IpamError> {
        let range = self.services;
        let ip = match want {
            Some(text) => {
                let ip: Ipv4Addr = text
                    .parse()
                    .map_err(|_| IpamError::Invalid("must be a valid IPv4 address".into()))?;
                if !range.contains(ip) || ip == range.network() || ip == range.broadcast() {
                    return Err(IpamError::Invalid(format!(
                        "failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"
                    )));
                }
                if taken(store, &service_ip_key(ip)).await? {
                    return Err(IpamError::Invalid(format!(
                        "failed to allocate IP {ip}: provided IP is already allocated"
                    )));
                }
                ip
            }
            None => {
                // Random, as Kubernetes does: concurrent creates rarely
                // collide, and a collision only costs a retry. The first
                // address is kept for the `kubernetes` Service (published
                // when the controller knows an address pods can reach,
                // maybe after other Services were made).
                let size = range.size() - 3;
                let mut chosen = None;
                for _ in 0..32 {
                    let ip = Ipv4Addr::from(u32::from(range.network()) + 2 + random_u32() % size);
                    if !taken(store, &service_ip_key(ip)).await? {
                        chosen = Some(ip);
                        break;
                    }
                }
                chosen.ok_or_else(|| {
                    IpamError::Exhausted(format!("no free ClusterIP found in {range}"))
                })?
            }
        };
        claim(txn, service_ip_key(ip), who);
        Ok(ip)
    }

    /// Frees a ClusterIP.
    pub fn release_cluster_ip(&self, ip: &str, txn: &mut Txn) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            txn.ops.push(Op::delete(service_ip_key(ip)));
        }
    }

    /// Whether node port `p` is claimed.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn node_port_taken(&self, store: &dyn Store, p: u16) -> Result<bool, StoreError> {
        taken(store, &node_port_key(p)).await
    }

    /// A random free node port, not one of `avoid`.
    ///
    /// # Errors
    /// When none is found.
    pub async fn free_node_port(
        &self,
        store: &dyn Store,
        avoid: &HashSet<u16>,
    ) -> Result<u16, IpamError> {
        let span = u32::from(*NODE_PORTS.end() - *NODE_PORTS.start()) + 1;
        for _ in 0..64 {
            let p = *NODE_PORTS.start() + (random_u32() % span) as u16;
            if !avoid.contains(&p) && !self.node_port_taken(store, p).await? {
                return Ok(p);
            }
        }
        Err(IpamError::Exhausted(
            "no free node port left in 30000-32767".into(),
        ))
    }

    /// Claims node port `p`.
    pub fn claim_node_port(&self, p: u16, who: &[u8], txn: &mut Txn) {
        claim(txn, node_port_key(p), who);
    }

    /// Frees node port `p`.
    pub fn release_node_port(&self, p: u16, txn: &mut Txn) {
        txn.ops.push(Op::delete(node_port_key(p)));
    }

    /// A free address of `block` (claimed by [`Ipam::claim_pod_ip`] in the
    /// caller's transaction).
    ///
    /// # Errors
    /// When the block is full.
    pub async fn pick_pod_ip(
        &self,
        store: &dyn Store,
        block: Ipv4Network,
        node: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        let prefix = format!("{POD_IPS}{}/", block.network());
        let (held, _) = store.list(&prefix).await?;
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
        Err(IpamError::Exhausted(format!(
            "the pod block {block} of node {node} is full"
        )))
    }

    /// Claims a pod's address.
    pub fn claim_pod_ip(&self, ip: Ipv4Addr, who: &[u8], txn: &mut Txn) {
        claim(txn, pod_ip_key(ip), who);
    }

    /// Frees a pod's address (one outside the pod network was never
    /// claimed).
    pub fn release_pod_ip(&self, ip: &str, txn: &mut Txn) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>()
            && self.cluster.contains(ip)
        {
            txn.ops.push(Op::delete(pod_ip_key(ip)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_must_hold_blocks_and_stay_apart() {
        let net = |s: &str| s.parse::<Ipv4Network>().expect("CIDR");
        assert!(Ipam::new(net("10.244.0.0/16"), net("10.96.0.0/12")).is_ok());
        assert!(Ipam::new(net("10.244.0.0/25"), net("10.96.0.0/12")).is_err());
        assert!(Ipam::new(net("10.96.0.0/16"), net("10.96.0.0/12")).is_err());
        assert!(Ipam::new(net("10.244.0.0/16"), net("10.96.0.0/29")).is_err());
    }
}
