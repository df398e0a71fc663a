//! The volume controller, kube's PersistentVolume binder and the local
//! provisioner in one:
//!
//! - a claim of a class whose provisioner is Weft's local one
//!   ([`LOCAL_DRIVER`]) gets a volume of its own, `pvc-<claim uid>`, on the
//!   node the scheduler chose for its first pod (WaitForFirstConsumer,
//!   the default class) or, for an Immediate class, on the Ready node with
//!   the most local storage left; the volume is held to that node by its
//!   node affinity, so the claim's pods return to their data; the node's
//!   `ephemeral-storage` capacity bounds what its volumes claim together;
//! - any other claim is bound to the smallest Available volume of its class
//!   that is large enough and offers its access modes;
//! - a volume whose claim is gone is Released; with `Delete` it is then
//!   deleted once no pod uses the claim (its node's agent removes the
//!   directory), with `Retain` it stays, data and all.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    PersistentVolumeStatus, Pod, VolumeNodeAffinity,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use weft_api::ApiError;

use super::{Action, Controller, Ctx, record_event};
use crate::cache::Cache;
use crate::registry::storage::{LOCAL_DRIVER, SELECTED_NODE, claim_request, volume_capacity};
use crate::registry::{Write, quota};

pub fn start(ctx: &Ctx) {
    Controller::<PersistentVolumeClaim>::new("volume-binder", ctx)
        .watches::<PersistentVolume>(|c, _| {
            c.new
                .as_ref()
                .or(c.old.as_ref())
                .and_then(|pv| pv.spec.as_ref()?.claim_ref.clone())
                .map(|r| {
                    weft_api::meta::key(
                        r.namespace.as_deref(),
                        r.name.as_deref().unwrap_or_default(),
                    )
                })
                .into_iter()
                .collect()
        })
        .run(1, |c, ctx| async move { bind(&c, &ctx).await });
    Controller::<PersistentVolume>::new("volume-reclaimer", ctx)
        .watches::<PersistentVolumeClaim>(|c, cache| {
            let Some(pvc) = c.old.as_ref().or(c.new.as_ref()) else {
                return Vec::new();
            };
            let (ns, name) = (pvc.metadata.namespace.clone(), pvc.metadata.name.clone());
            cache
                .store::<PersistentVolume>()
                .list(None)
                .iter()
                .filter(|pv| {
                    pv.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .is_some_and(|r| r.namespace == ns && r.name == name)
                })
                .map(|pv| weft_api::meta::key_of(pv.as_ref()))
                .collect()
        })
        .watches::<Pod>(|c, cache| {
            // A pod gone may free a Released volume to delete.
            if c.new.is_some() {
                return Vec::new();
            }
            cache
                .store::<PersistentVolume>()
                .list(None)
                .iter()
                .filter(|pv| {
                    pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released")
                })
                .map(|pv| weft_api::meta::key_of(pv.as_ref()))
                .collect()
        })
        .run(1, |pv, ctx| async move { reclaim(&pv, &ctx).await });
}

fn claim_ref(pvc: &PersistentVolumeClaim) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: pvc.metadata.namespace.clone(),
        name: pvc.metadata.name.clone(),
        uid: pvc.metadata.uid.clone(),
        ..Default::default()
    }
}

fn phase_of_claim(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.status.as_ref()?.phase.as_deref()
}

/// The node a volume is held to by its node affinity (`metadata.name In
/// [node]`, as the provisioner writes it), if it is.
fn node_of(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let [term] = terms.as_slice() else {
        return None;
    };
    let fields = term.match_fields.as_ref()?;
    let [f] = fields.as_slice() else { return None };
    (f.key == "metadata.name" && f.operator == "In")
        .then(|| f.values.as_ref()?.first().cloned())
        .flatten()
}

