//! The controllers' view of the cluster: every object, typed, kept current
//! by one watch on the store (what client-go's shared informers are to
//! kube-controller-manager). One [`Store`] per kind holds its objects by
//! `namespace/name`, indexed by owner UID (and pods by node), and tells
//! subscribers each change with the object before and after. Controllers
//! read from it and write through the registry, never into the cache.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{broadcast, watch};
use weft_api::resources::Resource;

use crate::registry::{Kind, decode_typed, for_each_kind};
use crate::store::{EventKind, KeyValue, Store as KvStore, WatchItem};

/// Changes buffered per kind for its subscribers. Each holds the object
/// before and after, so a large buffer keeps old versions of many objects
/// alive; a subscriber that falls further behind resyncs from the cache.
const CHANGES: usize = 4096;

/// A change seen by the cache.
#[derive(Debug)]
pub struct Change<K> {
    /// `namespace/name` (or `name`).
    pub key: String,
    /// The object now (`None` when deleted).
    pub new: Option<Arc<K>>,
    /// The object before (`None` when created).
    pub old: Option<Arc<K>>,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            new: self.new.clone(),
            old: self.old.clone(),
        }
    }
}

impl<K> Change<K> {
    /// The object now, or before when deleted.
    pub fn object(&self) -> Option<&Arc<K>> {
        self.new.as_ref().or(self.old.as_ref())
    }
}

struct Objects<K> {
    by_key: BTreeMap<String, Arc<K>>,
    /// Owner UID to the keys of the objects it owns.
    by_owner: HashMap<String, BTreeSet<String>>,
    /// Node name to the keys of the pods bound to it (pods only).
    by_node: HashMap<String, BTreeSet<String>>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_owner: HashMap::new(),
            by_node: HashMap::new(),
        }
    }
}

fn unindex(index: &mut HashMap<String, BTreeSet<String>>, at: &str, key: &str) {
    if let Some(keys) = index.get_mut(at) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(at);
        }
    }
}

impl<K: Kind> Objects<K> {
    fn index(&mut self, key: &str, obj: &K) {
        for r in obj.meta().owner_references.iter().flatten() {
            self.by_owner
                .entry(r.uid.clone())
                .or_default()
                .insert(key.to_string());
        }
        if let Some(node) = obj.node_name() {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .insert(key.to_string());
        }
    }

    fn unindex(&mut self, key: &str, obj: &K) {
        for r in obj.meta().owner_references.iter().flatten() {
            unindex(&mut self.by_owner, &r.uid, key);
        }
        if let Some(node) = obj.node_name() {
            unindex(&mut self.by_node, node, key);
        }
    }

    fn insert(&mut self, key: String, obj: Arc<K>) -> Option<Arc<K>> {
        let old = self.by_key.insert(key.clone(), obj.clone());
        if let Some(o) = &old {
            self.unindex(&key, o);
        }
        self.index(&key, &obj);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<K>> {
        let old = self.by_key.remove(key)?;
        self.unindex(key, &old);
        Some(old)
    }
}

/// The cached objects of one kind.
pub struct Store<K> {
    objects: RwLock<Objects<K>>,
    changes: broadcast::Sender<Change<K>>,
}

impl<K: Kind> Store<K> {
    fn new() -> Self {
        Self {
            objects: RwLock::new(Objects::default()),
            changes: broadcast::channel(CHANGES).0,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects<K>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects<K>> {
        self.objects.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The object `namespace/name` (or `name`).
    pub fn get_key(&self, key: &str) -> Option<Arc<K>> {
        self.read().by_key.get(key).cloned()
    }

    /// The object `name` in `ns` (`None` for cluster-scoped kinds).
    pub fn get(&self, ns: Option<&str>, name: &str) -> Option<Arc<K>> {
        self.get_key(&weft_api::meta::key(ns, name))
    }

    /// The objects in `ns` (every one for `None`).
    pub fn list(&self, ns: Option<&str>) -> Vec<Arc<K>> {
        let objects = self.read();
        match ns {
            None => objects.by_key.values().cloned().collect(),
            Some(ns) => {
                let prefix = format!("{ns}/");
                objects
                    .by_key
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, v)| v.clone())
                    .collect()
            }
        }
    }

    /// The objects with an ownerReference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let objects = self.read();
        objects
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| objects.by_key.get(k).cloned())
            .collect()
    }

    /// The objects whose controller (the ownerReference with
    /// `controller: true`) has `uid`.
    pub fn controlled_by(&self, uid: &str) -> Vec<Arc<K>> {
        let mut out = self.owned_by(uid);
        out.retain(|o| controller_uid(&**o) == Some(uid));
        out
    }

