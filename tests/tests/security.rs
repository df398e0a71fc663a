//! The security context, observed from inside real runc containers in
//! the lab: every field Weft honours changes what the container's own
//! process sees in /proc/self/status and can do, and what it cannot honour
//! fails the pod with the reason.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use weft_agent::{
    runtime::busybox::BUSYBOX_IMAGE,
    sandbox::{Sandbox, SandboxError},
};
use weft_lab::topology::{Lab, LabSpec};

const TIMEOUT: Duration = Duration::from_secs(180);

/// What the container reports about itself, then it sleeps.
const REPORT: &str = "grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
    (touch /probe 2>/dev/null && echo root=rw) || echo root=ro; \
    (unshare -U true 2>/dev/null && echo userns=ok) || echo userns=denied; \
    (mkdir /tmp/d 2>/dev/null && echo mkdir=ok) || echo mkdir=denied; \
    echo pid1=$(cat /proc/1/comm); echo ipc=$(readlink /proc/self/ns/ipc); \
    echo devices=$(ls /dev | wc -l); \
    echo port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
    echo done; sleep 600";

fn pod(name: &str, seed: u32, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    let c = serde_json::json!({"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", REPORT]});
    let mut container = c;
    if let Some(sc) = spec
        .get_mut("containerSecurityContext")
        .map(serde_json::Value::take)
    {
        container["securityContext"] = sc;
    }
    spec.as_object_mut()
        .unwrap()
        .remove("containerSecurityContext");
    spec["containers"] = serde_json::json!([container]);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{seed:08x}-5ec0-4000-8000-{:012x}", std::process::id())},
        "spec": spec,
    }))
    .expect("valid pod")
}

