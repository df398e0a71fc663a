//! NetworkPolicy as the engine reads it: policies parsed from the API's
//! objects, pods reduced to what identities and named ports need, and the
//! rules' ports as trie prefixes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use k8s_openapi::{
    api::{
        core::v1::Pod,
        networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector as K8sSelector, util::intstr::IntOrString},
};
use weft_api::selector::LabelSelector;
use weft_common as common;

pub use weft_common::PROTO_SCTP;
/// The label every namespace carries with its own name (Kubernetes sets
/// it; policies select namespaces by it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Labels, sorted.
pub type Labels = BTreeMap<String, String>;

/// A container port with a name: (name, protocol, port).
pub type NamedPort = (String, u8, u16);

/// What the engine keeps of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: Labels,
    /// Address.
    pub ip: Ipv4Addr,
    /// Bound to this node.
    pub local: bool,
    /// Named container ports.
    pub ports: BTreeSet<NamedPort>,
}

/// The key pods share an identity by: namespace, labels and named ports
/// (named ports are resolved per destination pod, so pods that name their
/// ports differently must not share one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityKey {
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: Labels,
    /// Named container ports.
    pub ports: BTreeSet<NamedPort>,
}

impl PodInfo {
    /// The pod's identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        IdentityKey {
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            ports: self.ports.clone(),
        }
    }
}

fn protocol(p: Option<&str>) -> u8 {
    match p.unwrap_or("TCP") {
        "UDP" => common::PROTO_UDP,
        "SCTP" => PROTO_SCTP,
        _ => common::PROTO_TCP,
    }
}

/// What the engine keeps of `pod` (`None`: it has no address of its own:
/// not yet scheduled, host network, or finished).
#[must_use]
pub fn pod_info(pod: &Pod, node: &str) -> Option<PodInfo> {
    let ip = weft_api::pod::own_address(pod)?;
    let spec = pod.spec.as_ref()?;
    let mut ports = BTreeSet::new();
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                ports.insert((name.clone(), protocol(p.protocol.as_deref()), port));
            }
        }
    }
    Some(PodInfo {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip,
        local: spec.node_name.as_deref() == Some(node),
        ports,
    })
}

/// A rule's peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods: of the policy's namespace (no namespace selector) or of the
    /// namespaces selected; all of them when `pods` is `None`.
    Pods {
        /// Namespace selector (`None`: the policy's own namespace).
        namespaces: Option<LabelSelector>,
        /// Pod selector (`None`: every pod).
        pods: Option<LabelSelector>,
    },
    /// Addresses in `cidr` but in none of `except`.
    Block {
        /// The block.
        cidr: Ipv4Network,
        /// Excluded parts.
        except: Vec<Ipv4Network>,
    },
    /// Nothing: an IPv6 block (no pod or packet here is IPv6), or a peer
    /// the engine cannot read. The rule still exists, so the pods stay
    /// isolated: a peer not understood lets nothing in.
    Nothing,
}

/// A rule's port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of a protocol.
    All(u8),
    /// A port, or a range up to `end`.
    Range {
        /// Protocol.
        proto: u8,
        /// First port.
        port: u16,
        /// Last port.
        end: u16,
    },
    /// A named container port of the destination pod.
    Named {
        /// Protocol.
        proto: u8,
        /// Port name.
        name: String,
    },
}

/// One ingress or egress rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Peers (`None`: every address).
    pub peers: Option<Vec<Peer>>,
    /// Ports (`None`: every port of every protocol).
    pub ports: Option<Vec<PortSpec>>,
}

/// A NetworkPolicy as the engine applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Which pods of the namespace it selects.
    pub selector: LabelSelector,
    /// Ingress rules, if it isolates the pods for ingress.
    pub ingress: Option<Vec<Rule>>,
    /// Egress rules, if it isolates the pods for egress.
    pub egress: Option<Vec<Rule>>,
    /// Parts the engine could not read (they match nothing).
    pub warnings: Vec<String>,
}

fn selector(sel: &K8sSelector) -> Result<LabelSelector, String> {
    LabelSelector::from_typed(sel)
}

