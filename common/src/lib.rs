//! Map layouts shared by the eBPF programs (`weft-ebpf`) and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, and free of padding surprises, so the
//! kernel side and the userspace side agree byte for byte. Nothing else lives
//! here: no logic, no allocation (`no_std`).
#![no_std]

/// Per-interface traffic counters kept by the `weft_count` tc programs.
///
/// Keyed by the host-side interface index of a pod's veth. "ingress" and
/// "egress" are from the pod's point of view: packets the pod sent enter the
/// host on the veth's ingress hook, so they count as the pod's `tx`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Packets sent by the pod.
    pub tx_packets: u64,
    /// Bytes sent by the pod.
    pub tx_bytes: u64,
    /// Packets delivered to the pod.
    pub rx_packets: u64,
    /// Bytes delivered to the pod.
    pub rx_bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: plain old data, repr(C), every bit pattern valid.
unsafe impl aya::Pod for IfCounters {}

/// Name of the per-CPU hash map holding [`IfCounters`] keyed by ifindex (`u32`).
pub const IF_COUNTERS_MAP: &str = "WEFT_IF_COUNTERS";
/// Maximum number of interfaces the counters map tracks per node.
pub const IF_COUNTERS_MAX: u32 = 4096;
