//! The embedded store: one SQLite file in WAL mode, fsynced on every commit.
//!
//! One writer thread owns the write connection and commits queued
//! transactions in groups: each transaction gets its own revision, and one
//! fsync covers the group, so throughput does not stop at the disk's fsync
//! rate while every acknowledged write is still durable. Every change is also
//! appended to a log table, which is the watch history; compaction trims it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{
    Event, EventKind, EventStream, KeyValue, Op, Page, Store, StoreError, Txn, TxnOutcome,
    WatchItem, prefix_end,
};

/// How many queued transactions one commit may cover.
const MAX_GROUP: usize = 512;
/// Batches of events buffered for slow watchers before they fall back to
/// reading the log table.
const BROADCAST_CAPACITY: usize = 1024;
/// How often an idle watch reports the store's revision.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// `synchronous=FULL` when true: an acknowledged write survives power
    /// loss. Tests that do not need that may turn it off.
    pub durable: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { durable: true }
    }
}

type Batch = Arc<Vec<Event>>;

struct Request {
    txn: Txn,
    reply: oneshot::Sender<Result<TxnOutcome, StoreError>>,
    /// A heartbeat's write: it goes ahead of the queue.
    heartbeat: bool,
}

/// Reads running at once. Each holds a connection with its own page cache,
/// so an unbounded number (one per concurrent request) costs memory for
/// nothing: WAL readers do not block each other, but two cores cannot run
/// more than a few of them anyway.
const READERS: usize = 8;
/// Reads reserved for heartbeats (see [`super::HEARTBEAT`]).
const HEARTBEAT_READERS: usize = 2;

pub struct SqliteStore {
    path: PathBuf,
    reading: Arc<tokio::sync::Semaphore>,
    heartbeat_reading: Arc<tokio::sync::Semaphore>,
    writer: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<Batch>,
    readers: Arc<ReaderPool>,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut conn = match conn {
            Some(conn) => conn,
            None => open(&self.path, false)?,
        };
        let result = f(&mut conn);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        result
    }
}

fn open(path: &Path, durable: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", if durable { "FULL" } else { "OFF" })?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    key TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_value BLOB,
    prev_create_rev INTEGER,
    prev_mod_rev INTEGER,
    PRIMARY KEY (rev, sub)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compacted', 0);
";

impl SqliteStore {
    /// Opens (creating when needed) the store in `path`.
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open(&path, options.durable)?;
        conn.execute_batch(SCHEMA)?;
        let revision: i64 =
            conn.query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                r.get(0)
            })?;
        let (writer, queue) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
        let publish = events.clone();
        thread::Builder::new()
            .name("weft-sqlite-writer".into())
            .spawn(move || write_loop(conn, revision, queue, publish))
            .map_err(|e| StoreError::Other(format!("starting the writer thread: {e}")))?;
        let readers = Arc::new(ReaderPool {
            path: path.clone(),
            idle: Mutex::new(Vec::new()),
        });
        Ok(Self {
            path,
            reading: Arc::new(tokio::sync::Semaphore::new(READERS)),
            heartbeat_reading: Arc::new(tokio::sync::Semaphore::new(HEARTBEAT_READERS)),
            writer,
            events,
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let lane = if super::is_heartbeat() {
            &self.heartbeat_reading
        } else {
            &self.reading
        };
        let permit = lane
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?;
        let result = tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Other(format!("reader task: {e}")))?;
        drop(permit);
        result
    }
}

/// Write requests taken off the channel, heartbeats apart.
#[derive(Default)]
struct Waiting {
    urgent: VecDeque<Request>,
    rest: VecDeque<Request>,
}

impl Waiting {
    /// The next group to commit: every request on the channel is taken
    /// off it, and heartbeats go first; None once the channel is closed and
    /// nothing waits.
    fn next_group(&mut self, queue: &mut mpsc::UnboundedReceiver<Request>) -> Option<Vec<Request>> {
        if self.urgent.is_empty() && self.rest.is_empty() {
            self.rest.push_back(queue.blocking_recv()?);
        }
        while let Ok(r) = queue.try_recv() {
            if r.heartbeat {
                self.urgent.push_back(r);
            } else {
                self.rest.push_back(r);
            }
        }
        let mut group = Vec::with_capacity(MAX_GROUP);
        while group.len() < MAX_GROUP {
            match self.urgent.pop_front().or_else(|| self.rest.pop_front()) {
                Some(r) => group.push(r),
                None => break,
            }
        }
        Some(group)
    }
}

