//! The controllers: reconcile loops over the typed cache, writing through
//! the registry, in the shape kube-rs's `Controller` gives its users. A
//! [`Controller`] for a kind queues the key of every object of that kind
//! that changes (and of the owner of every dependent that changes, or
//! whatever a mapper says), and its workers run a typed
//! `reconcile(Arc<K>, Arc<Ctx>) -> Result<Action, ApiError>` per key; on an
//! error its error policy decides the retry, with back-off per object.
//! Each reconcile is level-triggered (it looks at the whole object and what
//! it owns, not at the event), so running one twice or after a crash
//! converges to the same state.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod history;
pub mod job;
pub mod nodes;
pub mod quota;
pub mod rbac;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccounts;
pub mod statefulset;
pub mod volumes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::{Notify, broadcast};
use weft_api::ApiError;

use crate::cache::{Cache, Change};
use crate::registry::{Kind, Registry};

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// A node whose Lease is older than this becomes NotReady.
    pub node_grace: Duration,
    /// How long pods stay on a NotReady node before they are evicted.
    pub eviction_delay: Duration,
    /// How long an Event is kept after it last happened.
    pub event_ttl: Duration,
    /// The cluster CA (PEM), published in every namespace.
    pub ca_pem: Option<String>,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self {
            node_grace: Duration::from_secs(10),
            eviction_delay: Duration::from_secs(30),
            event_ttl: Duration::from_secs(3600),
            ca_pem: None,
        }
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Ctx {
    /// Where they write.
    pub reg: Registry,
    /// What they read.
    pub cache: Arc<Cache>,
    /// Their settings.
    pub cfg: ControllersConfig,
}

/// What a reconcile asks for next (kube-rs's `Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Action {
    /// Look again after this long, whether or not anything changes.
    Requeue(Duration),
    /// Look again when something the controller follows changes.
    AwaitChange,
}

impl Action {
    /// Look again after `after`.
    pub fn requeue(after: Duration) -> Self {
        Self::Requeue(after)
    }

    /// Look again on the next change.
    pub fn await_change() -> Self {
        Self::AwaitChange
    }

    /// This, but looking again within `limit` at the latest.
    pub fn at_most(self, limit: Duration) -> Self {
        match self {
            Self::Requeue(after) => Self::Requeue(after.min(limit)),
            Self::AwaitChange => Self::Requeue(limit),
        }
    }
}

/// A work queue of object keys ("namespace/name") in client-go's manner: a
/// key is queued at most once, and never handed to two workers at a time (a
/// key added while it is being worked on is queued again when that ends).
#[derive(Default)]
pub struct Queue {
    inner: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    order: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    dirty: HashSet<String>,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Queues `key` (once).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if q.processing.contains(&key) {
            q.dirty.insert(key);
            return;
        }
        if q.queued.insert(key.clone()) {
            q.order.push_back(key);
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: impl Into<String>, delay: Duration) {
        let (queue, key) = (self.clone(), key.into());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// The next key; the caller must call `done` with it when finished.
    pub async fn pop(&self) -> String {
        loop {
            let notified = self.notify.notified();
            {
                let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(key) = q.order.pop_front() {
                    q.queued.remove(&key);
                    q.processing.insert(key.clone());
                    if !q.order.is_empty() {
                        self.notify.notify_one();
                    }
                    return key;
                }
            }
            notified.await;
        }
    }

    /// Ends the work on `key` (queued again if it changed meanwhile).
    pub fn done(&self, key: &str) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.processing.remove(key);
        if q.dirty.remove(key) && q.queued.insert(key.to_string()) {
            q.order.push_back(key.to_string());
            drop(q);
            self.notify.notify_one();
        }
    }

    /// Keys waiting.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }

