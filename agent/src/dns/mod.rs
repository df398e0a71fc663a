//! Cluster DNS (issue 6), served by the agent on its node's gateway
//! address (UDP and TCP 53), which pods' resolv.conf names: the zone's
//! answers per the Kubernetes DNS specification ([`records`]), filled from
//! the load-balancer's Service and EndpointSlice watch, and the hickory
//! server ([`server`]). Not yet: pod records from a Pod watch, forwarding
//! of other names upstream, the search-path shortcut.

pub mod records;
pub mod server;
