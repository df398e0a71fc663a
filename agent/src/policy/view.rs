//! What `weft policy show` and `weft policy trace` print: a local pod's
//! policies, rules and counters, and the verdict on one flow, read from
//! the maps the programs use.

use std::net::Ipv4Addr;

pub use weft_api::debug::policy::{Fill, Judged, PodView, Selecting};
use weft_common as common;
use weft_common::RuleKey;

use super::{Engine, maps::PolicyMaps, model};

/// A flow to trace, seen from a local pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceFlow {
    /// The other end's address.
    pub peer: Ipv4Addr,
    /// `DIR_INGRESS` (peer to pod) or `DIR_EGRESS`.
    pub dir: u8,
    /// IP protocol.
    pub proto: u8,
    /// Destination port.
    pub port: u16,
}

impl Engine {
    /// `weft policy show` of local pod `key` (`None`: no such pod here).
    #[must_use]
    pub fn show(&self, key: &str, node: &str, maps: &PolicyMaps) -> Option<PodView> {
        let pod = self.pods.get(key).filter(|p| p.local)?;
        let ep = self.endpoints.get(key);
        let flags = ep.map_or(0, |e| e.flags);
        let mut v = PodView {
            pod: key.to_string(),
            node: node.to_string(),
            ip: Some(pod.ip),
            identity: self.identities.get(&pod.identity_key()).map(|i| i.id),
            endpoint: ep.map(|e| e.id),
            ingress_isolated: flags & common::POL_INGRESS != 0,
            egress_isolated: flags & common::POL_EGRESS != 0,
            overflow: flags & common::POL_OVERFLOW != 0,
            rule_entries: ep.map_or(0, |e| e.rules.len()),
            ..PodView::default()
        };
        for (pk, p) in self.selecting(pod) {
            let allowed = match (ep, self.policy_numbers.get(pk)) {
                (Some(e), Some(n)) => maps.allowed_by(e.id, *n),
                _ => 0,
            };
            v.policies.push(Selecting {
                name: pk.clone(),
                ingress: p.ingress.is_some(),
                egress: p.egress.is_some(),
                rules: p.rules().count(),
                allowed,
            });
            if p.ingress.is_some() {
                v.ingress_deniers.push(pk.clone());
            }
            if p.egress.is_some() {
                v.egress_deniers.push(pk.clone());
            }
        }
        if let Some(e) = ep
            && let Ok(c) = maps.counters(e.id)
        {
            v.ingress_denied = c.ingress_denied;
            v.egress_denied = c.egress_denied;
            v.ingress_allowed = c.ingress_allowed;
            v.egress_allowed = c.egress_allowed;
        }
        let own = format!("pod {key}");
        v.problems = self
            .problems
            .iter()
            .filter(|(k, _)| **k == own || !k.starts_with("pod "))
            .map(|(k, m)| format!("{k}: {m}"))
            .collect();
        v.maps = self.fill();
        Some(v)
    }

    /// Fill of the policy maps.
    #[must_use]
    pub fn fill(&self) -> Vec<Fill> {
        let f = |map: &str, used: usize, capacity: u32| Fill {
            map: map.to_string(),
            used,
            capacity,
        };
        vec![
            f(
                common::POL_ENDPOINTS_MAP,
                self.installed.endpoints.len(),
                self.caps.endpoints,
            ),
            f(
                common::POL_IDENTITIES_MAP,
                self.installed.identities.len(),
                self.caps.identities,
            ),
            f(
                common::POL_CIDRS_MAP,
                self.installed.cidrs.len(),
                self.caps.cidrs,
            ),
            f(
                common::POL_RULES_MAP,
                self.installed.rules.len(),
                self.caps.rules,
            ),
        ]
    }

    /// The verdict on a new flow `f` of local pod `key`, as the programs
    /// reach it from the maps.
    #[must_use]
    pub fn trace(&self, maps: &PolicyMaps, key: &str, node: &str, f: TraceFlow) -> Option<Judged> {
        let TraceFlow {
            peer,
            dir,
            proto,
            port,
        } = f;
        let pod = self.pods.get(key).filter(|p| p.local)?;
        let ingress = dir == common::DIR_INGRESS;
        let mut j = Judged {
            direction: if ingress { "ingress" } else { "egress" }.to_string(),
            pod: key.to_string(),
            node: node.to_string(),
            allowed: true,
            reason: String::new(),
        };
        let want = if ingress {
            common::POL_INGRESS
        } else {
            common::POL_EGRESS
        };
        let ep = self.endpoints.get(key).filter(|e| e.flags & want != 0);
        let Some(ep) = ep else {
            j.reason = format!(
                "no policy selects it for {}: every flow is allowed (the default)",
                j.direction
            );
            return Some(j);
        };
        if peer == pod.ip {
            j.reason = "a pod always reaches itself".to_string();
            return Some(j);
        }
        let pod_id = maps.lookup_identity(peer);
        if ingress && pod_id == Some(common::ID_HOST) {
            j.reason = "the node always reaches its pods (probes)".to_string();
            return Some(j);
        }
        if ep.flags & common::POL_OVERFLOW != 0 {
            j.allowed = false;
            j.reason = format!(
                "its rules did not fit in the maps: it denies all but replies (see `weft policy show {key}`)"
            );
            return Some(j);
        }
        let cidr_id = maps.lookup_cidr(peer);
        let ids = [
            (pod_id, "its identity"),
            (cidr_id, "its ipBlock prefix"),
            (Some(common::ID_ANY), "any peer"),
        ];
        for (id, what) in ids {
            let what = match (what, id) {
                ("its identity", Some(i)) => format!("its identity {i}"),
                _ => what.to_string(),
            };
            let Some(id) = id else { continue };
            let hit = maps.lookup_rule(RuleKey {
                endpoint: ep.id,
                peer: id,
                dir,
                proto,
                port: port.to_be(),
            });
            if let Some(num) = hit {
                let name = self
                    .policy_keys
                    .get(&num)
                    .cloned()
                    .unwrap_or_else(|| format!("policy #{num}"));
                j.reason = format!("allowed by {name} (a rule for {what})");
                return Some(j);
            }
        }
        let isolating: Vec<&str> = self
            .selecting(pod)
            .filter(|(_, p)| {
                if ingress {
                    p.ingress.is_some()
                } else {
                    p.egress.is_some()
                }
            })
            .map(|(pk, _)| pk.as_str())
            .collect();
        j.allowed = false;
        j.reason = format!(
            "isolated for {} by {}; none of their rules allows this peer ({}) at {}/{port}",
            j.direction,
            isolating.join(", "),
            pod_id.map_or_else(
                || "no pod identity".to_string(),
                |i| format!("identity {i}")
            ),
            proto_name(proto)
        );
        Some(j)
    }
}

/// TCP, UDP or SCTP.
#[must_use]
pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        common::PROTO_UDP => "UDP",
        model::PROTO_SCTP => "SCTP",
        _ => "TCP",
    }
}
