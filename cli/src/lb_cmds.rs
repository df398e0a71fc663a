//! `weft lb`: what the nodes' eBPF load-balancers hold, and `weft dns
//! stats`: what their DNS servers did, read from the agents through the API
//! server's node proxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use weft_api::client::Client;
use weft_api::debug::dns::DnsStats;
use weft_api::debug::lb::{Snapshot, Trace};

/// Writes to stdout; a reader that went away (`| head`) ends the output
/// quietly instead of with a panic.
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// The nodes to ask: `node`, or every node.
async fn nodes(c: &Client, node: Option<&str>) -> Result<Vec<String>> {
    if node.is_some_and(str::is_empty) {
        bail!("--node needs a node name (see `weft get nodes`)");
    }
    if let Some(n) = node {
        c.get(&format!("/api/v1/nodes/{n}"))
            .await
            .with_context(|| format!("node {n}"))?;
        return Ok(vec![n.to_string()]);
    }
    let list = c.get("/api/v1/nodes").await?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
        .collect())
}

/// `weft lb show [--node NODE] [SERVICE]`.
pub async fn show(c: &Client, node: Option<&str>, service: Option<&str>, ns: &str) -> Result<u8> {
    let want = service.map(|s| {
        if s.contains('/') {
            s.to_string()
        } else {
            format!("{ns}/{s}")
        }
    });
    let mut found = false;
    let mut failed = false;
    for n in nodes(c, node).await? {
        let snap: Snapshot = match c.get(&format!("/api/v1/nodes/{n}/proxy/lb/services")).await {
            Ok(v) => serde_json::from_value(v).context("the agent's answer")?,
            Err(e) => {
                eprintln!("node {n}: {e}");
                failed = true;
                continue;
            }
        };
        let mut here = false;
        let text = render(&n, &snap, want.as_deref(), &mut here);
        // Asked for one Service: only the nodes that have it.
        if want.is_none() || here {
            out(&text);
        }
        found |= here;
    }
    if let Some(w) = &want
        && !found
        && !failed
    {
        bail!("no node load-balances {w} (no such Service, or it has no ClusterIP)");
    }
    Ok(u8::from(failed))
}

