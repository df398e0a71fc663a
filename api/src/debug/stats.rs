//! `weft top` (and `kubectl top` through the node proxy): kubelet's
//! `/stats/summary`, with the CPU and memory of the node and of each pod.

use serde::{Deserialize, Serialize};

/// CPU use at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// When it was read (RFC 3339).
    pub time: String,
    /// The rate over the sampler's last interval, in billionths of a core
    /// (none before the second sample).
    pub usage_nano_cores: Option<u64>,
    /// CPU time used since the cgroup was made.
    pub usage_core_nano_seconds: u64,
}

/// Memory use at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// When it was read (RFC 3339).
    pub time: String,
    /// Memory charged to the cgroup.
    pub usage_bytes: u64,
    /// Memory less inactive file cache (what the OOM killer weighs).
    pub working_set_bytes: u64,
}

/// The node's own figures (everything under its cgroup, agent included).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    pub node_name: String,
    /// CPU, when its cgroup could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory, when its cgroup could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// Which pod a [`PodStats`] is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReference {
    /// Pod name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
}

/// One pod's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// The pod.
    pub pod_ref: PodReference,
    /// CPU, when its cgroup could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    /// Memory, when its cgroup could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
}

/// The whole summary of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The node.
    pub node: NodeStats,
    /// Its pods.
    pub pods: Vec<PodStats>,
}
