//! `weft lb show` and `weft lb trace`: what an agent's load-balancer holds
//! and how it judges one flow (`/lb/services`, `/lb/trace`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a frontend is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// A ClusterIP or external IP.
    Cluster,
    /// Every node address, at the node port.
    NodePort,
}

/// What `weft lb trace` prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Trace {
    /// The flow asked about.
    pub flow: String,
    /// The frontend it hits, if any.
    pub frontend: Option<String>,
    /// not-a-service, conntrack, affinity, maglev or refused.
    pub verdict: String,
    /// The backend chosen, when known.
    pub backend: Option<String>,
    /// The Maglev slot, when the source port was given.
    pub slot: Option<u32>,
    /// Why, in a sentence.
    pub explanation: String,
    /// Flows of this client to this frontend in connection tracking.
    pub flows: Vec<TraceFlow>,
    /// Slots per backend in the frontend's table.
    pub shares: Vec<(String, u32)>,
}

/// One tracked flow in a [`Trace`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TraceFlow {
    /// Client port.
    pub source_port: u16,
    /// Its backend.
    pub backend: String,
    /// Whether that backend is still there (else the next packet picks again).
    pub live: bool,
    /// Since its last packet.
    pub idle_ms: u64,
}

/// What `weft lb show` prints: per Service, its frontends.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Frontends by `namespace/name`.
    pub services: BTreeMap<String, Vec<FrontendView>>,
    /// Fill levels of the maps the agent sizes.
    pub maps: Vec<MapFill>,
    /// Frontends left out, with the reason (a full map).
    pub problems: BTreeMap<String, String>,
}

/// One frontend in a [`Snapshot`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FrontendView {
    /// ClusterIP or NodePort.
    pub scope: Scope,
    /// Address (`*` for NodePorts).
    pub address: String,
    /// Port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: String,
    /// Service port name.
    pub port_name: String,
    /// Counters index.
    pub id: u32,
    /// ClientIP affinity timeout.
    pub affinity_timeout: Option<u32>,
    /// Maglev slots.
    pub table_size: u32,
    /// Backends with their state and slot count.
    pub backends: Vec<BackendView>,
    /// Packets translated on the packet path.
    pub packets: u64,
    /// Bytes translated on the packet path.
    pub bytes: u64,
    /// Connections given a backend (both paths).
    pub connections: u64,
    /// Connections refused: no ready backend.
    pub refused: u64,
    /// NodePort connections dropped for want of a source port.
    #[serde(default)]
    pub dropped: u64,
}

/// One backend in a [`FrontendView`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BackendView {
    /// Id in the backends map.
    pub id: u32,
    /// Address.
    pub addr: String,
    /// Port.
    pub port: u16,
    /// active or terminating.
    pub state: String,
    /// Maglev slots it owns.
    pub slots: u32,
}

/// Fill level of one map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapFill {
    /// Map name.
    pub name: String,
    /// Entries in use.
    pub used: u32,
    /// Entries it can hold.
    pub capacity: u32,
    /// Entries an LRU map evicted to make room, where counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evicted: Option<u64>,
}
