//! Kinds the API server stores as they come, with no more than their names
//! checked: Endpoints and EndpointSlices (written by the endpoints
//! controller), Events, and Leases (node heartbeats).

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Endpoints, Event};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::kind::{Kind, kind_fields};

#[async_trait]
impl Kind for Endpoints {
    kind_fields!();
}

#[async_trait]
impl Kind for EndpointSlice {
    kind_fields!();
}

#[async_trait]
impl Kind for Event {
    kind_fields!();
}

#[async_trait]
impl Kind for Lease {
    kind_fields!(spec: LeaseSpec);
}
