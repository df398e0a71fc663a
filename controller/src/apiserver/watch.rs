//! Watch: one JSON event per line (`{"type": ..., "object": ...}`), from a
//! resourceVersion, with selectors, bookmarks and 410 Gone.
//!
//! Memory per watcher is bounded, as in kube-apiserver's watch cache:
//! - events come from the hub shared (`Arc`), and a watcher without
//!   selectors that wants JSON sends the hub's one encoding of each
//!   (`Bytes`, reference-counted): nothing of the object is copied for it;
//! - each watcher has a small buffer ([`BUFFER`] lines and [`BUFFER_BYTES`]);
//!   a client that takes nothing from it for [`SLOW`] is closed, logged and
//!   counted
//!   (`weft_apiserver_watchers_closed_slow_total`): like kube-apiserver's
//!   clients, it watches again from its last resourceVersion, or relists;
//! - the initial events of a watch without a resourceVersion are read and
//!   sent a page at a time (about 4 MiB, at most 500 objects), at one
//!   revision, not built as one list.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use weft_api::ApiError;
use weft_api::resources::Resource;

use super::hub::{HubItem, watch_line};
use super::metrics::Metrics;
use super::{ApiState, Query, Selectors, table};
use crate::registry::{decode_stored, parse_rv, store_error};
use crate::store::{EventKind, KeyValue, StoreError};

/// Lines buffered per watcher, at most.
const BUFFER: usize = 64;
/// Bytes of lines buffered per watcher, at most (a larger line alone).
const BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// How long a watcher may take nothing from a full buffer before it is
/// closed.
const SLOW: Duration = Duration::from_secs(10);
/// Objects read per page of a watch's initial events, at most.
const PAGE: usize = 500;
/// Bytes of objects per page of a watch's initial events, about.
const PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Counts a watcher open while it lives.
struct Open(Metrics);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.watchers.dec();
    }
}

fn encode(kind: &str, object: &Value) -> Bytes {
    watch_line(
        kind,
        &serde_json::to_vec(object).expect("JSON values encode"),
    )
}

/// Why a watcher stopped sending.
enum Stop {
    /// The client went away.
    Gone,
    /// The client read nothing for [`SLOW`].
    Slow,
}

/// The permits of a line of `len` bytes in a watcher's byte budget.
fn permits(len: usize) -> u32 {
    len.clamp(1, BUFFER_BYTES) as u32
}

struct Emitter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// What the lines in the buffer may hold; taken when a line goes in,
    /// given back when the response takes it out.
    budget: Arc<Semaphore>,
    res: &'static Resource,
    table: bool,
    include: String,
    sent_columns: bool,
    stats: Metrics,
}

impl Emitter {
    /// Sends one line, waiting at most [`SLOW`] for room.
    async fn line(&mut self, line: Bytes) -> Result<(), Stop> {
        let room = tokio::time::timeout(
            SLOW,
            self.budget.clone().acquire_many_owned(permits(line.len())),
        )
        .await;
        match room {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(Stop::Gone),
            Err(_) => return Err(Stop::Slow),
        }
        match self.tx.send_timeout(Ok(line), SLOW).await {
            Ok(()) => {
                self.stats.watch_events_sent.inc();
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Gone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stop::Slow),
        }
    }

    /// Sends one event of `obj`.
    async fn send(&mut self, kind: &str, obj: &Value) -> Result<(), Stop> {
        let line = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            let mut t = table::single_row_table(self.res, obj, &self.include, !self.sent_columns);
            self.sent_columns = true;
            t["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
            encode(kind, &t)
        } else {
            encode(kind, obj)
        };
        self.line(line).await
    }
}

fn gone(e: StoreError) -> Value {
    store_error(e).to_status()
}

/// Starts a watch and returns the streaming response.
pub(super) async fn serve(
    st: &ApiState,
    res: &'static Resource,
    ns: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<Response, ApiError> {
    let sel = Selectors::parse(res, query)?;
    let prefix = res.list_prefix(ns);
    let bookmarks = query.flag("allowWatchBookmarks");
    // 0 is no timeout asked for, as in kube-apiserver.
    let timeout = query
        .get("timeoutSeconds")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds \"{t}\"")))
        })
        .transpose()?
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    if query.get("resourceVersionMatch").is_some() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden for watch",
        ));
    }
    if query.flag("sendInitialEvents") {
        return Err(ApiError::bad_request(
            "sendInitialEvents is not supported; list, then watch from the list's resourceVersion",
        ));
    }
    // No resourceVersion (or "0"): the current state as ADDED events first.
    let rv = match query.get("resourceVersion") {
        None | Some("0") => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    let store = st.registry.store.clone();
    // The revision the initial events are read at, and the watch starts
    // after.
    let start = match rv {
        Some(rv) => rv,
        None => store.revision().await.map_err(store_error)?,
    };
    let hub = st.hub.clone();
    let every = st.bookmark_every;
    let fast = !table && sel.label.is_empty() && sel.field.is_empty();
    let (tx, rx) = mpsc::channel(BUFFER);
    let budget = Arc::new(Semaphore::new(BUFFER_BYTES));
    let stats = st.metrics.clone();
    stats.watchers.inc();
    let open = Open(stats.clone());
    let mut em = Emitter {
        tx,
        budget: budget.clone(),
        res,
        table,
        include: query.get("includeObject").unwrap_or("Metadata").to_string(),
        sent_columns: false,
        stats,
    };
    let what = match ns {
        Some(ns) => format!("{} in {ns}", res.plural),
        None => res.plural.to_string(),
    };
    tokio::spawn(async move {
        let _open = open;
        let result = async {
            if rv.is_none() {
                initial(&mut em, store.as_ref(), &prefix, start, fast, &sel).await?;
            }
            let stream = match hub.watch(&prefix, start).await {
                Ok(s) => s,
                Err(e) => return em.send("ERROR", &gone(e)).await,
            };
            follow(
                &mut em, stream, start, fast, &sel, bookmarks, every, timeout,
            )
            .await
        }
        .await;
        if let Err(Stop::Slow) = result {
            em.stats.watchers_closed_slow.inc();
            tracing::warn!(
                "closing a watch of {what}: its client read nothing for {} s (it may watch again from its last resourceVersion)",
                SLOW.as_secs()
            );
        }
    });
    // A line taken by the response gives its bytes back to the budget.
    let lines = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |line| {
        if let Ok(l) = &line {
            budget.add_permits(permits(l.len()) as usize);
        }
        line
    });
    let mut resp = Response::new(Body::from_stream(lines));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// The objects under `prefix` at revision `at` as ADDED events, a page at a