    /// Pods bound to `node` (none for other kinds).
    pub fn on_node(&self, node: &str) -> Vec<Arc<K>> {
        let objects = self.read();
        objects
            .by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|k| objects.by_key.get(k).cloned())
            .collect()
    }

    /// The nodes that pods of the store are bound to.
    pub fn nodes(&self) -> Vec<String> {
        self.read().by_node.keys().cloned().collect()
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.read().by_key.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K>> {
        self.changes.subscribe()
    }

    /// Stores `obj` and tells the subscribers (what the cache's watch does
    /// for each put; tests call it directly).
    pub(crate) fn put(&self, key: String, obj: K) {
        let obj = Arc::new(obj);
        let old = self.write().insert(key.clone(), obj.clone());
        let _ = self.changes.send(Change {
            key,
            new: Some(obj),
            old,
        });
    }

    /// Forgets `key` and tells the subscribers.
    pub(crate) fn delete(&self, key: &str) {
        let old = self.write().remove(key);
        if old.is_some() {
            let _ = self.changes.send(Change {
                key: key.to_string(),
                new: None,
                old,
            });
        }
    }

    /// Replaces everything with `fresh` and tells subscribers about every
    /// object, so that a relist is level-triggered.
    fn replace(&self, fresh: Vec<(String, K)>) {
        let mut next = Objects::default();
        for (key, obj) in fresh {
            next.insert(key, Arc::new(obj));
        }
        let old = std::mem::replace(&mut *self.write(), next);
        let now = self.read();
        for (key, obj) in &now.by_key {
            let _ = self.changes.send(Change {
                key: key.clone(),
                new: Some(obj.clone()),
                old: old.by_key.get(key).cloned(),
            });
        }
        for (key, obj) in &old.by_key {
            if !now.by_key.contains_key(key) {
                let _ = self.changes.send(Change {
                    key: key.clone(),
                    new: None,
                    old: Some(obj.clone()),
                });
            }
        }
    }
}

/// The UID of an object's controller (its ownerReference with
/// `controller: true`).
pub fn controller_uid<K: kube::Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.as_str())
}

/// A kind's store, whatever the kind: what the cache's watch and the
/// garbage collector use.
pub trait AnyStore: Send + Sync {
    /// Where the kind is served.
    fn resource(&self) -> &'static Resource;
    /// The typed store, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// Decodes and stores a put (an object that does not decode as its
    /// kind is left out, with a warning).
    fn put_kv(&self, key: String, kv: &KeyValue);
    /// Forgets a deleted object.
    fn delete_key(&self, key: &str);
    /// Replaces everything after a relist (leaving out what does not
    /// decode).
    fn replace_kvs(&self, kvs: &[(String, &KeyValue)]);
    /// The metadata of the objects owned by `uid`.
    fn owned_by(&self, uid: &str) -> Vec<ObjectMeta>;
    /// The metadata of the object at `key`.
    fn meta_of(&self, key: &str) -> Option<ObjectMeta>;
    /// The metadata of every object in `ns` (every one for `None`).
    fn metas(&self, ns: Option<&str>) -> Vec<ObjectMeta>;
    /// How many objects `ns` holds, and the names of those not being
    /// deleted yet (what a namespace's deletion still has to ask for).
    fn left_in(&self, ns: &str) -> (usize, Vec<String>);
    /// Feeds each change's key and metadata (before, after) to
    /// `on_change`, and calls `resync` first and whenever it fell behind.
    fn follow_meta(&self, on_change: MetaFollower, resync: Box<dyn Fn() + Send>);
}

/// What [`AnyStore::follow_meta`] calls per change: the key, and the
/// metadata before and after.
pub type MetaFollower = Box<dyn FnMut(&str, Option<&ObjectMeta>, Option<&ObjectMeta>) + Send>;

impl<K: Kind> AnyStore for Store<K> {
    fn resource(&self) -> &'static Resource {
        K::resource()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn put_kv(&self, key: String, kv: &KeyValue) {
        match decode_typed::<K>(kv) {
            Ok(obj) => self.put(key, obj),
            // One object that is not its kind must not stop every
            // controller: it is left out, and said.
            Err(e) => tracing::warn!("cache: {e}; left out"),
        }
    }

    fn delete_key(&self, key: &str) {
        self.delete(key);
    }

    fn replace_kvs(&self, kvs: &[(String, &KeyValue)]) {
        let fresh = kvs
            .iter()
            .filter_map(|(k, kv)| match decode_typed::<K>(kv) {
                Ok(obj) => Some((k.clone(), obj)),
                Err(e) => {
                    tracing::warn!("cache: {e}; left out");
                    None
                }
            })
            .collect();
        self.replace(fresh);
    }

