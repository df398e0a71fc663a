//! The agent's DNS server (hickory-server), asked with real `dig` and with
//! a hickory client inside network namespaces of their own: the
//! specification checklist, forwarding to an upstream with caching, the
//! search-path shortcut, several queries in flight on one TCP connection,
//! and malformed, truncated and oversized queries.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    process::Command,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};
use weft_agent::{
    dns::{
        forward::{Forwarder, Upstreams},
        records::Zone,
        server::{Handler, Options, Stats},
    },
    netlink::{Netlink, netns},
};
use weft_tests::upstream;

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

/// A DNS server on 127.0.0.1:53 of a namespace of its own, and, with
/// `upstream`, the stand-in upstream on 127.0.0.2:53 there.
struct Lab {
    ns: Ns,
    zone: Arc<RwLock<Zone>>,
    stats: Arc<Stats>,
    handler: Handler,
    upstream: Option<upstream::Counts>,
    rt: tokio::runtime::Runtime,
}

const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 53);
const UPSTREAM: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), 53);

fn start(tag: &str, with_upstream: bool, search_shortcut: bool) -> Result<Lab> {
    let ns = Ns(format!("weft-dns{tag}-{}", std::process::id()));
    netns::create(&ns.0)?;
    // The runtime's threads live in the namespace, so that the forwarder's
    // sockets are made there.
    let path = netns::path(&ns.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            let f = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        })
        .build()?;
    rt.block_on(async { Netlink::open(Some(&ns.0))?.loopback_up().await })?;
    let upstream = if with_upstream {
        let _guard = rt.enter();
        Some(upstream::start(&ns.0, UPSTREAM)?)
    } else {
        None
    };
    let (udp, tcp) = netns::run_in(Some(&ns.0), move || -> std::io::Result<_> {
        let u = std::net::UdpSocket::bind(SERVER)?;
        u.set_nonblocking(true)?;
        let t = std::net::TcpListener::bind(SERVER)?;
        t.set_nonblocking(true)?;
        Ok((u, t))
    })??;
    // The "pod" dig asks from: 127.0.0.1 is a local pod of namespace team.
    let zone = Arc::new(RwLock::new(weft_dns::testing::sample_zone(
        Ipv4Addr::LOCALHOST,
    )));
    let forwarder = if with_upstream {
        // The resolver's sockets are made in the namespace it runs in.
        let _guard = rt.enter();
        Some(Forwarder::new(
            &Upstreams::Servers(vec![SocketAddr::V4(UPSTREAM)]),
            100,
        )?)
    } else {
        None
    };
    let handler = Handler::new(
        zone.clone(),
        Options {
            forwarder,
            search_shortcut,
        },
    );
    let stats = handler.stats();
    let h = handler.clone();
    rt.spawn(async move {
        let udp = tokio::net::UdpSocket::from_std(udp).expect("udp");
        let tcp = tokio::net::TcpListener::from_std(tcp).expect("tcp");
        let _ = weft_agent::dns::server::serve(h, vec![udp], tcp).await;
    });
    std::thread::sleep(Duration::from_millis(100));
    Ok(Lab {
        ns,
        zone,
        stats,
        handler,
        upstream,
        rt,
    })
}

impl Lab {
    fn dig(&self, args: &[&str]) -> Result<String> {
        dig_from(&self.ns.0, "127.0.0.1", args)
    }

    fn synced(&self) {
        let mut z = self.zone.write().expect("zone");
        z.set_synced();
        z.set_pods_synced();
    }
}

