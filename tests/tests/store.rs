//! One conformance suite for both store backends: SQLite (embedded) and etcd
//! (Debian's etcd-server, started in a test-owned network namespace).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::StreamExt;
use weft_controller::store::{
    Compare, EtcdStore, EventKind, EventStream, Op, SqliteOptions, SqliteStore, Store, StoreError,
    Txn, TxnOutcome, WatchItem,
};
use weft_tests::island::{Etcd, Island};

/// The next event, skipping progress reports.
async fn next(stream: &mut EventStream) -> Result<weft_controller::store::Event> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?;
        match item.ok_or_else(|| anyhow::anyhow!("watch ended"))?? {
            WatchItem::Event(e) => return Ok(e),
            WatchItem::Progress(_) => continue,
        }
    }
}

async fn create(store: &dyn Store, key: &str, value: &str) -> Result<i64> {
    let outcome = store
        .txn(
            Txn::new()
                .when(Compare::absent(key))
                .then(Op::put(key, value.into())),
        )
        .await?;
    outcome
        .applied()
        .ok_or_else(|| anyhow::anyhow!("create of {key} failed"))
}

async fn conformance(store: Arc<dyn Store>) -> Result<()> {
    let s = store.as_ref();
    let start = s.revision().await?;

    // Create: a new key gets a new revision; a second create fails and writes nothing.
    let r1 = create(s, "/c/a/one", "1").await?;
    ensure!(
        r1 == start + 1,
        "first write is revision {r1}, expected {}",
        start + 1
    );
    let again = s
        .txn(
            Txn::new()
                .when(Compare::absent("/c/a/one"))
                .then(Op::put("/c/a/one", b"x".to_vec())),
        )
        .await?;
    ensure!(
        again == TxnOutcome::Failed { revision: r1 },
        "duplicate create: {again:?}"
    );
    let kv = s.get("/c/a/one").await?.expect("created key");
    ensure!(
        kv.value == b"1" && kv.mod_revision == r1 && kv.create_revision == r1,
        "{kv:?}"
    );

    // Update: compare-and-swap on mod_revision.
    let r2 = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/one", r1))
                .then(Op::put("/c/a/one", b"2".to_vec())),
        )
        .await?;
    let r2 = r2.applied().expect("fresh update applies");
    ensure!(r2 == r1 + 1);
    let stale = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/one", r1))
                .then(Op::put("/c/a/one", b"3".to_vec())),
        )
        .await?;
    ensure!(stale.applied().is_none(), "a stale update must fail");
    let kv = s.get("/c/a/one").await?.expect("key");
    ensure!(
        kv.value == b"2" && kv.mod_revision == r2 && kv.create_revision == r1,
        "{kv:?}"
    );

    // Multi-key transactions are all or nothing.
    let r3 = create(s, "/c/a/two", "t").await?;
    let failed = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/two", r3))
                .when(Compare::absent("/c/a/one"))
                .then(Op::put("/c/a/two", b"changed".to_vec()))
                .then(Op::put("/c/a/three", b"new".to_vec())),
        )
        .await?;
    ensure!(failed.applied().is_none());
    ensure!(s.get("/c/a/two").await?.expect("two").value == b"t");
    ensure!(
        s.get("/c/a/three").await?.is_none(),
        "nothing of a failed txn is written"
    );
    let r4 = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/two", r3))
                .then(Op::put("/c/a/two", b"changed".to_vec()))
                .then(Op::put("/c/a/three", b"new".to_vec())),
        )
        .await?
        .applied()
        .expect("applies");
    ensure!(s.get("/c/a/two").await?.expect("two").mod_revision == r4);
    ensure!(
        s.get("/c/a/three").await?.expect("three").mod_revision == r4,
        "one txn, one revision"
    );

    // List: by prefix, sorted, with the revision it was read at.
    create(s, "/c/b/other", "o").await?;
    create(s, "/c/a-sibling", "s").await?;
    let (items, rev) = s.list("/c/a/").await?;
    let keys: Vec<_> = items.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(
        keys == ["/c/a/one", "/c/a/three", "/c/a/two"],
        "list: {keys:?}"
    );
    ensure!(rev >= r4 + 2, "list revision {rev}");

    // Delete with a compare; a stale one fails.
    let stale_delete = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/one", r1))
                .then(Op::delete("/c/a/one")),
        )
        .await?;
    ensure!(stale_delete.applied().is_none());
    let r5 = s
        .txn(
            Txn::new()
                .when(Compare::at("/c/a/one", r2))
                .then(Op::delete("/c/a/one")),
        )
        .await?;
    let r5 = r5.applied().expect("delete applies");
    ensure!(s.get("/c/a/one").await?.is_none());

    // Watch from a past revision: every later event under the prefix, in
    // order, deletes with their last value; then live events.
    let mut watch = s.watch("/c/a/", r1).await?;
    let e = next(&mut watch).await?;
    ensure!(
        e.kind == EventKind::Put && e.kv.key == "/c/a/one" && e.kv.mod_revision == r2,
        "{e:?}"
    );
    ensure!(
        e.prev.as_ref().map(|p| p.value.as_slice()) == Some(b"1".as_slice()),
        "prev value: {e:?}"
    );
    let e = next(&mut watch).await?;
    ensure!(e.kv.key == "/c/a/two" && e.kv.mod_revision == r3, "{e:?}");
    let e = next(&mut watch).await?;
    ensure!(e.kv.mod_revision == r4, "{e:?}");
    let e2 = next(&mut watch).await?;
    ensure!(
        e2.kv.mod_revision == r4 && e.kv.key != e2.kv.key,
        "both keys of one txn: {e2:?}"
    );
    let e = next(&mut watch).await?;
    ensure!(
        e.kind == EventKind::Delete && e.kv.key == "/c/a/one" && e.kv.mod_revision == r5,
        "{e:?}"
    );
    ensure!(e.kv.value == b"2", "a delete carries the last value: {e:?}");
    create(s, "/c/b/not-watched", "n").await?;
    let r6 = create(s, "/c/a/live", "l").await?;
    let e = next(&mut watch).await?;
    ensure!(
        e.kv.key == "/c/a/live" && e.kv.mod_revision == r6,
        "live event, other prefixes filtered: {e:?}"
    );
    drop(watch);

    // Concurrent compare-and-swap: every increment lands exactly once.
    create(s, "/c/counter", "0").await?;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for _ in 0..5 {
                loop {
                    let kv = store.get("/c/counter").await?.expect("counter");
                    let n: u32 = String::from_utf8_lossy(&kv.value).parse()?;
                    let txn = Txn::new()
                        .when(Compare::at("/c/counter", kv.mod_revision))
                        .then(Op::put("/c/counter", (n + 1).to_string().into_bytes()));
                    if let Some(rev) = store.txn(txn).await?.applied() {
                        revisions.push(rev);
                        break;
                    }
                }
            }
            anyhow::Ok(revisions)
        }));
    }
    let mut seen = HashSet::new();
    for task in tasks {
        for rev in task.await?? {
            ensure!(seen.insert(rev), "revision {rev} handed out twice");
        }
    }
    let counter = s.get("/c/counter").await?.expect("counter");
    ensure!(
        counter.value == b"40",
        "counter is {}",
        String::from_utf8_lossy(&counter.value)
    );

    // Compaction: a watch from before the compacted revision fails with
    // Compacted; one from after it works.
    let now = s.revision().await?;
    s.compact(now - 1).await?;
    let result = match s.watch("/c/", r1).await {
        Err(e) => Err(e),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), next(&mut w)).await? {
            Err(e) => match e.downcast::<StoreError>() {
                Ok(e) => Err(e),
                Err(other) => return Err(other),
            },
            Ok(event) => Ok(event),
        },
    };
    ensure!(
        matches!(result, Err(StoreError::Compacted { .. })),
        "watch before compaction: {result:?}"
    );
    let mut watch = s.watch("/c/", now - 1).await?;
    let e = next(&mut watch).await?;
    ensure!(
        e.kv.mod_revision == now,
        "watch from the compacted revision onwards: {e:?}"
    );
    Ok(())
}