fn peer(p: &NetworkPolicyPeer, warnings: &mut Vec<String>) -> Peer {
    if let Some(b) = &p.ip_block {
        let cidr = match b.cidr.parse::<ipnetwork::IpNetwork>() {
            Ok(ipnetwork::IpNetwork::V4(n)) => n,
            // The cluster's addresses are IPv4: an IPv6 block holds none.
            Ok(ipnetwork::IpNetwork::V6(_)) => return Peer::Nothing,
            Err(e) => {
                warnings.push(format!(
                    "ipBlock.cidr {:?}: {e}; it matches nothing",
                    b.cidr
                ));
                return Peer::Nothing;
            }
        };
        let mut except = Vec::new();
        for e in b.except.iter().flatten() {
            match e.parse::<ipnetwork::IpNetwork>() {
                Ok(ipnetwork::IpNetwork::V4(n)) => except.push(normalize(n)),
                Ok(ipnetwork::IpNetwork::V6(_)) => {}
                Err(err) => {
                    warnings.push(format!(
                        "ipBlock.except {e:?}: {err}; its block matches nothing"
                    ));
                    return Peer::Nothing;
                }
            }
        }
        return Peer::Block {
            cidr: normalize(cidr),
            except,
        };
    }
    let sel = |s: Option<&K8sSelector>, warnings: &mut Vec<String>| match s.map(selector) {
        None => Ok(None),
        Some(Ok(s)) => Ok(Some(s)),
        Some(Err(e)) => {
            warnings.push(format!("a peer's selector: {e}; it matches nothing"));
            Err(())
        }
    };
    let (Ok(namespaces), Ok(pods)) = (
        sel(p.namespace_selector.as_ref(), warnings),
        sel(p.pod_selector.as_ref(), warnings),
    ) else {
        return Peer::Nothing;
    };
    Peer::Pods { namespaces, pods }
}

/// The network of `n` (host bits cleared).
fn normalize(n: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(n.network(), n.prefix()).expect("prefix of a valid network")
}

fn port(p: &NetworkPolicyPort) -> Result<PortSpec, String> {
    let proto = protocol(p.protocol.as_deref());
    Ok(match &p.port {
        None => PortSpec::All(proto),
        Some(IntOrString::Int(n)) => {
            let port = u16::try_from(*n).map_err(|_| format!("port {n} is out of range"))?;
            let end = match p.end_port {
                Some(e) => u16::try_from(e).map_err(|_| format!("endPort {e} is out of range"))?,
                None => port,
            };
            if end < port {
                return Err(format!("endPort {end} is below port {port}"));
            }
            PortSpec::Range { proto, port, end }
        }
        Some(IntOrString::String(name)) => PortSpec::Named {
            proto,
            name: name.clone(),
        },
    })
}

/// A rule. What cannot be read matches nothing (and is said in
/// `warnings`): the rule lets in less, never more.
fn rule(
    peers: Option<&Vec<NetworkPolicyPeer>>,
    ports: Option<&Vec<NetworkPolicyPort>>,
    warnings: &mut Vec<String>,
) -> Rule {
    Rule {
        // An empty list means every peer (or port), as an absent one.
        peers: match peers {
            Some(v) if !v.is_empty() => Some(v.iter().map(|p| peer(p, warnings)).collect()),
            _ => None,
        },
        ports: match ports {
            Some(v) if !v.is_empty() => Some(
                v.iter()
                    .filter_map(|p| {
                        port(p)
                            .map_err(|e| warnings.push(format!("{e}; that port matches nothing")))
                            .ok()
                    })
                    .collect(),
            ),
            _ => None,
        },
    }
}