/// `dig @127.0.0.1` in namespace `ns`, from source address `src`.
fn dig_from(ns: &str, src: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "dig",
            "@127.0.0.1",
            "-b",
            src,
            "+time=3",
            "+tries=1",
        ])
        .args(args)
        .output()
        .context("dig (bind9-dnsutils)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The specification checklist: name, type, response code, answers
/// (record data as text, sorted; `None`: not compared).
fn checklist() -> Vec<(
    &'static str,
    RecordType,
    ResponseCode,
    Option<Vec<&'static str>>,
)> {
    use RecordType as T;
    use ResponseCode as C;
    vec![
        (
            "web.default.svc.cluster.local.",
            T::A,
            C::NoError,
            Some(vec!["10.96.0.10"]),
        ),
        (
            "Web.DEFAULT.svc.Cluster.Local.",
            T::A,
            C::NoError,
            Some(vec!["10.96.0.10"]),
        ),
        (
            "web.default.svc.cluster.local.",
            T::AAAA,
            C::NoError,
            Some(vec![]),
        ),
        (
            "nope.default.svc.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "web.nons.svc.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "db.default.svc.cluster.local.",
            T::A,
            C::NoError,
            Some(vec!["10.244.1.5", "10.244.2.6"]),
        ),
        (
            "db-0.db.default.svc.cluster.local.",
            T::A,
            C::NoError,
            Some(vec!["10.244.1.5"]),
        ),
        (
            "db-2.db.default.svc.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "empty.default.svc.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            T::SRV,
            C::NoError,
            Some(vec!["0 100 80 web.default.svc.cluster.local."]),
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local.",
            T::SRV,
            C::NoError,
            Some(vec![
                "0 50 5432 db-0.db.default.svc.cluster.local.",
                "0 50 5433 10-244-2-6.db.default.svc.cluster.local.",
            ]),
        ),
        (
            "_http._udp.web.default.svc.cluster.local.",
            T::SRV,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "_tcp.web.default.svc.cluster.local.",
            T::A,
            C::NoError,
            Some(vec![]),
        ),
        ("svc.cluster.local.", T::A, C::NoError, Some(vec![])),
        ("default.svc.cluster.local.", T::A, C::NoError, Some(vec![])),
        ("pod.cluster.local.", T::A, C::NoError, Some(vec![])),
        (
            "10-244-1-5.default.pod.cluster.local.",
            T::A,
            C::NoError,
            Some(vec!["10.244.1.5"]),
        ),
        (
            "10-244-1-5.other.pod.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "10-244-9-9.default.pod.cluster.local.",
            T::A,
            C::NXDomain,
            Some(vec![]),
        ),
        (
            "10.0.96.10.in-addr.arpa.",
            T::PTR,
            C::NoError,
            Some(vec!["web.default.svc.cluster.local."]),
        ),
        (
            "5.1.244.10.in-addr.arpa.",
            T::PTR,
            C::NoError,
            Some(vec!["db-0.db.default.svc.cluster.local."]),
        ),
        (
            "search.ext.svc.cluster.local.",
            T::CNAME,
            C::NoError,
            Some(vec!["www.example.org."]),
        ),
        (
            "dns-version.cluster.local.",
            T::TXT,
            C::NoError,
            Some(vec!["1.1.0"]),
        ),
        ("cluster.local.", T::SOA, C::NoError, None),
    ]
}

/// Asks with a hickory client (hickory-proto messages over UDP).
fn hickory_ask(ns: &str, name: &str, qtype: RecordType) -> Result<Message> {
    let sock = netns::run_in(Some(ns), || std::net::UdpSocket::bind("127.0.0.1:0"))??;
    sock.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut m = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.edns = Some(e);
    sock.send_to(&m.to_vec()?, SERVER)?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf)?;
    let r = Message::from_vec(&buf[..n])?;
    ensure!(r.metadata.id == 0x5eed, "answer to another id");
    Ok(r)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Record data as dig and hickory both print it (dig quotes TXT).
fn rdata_text(s: &str) -> String {
    s.trim_matches('"').to_string()
}

#[test]
fn the_specification_checklist_with_dig_and_a_hickory_client() -> Result<()> {
    let lab = start("c", false, true)?;
    // Before the first sync: SERVFAIL, not a denial.
    let out = lab.dig(&["web.default.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: SERVFAIL"), "{out}");
    lab.synced();

    for (name, qtype, code, want) in checklist() {
        // dig
        let out = lab.dig(&["+noall", "+answer", "+comments", name, &qtype.to_string()])?;
        let status = format!("status: {}", format!("{code:?}").to_uppercase());
        ensure!(
            out.contains(&status),
            "dig {name} {qtype}: want {status}: {out}"
        );
        let answers: Vec<String> = out
            .lines()
            .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                rdata_text(&f[4..].join(" "))
            })
            .collect();
        if let Some(want) = &want {
            let want: Vec<String> = want.iter().map(|s| (*s).to_string()).collect();
            ensure!(sorted(answers) == sorted(want), "dig {name} {qtype}: {out}");
        }
        if code == ResponseCode::NXDomain || want.as_ref().is_some_and(Vec::is_empty) {
            ensure!(
                out.contains("AUTHORITY: 1"),
                "negative answers carry the SOA: {name} {qtype}: {out}"
            );
        }
        // hickory client
        let r = hickory_ask(&lab.ns.0, name, qtype)?;
        ensure!(
            r.metadata.response_code == code,
            "hickory {name} {qtype}: {:?}",
            r.metadata.response_code
        );
        if let Some(want) = &want {
            let got: Vec<String> = r
                .answers
                .iter()
                .map(|a| rdata_text(&a.data.to_string()))
                .collect();
            let want: Vec<String> = want.iter().map(|s| (*s).to_string()).collect();
            ensure!(
                sorted(got) == sorted(want),
                "hickory {name} {qtype}: {:?}",
                r.answers
            );
            // Names answer as asked, case included.
            ensure!(
                r.answers.iter().all(|a| a.name.to_ascii() == name),
                "hickory {name}: {:?}",
                r.answers
            );
        } else {
            ensure!(!r.answers.is_empty(), "hickory {name} {qtype}: no answer");
        }
        ensure!(r.metadata.authoritative, "{name}: authoritative");
    }

    // TCP; truncation of 60 addresses over plain UDP, and whole over TCP
    // and with a large EDNS buffer.
    let out = lab.dig(&["+tcp", "+short", "web.default.svc.cluster.local", "A"])?;
    ensure!(out.trim() == "10.96.0.10", "over TCP: {out}");
    let out = lab.dig(&["+noedns", "+ignore", "many.default.svc.cluster.local", "A"])?;
    ensure!(out.contains(" tc"), "TC bit over plain UDP: {out}");
    let out = lab.dig(&["+tcp", "+short", "many.default.svc.cluster.local", "A"])?;
    ensure!(out.lines().count() == 60, "60 over TCP: {out}");
    let out = lab.dig(&[
        "+bufsize=4096",
        "+short",
        "many.default.svc.cluster.local",
        "A",
    ])?;
    ensure!(out.lines().count() == 60, "60 with EDNS: {out}");

    // EDNS versions above 0, other classes, zone transfers and meta types.
    let out = lab.dig(&[
        "+edns=1",
        "+noednsnegotiation",
        "web.default.svc.cluster.local",
        "A",
    ])?;
    ensure!(out.contains("status: BADVERS"), "EDNS version 1: {out}");
    let out = lab.dig(&["-c", "CH", "web.default.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: REFUSED"), "class CH: {out}");
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let r = hickory_ask(&lab.ns.0, "cluster.local.", qtype)?;
        ensure!(
            r.metadata.response_code == ResponseCode::Refused,
            "{qtype}: {:?}",
            r.metadata.response_code
        );
    }
    let r = hickory_ask(&lab.ns.0, "cluster.local.", RecordType::Unknown(253))?;
    ensure!(
        r.metadata.response_code == ResponseCode::NotImp,
        "MAILB: {:?}",
        r.metadata.response_code
    );

    // Without an upstream, other names are refused, not denied.
    let out = lab.dig(&["example.org", "A"])?;
    ensure!(out.contains("status: REFUSED"), "{out}");
    Ok(())
}

