//! Event expiry, as kube-apiserver's `--event-ttl`: an Event whose last
//! occurrence is older than the TTL (1 hour by default) is deleted, so a pod
//! that keeps failing, or a client that writes Events, cannot fill the
//! store. A sweep runs every minute (at most a tenth of the TTL) over the
//! cache.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::ResourceExt as _;

use super::Ctx;
use crate::registry::Kind as _;

/// The moment an Event last happened: its `lastTimestamp`, else its
/// `eventTime`, else its creation, in seconds.
fn last_seen(e: &Event) -> Option<i64> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
        .or_else(|| {
            e.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
        })
}

/// The Events of `events` older than `ttl` at `now` (seconds): (namespace,
/// name).
fn expired(
    events: &[std::sync::Arc<Event>],
    ttl: Duration,
    now: i64,
) -> Vec<(Option<String>, String)> {
    let limit = now.saturating_sub(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    events
        .iter()
        .filter(|e| last_seen(e).is_some_and(|t| t < limit))
        .map(|e| (e.namespace(), e.name_any()))
        .collect()
}

pub fn start(ctx: &Ctx) {
    let ctx = ctx.clone();
    let ttl = ctx.cfg.event_ttl;
    let every = (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let now = weft_api::meta::now_time().0.as_second();
            let events = ctx.cache.store::<Event>().list(None);
            let old = expired(&events, ttl, now);
            if old.is_empty() {
                continue;
            }
            let n = old.len();
            match ctx
                .reg
                .delete_collection(Event::resource(), old, None, Some(0))
                .await
            {
                Ok(_) => tracing::debug!(expired = n, "events expired"),
                Err(e) => tracing::warn!(error = %e, "cannot expire events"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_older_than_the_ttl_by_their_last_occurrence_expire() {
        let ev = |name: &str, last: Option<&str>, created: &str| {
            std::sync::Arc::new(
                serde_json::from_value::<Event>(serde_json::json!({
                    "metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
                    "involvedObject": {},
                    "lastTimestamp": last,
                }))
                .expect("an event"),
            )
        };
        let t = |s: &str| weft_api::meta::parse_rfc3339(s).expect("a time");
        let events = [
            // Made long ago, but seen again a minute ago: kept.
            ev(
                "again",
                Some("2026-01-01T11:59:00Z"),
                "2026-01-01T09:00:00Z",
            ),
            // Last seen two hours ago: gone.
            ev("old", Some("2026-01-01T10:00:00Z"), "2026-01-01T10:00:00Z"),
            // No lastTimestamp: its creation counts.
            ev("bare", None, "2026-01-01T10:30:00Z"),
            ev("fresh", None, "2026-01-01T11:30:00Z"),
        ];
        let gone = expired(
            &events,
            Duration::from_secs(3600),
            t("2026-01-01T12:00:00Z"),
        );
        let names: Vec<&str> = gone.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["old", "bare"]);
    }
}
