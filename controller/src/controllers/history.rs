//! The history of a DaemonSet or StatefulSet as ControllerRevisions, as
//! kube-controller-manager keeps it: each distinct pod template is one
//! revision owned by the workload, named `<owner>-<hash>`, with the
//! template's labels and the owner's annotations (so
//! `kubernetes.io/change-cause` shows in `kubectl rollout history`), its
//! data the strategic merge patch that puts the template back (what
//! `kubectl rollout undo` sends). Its revision number is the highest so far
//! plus one; going back to an older template renumbers that revision as
//! the newest. Revisions beyond the history limit that no pod is of are
//! deleted, oldest first.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::ResourceExt as _;
use serde_json::Value;
use weft_api::ApiError;

use super::deployment::template_hash;
use super::{Ctx, controller_ref};
use crate::registry::{Kind, Write, revision_of};

/// The label naming the revision a pod (or revision) is of: a DaemonSet's
/// pods carry the hash, a StatefulSet's the revision's name, as in kube.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The revision of the current template.
pub struct Current {
    /// Its template hash.
    pub hash: String,
    /// Its name (`<owner>-<hash>`).
    pub name: String,
    /// Its number.
    pub revision: i64,
}

/// The revision data for `template` (see [`weft_api::revision`]).
#[must_use]
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    weft_api::revision::data_of(serde_json::to_value(template).unwrap_or_default())
}

/// The template a revision holds.
#[must_use]
pub fn revision_template(r: &ControllerRevision) -> Option<PodTemplateSpec> {
    serde_json::from_value(weft_api::revision::template_of(&r.data.as_ref()?.0)).ok()
}

/// The pod's `controller-revision-hash` label.
#[must_use]
pub fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(REVISION_HASH)
        .map(String::as_str)
}

/// The revisions `owner` controls, oldest first.
#[must_use]
pub fn revisions_of<K: Kind>(owner: &K, ctx: &Ctx) -> Vec<Arc<ControllerRevision>> {
    let uid = owner.meta().uid.as_deref().unwrap_or_default();
    let mut history = ctx.cache.store::<ControllerRevision>().controlled_by(uid);
    history.sort_by_key(|r| r.revision);
    history
}

/// Finds or makes the revision of `template` for `owner` (renumbering it as
/// the newest when it was an older one), and trims the history to `limit`
/// (default 10) revisions besides it that none of `pods` is of.
///
/// # Errors
/// When a revision cannot be written.
pub async fn sync<K: Kind>(
    owner: &K,
    template: &PodTemplateSpec,
    limit: Option<i32>,
    pods: &[Arc<Pod>],
    ctx: &Ctx,
) -> Result<Current, ApiError> {
    let ns = owner.meta().namespace.clone();
    let ns = ns.as_deref();
    let history = revisions_of(owner, ctx);
    let max = history.last().map_or(0, |r| r.revision);
    let current = match history
        .iter()
        .find(|r| revision_template(r).as_ref() == Some(template))
    {
        Some(r) if r.revision == max => r.clone(),
        Some(r) => {
            let updated = ctx
                .reg
                .modify::<ControllerRevision>(ns, &r.name_any(), Write::Update, |mut cr| {
                    cr.revision = max + 1;
                    Ok(cr)
                })
                .await?;
            ctx.cache.wait_for(revision_of(&updated)).await;
            Arc::new(updated)
        }
        None => {
            let hash = template_hash(template);
            let mut labels = template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            labels.insert(REVISION_HASH.into(), hash.clone());
            let cr = ControllerRevision {
                metadata: ObjectMeta {
                    name: Some(format!("{}-{hash}", owner.name_any())),
                    namespace: owner.meta().namespace.clone(),
                    labels: Some(labels),
                    annotations: owner.meta().annotations.clone(),
                    owner_references: controller_ref(owner),
                    ..ObjectMeta::default()
                },
                data: Some(RawExtension(revision_data(template))),
                revision: max + 1,
            };
            let created = ctx.reg.create(ns, cr).await?;
            ctx.cache.wait_for(revision_of(&created)).await;
            Arc::new(created)
        }
    };
    let hash = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH).cloned())
        .unwrap_or_else(|| template_hash(template));
    let limit = limit.unwrap_or(10).max(0) as usize;
    let in_use: HashSet<&str> = pods.iter().filter_map(|p| hash_of(p)).collect();
    let idle: Vec<_> = history
        .iter()
        .filter(|r| r.metadata.uid != current.metadata.uid)
        .filter(|r| {
            let h = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_HASH));
            !in_use.contains(r.name_any().as_str())
                && h.is_none_or(|h| !in_use.contains(h.as_str()))
        })
        .collect();
    for r in idle.iter().take(idle.len().saturating_sub(limit)) {
        match ctx
            .reg
            .delete::<ControllerRevision>(ns, &r.name_any(), (r.metadata.uid.clone(), None), None)
            .await
        {
            Ok(_)
            | Err(ApiError {
                code: 404 | 409, ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Current {
        hash,
        name: current.name_any(),
        revision: current.revision,
    })
}
