//! Cluster DNS (the `weft-dns` crate) as the agent runs it: the zone's
//! Services come from the load-balancer's watch, its pods from [`sync`].

pub use weft_dns::{forward, records, server};
pub mod sync;
