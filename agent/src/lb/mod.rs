//! Service load-balancing: from Services and EndpointSlices to the maps the
//! eBPF programs read, in the shape of the policy engine beside it:
//!
//! - [`model`]: frontends and backends as the API describes them;
//! - [`balancer`]: the reconciler, which allocates ids and Maglev slots and
//!   writes through a [`Sink`];
//! - [`maps`]: the pinned maps, the sink the agent writes;
//! - [`view`]: `weft lb show` and `weft lb trace`, read from the maps;
//! - [`sync`]: the Service and EndpointSlice watch that drives it all;
//! - [`maglev`]: the Maglev tables.
//!
//! Each Service port becomes a frontend (its ClusterIP, external IPs and
//! NodePort) with a Maglev table over its ready endpoints; terminating
//! endpoints stay in the backends map, out of the table, so their
//! established connections finish while new ones go elsewhere. A changed
//! frontend gets its new table written into free slots first and is then
//! switched to it in one map update: a live service never has a moment with
//! no backends. The slots and ids it gave up are reused only later, after
//! every program that might still be reading them has finished.
//!
//! A restarted agent adopts what the pinned maps hold (backend ids,
//! tables), so connections tracked by id stay valid, and it removes what no
//! Service wants only once it has seen the complete state from the API.

pub mod balancer;
pub mod maglev;
pub mod maps;
pub mod model;
pub mod sync;
pub mod view;

pub use balancer::{Balancer, DEFAULT_SNAT_PORTS, LbError, Sink, SinkError};
pub use maps::LbMaps;
pub use model::{BackendSpec, FrontendSpec, Scope, table_size};
pub use view::{BackendView, FrontendView, MapFill, Snapshot, Trace, TraceFlow};
