//! The lab: a multi-node Weft cluster inside network namespaces on one
//! machine. Integration tests use it, and so does `weft lab`.
//!
//! Everything it makes is named under one unique prefix and lives in
//! namespaces it created; the host namespace is never touched (see the
//! safety rules in DESIGN.md).
#![warn(missing_docs, unreachable_pub)]

pub mod apitest;
pub mod cluster;
pub mod control;
pub mod island;
pub mod lab;
pub mod probe;
pub mod shortconn;
pub mod stats;
pub mod upstream;