    fn owned_by(&self, uid: &str) -> Vec<ObjectMeta> {
        Store::owned_by(self, uid)
            .iter()
            .map(|o| o.meta().clone())
            .collect()
    }

    fn meta_of(&self, key: &str) -> Option<ObjectMeta> {
        self.get_key(key).map(|o| o.meta().clone())
    }

    fn metas(&self, ns: Option<&str>) -> Vec<ObjectMeta> {
        self.list(ns).iter().map(|o| o.meta().clone()).collect()
    }

    fn left_in(&self, ns: &str) -> (usize, Vec<String>) {
        let objects = self.list(Some(ns));
        let live = objects
            .iter()
            .filter(|o| o.meta().deletion_timestamp.is_none())
            .map(|o| o.meta().name.clone().unwrap_or_default())
            .collect();
        (objects.len(), live)
    }

    fn follow_meta(&self, mut on_change: MetaFollower, resync: Box<dyn Fn() + Send>) {
        let mut rx = self.subscribe();
        tokio::spawn(async move {
            resync();
            loop {
                match rx.recv().await {
                    Ok(c) => on_change(
                        &c.key,
                        c.old.as_deref().map(kube::Resource::meta),
                        c.new.as_deref().map(kube::Resource::meta),
                    ),
                    Err(broadcast::error::RecvError::Lagged(_)) => resync(),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

impl crate::registry::Namespaces for Cache {
    fn namespace(&self, name: &str) -> Option<Arc<k8s_openapi::api::core::v1::Namespace>> {
        self.store::<k8s_openapi::api::core::v1::Namespace>()
            .get(None, name)
    }

    fn pods_on_node(&self, node: &str) -> Vec<Arc<k8s_openapi::api::core::v1::Pod>> {
        self.store::<k8s_openapi::api::core::v1::Pod>()
            .on_node(node)
    }

    fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<Arc<k8s_openapi::api::core::v1::ServiceAccount>> {
        self.store::<k8s_openapi::api::core::v1::ServiceAccount>()
            .get(Some(ns), name)
    }

    fn has_config_map(&self, ns: &str, name: &str) -> bool {
        self.store::<k8s_openapi::api::core::v1::ConfigMap>()
            .get(Some(ns), name)
            .is_some()
    }
}

/// Every kind's store, and how far the cache has seen the store.
pub struct Cache {
    stores: Vec<Arc<dyn AnyStore>>,
    synced: watch::Sender<i64>,
}

macro_rules! new_stores {
    ($($k:ty),*) => {
        vec![$(Arc::new(Store::<$k>::new()) as Arc<dyn AnyStore>),*]
    };
}

/// `namespace/name` (or `name`) of the object at a store key of `res`.
fn key_tail<'a>(res: &Resource, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(&res.key_prefix())
}

impl Cache {
    /// An empty cache with a store per served kind.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            stores: for_each_kind!(new_stores),
            synced: watch::channel(0).0,
        })
    }

    /// The store of kind `K`.
    pub fn store<K: Kind>(&self) -> &Store<K> {
        self.stores
            .iter()
            .find_map(|s| s.as_any().downcast_ref::<Store<K>>())
            .expect("every Kind has a store")
    }

    /// Every kind's store.
    pub fn stores(&self) -> &[Arc<dyn AnyStore>] {
        &self.stores
    }

    /// The store of the kind served as `res`.
    pub fn store_of(&self, res: &Resource) -> Option<&Arc<dyn AnyStore>> {
        self.stores.iter().find(|s| s.resource() == res)
    }

    fn route<'a>(&self, key: &'a str) -> Option<(&Arc<dyn AnyStore>, &'a str)> {
        self.stores
            .iter()
            .find_map(|s| key_tail(s.resource(), key).map(|tail| (s, tail)))
    }

    /// Follows the store from now on; returns once the first list is loaded.
    ///
    /// # Errors
    /// When the first list fails.
    pub async fn start(self: &Arc<Self>, store: Arc<dyn KvStore>) -> anyhow::Result<()> {
        let rev = self.load(store.as_ref()).await?;
        let cache = self.clone();
        tokio::spawn(async move {
            let mut from = rev;
            loop {
                match cache.follow(store.as_ref(), from).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!("cache watch ended: {e}; listing again"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                match cache.load(store.as_ref()).await {
                    Ok(rev) => from = rev,
                    Err(e) => tracing::warn!("cache relist failed: {e}"),
                }
            }
        });
        Ok(())
    }

    /// Lists everything, replacing the cache, and announces what changed.
    async fn load(&self, store: &dyn KvStore) -> anyhow::Result<i64> {
        let (kvs, rev) = store.list("/registry/").await?;
        let mut by_store: Vec<Vec<(String, &KeyValue)>> = vec![Vec::new(); self.stores.len()];
        for kv in &kvs {
            if let Some(i) = self
                .stores
                .iter()
                .position(|s| key_tail(s.resource(), &kv.key).is_some())
            {
                let tail = key_tail(self.stores[i].resource(), &kv.key).unwrap_or_default();
                by_store[i].push((tail.to_string(), kv));
            }
        }
        for (s, kvs) in self.stores.iter().zip(&by_store) {
            s.replace_kvs(kvs);
        }
        self.synced.send_replace(rev);
        Ok(rev)
    }

    async fn follow(&self, store: &dyn KvStore, from: i64) -> anyhow::Result<()> {
        let mut stream = store.watch("/registry/", from).await?;
        while let Some(item) = stream.next().await {
            match item? {
                WatchItem::Progress(rev) => {
                    self.synced.send_replace(rev);
                }
                WatchItem::Event(e) => {
                    let rev = e.kv.mod_revision;
                    if let Some((s, tail)) = self.route(&e.kv.key) {
                        match e.kind {
                            EventKind::Put => s.put_kv(tail.to_string(), &e.kv),
                            EventKind::Delete => s.delete_key(tail),
                        }
                    }
                    self.synced.send_replace(rev);
                }
            }
        }
        Ok(())
    }

    /// The revision the cache has seen everything up to.
    pub fn revision(&self) -> i64 {
        *self.synced.borrow()
    }

    /// Waits until the cache has seen revision `rev`.
    pub async fn wait_for(&self, rev: i64) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|r| *r >= rev).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, node: Option<&str>, owner: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns",
                "ownerReferences": owner.map(|o| vec![serde_json::json!(
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": o, "controller": true})])},
            "spec": {"containers": [], "nodeName": node},
        }))
        .expect("a pod")
    }