/// time: pages of about [`PAGE_BYTES`], so that a watcher holds little
/// whatever the objects' size.
async fn initial(
    em: &mut Emitter,
    store: &dyn crate::store::Store,
    prefix: &str,
    at: i64,
    fast: bool,
    sel: &Selectors,
) -> Result<(), Stop> {
    let mut after: Option<String> = None;
    // A few first, until their size is known.
    let mut limit = 4;
    loop {
        let page = match store
            .list_page(prefix, after.as_deref(), limit, Some(at))
            .await
        {
            Ok(p) => p,
            Err(e) => return em.send("ERROR", &gone(e)).await,
        };
        let bytes: usize = page.items.iter().map(|kv| kv.value.len()).sum();
        for kv in &page.items {
            added(em, kv, fast, sel).await?;
        }
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => return Ok(()),
        }
        let average = (bytes / page.items.len().max(1)).max(1);
        limit = (PAGE_BYTES / average).clamp(1, PAGE);
    }
}

async fn added(em: &mut Emitter, kv: &KeyValue, fast: bool, sel: &Selectors) -> Result<(), Stop> {
    if fast && let Some(object) = crate::registry::splice_rv(&kv.value, kv.mod_revision) {
        return em.line(watch_line("ADDED", &object)).await;
    }
    match decode_stored(kv) {
        Ok(obj) if sel.matches(&obj) => em.send("ADDED", &obj).await,
        Ok(_) => Ok(()),
        Err(err) => em.send("ERROR", &err.to_status()).await,
    }
}

#[allow(clippy::too_many_arguments)]
async fn follow(
    em: &mut Emitter,
    mut stream: super::hub::HubStream,
    start: i64,
    fast: bool,
    sel: &Selectors,
    bookmarks: bool,
    every: Duration,
    timeout: Option<Duration>,
) -> Result<(), Stop> {
    let res = em.res;
    // A timeout beyond what the clock can add is none.
    let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
    let mut last = start;
    let mut bookmarked = start;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let item = tokio::select! {
            _ = em.tx.closed() => return Err(Stop::Gone),
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                if bookmarks && last > bookmarked {
                    em.send("BOOKMARK", &bookmark(res, last)).await?;
                }
                return Ok(());
            }
            _ = tick.tick() => {
                if bookmarks && last > bookmarked {
                    bookmarked = last;
                    em.send("BOOKMARK", &bookmark(res, last)).await?;
                }
                continue;
            }
            item = stream.next() => item,
        };
        let shared = match item {
            None => return Ok(()),
            Some(Err(e)) => return em.send("ERROR", &gone(e)).await,
            Some(Ok(HubItem::Progress(rev))) => {
                last = last.max(rev);
                continue;
            }
            Some(Ok(HubItem::Event(shared))) => shared,
        };
        let e = &shared.event;
        last = last.max(e.kv.mod_revision);
        // No selector and plain JSON: the hub's one encoding of the event,
        // shared with every such watcher.
        if fast && let Some(line) = shared.line() {
            em.line(line).await?;
            continue;
        }
        let new = match decode_stored(&e.kv) {
            Ok(o) => o,
            Err(err) => return em.send("ERROR", &err.to_status()).await,
        };
        let old = e.prev.as_ref().and_then(|p| decode_stored(p).ok());
        let was = old.as_ref().is_some_and(|o| sel.matches(o));
        let kind = match e.kind {
            EventKind::Delete if was => "DELETED",
            EventKind::Delete => continue,
            EventKind::Put => match (was, sel.matches(&new)) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                // No longer selected: gone, for this watcher, as it was
                // when it last matched, at the event's resourceVersion (as
                // kube-apiserver's watch cache sends it).
                (true, false) => {
                    let mut gone = old.unwrap_or_default();
                    gone["metadata"]["resourceVersion"] = json!(e.kv.mod_revision.to_string());
                    em.send("DELETED", &gone).await?;
                    continue;
                }
                (false, false) => continue,
            },
        };
        // The watcher sees the event as every watcher does (the object
        // stayed, came or went in its selection as in the store): the hub's
        // one encoding, shared; only a selection's own ADDED or DELETED is
        // encoded for it.
        if !em.table
            && kind == shared.kind()
            && let Some(line) = shared.line()
        {
            em.line(line).await?;
            continue;
        }
        em.send(kind, &new).await?;
    }
}

fn bookmark(res: &Resource, rev: i64) -> Value {
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}})
}