impl Policy {
    /// Parses a NetworkPolicy. The API validated it; what the engine still
    /// cannot read in a rule matches nothing, so the pods stay isolated.
    ///
    /// # Errors
    /// A pod selector the engine cannot read: then it cannot tell which
    /// pods the policy isolates (reported).
    pub fn from_k8s(np: &NetworkPolicy) -> Result<Self, String> {
        let mut warnings = Vec::new();
        let spec = np.spec.clone().unwrap_or_default();
        let types: Vec<String> = match &spec.policy_types {
            Some(t) if !t.is_empty() => t.clone(),
            // Kubernetes' default: Ingress, and Egress when there are
            // egress rules.
            _ => {
                let mut t = vec!["Ingress".to_string()];
                if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                    t.push("Egress".to_string());
                }
                t
            }
        };
        let ingress = if types.iter().any(|t| t == "Ingress") {
            Some(
                spec.ingress
                    .iter()
                    .flatten()
                    .map(|r| rule(r.from.as_ref(), r.ports.as_ref(), &mut warnings))
                    .collect(),
            )
        } else {
            None
        };
        let egress = if types.iter().any(|t| t == "Egress") {
            Some(
                spec.egress
                    .iter()
                    .flatten()
                    .map(|r| rule(r.to.as_ref(), r.ports.as_ref(), &mut warnings))
                    .collect(),
            )
        } else {
            None
        };
        Ok(Self {
            namespace: np.metadata.namespace.clone().unwrap_or_default(),
            name: np.metadata.name.clone().unwrap_or_default(),
            selector: spec
                .pod_selector
                .as_ref()
                .map(selector)
                .transpose()?
                .unwrap_or_default(),
            ingress,
            egress,
            warnings,
        })
    }

    /// `namespace/name`.
    #[must_use]
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether it selects a pod of `namespace` with `labels`.
    #[must_use]
    pub fn selects(&self, namespace: &str, labels: &Labels) -> bool {
        self.namespace == namespace && self.selector.matches(labels)
    }

    /// Its rules, by direction.
    pub fn rules(&self) -> impl Iterator<Item = (u8, &Rule)> {
        let ing = self
            .ingress
            .iter()
            .flatten()
            .map(|r| (common::DIR_INGRESS, r));
        let eg = self
            .egress
            .iter()
            .flatten()
            .map(|r| (common::DIR_EGRESS, r));
        ing.chain(eg)
    }

    /// Its ipBlock networks and exceptions.
    pub fn blocks(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        self.rules()
            .flat_map(|(_, r)| r.peers.iter().flatten())
            .flat_map(|p| match p {
                Peer::Block { cidr, except } => std::iter::once(*cidr)
                    .chain(except.iter().copied())
                    .collect(),
                Peer::Pods { .. } | Peer::Nothing => Vec::new(),
            })
    }

    /// Whether one of its pod peers selects identity `id` (in a namespace
    /// with `ns_labels`), or a rule with named ports reaches every pod.
    #[must_use]
    pub fn may_select(&self, id: &IdentityKey, ns_labels: &Labels) -> bool {
        self.rules().any(|(dir, r)| match &r.peers {
            None => {
                dir == common::DIR_EGRESS
                    && r.ports
                        .iter()
                        .flatten()
                        .any(|p| matches!(p, PortSpec::Named { .. }))
            }
            Some(peers) => peers
                .iter()
                .any(|p| peer_selects(p, &self.namespace, id, ns_labels)),
        })
    }
}

/// Whether pod peer `p` of a policy in `policy_ns` selects identity `id`.
#[must_use]
pub fn peer_selects(p: &Peer, policy_ns: &str, id: &IdentityKey, ns_labels: &Labels) -> bool {
    match p {
        Peer::Block { .. } | Peer::Nothing => false,
        Peer::Pods { namespaces, pods } => {
            let ns_ok = match namespaces {
                None => id.namespace == policy_ns,
                Some(sel) => sel.matches(ns_labels),
            };
            ns_ok && pods.as_ref().is_none_or(|s| s.matches(&id.labels))
        }
    }
}

/// Whether `inner` lies inside `outer`.
#[must_use]
pub fn contains(outer: Ipv4Network, inner: Ipv4Network) -> bool {
    outer.prefix() <= inner.prefix() && outer.contains(inner.network())
}

/// The prefixes (port, bits) covering `lo..=hi` exactly: a range becomes at
/// most 30 trie entries.
#[must_use]
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(8000, 8003), vec![(8000, 14)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        let p = port_prefixes(1000, 2000);
        // Every port of the range is covered once, none outside it.
        let mut covered = BTreeSet::new();
        for (base, bits) in &p {
            let n = 1u32 << (16 - bits);
            assert_eq!(u32::from(*base) % n, 0, "aligned");
            for q in u32::from(*base)..u32::from(*base) + n {
                assert!(covered.insert(q), "{q} twice");
            }
        }
        assert_eq!(covered, (1000..=2000).collect());
        assert!(p.len() <= 30);
        assert_eq!(port_prefixes(65535, 65535), vec![(65535, 16)]);
    }

    #[test]
    fn policy_types_default_as_in_kubernetes() {
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
        }))
        .unwrap();
        let p = Policy::from_k8s(&np).unwrap();
        assert_eq!(p.ingress, Some(vec![]), "ingress isolated, nothing allowed");
        let eg = p.egress.unwrap();
        assert_eq!(eg.len(), 1);
        assert_eq!(eg[0].peers, None);
        assert_eq!(
            eg[0].ports,
            Some(vec![PortSpec::Range {
                proto: common::PROTO_UDP,
                port: 53,
                end: 53
            }])
        );
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "a"},
            "spec": {"podSelector": {}, "egress": []}
        }))
        .unwrap();
        let p = Policy::from_k8s(&np).unwrap();
        assert!(p.egress.is_none(), "an empty egress list does not isolate");
    }
}
