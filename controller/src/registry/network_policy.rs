//! NetworkPolicies: policyTypes and port protocols defaulted as
//! kube-apiserver does, peers, selectors, ipBlocks and ports checked with
//! their field paths.

use async_trait::async_trait;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use weft_api::error::Cause;

use super::kind::{Kind, kind_fields};
use super::validation::{check_port, check_protocol, check_selector, port_name_error};

fn check_peers(out: &mut Vec<Cause>, base: &str, key: &str, peers: &[NetworkPolicyPeer]) {
    for (j, peer) in peers.iter().enumerate() {
        let at = format!("{base}.{key}[{j}]");
        let selectors = usize::from(peer.pod_selector.is_some())
            + usize::from(peer.namespace_selector.is_some());
        if selectors == 0 && peer.ip_block.is_none() {
            out.push(Cause::required(format!(
                "{at}: one of podSelector, namespaceSelector or ipBlock"
            )));
        }
        if let Some(block) = &peer.ip_block
            && selectors > 0
        {
            out.push(Cause::invalid(
                format!("{at}.ipBlock"),
                json!(block),
                "may not be specified with podSelector or namespaceSelector",
            ));
        }
        check_selector(
            out,
            &format!("{at}.podSelector"),
            peer.pod_selector.as_ref(),
        );
        check_selector(
            out,
            &format!("{at}.namespaceSelector"),
            peer.namespace_selector.as_ref(),
        );
        if let Some(block) = &peer.ip_block {
            check_ip_block(out, &format!("{at}.ipBlock"), block);
        }
    }
}

fn check_ports(out: &mut Vec<Cause>, base: &str, ports: &[NetworkPolicyPort]) {
    for (j, p) in ports.iter().enumerate() {
        let at = format!("{base}.ports[{j}]");
        check_protocol(out, format!("{at}.protocol"), p.protocol.as_deref());
        match &p.port {
            None => {
                if p.end_port.is_some() {
                    out.push(Cause::required(format!("{at}.port")));
                }
            }
            Some(IntOrString::String(name)) => {
                if let Some(e) = port_name_error(name) {
                    out.push(Cause::invalid(format!("{at}.port"), name, e));
                }
                if let Some(end) = p.end_port {
                    out.push(Cause::invalid(
                        format!("{at}.endPort"),
                        end,
                        "may not be specified when `port` is non-numeric",
                    ));
                }
            }
            Some(IntOrString::Int(start)) => {
                check_port(out, format!("{at}.port"), Some(*start));
                if let Some(end) = p.end_port {
                    check_port(out, format!("{at}.endPort"), Some(end));
                    if end < *start {
                        out.push(Cause::invalid(
                            format!("{at}.endPort"),
                            end,
                            "must be greater than or equal to `port`",
                        ));
                    }
                }
            }
        }
    }
}

/// An ipBlock: a CIDR with its prefix length, and exceptions inside it.
fn check_ip_block(out: &mut Vec<Cause>, at: &str, block: &IPBlock) {
    let cidr = block.cidr.as_str();
    // A CIDR names its prefix length: "10.0.0.1" alone is refused, as
    // kube-apiserver does.
    let Some(net) = cidr
        .contains('/')
        .then(|| cidr.parse::<ipnetwork::IpNetwork>().ok())
        .flatten()
    else {
        if cidr.is_empty() {
            out.push(Cause::required(format!("{at}.cidr")));
        } else {
            out.push(Cause::invalid(
                format!("{at}.cidr"),
                cidr,
                "must be a valid CIDR",
            ));
        }
        return;
    };
    for (k, s) in block.except.iter().flatten().enumerate() {
        let field = format!("{at}.except[{k}]");
        match s
            .contains('/')
            .then(|| s.parse::<ipnetwork::IpNetwork>().ok())
            .flatten()
        {
            None => out.push(Cause::invalid(field, s, "must be a valid CIDR")),
            Some(x) if !(x.prefix() > net.prefix() && net.contains(x.network())) => {
                out.push(Cause::invalid(
                    field,
                    s,
                    "must be a strict subset of `cidr`",
                ));
            }
            Some(_) => {}
        }
    }
}

#[async_trait]
impl Kind for NetworkPolicy {
    kind_fields!(spec: NetworkPolicySpec);

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        // Ingress always, Egress when there are egress rules.
        if spec.policy_types.as_ref().is_none_or(Vec::is_empty) {
            let egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
            let mut types = vec!["Ingress".to_string()];
            if egress {
                types.push("Egress".into());
            }
            spec.policy_types = Some(types);
        }
        let ports = spec
            .ingress
            .iter_mut()
            .flatten()
            .flat_map(|r| r.ports.iter_mut().flatten())
            .chain(
                spec.egress
                    .iter_mut()
                    .flatten()
                    .flat_map(|r| r.ports.iter_mut().flatten()),
            );
        for port in ports {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = NetworkPolicySpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        if spec.pod_selector.is_none() {
            out.push(Cause::required("spec.podSelector"));
        }
        check_selector(&mut out, "spec.podSelector", spec.pod_selector.as_ref());
        let types = ["Ingress", "Egress"];
        for (i, t) in spec.policy_types.iter().flatten().enumerate() {
            if !types.contains(&t.as_str()) {
                out.push(Cause::not_supported(
                    format!("spec.policyTypes[{i}]"),
                    t,
                    &types,
                ));
            }
        }
        for (i, rule) in spec.ingress.iter().flatten().enumerate() {
            let base = format!("spec.ingress[{i}]");
            check_peers(
                &mut out,
                &base,
                "from",
                rule.from.as_deref().unwrap_or_default(),
            );
            check_ports(&mut out, &base, rule.ports.as_deref().unwrap_or_default());
        }
        for (i, rule) in spec.egress.iter().flatten().enumerate() {
            let base = format!("spec.egress[{i}]");
            check_peers(
                &mut out,
                &base,
                "to",
                rule.to.as_deref().unwrap_or_default(),
            );
            check_ports(&mut out, &base, rule.ports.as_deref().unwrap_or_default());
        }
        out
    }
}