fn write_loop(
    mut conn: Connection,
    mut revision: i64,
    mut queue: mpsc::UnboundedReceiver<Request>,
    publish: broadcast::Sender<Batch>,
) {
    // What has been taken off the channel and waits: heartbeats first.
    let mut waiting = Waiting::default();
    while let Some(group) = waiting.next_group(&mut queue) {
        let start = revision;
        match commit_group(&mut conn, &mut revision, &group) {
            Ok((outcomes, batches)) => {
                for batch in batches {
                    // No receiver is fine: nobody is watching.
                    let _ = publish.send(Arc::new(batch));
                }
                for (request, outcome) in group.into_iter().zip(outcomes) {
                    let _ = request.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                revision = start;
                let message = e.to_string();
                for request in group {
                    let _ = request.reply.send(Err(StoreError::Other(message.clone())));
                }
            }
        }
    }
}

fn current(conn: &Connection, key: &str) -> Result<Option<KeyValue>, rusqlite::Error> {
    conn.prepare_cached("SELECT value, create_rev, mod_rev FROM kv WHERE key = ?1")?
        .query_row([key], |r| {
            Ok(KeyValue {
                key: key.to_string(),
                value: r.get(0)?,
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        })
        .optional()
}

type Committed = (Vec<TxnOutcome>, Vec<Vec<Event>>);

fn commit_group(
    conn: &mut Connection,
    revision: &mut i64,
    group: &[Request],
) -> Result<Committed, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(group.len());
    let mut batches = Vec::new();
    for request in group {
        let txn = &request.txn;
        let mut holds = true;
        for compare in &txn.compares {
            let mod_rev = current(&tx, &compare.key)?
                .map(|kv| kv.mod_revision)
                .unwrap_or(0);
            if mod_rev != compare.mod_revision {
                holds = false;
                break;
            }
        }
        if !holds {
            outcomes.push(TxnOutcome::Failed {
                revision: *revision,
            });
            continue;
        }
        let writes = txn.ops.iter().any(|op| match op {
            Op::Put { .. } => true,
            Op::Delete { key } => current(&tx, key).ok().flatten().is_some(),
        });
        if !writes {
            outcomes.push(TxnOutcome::Applied {
                revision: *revision,
            });
            continue;
        }
        *revision += 1;
        let rev = *revision;
        let mut events = Vec::with_capacity(txn.ops.len());
        for (sub, op) in txn.ops.iter().enumerate() {
            let prev = current(&tx, op.key())?;
            let event = match op {
                Op::Put { key, value } => {
                    let create_revision = prev.as_ref().map(|p| p.create_revision).unwrap_or(rev);
                    tx.prepare_cached(
                        "INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(key) DO UPDATE SET value = ?2, create_rev = ?3, mod_rev = ?4",
                    )?
                    .execute(params![key, value, create_revision, rev])?;
                    Event {
                        kind: EventKind::Put,
                        kv: KeyValue {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision,
                            mod_revision: rev,
                        },
                        prev,
                    }
                }
                Op::Delete { key } => {
                    let Some(prev) = prev else { continue };
                    tx.prepare_cached("DELETE FROM kv WHERE key = ?1")?
                        .execute([key])?;
                    Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            mod_revision: rev,
                            ..prev.clone()
                        },
                        prev: Some(prev),
                    }
                }
            };
            tx.prepare_cached(
                "INSERT INTO log (rev, sub, key, deleted, value, create_rev, prev_value, prev_create_rev, prev_mod_rev)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                    rev,
                    sub as i64,
                    event.kv.key,
                    (event.kind == EventKind::Delete) as i64,
                    event.kv.value,
                    event.kv.create_revision,
                    event.prev.as_ref().map(|p| &p.value),
                    event.prev.as_ref().map(|p| p.create_revision),
                    event.prev.as_ref().map(|p| p.mod_revision),
                ],
            )?;
            events.push(event);
        }
        outcomes.push(TxnOutcome::Applied { revision: rev });
        batches.push(events);
    }
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")?
        .execute([*revision])?;
    tx.commit()?;
    Ok((outcomes, batches))
}

