//! weft-controller: the control plane of a Weft cluster: API server, store,
//! IPAM, scheduler and controllers.

// ApiError carries a Kubernetes Status (message, kind, name, causes); errors
// are the slow path, so it is not boxed.
#![allow(clippy::result_large_err)]

pub mod apiserver;
pub mod cache;
pub mod controllers;
pub mod fieldmanager;
pub mod identity;
pub mod ipam;
pub mod openapi;
pub mod private_file;
pub mod rbac;
pub mod registry;
pub mod server;
pub mod store;
