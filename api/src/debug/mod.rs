//! The wire types of the agents' debug endpoints, which the CLI reads
//! through the API's node proxy (`/api/v1/nodes/{node}/proxy/...`): the
//! agent serializes them and the CLI decodes them, so neither links the
//! other's internals.

pub mod dns;
pub mod lb;
pub mod policy;
pub mod stats;
