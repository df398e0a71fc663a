//! The agent's DNS server (hickory-server) answering the cluster zone, asked
//! with real `dig` over UDP and TCP inside a network namespace of its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use weft_agent::{
    dns::records::{EndpointInfo, ServiceInfo, Zone},
    netlink::{Netlink, netns},
};

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn dig(ns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dig",
            "@127.0.0.1",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .context("dig (bind9-dnsutils)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn zone() -> Result<Zone> {
    let mut z = Zone::new("cluster.local", 5)?;
    z.set_service(
        "default",
        "web",
        Some(ServiceInfo {
            cluster_ips: vec![Ipv4Addr::new(10, 96, 0, 10)],
            ports: vec![("http".into(), "tcp".into(), 80)],
            ..ServiceInfo::default()
        }),
    );
    // Headless, with enough endpoints that a 512-byte UDP answer truncates.
    let endpoints = (0..60)
        .map(|i| EndpointInfo {
            ip: Ipv4Addr::new(10, 244, 1, 10 + i),
            hostname: None,
            ready: true,
            ports: BTreeMap::new(),
        })
        .collect();
    z.set_service(
        "default",
        "many",
        Some(ServiceInfo {
            headless: true,
            endpoints,
            ..ServiceInfo::default()
        }),
    );
    z.set_pods("default", BTreeSet::from([Ipv4Addr::new(10, 244, 1, 10)]));
    Ok(z)
}

#[test]
fn dig_gets_the_cluster_zone_over_udp_and_tcp() -> Result<()> {
    let ns = Ns(format!("weft-dnst-{}", std::process::id()));
    netns::create(&ns.0)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async { Netlink::open(Some(&ns.0))?.loopback_up().await })?;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
    let (udp, tcp) = netns::run_in(Some(&ns.0), move || -> std::io::Result<_> {
        let u = std::net::UdpSocket::bind(addr)?;
        u.set_nonblocking(true)?;
        let t = std::net::TcpListener::bind(addr)?;
        t.set_nonblocking(true)?;
        Ok((u, t))
    })??;
    let shared = Arc::new(RwLock::new(zone()?));
    let z = shared.clone();
    rt.spawn(async move {
        let udp = tokio::net::UdpSocket::from_std(udp).expect("udp");
        let tcp = tokio::net::TcpListener::from_std(tcp).expect("tcp");
        let _ = weft_agent::dns::server::serve(z, udp, tcp).await;
    });
    std::thread::sleep(Duration::from_millis(200));

    // Before the first sync: SERVFAIL, not a denial.
    let out = dig(&ns.0, &["web.default.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: SERVFAIL"), "{out}");
    shared.write().expect("zone").set_synced();

    let out = dig(&ns.0, &["+short", "Web.Default.SVC.cluster.local", "A"])?;
    ensure!(out.trim() == "10.96.0.10", "A, any case: {out}");
    let out = dig(
        &ns.0,
        &["+tcp", "+short", "web.default.svc.cluster.local", "A"],
    )?;
    ensure!(out.trim() == "10.96.0.10", "over TCP: {out}");
    let out = dig(&ns.0, &["nope.default.svc.cluster.local", "A"])?;
    ensure!(
        out.contains("status: NXDOMAIN") && out.contains("AUTHORITY: 1") && out.contains("SOA"),
        "NXDOMAIN with the SOA: {out}"
    );
    let out = dig(&ns.0, &["web.default.svc.cluster.local", "AAAA"])?;
    ensure!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0") && out.contains("SOA"),
        "NODATA with the SOA: {out}"
    );
    let out = dig(&ns.0, &["svc.cluster.local", "A"])?;
    ensure!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "empty non-terminal: {out}"
    );
    let out = dig(
        &ns.0,
        &["+short", "_http._tcp.web.default.svc.cluster.local", "SRV"],
    )?;
    ensure!(
        out.trim() == "0 100 80 web.default.svc.cluster.local.",
        "SRV: {out}"
    );
    let out = dig(&ns.0, &["+short", "-x", "10.96.0.10"])?;
    ensure!(out.trim() == "web.default.svc.cluster.local.", "PTR: {out}");
    let out = dig(&ns.0, &["+short", "dns-version.cluster.local", "TXT"])?;
    ensure!(out.trim() == "\"1.1.0\"", "TXT: {out}");
    let out = dig(
        &ns.0,
        &["+short", "10-244-1-10.default.pod.cluster.local", "A"],
    )?;
    ensure!(out.trim() == "10.244.1.10", "pod A: {out}");

    // 60 addresses do not fit 512 bytes of UDP: truncated, and whole over
    // TCP; with EDNS and a large buffer they fit UDP.
    let out = dig(
        &ns.0,
        &["+noedns", "+ignore", "many.default.svc.cluster.local", "A"],
    )?;
    ensure!(out.contains(" tc"), "TC bit over plain UDP: {out}");
    let out = dig(
        &ns.0,
        &["+tcp", "+short", "many.default.svc.cluster.local", "A"],
    )?;
    ensure!(out.lines().count() == 60, "60 over TCP: {out}");
    let out = dig(
        &ns.0,
        &[
            "+bufsize=4096",
            "+short",
            "many.default.svc.cluster.local",
            "A",
        ],
    )?;
    ensure!(out.lines().count() == 60, "60 with EDNS: {out}");

    // Garbage does not wedge the server: it answers the next query.
    netns::run_in(Some(&ns.0), move || -> std::io::Result<()> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for junk in [
            &b""[..],
            &b"\x00"[..],
            &[0xffu8; 12][..],
            &[0x41u8; 3000][..],
        ] {
            s.send_to(junk, addr)?;
        }
        Ok(())
    })??;
    let out = dig(&ns.0, &["+short", "web.default.svc.cluster.local", "A"])?;
    ensure!(out.trim() == "10.96.0.10", "after garbage: {out}");

    // Names outside the zone are not ours (forwarding comes later).
    let out = dig(&ns.0, &["example.org", "A"])?;
    ensure!(out.contains("status: REFUSED"), "{out}");
    Ok(())
}