/// Runs the pod and returns the container's report as key → value.
async fn report(sb: &Sandbox, pod: &Pod) -> Result<std::collections::BTreeMap<String, String>> {
    let rec = sb.create_pod(pod, sb.free_ip()?).await?;
    let log = sb.log_path(&rec.uid, "main", 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains(" done") {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no report from {}: {t}",
            rec.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // CRI lines: time stream tag text.
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        let Some(msg) = l.splitn(4, ' ').nth(3) else {
            continue;
        };
        if let Some((k, v)) = msg.split_once(':').filter(|(k, _)| !k.contains('=')) {
            out.insert(
                k.trim().to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        } else if let Some((k, v)) = msg.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    sb.remove_pod(&rec.uid, Duration::ZERO).await?;
    Ok(out)
}

fn caps_mask(names: &[&str]) -> String {
    let mut m = 0u64;
    for n in names {
        let bit = weft_api::security::ALL_CAPABILITIES
            .iter()
            .position(|c| c == n)
            .expect("known capability");
        m |= 1 << bit;
    }
    format!("{m:016x}")
}

const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_context_is_what_the_container_sees() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = lab.sandbox(lab.node("n1"))?;
        lab.load_busybox(&sb)?;
        let host_ipc = std::fs::read_link("/proc/self/ns/ipc")?.display().to_string();
        let host_init = std::fs::read_to_string("/proc/1/comm")?.trim().to_string();

        // Nothing asked: root, the runtimes' default capabilities, the
        // default seccomp filter (no user namespaces), a writable root.
        let r = report(&sb, &pod("plain", 1, serde_json::json!({}))).await?;
        let plain_devices: u32 = r["devices"].parse()?;
        assert_eq!(r["Uid"], "0 0 0 0", "{r:?}");
        assert_eq!(r["CapEff"], caps_mask(&DEFAULT_CAPS), "{r:?}");
        assert_eq!(r["NoNewPrivs"], "0");
        assert_eq!(r["Seccomp"], "2", "RuntimeDefault is Weft's default");
        assert_eq!(r["root"], "rw");
        assert_eq!(r["userns"], "denied", "{r:?}");
        assert_eq!(r["mkdir"], "ok");
        assert_eq!(r["pid1"], "sh", "its own PID namespace");
        assert_ne!(r["ipc"], host_ipc, "its own IPC namespace");

        // A restricted pod: user, groups, no escalation, read-only root,
        // no capabilities, and a safe sysctl.
        let r = report(
            &sb,
            &pod(
                "restricted",
                2,
                serde_json::json!({
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                        "supplementalGroups": [4000], "fsGroup": 5000,
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]},
                    "containerSecurityContext": {"allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }),
            ),
        )
        .await?;
        assert_eq!(r["Uid"], "1000 1000 1000 1000", "{r:?}");
        assert_eq!(r["Gid"], "3000 3000 3000 3000", "{r:?}");
        assert_eq!(r["Groups"], "4000 5000", "{r:?}");
        assert_eq!(r["CapBnd"], "0000000000000000", "{r:?}");
        assert_eq!(r["NoNewPrivs"], "1");
        assert_eq!(r["root"], "ro");
        assert_eq!(r["port_start"], "80");

        // One capability dropped, one added; the filter relaxes for it.
        let r = report(
            &sb,
            &pod(
                "caps",
                3,
                serde_json::json!({"containerSecurityContext": {
                    "capabilities": {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}}}),
            ),
        )
        .await?;
        let mut want: Vec<&str> = DEFAULT_CAPS.iter().copied().filter(|c| *c != "NET_RAW").collect();
        want.push("SYS_ADMIN");
        assert_eq!(r["CapEff"], caps_mask(&want), "{r:?}");
        assert_eq!(r["userns"], "ok", "SYS_ADMIN lifts the namespace rules: {r:?}");

        // Unconfined: no filter at all.
        let r = report(
            &sb,
            &pod(
                "unconfined",
                4,
                serde_json::json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            ),
        )
        .await?;
        assert_eq!(r["Seccomp"], "0", "{r:?}");
        assert_eq!(r["userns"], "ok", "{r:?}");

        // Localhost: the node's own profile, from its seccomp directory.
        let dir = lab.node_state_dir(lab.node("n1")).join("seccomp");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("no-mkdir.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )?;
        let r = report(
            &sb,
            &pod(
                "localhost",
                5,
                serde_json::json!({"containerSecurityContext": {"seccompProfile":
                    {"type": "Localhost", "localhostProfile": "no-mkdir.json"}}}),
            ),
        )
        .await?;
        assert_eq!(r["mkdir"], "denied", "{r:?}");
        assert_eq!(r["userns"], "ok", "only the profile's rules apply: {r:?}");

        // Privileged: every capability the node has, no filter, the host's devices.
        let r = report(
            &sb,
            &pod("privileged", 6, serde_json::json!({"containerSecurityContext": {"privileged": true}})),
        )
        .await?;
        let bnd = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
            .unwrap();
        assert_eq!(r["CapEff"], bnd, "{r:?}");
        assert_eq!(r["Seccomp"], "0");
        assert!(
            r["devices"].parse::<u32>()? > plain_devices,
            "the host's devices: {r:?}"
        );

        // The node's PID and IPC namespaces.
        let r = report(
            &sb,
            &pod("host-ns", 7, serde_json::json!({"hostPID": true, "hostIPC": true})),
        )
        .await?;
        assert_eq!(r["pid1"], host_init, "{r:?}");
        assert_eq!(r["ipc"], host_ipc, "{r:?}");

        // runAsNonRoot with an image that runs as root: refused with
        // kubelet's reason, and nothing is left behind.
        let err = sb
            .create_pod(
                &pod("nonroot", 8, serde_json::json!({"securityContext": {"runAsNonRoot": true}})),
                sb.free_ip()?,
            )
            .await
            .expect_err("root image under runAsNonRoot");
        assert!(matches!(err, SandboxError::Container { .. }), "{err:?}");
        assert!(err.to_string().contains("image will run as root"), "{err}");
        // A Localhost profile that does not exist.
        let err = sb
            .create_pod(
                &pod(
                    "noprofile",
                    9,
                    serde_json::json!({"containerSecurityContext": {"seccompProfile":
                        {"type": "Localhost", "localhostProfile": "missing.json"}}}),
                ),
                sb.free_ip()?,
            )
            .await
            .expect_err("missing profile");
        assert!(err.to_string().contains("cannot load seccomp profile"), "{err}");
        assert!(sb.records()?.is_empty());
        assert!(sb.runtime().list()?.is_empty());
        Ok(())
    })
    .await?
}

/// Whether a process runs (a zombie has ended).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn plain_pod(name: &str, seed: u32, command: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{seed:08x}-b0b0-4000-8000-{:012x}", std::process::id())},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", command]}]},
    }))
    .expect("valid pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_bounded_and_no_container_outlives_its_pod() -> Result<()> {
    use weft_agent::sandbox::{DEFAULT_POD_MAX_PIDS, procs};
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = lab.sandbox(lab.node("n1"))?;
        lab.load_busybox(&sb)?;

        // Every fork it can make, for ever: held at the pod's limit.
        let bomb = sb
            .create_pod(
                // The forking shell dies at its first refused fork (as ash
                // does); what it made lives on under the pod's own shell.
                &plain_pod(
                    "bomb",
                    1,
                    "sh -c 'while true; do sleep 1000 & done'; sleep 1000",
                ),
                sb.free_ip()?,
            )
            .await?;
        let cgroup = sb.pod_cgroup(&bomb.uid);
        let t = Instant::now();
        while sb.pids_refused(&bomb.uid) == 0 {
            let events: Vec<String> = weft_agent::sandbox::cgroup_roots()
                .iter()
                .filter_map(|r| std::fs::read_to_string(r.join(&cgroup).join("pids.events")).ok())
                .collect();
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "the bomb never hit the limit: {} processes, pids.events {events:?}",
                procs(&cgroup).len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let held = procs(&cgroup).len() as u64;
        assert!(
            held <= DEFAULT_POD_MAX_PIDS && held > DEFAULT_POD_MAX_PIDS / 2,
            "{held} processes against a limit of {DEFAULT_POD_MAX_PIDS}"
        );
        // The node still starts pods and runs their commands meanwhile.
        let other = sb
            .create_pod(
                &plain_pod("neighbour", 2, "echo alive; sleep 600"),
                sb.free_ip()?,
            )
            .await?;
        let log = sb.log_path(&other.uid, "main", 0);
        let t = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("alive")
        {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20),
                "the neighbour never ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Removing the bomb takes every one of its processes.
        let t = Instant::now();
        sb.remove_pod(&bomb.uid, Duration::ZERO).await?;
        assert!(
            procs(&cgroup).is_empty(),
            "bomb processes survive its removal"
        );
        eprintln!("removed a pod of {held} processes in {:?}", t.elapsed());

        // A container runc has lost (its state gone): the removal still
        // stops it, through the pod's cgroup, before releasing anything.
        let lost = sb
            .create_pod(&plain_pod("lost", 3, "sleep 600"), sb.free_ip()?)
            .await?;
        let runc_root = lab.node_state_dir(lab.node("n1")).join("runc");
        std::fs::remove_dir_all(runc_root.join(&lost.containers[0].1))?;
        let lost_cgroup = sb.pod_cgroup(&lost.uid);
        let pids = procs(&lost_cgroup);
        assert!(!pids.is_empty());
        sb.remove_pod(&lost.uid, Duration::ZERO).await?;
        assert!(
            procs(&lost_cgroup).is_empty(),
            "a container runc lost outlived its pod"
        );
        assert!(!pids.iter().any(|p| alive(*p)), "{pids:?} still run");

        // A pod with neither record nor runc state (a crash at the worst
        // moment): the orphan sweep finds its cgroup and kills what runs.
        let orphan = sb
            .create_pod(&plain_pod("orphan", 4, "sleep 600"), sb.free_ip()?)
            .await?;
        let orphan_cgroup = sb.pod_cgroup(&orphan.uid);
        std::fs::remove_dir_all(runc_root.join(&orphan.containers[0].1))?;
        let records = lab.node_state_dir(lab.node("n1")).join("sandbox/pods");
        for e in std::fs::read_dir(&records)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json")
                && std::fs::read_to_string(&p)?.contains(&orphan.uid)
            {
                std::fs::remove_file(&p)?;
            }
        }
        let pids = procs(&orphan_cgroup);
        assert!(!pids.is_empty());
        let swept = sb.sweep().await?;
        assert!(!pids.iter().any(|p| alive(*p)), "{pids:?} still run");
        assert!(
            procs(&orphan_cgroup).is_empty(),
            "sweep left the orphan running: {swept:?}"
        );
        assert!(
            swept.iter().any(|s| s.contains(&orphan_cgroup)),
            "{swept:?}"
        );

        sb.remove_all(Duration::ZERO).await?;
        assert!(sb.runtime().runc_ids()?.is_empty());
        Ok(())
    })
    .await?
}