    /// Whether no key waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `namespace/name` (or `name`).
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// Feeds changes of kind `C` to `on_change`, and calls `resync` first and
/// again whenever the subscriber fell behind (so nothing is missed, only
/// repeated).
pub fn follow<C: Kind>(
    cache: &Arc<Cache>,
    mut on_change: impl FnMut(&Change<C>) + Send + 'static,
    resync: impl Fn() + Send + 'static,
) {
    let mut rx = cache.store::<C>().subscribe();
    tokio::spawn(async move {
        resync();
        loop {
            match rx.recv().await {
                Ok(change) => on_change(&change),
                Err(broadcast::error::RecvError::Lagged(_)) => resync(),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// How a controller retries a reconcile that failed: after a back-off that
/// doubles per failure of that object (50 ms up to 30 s), as kube-rs users
/// write their `error_policy`.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(10)).min(Duration::from_secs(30))
}

/// A controller of kind `K`, being built.
#[must_use]
pub struct Controller<K: Kind> {
    name: &'static str,
    ctx: Arc<Ctx>,
    queue: Arc<Queue>,
    _kind: std::marker::PhantomData<fn() -> K>,
}

impl<K: Kind> Controller<K> {
    /// A controller named `name` of kind `K`: every change of a `K`
    /// queues it.
    pub fn new(name: &'static str, ctx: &Ctx) -> Self {
        let ctx = Arc::new(ctx.clone());
        let queue = Queue::new();
        let q = queue.clone();
        follow::<K>(
            &ctx.cache,
            move |c| q.add(c.key.clone()),
            Self::requeue_all(&ctx, &queue),
        );
        Self {
            name,
            ctx,
            queue,
            _kind: std::marker::PhantomData,
        }
    }

    /// Queues every `K`: what a follower that fell behind (and so may have
    /// missed changes) does.
    fn requeue_all(ctx: &Arc<Ctx>, queue: &Arc<Queue>) -> impl Fn() + Send + 'static {
        let (q, cache) = (queue.clone(), ctx.cache.clone());
        move || {
            for o in cache.store::<K>().list(None) {
                q.add(weft_api::meta::key_of(&*o));
            }
        }
    }

    /// Its queue, for triggers of its own.
    pub fn queue(&self) -> Arc<Queue> {
        self.queue.clone()
    }

    /// Also queues the `K` that controls each changed `C` (its
    /// ownerReference with `controller: true`), as kube-rs's `owns`.
    pub fn owns<C: Kind>(self) -> Self {
        let q = self.queue.clone();
        follow::<C>(
            &self.ctx.cache,
            move |c: &Change<C>| {
                for obj in [&c.new, &c.old].into_iter().flatten() {
                    let owner = obj.meta().owner_references.iter().flatten().find(|r| {
                        r.controller == Some(true)
                            && r.kind == <K as k8s_openapi::Resource>::KIND
                            && r.api_version == <K as k8s_openapi::Resource>::API_VERSION
                    });
                    if let Some(o) = owner {
                        q.add(weft_api::meta::key(
                            obj.meta().namespace.as_deref(),
                            &o.name,
                        ));
                    }
                }
            },
            // Fell behind: every owner may have missed a change.
            self.resync_after_lag(),
        );
        self
    }

    /// What an `owns` or `watches` follower does when it fell behind: queue
    /// every `K` (not at start: `new` already did).
    fn resync_after_lag(&self) -> impl Fn() + Send + 'static {
        let all = Self::requeue_all(&self.ctx, &self.queue);
        let first = std::sync::atomic::AtomicBool::new(true);
        move || {
            if !first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                all();
            }
        }
    }

    /// Also queues the keys `mapper` gives for each changed `C`, as
    /// kube-rs's `watches`.
    pub fn watches<C: Kind>(
        self,
        mapper: impl Fn(&Change<C>, &Cache) -> Vec<String> + Send + 'static,
    ) -> Self {
        let (q, cache) = (self.queue.clone(), self.ctx.cache.clone());
        follow::<C>(
            &self.ctx.cache,
            move |c: &Change<C>| {
                for key in mapper(c, &cache) {
                    q.add(key);
                }
            },
            self.resync_after_lag(),
        );
        self
    }

    /// Runs `workers` tasks reconciling the queued objects with
    /// `reconcile`; a failure is retried after [`backoff`], a 404 or 409
    /// (the object went, or changed meanwhile) without a warning. An object
    /// gone from the cache is not reconciled.
    pub fn run<F, Fut>(self, workers: usize, reconcile: F)
    where
        F: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ApiError>> + Send,
    {
        let reconcile = Arc::new(reconcile);
        self.run_keyed(workers, move |_key, obj, ctx| {
            let reconcile = reconcile.clone();
            async move {
                match obj {
                    Some(obj) => reconcile(obj, ctx).await,
                    // Gone: nothing to converge.
                    None => Ok(Action::await_change()),
                }
            }
        });
    }

    /// As [`Controller::run`], for a controller that also cleans up after
    /// an object that is gone: `reconcile` gets the key and the object, if
    /// there still is one.
    pub fn run_keyed<F, Fut>(self, workers: usize, reconcile: F)
    where
        F: Fn(String, Option<Arc<K>>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, ApiError>> + Send,
    {
        let ctx = self.ctx.clone();
        let reconcile = Arc::new(reconcile);
        run_queue(self.name, self.queue, workers, move |key| {
            let (ctx, reconcile) = (ctx.clone(), reconcile.clone());
            async move {
                let obj = ctx.cache.store::<K>().get_key(&key);
                reconcile(key, obj, ctx).await
            }
        });
    }
}

/// Runs `workers` tasks that work through `queue` with `work`; a key never
/// goes to two workers at once. A failure is retried after [`backoff`] (a
/// 404 or 409, the object gone or changed meanwhile, without a warning); a
/// success may ask to look again later.
pub fn run_queue<F, Fut>(name: &'static str, queue: Arc<Queue>, workers: usize, work: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, ApiError>> + Send,
{
    let work = Arc::new(work);
    let failures: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    for _ in 0..workers {
        let (queue, work, failures) = (queue.clone(), work.clone(), failures.clone());
        tokio::spawn(async move {
            loop {
                let key = queue.pop().await;
                // A reconcile that panics (a bug) is a failure of that key,
                // retried with back-off: the worker and the key's place
                // in the queue survive it, and the rest of the API and the
                // other objects carry on.
                use futures::FutureExt as _;
                let outcome = match std::panic::AssertUnwindSafe(work(key.clone()))
                    .catch_unwind()
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(ToString::to_string)
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        tracing::error!(controller = name, key = %key, "reconcile panicked: {why}");
                        Err(ApiError::internal(format!("reconcile panicked: {why}")))
                    }
                };
                queue.done(&key);
                match outcome {
                    Ok(action) => {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        if let Action::Requeue(after) = action {
                            queue.add_after(key, after);
                        }
                    }
                    Err(e) => {
                        let n = {
                            let mut f = failures.lock().unwrap_or_else(|e| e.into_inner());
                            let n = f.entry(key.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let delay = backoff(n);
                        if e.code != 409 && e.code != 404 {
                            tracing::warn!(controller = name, key = %key, "reconcile failed (retry in {delay:?}): {e}");
                        }
                        queue.add_after(key, delay);
                    }
                }
            }
        });
    }
}

/// The ownerReference that makes `owner` the controller of an object, as
/// kube-controller-manager writes it (`controller` and
/// `blockOwnerDeletion` set).
pub fn controller_ref<K: Kind>(owner: &K) -> Option<Vec<OwnerReference>> {
    let mut r = owner.controller_owner_ref(&())?;
    r.block_owner_deletion = Some(true);
    Some(vec![r])
}

/// Adopts the objects of kind `C` in `owner`'s namespace that no controller
/// owns, whose labels `selector` selects and that `member` accepts, as
/// kube's ControllerRefManager does: after a `--cascade=orphan` deletion,
/// the workload made again with the same selector takes over the pods (and
/// revisions) left behind instead of failing on their names or doubling
/// them. Nothing is adopted by an owner being deleted. Returns how many.
///
/// # Errors
/// When a write fails (an object gone or changed meanwhile is skipped).
pub async fn adopt<K: Kind, C: Kind>(
    ctx: &Ctx,
    owner: &K,
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    member: impl Fn(&C) -> bool,
) -> Result<usize, ApiError> {
    if owner.meta().deletion_timestamp.is_some()
        || crate::registry::validation::selector_is_empty(selector)
    {
        return Ok(0);
    }
    let Some(reference) = controller_ref(owner) else {
        return Ok(0);
    };
    let ns = owner.meta().namespace.clone();
    let empty = std::collections::BTreeMap::new();
    let orphans: Vec<Arc<C>> = ctx
        .cache
        .store::<C>()
        .list(ns.as_deref())
        .into_iter()
        .filter(|o| {
            o.meta().deletion_timestamp.is_none()
                && !o
                    .meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true))
                && crate::registry::validation::selects(
                    selector,
                    o.meta().labels.as_ref().unwrap_or(&empty),
                )
                && member(o)
        })
        .collect();
    let mut adopted = 0;
    for o in orphans {
        let name = o.meta().name.clone().unwrap_or_default();
        let reference = reference.clone();
        let r = ctx
            .reg
            .modify::<C>(
                ns.as_deref(),
                &name,
                crate::registry::Write::Update,
                move |mut obj| {
                    let refs = obj.meta_mut().owner_references.get_or_insert_with(Vec::new);
                    if refs.iter().any(|r| r.controller == Some(true)) {
                        return Err(ApiError::conflict("", "", "", "already has a controller"));
                    }
                    refs.extend(reference.clone());
                    Ok(obj)
                },
            )
            .await;
        match r {
            Ok(obj) => {
                adopted += 1;
                ctx.cache.wait_for(crate::registry::revision_of(&obj)).await;
            }
            Err(ApiError {
                code: 404 | 409, ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(adopted)
}

/// What a workload controller asks for once its pods are made: to look
/// again when the next of the pods `uid` controls becomes available
/// (Ready for `min_ready` seconds), else on the next change.
pub fn await_availability(ctx: &Ctx, uid: &str, min_ready: i32) -> Action {
    let now = std::time::SystemTime::now();
    ctx.cache
        .store::<Pod>()
        .controlled_by(uid)
        .iter()
        .filter_map(|p| weft_api::pod::available_in(p, min_ready, now))
        .filter(|w| !w.is_zero())
        .min()
        .map_or_else(Action::await_change, |w| {
            Action::requeue(w + Duration::from_millis(100))
        })
}

/// Pod deletions in flight at a time, per caller.
const DELETE_BURST: usize = 64;

/// Deletes `pods` (a controller's, no longer wanted) concurrently; the
/// names of those deleted. One already gone (404) is skipped; with
/// `same_uid`, each deletion names its pod's uid, and one whose name is
/// another pod's now (409) is skipped too.
pub async fn delete_pods(
    ctx: &Ctx,
    ns: Option<&str>,
    pods: &[Arc<Pod>],
    same_uid: bool,
) -> Result<Vec<String>, ApiError> {
    use futures::StreamExt as _;
    use kube::ResourceExt as _;
    let results: Vec<Result<Pod, ApiError>> = futures::stream::iter(pods.iter().cloned())
        .map(|p: Arc<Pod>| async move {
            let uid = if same_uid {
                p.metadata.uid.clone()
            } else {
                None
            };
            ctx.reg
                .delete::<Pod>(ns, &p.name_any(), (uid, None), None)
                .await
        })
        .buffer_unordered(DELETE_BURST)
        .collect()
        .await;
    let mut names = Vec::new();
    for r in results {
        match r {
            Ok(p) => names.push(p.name_any()),
            Err(ApiError { code: 404, .. }) => {}
            Err(ApiError { code: 409, .. }) if same_uid => {}
            Err(e) => return Err(e),
        }
    }
    Ok(names)
}

/// Records a Kubernetes Event about `obj` (best effort: a lost Event is not
/// worth failing a reconcile for).
pub async fn record_event<K: Kind>(
    reg: &Registry,
    obj: &K,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let meta = obj.meta();
    let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let name = meta.name.clone().unwrap_or_default();
    let now = weft_api::meta::now_time();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let event = Event {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(format!("{name}.{suffix}")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(<K as k8s_openapi::Resource>::API_VERSION.into()),
            kind: Some(<K as k8s_openapi::Resource>::KIND.into()),
            name: Some(name.clone()),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(kind.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    if let Err(e) = reg.create(Some(&ns), event).await {
        tracing::debug!("event {reason} on {ns}/{name} not recorded: {e}");
    }
}

/// Starts every controller and the scheduler.
pub fn start_all(ctx: &Ctx) {
    scheduler::start(ctx.clone());
    replicaset::start(ctx);
    deployment::start(ctx);
    daemonset::start(ctx);
    statefulset::start(ctx);
    job::start(ctx);
    cronjob::start(ctx);
    disruption::start(ctx);
    endpoints::start(ctx);
    nodes::start(ctx.clone());
    gc::start(ctx);
    quota::start(ctx);
    volumes::start(ctx);
    events::start(ctx);
    rbac::start(ctx);
    serviceaccounts::start(ctx);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteOptions, SqliteStore};

    #[tokio::test]
    async fn a_reconcile_that_panics_is_retried_and_its_worker_survives() {
        let queue = Queue::new();
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let seen = calls.clone();
        // One worker: it must live through the panic to do the rest.
        run_queue("test", queue.clone(), 1, move |key: String| {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let done = done_tx.clone();
            async move {
                assert!(n != 0, "the first look panics");
                let _ = done.send(key);
                Ok(Action::await_change())
            }
        });
        queue.add("ns/a");
        let first = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
        assert_eq!(
            first.ok().flatten().as_deref(),
            Some("ns/a"),
            "retried after the panic"
        );
        queue.add("ns/b");
        let second = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
        assert_eq!(
            second.ok().flatten().as_deref(),
            Some("ns/b"),
            "the worker lives on"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;

    fn named<K: Kind>(name: &str) -> K {
        let mut o = K::default();
        o.meta_mut().name = Some(name.into());
        o.meta_mut().namespace = Some("ns".into());
        o.meta_mut().uid = Some(format!("uid-{name}"));
        o
    }

    #[test]
    fn controller_references_block_the_owners_deletion() {
        let rs: ReplicaSet = named("web");
        let refs = controller_ref(&rs).expect("a reference");
        assert_eq!(refs[0].controller, Some(true));
        assert_eq!(refs[0].block_owner_deletion, Some(true));
        assert_eq!(
            (refs[0].kind.as_str(), refs[0].uid.as_str()),
            ("ReplicaSet", "uid-web")
        );
    }

    /// Regression: a follower of a dependent kind that fell behind dropped
    /// the changes it missed, so their owners were never looked at again.
    #[tokio::test(flavor = "current_thread")]
    async fn an_owns_follower_that_falls_behind_requeues_every_owner() {
        let dir = tempfile::tempdir().expect("a directory");
        let store =
            SqliteStore::open(dir.path().join("s.db"), SqliteOptions::default()).expect("a store");
        let ctx = Ctx {
            reg: Registry::new(Arc::new(store), crate::ipam::Ipam::default()),
            cache: Cache::new(),
            cfg: ControllersConfig::default(),
        };
        for name in ["a", "b"] {
            ctx.cache
                .store::<ReplicaSet>()
                .put(format!("ns/{name}"), named(name));
        }
        let controller = Controller::<ReplicaSet>::new("test", &ctx).owns::<Pod>();
        let queue = controller.queue();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.len(), 2, "both ReplicaSets at start");
        for _ in 0..2 {
            let key = queue.pop().await;
            queue.done(&key);
        }
        // More changes than the follower's buffer, none of them owned by a
        // ReplicaSet, before it can read one.
        let pods = ctx.cache.store::<Pod>();
        for i in 0..5000 {
            pods.put(format!("ns/p{i}"), named(&format!("p{i}")));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(queue.len(), 2, "every ReplicaSet again after the lag");
    }
}
