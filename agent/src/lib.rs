//! The Weft node agent: pod networking (netlink), the eBPF data path (bpf),
//! containers (runtime) and the pod sandbox that ties them together.
#![warn(missing_docs, unreachable_pub, clippy::print_stdout)]

pub mod bpf;
pub mod dns;
pub mod informer;
pub mod lb;
pub mod netlink;
pub mod node;
pub mod policy;
pub mod probe;
pub mod runtime;
pub mod sandbox;