/// The end of a prefix range as text: SQLite orders every TEXT value before
/// every BLOB, so the bound must be text to compare with keys at all.
fn text_end(prefix: &str) -> String {
    String::from_utf8_lossy(&prefix_end(prefix)).into_owned()
}

fn meta(conn: &Connection, name: &str) -> Result<i64, rusqlite::Error> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

/// A page of keys as they stood at revision `at`: the current rows, except
/// that a key written since `at` is taken as the log says it was before its
/// first write after `at` (absent if it did not exist then).
fn page_at(
    tx: &rusqlite::Transaction<'_>,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    at: Option<i64>,
) -> Result<Page, StoreError> {
    let current = meta(tx, "revision")?;
    let rev = at.unwrap_or(current);
    if rev > current {
        return Err(StoreError::Future {
            requested: rev,
            current,
        });
    }
    let compacted = meta(tx, "compacted")?;
    if rev < current && rev < compacted {
        return Err(StoreError::Compacted {
            requested: rev,
            oldest: compacted,
        });
    }
    // Keys sort after `after` (from `after` + NUL on), and never before the
    // prefix: a key from elsewhere (a forged continue token, one from
    // another namespace's list) must not widen the range.
    let start = match after {
        Some(a) => format!("{a}\0").max(prefix.to_string()),
        None => prefix.to_string(),
    };
    let end = text_end(prefix);
    // What each key written since `rev` was at `rev`.
    let mut then: std::collections::HashMap<String, Option<KeyValue>> = Default::default();
    if rev < current {
        let mut stmt = tx.prepare_cached(
            "SELECT key, prev_value, prev_create_rev, prev_mod_rev FROM log
             WHERE rev > ?1 AND key >= ?2 AND key < ?3 ORDER BY rev, sub",
        )?;
        let mut rows = stmt.query(params![rev, start, end])?;
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            if then.contains_key(&key) {
                continue;
            }
            let prev = match r.get::<_, Option<Vec<u8>>>(1)? {
                Some(value) => Some(KeyValue {
                    key: key.clone(),
                    value,
                    create_revision: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                    mod_revision: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                }),
                None => None,
            };
            then.insert(key, prev);
        }
    }
    // Enough current rows that, with every changed one set aside, `limit`
    // and one more remain.
    let want = if limit == 0 {
        -1
    } else {
        (limit + then.len() + 1) as i64
    };
    let mut stmt = tx.prepare_cached(
        "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![start, end, want], |r| {
        Ok(KeyValue {
            key: r.get(0)?,
            value: r.get(1)?,
            create_revision: r.get(2)?,
            mod_revision: r.get(3)?,
        })
    })?;
    let rows = rows.collect::<Result<Vec<_>, _>>()?;
    // Past the last row read, other current rows may sort before a changed
    // key: only keys up to it are known to be complete.
    let cut = (want >= 0 && rows.len() as i64 == want).then(|| rows[rows.len() - 1].key.clone());
    let mut items: Vec<KeyValue> = rows
        .into_iter()
        .filter(|kv| !then.contains_key(&kv.key))
        .collect();
    items.extend(then.into_values().flatten());
    if let Some(cut) = &cut {
        items.retain(|kv| &kv.key <= cut);
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    let more = cut.is_some() || (limit > 0 && items.len() > limit);
    if limit > 0 {
        items.truncate(limit);
    }
    Ok(Page {
        items,
        revision: rev,
        more,
    })
}

/// Events replayed from the log per read, at most (whole revisions: a
/// read may go over by one transaction's events).
const REPLAY_EVENTS: usize = 256;
const REPLAY_BYTES: usize = 2 * 1024 * 1024;

