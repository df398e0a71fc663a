//! Service load-balancing, side by side in one run on pods in network
//! namespaces:
//!
//! - short TCP connections (connect, request, response, close) through a
//!   Service VIP on weft's eBPF load-balancer (the socket path, as pods'
//!   processes use it, and the per-packet tc path), straight to the pod
//!   IPs (the floor), and through the same Services as kube-proxy-style
//!   iptables DNAT chains in a second node namespace built only for the
//!   comparison; with 1, 1 000 and 10 000 Services present. The bare floor
//!   is the same pods and veths on a third node namespace with no program
//!   attached at all; weft's paths are measured with the anti-spoofing
//!   check on (every pod registered, as the agent does) and off (not
//!   registered: the same programs pass the frames unexamined);
//! - programming 10 000 Services x 10 endpoints, and a one-endpoint change
//!   at that size: weft's map writer against `iptables-restore`.
//!
//! Pods here are namespaces with a veth on the node bridge (as the agent
//! makes them); the servers and the load generator are this program's own
//! threads and a child process of it, bound to the pods' namespaces.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench lb`).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ipnetwork::Ipv4Network;
use weft_agent::{
    bpf::{Datapath, DatapathOptions, LbSizes},
    lb::{BackendSpec, Balancer, FrontendSpec, LbMaps, Scope},
    netlink::{Netlink, VethAttachment, netns},
};
use weft_lab::topology::{Lab, LabNode, LabSpec, NODE_BRIDGE};
use weft_tests::shortconn::{self, CONCURRENCY, RUN_SECS};

/// Rounds; each variant's figure is the median over them.
const ROUNDS: usize = 3;
const SCALES: [usize; 3] = [1, 1_000, 10_000];
const ENDPOINTS: usize = 10;
/// The Service under measurement, in the middle of the others.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const PORT: u16 = 80;

/// The i-th filler Service's VIP (10.96.0.0/16 and up).
fn filler_vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32)
}

/// The j-th endpoint of filler Service i: addresses nothing answers at.
fn filler_ep(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + (i * ENDPOINTS + j) as u32)
}

// ---------------------------------------------------------------------------
// Load generator: a child process, so that it can sit in the node's cgroup
// (the socket path) or not (the packet path).

// ---------------------------------------------------------------------------
// Pods and servers.

struct Pod {
    netns: String,
    veth: String,
    ip: Ipv4Addr,
    ifindex: u32,
    mac: [u8; 6],
}

async fn pod(node: &LabNode, nl: &Netlink, tag: &str, index: u32) -> Result<Pod> {
    let netns_name = format!("{}-p-{tag}", node.netns);
    let veth = format!("wftl{tag}");
    let ip = Ipv4Addr::from(u32::from(node.block.network()) + 10 + index);
    netns::create(&netns_name)?;
    let ifindex = nl
        .attach_veth(&VethAttachment {
            host_veth: veth.clone(),
            netns: netns_name.clone(),
            bridge: NODE_BRIDGE.into(),
            address: Ipv4Network::new(ip, node.block.prefix())?,
            gateway: Some(node.gateway().ip()),
            mtu: 1500,
        })
        .await?;
    let eth0 = Netlink::open(Some(&netns_name))?
        .link("eth0")
        .await?
        .context("the pod's eth0")?;
    let mac = eth0.mac.as_slice().try_into().context("eth0's MAC")?;
    Ok(Pod {
        netns: netns_name,
        veth,
        ip,
        ifindex,
        mac,
    })
}

// ---------------------------------------------------------------------------
// The two ways of programming Services.

fn frontend(vip: Ipv4Addr, backends: &[Ipv4Addr]) -> FrontendSpec {
    FrontendSpec {
        addr: vip,
        port: PORT,
        proto: weft_common::PROTO_TCP,
        scope: Scope::Cluster,
        port_name: String::new(),
        affinity: None,
        backends: backends
            .iter()
            .map(|a| BackendSpec {
                addr: *a,
                port: PORT,
                ready: true,
            })
            .collect(),
    }
}

fn filler(i: usize) -> FrontendSpec {
    let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| filler_ep(i, j)).collect();
    frontend(filler_vip(i), &eps)
}

