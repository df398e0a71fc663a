//! Test support beside the lab (weft-lab): islands (a namespace with etcd,
//! a controller and kubectl), probes, load generators and a DNS upstream,
//! used by the integration tests and benchmarks.
#![warn(missing_docs, unreachable_pub)]

pub mod apitest;
pub mod control;
pub mod floor;
pub mod island;
pub mod probe;
pub mod shortconn;
pub mod stats;
pub mod upstream;
