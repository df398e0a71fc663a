//! Weft's cluster DNS, served by every agent on its node's gateway address
//! (UDP and TCP 53), which pods' resolv.conf names. Built and tested on its
//! own (the agent fills the zone from its watches):
//! - [`records`]: the zone's answers per the Kubernetes DNS specification,
//!   from memory;
//! - [`forward`]: other names, to the node's upstream resolvers, cached;
//! - [`server`]: hickory-server over UDP and TCP, and the search-path
//!   shortcut for local pods.
#![warn(missing_docs)]

pub mod forward;
pub mod records;
pub mod server;
#[doc(hidden)]
pub mod testing;
