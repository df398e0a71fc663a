//! The controller's key-value store, with etcd's semantics.
//!
//! Every write bumps one global revision; a key's `mod_revision` is the
//! revision of its last write and becomes the object's resourceVersion.
//! Writes are transactions of compares on `mod_revision` followed by puts and
//! deletes, applied only when every compare holds, so create ("must not
//! exist"), update ("unchanged since I read it") and multi-key allocations
//! (a pod and its IP claim) are all compare-and-swap. `watch` yields every
//! event after a revision, in order, or `Compacted` when that revision is older
//! than the history kept.

pub mod encrypt;
mod etcd;
mod sqlite;

pub use encrypt::EncryptingStore;
pub use etcd::EtcdStore;
pub use sqlite::{SqliteOptions, SqliteStore};

use std::pin::Pin;

use futures::Stream;

tokio::task_local! {
    /// Set for the work of a node heartbeat (a Lease renewal, a node
    /// status): the store serves it ahead of other work (its own readers,
    /// the head of the write queue), so that no other client's load delays
    /// it, in the manner of API Priority and Fairness' exempt level.
    pub static HEARTBEAT: bool;
}

/// Whether the current task works for a heartbeat.
pub fn is_heartbeat() -> bool {
    HEARTBEAT.try_with(|h| *h).unwrap_or(false)
}

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: i64,
    /// Revision of the last write to the key.
    pub mod_revision: i64,
}

/// A compare in a transaction: the key's current `mod_revision` must equal
/// `mod_revision`; 0 means "the key must not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub mod_revision: i64,
}

impl Compare {
    pub fn absent(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            mod_revision: 0,
        }
    }
    pub fn at(key: impl Into<String>, mod_revision: i64) -> Self {
        Self {
            key: key.into(),
            mod_revision,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Op {
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Op::Put {
            key: key.into(),
            value,
        }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Compares, then operations applied atomically when all compares hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// All compares held; the operations were applied at this revision.
    Applied { revision: i64 },
    /// Some compare failed; nothing was written. `revision` is the store's
    /// revision at the time.
    Failed { revision: i64 },
}

impl TxnOutcome {
    pub fn applied(&self) -> Option<i64> {
        match self {
            TxnOutcome::Applied { revision } => Some(*revision),
            TxnOutcome::Failed { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A change to one key. For a delete, `kv.value` is the value the key had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change; for a delete, its last value with
    /// `mod_revision` set to the delete's revision.
    pub kv: KeyValue,
    /// The key before the change, when it existed.
    pub prev: Option<KeyValue>,
}

/// What a watch yields: events, and now and then the store's revision when
/// nothing under the prefix changed (so a watcher can resume from there: every
/// event up to that revision has been delivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    Event(Event),
    Progress(i64),
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<KeyValue>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Whether more keys follow the last one.
    pub more: bool,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<WatchItem, StoreError>> + Send>>;

/// Items a store watch hands its reader ahead of it, at most: enough that a
/// busy stream (the watch hub's one feed of every event) moves in batches,
/// not one task switch per event.
const HANDOFF_ITEMS: usize = 256;
/// Bytes of stored values (an object and its previous version) handed
/// ahead, at most (one larger event alone): a watcher that reads slowly
/// holds this much here whatever the objects' size.
const HANDOFF_BYTES: usize = 4 * 1024 * 1024;

/// The sending side of a store watch's hand-off (see [`handoff`]).
pub(crate) struct WatchSender {
    tx: tokio::sync::mpsc::Sender<Result<WatchItem, StoreError>>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
}

/// The weight of `item` in a hand-off's byte budget.
fn handoff_permits(item: &Result<WatchItem, StoreError>) -> u32 {
    let bytes = match item {
        Ok(WatchItem::Event(e)) => e.kv.value.len() + e.prev.as_ref().map_or(0, |p| p.value.len()),
        _ => 0,
    };
    bytes.clamp(1, HANDOFF_BYTES) as u32
}

impl WatchSender {
    /// Hands `item` over once there is room; Err when the reader went away.
    pub(crate) async fn send(&self, item: Result<WatchItem, StoreError>) -> Result<(), ()> {
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(handoff_permits(&item))
            .await
            .map_err(|_| ())?;
        permit.forget();
        self.tx.send(item).await.map_err(|_| ())
    }

    /// Resolves when the reader went away.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A store watch's hand-off to its reader, bounded in items
/// ([`HANDOFF_ITEMS`]) and in bytes ([`HANDOFF_BYTES`]).
pub(crate) fn handoff() -> (WatchSender, EventStream) {
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::mpsc::channel(HANDOFF_ITEMS);
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(HANDOFF_BYTES));
    let given_back = budget.clone();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |item| {
        given_back.add_permits(handoff_permits(&item) as usize);
        item
    });
    (WatchSender { tx, budget }, Box::pin(stream))
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A watch from resourceVersion `requested` asks for history older than
    /// what is kept; `oldest` is the oldest resourceVersion to watch from.
    #[error("revision {requested} has been compacted (watch from {oldest} or later)")]
    Compacted { requested: i64, oldest: i64 },
    /// The watcher fell too far behind the writers and was dropped; it must
    /// list again.
    #[error("watch fell behind the store and was closed")]
    Lagged,
    /// A read at a revision the store has not reached yet.
    #[error("revision {requested} is in the future (the store is at {current})")]
    Future { requested: i64, current: i64 },
    #[error("sqlite store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("etcd store: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("store: {0}")]
    Other(String),
}

/// The store as the API server uses it.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, sorted by key, and the revision the
    /// list was read at.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError>;
    /// At most `limit` keys under `prefix` that sort after `after` (from the
    /// first when None), as they stood at revision `at` (now when None), in
    /// key order: a page of a list that stays consistent across pages.
    /// `Compacted` when `at` is older than the history kept, `Future` when
    /// the store has not reached it.
    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<i64>,
    ) -> Result<Page, StoreError>;
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError>;
    /// Every event on keys under `prefix` with a revision greater than
    /// `after`, in revision order, then live events.
    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError>;
    async fn revision(&self) -> Result<i64, StoreError>;
    /// Drops history up to and including `revision`.
    async fn compact(&self, revision: i64) -> Result<(), StoreError>;
    /// Which backend this is, for logs and status ("sqlite", "etcd").
    fn backend(&self) -> &'static str;
}

/// The smallest key greater than every key with this prefix (etcd's
/// "range end" of a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("ab"), b"ac".to_vec());
    }
}