async fn bind(pvc: &PersistentVolumeClaim, ctx: &Ctx) -> Result<Action, ApiError> {
    if pvc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let spec = pvc.spec.clone().unwrap_or_default();
    if let Some(pv_name) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        if phase_of_claim(pvc) == Some("Bound") {
            return Ok(Action::await_change());
        }
        // Named by the claim (pre-bound by its author), or bound by us
        // before a crash between the writes: bound when the volume is
        // there, free or already this claim's, and holds the claim.
        let Some(pv) = ctx.cache.store::<PersistentVolume>().get(None, pv_name) else {
            return Ok(Action::requeue(Duration::from_secs(15)));
        };
        let r = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
        if r.is_some_and(|r| r.uid.is_some() && r.uid == pvc.metadata.uid) {
            mark_claim_bound(ctx, &ns, &name, &pv).await?;
            return Ok(Action::await_change());
        }
        let mine = r.is_none_or(|r| {
            r.namespace.as_deref() == Some(ns.as_str())
                && r.name.as_deref() == Some(name.as_str())
                && r.uid.is_none()
        });
        if !mine || !satisfies(&pv, pvc) {
            tracing::info!(claim = %format!("{ns}/{name}"), volume = pv_name, "the volume the claim names is another's or does not hold it; the claim stays Pending");
            return Ok(Action::requeue(Duration::from_secs(15)));
        }
        return bind_to(pvc, pv_name, ctx).await;
    }
    let class_name = spec.storage_class_name.clone().unwrap_or_default();
    let class = (!class_name.is_empty())
        .then(|| ctx.cache.store::<StorageClass>().get(None, &class_name))
        .flatten();
    let pv = match class.as_ref().filter(|c| c.provisioner == LOCAL_DRIVER) {
        Some(class) => match provision(pvc, class, ctx).await? {
            Some(pv) => pv,
            None => return Ok(Action::requeue(Duration::from_secs(10))),
        },
        None => match matching_volume(pvc, &class_name, ctx) {
            Some(pv) => pv,
            None => return Ok(Action::requeue(Duration::from_secs(15))),
        },
    };
    let pv_name = pv.metadata.name.clone().unwrap_or_default();
    bind_to(pvc, &pv_name, ctx).await
}

/// Whether volume `pv` can hold claim `pvc`: the same class, enough
/// capacity, every access mode the claim asks for.
fn satisfies(pv: &PersistentVolume, pvc: &PersistentVolumeClaim) -> bool {
    let spec = pv.spec.clone().unwrap_or_default();
    let want = pvc.spec.clone().unwrap_or_default();
    let offers = spec.access_modes.clone().unwrap_or_default();
    pv.metadata.deletion_timestamp.is_none()
        && spec.storage_class_name.unwrap_or_default()
            == want.storage_class_name.unwrap_or_default()
        && want
            .access_modes
            .unwrap_or_default()
            .iter()
            .all(|m| offers.contains(m))
        && claim_request(pvc).is_some_and(|asked| volume_capacity(pv).is_some_and(|c| c >= asked))
}

/// Binds claim `pvc` to volume `pv_name`: the volume first (its claimRef,
/// with the claim's UID, makes it the claim's), then the claim.
async fn bind_to(
    pvc: &PersistentVolumeClaim,
    pv_name: &str,
    ctx: &Ctx,
) -> Result<Action, ApiError> {
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let name = pvc.metadata.name.clone().unwrap_or_default();
    let pv_name = pv_name.to_string();
    let want = claim_ref(pvc);
    let pv = ctx
        .reg
        .modify::<PersistentVolume>(None, &pv_name, Write::Update, |mut v| {
            let spec = v.spec.get_or_insert_with(Default::default);
            match &spec.claim_ref {
                Some(r)
                    if (r.uid.is_some() && r.uid != want.uid)
                        || r.name != want.name
                        || r.namespace != want.namespace =>
                {
                    return Err(ApiError::conflict(
                        "persistentvolumes",
                        "",
                        &pv_name,
                        "bound to another claim meanwhile",
                    ));
                }
                _ => spec.claim_ref = Some(want.clone()),
            }
            Ok(v)
        })
        .await?;
    ctx.reg
        .modify::<PersistentVolume>(None, &pv_name, Write::Status, |mut v| {
            v.status = Some(PersistentVolumeStatus {
                phase: Some("Bound".into()),
                ..Default::default()
            });
            Ok(v)
        })
        .await?;
    ctx.reg
        .modify::<PersistentVolumeClaim>(Some(&ns), &name, Write::Update, |mut c| {
            c.spec.get_or_insert_with(Default::default).volume_name = Some(pv_name.clone());
            Ok(c)
        })
        .await?;
    mark_claim_bound(ctx, &ns, &name, &pv).await?;
    Ok(Action::await_change())
}

