//! `weft policy show` and `weft policy trace`: a local pod's policies,
//! rules and counters, and the verdict of one direction of a flow
//! (`/policy/pods/{ns}/{name}`, `/policy/trace`).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A policy that selects the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selecting {
    /// `namespace/name`.
    pub name: String,
    /// It isolates the pod for ingress.
    pub ingress: bool,
    /// It isolates the pod for egress.
    pub egress: bool,
    /// Its ingress and egress rules.
    pub rules: usize,
    /// New flows its rules let in or out of the pod.
    pub allowed: u64,
}

/// Fill level of one map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// Map name.
    pub map: String,
    /// Entries in use.
    pub used: usize,
    /// Entries it holds at most.
    pub capacity: u32,
}

/// A local pod under policy, as `weft policy show` prints it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodView {
    /// `namespace/name`.
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Option<Ipv4Addr>,
    /// Its identity (shared by pods of its namespace with its labels and
    /// named ports).
    pub identity: Option<u32>,
    /// Its endpoint number in the rules map.
    pub endpoint: Option<u32>,
    /// Isolated for ingress.
    pub ingress_isolated: bool,
    /// Isolated for egress.
    pub egress_isolated: bool,
    /// Its rules did not fit: it denies all but replies.
    pub overflow: bool,
    /// The policies that select it.
    pub policies: Vec<Selecting>,
    /// Its entries in the rules map.
    pub rule_entries: usize,
    /// The policies whose default deny decided the denials, per direction
    /// (every policy isolating the pod in that direction: together).
    pub ingress_deniers: Vec<String>,
    /// As above, for egress.
    pub egress_deniers: Vec<String>,
    /// Counters of its endpoint.
    pub ingress_denied: u64,
    /// As above.
    pub egress_denied: u64,
    /// New flows a rule let in.
    pub ingress_allowed: u64,
    /// New flows a rule let out.
    pub egress_allowed: u64,
    /// What cannot be enforced (the pod's, and full maps of the node).
    pub problems: Vec<String>,
    /// Fill of the node's policy maps.
    pub maps: Vec<Fill>,
    /// Frames the pod sent with addresses not its own, dropped at its veth.
    #[serde(default)]
    pub spoofed: Spoofed,
}

/// Frames a pod sent as someone else, dropped, by what was forged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spoofed {
    /// A source MAC not the pod's.
    pub mac: u64,
    /// An IPv4 source address not the pod's.
    pub ip: u64,
    /// ARP with a sender not the pod.
    pub arp: u64,
    /// Neither IPv4 nor ARP (IPv6 and its neighbour discovery included).
    pub other: u64,
}

/// One direction of a traced flow, judged on the node of its local pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judged {
    /// `ingress` or `egress`.
    pub direction: String,
    /// The local pod (`namespace/name`).
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Whether the program lets the first packet through.
    pub allowed: bool,
    /// What decided: a policy, a default, or a rule of the data path.
    pub reason: String,
}
