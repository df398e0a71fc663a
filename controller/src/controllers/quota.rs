//! The resource quota controller: keeps every ResourceQuota's
//! `status.used` current as objects of its namespace come and go (the
//! admission raises it on creation; this lowers it on deletion and
//! corrects any drift). A recount is written with a compare on the
//! quota's revision, so a creation charged meanwhile is never lost: the
//! count is taken again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Pod, ResourceQuota, ResourceQuotaStatus, Secret, Service,
};
use weft_api::ApiError;

use super::{Action, Controller, Ctx};
use crate::cache::{Cache, Change};
use crate::registry::{Kind, Write, quota};

/// How often a quota is recounted even when nothing seems to change.
const RESYNC: Duration = Duration::from_secs(30);

/// The quotas of the namespace of a changed object.
fn quotas_of<K: Kind>(c: &Change<K>, cache: &Cache) -> Vec<String> {
    let ns = c
        .new
        .as_ref()
        .or(c.old.as_ref())
        .and_then(|o| o.meta().namespace.clone());
    cache
        .store::<ResourceQuota>()
        .list(ns.as_deref())
        .iter()
        .map(|q| weft_api::meta::key_of(q.as_ref()))
        .collect()
}

pub fn start(ctx: &Ctx) {
    Controller::<ResourceQuota>::new("resourcequota", ctx)
        .watches::<Pod>(quotas_of)
        .watches::<Service>(quotas_of)
        .watches::<ConfigMap>(quotas_of)
        .watches::<Secret>(quotas_of)
        .watches::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(quotas_of)
        .run(1, |q, ctx| async move { reconcile(&q, &ctx).await });
}

async fn reconcile(q: &ResourceQuota, ctx: &Ctx) -> Result<Action, ApiError> {
    let ns = q.metadata.namespace.clone().unwrap_or_default();
    let name = q.metadata.name.clone().unwrap_or_default();
    for _ in 0..8 {
        let Some((mut now, rev)) = ctx.reg.find::<ResourceQuota>(Some(&ns), &name).await? else {
            return Ok(Action::await_change());
        };
        let hard = now
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let used = quota::count(&ctx.reg, &ns, &hard).await?;
        let status = Some(ResourceQuotaStatus {
            hard: Some(hard),
            used: Some(used),
        });
        if now.status == status {
            return Ok(Action::requeue(RESYNC));
        }
        now.status = status;
        now.metadata.resource_version = Some(rev.to_string());
        match ctx.reg.update(Some(&ns), &name, now, Write::Status).await {
            Ok(_) => return Ok(Action::requeue(RESYNC)),
            // Charged meanwhile: count again.
            Err(e) if e.reason == "Conflict" => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}