async fn mark_claim_bound(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    pv: &PersistentVolume,
) -> Result<(), ApiError> {
    let spec = pv.spec.clone().unwrap_or_default();
    ctx.reg
        .modify::<PersistentVolumeClaim>(Some(ns), name, Write::Status, |mut c| {
            let st = c.status.get_or_insert_with(Default::default);
            st.phase = Some("Bound".into());
            st.capacity.clone_from(&spec.capacity);
            st.access_modes.clone_from(&spec.access_modes);
            Ok(c)
        })
        .await?;
    Ok(())
}

/// The smallest Available volume of `class` that holds the claim.
fn matching_volume(
    pvc: &PersistentVolumeClaim,
    class: &str,
    ctx: &Ctx,
) -> Option<Arc<PersistentVolume>> {
    let want = claim_request(pvc)?;
    let modes = pvc.spec.as_ref()?.access_modes.clone().unwrap_or_default();
    let mut fits: Vec<(i128, Arc<PersistentVolume>)> = ctx
        .cache
        .store::<PersistentVolume>()
        .list(None)
        .into_iter()
        .filter(|pv| {
            let spec = pv.spec.clone().unwrap_or_default();
            // Free, or pre-bound to this claim (by name, without a UID).
            let free = spec.claim_ref.as_ref().is_none_or(|r| {
                r.uid == pvc.metadata.uid
                    || (r.uid.is_none()
                        && r.namespace == pvc.metadata.namespace
                        && r.name == pvc.metadata.name)
            });
            let available =
                pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
            let offers = spec.access_modes.clone().unwrap_or_default();
            free && available
                && pv.metadata.deletion_timestamp.is_none()
                && spec.storage_class_name.clone().unwrap_or_default() == class
                && modes.iter().all(|m| offers.contains(m))
        })
        .filter_map(|pv| Some((volume_capacity(&pv)?, pv)))
        .filter(|(cap, _)| *cap >= want)
        .collect();
    // A volume pre-bound to the claim first, then the smallest.
    let pre_bound = |pv: &PersistentVolume| pv.spec.as_ref().is_some_and(|s| s.claim_ref.is_some());
    fits.sort_by(|a, b| {
        pre_bound(&b.1)
            .cmp(&pre_bound(&a.1))
            .then_with(|| a.0.cmp(&b.0))
            .then_with(|| a.1.metadata.name.cmp(&b.1.metadata.name))
    });
    fits.into_iter().next().map(|(_, pv)| pv)
}

/// Room left on `node` for new local volumes: its local storage less the
/// volumes held to it; `None` when the node does not say how much it has.
/// The provisioner refuses a volume past it, and the scheduler does not
/// place a pod whose new volumes would not fit.
pub fn local_room(cache: &Cache, node: &Node) -> Option<i128> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    Some(local_capacity(node)? - local_use(cache, name))
}

/// Bytes of local volumes held to `node`.
fn local_use(cache: &Cache, node: &str) -> i128 {
    cache
        .store::<PersistentVolume>()
        .list(None)
        .iter()
        .filter(|pv| node_of(pv).as_deref() == Some(node))
        .filter_map(|pv| volume_capacity(pv))
        .sum()
}

/// The node's local storage (its `ephemeral-storage` capacity), if known.
fn local_capacity(node: &Node) -> Option<i128> {
    let st = node.status.as_ref()?;
    let q = st
        .allocatable
        .as_ref()
        .and_then(|a| a.get("ephemeral-storage"))
        .or_else(|| st.capacity.as_ref()?.get("ephemeral-storage"))?;
    weft_api::quantity::units(&q.0)
}

