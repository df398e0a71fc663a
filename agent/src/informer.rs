//! Shared informers: one watch per kind for the whole agent, kept in a
//! store of the current objects and fanned out to every part that follows
//! that kind (the pod workers, routes, the load-balancer, NetworkPolicy,
//! DNS), as client-go's shared informers are for kubelet and kube-proxy.
//! No kind is watched twice by one agent.
//!
//! A subscriber first gets [`Event::Resync`] with every object, then one
//! [`Event::Change`] per change, with the object before and after. Each
//! subscriber has a queue of its own, which holds only the changes it has
//! not read yet; one that falls more than [`BUFFER`] changes behind has its
//! queue dropped and is sent a fresh `Resync` instead, so a slow subscriber
//! costs memory bounded by the buffer, never by how far behind it is.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::{Notify, watch};

/// Changes a subscriber may fall behind by before it is resynced.
pub const BUFFER: usize = 1024;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What a subscriber is told.
#[derive(Debug)]
pub enum Event<K> {
    /// Every object the API has now: the first event, and again after the
    /// subscriber fell behind. What the subscriber holds and this list
    /// lacks is gone.
    Resync(Vec<Arc<K>>),
    /// One object was created (`old` is `None`), changed, or deleted
    /// (`new` is `None`).
    Change {
        /// Before.
        old: Option<Arc<K>>,
        /// After.
        new: Option<Arc<K>>,
    },
}

type Pair<K> = (Option<Arc<K>>, Option<Arc<K>>);

/// One subscriber's unread changes.
struct Queue<K> {
    state: Mutex<QueueState<K>>,
    ready: Notify,
}

struct QueueState<K> {
    pending: std::collections::VecDeque<Pair<K>>,
    /// More than [`BUFFER`] changes came unread: the next event is a resync.
    lagged: bool,
}

impl<K> Queue<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, pair: Pair<K>) {
        {
            let mut q = self.lock();
            if q.lagged {
                return;
            }
            if q.pending.len() >= BUFFER {
                q.pending.clear();
                q.lagged = true;
            } else {
                q.pending.push_back(pair);
            }
        }
        self.ready.notify_one();
    }
}

struct Inner<K> {
    objects: HashMap<String, Arc<K>>,
    /// Index key to the keys of the objects filed under it.
    index: HashMap<String, BTreeSet<String>>,
    /// A relist in progress (the watch restarted).
    relist: Option<Vec<K>>,
    /// The subscribers' queues (gone with their streams). Changes are queued
    /// under the lock, so that a snapshot and the changes after it never
    /// overlap or leave a gap.
    subscribers: Vec<std::sync::Weak<Queue<K>>>,
}

impl<K> Inner<K> {
    fn send(&mut self, pair: Pair<K>) {
        self.subscribers.retain(|s| match s.upgrade() {
            Some(q) => {
                q.push(pair.clone());
                true
            }
            None => false,
        });
    }
}

struct Shared<K> {
    what: &'static str,
    index_of: Option<fn(&K) -> Option<String>>,
    inner: Mutex<Inner<K>>,
    synced: watch::Sender<bool>,
}

/// One kind's watch, store and subscribers.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> std::fmt::Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("what", &self.shared.what)
            .finish_non_exhaustive()
    }
}

fn key_of<K: kube::Resource>(o: &K) -> String {
    weft_api::meta::key_of(o)
}

fn resource_version<K: kube::Resource>(o: &K) -> Option<&str> {
    o.meta().resource_version.as_deref()
}

