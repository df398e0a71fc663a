//! Cluster DNS on a real 2-node lab: busybox pods resolve through the
//! resolv.conf Weft gives them; names outside the cluster go to an
//! upstream inside the lab (never the internet); the search-path shortcut
//! is on for n1 and off for n2, and what an outside lookup costs is counted
//! on both; n2's answers carry a TTL of 7 s instead of 5; Service changes
//! reach every node's DNS.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};
use weft_lab::topology::LabNode;
use weft_tests::upstream;

/// A busybox pod `name` in namespace `ns`, placed on `node`.
fn pod(ns: &str, name: &str, node: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{labels}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www"]
"#
    )
}

const WEB_SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
"#;

fn wait_ready(c: &Cluster, ns: &str, names: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let v = c.get_json(&["pods", "-n", ns])?;
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let ready = names.iter().all(|n| {
            items
                .iter()
                .any(|p| p["metadata"]["name"] == *n && pod_ready(p))
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pods {names:?} in {ns} not ready after 90 s: {v}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The address and network namespace of pod `ns/name`.
fn pod_net(c: &Cluster, ns: &str, name: &str) -> Result<(Ipv4Addr, String)> {
    let (_, rec) = weft_lab::topology::pods(&c.lab.prefix)?
        .into_iter()
        .find(|(_, r)| r.namespace == ns && r.name == name)
        .with_context(|| format!("no record of pod {ns}/{name}"))?;
    Ok((rec.ip, rec.netns))
}

/// `dig @server` run inside network namespace `netns`. Two tries, as
/// resolvers make: a datagram can be lost on a loaded CI machine.
fn dig(c: &Cluster, netns: &str, server: Ipv4Addr, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{server}"))
        .args(["+time=2", "+tries=2"])
        .args(args);
    let out = c.output_in(netns, cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Queries node `n`'s DNS server has received (from `weft dns stats`).
fn queries(c: &Cluster, n: &str) -> Result<u64> {
    let out = c.weft(&["dns", "stats", "--node", n, "-o", "json"])?;
    let v: Value = serde_json::from_str(&out).context("dns stats json")?;
    v[n]["queries"].as_u64().context("queries")
}

/// The gateway of node `n`'s pods (the first address of the pod block the
/// controller gave it), where its DNS server listens.
fn gateway(c: &Cluster, n: &LabNode) -> Result<Ipv4Addr> {
    let cidr: ipnetwork::Ipv4Network = c.get_json(&["node", &n.name])?["spec"]["podCIDR"]
        .as_str()
        .context("podCIDR")?
        .parse()?;
    Ok(weft_lab::topology::first_host(cidr))
}

/// Asks every node's DNS for `name` until `check` accepts the answer;
/// returns how long the slowest node took.
fn until_every_node(
    c: &Cluster,
    name: &str,
    qtype: &str,
    check: impl Fn(&str) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in &c.lab.nodes {
        loop {
            let out = dig(c, &n.netns, gateway(c, n)?, &[name, qtype])?;
            if check(&out) {
                slowest = slowest.max(start.elapsed());
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(5),
                "{name} {qtype} on {} after 5 s: {out}",
                n.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(slowest)
}

#[test]
fn pods_resolve_services_and_outside_names_with_and_without_the_shortcut() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut spec = ClusterSpec::new(2);
    // The lab's stand-in for the internet's DNS, on the underlay's router.
    spec.agent_args = vec!["--dns-upstream".into(), "192.0.2.1".into()];
    spec.node_agent_args.insert(
        "n2".into(),
        vec![
            "--dns-search-shortcut".into(),
            "false".into(),
            "--dns-ttl".into(),
            "7".into(),
        ],
    );
    let c = rt.block_on(Cluster::up(spec, |_| {}))?;
    let up = {
        let _g = rt.enter();
        upstream::start(
            &c.lab.underlay,
            std::net::SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 53),
        )?
    };
    c.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n")?;
    c.apply(&pod("default", "web", "n1", "app: web"))?;
    c.apply(WEB_SERVICE)?;
    c.apply(&pod("team", "c1", "n1", "app: client"))?;
    c.apply(&pod("team", "c2", "n2", "app: client"))?;
    wait_ready(&c, "default", &["web"])?;
    wait_ready(&c, "team", &["c1", "c2"])?;
    let (n1, n2) = (c.lab.node("n1").clone(), c.lab.node("n2").clone());

    // The resolv.conf pods get.
    let (code, out) = c.exec("team", "c1", &["cat", "/etc/resolv.conf"])?;
    ensure!(code == 0, "{out}");
    ensure!(
        out.contains(&format!("nameserver {}", gateway(&c, &n1)?))
            && out.contains("search team.svc.cluster.local svc.cluster.local cluster.local")
            && out.contains("options ndots:5"),
        "resolv.conf: {out}"
    );

    // dnsPolicy None with a dnsConfig of its own; None without nameservers
    // is refused.
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: own-dns, namespace: team}
spec:
  terminationGracePeriodSeconds: 1
  dnsPolicy: "None"
  dnsConfig:
    nameservers: ["192.0.2.1"]
    searches: ["corp.example"]
    options: [{name: ndots, value: "2"}]
  containers:
  - {name: c, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    wait_ready(&c, "team", &["own-dns"])?;
    let (code, out) = c.exec("team", "own-dns", &["cat", "/etc/resolv.conf"])?;
    ensure!(
        code == 0 && out == "nameserver 192.0.2.1\nsearch corp.example\noptions ndots:2\n",
        "dnsConfig: {out:?}"
    );
    ensure!(
        c.apply("apiVersion: v1\nkind: Pod\nmetadata: {name: no-dns, namespace: team}\nspec:\n  dnsPolicy: \"None\"\n  containers:\n  - {name: c, image: weft.local/busybox:1.36}\n")
            .is_err(),
        "dnsPolicy None without nameservers was accepted"
    );

    // Services by short, namespaced and full name, from both nodes, through
    // the pods' own resolver (busybox nslookup and wget).
    let vip = c.get_json(&["service", "web"])?["spec"]["clusterIP"]
        .as_str()
        .context("clusterIP")?
        .to_string();
    for client in ["c1", "c2"] {
        let (code, out) = c.exec(
            "team",
            client,
            &[
                "sh",
                "-c",
                "nslookup web.default.svc.cluster.local && wget -qO- http://web.default/",
            ],
        )?;
        ensure!(
            code == 0 && out.contains(&vip) && out.contains("web"),
            "{client}: {out}"
        );
    }

    // The TTL: 5 s by default (n1), --dns-ttl on n2.
    for (n, ttl) in [(&n1, 5), (&n2, 7)] {
        let out = dig(
            &c,
            &n.netns,
            gateway(&c, n)?,
            &["+noall", "+answer", "web.default.svc.cluster.local", "A"],
        )?;
        let words = out.split_whitespace().collect::<Vec<_>>().join(" ");
        ensure!(
            words == format!("web.default.svc.cluster.local. {ttl} IN A {vip}"),
            "TTL {ttl} on {}: {out}",
            n.name
        );
    }

    // Pod A and PTR records, from the Pod watch, on both nodes.
    let (c1_ip, c1_ns) = pod_net(&c, "team", "c1")?;
    let (_, c2_ns) = pod_net(&c, "team", "c2")?;
    let dashed = c1_ip.to_string().replace('.', "-");
    for (netns, gw) in [(&c1_ns, gateway(&c, &n1)?), (&c2_ns, gateway(&c, &n2)?)] {
        let out = dig(
            &c,
            netns,
            gw,
            &["+short", &format!("{dashed}.team.pod.cluster.local"), "A"],
        )?;
        ensure!(out.trim() == c1_ip.to_string(), "pod A: {out}");
        let out = dig(&c, netns, gw, &["+short", "-x", &c1_ip.to_string()])?;
        ensure!(
            out.trim() == format!("{dashed}.team.pod.cluster.local."),
            "pod PTR: {out}"
        );
    }

    // Outside names: forwarded to the upstream, then cached.
    let (code, out) = c.exec("team", "c1", &["nslookup", "example.org"])?;
    ensure!(code == 0 && out.contains("127.0.0.1"), "{out}");
    let asked = upstream::count(&up, "example.org", "A");
    let (code, out) = c.exec("team", "c1", &["nslookup", "example.org"])?;
    ensure!(code == 0 && out.contains("127.0.0.1"), "{out}");
    ensure!(
        asked >= 1 && upstream::count(&up, "example.org", "A") == asked,
        "cached: {up:?}"
    );

    // What one outside lookup costs a busybox pod's resolver (wget's
    // getaddrinfo: A and AAAA down the search path), counted at the
    // node's DNS server. Port 1 of example.org's address refuses at once.
    let mut cost = Vec::new();
    for (client, node) in [("c1", "n1"), ("c2", "n2")] {
        let before = queries(&c, node)?;
        let (_, out) = c.exec(
            "team",
            client,
            &["sh", "-c", "wget -qO- http://example.org:1/ 2>&1; true"],
        )?;
        ensure!(
            out.contains("(127.0.0.1)"),
            "{client} resolved example.org: {out}"
        );
        cost.push(queries(&c, node)? - before);
    }
    println!(
        "queries per outside lookup (busybox wget): {} with the shortcut, {} without",
        cost[0], cost[1]
    );
    ensure!(
        cost[0] < cost[1],
        "the shortcut saves queries: {} with it, {} without",
        cost[0],
        cost[1]
    );
    // Names under the cluster suffix never went upstream.
    ensure!(
        upstream::count_under(&up, "cluster.local") == 0,
        "cluster names reached the upstream: {up:?}"
    );

    // Pods named under a headless Service (hostname and subdomain), ready
    // or, with publishNotReadyAddresses, not yet.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports:
  - {name: http, port: 80}
---
apiVersion: v1
kind: Service
metadata: {name: peers, namespace: default}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: peer}
  ports:
  - {name: http, port: 80}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: default, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sh", "-c", "mkdir -p /www && exec httpd -f -p 80 -h /www"]
---
apiVersion: v1
kind: Pod
metadata: {name: peer-0, namespace: default, labels: {app: peer}}
spec:
  hostname: peer-0
  subdomain: peers
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: weft.local/busybox:1.36
    command: ["sleep", "3600"]
    readinessProbe:
      tcpSocket: {port: 80}
      periodSeconds: 1
"#,
    )?;
    wait_ready(&c, "default", &["db-0"])?;
    let (db_ip, _) = pod_net(&c, "default", "db-0")?;
    until_every_node(&c, "db-0.db.default.svc.cluster.local", "A", |o| {
        o.contains(&format!("A\t{db_ip}"))
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let peer_ip = loop {
        if let Ok((ip, _)) = pod_net(&c, "default", "peer-0") {
            break ip;
        }
        ensure!(Instant::now() < deadline, "peer-0 never got an address");
        std::thread::sleep(Duration::from_millis(300));
    };
    until_every_node(&c, "peer-0.peers.default.svc.cluster.local", "A", |o| {
        o.contains(&format!("A\t{peer_ip}"))
    })?;
    let peer = c.get_json(&["pod", "peer-0"])?;
    ensure!(
        !pod_ready(&peer),
        "peer-0 is not ready, yet published: {peer}"
    );

    // IPv6 endpoints (a headless Service with a slice of its own) answer
    // AAAA, and only AAAA.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: six, namespace: default}
spec:
  clusterIP: None
  ports:
  - {name: http, port: 80}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: six-1
  namespace: default
  labels: {kubernetes.io/service-name: six}
addressType: IPv6
ports:
- {name: http, port: 80, protocol: TCP}
endpoints:
- addresses: ["fd00:244::5"]
  hostname: six-0
"#,
    )?;
    until_every_node(&c, "six.default.svc.cluster.local", "AAAA", |o| {
        o.contains("AAAA\tfd00:244::5")
    })?;
    let out = dig(
        &c,
        &c1_ns,
        gateway(&c, &n1)?,
        &["six-0.six.default.svc.cluster.local", "A"],
    )?;
    ensure!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "no A for an IPv6 endpoint: {out}"
    );

    // A Service created, changed and deleted is answered on every node.
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80}\n",
    )?;
    let fresh_vip = c.get_json(&["service", "fresh"])?["spec"]["clusterIP"]
        .as_str()
        .context("clusterIP")?
        .to_string();
    let created = until_every_node(&c, "fresh.default.svc.cluster.local", "A", |o| {
        o.contains("status: NOERROR") && o.contains(&fresh_vip)
    })?;
    c.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: fresh, namespace: default}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 8080, targetPort: 80}\n",
    )?;
    let changed = until_every_node(
        &c,
        "_http._tcp.fresh.default.svc.cluster.local",
        "SRV",
        |o| o.contains(" 8080 fresh.default.svc.cluster.local."),
    )?;
    c.weft(&["delete", "service", "fresh"])?;
    let deleted = until_every_node(&c, "fresh.default.svc.cluster.local", "A", |o| {
        o.contains("status: NXDOMAIN")
    })?;
    println!(
        "visible on every node after: created {created:?}, changed {changed:?}, deleted {deleted:?}"
    );
    Ok(())
}

