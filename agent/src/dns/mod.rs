//! Cluster DNS (issue 6), served by the agent on its node's gateway
//! address (UDP and TCP 53), which pods' resolv.conf names:
//! - [`records`]: the zone's answers per the Kubernetes DNS specification,
//!   from memory;
//! - [`sync`]: fills the zone's pods from a Pod watch (Services come from
//!   the load-balancer's watch);
//! - [`forward`]: other names, to the node's upstream resolvers, cached;
//! - [`server`]: hickory-server over UDP and TCP, and the search-path
//!   shortcut for local pods.

pub mod forward;
pub mod records;
pub mod server;
pub mod sync;