#[test]
fn forwarding_caches_and_the_search_path_shortcut() -> Result<()> {
    let lab = start("f", true, true)?;
    lab.synced();
    let up = lab.upstream.clone().context("upstream")?;

    // Forwarded, then answered from the cache.
    let out = lab.dig(&["example.org", "A"])?;
    ensure!(
        out.contains("status: NOERROR") && out.contains("IN\tA\t127.0.0.1") && out.contains(" ra"),
        "{out}"
    );
    let out = lab.dig(&["+short", "EXAMPLE.org", "A"])?;
    ensure!(out.trim() == "127.0.0.1", "{out}");
    ensure!(
        upstream::count(&up, "example.org", "A") == 1,
        "cached: {:?}",
        up
    );
    // A CNAME chain comes whole; an upstream NXDOMAIN comes with its SOA.
    let out = lab.dig(&["+short", "www.example.org", "A"])?;
    ensure!(out.trim() == "example.org.\n127.0.0.1", "{out}");
    let out = lab.dig(&["nope.example.org", "A"])?;
    ensure!(
        out.contains("status: NXDOMAIN") && out.contains("hostmaster.example.org"),
        "{out}"
    );
    let out = lab.dig(&["example.org", "AAAA"])?;
    ensure!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    // An ExternalName is followed upstream.
    let out = lab.dig(&["+short", "search.ext.svc.cluster.local", "A"])?;
    ensure!(
        out.trim() == "www.example.org.\nexample.org.\n127.0.0.1",
        "ExternalName chased: {out}"
    );

    // An ExternalName inside the zone is answered from it.
    let out = lab.dig(&["+short", "alias.ext.svc.cluster.local", "A"])?;
    ensure!(
        out.trim() == "web.default.svc.cluster.local.\n10.96.0.10",
        "ExternalName inside the zone: {out}"
    );

    // The shortcut: the local pod (127.0.0.1, namespace team) asks for
    // example.org under its first search domain and gets the final answer.
    let out = lab.dig(&["example.org.team.svc.cluster.local", "A"])?;
    ensure!(
        out.contains("status: NOERROR")
            && out.contains("CNAME\texample.org.")
            && out.contains("IN\tA\t127.0.0.1"),
        "shortcut to an outside name: {out}"
    );
    let out = lab.dig(&["+short", "web.default.team.svc.cluster.local", "A"])?;
    ensure!(
        out.trim() == "web.default.svc.cluster.local.\n10.96.0.10",
        "shortcut to a Service of another namespace: {out}"
    );
    let out = lab.dig(&["nope.example.org.team.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: NXDOMAIN"), "nothing found: {out}");
    // A name that exists without the type ends the walk (NODATA), as the
    // pod's own search would end there: nothing goes upstream.
    let out = lab.dig(&["web.default.team.svc.cluster.local", "AAAA"])?;
    ensure!(
        out.contains("status: NOERROR")
            && out.contains("CNAME\tweb.default.svc.cluster.local.")
            && !out.contains("AAAA\t"),
        "shortcut to NODATA: {out}"
    );
    ensure!(
        upstream::count(&up, "web.default", "AAAA") == 0,
        "an existing cluster name walked on upstream: {up:?}"
    );
    // A name of the pod's own namespace is answered as itself.
    let out = lab.dig(&["+short", "web.team.svc.cluster.local", "A"])?;
    ensure!(out.trim().is_empty(), "{out}");
    // Not from a local pod, or not under its namespace: no shortcut.
    let out = dig_from(
        &lab.ns.0,
        "127.0.0.3",
        &["example.org.team.svc.cluster.local", "A"],
    )?;
    ensure!(out.contains("status: NXDOMAIN"), "not a pod: {out}");
    let out = lab.dig(&["example.org.default.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: NXDOMAIN"), "another namespace: {out}");
    ensure!(
        lab.stats
            .shortcut
            .load(std::sync::atomic::Ordering::Relaxed)
            == 3,
        "three shortcuts: {:?}",
        lab.stats
    );

    // Names under the cluster zone are never forwarded.
    ensure!(
        upstream::count_under(&up, "cluster.local") == 0,
        "cluster names leaked upstream: {:?}",
        up
    );

    // Switched off: the same query is a plain miss.
    let off = start("o", true, false)?;
    off.synced();
    let out = off.dig(&["example.org.team.svc.cluster.local", "A"])?;
    ensure!(out.contains("status: NXDOMAIN"), "switched off: {out}");
    Ok(())
}

