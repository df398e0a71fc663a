//! `weft policy show` and `weft policy trace`: NetworkPolicy as the nodes
//! enforce it, read from the agents (through the API server's node proxy).

use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use weft_api::client::Client;
use weft_api::debug::policy::{Judged, PodView};

/// A pod's place: namespace, name, node and address.
struct Placed {
    ns: String,
    name: String,
    node: String,
    ip: String,
    /// The pod as the API has it.
    pod: Value,
}

/// `NAME` (in `ns`) or `NAMESPACE/NAME`, looked up.
async fn placed(c: &Client, ns: &str, pod: &str) -> Result<Placed> {
    let (ns, name) = pod.split_once('/').unwrap_or((ns, pod));
    if ns.is_empty() || name.is_empty() {
        bail!("{pod:?}: a pod is NAME or NAMESPACE/NAME");
    }
    let p: Value = c
        .get(&format!("/api/v1/namespaces/{ns}/pods/{name}"))
        .await
        .with_context(|| format!("pod {ns}/{name}"))?;
    let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
    let ip = p["status"]["podIP"].as_str().unwrap_or_default();
    if node.is_empty() || ip.is_empty() {
        bail!("pod {ns}/{name} has no node or no address yet: nothing applies to it");
    }
    Ok(Placed {
        ns: ns.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        ip: ip.to_string(),
        pod: p.clone(),
    })
}

/// The number of `pod`'s container port called `name` for `proto`.
fn named_port(pod: &Value, name: &str, proto: &str) -> Option<u16> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name && p["protocol"].as_str().unwrap_or("TCP") == proto)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// Writes to stdout; a reader that went away ends the output quietly.
fn out(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

/// `weft policy show POD`.
pub async fn show(c: &Client, ns: &str, pod: &str, output: Option<&str>) -> Result<u8> {
    let p = placed(c, ns, pod).await?;
    let v: PodView = serde_json::from_value(
        c.get(&format!(
            "/api/v1/nodes/{}/proxy/policy/pods/{}/{}",
            p.node, p.ns, p.name
        ))
        .await
        .with_context(|| format!("the agent of node {}", p.node))?,
    )
    .context("the agent's answer")?;
    if output == Some("json") {
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
    } else {
        out(&render_show(&v));
    }
    Ok(0)
}

fn render_show(v: &PodView) -> String {
    let mut s = String::new();
    let ip = v.ip.map(|i| i.to_string()).unwrap_or_default();
    let _ = writeln!(s, "pod        {} (node {}, {ip})", v.pod, v.node);
    let id = v
        .identity
        .map_or_else(|| "-".to_string(), |i| i.to_string());
    let _ = writeln!(s, "identity   {id}");
    let iso = |on: bool| {
        if on {
            "isolated"
        } else {
            "not isolated (all allowed)"
        }
    };
    let _ = writeln!(s, "ingress    {}", iso(v.ingress_isolated));
    let _ = writeln!(s, "egress     {}", iso(v.egress_isolated));
    if v.policies.is_empty() {
        let _ = writeln!(s, "policies   none select it");
    }
    for (i, p) in v.policies.iter().enumerate() {
        let dirs: Vec<&str> = [(p.ingress, "ingress"), (p.egress, "egress")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, d)| *d)
            .collect();
        let head = if i == 0 { "policies" } else { "" };
        let _ = writeln!(
            s,
            "{head:<10} {} ({}; {} rule{}): its rules let {} new flow{} through",
            p.name,
            dirs.join(", "),
            p.rules,
            if p.rules == 1 { "" } else { "s" },
            p.allowed,
            if p.allowed == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(s, "entries    {} in the rules map", v.rule_entries);
    // A denial is the default deny of every policy isolating the pod in
    // that direction, together.
    let by = |who: &[String]| {
        if who.is_empty() {
            String::new()
        } else {
            format!(" (default deny of {})", who.join(", "))
        }
    };
    let _ = writeln!(
        s,
        "denied     {} packets in{}, {} packets out{}",
        v.ingress_denied,
        by(&v.ingress_deniers),
        v.egress_denied,
        by(&v.egress_deniers)
    );
    let _ = writeln!(
        s,
        "allowed    {} new flows in, {} new flows out",
        v.ingress_allowed, v.egress_allowed
    );
    let f = &v.spoofed;
    let _ = writeln!(
        s,
        "spoofed    {} frames dropped (source IP {}, source MAC {}, ARP sender {}, not IPv4 {})",
        f.mac + f.ip + f.arp + f.other,
        f.ip,
        f.mac,
        f.arp,
        f.other
    );
    if v.overflow {
        let _ = writeln!(
            s,
            "WARNING    its rules did not fit in the maps: it denies all but replies"
        );
    }
    for (i, f) in v.maps.iter().enumerate() {
        let head = if i == 0 { "maps" } else { "" };
        let _ = writeln!(s, "{head:<10} {} {}/{}", f.map, f.used, f.capacity);
    }
    if v.problems.is_empty() {
        let _ = writeln!(s, "problems   none");
    }
    for (i, p) in v.problems.iter().enumerate() {
        let head = if i == 0 { "problems" } else { "" };
        let _ = writeln!(s, "{head:<10} {p}");
    }
    s
}

/// A port: its number, or the name of a container port of the destination.
#[derive(Debug, PartialEq, Eq)]
enum Port {
    Number(u16),
    Name(String),
}

/// `PORT/PROTO` (PROTO defaults to TCP; PORT is a number or a port name).
fn parse_port(s: &str) -> Result<(Port, String)> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let proto = proto.to_ascii_uppercase();
    if !matches!(proto.as_str(), "TCP" | "UDP" | "SCTP") {
        bail!("{s:?}: the protocol is TCP, UDP or SCTP");
    }
    if port.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Ok((Port::Name(port.to_string()), proto));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((Port::Number(p), proto)),
        _ => bail!(
            "{s:?}: expected PORT/PROTO with a port from 1 to 65535 or a port name, like 80/TCP"
        ),
    }
}

