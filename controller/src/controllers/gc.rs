//! Garbage collection through ownerReferences (an object whose owners are all
//! gone is deleted, in the background) and namespace deletion (a namespace
//! being deleted is emptied, then its finalizer is removed and it goes).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::resources::{RESOURCES, Resource};

use super::{Ctx, Queue, follow_changes, res, run_workers};
use crate::registry::Write;

pub fn start(ctx: Ctx) {
    // Dependents of deleted objects, by store key.
    let orphans = Queue::new();
    let namespaces = Queue::new();
    {
        let (q, nq, cache) = (orphans.clone(), namespaces.clone(), ctx.cache.clone());
        let (q2, nq2, cache2) = (orphans.clone(), namespaces.clone(), ctx.cache.clone());
        follow_changes(
            ctx.cache.clone(),
            move |c| {
                if c.res.kind == "Namespace"
                    && let Some(ns) = &c.new
                    && ns["metadata"]["deletionTimestamp"].is_string()
                {
                    nq.add(ns["metadata"]["name"].as_str().unwrap_or_default());
                }
                // Something in a terminating namespace changed: look again.
                if let Some(ns) = c
                    .old
                    .as_ref()
                    .and_then(|o| o["metadata"]["namespace"].as_str())
                    && c.new.is_none()
                    && let Some(n) = cache.get(res("", "namespaces"), None, ns)
                    && n["metadata"]["deletionTimestamp"].is_string()
                {
                    nq.add(ns);
                }
                if c.new.is_none()
                    && let Some(old) = &c.old
                {
                    let uid = old["metadata"]["uid"].clone();
                    let ns = old["metadata"]["namespace"].as_str();
                    for r in RESOURCES.iter().filter(|r| r.namespaced) {
                        for dep in cache.list(r, ns, |o| owned_by(o, &uid)) {
                            q.add(r.key(
                                dep["metadata"]["namespace"].as_str(),
                                dep["metadata"]["name"].as_str().unwrap_or_default(),
                            ));
                        }
                    }
                }
            },
            move || {
                for r in RESOURCES.iter().filter(|r| r.namespaced) {
                    for dep in cache2.list(r, None, |o| o["metadata"]["ownerReferences"].is_array())
                    {
                        q2.add(r.key(
                            dep["metadata"]["namespace"].as_str(),
                            dep["metadata"]["name"].as_str().unwrap_or_default(),
                        ));
                    }
                }
                for ns in cache2.list(res("", "namespaces"), None, |n| {
                    n["metadata"]["deletionTimestamp"].is_string()
                }) {
                    nq2.add(ns["metadata"]["name"].as_str().unwrap_or_default());
                }
            },
        );
    }
    let ctx = Arc::new(ctx);
    {
        let ctx = ctx.clone();
        run_workers("garbage-collector", orphans, 4, move |key| {
            let ctx = ctx.clone();
            async move { collect(&ctx, &key).await.map(|_| None) }
        });
    }
    run_workers("namespace", namespaces, 1, move |name| {
        let ctx = ctx.clone();
        async move { finish_namespace(&ctx, &name).await }
    });
}

fn owned_by(obj: &Value, uid: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
}

fn resource_of_key(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| key.starts_with(&r.key_prefix()))
}

/// Deletes the object at `key` when none of its owners exists any more.
async fn collect(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    let Some(r) = resource_of_key(key) else {
        return Ok(());
    };
    let Some(obj) = ctx.cache.get_key(r, key) else {
        return Ok(());
    };
    let Some(refs) = obj["metadata"]["ownerReferences"].as_array() else {
        return Ok(());
    };
    let ns = obj["metadata"]["namespace"].as_str();
    let alive = refs.iter().any(|o| {
        let owner_res = RESOURCES.iter().find(|r| {
            r.kind == o["kind"].as_str().unwrap_or_default()
                && r.api_version() == o["apiVersion"].as_str().unwrap_or_default()
        });
        match owner_res {
            // An owner of a kind this server does not serve is not judged.
            None => true,
            Some(or) => ctx
                .cache
                .get(
                    or,
                    if or.namespaced { ns } else { None },
                    o["name"].as_str().unwrap_or_default(),
                )
                .is_some_and(|owner| owner["metadata"]["uid"] == o["uid"]),
        }
    });
    if alive {
        return Ok(());
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match ctx
        .reg
        .delete(
            r,
            ns,
            name,
            (obj["metadata"]["uid"].as_str().map(String::from), None),
        )
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
async fn finish_namespace(ctx: &Ctx, name: &str) -> Result<Option<Duration>, ApiError> {
    let ns_res = res("", "namespaces");
    let Some(ns) = ctx.cache.get(ns_res, None, name) else {
        return Ok(None);
    };
    if !ns["metadata"]["deletionTimestamp"].is_string() {
        return Ok(None);
    }
    let mut left = 0;
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        for obj in ctx.cache.list(r, Some(name), |_| true) {
            left += 1;
            let obj_name = obj["metadata"]["name"].as_str().unwrap_or_default();
            match ctx.reg.delete(r, Some(name), obj_name, (None, None)).await {
                Ok(_)
                | Err(ApiError {
                    code: 404 | 409, ..
                }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if left > 0 {
        // Look again once the deletions have landed.
        return Ok(Some(Duration::from_millis(200)));
    }
    ctx.reg
        .modify(ns_res, None, name, Write::Update, |mut obj| {
            obj["spec"]["finalizers"] = json!([]);
            Ok(obj)
        })
        .await
        .map(|_| None)
        .or_else(|e| if e.code == 404 { Ok(None) } else { Err(e) })
}
