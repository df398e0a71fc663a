//! weft-controller: the control plane of a Weft cluster.

pub mod store;