/// One page of logged events under `prefix` with revisions in
/// (after, upto] (`upto`: the store's revision when None), whole revisions
/// only, at most [`REPLAY_EVENTS`] events and [`REPLAY_BYTES`]; the
/// revision everything up to which they cover, and `upto`.
fn history(
    conn: &mut Connection,
    prefix: &str,
    after: i64,
    upto: Option<i64>,
) -> Result<(Vec<Event>, i64, i64), StoreError> {
    let tx = conn.transaction()?;
    let compacted = meta(&tx, "compacted")?;
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            oldest: compacted,
        });
    }
    let upto = match upto {
        Some(u) => u,
        None => meta(&tx, "revision")?,
    };
    let end = text_end(prefix);
    let mut stmt = tx.prepare_cached(
        "SELECT rev, key, deleted, value, create_rev, prev_value, prev_create_rev, prev_mod_rev
         FROM log WHERE rev > ?1 AND rev <= ?2 AND key >= ?3 AND key < ?4 ORDER BY rev, sub",
    )?;
    let mut rows = stmt.query(params![after, upto, prefix, end])?;
    let (mut events, mut bytes) = (Vec::new(), 0usize);
    // Everything up to `reached` is in `events`.
    let mut reached = upto;
    while let Some(r) = rows.next()? {
        let rev: i64 = r.get(0)?;
        let last = events.last().map(|e: &Event| e.kv.mod_revision);
        if (events.len() >= REPLAY_EVENTS || bytes >= REPLAY_BYTES) && last != Some(rev) {
            // Full, at a revision's end: the rest next time.
            reached = last.unwrap_or(after);
            break;
        }
        let key: String = r.get(1)?;
        let deleted: i64 = r.get(2)?;
        let prev = match r.get::<_, Option<Vec<u8>>>(5)? {
            Some(value) => Some(KeyValue {
                key: key.clone(),
                value,
                create_revision: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
                mod_revision: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
            }),
            None => None,
        };
        let value: Vec<u8> = r.get(3)?;
        bytes += value.len() + prev.as_ref().map_or(0, |p| p.value.len());
        events.push(Event {
            kind: if deleted != 0 {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: KeyValue {
                key,
                value,
                create_revision: r.get(4)?,
                mod_revision: rev,
            },
            prev,
        });
    }
    drop(rows);
    drop(stmt);
    tx.commit()?;
    Ok((events, reached, upto))
}

