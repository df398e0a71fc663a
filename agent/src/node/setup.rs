//! The agent's first step: who the node is and where its pods live. It
//! checks the configuration, registers the Node (getting its pod block),
//! and builds the pod bridge holding the block's gateway.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;

use super::{AgentConfig, api, join_cgroup, register, server};
use crate::netlink::Netlink;

/// A registered node with its bridge up.
pub(super) struct Registered {
    /// The API, as this node.
    pub(super) api: api::Api,
    /// The node's address.
    pub(super) node_ip: Ipv4Addr,
    /// Its pod block.
    pub(super) block: Ipv4Network,
    /// The block's first address, on the pod bridge.
    pub(super) gateway: Ipv4Network,
    /// The endpoint's socket (logs, exec, stats), bound before
    /// registering so that the Node never names a port nobody holds.
    pub(super) listener: std::net::TcpListener,
    /// The endpoint's serving certificate.
    pub(super) cert: server::ServingCert,
}

/// Registers the node and builds its pod bridge.
///
/// # Errors
/// A bad node name, a kubeconfig that cannot be read, an uplink without an
/// address, or a bridge that cannot be made.
pub(super) async fn register_node(cfg: &AgentConfig) -> Result<Registered> {
    if weft_api::meta::dns_subdomain_error(&cfg.node_name).is_some() {
        anyhow::bail!(
            "invalid node name {:?}: must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
            cfg.node_name
        );
    }
    let api = api::Api::connect(&cfg.kubeconfig).await?;
    if cfg.cgroup_self {
        join_cgroup(&format!("weft/{}/agent", cfg.instance))?;
    }
    let net = Netlink::open(None)?;
    let node_ip = match cfg.node_ip {
        Some(ip) => ip,
        None => net
            .addresses(&cfg.uplink)
            .await
            .with_context(|| format!("read the addresses of the uplink {:?}", cfg.uplink))?
            .first()
            .map(|a| a.ip())
            .with_context(|| {
                format!(
                    "the uplink {:?} has no IPv4 address; pass --node-ip",
                    cfg.uplink
                )
            })?,
    };
    tracing::info!(node = %cfg.node_name, %node_ip, server = %api.server, "registering");
    let listener = server::bind(node_ip, cfg.server_port)?;
    let cert = server::ServingCert::new(&cfg.node_name, node_ip)?;
    // The block this node had before, asked for again so that its pods
    // keep their addresses if the Node object was deleted meanwhile.
    let block_file = cfg.state_dir.join("block");
    let previous: Option<Ipv4Network> = std::fs::read_to_string(&block_file)
        .ok()
        .and_then(|b| b.trim().parse().ok());
    let block = register::register(&api, cfg, node_ip, &cert.sha256, previous).await?;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("create {}", cfg.state_dir.display()))?;
    std::fs::write(&block_file, block.to_string())
        .with_context(|| format!("write {}", block_file.display()))?;
    if previous.is_some_and(|p| p != block) {
        tracing::warn!(
            ?previous, %block,
            "the node's pod block changed; pods with addresses from the old one are removed"
        );
    }
    tracing::info!(node = %cfg.node_name, %block, "registered; pod block assigned");

    // The node's side of pod networking: the bridge holding the block's
    // gateway, and forwarding between pods, the uplink and other nodes.
    let gateway = Ipv4Network::new(
        Ipv4Addr::from(u32::from(block.network()) + 1),
        block.prefix(),
    )?;
    let bridge = net
        .ensure_bridge(&cfg.bridge, gateway, cfg.mtu)
        .await
        .with_context(|| format!("create the pod bridge {}", cfg.bridge))?;
    for old in net.remove_other_addresses(bridge, gateway).await? {
        tracing::info!(%old, "removed the old gateway address from the pod bridge");
    }
    // The agent's own namespace: a lab node's, or the host of a real node.
    const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(FORWARD).is_ok_and(|v| v.trim() != "1") {
        std::fs::write(FORWARD, "1")
            .context("enable IPv4 forwarding (pods on other nodes are reached through it)")?;
    }
    Ok(Registered {
        api,
        node_ip,
        block,
        gateway,
        listener,
        cert,
    })
}