/// More than fits in one gRPC message (etcd's client takes 4 MiB by
/// default): a list and a watch replaying history still return every key
/// under the prefix, and none beside it.
async fn large(store: Arc<dyn Store>) -> Result<()> {
    let s = store.as_ref();
    const KEYS: usize = 1_200;
    let value = "x".repeat(8 * 1024);
    create(s, "/big", "beside").await?;
    create(s, "/bih/0", "beside").await?;
    let start = s.revision().await?;
    let mut last = 0;
    for i in 0..KEYS {
        last = create(s, &format!("/big/{i:05}"), &value).await?;
    }
    create(s, "/big0", "beside").await?;
    let (items, _) = s.list("/big/").await?;
    ensure!(items.len() == KEYS, "{} of {KEYS} keys listed", items.len());
    let keys: HashSet<&str> = items.iter().map(|kv| kv.key.as_str()).collect();
    ensure!(
        keys.len() == KEYS && keys.iter().all(|k| k.starts_with("/big/")),
        "listed keys are not the {KEYS} under the prefix"
    );
    let mut watch = s.watch("/big/", start).await?;
    for i in 0..KEYS {
        let e = next(&mut watch).await?;
        ensure!(
            e.kv.key == format!("/big/{i:05}") && e.kv.value.len() == value.len(),
            "event {i} of the replay: {}",
            e.kv.key
        );
    }
    ensure!(last > start, "writes moved the revision");
    Ok(())
}