impl<K> Informer<K>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    /// An informer fed by hand (tests, and [`Informer::watch`]), filing
    /// objects under `index_of` when given.
    #[must_use]
    pub fn new(what: &'static str, index_of: Option<fn(&K) -> Option<String>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                what,
                index_of,
                inner: Mutex::new(Inner {
                    objects: HashMap::new(),
                    index: HashMap::new(),
                    relist: None,
                    subscribers: Vec::new(),
                }),
                synced: watch::channel(false).0,
            }),
        }
    }

    /// Watches every object of the kind through `api` (retrying with
    /// back-off) into a new informer.
    #[must_use]
    pub fn watch(
        api: kube::Api<K>,
        what: &'static str,
        index_of: Option<fn(&K) -> Option<String>>,
    ) -> Self
    where
        K: serde::de::DeserializeOwned,
    {
        let informer = Self::new(what, index_of);
        let feed = informer.clone();
        tokio::spawn(async move {
            let events = watcher::watcher(api, watcher::Config::default()).default_backoff();
            let mut events = std::pin::pin!(events);
            let mut failing = false;
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        if failing {
                            tracing::info!("watching {} again", feed.shared.what);
                            failing = false;
                        }
                        feed.apply(ev);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "watching {} failed; retrying", feed.shared.what);
                            failing = true;
                        }
                    }
                }
            }
        });
        informer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one watch event to the store and tells the subscribers.
    pub fn apply(&self, ev: watcher::Event<K>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        match ev {
            watcher::Event::Init => inner.relist = Some(Vec::new()),
            watcher::Event::InitApply(o) => inner.relist.get_or_insert_default().push(o),
            watcher::Event::InitDone => {
                let listed: HashMap<String, Arc<K>> = inner
                    .relist
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|o| (key_of(&o), Arc::new(o)))
                    .collect();
                // Subscribers hear only what the relist changed.
                for (k, new) in &listed {
                    let old = inner.objects.get(k);
                    let same = old.is_some_and(|o| {
                        resource_version(&**o).is_some()
                            && resource_version(&**o) == resource_version(&**new)
                    });
                    if !same {
                        inner.send((old.cloned(), Some(new.clone())));
                    }
                }
                let gone: Vec<Arc<K>> = inner
                    .objects
                    .iter()
                    .filter(|(k, _)| !listed.contains_key(*k))
                    .map(|(_, o)| o.clone())
                    .collect();
                for old in gone {
                    inner.send((Some(old), None));
                }
                inner.objects = listed;
                inner.index.clear();
                if let Some(index_of) = self.shared.index_of {
                    for (k, o) in &inner.objects {
                        if let Some(i) = index_of(o) {
                            inner.index.entry(i).or_default().insert(k.clone());
                        }
                    }
                }
                self.shared.synced.send_replace(true);
            }
            watcher::Event::Apply(o) => {
                let (k, new) = (key_of(&o), Arc::new(o));
                let old = inner.objects.insert(k.clone(), new.clone());
                self.reindex(inner, &k, old.as_deref(), Some(&new));
                inner.send((old, Some(new)));
            }
            watcher::Event::Delete(o) => {
                let k = key_of(&o);
                let old = inner.objects.remove(&k);
                self.reindex(inner, &k, old.as_deref(), None);
                inner.send((Some(old.unwrap_or_else(|| Arc::new(o))), None));
            }
        }
    }

    fn reindex(&self, inner: &mut Inner<K>, key: &str, old: Option<&K>, new: Option<&K>) {
        let Some(index_of) = self.shared.index_of else {
            return;
        };
        if let Some(i) = old.and_then(index_of)
            && let Some(keys) = inner.index.get_mut(&i)
        {
            keys.remove(key);
            if keys.is_empty() {
                inner.index.remove(&i);
            }
        }
        if let Some(i) = new.and_then(index_of) {
            inner.index.entry(i).or_default().insert(key.to_string());
        }
    }

    /// The object `key` (`namespace/name`, or `name`), if the API has it.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Arc<K>> {
        self.lock().objects.get(key).cloned()
    }

    /// The objects filed under index key `i`.
    #[must_use]
    pub fn indexed(&self, i: &str) -> Vec<Arc<K>> {
        let inner = self.lock();
        inner
            .index
            .get(i)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).cloned())
            .collect()
    }

    /// How many objects the store holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether the store holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object now, with `queue` emptied and hearing of the changes
    /// from now on.
    fn snapshot(&self, queue: &Arc<Queue<K>>) -> Vec<Arc<K>> {
        let mut inner = self.lock();
        {
            let mut q = queue.lock();
            q.pending.clear();
            q.lagged = false;
        }
        if !inner
            .subscribers
            .iter()
            .any(|s| std::ptr::eq(s.as_ptr(), Arc::as_ptr(queue)))
        {
            inner.subscribers.push(Arc::downgrade(queue));
        }
        inner.objects.values().cloned().collect()
    }

    /// The kind's events for one subscriber: a [`Event::Resync`] once the
    /// first list is in, then every change.
    #[must_use]
    pub fn subscribe(&self) -> BoxStream<'static, Event<K>> {
        let me = self.clone();
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                pending: std::collections::VecDeque::new(),
                lagged: false,
            }),
            ready: Notify::new(),
        });
        futures::stream::unfold(false, move |started| {
            let (me, queue) = (me.clone(), queue.clone());
            async move {
                if !started {
                    let mut synced = me.shared.synced.subscribe();
                    let _ = synced.wait_for(|s| *s).await;
                    return Some((Event::Resync(me.snapshot(&queue)), true));
                }
                loop {
                    let next = {
                        let mut q = queue.lock();
                        if q.lagged {
                            None
                        } else {
                            Some(q.pending.pop_front())
                        }
                    };
                    match next {
                        Some(Some((old, new))) => return Some((Event::Change { old, new }, true)),
                        Some(None) => queue.ready.notified().await,
                        None => {
                            tracing::info!(
                                "a subscriber of {} fell more than {BUFFER} changes behind; sending it everything again",
                                me.shared.what
                            );
                            return Some((Event::Resync(me.snapshot(&queue)), true));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

/// The Service an EndpointSlice belongs to (`namespace/name`).
#[must_use]
pub fn slice_service(s: &EndpointSlice) -> Option<String> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(weft_api::meta::key(s.metadata.namespace.as_deref(), name))
}

/// The informers of one agent, one per kind it follows.
#[derive(Clone, Debug)]
pub struct Informers {
    /// Every pod of the cluster (policy and DNS need them all; the pod
    /// workers take this node's).
    pub pods: Informer<Pod>,
    /// Services.
    pub services: Informer<Service>,
    /// EndpointSlices, indexed by their Service (`namespace/name`).
    pub slices: Informer<EndpointSlice>,
    /// Namespaces (their labels, for NetworkPolicy).
    pub namespaces: Informer<Namespace>,
    /// NetworkPolicies.
    pub policies: Informer<NetworkPolicy>,
    /// Nodes (their pod blocks, for routes).
    pub nodes: Informer<Node>,
}

impl Informers {
    /// Starts one watch per kind through `client`.
    #[must_use]
    pub fn start(client: &kube::Client) -> Self {
        Self {
            pods: Informer::watch(kube::Api::all(client.clone()), "pods", None),
            services: Informer::watch(kube::Api::all(client.clone()), "services", None),
            slices: Informer::watch(
                kube::Api::all(client.clone()),
                "endpoint slices",
                Some(slice_service),
            ),
            namespaces: Informer::watch(kube::Api::all(client.clone()), "namespaces", None),
            policies: Informer::watch(kube::Api::all(client.clone()), "network policies", None),
            nodes: Informer::watch(kube::Api::all(client.clone()), "nodes", None),
        }
    }
}

/// Which Services (`namespace/name`) a change to Services and
/// EndpointSlices touched, batched: what the load-balancer and DNS both
/// recompute, each from the informers' stores. The first batch comes once
/// both kinds are listed and holds every Service; a resync of either kind
/// touches what it lists and what it no longer lists.
#[must_use]
pub fn service_changes(informers: &Informers) -> BoxStream<'static, BTreeSet<String>> {
    enum Either {
        Service(Event<Service>),
        Slice(Event<EndpointSlice>),
    }
    #[derive(Default)]
    struct Seen {
        services: BTreeSet<String>,
        synced: [bool; 2],
        /// The first batch went out.
        started: bool,
    }
    let events = futures::stream::select(
        informers.services.subscribe().map(Either::Service),
        informers.slices.subscribe().map(Either::Slice),
    );
    let touched = |seen: &mut Seen, ev: Either, out: &mut BTreeSet<String>| match ev {
        Either::Service(Event::Resync(all)) => {
            let now: BTreeSet<String> = all.iter().map(|s| key_of(&**s)).collect();
            out.extend(seen.services.union(&now).cloned());
            seen.services = now;
            seen.synced[0] = true;
        }
        Either::Service(Event::Change { old, new }) => {
            for s in old.iter().chain(new.iter()) {
                out.insert(key_of(&**s));
            }
            match new {
                Some(s) => seen.services.insert(key_of(&*s)),
                None => old.is_some_and(|s| seen.services.remove(&key_of(&*s))),
            };
        }
        Either::Slice(Event::Resync(all)) => {
            // Every Service, whether it has slices now or had some before.
            out.extend(seen.services.iter().cloned());
            out.extend(all.iter().filter_map(|s| slice_service(s)));
            seen.synced[1] = true;
        }
        Either::Slice(Event::Change { old, new }) => {
            out.extend(
                old.iter()
                    .chain(new.iter())
                    .filter_map(|s| slice_service(s)),
            );
        }
    };
    futures::stream::unfold(
        (events, Seen::default(), BTreeSet::new()),
        move |(mut events, mut seen, mut pending)| async move {
            loop {
                let ev = events.next().await?;
                touched(&mut seen, ev, &mut pending);
                // Take every event already waiting: a burst (a rollout, a
                // relist) costs one pass over what it touched.
                while let Some(Some(ev)) = futures::FutureExt::now_or_never(events.next()) {
                    touched(&mut seen, ev, &mut pending);
                }
                // Before both lists are in, a Service might look endpoint-less.
                if seen.synced == [true, true] && (!pending.is_empty() || !seen.started) {
                    seen.started = true;
                    let batch = std::mem::take(&mut pending);
                    return Some((batch, (events, seen, pending)));
                }
            }
        },
    )
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    fn pod(name: &str, rv: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.resource_version = Some(rv.into());
        p
    }

    fn names(v: &[Arc<Pod>]) -> Vec<String> {
        let mut n: Vec<String> = v.iter().map(|p| key_of(&**p)).collect();
        n.sort();
        n
    }

    fn list(i: &Informer<Pod>, pods: Vec<Pod>) {
        i.apply(watcher::Event::Init);
        for p in pods {
            i.apply(watcher::Event::InitApply(p));
        }
        i.apply(watcher::Event::InitDone);
    }

    #[tokio::test]
    async fn subscribers_get_the_list_then_each_change_once() {
        let i = Informer::<Pod>::new("pods", None);
        let mut a = i.subscribe();
        // Nothing before the first list is in.
        assert!(a.next().now_or_never().is_none());
        list(&i, vec![pod("a", "1"), pod("b", "2")]);
        let Some(Event::Resync(all)) = a.next().await else {
            panic!("a resync first")
        };
        assert_eq!(names(&all), ["ns/a", "ns/b"]);
        i.apply(watcher::Event::Apply(pod("a", "3")));
        i.apply(watcher::Event::Delete(pod("b", "2")));
        let Some(Event::Change { old, new }) = a.next().await else {
            panic!("a change")
        };
        assert_eq!(
            old.and_then(|o| o.metadata.resource_version.clone())
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            new.and_then(|o| o.metadata.resource_version.clone())
                .as_deref(),
            Some("3")
        );
        let Some(Event::Change { old, new: None }) = a.next().await else {
            panic!("a deletion")
        };
        assert_eq!(old.map(|o| key_of(&*o)).as_deref(), Some("ns/b"));
        // A late subscriber starts from the store, not from history.
        let mut b = i.subscribe();
        let Some(Event::Resync(all)) = b.next().await else {
            panic!("a resync first")
        };
        assert_eq!(names(&all), ["ns/a"]);
        assert!(b.next().now_or_never().is_none());
        assert!(a.next().now_or_never().is_none());
    }

    #[tokio::test]
    async fn a_relist_tells_only_what_changed() {
        let i = Informer::<Pod>::new("pods", None);
        list(&i, vec![pod("a", "1"), pod("b", "2")]);
        let mut s = i.subscribe();
        assert!(matches!(s.next().await, Some(Event::Resync(_))));
        // The watch restarted: a unchanged, b gone, c new.
        list(&i, vec![pod("a", "1"), pod("c", "5")]);
        let mut seen = Vec::new();
        while let Some(Some(Event::Change { old, new })) = s.next().now_or_never() {
            seen.push((old.map(|o| key_of(&*o)), new.map(|n| key_of(&*n))));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                (None, Some("ns/c".to_string())),
                (Some("ns/b".to_string()), None)
            ]
        );
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_resynced_from_the_store() {
        let i = Informer::<Pod>::new("pods", None);
        list(&i, Vec::new());
        let mut s = i.subscribe();
        assert!(matches!(s.next().await, Some(Event::Resync(v)) if v.is_empty()));
        for n in 0..BUFFER + 10 {
            i.apply(watcher::Event::Apply(pod(&format!("p{n}"), &n.to_string())));
        }
        let Some(Event::Resync(all)) = s.next().await else {
            panic!("a resync after falling behind")
        };
        assert_eq!(all.len(), BUFFER + 10, "everything, from the store");
        i.apply(watcher::Event::Delete(pod("p0", "0")));
        assert!(matches!(
            s.next().await,
            Some(Event::Change { new: None, .. })
        ));
    }

    #[test]
    fn slices_are_indexed_by_their_service() {
        let i = Informer::<EndpointSlice>::new("slices", Some(slice_service));
        let slice = |name: &str, svc: &str| {
            let mut s = EndpointSlice::default();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some("ns".into());
            s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into());
            s
        };
        i.apply(watcher::Event::Init);
        i.apply(watcher::Event::InitApply(slice("web-1", "web")));
        i.apply(watcher::Event::InitDone);
        i.apply(watcher::Event::Apply(slice("web-2", "web")));
        assert_eq!(i.indexed("ns/web").len(), 2);
        // Moved to another Service, then deleted.
        i.apply(watcher::Event::Apply(slice("web-2", "api")));
        assert_eq!(i.indexed("ns/web").len(), 1);
        assert_eq!(i.indexed("ns/api").len(), 1);
        i.apply(watcher::Event::Delete(slice("web-2", "api")));
        assert!(i.indexed("ns/api").is_empty());
        assert_eq!(i.len(), 1);
    }
}
