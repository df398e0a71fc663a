//! Pod network setup and teardown, 200 pods on one node, side by side with
//! the reference CNI bridge plugin (containernetworking-plugins, host-local
//! IPAM, ipMasq off) run the way a container runtime runs it: a new netns,
//! then `CNI_COMMAND=ADD`; teardown is `DEL` and removing the netns.
//! Both run inside a scratch lab node's namespace.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench pod_network`).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use ipnetwork::Ipv4Network;
use weft_agent::netlink::{Netlink, VethAttachment, netns};
use weft_lab::topology::{Lab, LabSpec, NODE_BRIDGE};
use weft_tests::stats::{ends, ms, percentile};

const PODS: u32 = 200;
const CNI_BIN: &str = "/usr/lib/cni";

fn row(name: &str, setup: &[Duration], teardown: &[Duration]) {
    let (f, l) = ends(setup, 10);
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} |",
        ms(percentile(setup, 50.0)),
        ms(percentile(setup, 99.0)),
        ms(percentile(teardown, 50.0)),
        ms(percentile(teardown, 99.0)),
        ms(f),
        ms(l)
    );
}

async fn weft(lab: &Lab) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let node = lab.node("n1");
    let nl = Netlink::open(Some(&node.netns))?;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for i in 0..PODS {
        let ns = format!("{}-p-w{i}", node.netns);
        let veth = format!("wftb{i:08x}");
        let ip = Ipv4Addr::from(u32::from(node.block.network()) + 2 + i);
        let t = Instant::now();
        netns::create(&ns)?;
        nl.attach_veth(&VethAttachment {
            host_veth: veth.clone(),
            netns: ns.clone(),
            bridge: NODE_BRIDGE.into(),
            address: Ipv4Network::new(ip, 24)?,
            gateway: Some(node.gateway().ip()),
            mtu: 1500,
        })
        .await?;
        up.push(t.elapsed());
        pods.push((ns, veth));
    }
    for (ns, veth) in pods {
        let t = Instant::now();
        nl.detach_veth(&veth).await?;
        netns::delete(&ns)?;
        down.push(t.elapsed());
    }
    Ok((up, down))
}

fn cni(lab: &Lab, command: &str, ns: &str, id: &str, conf: &str) -> Result<()> {
    let node = lab.node("n1");
    // The plugin runs inside the node's namespace, as on a real node.
    let out = netns::run_in(Some(&node.netns), || -> Result<std::process::Output> {
        let mut child = Command::new(format!("{CNI_BIN}/bridge"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns::path(ns))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_BIN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(conf.as_bytes())?;
        Ok(child.wait_with_output()?)
    })??;
    ensure!(
        out.status.success(),
        "bridge plugin {command}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn peer(lab: &Lab) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let node = lab.node("n1");
    let data = std::path::Path::new(weft_lab::topology::STATE_ROOT)
        .join(&lab.prefix)
        .join("cni-ipam");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": data}
    })
    .to_string();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut pods = Vec::new();
    for i in 0..PODS {
        let ns = format!("{}-p-c{i}", node.netns);
        let id = format!("bench{i}");
        let t = Instant::now();
        netns::create(&ns)?;
        cni(lab, "ADD", &ns, &id, &conf)?;
        up.push(t.elapsed());
        pods.push((ns, id));
    }
    for (ns, id) in pods {
        let t = Instant::now();
        cni(lab, "DEL", &ns, &id, &conf)?;
        netns::delete(&ns)?;
        down.push(t.elapsed());
    }
    Ok((up, down))
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        // Warm-up of both paths (first netlink socket, first plugin exec).
        let (p_up, p_down) = peer(&lab)?;
        let (w_up, w_down) = weft(&lab).await?;
        println!("Pod network setup and teardown, {PODS} pods on one node (ms)\n");
        println!("| | setup p50 | setup p99 | teardown p50 | teardown p99 | setup, first 10 (p50) | setup, last 10 (p50) |");
        println!("|---|---|---|---|---|---|---|");
        row("weft (netlink)", &w_up, &w_down);
        row("netns + CNI bridge plugin", &p_up, &p_down);
        let ratio = |a: &[Duration], b: &[Duration]| percentile(b, 50.0).as_secs_f64() / percentile(a, 50.0).as_secs_f64();
        println!(
            "\nweft is {:.1}x faster to set up and {:.1}x faster to tear down (p50).",
            ratio(&w_up, &p_up),
            ratio(&w_down, &p_down)
        );
        Ok(())
    })
}