/// kube-proxy's iptables layout for one Service: a KUBE-SERVICES rule to
/// its KUBE-SVC chain, which picks one of its KUBE-SEP chains with the
/// statistic module, each DNATing to one endpoint.
fn iptables_service(
    name: &str,
    vip: Ipv4Addr,
    eps: &[Ipv4Addr],
    chains: &mut String,
    rules: &mut String,
) {
    let svc = format!("KUBE-SVC-{name}");
    chains.push_str(&format!(":{svc} - [0:0]\n"));
    rules.push_str(&format!(
        "-A KUBE-SERVICES -d {vip}/32 -p tcp -m tcp --dport {PORT} -j {svc}\n"
    ));
    let n = eps.len();
    for (k, ep) in eps.iter().enumerate() {
        let sep = format!("KUBE-SEP-{name}-{k}");
        chains.push_str(&format!(":{sep} - [0:0]\n"));
        let left = n - k;
        if left > 1 {
            rules.push_str(&format!(
                "-A {svc} -m statistic --mode random --probability {:.10} -j {sep}\n",
                1.0 / left as f64
            ));
        } else {
            rules.push_str(&format!("-A {svc} -j {sep}\n"));
        }
        rules.push_str(&format!(
            "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}:{PORT}\n"
        ));
    }
}

