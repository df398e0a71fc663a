//! Cluster DNS (the `weft-dns` crate) as the agent runs it: [`sync`] fills
//! the zone's Services and pods from the agent's informers.

pub use weft_dns::{forward, records, server};
pub mod sync;

use std::sync::atomic::Ordering;

use weft_api::debug::dns::DnsStats;

/// The server's counters as `/dns/stats` sends them.
#[must_use]
pub fn stats_view(s: &server::Stats) -> DnsStats {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    DnsStats {
        serving: s.serving.load(Ordering::Relaxed),
        problem: s.problem.lock().map(|p| p.clone()).unwrap_or_default(),
        queries: n(&s.queries),
        zone: n(&s.zone),
        forwarded: n(&s.forwarded),
        shortcut: n(&s.shortcut),
        servfail: n(&s.servfail),
        refused: n(&s.refused),
        notimp: n(&s.notimp),
        formerr: n(&s.formerr),
        overload: n(&s.overload),
        ratelimited: 0,
    }
}
