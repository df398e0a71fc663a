//! The etcd v3 backend: what users run when one machine is not enough.
//!
//! The trait was cut to etcd's semantics, so each call maps onto one etcd
//! request: compares on `mod_revision` (0 for an absent key), a prefix range,
//! a watch from a start revision with previous values.

use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, EventType, GetOptions, KvClient, Txn as EtcdTxn,
    TxnOp, WatchClient, WatchOptions,
};

use super::{
    Event, EventKind, EventStream, KeyValue, Op, Page, Store, StoreError, Txn, TxnOutcome,
    WatchItem, prefix_end,
};

pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    watch: WatchClient,
}

/// The largest gRPC message taken from etcd: one watch event carries an
/// object and its previous version, each up to etcd's request limit (1.5 MiB
/// by default, configurable); a list page is cut to fit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Keys asked for per list page; halved while a page is too large.
const PAGE: i64 = 500;

/// Whether etcd's answer was larger than a gRPC message may be.
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(30));
        let client = Client::connect(endpoints, Some(options)).await?;
        let kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        Ok(Self { client, kv, watch })
    }
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
    }
}

/// etcd's refusals of a read at a revision, as the store's errors.
fn revision_error(e: etcd_client::Error, at: Option<i64>) -> StoreError {
    let text = e.to_string();
    match at {
        Some(requested) if text.contains("required revision has been compacted") => {
            StoreError::Compacted {
                requested,
                oldest: requested + 1,
            }
        }
        Some(requested) if text.contains("required revision is a future revision") => {
            StoreError::Future {
                requested,
                current: requested - 1,
            }
        }
        _ => e.into(),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.map(|h| h.revision()).unwrap_or(0)
}

fn convert_response(
    response: etcd_client::WatchResponse,
    after: i64,
) -> Vec<Result<WatchItem, StoreError>> {
    if response.compact_revision() > 0 {
        return vec![Err(StoreError::Compacted {
            requested: after,
            oldest: response.compact_revision(),
        })];
    }
    if response.canceled() {
        return vec![Err(StoreError::Other(format!(
            "etcd cancelled the watch: {}",
            response.cancel_reason()
        )))];
    }
    if response.events().is_empty() {
        if response.created() {
            return Vec::new();
        }
        return vec![Ok(WatchItem::Progress(header_revision(response.header())))];
    }
    response
        .events()
        .iter()
        .filter_map(|event| {
            let kv = event.kv()?;
            let prev = event.prev_kv().map(convert);
            Some(Ok(WatchItem::Event(match event.event_type() {
                EventType::Put => Event {
                    kind: EventKind::Put,
                    kv: convert(kv),
                    prev,
                },
                EventType::Delete => {
                    // etcd sends a delete's key without a value; callers
                    // want the last value, as with SQLite.
                    let last = prev.clone().unwrap_or_else(|| convert(kv));
                    Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            mod_revision: kv.mod_revision(),
                            ..last
                        },
                        prev,
                    }
                }
            })))
        })
        .collect()
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let response = self.kv.clone().get(key, None).await?;
        Ok(response.kvs().first().map(convert))
    }

    /// In pages, all at the revision of the first (as kube-apiserver lists
    /// etcd): one response with every object of a kind could pass any
    /// message limit.
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let end = prefix_end(prefix);
        let mut kv = self.kv.clone();
        let (mut from, mut page, mut revision) = (prefix.as_bytes().to_vec(), PAGE, 0);
        let mut items = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = match kv.get(from.clone(), Some(options)).await {
                Ok(r) => r,
                Err(e) if too_large(&e) && page > 1 => {
                    page /= 2;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if revision == 0 {
                revision = header_revision(response.header());
            }
            items.extend(response.kvs().iter().map(convert));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((items, revision)),
            }
        }
    }

    async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: Option<i64>,
    ) -> Result<Page, StoreError> {
        let end = prefix_end(prefix);
        // After `after`, and never before the prefix (see the SQLite store).
        let from = match after {
            Some(a) => {
                let mut k = a.as_bytes().to_vec();
                k.push(0);
                k.max(prefix.as_bytes().to_vec())
            }
            None => prefix.as_bytes().to_vec(),
        };
        let mut page = if limit == 0 { 0 } else { limit as i64 };
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if let Some(rev) = at {
                options = options.with_revision(rev);
            }
            match self.kv.clone().get(from.clone(), Some(options)).await {
                Ok(response) => {
                    return Ok(Page {
                        items: response.kvs().iter().map(convert).collect(),
                        revision: at.unwrap_or_else(|| header_revision(response.header())),
                        more: response.more(),
                    });
                }
                // Too large for one message: a shorter page.
                Err(e) if too_large(&e) && page != 1 => {
                    page = if page == 0 { PAGE } else { page / 2 };
                }
                Err(e) => return Err(revision_error(e, at)),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| EtcdCompare::mod_revision(c.key.as_str(), CompareOp::Equal, c.mod_revision))
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let response = self
            .kv
            .clone()
            .txn(EtcdTxn::new().when(compares).and_then(ops))
            .await?;
        let revision = header_revision(response.header());
        Ok(if response.succeeded() {
            TxnOutcome::Applied { revision }
        } else {
            TxnOutcome::Failed { revision }
        })
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<EventStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after + 1)
            .with_prev_key()
            // A revision's events (a history replayed) come in pieces no
            // larger than etcd's request limit.
            .with_fragment()
            // Progress comes from etcd's own timer (every ten minutes by
            // default), sent only to a watcher that has had every event up
            // to it. A progress asked for is not: etcd before 3.4.24 (Debian
            // 12 ships 3.4.23) answers with its current revision while the
            // watcher may still have events of it to send (etcd-io/etcd
            // #15220), and a watcher that trusts it loses those events.
            .with_progress_notify();
        let mut stream = self.watch.clone().watch(prefix, Some(options)).await?;
        let (tx, rx) = super::handoff();
        tokio::spawn(async move {
            loop {
                let response = tokio::select! {
                    _ = tx.closed() => return,
                    response = stream.message() => response,
                };
                let items = match response {
                    Ok(None) => return,
                    Err(e) => vec![Err(e.into())],
                    Ok(Some(response)) => convert_response(response, after),
                };
                let stop = items.iter().any(Result::is_err);
                for item in items {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                if stop {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let response = self
            .client
            .clone()
            .get("/", Some(GetOptions::new().with_count_only()))
            .await?;
        Ok(header_revision(response.header()))
    }

    async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match self.client.clone().compact(revision, None).await {
            Ok(_) => Ok(()),
            // Compacting to a revision already compacted is not an error here.
            Err(e)
                if e.to_string()
                    .contains("required revision has been compacted") =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}
