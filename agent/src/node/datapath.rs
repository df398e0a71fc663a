//! The agent's second step: the node's data path. It loads the eBPF
//! programs (adopting the maps an earlier agent pinned), sets up the
//! load-balancer and the NetworkPolicy engine over their maps, attaches
//! the socket and uplink programs, and finishes or rolls back what a crash
//! left of the pods on disk before anything new starts.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};

use super::{AgentConfig, setup::Registered};
use crate::{
    bpf::{Datapath, DatapathOptions},
    lb::{Balancer, LbMaps},
    netlink::Netlink,
    policy::sync::PolicyState,
    runtime::{Runtime, RuntimeConfig},
    sandbox::{NodeConfig, Sandbox},
};

/// The node's data path, ready for the loops.
pub(super) struct DataPath {
    /// The pods' sandbox (it owns the programs on the pod veths).
    pub(super) sandbox: Sandbox,
    /// The Service load-balancer.
    pub(super) lb: Arc<Mutex<Balancer>>,
    /// The NetworkPolicy engine and its maps.
    pub(super) policy: Arc<Mutex<PolicyState>>,
}

/// Loads and attaches the data path, and recovers the pods on disk.
///
/// # Errors
/// When the programs cannot be loaded or attached, or the node's state
/// cannot be read.
pub(super) async fn load(cfg: &AgentConfig, reg: &Registered) -> Result<DataPath> {
    let runtime = Runtime::new(RuntimeConfig {
        state_dir: cfg.state_dir.join("runtime"),
        runc: PathBuf::from("runc"),
        runc_root: cfg.state_dir.join("runc"),
        shim: cfg.shim.clone(),
        registry: cfg.registry.clone(),
        seccomp_dir: cfg.state_dir.join("seccomp"),
        log_max_size: cfg.container_log_max_size,
        log_max_files: cfg.container_log_max_files,
    })?;
    let mut datapath = Datapath::load_with(&DatapathOptions {
        netns: None,
        pin_dir: Some(cfg.pin_dir.clone()),
        sizes: cfg.lb_sizes,
        policy_sizes: cfg.policy_sizes,
    })
    .context("load the eBPF datapath")?;
    datapath
        .set_dns_limit(cfg.dns.rate_limit, cfg.dns.rate_limit)
        .context("set the pods' DNS rate limit")?;
    let lb = {
        let maps = LbMaps::take(&mut datapath).context("open the load-balancer maps")?;
        let mut b = Balancer::new(maps, cfg.lb_sizes).context("adopt the load-balancer maps")?;
        let uplink_index = Netlink::open(None)?
            .link(&cfg.uplink)
            .await
            .ok()
            .flatten()
            .map_or(0, |l| l.index);
        b.set_snat_ports(cfg.snat_ports.clone());
        b.set_node(reg.node_ip, uplink_index, reg.block)
            .context("configure the load-balancer")?;
        Arc::new(Mutex::new(b))
    };
    let policy = {
        let maps = crate::policy::maps::PolicyMaps::take(&mut datapath)
            .context("open the network policy maps")?;
        let installed = maps.installed().context("read the network policy maps")?;
        if !installed.rules.is_empty() || !installed.endpoints.is_empty() {
            tracing::info!(
                endpoints = installed.endpoints.len(),
                rules = installed.rules.len(),
                identities = installed.identities.len(),
                "adopting the network policy state an earlier agent left pinned"
            );
        }
        // The node's own addresses: its pods always let them in (probes).
        let engine = crate::policy::Engine::new(
            cfg.policy_sizes,
            vec![reg.gateway.ip(), reg.node_ip],
            installed,
        );
        Arc::new(Mutex::new(PolicyState { engine, maps }))
    };
    // The socket path: every process of the node's cgroup, pods included,
    // has Service addresses translated at connect().
    let cgroup = match &cfg.lb_cgroup {
        Some(c) => c.clone(),
        None => crate::sandbox::cgroup_v2_root()
            .context("no cgroup v2 hierarchy is mounted (socket load-balancing needs one)")?
            .join("weft")
            .join(&cfg.instance),
    };
    std::fs::create_dir_all(&cgroup).with_context(|| format!("create {}", cgroup.display()))?;
    datapath
        .attach_cgroup(&cgroup)
        .with_context(|| format!("attach the socket load-balancer to {}", cgroup.display()))?;
    datapath
        .attach_uplink(&cfg.uplink)
        .with_context(|| format!("attach the NodePort programs to {}", cfg.uplink))?;
    let sandbox = Sandbox::new(
        NodeConfig {
            node: cfg.instance.clone(),
            node_netns: None,
            pod_netns_prefix: format!("{}-p-", cfg.instance),
            bridge: cfg.bridge.clone(),
            block: reg.block,
            mtu: cfg.mtu,
            state_dir: cfg.state_dir.join("sandbox"),
            dns: reg.gateway.ip(),
            restart_backoff: cfg.restart_backoff,
            pod_max_pids: cfg.pod_max_pids,
            system_reserved_pids: cfg.system_reserved_pids,
            node_ip: reg.node_ip,
            allocatable: {
                let (cpus, memory) = super::register::capacity();
                (cpus * 1000, memory)
            },
        },
        runtime,
        Some(datapath),
    )?
    .with_objects(std::sync::Arc::new(super::objects::ApiObjects::new(
        reg.api.client.clone(),
    )));
    // Finish what a crash interrupted before anything new starts.
    let rolled_back = sandbox.recover().await?;
    if !rolled_back.is_empty() {
        tracing::info!(pods = ?rolled_back, "finished interrupted pod creations and removals");
    }
    let swept = sandbox.sweep().await?;
    if !swept.is_empty() {
        tracing::info!(what = ?swept, "removed what no pod record accounts for");
    }
    // Pods that outlived an earlier agent get this agent's programs, in place.
    sandbox.reattach().await?;
    Ok(DataPath {
        sandbox,
        lb,
        policy,
    })
}