#[test]
fn an_upstream_that_never_answers_gives_servfail_before_clients_give_up() -> Result<()> {
    let lab = start("s", false, true)?;
    lab.synced();
    // A resolver that takes queries and never answers (UDP), with nothing
    // on its TCP port.
    let blackhole = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 4), 53);
    let _sink = netns::run_in(Some(&lab.ns.0), move || {
        std::net::UdpSocket::bind(blackhole)
    })??;
    let forwarder = {
        let _g = lab.rt.enter();
        Forwarder::new(&Upstreams::Servers(vec![SocketAddr::V4(blackhole)]), 10)?
    };
    let handler = Handler::new(
        lab.zone.clone(),
        Options {
            forwarder: Some(forwarder),
            search_shortcut: true,
        },
    );
    let t = std::time::Instant::now();
    // Spawned: the runtime's threads are in the namespace, this one is not.
    let reply = lab.rt.block_on(lab.rt.spawn(async move {
        handler
            .answer(
                Ipv4Addr::new(127, 0, 0, 3).into(),
                &Name::from_ascii("example.org.").expect("name"),
                RecordType::A,
            )
            .await
    }))?;
    let took = t.elapsed();
    ensure!(reply.code == ResponseCode::ServFail, "{reply:?}");
    // glibc gives up on a server after 5 s.
    ensure!(
        took < Duration::from_millis(4500),
        "SERVFAIL after {took:?}"
    );
    println!("SERVFAIL from a silent upstream after {took:?}");
    Ok(())
}