/// The MAC of eth0 in the namespace `ns`.
async fn mac_in(ns: &str) -> Result<[u8; 6]> {
    let nl = weft_agent::netlink::Netlink::open(Some(ns))?;
    let l = nl.link("eth0").await?.context("eth0")?;
    Ok(l.mac.as_slice().try_into()?)
}

fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying IPv4 UDP to port 9999.
fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9999u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

/// An ARP request from (`sha`, `spa`) asking for `tpa`, broadcast.
fn arp_frame(
    src_mac: [u8; 6],
    sha: [u8; 6],
    spa: std::net::Ipv4Addr,
    tpa: std::net::Ipv4Addr,
) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// Sends raw frames out of eth0 of the namespace `ns` (a packet socket:
/// what a pod with NET_RAW can do).
fn send_raw(ns: &str, frames: Vec<Vec<u8>>) -> Result<()> {
    weft_agent::netlink::netns::run_in(Some(ns), move || -> Result<()> {
        // SAFETY: plain socket calls on a descriptor this closure owns.
        unsafe {
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from((libc::ETH_P_ALL as u16).to_be()),
            );
            anyhow::ensure!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            for f in frames {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_ifindex = ifindex as i32;
                addr.sll_halen = 6;
                addr.sll_addr[..6].copy_from_slice(&f[..6]);
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                anyhow::ensure!(
                    n == f.len() as isize,
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
        Ok(())
    })?
}

/// The MAC the node's neighbour table holds for `ip`, if any.
fn neighbour(node_ns: &str, ip: std::net::Ipv4Addr) -> Result<Option<String>> {
    let out = std::process::Command::new("ip")
        .args(["-n", node_ns, "neigh", "show", &ip.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string))
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A pod that forges its source (another pod's address, its node's
/// gateway, another pod's MAC), poisons its node's ARP table, or sends
/// IPv6: every such frame is dropped at its veth and counted, while what it
/// sends as itself passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cannot_send_as_anyone_else() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1").clone();
        let sb = lab.sandbox(&node)?;
        lab.load_busybox(&sb)?;
        let mk = |name: &str, seed| plain_pod(name, seed, "sleep 600");
        let attacker = sb.create_pod(&mk("attacker", 11), sb.free_ip()?).await?;
        let victim = sb.create_pod(&mk("victim", 12), sb.free_ip()?).await?;
        let receiver = sb.create_pod(&mk("receiver", 13), sb.free_ip()?).await?;
        let (own_mac, victim_mac, receiver_mac) = (
            mac_in(&attacker.netns).await?,
            mac_in(&victim.netns).await?,
            mac_in(&receiver.netns).await?,
        );
        let gateway = weft_lab::topology::first_host(node.block);

        // The receiver listens for UDP on 9999 and notes who sent what.
        let rns = receiver.netns.clone();
        let listener = std::thread::spawn(move || {
            weft_agent::netlink::netns::run_in(Some(&rns), || -> Result<Vec<(String, String)>> {
                let s = std::net::UdpSocket::bind("0.0.0.0:9999")?;
                s.set_read_timeout(Some(Duration::from_millis(1500)))?;
                let mut got = Vec::new();
                let mut buf = [0u8; 256];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    got.push((
                        from.ip().to_string(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    ));
                }
                Ok(got)
            })
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let to = |src_mac, src, what: &str| {
            udp_frame(src_mac, receiver_mac, src, receiver.ip, what.as_bytes())
        };
        let mut ipv6 = vec![0x33, 0x33, 0, 0, 0, 1];
        ipv6.extend_from_slice(&own_mac);
        ipv6.extend_from_slice(&0x86ddu16.to_be_bytes());
        ipv6.extend_from_slice(&[0x60; 40]);
        send_raw(
            &attacker.netns,
            vec![
                to(own_mac, attacker.ip, "legit"),
                to(own_mac, victim.ip, "forged-ip"),
                to(own_mac, gateway, "forged-gateway"),
                to(own_mac, node.ip, "forged-node"),
                to(victim_mac, attacker.ip, "forged-mac"),
                ipv6,
                // As itself, then as the victim: the node's table must
                // learn the first and not the second.
                arp_frame(own_mac, own_mac, attacker.ip, gateway),
                arp_frame(own_mac, own_mac, victim.ip, gateway),
            ],
        )?;
        let got = listener
            .join()
            .map_err(|_| anyhow::anyhow!("listener panicked"))???;
        assert_eq!(
            got,
            [(attacker.ip.to_string(), "legit".to_string())],
            "only what the pod sent as itself arrives"
        );
        assert_eq!(
            neighbour(&node.netns, attacker.ip)?,
            Some(mac_text(own_mac)),
            "the node learns the pod from its own ARP"
        );
        assert_ne!(
            neighbour(&node.netns, victim.ip)?,
            Some(mac_text(own_mac)),
            "the node's ARP table was poisoned"
        );
        let c = sb.spoofed(&attacker.uid).await?;
        // The pod's own kernel may add IPv6 of its own (neighbour discovery).
        assert_eq!((c.ip, c.mac, c.arp), (3, 1, 1), "{c:?}");
        assert!(c.other >= 1, "{c:?}");
        let v = sb.spoofed(&victim.uid).await?;
        assert_eq!(
            (v.ip, v.mac, v.arp),
            (0, 0, 0),
            "the victim forged nothing: {v:?}"
        );
        sb.remove_all(Duration::ZERO).await?;
        Ok(())
    })
    .await?
}

/// A pod on its node's network: no namespace, veth or address of its own;
/// its server answers on the node's address, it sees the node's
/// interfaces, and it goes without leaving anything behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod_runs_on_its_nodes_network() -> Result<()> {
    use std::io::{Read as _, Write as _};
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1").clone();
        let sb = lab.sandbox(&node)?;
        lab.load_busybox(&sb)?;
        let mut p = plain_pod(
            "on-node",
            21,
            "mkdir -p /www && echo on-node > /www/index.html && exec httpd -f -p 18080 -h /www",
        );
        p.spec.as_mut().unwrap().host_network = Some(true);
        let rec = sb.create_pod(&p, node.ip).await?;
        assert!(
            rec.host_network && rec.netns.is_empty() && rec.host_veth.is_empty(),
            "{rec:?}"
        );
        // (Other tests' labs make namespaces meanwhile: this node's pods'
        // carry its prefix.)
        let mine = format!("{}-p-", node.netns);
        let made: Vec<String> = weft_agent::netlink::netns::list()?
            .into_iter()
            .filter(|n| n.starts_with(&mine))
            .collect();
        assert!(made.is_empty(), "no namespace of its own: {made:?}");
        // Its init is in the node's network namespace.
        let pid = sb
            .runtime()
            .state(&rec.containers[0].1)?
            .pid
            .context("pid")?;
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"))?;
        let node_ns = std::fs::metadata(weft_agent::netlink::netns::path(&node.netns))?;
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(
            theirs.display().to_string(),
            format!("net:[{}]", node_ns.ino())
        );
        // Its server answers on the node's own address.
        let to = std::net::SocketAddr::new(node.ip.into(), 18080);
        let page =
            weft_agent::netlink::netns::run_in(Some(&node.netns), move || -> Result<String> {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                        Ok(mut s) => {
                            s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                            let mut out = String::new();
                            s.read_to_string(&mut out)?;
                            return Ok(out);
                        }
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            })??;
        assert!(page.ends_with("on-node\n"), "{page}");
        sb.remove_pod(&rec.uid, Duration::ZERO).await?;
        assert!(sb.records()?.is_empty());
        assert!(sb.runtime().list()?.is_empty());
        Ok(())
    })
    .await?
}

