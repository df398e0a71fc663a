//! The controllers: reconcile loops over the cache, writing through the
//! registry. Each is level-triggered (it looks at the whole object and what it
//! owns, not at the event), so running one twice or after a crash converges
//! to the same state.

pub mod deployment;
pub mod endpoints;
pub mod gc;
pub mod nodes;
pub mod replicaset;
pub mod scheduler;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use weft_api::resources::{self, Resource};

use crate::cache::{Cache, Change};
use crate::registry::Registry;

/// Settings of the controllers.
#[derive(Debug, Clone)]
pub struct ControllersConfig {
    /// A node whose Lease is older than this becomes NotReady.
    pub node_grace: Duration,
    /// How long pods stay on a NotReady node before they are evicted.
    pub eviction_delay: Duration,
}

impl Default for ControllersConfig {
    fn default() -> Self {
        Self {
            node_grace: Duration::from_secs(10),
            eviction_delay: Duration::from_secs(30),
        }
    }
}

/// What every controller gets.
#[derive(Clone)]
pub struct Ctx {
    pub reg: Registry,
    pub cache: Arc<Cache>,
    pub cfg: ControllersConfig,
}

pub fn res(group: &str, plural: &str) -> &'static Resource {
    let version = "v1";
    resources::by_path(group, version, plural).expect("a served resource")
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
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

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

    pub fn done(&self, key: &str) {
        let mut q = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        q.processing.remove(key);
        if q.dirty.remove(key) && q.queued.insert(key.to_string()) {
            q.order.push_back(key.to_string());
            drop(q);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .order
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// "namespace/name" (or "name") of an object.
pub fn key_of(obj: &Value) -> String {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, key),
    }
}

/// Feeds cache changes to `on_change`, and everything again after the
/// subscriber fell behind (so nothing is missed, only repeated).
pub fn follow_changes(
    cache: Arc<Cache>,
    mut on_change: impl FnMut(&Change) + Send + 'static,
    resync: impl Fn() + Send + 'static,
) {
    let mut rx = cache.subscribe();
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

/// Queues the key of every `kind` object that changes, and of the `kind`
/// that controls a changed `child` (a ReplicaSet's pods, a Deployment's
/// ReplicaSets): the trigger of the owner-driven controllers.
pub fn follow_owner_and_children(
    ctx: &Ctx,
    queue: &Arc<Queue>,
    owner: &'static Resource,
    child: &'static str,
) {
    let (q, q2, cache) = (queue.clone(), queue.clone(), ctx.cache.clone());
    follow_changes(
        ctx.cache.clone(),
        move |c| {
            if c.res.kind == owner.kind {
                q.add(c.key_tail());
            } else if c.res.kind == child {
                for obj in [&c.new, &c.old].into_iter().flatten() {
                    if let Some(o) = controller_of(obj).filter(|o| o["kind"] == owner.kind) {
                        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
                        q.add(format!("{ns}/{}", o["name"].as_str().unwrap_or_default()));
                    }
                }
            }
        },
        move || {
            for o in cache.list(owner, None, |_| true) {
                q2.add(key_of(&o));
            }
        },
    );
}

/// The resourceVersion of an object the registry returned, as a revision.
pub fn resource_version(obj: &Value) -> i64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// Runs `workers` tasks that reconcile keys from `queue`; an error requeues
/// the key with back-off.
pub fn run_workers<F, Fut>(name: &'static str, queue: Arc<Queue>, workers: usize, reconcile: F)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Duration>, weft_api::ApiError>> + Send,
{
    let reconcile = Arc::new(reconcile);
    let failures: Arc<Mutex<std::collections::HashMap<String, u32>>> = Arc::default();
    for _ in 0..workers {
        let (queue, reconcile, failures) = (queue.clone(), reconcile.clone(), failures.clone());
        tokio::spawn(async move {
            loop {
                let key = queue.pop().await;
                let outcome = reconcile(key.clone()).await;
                queue.done(&key);
                match outcome {
                    Ok(requeue) => {
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&key);
                        if let Some(after) = requeue {
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
                        let delay =
                            Duration::from_millis(50u64 << n.min(10)).min(Duration::from_secs(30));
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

/// Records a Kubernetes Event about `obj` (best effort: a lost Event is not
/// worth failing a reconcile for).
pub async fn record_event(
    reg: &Registry,
    obj: &Value,
    kind: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = obj["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let now = weft_api::meta::now_rfc3339();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{name}.{suffix}"), "namespace": ns},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": name,
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    let events = res("", "events");
    if let Err(e) = reg.create(events, Some(&ns), event).await {
        tracing::debug!("event {reason} on {ns}/{name} not recorded: {e}");
    }
}

/// The controller reference of an object (the ownerReference with controller: true).
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"].as_bool() == Some(true))
}

/// An ownerReference to `owner`, as its controller.
pub fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Whether a pod counts as ready (its Ready condition is True).
pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// Whether a pod is finished (Succeeded or Failed) or being deleted.
pub fn pod_gone(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) || pod["metadata"]["deletionTimestamp"].is_string()
}

/// Starts every controller and the scheduler.
pub fn start_all(ctx: &Ctx) {
    scheduler::start(ctx.clone());
    replicaset::start(ctx.clone());
    deployment::start(ctx.clone());
    endpoints::start(ctx.clone());
    nodes::start(ctx.clone());
    gc::start(ctx.clone());
}
