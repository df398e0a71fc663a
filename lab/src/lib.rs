//! weft-lab: a multi-node Weft cluster inside network namespaces on one
//! machine. `weft lab` runs it for users (the demo) and the integration
//! tests build their clusters with it.
//!
//! [`topology`] makes the namespaces, links and node state of a lab;
//! [`cluster`] starts a controller and one agent per node on top of it.
//! Everything it makes is named under one unique prefix and lives in
//! namespaces it created; the host namespace is never touched (see the
//! safety rules in DESIGN.md).
#![warn(missing_docs, unreachable_pub)]

pub mod cluster;
pub mod topology;

pub use cluster::{Cluster, ClusterSpec, Store};
pub use topology::{Lab, LabNode, LabSpec, Routing};