/// One DNS message over TCP: the two-byte length, then the message.
fn tcp_frame(m: &Message) -> Result<Vec<u8>> {
    let body = m.to_vec()?;
    let mut out = u16::try_from(body.len())?.to_be_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

fn query(id: u16, name: &str, qtype: RecordType) -> Result<Message> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name)?, qtype));
    Ok(m)
}

#[test]
fn tcp_pipelining_and_malformed_queries() -> Result<()> {
    let lab = start("t", true, true)?;
    lab.synced();
    let ns = lab.ns.0.clone();

    // Several queries in flight on one connection, a slow forwarded one
    // first: each gets its answer, and the slow one holds up none of the
    // others.
    let mut conn = netns::run_in(Some(&ns), || std::net::TcpStream::connect(SERVER))??;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut burst = Vec::new();
    let sent = std::time::Instant::now();
    for (id, name) in [
        (1, "slow.example.org."),
        (2, "web.default.svc.cluster.local."),
        (3, "nope.default.svc.cluster.local."),
        (4, "db.default.svc.cluster.local."),
    ] {
        burst.extend(tcp_frame(&query(id, name, RecordType::A)?)?);
    }
    conn.write_all(&burst)?;
    let mut got = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..4 {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len)?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut body)?;
        let m = Message::from_vec(&body)?;
        got.insert(m.metadata.id, (m.metadata.response_code, m.answers.len()));
        order.push((m.metadata.id, sent.elapsed()));
    }
    ensure!(
        order
            .iter()
            .take(3)
            .all(|(id, t)| *id != 1 && *t < upstream::SLOW)
            && order[3].0 == 1,
        "the slow answer came last, the others without waiting for it: {order:?}"
    );
    ensure!(
        got == BTreeMap::from([
            (1, (ResponseCode::NoError, 1)),
            (2, (ResponseCode::NoError, 1)),
            (3, (ResponseCode::NXDomain, 0)),
            (4, (ResponseCode::NoError, 2)),
        ]),
        "pipelined answers: {got:?}"
    );

    // Malformed, truncated and oversized messages over UDP.
    let good = query(7, "web.default.svc.cluster.local.", RecordType::A)?.to_vec()?;
    let mut two_questions = query(8, "web.default.svc.cluster.local.", RecordType::A)?;
    two_questions.add_query(Query::query(
        Name::from_ascii("x.cluster.local.")?,
        RecordType::A,
    ));
    let mut bad_label = good.clone();
    bad_label[12] = 0xc0; // a compression pointer where the name starts
    let mut oversized = good.clone();
    oversized.extend(std::iter::repeat_n(0u8, 60_000));
    let junk: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0],
        vec![0xff; 12],
        good[..good.len() - 3].to_vec(),
        bad_label,
        two_questions.to_vec()?,
        vec![0x41; 3000],
        oversized,
    ];
    let udp = netns::run_in(Some(&ns), || std::net::UdpSocket::bind("127.0.0.1:0"))??;
    for j in &junk {
        udp.send_to(j, SERVER)?;
    }
    // Over TCP: a short frame, a frame that claims more than is sent and
    // is held open, and a maximal frame of junk.
    let mut c1 = netns::run_in(Some(&ns), || std::net::TcpStream::connect(SERVER))??;
    c1.write_all(&[0, 5, 1, 2, 3, 4, 5])?;
    let mut c2 = netns::run_in(Some(&ns), || std::net::TcpStream::connect(SERVER))??;
    c2.write_all(&[0x40, 0, 1, 2, 3])?;
    let mut c3 = netns::run_in(Some(&ns), || std::net::TcpStream::connect(SERVER))??;
    let mut max = vec![0xff, 0xff];
    max.extend(vec![0x5a; 65_535]);
    let _ = c3.write_all(&max);

    // None of it wedged the server: it answers over UDP and TCP at once.
    let out = lab.dig(&["+short", "web.default.svc.cluster.local", "A"])?;
    ensure!(out.trim() == "10.96.0.10", "after junk, UDP: {out}");
    let out = lab.dig(&["+tcp", "+short", "web.default.svc.cluster.local", "A"])?;
    ensure!(out.trim() == "10.96.0.10", "after junk, TCP: {out}");
    drop((c1, c2, c3));
    Ok(())
}