/// The nat table for `count` Services, the measured one in the middle.
fn iptables_table(count: usize, real: &[Ipv4Addr]) -> String {
    let mut chains =
        String::from(":PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A PREROUTING -j KUBE-SERVICES\n-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..count {
        if i == count / 2 {
            iptables_service("MEASURED", VIP, real, &mut chains, &mut rules);
        }
        if i + 1 == count && count == 1 {
            break;
        }
        let eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| filler_ep(i, j)).collect();
        iptables_service(
            &format!("F{i}"),
            filler_vip(i),
            &eps,
            &mut chains,
            &mut rules,
        );
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

fn iptables_restore(node: &LabNode, input: &str, noflush: bool) -> Result<Duration> {
    let mut cmd = Command::new("iptables-restore");
    if noflush {
        cmd.arg("--noflush");
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    weft_lab::cluster::in_netns(&mut cmd, &node.netns, false)?;
    let start = Instant::now();
    let mut child = cmd.spawn().context("iptables-restore")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "iptables-restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load_balancer(node: &LabNode, sizes: LbSizes) -> Result<(Datapath, Balancer)> {
    let mut dp = Datapath::load_with(&DatapathOptions {
        netns: Some(node.netns.clone()),
        pin_dir: None,
        sizes,
        ..DatapathOptions::default()
    })?;
    let maps = LbMaps::take(&mut dp)?;
    let mut b = Balancer::new(maps, sizes)?;
    b.set_node(node.ip, 0, node.block)?;
    Ok((dp, b))
}

fn main() -> Result<()> {
    if let Ok(spec) = std::env::var(shortconn::LOADGEN_ENV) {
        return shortconn::loadgen_main(&spec);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let lab = rt.block_on(Lab::up(LabSpec::new(3)))?;
    let result = rt.block_on(run(&lab));
    let cgroup = cgroup_dir(&lab);
    let _ = std::fs::remove_dir(&cgroup);
    result
}

fn cgroup_dir(lab: &Lab) -> PathBuf {
    weft_agent::sandbox::cgroup_v2_root()
        .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"))
        .join("weft")
        .join(format!("{}-bench", lab.prefix))
}

async fn run(lab: &Lab) -> Result<()> {
    let sizes = LbSizes {
        services: 16_384,
        backends: 131_072,
        maglev: 12 * 1024 * 1024,
        ..LbSizes::default()
    };
    let machine = format!(
        "{} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    println!("Service load-balancing ({machine})\n");

    // --- Programming 10 000 Services x 10 endpoints.
    let ebpf_node = lab.node("n1");
    let ipt_node = lab.node("n2");
    let bare_node = lab.node("n3");
    let (_dp0, mut fresh) = load_balancer(ebpf_node, sizes)?;
    let start = Instant::now();
    for i in 0..10_000 {
        fresh.set_service(&format!("bench/f{i}"), vec![filler(i)]);
    }
    let ebpf_full = start.elapsed();
    ensure!(fresh.problems().is_empty(), "{:?}", fresh.problems());
    let mut ebpf_change = Vec::new();
    for k in 0..50 {
        let mut f = filler(5_000);
        // One endpoint replaced by another, back and forth.
        f.backends[3].addr = if k % 2 == 0 {
            Ipv4Addr::new(10, 250, 0, 1)
        } else {
            filler_ep(5_000, 3)
        };
        let start = Instant::now();
        fresh.set_service("bench/f5000", vec![f]);
        ebpf_change.push(start.elapsed());
    }
    drop(fresh);
    let real_dummy = [Ipv4Addr::new(10, 250, 0, 2)];
    let table = iptables_table(10_000, &real_dummy);
    let ipt_full = iptables_restore(ipt_node, &table, false)?;
    let mut ipt_change = Vec::new();
    for k in 0..10 {
        // What kube-proxy's partial sync writes for one changed Service:
        // its chains again, the others untouched.
        let mut eps: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| filler_ep(5_000, j)).collect();
        if k % 2 == 0 {
            eps[3] = Ipv4Addr::new(10, 250, 0, 1);
        }
        let (mut chains, mut rules) = (String::new(), String::new());
        iptables_service("F5000", filler_vip(5_000), &eps, &mut chains, &mut rules);
        let rules: String = rules
            .lines()
            .filter(|l| !l.starts_with("-A KUBE-SERVICES"))
            .map(|l| format!("{l}\n"))
            .collect();
        let input = format!("*nat\n{chains}{rules}COMMIT\n");
        ipt_change.push(iptables_restore(ipt_node, &input, true)?);
    }
    iptables_restore(ipt_node, "*nat\nCOMMIT\n", false)?;
    let p = |v: &[Duration], q: f64| weft_tests::stats::ms(weft_tests::stats::percentile(v, q));
    println!("Programming 10 000 Services x 10 endpoints\n");
    println!("| | full sync | one-endpoint change p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    println!(
        "| weft eBPF maps | {} | {} | {} | {} |",
        weft_tests::stats::ms(ebpf_full),
        p(&ebpf_change, 50.0),
        p(&ebpf_change, 99.0),
        weft_tests::stats::ms(*ebpf_change.iter().max().expect("samples"))
    );
    println!(
        "| iptables-restore (kube-proxy layout; change = --noflush of the Service's chains) | {} | {} | {} | {} |\n",
        weft_tests::stats::ms(ipt_full),
        p(&ipt_change, 50.0),
        p(&ipt_change, 99.0),
        weft_tests::stats::ms(*ipt_change.iter().max().expect("samples"))
    );

    // --- Short connections.
    let stop = Arc::new(AtomicBool::new(false));
    let mut pods = BTreeMap::new();
    for node in [ebpf_node, ipt_node, bare_node] {
        let nl = Netlink::open(Some(&node.netns))?;
        let tag = &node.name;
        let client = pod(node, &nl, &format!("{tag}c"), 0).await?;
        let s0 = pod(node, &nl, &format!("{tag}s0"), 1).await?;
        let s1 = pod(node, &nl, &format!("{tag}s1"), 2).await?;
        shortconn::serve(&s0.netns, PORT, stop.clone())?;
        shortconn::serve(&s1.netns, PORT, stop.clone())?;
        pods.insert(node.name.clone(), (client, s0, s1));
    }
    // Conntrack of the iptables node: TIME_WAIT entries of finished
    // connections would otherwise pile up over the runs.
    netns::set_sysctl(
        &ipt_node.netns,
        "net/netfilter/nf_conntrack_tcp_timeout_time_wait",
        "1",
    )
    .ok();
    let (dp_client, s0, s1) = &pods[&ebpf_node.name];
    let (ipt_client, i0, i1) = &pods[&ipt_node.name];
    let (bare_client, b0, b1) = &pods[&bare_node.name];
    let (mut dp, mut b) = load_balancer(ebpf_node, sizes)?;
    for p in [dp_client, s0, s1] {
        dp.guard_pod(p.ifindex, p.ip, p.mac)?;
        dp.attach_pod(&p.veth)?;
    }
    let guard = |dp: &mut Datapath, on: bool| -> Result<()> {
        for p in [dp_client, s0, s1] {
            if on {
                dp.guard_pod(p.ifindex, p.ip, p.mac)?;
            } else {
                dp.unguard_pod(p.ifindex)?;
            }
        }
        Ok(())
    };
    let cgroup = cgroup_dir(lab);
    std::fs::create_dir_all(&cgroup)?;
    dp.attach_cgroup(&cgroup)?;
    let real = [s0.ip, s1.ip];
    let ipt_real = [i0.ip, i1.ip];

    println!(
        "Short TCP connections ({CONCURRENCY} in flight, {RUN_SECS} s per run, median of {ROUNDS} rounds)\n"
    );
    println!(
        "| Services | path | requests/s | p50 | p99 | vs bare floor (rps) | p99 vs bare floor | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut guard_cost = Vec::new();
    let mut installed = 0;
    for &count in &SCALES {
        // The measured Service sits in the middle of the others.
        while installed < count {
            if installed == count / 2 || (count == 1 && installed == 0) {
                b.set_service("bench/measured", vec![frontend(VIP, &real)]);
            }
            if count > 1 {
                b.set_service(&format!("bench/f{installed}"), vec![filler(installed)]);
            }
            installed += 1;
        }
        b.set_service("bench/measured", vec![frontend(VIP, &real)]);
        ensure!(b.problems().is_empty(), "{:?}", b.problems());
        iptables_restore(ipt_node, &iptables_table(count, &ipt_real), false)?;
        let direct_targets = [
            SocketAddrV4::new(s0.ip, PORT),
            SocketAddrV4::new(s1.ip, PORT),
        ];
        let bare_targets = [
            SocketAddrV4::new(b0.ip, PORT),
            SocketAddrV4::new(b1.ip, PORT),
        ];
        let vip = [SocketAddrV4::new(VIP, PORT)];
        let mut results: BTreeMap<&str, Vec<shortconn::Figures>> = BTreeMap::new();
        for _ in 0..ROUNDS {
            results
                .entry("0 bare floor: direct to pod IPs, no program on the veths")
                .or_default()
                .push(shortconn::load(&bare_client.netns, None, &bare_targets)?);
            guard(&mut dp, true)?;
            results
                .entry("1 direct to pod IPs, weft programs")
                .or_default()
                .push(shortconn::load(&dp_client.netns, None, &direct_targets)?);
            results
                .entry("2 VIP, weft socket path (pods)")
                .or_default()
                .push(shortconn::load(&dp_client.netns, Some(&cgroup), &vip)?);
            results
                .entry("3 VIP, weft tc path")
                .or_default()
                .push(shortconn::load(&dp_client.netns, None, &vip)?);
            results
                .entry("4 VIP, iptables DNAT (kube-proxy layout)")
                .or_default()
                .push(shortconn::load(&ipt_client.netns, None, &vip)?);
            guard(&mut dp, false)?;
            results
                .entry("5 direct to pod IPs, weft programs, anti-spoofing off")
                .or_default()
                .push(shortconn::load(&dp_client.netns, None, &direct_targets)?);
            results
                .entry("6 VIP, weft socket path, anti-spoofing off")
                .or_default()
                .push(shortconn::load(&dp_client.netns, Some(&cgroup), &vip)?);
            results
                .entry("7 VIP, weft tc path, anti-spoofing off")
                .or_default()
                .push(shortconn::load(&dp_client.netns, None, &vip)?);
        }
        guard(&mut dp, true)?;
        let med = |k: &str| -> shortconn::Figures {
            let r = &results[k];
            shortconn::Figures {
                rps: median(r.iter().map(|f| f.rps).collect()),
                p50_us: median(r.iter().map(|f| f.p50_us).collect()),
                p99_us: median(r.iter().map(|f| f.p99_us).collect()),
                errors: r.iter().map(|f| f.errors).sum(),
            }
        };
        let floor = med("0 bare floor: direct to pod IPs, no program on the veths");
        for k in results.keys() {
            let f = med(k);
            println!(
                "| {count} | {} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x | {:.2}x | {} |",
                &k[2..],
                f.rps,
                f.p50_us,
                f.p99_us,
                f.rps / floor.rps,
                f.p99_us / floor.p99_us,
                f.errors
            );
        }
        for (on, off) in [
            (
                "1 direct to pod IPs, weft programs",
                "5 direct to pod IPs, weft programs, anti-spoofing off",
            ),
            (
                "2 VIP, weft socket path (pods)",
                "6 VIP, weft socket path, anti-spoofing off",
            ),
            (
                "3 VIP, weft tc path",
                "7 VIP, weft tc path, anti-spoofing off",
            ),
        ] {
            let (a, z) = (med(on), med(off));
            guard_cost.push(format!(
                "| {count} | {} | {:.0} | {:.0} | {:+.1}% | {:.0} µs | {:.0} µs | {:+.1}% |",
                &on[2..],
                a.rps,
                z.rps,
                (a.rps / z.rps - 1.0) * 100.0,
                a.p99_us,
                z.p99_us,
                (a.p99_us / z.p99_us - 1.0) * 100.0
            ));
        }
    }
    // Is the gap to the bare floor the programs or the node? n1's own
    // veths with the programs (and their clsact qdisc) taken off, against
    // the same with them on and n3's bare floor, in rotating order.
    let direct_targets = [
        SocketAddrV4::new(s0.ip, PORT),
        SocketAddrV4::new(s1.ip, PORT),
    ];
    let bare_targets = [
        SocketAddrV4::new(b0.ip, PORT),
        SocketAddrV4::new(b1.ip, PORT),
    ];
    let mut same: BTreeMap<&str, Vec<shortconn::Figures>> = BTreeMap::new();
    const VARIANTS: [&str; 4] = [
        "0 n3's veths, no program (the bare floor)",
        "1 n1's veths, weft programs on",
        "2 n1's veths, weft programs on, anti-spoofing off",
        "3 n1's veths, programs and clsact qdisc taken off",
    ];
    for round in 0..ROUNDS + 2 {
        // Each round starts with another variant: no order effect.
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            let f = match v {
                0 => shortconn::load(&bare_client.netns, None, &bare_targets)?,
                1 => shortconn::load(&dp_client.netns, None, &direct_targets)?,
                2 => {
                    guard(&mut dp, false)?;
                    let f = shortconn::load(&dp_client.netns, None, &direct_targets)?;
                    guard(&mut dp, true)?;
                    f
                }
                _ => {
                    for p in [dp_client, s0, s1] {
                        let mut cmd = Command::new("tc");
                        cmd.args(["qdisc", "del", "dev", &p.veth, "clsact"]);
                        weft_lab::cluster::in_netns(&mut cmd, &ebpf_node.netns, false)?;
                        ensure!(
                            cmd.status()?.success(),
                            "tc qdisc del dev {} clsact",
                            p.veth
                        );
                    }
                    let f = shortconn::load(&dp_client.netns, None, &direct_targets)?;
                    for p in [dp_client, s0, s1] {
                        dp.detach_pod(&p.veth, None);
                        dp.attach_pod(&p.veth)?;
                    }
                    f
                }
            };
            same.entry(VARIANTS[v]).or_default().push(f);
        }
    }
    println!(
        "\nDirect to pod IPs: the same veths with weft's programs on and off ({} rounds)\n",
        ROUNDS + 2
    );
    println!("| veths | requests/s | p50 | p99 | errors |");
    println!("|---|---|---|---|---|");
    for (k, r) in &same {
        println!(
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {} |",
            &k[2..],
            median(r.iter().map(|f| f.rps).collect()),
            median(r.iter().map(|f| f.p50_us).collect()),
            median(r.iter().map(|f| f.p99_us).collect()),
            r.iter().map(|f| f.errors).sum::<usize>()
        );
    }
    println!("\nThe anti-spoofing check's cost: on against off, same programs, same run\n");
    println!("| Services | path | rps on | rps off | rps change | p99 on | p99 off | p99 change |");
    println!("|---|---|---|---|---|---|---|---|");
    for l in &guard_cost {
        println!("{l}");
    }
    // None of the bench's own IPv4 or ARP was judged forged (IPv6 a pod's
    // kernel sends by itself is, and is dropped: shown, not an error).
    for p in [dp_client, s0, s1] {
        let spoofed = dp.spoofed(p.ifindex)?;
        ensure!(
            spoofed.mac + spoofed.ip + spoofed.arp == 0,
            "the bench's own pods were judged forged: {spoofed:?}"
        );
        println!(
            "{}: dropped as neither IPv4 nor ARP: {}",
            p.veth, spoofed.other
        );
    }
    stop.store(true, Ordering::Relaxed);
    drop(dp);
    if !cgroup.exists() {
        bail!("cgroup vanished");
    }
    Ok(())
}