    #[test]
    fn indexes_follow_puts_and_deletes() {
        let cache = Cache::new();
        let pods = cache.store::<Pod>();
        pods.put("ns/a".into(), pod("a", Some("n1"), Some("u1")));
        pods.put("ns/b".into(), pod("b", Some("n1"), Some("u1")));
        pods.put("ns/c".into(), pod("c", None, None));
        assert_eq!(pods.on_node("n1").len(), 2);
        assert_eq!(pods.controlled_by("u1").len(), 2);
        // Bound elsewhere and orphaned: the indexes move with it.
        pods.put("ns/b".into(), pod("b", Some("n2"), None));
        assert_eq!(pods.on_node("n1").len(), 1);
        assert_eq!(pods.on_node("n2").len(), 1);
        assert_eq!(pods.owned_by("u1").len(), 1);
        pods.delete("ns/a");
        assert!(pods.on_node("n1").is_empty());
        assert!(pods.owned_by("u1").is_empty());
        assert_eq!(pods.list(Some("ns")).len(), 2);
        assert!(
            pods.list(Some("n")).is_empty(),
            "a namespace is matched whole"
        );
        assert!(cache.store::<ReplicaSet>().is_empty());
        assert_eq!(cache.stores().len(), weft_api::resources::RESOURCES.len());
    }

    #[test]
    fn an_object_that_is_not_its_kind_is_left_out_not_fatal() {
        let cache = Cache::new();
        let pods = cache.store::<Pod>();
        let kv = |value: &[u8]| KeyValue {
            key: "/registry/core/pods/ns/a".into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 2,
        };
        pods.put_kv(
            "ns/a".into(),
            &kv(br#"{"metadata": {"name": "a"}, "spec": {"containers": 7}}"#),
        );
        assert!(pods.is_empty());
        let good =
            kv(br#"{"metadata": {"name": "b", "namespace": "ns"}, "spec": {"containers": []}}"#);
        pods.replace_kvs(&[("ns/a".into(), &kv(b"not json")), ("ns/b".into(), &good)]);
        assert_eq!(pods.len(), 1, "the good one is kept");
    }

    #[test]
    fn a_relist_tells_every_object_and_what_went() {
        let cache = Cache::new();
        let pods = cache.store::<Pod>();
        pods.put("ns/a".into(), pod("a", None, None));
        pods.put("ns/b".into(), pod("b", None, None));
        let mut rx = pods.subscribe();
        pods.replace(vec![("ns/b".into(), pod("b", Some("n1"), None))]);
        let mut seen = Vec::new();
        while let Ok(c) = rx.try_recv() {
            seen.push((c.key, c.old.is_some(), c.new.is_some()));
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("ns/a".to_string(), true, false),
                ("ns/b".to_string(), true, true)
            ]
        );
        assert_eq!(pods.on_node("n1").len(), 1);
    }
}
