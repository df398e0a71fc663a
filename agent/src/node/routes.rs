//! Routes to every other node's pod block, kept in step with the Nodes in
//! the API: host-gw (a route via the other node's address) when the nodes
//! share an L2 segment, VXLAN when they do not.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc};

use anyhow::Result;
use futures::StreamExt as _;
use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node as NodeObject;

use super::Node;
use crate::informer::{Event, Informer};
use crate::netlink::{BlockRoute, Netlink, VxlanPeer, vtep_addr};

/// How other nodes' blocks are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// A route via the other node's address (all nodes on one L2 segment).
    HostGw,
    /// A VXLAN tunnel to each node (nodes on routed segments).
    Vxlan,
}

/// The VXLAN device and VNI of the overlay.
pub const VXLAN_DEV: &str = "weft.vx";
/// VXLAN network identifier.
pub const VXLAN_VNI: u32 = 7;

/// Follows the Nodes (from the agent's node informer) and keeps the routes
/// to their blocks. Never returns.
pub(super) async fn run(node: Arc<Node>, nodes: Informer<NodeObject>) -> Result<()> {
    let net = Netlink::open(None)?;
    let mut peers: BTreeMap<String, (Ipv4Network, Ipv4Addr)> = BTreeMap::new();
    let mut last: Option<Vec<BlockRoute>> = None;
    let mut events = nodes.subscribe();
    while let Some(ev) = events.next().await {
        match ev {
            Event::Resync(all) => peers = all.iter().filter_map(|n| peer(n)).collect(),
            Event::Change { new: Some(n), .. } => {
                let name = n.metadata.name.clone().unwrap_or_default();
                match peer(&n) {
                    Some((_, p)) => peers.insert(name, p),
                    None => peers.remove(&name),
                };
            }
            Event::Change {
                old: Some(n),
                new: None,
            } => {
                peers.remove(n.metadata.name.as_deref().unwrap_or_default());
            }
            Event::Change { .. } => continue,
        }
        let others: Vec<(Ipv4Network, Ipv4Addr)> = peers
            .iter()
            .filter(|(name, _)| **name != node.cfg.node_name)
            .map(|(_, p)| *p)
            .collect();
        let routes: Vec<BlockRoute> = match node.cfg.routing {
            Routing::HostGw => others
                .iter()
                .map(|(block, ip)| BlockRoute {
                    block: *block,
                    via: *ip,
                })
                .collect(),
            Routing::Vxlan => others
                .iter()
                .map(|(block, _)| BlockRoute {
                    block: *block,
                    via: vtep_addr(*block),
                })
                .collect(),
        };
        if last.as_ref() == Some(&routes) {
            continue;
        }
        let r = match node.cfg.routing {
            Routing::HostGw => net.sync_routes(&routes, &node.cfg.uplink, false).await,
            Routing::Vxlan => {
                let vx: Vec<VxlanPeer> = others
                    .iter()
                    .map(|(block, ip)| VxlanPeer {
                        node_ip: *ip,
                        block: *block,
                    })
                    .collect();
                match net
                    .ensure_vxlan(
                        VXLAN_DEV,
                        VXLAN_VNI,
                        node.node_ip,
                        node.block,
                        &node.cfg.uplink,
                        &vx,
                    )
                    .await
                {
                    Ok(_) => net.sync_routes(&routes, VXLAN_DEV, true).await,
                    Err(e) => Err(e),
                }
            }
        };
        match r {
            Ok(()) => {
                tracing::info!(
                    routes = routes.len(),
                    "routes to other nodes' pod blocks in step"
                );
                last = Some(routes);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot program routes to other nodes; retrying on the next change");
                last = None;
            }
        }
    }
    anyhow::bail!("the node watch ended")
}

/// A node's (name, (block, InternalIP)), when it has both.
fn peer(n: &NodeObject) -> Option<(String, (Ipv4Network, Ipv4Addr))> {
    let name = n.metadata.name.clone()?;
    let block = n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok()?;
    let ip = n
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some((name, (block, ip)))
}