/// Makes the claim's local volume (or finds the one made before), on its
/// node; `None` when it has to wait (no node chosen yet, or no room).
async fn provision(
    pvc: &PersistentVolumeClaim,
    class: &StorageClass,
    ctx: &Ctx,
) -> Result<Option<Arc<PersistentVolume>>, ApiError> {
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    if let Some(pv) = ctx.cache.store::<PersistentVolume>().get(None, &pv_name) {
        return Ok(Some(pv));
    }
    let want = claim_request(pvc).unwrap_or(0);
    let selected = pvc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SELECTED_NODE))
        .cloned();
    let node = match (class.volume_binding_mode.as_deref(), selected) {
        (_, Some(n)) => n,
        (Some("WaitForFirstConsumer"), None) => return Ok(None),
        (_, None) => {
            // Immediate: the Ready node with the most room left.
            let best = ctx
                .cache
                .store::<Node>()
                .list(None)
                .into_iter()
                .filter(|n| weft_api::node::is_ready(n))
                .map(|n| {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let room = local_room(&ctx.cache, &n).unwrap_or(i128::MAX);
                    (room, name)
                })
                .max();
            match best {
                Some((_, n)) => n,
                None => return Ok(None),
            }
        }
    };
    if let Some(n) = ctx.cache.store::<Node>().get(None, &node)
        && let Some(cap) = local_capacity(&n)
    {
        let used = local_use(&ctx.cache, &node);
        if used + want > cap {
            record_event(
                &ctx.reg,
                pvc,
                "Warning",
                "ProvisioningFailed",
                &format!(
                    "not enough local storage on node {node}: {} asked, {} of {} held by other volumes",
                    quota::format("storage", want * 1000),
                    quota::format("storage", used * 1000),
                    quota::format("storage", cap * 1000)
                ),
                LOCAL_DRIVER,
            )
            .await;
            return Ok(None);
        }
    }
    let spec = pvc.spec.clone().unwrap_or_default();
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|m| m.get("storage"))
        .cloned()
        .unwrap_or_else(|| Quantity("0".into()));
    let pv = PersistentVolume {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(pv_name.clone()),
            annotations: Some(
                [(
                    "pv.kubernetes.io/provisioned-by".to_string(),
                    LOCAL_DRIVER.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some([("storage".to_string(), storage)].into()),
            access_modes: spec.access_modes.clone(),
            persistent_volume_reclaim_policy: class.reclaim_policy.clone(),
            storage_class_name: class.metadata.name.clone(),
            volume_mode: Some("Filesystem".into()),
            claim_ref: Some(claim_ref(pvc)),
            csi: Some(CSIPersistentVolumeSource {
                driver: LOCAL_DRIVER.into(),
                volume_handle: pv_name.clone(),
                ..Default::default()
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![node.clone()]),
                        }]),
                        ..Default::default()
                    }],
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    match ctx.reg.create(None, pv).await {
        Ok(pv) => {
            record_event(
                &ctx.reg,
                pvc,
                "Normal",
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {pv_name} on node {node}"),
                LOCAL_DRIVER,
            )
            .await;
            Ok(Some(Arc::new(pv)))
        }
        Err(e) if e.code == 409 => Ok(ctx.cache.store::<PersistentVolume>().get(None, &pv_name)),
        Err(e) => Err(e),
    }
}

async fn reclaim(pv: &PersistentVolume, ctx: &Ctx) -> Result<Action, ApiError> {
    let name = pv.metadata.name.clone().unwrap_or_default();
    let Some(r) = pv.spec.as_ref().and_then(|s| s.claim_ref.clone()) else {
        return Ok(Action::await_change());
    };
    // Pre-bound to a claim by name (no UID yet): Available until that
    // claim comes, never released for a claim that never was.
    if r.uid.is_none() {
        return Ok(Action::await_change());
    }
    let ns = r.namespace.clone().unwrap_or_default();
    let claim = r.name.clone().unwrap_or_default();
    let live = ctx
        .cache
        .store::<PersistentVolumeClaim>()
        .get(Some(&ns), &claim)
        .filter(|c| r.uid.is_none() || c.metadata.uid == r.uid);
    if live.is_some() {
        return Ok(Action::await_change());
    }
    let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref());
    if phase != Some("Released") {
        ctx.reg
            .modify::<PersistentVolume>(None, &name, Write::Status, |mut v| {
                v.status = Some(PersistentVolumeStatus {
                    phase: Some("Released".into()),
                    ..Default::default()
                });
                Ok(v)
            })
            .await?;
    }
    let policy = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        .unwrap_or("Retain");
    if policy != "Delete" {
        return Ok(Action::await_change());
    }
    // Not while a pod still mounts the claim.
    let used = ctx.cache.store::<Pod>().list(Some(&ns)).iter().any(|p| {
        !weft_api::pod::is_finished(p)
            && p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| {
                    v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == claim)
                })
    });
    if used {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let uid = pv.metadata.uid.clone();
    match ctx
        .reg
        .delete::<PersistentVolume>(None, &name, (uid, None), Some(0))
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}
