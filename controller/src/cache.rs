//! The controllers' view of the cluster: every object, kept current by one
//! watch on the store (what client-go's shared informers are to
//! kube-controller-manager). Controllers read from it and are told which
//! keys changed; they write through the registry, never into the cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use weft_api::resources::{RESOURCES, Resource};

use crate::registry::decode_stored;
use crate::store::{EventKind, Store, WatchItem};

/// A change seen by the cache.
#[derive(Debug, Clone)]
pub struct Change {
    pub res: &'static Resource,
    pub key: String,
    /// The object now (None when deleted).
    pub new: Option<Arc<Value>>,
    /// The object before (None when created).
    pub old: Option<Arc<Value>>,
}

/// Changes buffered for controllers. Each holds the object before and after,
/// so a large buffer keeps old versions of many objects alive; a controller
/// that falls further behind resyncs from the cache instead.
const CHANGES: usize = 4096;

impl Change {
    /// "namespace/name" of the changed object.
    pub fn key_tail(&self) -> String {
        let obj = self.new.as_ref().or(self.old.as_ref());
        obj.map(|o| crate::controllers::key_of(o))
            .unwrap_or_default()
    }
}

type Objects = HashMap<&'static str, BTreeMap<String, Arc<Value>>>;

pub struct Cache {
    objects: RwLock<Objects>,
    changes: broadcast::Sender<Change>,
    synced: watch::Sender<i64>,
}

fn resource_of(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| key.starts_with(&r.key_prefix()))
}

impl Cache {
    pub fn new() -> Arc<Self> {
        let (changes, _) = broadcast::channel(CHANGES);
        let (synced, _) = watch::channel(0);
        Arc::new(Self {
            objects: RwLock::new(HashMap::new()),
            changes,
            synced,
        })
    }

    /// Follows the store from now on; returns once the first list is loaded.
    pub async fn start(self: &Arc<Self>, store: Arc<dyn Store>) -> anyhow::Result<()> {
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
    async fn load(&self, store: &dyn Store) -> anyhow::Result<i64> {
        let (kvs, rev) = store.list("/registry/").await?;
        let mut fresh: Objects = HashMap::new();
        for kv in &kvs {
            let Some(res) = resource_of(&kv.key) else {
                continue;
            };
            let obj = decode_stored(kv).map_err(|e| anyhow::anyhow!("{e}"))?;
            fresh
                .entry(res.kind)
                .or_default()
                .insert(kv.key.clone(), Arc::new(obj));
        }
        let old = std::mem::replace(
            &mut *self.objects.write().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        // Tell controllers about everything, so a relist is level-triggered.
        let now = self
            .objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for res in RESOURCES {
            let before = old.get(res.kind);
            let after = now.get(res.kind);
            for (key, obj) in after.into_iter().flatten() {
                let prev = before.and_then(|b| b.get(key)).cloned();
                let _ = self.changes.send(Change {
                    res,
                    key: key.clone(),
                    new: Some(obj.clone()),
                    old: prev,
                });
            }
            for (key, obj) in before.into_iter().flatten() {
                if after.is_none_or(|a| !a.contains_key(key)) {
                    let _ = self.changes.send(Change {
                        res,
                        key: key.clone(),
                        new: None,
                        old: Some(obj.clone()),
                    });
                }
            }
        }
        self.synced.send_replace(rev);
        Ok(rev)
    }

    async fn follow(&self, store: &dyn Store, from: i64) -> anyhow::Result<()> {
        let mut stream = store.watch("/registry/", from).await?;
        while let Some(item) = stream.next().await {
            match item? {
                WatchItem::Progress(rev) => {
                    self.synced.send_replace(rev);
                }
                WatchItem::Event(e) => {
                    let rev = e.kv.mod_revision;
                    if let Some(res) = resource_of(&e.kv.key) {
                        let change = {
                            let mut objects =
                                self.objects.write().unwrap_or_else(|e| e.into_inner());
                            let map = objects.entry(res.kind).or_default();
                            match e.kind {
                                EventKind::Put => {
                                    let obj = Arc::new(
                                        decode_stored(&e.kv).map_err(|e| anyhow::anyhow!("{e}"))?,
                                    );
                                    let old = map.insert(e.kv.key.clone(), obj.clone());
                                    Change {
                                        res,
                                        key: e.kv.key.clone(),
                                        new: Some(obj),
                                        old,
                                    }
                                }
                                EventKind::Delete => {
                                    let old = map.remove(&e.kv.key);
                                    Change {
                                        res,
                                        key: e.kv.key.clone(),
                                        new: None,
                                        old,
                                    }
                                }
                            }
                        };
                        let _ = self.changes.send(change);
                    }
                    self.synced.send_replace(rev);
                }
            }
        }
        Ok(())
    }

    /// Changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
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

    pub fn get(&self, res: &Resource, ns: Option<&str>, name: &str) -> Option<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.get(res.kind)?.get(&res.key(ns, name)).cloned()
    }

    pub fn get_key(&self, res: &Resource, key: &str) -> Option<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.get(res.kind)?.get(key).cloned()
    }

    /// Objects of `res` in `ns` (all for None) that pass `keep`.
    pub fn list(
        &self,
        res: &Resource,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Vec<Arc<Value>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        let Some(map) = objects.get(res.kind) else {
            return Vec::new();
        };
        let prefix = res.list_prefix(ns);
        map.range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(_, v)| keep(v))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many objects of `res` the cache holds.
    pub fn count(&self, res: &Resource) -> usize {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.get(res.kind).map(BTreeMap::len).unwrap_or(0)
    }
}
