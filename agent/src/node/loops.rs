//! The agent's third step: every reconcile loop of a running node, fed by
//! one set of shared informers. The heartbeat, the endpoint (logs, exec,
//! stats), routes to other nodes, the pod workers, cluster DNS, the
//! load-balancer and NetworkPolicy each run as a task; the agent stops when
//! one of the loops that must never end does.

use std::{
    net::Ipv4Addr,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result};
use ipnetwork::Ipv4Network;

use super::{Node, pods, register, routes, server, stats};
use crate::{
    dns::{
        forward::Forwarder,
        records::Zone,
        server::{Handler, Options, Stats},
    },
    informer::Informers,
};

/// Runs the node's loops until one of them fails.
///
/// # Errors
/// When a loop that must never end does, or the cluster zone cannot be made.
pub(super) async fn run(
    node: Arc<Node>,
    listener: std::net::TcpListener,
    cert: server::ServingCert,
    gateway: Ipv4Network,
) -> Result<()> {
    let informers = Informers::start(&node.api.client);
    let stats = Arc::new(stats::Stats::default());
    tokio::spawn(stats.clone().run(node.clone()));
    let server = tokio::spawn(server::run(
        node.clone(),
        listener,
        cert,
        node.api.token.clone(),
        stats,
    ));
    let lease = tokio::spawn(register::heartbeat(node.clone()));
    let routes = tokio::spawn(routes::run(node.clone(), informers.nodes.clone()));
    let pods = tokio::spawn(pods::run(node.clone(), informers.pods.clone()));
    tokio::spawn(super::persistent::run(node.clone()));
    serve_dns(&node, &informers, gateway.ip())?;
    let (lb_tx, lb_rx) = tokio::sync::watch::channel(Default::default());
    let services = tokio::spawn(crate::lb::sync::run(
        informers.clone(),
        node.lb.clone(),
        lb_tx,
    ));
    let lb_status = tokio::spawn(register::report_problems(
        node.clone(),
        lb_rx,
        register::LB_CONDITION,
    ));
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(Default::default());
    let policies = tokio::spawn(crate::policy::sync::run(
        informers,
        node.cfg.node_name.clone(),
        node.policy.clone(),
        policy_tx,
    ));
    let policy_status = tokio::spawn(register::report_problems(
        node.clone(),
        policy_rx,
        register::POLICY_CONDITION,
    ));
    tracing::info!(node = %node.cfg.node_name, "agent running");
    tokio::select! {
        r = lease => r.context("heartbeat task")?,
        r = routes => r.context("route task")?,
        r = pods => r.context("pod task")?,
        r = server => r.context("endpoint task")?,
        r = services => r.context("load-balancer task"),
        r = lb_status => r.context("load-balancer status task")?,
        r = policies => r.context("network policy task"),
        r = policy_status => r.context("network policy status task")?,
    }
}

/// Cluster DNS on the pods' gateway (their resolv.conf names it): the zone
/// filled from the informers, other names forwarded upstream. The server
/// keeps trying its port until it is free, and says so meanwhile.
fn serve_dns(node: &Arc<Node>, informers: &Informers, addr: Ipv4Addr) -> Result<()> {
    let zone = Arc::new(RwLock::new(
        Zone::new("cluster.local", node.cfg.dns.ttl).context("the cluster zone")?,
    ));
    let forwarder = Forwarder::new(&node.cfg.dns.upstreams, node.cfg.dns.cache_size).map_err(|e| {
        let e = format!("no upstream resolver, names outside the cluster are refused: {e:#}");
        tracing::error!("{e}");
        e
    });
    let upstreams = forwarder.as_ref().map(|f| f.servers().to_vec()).ok();
    let dns = Handler::new(
        zone.clone(),
        Options {
            forwarder: forwarder.as_ref().ok().cloned(),
            search_shortcut: node.cfg.dns.search_shortcut,
        },
    );
    let stats = dns.stats();
    if let Err(e) = &forwarder {
        e.clone_into(&mut stats.problem.lock().expect("problem lock"));
    }
    *node.dns_stats.lock().expect("dns stats lock") = Some(stats.clone());
    tokio::spawn(async move {
        loop {
            match bind_dns(addr) {
                Ok((udp, tcp)) => {
                    tracing::info!(%addr, ?upstreams, "serving cluster DNS");
                    set_serving(&stats, true);
                    if let Err(e) = crate::dns::server::serve(dns.clone(), udp, tcp).await {
                        tracing::error!(error = %e, "the DNS server stopped; restarting it");
                    }
                    set_serving(&stats, false);
                }
                Err(e) => {
                    let e = format!("cluster DNS not served, retrying every 5 s: {e:#}");
                    tracing::error!("{e}");
                    *stats.problem.lock().expect("problem lock") = e;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    tokio::spawn(crate::dns::sync::run_pods(
        informers.pods.clone(),
        zone.clone(),
        node.cfg.node_name.clone(),
    ));
    tokio::spawn(crate::dns::sync::run_services(informers.clone(), zone));
    Ok(())
}

/// Records whether the server holds its sockets; serving clears the
/// problem of not serving.
fn set_serving(stats: &Stats, serving: bool) {
    stats
        .serving
        .store(serving, std::sync::atomic::Ordering::Relaxed);
    if serving {
        let mut p = stats.problem.lock().expect("problem lock");
        if p.starts_with("cluster DNS not served") {
            p.clear();
        }
    }
}

/// The UDP sockets and TCP listener of the node's DNS server, port 53 on
/// `addr`: one UDP socket per core (up to 4) sharing the port
/// (SO_REUSEPORT, the kernel spreads clients over them), each with a 4 MiB
/// receive buffer (SO_RCVBUFFORCE: the agent is root; no host sysctl
/// changes), so that a burst waits in a buffer instead of being dropped.
fn bind_dns(addr: Ipv4Addr) -> Result<(Vec<tokio::net::UdpSocket>, tokio::net::TcpListener)> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let sa = std::net::SocketAddrV4::new(addr, 53);
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4));
    let mut udp = Vec::with_capacity(n);
    for _ in 0..n {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("make a UDP socket")?;
        setsockopt(&fd, sockopt::ReusePort, &true).context("SO_REUSEPORT")?;
        if let Err(e) = setsockopt(&fd, sockopt::RcvBufForce, &(4 << 20)) {
            tracing::warn!(error = %e, "cannot enlarge the DNS socket's receive buffer");
        }
        bind(fd.as_raw_fd(), &SockaddrIn::from(sa)).with_context(|| format!("bind UDP {sa}"))?;
        udp.push(tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(
            fd,
        ))?);
    }
    let tcp = std::net::TcpListener::bind(sa).with_context(|| format!("bind TCP {sa}"))?;
    tcp.set_nonblocking(true)?;
    Ok((udp, tokio::net::TcpListener::from_std(tcp)?))
}
