//! weft-api: the object model Weft serves, shared by the controller, the agent
//! and the CLI: which Kubernetes kinds exist and where they live, selectors,
//! validation and defaulting, and errors as Kubernetes Status objects.
#![warn(missing_docs, unreachable_pub)]
// ApiError carries a Kubernetes Status (message, kind, name, causes); errors
// are the slow path, so it is not boxed.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod conditions;
pub mod cron;
pub mod debug;
pub mod error;
pub mod job;
pub mod meta;
pub mod node;
pub mod placement;
pub mod pod;
pub mod printer;
pub mod quantity;
pub mod resources;
pub mod revision;
pub mod security;
pub mod selector;
pub mod service;
pub mod strategic;
pub mod validate;
pub mod volumes;
pub mod workload;

pub use error::{ApiError, Cause};
pub use resources::{RESOURCES, Resource};