/// One pod floods its node's DNS as fast as it can, over UDP for 5 s and
/// then with queries pipelined on 8 TCP connections for 5 s, while another
/// asks every 20 ms and waits for each answer: the flood is held to
/// --dns-rate-limit at the flooding pod's veth and counted, and the other
/// pod loses no more than 1% of its queries.
#[test]
fn one_pods_dns_flood_costs_the_others_nothing() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let spec = ClusterSpec::new(1);
    let c = rt.block_on(Cluster::up(spec, |_| {}))?;
    let n1 = c.lab.node("n1").clone();
    c.apply(&format!(
        "{}---\n{}",
        pod("default", "flooder", "n1", "app: f"),
        pod("default", "victim", "n1", "app: v")
    ))?;
    wait_ready(&c, "default", &["flooder", "victim"])?;
    let server = std::net::SocketAddr::new(gateway(&c, &n1)?.into(), 53);
    let (_, flood_ns) = pod_net(&c, "default", "flooder")?;
    let (_, victim_ns) = pod_net(&c, "default", "victim")?;
    // A name of the zone itself, answered from memory (a Service name
    // would do as well; a missing one would be tried upstream through the
    // search-path shortcut, and this lab has no upstream).
    let name = "dns-version.cluster.local";
    let limited = || -> Result<u64> {
        let stats: Value =
            serde_json::from_str(&c.weft(&["dns", "stats", "--node", "n1", "-o", "json"])?)?;
        stats["n1"]["ratelimited"].as_u64().context("ratelimited")
    };

    // UDP, one thread as fast as it can.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, ns2) = (stop.clone(), flood_ns.clone());
    let flood = std::thread::spawn(move || {
        weft_agent::netlink::netns::run_in(Some(&ns2), || -> Result<u64> {
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(server)?;
            let q = weft_tests::probe::dns_query(1, name);
            let mut sent = 0u64;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                // A full send buffer only slows the flood.
                if s.send(&q).is_ok() {
                    sent += 1;
                }
            }
            Ok(sent)
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let (asked, lost) = weft_tests::probe::dns_loss(&victim_ns, server, name, 5)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flooder panicked"))???;
    let after_udp = limited()?;
    eprintln!(
        "UDP flood: {sent} queries sent, {after_udp} dropped at the veth; victim lost {lost} of {asked}"
    );
    ensure!(
        sent > 50_000,
        "the flood was too slow to test anything: {sent}"
    );
    ensure!(
        after_udp > sent / 2,
        "the limit held back only {after_udp} of {sent}"
    );
    ensure!(
        u64::from(lost) * 100 <= u64::from(asked),
        "UDP flood: the victim lost {lost} of {asked} queries"
    );

    // TCP: 8 connections, each writing pipelined queries (2-byte length,
    // then the message) without reading the answers.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut floods = Vec::new();
    for _ in 0..8 {
        let (stop2, ns2) = (stop.clone(), flood_ns.clone());
        floods.push(std::thread::spawn(move || {
            weft_agent::netlink::netns::run_in(Some(&ns2), || -> Result<u64> {
                use std::io::Write as _;
                let mut s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
                s.set_write_timeout(Some(Duration::from_millis(200)))?;
                let q = weft_tests::probe::dns_query(1, name);
                let mut one = (q.len() as u16).to_be_bytes().to_vec();
                one.extend_from_slice(&q);
                let batch: Vec<u8> = one.repeat(256);
                let mut sent = 0u64;
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    // A full window (the limit at work) times the write out.
                    if let Ok(n) = s.write(&batch) {
                        sent += (n / one.len()) as u64;
                    }
                }
                Ok(sent)
            })
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (asked, lost) = weft_tests::probe::dns_loss(&victim_ns, server, name, 5)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut sent = 0;
    for f in floods {
        sent += f
            .join()
            .map_err(|_| anyhow::anyhow!("flooder panicked"))???;
    }
    let after_tcp = limited()?;
    eprintln!(
        "TCP flood: {sent} queries written, {} segments dropped at the veth; victim lost {lost} of {asked}",
        after_tcp - after_udp
    );
    ensure!(
        after_tcp > after_udp,
        "the pipelined TCP flood was never held back"
    );
    ensure!(
        u64::from(lost) * 100 <= u64::from(asked),
        "TCP flood: the victim lost {lost} of {asked} queries"
    );
    Ok(())
}

/// Pods come and go on a node for 30 s while another pod on it asks the
/// node's DNS every 20 ms and fetches a page from a pod on another node
/// every 20 ms: its gateway never moves (the bridge's MAC is its own, not
/// a port's), so not one query or request is lost.
#[test]
fn pod_churn_never_moves_the_gateway() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let c = rt.block_on(Cluster::up(ClusterSpec::new(2), |_| {}))?;
    let n1 = c.lab.node("n1").clone();
    c.apply(&format!(
        "{}---\n{}",
        pod("default", "prober", "n1", "app: p"),
        pod("default", "far", "n2", "app: f")
    ))?;
    wait_ready(&c, "default", &["prober", "far"])?;
    let dns = std::net::SocketAddr::new(gateway(&c, &n1)?.into(), 53);
    let (far_ip, _) = pod_net(&c, "default", "far")?;
    let (_, prober_ns) = pod_net(&c, "default", "prober")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let probe = std::thread::spawn(move || {
        weft_agent::netlink::netns::run_in(Some(&prober_ns), || -> Result<(u32, Vec<String>)> {
            use std::io::{Read as _, Write as _};
            let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dns)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut failures = Vec::new();
            let mut rounds = 0u32;
            let mut buf = [0u8; 512];
            let start = Instant::now();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                rounds += 1;
                let id = rounds as u16;
                s.send(&weft_tests::probe::dns_query(
                    id,
                    "dns-version.cluster.local",
                ))?;
                loop {
                    match s.recv(&mut buf) {
                        Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => break,
                        Ok(_) => {}
                        Err(e) => {
                            failures.push(format!("query {id} at {:?}: {e}", start.elapsed()));
                            break;
                        }
                    }
                }
                let page = (|| -> std::io::Result<String> {
                    let mut t = std::net::TcpStream::connect_timeout(
                        &std::net::SocketAddr::new(far_ip.into(), 80),
                        Duration::from_secs(2),
                    )?;
                    t.set_read_timeout(Some(Duration::from_secs(2)))?;
                    t.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut out = String::new();
                    t.read_to_string(&mut out)?;
                    Ok(out)
                })();
                match page {
                    Ok(p) if p.contains("far") => {}
                    Ok(p) => failures.push(format!("request {rounds}: {p:?}")),
                    Err(e) => {
                        failures.push(format!("request {rounds} at {:?}: {e}", start.elapsed()))
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok((rounds, failures))
        })
    });
    // Churn: pods made on n1 and deleted again, their veths joining and
    // leaving the bridge the prober's gateway is on.
    let start = Instant::now();
    let mut made = 0;
    while start.elapsed() < Duration::from_secs(30) {
        let name = format!("churn{made}");
        c.apply(&pod("default", &name, "n1", "app: churn"))?;
        wait_ready(&c, "default", &[&name])?;
        c.weft(&["delete", "pod", &name, "--grace-period=0", "--force"])?;
        made += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, failures) = probe
        .join()
        .map_err(|_| anyhow::anyhow!("prober panicked"))???;
    eprintln!("{made} pods made and deleted on n1; {rounds} rounds of a query and a request");
    ensure!(made >= 5, "only {made} pods came and went in 30 s");
    ensure!(rounds > 200, "only {rounds} rounds");
    ensure!(
        failures.is_empty(),
        "{} of {rounds} rounds failed: {failures:?}",
        failures.len()
    );
    Ok(())
}