/// hostPath volumes are bind mounts of the node's paths as the pod asks:
/// made for the `...OrCreate` types, checked for the others, read-only
/// when asked, a `subPath` inside its volume; a type that does not match
/// and a `subPath` that a symlink leads out of the volume fail the pod
/// with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_path_volumes_are_mounted_as_asked() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1");
        let sb = lab.sandbox(node)?;
        lab.load_busybox(&sb)?;
        // Node paths of the lab's own, removed with it.
        let base = lab.node_state_dir(node).join("hostpath");
        std::fs::create_dir_all(base.join("ro/inner"))?;
        std::fs::write(base.join("ro/hello"), "hi\n")?;
        std::fs::write(base.join("ro/inner/x"), "")?;
        std::fs::create_dir_all(base.join("esc"))?;
        std::os::unix::fs::symlink("/", base.join("esc/link"))?;
        std::fs::create_dir_all(base.join("outside"))?;
        std::os::unix::fs::symlink(base.join("outside"), base.join("esc/out"))?;
        let b = |p: &str| base.join(p).display().to_string();
        let with = |name: &str, seed: u32, volumes: serde_json::Value, mounts: serde_json::Value, cmd: &str| {
            serde_json::from_value::<Pod>(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default",
                             "uid": format!("{seed:08x}-5ec0-4000-8000-{:012x}", std::process::id())},
                "spec": {"volumes": volumes, "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                    "command": ["sh", "-c", cmd], "volumeMounts": mounts}]},
            }))
        };
        let p = with(
            "vols",
            40,
            serde_json::json!([
                {"name": "made", "hostPath": {"path": b("made/deep"), "type": "DirectoryOrCreate"}},
                {"name": "ro", "hostPath": {"path": b("ro"), "type": "Directory"}},
                {"name": "file", "hostPath": {"path": b("f.txt"), "type": "FileOrCreate"}},
            ]),
            serde_json::json!([
                {"name": "made", "mountPath": "/made"},
                {"name": "ro", "mountPath": "/ro", "readOnly": true},
                {"name": "ro", "mountPath": "/sub", "subPath": "inner"},
                {"name": "file", "mountPath": "/f.txt"},
            ]),
            "echo from-pod > /made/w; echo read=$(cat /ro/hello); \
             (echo x > /ro/nope 2>/dev/null && echo ro=rw) || echo ro=ro; \
             echo sub=$(ls /sub); (test -f /f.txt && echo file=ok) || echo file=missing; \
             echo done; sleep 600",
        )?;
        let rec = sb.create_pod(&p, sb.free_ip()?).await?;
        let log = sb.log_path(&rec.uid, "main", 0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let text = loop {
            let t = std::fs::read_to_string(&log).unwrap_or_default();
            if t.contains(" done") {
                break t;
            }
            anyhow::ensure!(Instant::now() < deadline, "no report: {t}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for want in [" read=hi", " ro=ro", " sub=x", " file=ok"] {
            assert!(text.contains(want), "{want} not in {text}");
        }
        assert_eq!(
            std::fs::read_to_string(base.join("made/deep/w"))?,
            "from-pod\n",
            "the pod wrote to the node's directory"
        );
        assert!(!base.join("ro/nope").exists());
        sb.remove_pod(&rec.uid, Duration::ZERO).await?;

        // A type that does not match, and a symlink out of the volume.
        for (name, seed, volumes, mounts, why) in [
            (
                "wrong-type",
                41,
                serde_json::json!([{"name": "v", "hostPath": {"path": b("ro"), "type": "File"}}]),
                serde_json::json!([{"name": "v", "mountPath": "/v"}]),
                "is not a file",
            ),
            (
                "escape",
                42,
                serde_json::json!([{"name": "v", "hostPath": {"path": b("esc")}}]),
                serde_json::json!([{"name": "v", "mountPath": "/v", "subPath": "link"}]),
                "outside its volume",
            ),
            (
                "escape-and-make",
                43,
                serde_json::json!([{"name": "v", "hostPath": {"path": b("esc")}}]),
                serde_json::json!([{"name": "v", "mountPath": "/v", "subPath": "out/made"}]),
                "outside its volume",
            ),
        ] {
            let p = with(name, seed, volumes, mounts, "sleep 600")?;
            match sb.create_pod(&p, sb.free_ip()?).await {
                Ok(_) => panic!("{name} ran"),
                Err(e) => assert!(e.to_string().contains(why), "{name}: {e}"),
            }
            // Nothing of it is left.
            assert!(sb.records()?.iter().all(|r| r.name != name));
        }
        // Refused before anything was made through the symlink.
        assert!(
            !base.join("outside/made").exists(),
            "a directory was made outside the volume"
        );
        Ok(())
    })
    .await?
}
