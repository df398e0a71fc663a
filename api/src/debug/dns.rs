//! `weft dns stats`: what a node's DNS server did (`/dns/stats`).

use serde::{Deserialize, Serialize};

/// The counters of one node's DNS server since it started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStats {
    /// The server has its sockets.
    pub serving: bool,
    /// What is wrong, if anything (no sockets, no upstream).
    #[serde(default)]
    pub problem: String,
    /// Queries received (answered or not).
    pub queries: u64,
    /// Answered from the cluster zone.
    pub zone: u64,
    /// Sent to the forwarder (the cache answers many of them).
    pub forwarded: u64,
    /// Search-path misses answered with the final result.
    pub shortcut: u64,
    /// Answered SERVFAIL.
    pub servfail: u64,
    /// Refused (outside the zone with no upstream, another class, a zone
    /// transfer).
    pub refused: u64,
    /// Not implemented (not a standard query, a meta type).
    pub notimp: u64,
    /// Malformed (FORMERR) or of an EDNS version above 0 (BADVERS).
    pub formerr: u64,
    /// Forwarded lookups turned away because too many were in flight.
    pub overload: u64,
    /// Queries dropped at the pods' veths, past their rate limit.
    #[serde(default)]
    pub ratelimited: u64,
}

impl DnsStats {
    /// The counters by name, in the order `weft dns stats` prints them.
    #[must_use]
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("queries", self.queries),
            ("zone", self.zone),
            ("forwarded", self.forwarded),
            ("shortcut", self.shortcut),
            ("servfail", self.servfail),
            ("refused", self.refused),
            ("notimp", self.notimp),
            ("formerr", self.formerr),
            ("overload", self.overload),
            ("ratelimited", self.ratelimited),
        ]
    }
}
