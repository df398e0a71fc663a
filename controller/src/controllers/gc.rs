//! Garbage collection through ownerReferences (an object whose owners are all
//! gone is deleted, in the background) and namespace deletion (a namespace
//! being deleted is emptied, a deletecollection per kind as kube's namespace
//! controller does, then its finalizer is removed and it goes).
//!
//! Both work on any kind, through the objects' metadata: the cache's owner
//! index finds the dependents of a deleted object, and the registry's
//! [`DynKind`](crate::registry::DynKind) deletes them.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_api::ApiError;
use weft_api::resources::{self, RESOURCES, Resource};

use super::{Action, Controller, Ctx, Queue, run_queue};
use crate::registry::{Write, kind_of};

/// The store key of an object of `res`.
fn store_key(res: &Resource, meta: &ObjectMeta) -> String {
    res.key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

pub fn start(ctx: &Ctx) {
    // Namespaces being deleted: the namespace controller, also woken by
    // the deletions of their content.
    let namespace_controller = Controller::<Namespace>::new("namespace", ctx);
    let namespaces = namespace_controller.queue();
    // Dependents of deleted objects, by store key.
    let orphans = Queue::new();
    for store in ctx.cache.stores() {
        let res = store.resource();
        let (q, nq, cache) = (orphans.clone(), namespaces.clone(), ctx.cache.clone());
        let (q2, cache2) = (orphans.clone(), ctx.cache.clone());
        let first = std::sync::atomic::AtomicBool::new(true);
        store.follow_meta(
            Box::new(move |_key, old, new| {
                if res.kind == "Namespace"
                    && let Some(ns) = new
                    && ns.deletion_timestamp.is_some()
                {
                    nq.add(ns.name.clone().unwrap_or_default());
                }
                // An object with new owners: check them now, as kube's
                // garbage collector does each object it sees (an owner that
                // is not there, say one in another namespace, never goes
                // away to wake it later).
                if res.namespaced
                    && let Some(new) = new
                    && new.owner_references.as_ref().is_some_and(|r| !r.is_empty())
                    && old.is_none_or(|o| o.owner_references != new.owner_references)
                {
                    q.add(store_key(res, new));
                }
                let (Some(old), None) = (old, new) else {
                    return;
                };
                // Something in a terminating namespace went: look again.
                if let Some(ns) = &old.namespace
                    && cache
                        .store::<Namespace>()
                        .get(None, ns)
                        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
                {
                    nq.add(ns.clone());
                }
                // Its dependents may be orphans now.
                let uid = old.uid.as_deref().unwrap_or_default();
                for s in cache.stores().iter().filter(|s| s.resource().namespaced) {
                    for dep in s.owned_by(uid) {
                        q.add(store_key(s.resource(), &dep));
                    }
                }
            }),
            // At start, this kind's objects that have owners; after falling
            // behind (a deletion may have been missed, whose dependents are
            // of any kind), every kind's.
            Box::new(move || {
                let all = !first.swap(false, std::sync::atomic::Ordering::Relaxed);
                for s in cache2
                    .stores()
                    .iter()
                    .filter(|s| s.resource().namespaced && (all || s.resource() == res))
                {
                    for dep in s
                        .metas(None)
                        .iter()
                        .filter(|m| m.owner_references.as_ref().is_some_and(|r| !r.is_empty()))
                    {
                        q2.add(store_key(s.resource(), dep));
                    }
                }
            }),
        );
    }
    let collector = Arc::new(ctx.clone());
    run_queue("garbage-collector", orphans, 4, move |key| {
        let ctx = collector.clone();
        async move { collect(&ctx, &key).await.map(|()| Action::await_change()) }
    });
    namespace_controller.run(
        1,
        |ns, ctx| async move { finish_namespace(&ns, &ctx).await },
    );
}

fn resource_of_key(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| key.starts_with(&r.key_prefix()))
}

/// Deletes the object at `key` when none of its owners exists any more.
async fn collect(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    // Only namespaced objects are collected: a cluster-scoped object
    // naming a namespaced owner cannot be resolved, and kube-apiserver
    // collects nothing for it either.
    let Some(r) = resource_of_key(key).filter(|r| r.namespaced) else {
        return Ok(());
    };
    let Some(store) = ctx.cache.store_of(r) else {
        return Ok(());
    };
    let tail = key.strip_prefix(&r.key_prefix()).unwrap_or_default();
    let Some(meta) = store.meta_of(tail) else {
        return Ok(());
    };
    let Some(refs) = &meta.owner_references else {
        return Ok(());
    };
    let ns = meta.namespace.as_deref();
    let alive = refs.iter().any(|o| {
        match resources::by_kind(&o.api_version, &o.kind) {
            // An owner of a kind this server does not serve is not judged.
            None => true,
            Some(or) => ctx.cache.store_of(or).is_none_or(|s| {
                let owner_key = weft_api::meta::key(if or.namespaced { ns } else { None }, &o.name);
                s.meta_of(&owner_key)
                    .is_some_and(|owner| owner.uid.as_deref() == Some(o.uid.as_str()))
            }),
        }
    });
    if alive {
        return Ok(());
    }
    // The cache may lag behind an owner just made: the store decides.
    for o in refs {
        let Some(or) = resources::by_kind(&o.api_version, &o.kind) else {
            continue;
        };
        let owner_key = or.key(if or.namespaced { ns } else { None }, &o.name);
        let owner = ctx
            .reg
            .store
            .get(&owner_key)
            .await
            .map_err(crate::registry::store_error)?;
        if owner.is_some_and(|kv| {
            crate::registry::decode_stored(&kv)
                .is_ok_and(|v| v["metadata"]["uid"].as_str() == Some(o.uid.as_str()))
        }) {
            return Ok(());
        }
    }
    let name = meta.name.as_deref().unwrap_or_default();
    match kind_of(r)
        .delete(&ctx.reg, ns, name, (meta.uid.clone(), None), None)
        .await
    {
        Ok(_)
        | Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Empties a namespace being deleted; once empty, lets it go.
async fn finish_namespace(ns: &Namespace, ctx: &Ctx) -> Result<Action, ApiError> {
    if ns.metadata.deletion_timestamp.is_none() {
        return Ok(Action::await_change());
    }
    let name = ns.metadata.name.clone().unwrap_or_default();
    // Per kind, one deletecollection of what is not being deleted yet;
    // what is (pods stopping on their nodes) is only counted.
    let mut left = 0;
    for store in ctx
        .cache
        .stores()
        .iter()
        .filter(|s| s.resource().namespaced)
    {
        let (count, live) = store.left_in(&name);
        left += count;
        if !live.is_empty() {
            let objects = live.into_iter().map(|n| (Some(name.clone()), n)).collect();
            ctx.reg
                .delete_collection(store.resource(), objects, Some("Background"), None)
                .await?;
        }
    }
    if left > 0 {
        // Look again once the deletions have landed (each one that lands
        // wakes it too).
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    ctx.reg
        .modify::<Namespace>(None, &name, Write::Update, |mut obj| {
            obj.spec.get_or_insert_with(Default::default).finalizers = Some(Vec::new());
            Ok(obj)
        })
        .await
        .map(|_| Action::await_change())
        .or_else(|e| {
            if e.code == 404 {
                Ok(Action::await_change())
            } else {
                Err(e)
            }
        })
}