fn render(node: &str, snap: &Snapshot, want: Option<&str>, found: &mut bool) -> String {
    let mut out = format!("node {node}\n");
    for (name, fronts) in &snap.services {
        if want.is_some_and(|w| w != name) {
            continue;
        }
        *found = true;
        for f in fronts {
            let port_name = if f.port_name.is_empty() {
                String::new()
            } else {
                format!(" ({})", f.port_name)
            };
            let dropped = if f.dropped > 0 {
                format!("  DROPPED {} (no free NodePort source port)", f.dropped)
            } else {
                String::new()
            };
            let affinity = f
                .affinity_timeout
                .map(|t| format!("  affinity ClientIP {t}s"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {name}  {}:{}/{}{port_name}  {:?}  table {}  connections {}  packets {}  bytes {}  refused {}{dropped}{affinity}",
                f.address,
                f.port,
                f.protocol,
                f.scope,
                f.table_size,
                f.connections,
                f.packets,
                f.bytes,
                f.refused,
            );
            if f.backends.is_empty() {
                let _ = writeln!(out, "    (no backends: connections are refused)");
            }
            for b in &f.backends {
                let _ = writeln!(
                    out,
                    "    {:<21} {:<11} {:>6} slots  id {}",
                    format!("{}:{}", b.addr, b.port),
                    b.state,
                    b.slots,
                    b.id
                );
            }
        }
    }
    let maps: Vec<String> = snap
        .maps
        .iter()
        .map(|m| match m.evicted {
            Some(n) => format!("{} {}/{} ({n} evicted)", m.name, m.used, m.capacity),
            None => format!("{} {}/{}", m.name, m.used, m.capacity),
        })
        .collect();
    let _ = writeln!(out, "  maps: {}", maps.join(", "));
    for (what, why) in &snap.problems {
        let _ = writeln!(out, "  NOT INSTALLED {what}: {why}");
    }
    out
}

/// Splits `IP[:PORT]`.
fn parse_src(s: &str) -> Result<(std::net::Ipv4Addr, Option<u16>)> {
    let (ip, port) = match s.split_once(':') {
        Some((ip, port)) => (ip, Some(port)),
        None => (s, None),
    };
    let ip = ip
        .parse()
        .with_context(|| format!("source {s:?}: an IPv4 address, optionally with :PORT"))?;
    let port = port
        .map(|p| p.parse::<u16>())
        .transpose()
        .with_context(|| format!("source {s:?}: the port must be 0-65535"))?;
    Ok((ip, port))
}

/// Splits `IP:PORT/PROTO`.
fn parse_dst(s: &str) -> Result<(std::net::Ipv4Addr, u16, String)> {
    let usage = || format!("destination {s:?}: write IP:PORT/PROTO, e.g. 10.96.0.10:80/TCP");
    let (addr, proto) = s.split_once('/').with_context(usage)?;
    let proto = proto.to_ascii_uppercase();
    if proto != "TCP" && proto != "UDP" {
        bail!("destination {s:?}: the protocol must be TCP or UDP");
    }
    let (ip, port) = addr.split_once(':').with_context(usage)?;
    let ip = ip.parse().with_context(usage)?;
    let port = port.parse::<u16>().with_context(usage)?;
    Ok((ip, port, proto))
}

/// `weft lb trace --node NODE SRC_IP[:PORT] DST_IP:PORT/PROTO`.
pub async fn trace(c: &Client, node: &str, src: &str, dst: &str) -> Result<u8> {
    if node.is_empty() {
        bail!("--node needs a node name (see `weft get nodes`)");
    }
    let (src_ip, sport) = parse_src(src)?;
    let (dst_ip, port, proto) = parse_dst(dst)?;
    c.get(&format!("/api/v1/nodes/{node}"))
        .await
        .with_context(|| format!("node {node}"))?;
    let mut path = format!(
        "/api/v1/nodes/{node}/proxy/lb/trace?src={src_ip}&dst={dst_ip}&port={port}&proto={proto}"
    );
    if let Some(p) = sport {
        let _ = write!(path, "&sport={p}");
    }
    let t: Trace = serde_json::from_value(c.get(&path).await?).context("the agent's answer")?;
    out(&render_trace(node, &t));
    Ok(0)
}

fn render_trace(node: &str, t: &Trace) -> String {
    let mut out = format!("flow      {} on {node}\n", t.flow);
    if let Some(f) = &t.frontend {
        let _ = writeln!(out, "frontend  {f}");
    }
    let slot = t.slot.map(|s| format!(", slot {s}")).unwrap_or_default();
    match &t.backend {
        Some(b) => {
            let _ = writeln!(out, "backend   {b} ({}{slot})", t.verdict);
        }
        None => {
            let _ = writeln!(out, "verdict   {}", t.verdict);
        }
    }
    let _ = writeln!(out, "why       {}", t.explanation);
    if t.frontend.is_some() {
        let _ = writeln!(
            out,
            "path      the packet path (tc); pods' own sockets get their backend at connect(), by socket cookie, and are not tracked here"
        );
    }
    if !t.flows.is_empty() {
        let _ = writeln!(out, "tracked flows of this client to this frontend:");
        for f in &t.flows {
            let _ = writeln!(
                out,
                "  :{:<5} -> {}{}  idle {} ms",
                f.source_port,
                f.backend,
                if f.live { "" } else { " (backend gone)" },
                f.idle_ms
            );
        }
    }
    if !t.shares.is_empty() {
        let shares: Vec<String> = t.shares.iter().map(|(b, n)| format!("{b} {n}")).collect();
        let _ = writeln!(out, "slots     {}", shares.join(", "));
    }
    out
}

/// `weft dns stats [--node NODE] [-o json]`.
pub async fn dns_stats(c: &Client, node: Option<&str>, output: Option<&str>) -> Result<u8> {
    let mut failed = false;
    let mut all = BTreeMap::new();
    let mut rows = vec![
        ["NODE", "SERVING"]
            .into_iter()
            .chain(DnsStats::default().counters().map(|(name, _)| name))
            .map(str::to_ascii_uppercase)
            .collect::<Vec<_>>(),
    ];
    let mut problems = String::new();
    for n in nodes(c, node).await? {
        let got = match c.get(&format!("/api/v1/nodes/{n}/proxy/dns/stats")).await {
            Ok(v) => serde_json::from_value::<DnsStats>(v).context("the agent's answer"),
            Err(e) => Err(e.into()),
        };
        let v = match got {
            Ok(v) => v,
            Err(e) => {
                eprintln!("node {n}: {e:#}");
                failed = true;
                continue;
            }
        };
        let serving = if v.serving { "yes" } else { "no" };
        let mut row = vec![n.clone(), serving.to_string()];
        row.extend(v.counters().map(|(_, count)| count.to_string()));
        rows.push(row);
        if !v.problem.is_empty() {
            let _ = writeln!(problems, "node {n}: {}", v.problem);
        }
        all.insert(n, v);
    }
    if output == Some("json") {
        out(&format!("{}\n", serde_json::to_string(&all)?));
        return Ok(u8::from(failed));
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(text, "{}", cells.join("   ").trim_end());
    }
    text.push_str(&problems);
    out(&text);
    Ok(u8::from(failed))
}
