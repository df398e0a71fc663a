//! Cluster DNS (issue 6), served by the agent on its node's gateway
//! address. First piece: the zone's answers per the Kubernetes DNS
//! specification ([`records`]); the hickory server and the watch that fill
//! it come next.

pub mod records;
pub mod server;
