//! Weft controller: API server, store, IPAM, scheduler and controllers (issue 3 fills this crate).