#[test]
fn sqlite_lists_and_replays_more_than_a_message() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default())?;
        large(Arc::new(store)).await
    })
}

#[test]
fn etcd_lists_and_replays_more_than_a_message() -> Result<()> {
    let island = Island::new("etcd")?;
    let etcd = Etcd::start(&island)?;
    let endpoint = etcd.endpoint.clone();
    island.block_on(async move {
        let store = Arc::new(EtcdStore::connect(&[endpoint]).await?);
        large(store.clone()).await?;
        // Eighty objects near etcd's 1.5 MiB request limit: a page of them
        // passes even the raised message limit (64 MiB), so pages shrink.
        let value = "y".repeat(1024 * 1024);
        for i in 0..80 {
            create(store.as_ref(), &format!("/huge/{i:02}"), &value).await?;
        }
        let (items, _) = store.list("/huge/").await?;
        ensure!(
            items.len() == 80,
            "{} of 80 large objects listed",
            items.len()
        );
        Ok(())
    })?
}

/// Every page of a list read at one revision, whatever was written since.
async fn pages_at(
    store: &dyn Store,
    prefix: &str,
    at: Option<i64>,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let mut pinned = at;
    loop {
        let page = store
            .list_page(prefix, after.as_deref(), limit, pinned)
            .await?;
        ensure!(
            page.items.len() <= limit,
            "a page of {} with limit {limit}",
            page.items.len()
        );
        pinned = Some(page.revision);
        out.extend(page.items.iter().map(|kv| {
            (
                kv.key.clone(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        }));
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => return Ok(out),
        }
    }
}

/// Paged lists at a past revision see the keys as they were then: changed
/// keys with their old values, deleted ones still there, created ones not
/// yet; a compacted revision is Compacted and a future one Future.
async fn paging(store: Arc<dyn Store>) -> Result<()> {
    let s = store.as_ref();
    for i in 0..10 {
        create(s, &format!("/p/k{i}"), &format!("v{i}")).await?;
    }
    create(s, "/p0", "beside").await?;
    create(s, "/p.x", "beside").await?;
    let then = s.revision().await?;
    let before: Vec<(String, String)> = (0..10)
        .map(|i| (format!("/p/k{i}"), format!("v{i}")))
        .collect();
    // Change, delete and add keys at the start, middle and end of the range.
    for k in ["/p/k0", "/p/k5", "/p/k9"] {
        let kv = s.get(k).await?.expect("key");
        s.txn(
            Txn::new()
                .when(Compare::at(k, kv.mod_revision))
                .then(Op::put(k, b"changed".to_vec())),
        )
        .await?;
    }
    for k in ["/p/k1", "/p/k6"] {
        s.txn(Txn::new().then(Op::delete(k))).await?;
    }
    for k in ["/p/a", "/p/k55", "/p/z"] {
        create(s, k, "new").await?;
    }
    for limit in [1, 3, 4, 100] {
        let got = pages_at(s, "/p/", Some(then), limit).await?;
        ensure!(got == before, "limit {limit} at {then}: {got:?}");
    }
    let now = pages_at(s, "/p/", None, 4).await?;
    let keys: Vec<&str> = now.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(
        keys == [
            "/p/a", "/p/k0", "/p/k2", "/p/k3", "/p/k4", "/p/k5", "/p/k55", "/p/k7", "/p/k8",
            "/p/k9", "/p/z"
        ],
        "now: {keys:?}"
    );
    // From a key on, and no limit.
    let rest = s.list_page("/p/", Some("/p/k7"), 0, None).await?;
    ensure!(rest.items.len() == 3 && !rest.more, "after k7: {rest:?}");
    // A key before the prefix does not widen the range to "/p.x", which
    // sorts between "/o" and "/p/".
    let all = s.list_page("/p/", Some("/o"), 0, None).await?;
    ensure!(
        all.items.len() == 11 && all.items.iter().all(|kv| kv.key.starts_with("/p/")),
        "after a key before the prefix: {:?}",
        all.items.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    let head = s.revision().await?;
    match s.list_page("/p/", None, 2, Some(head + 1000)).await {
        Err(StoreError::Future { .. }) => {}
        other => anyhow::bail!("a page in the future: {other:?}"),
    }
    s.compact(head - 1).await?;
    match s.list_page("/p/", None, 2, Some(then)).await {
        Err(StoreError::Compacted { .. }) => {}
        other => anyhow::bail!("a page at a compacted revision: {other:?}"),
    }
    Ok(())
}

#[test]
fn sqlite_pages_at_a_revision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default())?;
        paging(Arc::new(store)).await
    })
}