/// The request path on messages derived from valid queries by random
/// changes (a deterministic generator, so a failure repeats): every
/// message with a whole header gets an answer (FORMERR if nothing else)
/// that decodes, with its id.
/// `fuzz/` runs the same path under libFuzzer.
#[test]
fn the_request_path_survives_mutated_messages() -> Result<()> {
    let lab = start("m", false, true)?;
    lab.synced();
    let seeds: Vec<Vec<u8>> = [
        ("web.default.svc.cluster.local.", RecordType::A),
        ("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV),
        ("5.1.244.10.in-addr.arpa.", RecordType::PTR),
        ("many.default.svc.cluster.local.", RecordType::A),
        ("example.org.team.svc.cluster.local.", RecordType::AAAA),
    ]
    .iter()
    .map(|(n, t)| query(9, n, *t).and_then(|m| Ok(m.to_vec()?)))
    .collect::<Result<_>>()?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let src: SocketAddr = "127.0.0.1:5353".parse()?;
    let mut decoded = 0;
    for i in 0..20_000u32 {
        let mut m = seeds[i as usize % seeds.len()].clone();
        for _ in 0..1 + next() % 4 {
            let r = next();
            let at = usize::try_from(r >> 32).unwrap_or(0) % (m.len() + 1);
            match r % 4 {
                0 if at < m.len() => m[at] = (r >> 8) as u8,
                1 => m.insert(at, (r >> 16) as u8),
                2 if at < m.len() => {
                    m.remove(at);
                }
                _ => m.truncate(at),
            }
        }
        let tcp = i % 2 == 0;
        let Some(out) = lab.rt.block_on(lab.handler.handle_bytes(&m, src, tcp)) else {
            continue;
        };
        decoded += 1;
        let reply = Message::from_vec(&out).context("the answer decodes")?;
        ensure!(
            m.len() < 2 || reply.metadata.id == u16::from_be_bytes([m[0], m[1]]),
            "answer for another id"
        );
        ensure!(
            tcp || out.len() <= 512 || reply.edns.is_some(),
            "UDP answer too large"
        );
    }
    // Only messages cut below 12 bytes go unanswered.
    ensure!(decoded > 15_000, "only {decoded} of 20 000 answered");
    Ok(())
}