/// Sends the logged events under `prefix` after `after` (up to the
/// store's revision now), a page at a time; the revision reached, or None
/// when the watcher went away.
async fn replay(
    readers: &Arc<ReaderPool>,
    prefix: &str,
    after: i64,
    tx: &super::WatchSender,
) -> Result<Option<i64>, StoreError> {
    let (mut from, mut upto) = (after, None);
    loop {
        let (readers, p) = (readers.clone(), prefix.to_string());
        let (events, reached, end) =
            tokio::task::spawn_blocking(move || readers.with(|c| history(c, &p, from, upto)))
                .await
                .map_err(|e| StoreError::Other(format!("reader task: {e}")))??;
        for event in events {
            if tx.send(Ok(WatchItem::Event(event))).await.is_err() {
                return Ok(None);
            }
        }
        if reached >= end {
            return Ok(Some(end));
        }
        (from, upto) = (reached, Some(end));
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.read(move |conn| Ok(current(conn, &key)?)).await
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let prefix = prefix.to_string();
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let revision = meta(&tx, "revision")?;
            let end = text_end(&prefix);
            let mut stmt = tx.prepare_cached(
                "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
            )?;
            let rows = stmt.query_map(params![prefix, end], |r| {
                Ok(KeyValue { key: r.get(0)?, value: r.get(1)?, create_revision: r.get(2)?, mod_revision: r.get(3)? })
            })?;
            let items = rows.collect::<Result<Vec<_>, _>>()?;
            drop(stmt);
            tx.commit()?;
            Ok((items, revision))
        })
        .await
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<i64>,
    ) -> Result<Page, StoreError> {
        let prefix = prefix.to_string();
        let after = after.map(String::from);
        self.read(move |conn| {
            let tx = conn.transaction()?;
            let page = page_at(&tx, &prefix, after.as_deref(), limit, at)?;
            tx.commit()?;
            Ok(page)
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(Request {
                txn,
                reply,
                heartbeat: super::is_heartbeat(),
            })
            .map_err(|_| StoreError::Other("the writer thread has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Other("the writer thread has stopped".into()))?
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError> {
        // Subscribe before reading history, so no event falls between the two.
        let mut live = self.events.subscribe();
        let readers = self.readers.clone();
        let prefix = prefix.to_string();
        // The compaction check, before the stream is handed out.
        {
            let (readers, prefix) = (readers.clone(), prefix.clone());
            tokio::task::spawn_blocking(move || {
                readers.with(|c| history(c, &prefix, after, Some(after)))
            })
            .await
            .map_err(|e| StoreError::Other(format!("reader task: {e}")))??;
        }
        // A watcher that reads slowly holds a page and the hand-off's
        // bytes, whatever the objects' size.
        let (tx, rx) = super::handoff();
        tokio::spawn(async move {
            // The history, a page at a time, then live events.
            let mut sent = match replay(&readers, &prefix, after, &tx).await {
                Ok(Some(upto)) => upto,
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            // The last revision the watcher knows it has seen everything up to.
            let mut reported = sent;
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            loop {
                let batch = tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {
                        // Other prefixes moved the revision on: say so, so
                        // that an idle watcher can resume from here.
                        if sent > reported {
                            reported = sent;
                            if tx.send(Ok(WatchItem::Progress(sent))).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    batch = live.recv() => batch,
                };
                match batch {
                    Ok(batch) => {
                        let rev = batch.first().map(|e| e.kv.mod_revision).unwrap_or(0);
                        if rev <= sent {
                            continue;
                        }
                        sent = rev;
                        for event in batch.iter().filter(|e| e.kv.key.starts_with(&prefix)) {
                            reported = rev;
                            if tx.send(Ok(WatchItem::Event(event.clone()))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Too slow for the live feed: catch up from the log.
                        match replay(&readers, &prefix, sent, &tx).await {
                            Ok(Some(upto)) => sent = upto,
                            Ok(None) => return,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        self.read(|conn| Ok(meta(conn, "revision")?)).await
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        // Compaction goes through a reader connection: SQLite serialises it
        // with the writer, and it touches only history.
        self.read(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let compacted = meta(&tx, "compacted")?;
            let current = meta(&tx, "revision")?;
            let target = revision.min(current);
            if target > compacted {
                tx.execute("DELETE FROM log WHERE rev <= ?1", [target])?;
                tx.execute(
                    "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
                    [target],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, heartbeat: bool) -> Request {
        let (reply, _) = oneshot::channel();
        Request {
            txn: Txn::new().then(Op::put(key, Vec::new())),
            reply,
            heartbeat,
        }
    }

    /// A heartbeat behind a backlog of writes is in the next group, first.
    #[test]
    fn heartbeats_jump_the_write_queue() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for i in 0..MAX_GROUP * 3 {
            tx.send(request(&format!("/w/{i}"), false)).unwrap();
        }
        tx.send(request("/lease", true)).unwrap();
        let mut waiting = Waiting::default();
        let group = waiting.next_group(&mut rx).unwrap();
        assert_eq!(group.len(), MAX_GROUP);
        assert_eq!(group[0].txn.ops[0].key(), "/lease");
        assert_eq!(group[1].txn.ops[0].key(), "/w/0");
        // The rest keep their order.
        let next = waiting.next_group(&mut rx).unwrap();
        assert_eq!(next[0].txn.ops[0].key(), format!("/w/{}", MAX_GROUP - 1));
        drop(tx);
        let mut left = next.len();
        while let Some(g) = waiting.next_group(&mut rx) {
            left += g.len();
        }
        assert_eq!(left, MAX_GROUP * 3 + 1 - MAX_GROUP);
    }
}
