//! Watch: one JSON event per line (`{"type": ..., "object": ...}`), from a
//! resourceVersion, with selectors, bookmarks and 410 Gone.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use weft_api::ApiError;
use weft_api::resources::Resource;

use super::{ApiState, Query, Selectors, table};
use crate::registry::{decode_stored, parse_rv, store_error};
use crate::store::{EventKind, StoreError, WatchItem};

/// Encodes a watch event line.
fn line(kind: &str, object: &Value) -> bytes::Bytes {
    let mut out =
        serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON values encode");
    out.push(b'\n');
    out.into()
}

struct Emitter {
    tx: mpsc::Sender<Result<bytes::Bytes, std::io::Error>>,
    res: &'static Resource,
    table: bool,
    include: String,
    sent_columns: bool,
}

impl Emitter {
    /// Sends one event; false when the client is gone.
    async fn send(&mut self, kind: &str, obj: &Value) -> bool {
        let object = if self.table && kind != "BOOKMARK" && kind != "ERROR" {
            let t = table::single_row_table(self.res, obj, &self.include, !self.sent_columns);
            self.sent_columns = true;
            let mut t = t;
            t["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
            t
        } else {
            obj.clone()
        };
        self.tx.send(Ok(line(kind, &object))).await.is_ok()
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
    let timeout = query
        .get("timeoutSeconds")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds \"{t}\"")))
        })
        .transpose()?
        .map(Duration::from_secs);
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
    let (initial, start) = match rv {
        Some(rv) => (Vec::new(), rv),
        None => st.registry.list_json(res, ns, |o| sel.matches(o)).await?,
    };
    let opened = st.hub.watch(&prefix, start).await;
    let every = st.bookmark_every;
    let fast = !table && sel.label.is_empty() && sel.field.is_empty();
    let (tx, rx) = mpsc::channel(64);
    let mut em = Emitter {
        tx,
        res,
        table,
        include: query.get("includeObject").unwrap_or("Metadata").to_string(),
        sent_columns: false,
    };
    tokio::spawn(async move {
        for obj in &initial {
            if !em.send("ADDED", obj).await {
                return;
            }
        }
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = em.send("ERROR", &gone(e)).await;
                return;
            }
        };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut last = start;
        let mut bookmarked = start;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let item = tokio::select! {
                _ = em.tx.closed() => return,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    if bookmarks && last > bookmarked {
                        let _ = em.send("BOOKMARK", &bookmark(res, last)).await;
                    }
                    return;
                }
                _ = tick.tick() => {
                    if bookmarks && last > bookmarked {
                        bookmarked = last;
                        if !em.send("BOOKMARK", &bookmark(res, last)).await {
                            return;
                        }
                    }
                    continue;
                }
                item = stream.next() => item,
            };
            match item {
                None => return,
                Some(Err(e)) => {
                    let _ = em.send("ERROR", &gone(e)).await;
                    return;
                }
                Some(Ok(WatchItem::Progress(rev))) => last = last.max(rev),
                Some(Ok(WatchItem::Event(e))) => {
                    last = last.max(e.kv.mod_revision);
                    // No selector and plain JSON: the stored bytes go out as
                    // they are, with the resourceVersion spliced in; nothing
                    // is decoded or encoded per watcher.
                    if fast {
                        let kind = match (&e.kind, &e.prev) {
                            (EventKind::Delete, _) => "DELETED",
                            (EventKind::Put, None) => "ADDED",
                            (EventKind::Put, Some(_)) => "MODIFIED",
                        };
                        if let Some(object) =
                            crate::registry::splice_rv(&e.kv.value, e.kv.mod_revision)
                        {
                            let mut out = Vec::with_capacity(object.len() + 32);
                            out.extend_from_slice(b"{\"type\":\"");
                            out.extend_from_slice(kind.as_bytes());
                            out.extend_from_slice(b"\",\"object\":");
                            out.extend_from_slice(&object);
                            out.extend_from_slice(b"}\n");
                            if em.tx.send(Ok(out.into())).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    let new = match decode_stored(&e.kv) {
                        Ok(o) => o,
                        Err(err) => {
                            let _ = em.send("ERROR", &err.to_status()).await;
                            return;
                        }
                    };
                    let was = e
                        .prev
                        .as_ref()
                        .and_then(|p| decode_stored(p).ok())
                        .is_some_and(|o| sel.matches(&o));
                    let kind = match e.kind {
                        EventKind::Delete if was => "DELETED",
                        EventKind::Delete => continue,
                        EventKind::Put => match (was, sel.matches(&new)) {
                            (true, true) => "MODIFIED",
                            (false, true) => "ADDED",
                            // No longer selected: gone, for this watcher.
                            (true, false) => "DELETED",
                            (false, false) => continue,
                        },
                    };
                    if !em.send(kind, &new).await {
                        return;
                    }
                }
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
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

fn bookmark(res: &Resource, rev: i64) -> Value {
    json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {"resourceVersion": rev.to_string()}})
}