#[test]
fn etcd_pages_at_a_revision() -> Result<()> {
    let island = Island::new("etcd")?;
    let etcd = Etcd::start(&island)?;
    let endpoint = etcd.endpoint.clone();
    island.block_on(async move {
        let store = EtcdStore::connect(&[endpoint]).await?;
        paging(Arc::new(store)).await
    })?
}

#[test]
fn sqlite_conformance() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = SqliteStore::open(dir.path().join("state.db"), SqliteOptions::default())?;
        conformance(Arc::new(store)).await
    })
}

#[test]
fn etcd_conformance() -> Result<()> {
    let island = Island::new("etcd")?;
    let etcd = Etcd::start(&island)?;
    let endpoint = etcd.endpoint.clone();
    island.block_on(async move {
        let store = EtcdStore::connect(&[endpoint]).await?;
        conformance(Arc::new(store)).await
    })?
}

/// Everything acknowledged survives closing and reopening the file, and the
/// revision carries on from where it was.
#[test]
fn sqlite_reopen_keeps_data_and_revision() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("state.db");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let last = {
            let store = SqliteStore::open(&path, SqliteOptions::default())?;
            let mut last = 0;
            for i in 0..50 {
                last = create(&store, &format!("/k/{i:03}"), &i.to_string()).await?;
            }
            last
        };
        let store = SqliteStore::open(&path, SqliteOptions::default())?;
        let (items, rev) = store.list("/k/").await?;
        ensure!(
            items.len() == 50 && rev == last,
            "{} items at {rev}, expected 50 at {last}",
            items.len()
        );
        let next = create(&store, "/k/new", "n").await?;
        ensure!(next == last + 1, "revision goes on: {next} after {last}");
        let mut watch = store.watch("/k/", last - 1).await?;
        ensure!(next_event_rev(&mut watch).await? == last);
        ensure!(next_event_rev(&mut watch).await? == next);
        Ok(())
    })
}

async fn next_event_rev(stream: &mut EventStream) -> Result<i64> {
    Ok(next(stream).await?.kv.mod_revision)
}

/// A watcher that reads nothing while thousands of writes land still gets
/// every event, in order (it falls back from the live feed to the log).
#[test]
fn sqlite_slow_watcher_misses_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(
            dir.path().join("s.db"),
            SqliteOptions { durable: false },
        )?);
        let start = store.revision().await?;
        let mut watch = store.watch("/w/", start).await?;
        let mut writers = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..1500 {
                    create(store.as_ref(), &format!("/w/{w}/{i}"), "v").await?;
                }
                anyhow::Ok(())
            }));
        }
        for w in writers {
            w.await??;
        }
        let mut last = start;
        for _ in 0..6000 {
            let rev = next_event_rev(&mut watch).await?;
            ensure!(rev == last + 1, "event {rev} after {last}");
            last = rev;
        }
        Ok(())
    })
}

/// A watch from far back replays the history a page at a time (whole
/// revisions per page): 400 revisions of two keys each arrive once each,
/// in order, across many pages.
#[test]
fn sqlite_history_replays_in_pages_losing_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let s = SqliteStore::open(
            dir.path().join("state.db"),
            SqliteOptions { durable: false },
        )?;
        let start = s.revision().await?;
        for i in 0..400 {
            let (a, b) = (format!("/h/a{i:03}"), format!("/h/b{i:03}"));
            s.txn(
                Txn::new()
                    .then(Op::put(&a, b"x".to_vec()))
                    .then(Op::put(&b, b"y".to_vec())),
            )
            .await?;
        }
        let mut w = s.watch("/h/", start).await?;
        let mut seen = HashSet::new();
        let mut last = 0;
        while seen.len() < 800 {
            let e = next(&mut w).await?;
            ensure!(e.kv.mod_revision >= last, "out of order at {}", e.kv.key);
            last = e.kv.mod_revision;
            ensure!(seen.insert(e.kv.key.clone()), "{} twice", e.kv.key);
        }
        Ok(())
    })
}