/// `weft policy trace SRC DST PORT/PROTO`.
pub async fn trace(
    c: &Client,
    ns: &str,
    src: &str,
    dst: &str,
    port: &str,
    output: Option<&str>,
) -> Result<u8> {
    let (port, proto) = parse_port(port)?;
    let s = placed(c, ns, src).await?;
    let d = placed(c, ns, dst).await?;
    // A name is the destination's port, as policies resolve it.
    let port = match port {
        Port::Number(p) => p,
        Port::Name(n) => named_port(&d.pod, &n, &proto).with_context(|| {
            format!(
                "pod {}/{} has no {proto} container port named {n:?}",
                d.ns, d.name
            )
        })?,
    };
    let ask = |local: &Placed, peer: &Placed, dir: &str| {
        format!(
            "/api/v1/nodes/{}/proxy/policy/trace?pod={}/{}&peer={}&dir={dir}&proto={proto}&port={port}",
            local.node, local.ns, local.name, peer.ip
        )
    };
    let mut judged = Vec::new();
    for (local, peer, dir) in [(&s, &d, "egress"), (&d, &s, "ingress")] {
        let j: Judged = serde_json::from_value(
            c.get(&ask(local, peer, dir))
                .await
                .with_context(|| format!("the agent of node {}", local.node))?,
        )
        .context("the agent's answer")?;
        judged.push(j);
    }
    let allowed = judged.iter().all(|j| j.allowed);
    if output == Some("json") {
        let v = serde_json::json!({"allowed": allowed, "directions": judged});
        out(&format!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(0);
    }
    let mut text = format!(
        "flow     {}/{} ({}) -> {}/{} ({}) {port}/{proto}\n",
        s.ns, s.name, s.ip, d.ns, d.name, d.ip
    );
    for j in &judged {
        let _ = writeln!(
            text,
            "{:<8} {} on {}: {}: {}",
            j.direction,
            j.pod,
            j.node,
            if j.allowed { "allowed" } else { "DENIED" },
            j.reason
        );
    }
    let _ = writeln!(
        text,
        "verdict  {}",
        if allowed { "allowed" } else { "DENIED" }
    );
    out(&text);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_with_a_default_protocol_and_refuse_nonsense() {
        assert_eq!(
            parse_port("80").unwrap(),
            (Port::Number(80), "TCP".to_string())
        );
        assert_eq!(
            parse_port("53/udp").unwrap(),
            (Port::Number(53), "UDP".to_string())
        );
        assert_eq!(
            parse_port("http/TCP").unwrap(),
            (Port::Name("http".to_string()), "TCP".to_string())
        );
        assert!(parse_port("0/TCP").is_err());
        assert!(parse_port("70000/TCP").is_err());
        assert!(parse_port("80/ICMP").is_err());
        assert!(parse_port("-1/TCP").is_err());
    }
}
