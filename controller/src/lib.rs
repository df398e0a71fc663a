//! weft-controller: the control plane of a Weft cluster: API server, store,
//! IPAM, scheduler and controllers.

pub mod apiserver;
pub mod cache;
pub mod controllers;
pub mod ipam;
pub mod registry;
pub mod server;
pub mod store;
