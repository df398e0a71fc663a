//! DaemonSet controller: one pod of the DaemonSet's template on every node
//! that should run it, as kube-controller-manager's daemon controller does.
//!
//! A node should run the daemon pod when it satisfies the template's
//! `nodeSelector` and required node affinity and the pod tolerates its
//! NoSchedule and NoExecute taints (with the tolerations every daemon pod
//! gets: not-ready and unreachable NoExecute, the pressure and
//! unschedulable NoSchedule taints). A pod already there keeps running as
//! long as the node satisfies the selectors and the pod tolerates its
//! NoExecute taints. Each pod is pinned to its node by a required node
//! affinity on `metadata.name`, and bound by the scheduler, which checks
//! that it fits.
//!
//! History: each distinct template is a ControllerRevision owned by the
//! DaemonSet (named `<ds>-<hash>`, carrying the template's labels and the
//! DaemonSet's annotations, its data the strategic merge patch that
//! restores that template, as `kubectl rollout undo` applies it), its
//! revision number the highest so far plus one; returning to an old
//! template renumbers that revision. Pods carry the hash of their
//! template in `controller-revision-hash`. Old revisions no pod uses are
//! deleted beyond `revisionHistoryLimit`.
//!
//! Updates: with RollingUpdate and no surge, at most `maxUnavailable` nodes
//! are without an available daemon pod at a time (an old pod that is not
//! available is replaced at once); with `maxSurge`, a new pod starts beside
//! the old one on up to `maxSurge` nodes and the old one goes once the new
//! one is available. With OnDelete, a node gets the new template only when
//! its old pod is deleted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt as _;
use weft_api::ApiError;
use weft_api::pod::{available_in, is_ready};

use super::deployment::resolve;
use super::history::{self, REVISION_HASH, hash_of};
use super::{
    Action, Controller, Ctx, adopt, await_availability, controller_ref, delete_pods, record_event,
};
use crate::cache::Change;
use crate::registry::{Write, revision_of, store_error};

/// The DaemonSet generation a pod was made at (kube's deprecated label,
/// which tools still read).
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

const COMPONENT: &str = "daemonset-controller";

/// Pod creations per reconcile at most: the next pass does the rest.
const BURST: usize = 250;

pub fn start(ctx: &Ctx) {
    Controller::<DaemonSet>::new("daemonset", ctx)
        .owns::<Pod>()
        .owns::<ControllerRevision>()
        .watches::<Node>(|c: &Change<Node>, cache| {
            if node_matters(c) {
                cache
                    .store::<DaemonSet>()
                    .list(None)
                    .iter()
                    .map(|d| weft_api::meta::key_of(&**d))
                    .collect()
            } else {
                Vec::new()
            }
        })
        .run(2, |ds, ctx| async move { reconcile(&ds, &ctx).await });
}

/// Whether a node's change can change where daemon pods run: it came or
/// went, or its labels, taints, schedulability or readiness changed (not
/// its heartbeats).
fn node_matters(c: &Change<Node>) -> bool {
    let (Some(old), Some(new)) = (&c.old, &c.new) else {
        return true;
    };
    let taints = |n: &Node| n.spec.as_ref().and_then(|s| s.taints.clone());
    let unschedulable = |n: &Node| n.spec.as_ref().and_then(|s| s.unschedulable);
    old.metadata.labels != new.metadata.labels
        || taints(old) != taints(new)
        || unschedulable(old) != unschedulable(new)
        || weft_api::node::is_ready(old) != weft_api::node::is_ready(new)
}

/// The tolerations every daemon pod gets, as kube adds them: it stays
/// through a node's not-ready and unreachable spells and is placed despite
/// pressure and cordoning (`kubectl drain` skips it instead).
fn daemon_tolerations(spec: &PodSpec) -> Vec<Toleration> {
    let mut wanted = vec![
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    if spec.host_network == Some(true) {
        wanted.push(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    let mut out = spec.tolerations.clone().unwrap_or_default();
    for (key, effect) in wanted {
        let have = out.iter().any(|t| {
            t.key.as_deref() == Some(key)
                && t.operator.as_deref() == Some("Exists")
                && t.effect.as_deref() == Some(effect)
        });
        if !have {
            out.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    }
    out
}

/// Whether `node` should run the daemon pod (first), and whether a daemon
/// pod already on it may stay (second).
fn placement(spec: &PodSpec, node: &Node) -> (bool, bool) {
    let name = node.name_any();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let fits = weft_api::placement::selector_allows(Some(spec), &labels)
        && weft_api::placement::affinity_allows(Some(spec), &name, &labels);
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let tolerations = daemon_tolerations(spec);
    let tolerated = |effects: &[&str]| {
        taints
            .iter()
            .filter(|t| effects.contains(&t.effect.as_str()))
            .all(|t: &Taint| weft_api::placement::tolerates(&tolerations, t))
    };
    (
        fits && tolerated(&["NoSchedule", "NoExecute"]),
        fits && tolerated(&["NoExecute"]),
    )
}

/// The node a daemon pod is for: where it is bound, else where its node
/// affinity pins it.
fn node_of_pod(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(n.to_string());
    }
    weft_api::placement::required_node_affinity(Some(spec))?
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|f| f.key == "metadata.name" && f.operator == "In")
        .and_then(|f| f.values.as_ref()?.first().cloned())
}

/// A pod of the DaemonSet's template for `node`.
fn daemon_pod(ds: &DaemonSet, spec: &DaemonSetSpec, hash: &str, node: &str) -> Pod {
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.tolerations = Some(daemon_tolerations(&pod_spec));
    // Pinned to its node as kube pins it: the required node affinity is
    // replaced by the node's name (the node was found to satisfy it).
    let affinity = pod_spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![NodeSelectorRequirement {
                key: "metadata.name".into(),
                operator: "In".into(),
                values: Some(vec![node.to_string()]),
            }]),
        }],
    });
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", ds.name_any())),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: controller_ref(ds),
            ..ObjectMeta::default()
        },
        spec: Some(pod_spec),
        status: None,
    }
}

/// kube's back-off for failed daemon pods, per DaemonSet and node: the
/// first failed pod goes at once, the next one 1 s after, then 2 s, 4 s
/// ... up to 15 minutes; a pair without a failure for 30 minutes starts
/// again at 1 s. It keeps a node that rejects the pod from a hot loop of
/// creations.
static FAILED_BACKOFF: LazyLock<Mutex<HashMap<String, (Duration, Instant)>>> =
    LazyLock::new(Mutex::default);
const FAILED_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const FAILED_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// Whether the failed daemon pod of `key` (DaemonSet uid and node) may
/// be deleted now, which starts the next back-off; else how long is left.
fn failed_pod_wait(key: &str, now: Instant) -> Option<Duration> {
    let mut map = FAILED_BACKOFF.lock().unwrap_or_else(|e| e.into_inner());
    let expired = |(_, at): &(Duration, Instant)| now.duration_since(*at) > 2 * FAILED_BACKOFF_MAX;
    if map.len() > 10_000 {
        map.retain(|_, v| !expired(v));
    }
    match map.get(key).copied() {
        Some((delay, at)) if now.duration_since(at) < delay => Some(delay - now.duration_since(at)),
        Some(v) if !expired(&v) => {
            map.insert(key.to_string(), ((v.0 * 2).min(FAILED_BACKOFF_MAX), now));
            None
        }
        _ => {
            map.insert(key.to_string(), (FAILED_BACKOFF_FIRST, now));
            None
        }
    }
}

/// One node's daemon pods, split by template.
#[derive(Default)]
struct OnNode {
    new: Vec<Arc<Pod>>,
    old: Vec<Arc<Pod>>,
}

pub async fn reconcile(ds: &DaemonSet, ctx: &Ctx) -> Result<Action, ApiError> {
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = ds.namespace();
    let ns = ns.as_deref();
    let spec = ds.spec.clone().unwrap_or_default();
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    // What an earlier DaemonSet of this selector left (deleted with
    // --cascade=orphan) is this one's now.
    adopt::<DaemonSet, ControllerRevision>(ctx, ds, &spec.selector, |_| true).await?;
    adopt::<DaemonSet, Pod>(ctx, ds, &spec.selector, |_| true).await?;
    let mut pods = ctx.cache.store::<Pod>().controlled_by(uid);
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    let hash = history::sync(ds, &spec.template, spec.revision_history_limit, &pods, ctx)
        .await?
        .hash;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = std::time::SystemTime::now();
    let available = |p: &Pod| available_in(p, min_ready, now).is_some_and(|w| w.is_zero());

    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    let mut doomed: Vec<Arc<Pod>> = Vec::new();
    for p in pods {
        match node_of_pod(&p) {
            Some(n) => by_node.entry(n).or_default().push(p),
            None => doomed.push(p),
        }
    }
    // Failed pods, with their node (at most a few are told in Events).
    let mut failed: Vec<(String, String)> = Vec::new();
    // When a node's failed-pod back-off ends.
    let mut retry: Option<Duration> = None;
    let mut creates: Vec<String> = Vec::new();
    // Nodes that should run the pod, with what they have.
    let mut wanted: BTreeMap<String, OnNode> = BTreeMap::new();
    let mut misscheduled = 0i32;
    for node in ctx.cache.store::<Node>().list(None) {
        let node_name = node.name_any();
        let (run, stay) = placement(&template_spec, &node);
        let here = by_node.remove(&node_name).unwrap_or_default();
        let (dead, alive): (Vec<_>, Vec<_>) = here
            .into_iter()
            .partition(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"));
        if !run {
            doomed.extend(dead);
        } else if !dead.is_empty() {
            // A failed pod is replaced after the node's back-off; until
            // then it stays and the node gets no other.
            match failed_pod_wait(&format!("{uid}/{node_name}"), Instant::now()) {
                Some(left) => {
                    retry = Some(retry.map_or(left, |r: Duration| r.min(left)));
                    continue;
                }
                None => {
                    failed.extend(
                        dead.iter()
                            .map(|p| (weft_api::meta::key_of(&**p), node_name.clone())),
                    );
                    doomed.extend(dead);
                }
            }
        }
        if !run {
            if !alive.is_empty() {
                misscheduled += 1;
            }
            // A pod that may stay (a NoSchedule taint it does not
            // tolerate came after it) is left as it is, as kube does: not
            // replaced in an update, counted as misscheduled.
            if !stay {
                doomed.extend(alive);
            }
            continue;
        }
        let mut on = OnNode::default();
        for p in alive {
            if hash_of(&p) == Some(hash.as_str()) {
                on.new.push(p);
            } else {
                on.old.push(p);
            }
        }
        // More than one of a kind: the oldest stays.
        for list in [&mut on.new, &mut on.old] {
            list.sort_by_key(|p| p.metadata.creation_timestamp.clone());
            doomed.extend(list.drain(1.min(list.len())..));
        }
        wanted.insert(node_name, on);
    }
    // Pods for nodes that no longer exist.
    doomed.extend(by_node.into_values().flatten());

    let desired = wanted.len() as i64;
    let rolling = spec
        .update_strategy
        .as_ref()
        .filter(|s| s.type_.as_deref() != Some("OnDelete"))
        .map(|s| s.rolling_update.clone().unwrap_or_default());
    let mut max_unavailable = rolling
        .as_ref()
        .map_or(0, |r| resolve(r.max_unavailable.as_ref(), desired, true));
    let max_surge = rolling
        .as_ref()
        .map_or(0, |r| resolve(r.max_surge.as_ref(), desired, true));
    if rolling.is_some() && max_unavailable == 0 && max_surge == 0 {
        max_unavailable = 1;
    }
    // The manage pass: a node without a pod gets one of the new template.
    for (node, on) in &wanted {
        if on.new.is_empty() && on.old.is_empty() {
            creates.push(node.clone());
        }
    }
    // The update pass.
    if rolling.is_some() && max_surge == 0 {
        let mut unavailable = wanted
            .values()
            .filter(|on| match (on.new.first(), on.old.first()) {
                (Some(n), None) => !available(n),
                (None, None) | (Some(_), Some(_)) => true,
                (None, Some(_)) => false,
            })
            .count() as i64;
        for on in wanted.values() {
            let (None, Some(old)) = (on.new.first(), on.old.first()) else {
                continue;
            };
            if !available(old) {
                doomed.push(old.clone());
            } else if unavailable < max_unavailable {
                unavailable += 1;
                doomed.push(old.clone());
            }
        }
    } else if rolling.is_some() {
        let mut surging = wanted
            .values()
            .filter(|on| !on.new.is_empty() && !on.old.is_empty())
            .count() as i64;
        for (node, on) in &wanted {
            match (on.new.first(), on.old.first()) {
                (None, Some(old)) if !available(old) => doomed.push(old.clone()),
                (None, Some(_)) if surging < max_surge => {
                    surging += 1;
                    creates.push(node.clone());
                }
                (Some(new), Some(old)) if available(new) => doomed.push(old.clone()),
                _ => {}
            }
        }
    }
    if rolling.is_none() || max_surge == 0 {
        // Without surge a node runs one pod: the new one stays.
        for on in wanted.values() {
            if let (Some(_), Some(old)) = (on.new.first(), on.old.first()) {
                doomed.push(old.clone());
            }
        }
    }

    let mut last_rev = 0i64;
    if !doomed.is_empty() {
        doomed.sort_by_key(|p| p.metadata.uid.clone());
        doomed.dedup_by_key(|p| p.metadata.uid.clone());
        let names = delete_pods(ctx, ns, &doomed, true).await?;
        for (pod, node) in failed.iter().take(5) {
            record_event(
                &ctx.reg,
                ds,
                "Warning",
                "FailedDaemonPod",
                &format!("Found failed daemon pod {pod} on node {node}, will try to kill it"),
                COMPONENT,
            )
            .await;
        }
        for n in names.iter().take(5) {
            record_event(
                &ctx.reg,
                ds,
                "Normal",
                "SuccessfulDelete",
                &format!("Deleted pod: {n}"),
                COMPONENT,
            )
            .await;
        }
        last_rev = ctx.reg.store.revision().await.map_err(store_error)?;
    }
    let capped = creates.len() > BURST;
    if !creates.is_empty() {
        use futures::StreamExt as _;
        let results: Vec<Result<Pod, ApiError>> =
            futures::stream::iter(creates.iter().take(BURST).cloned())
                .map(|node| {
                    let pod = daemon_pod(ds, &spec, &hash, &node);
                    async move { ctx.reg.create(ns, pod).await }
                })
                .buffer_unordered(64)
                .collect()
                .await;
        let mut failure = None;
        for r in results {
            match r {
                Ok(p) => {
                    last_rev = last_rev.max(revision_of(&p));
                    record_event(
                        &ctx.reg,
                        ds,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {}", p.name_any()),
                        COMPONENT,
                    )
                    .await;
                }
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            record_event(
                &ctx.reg,
                ds,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {e}"),
                COMPONENT,
            )
            .await;
            return Err(e);
        }
    }
    if last_rev > 0 {
        ctx.cache.wait_for(last_rev).await;
    }
    write_status(ds, &spec, &hash, misscheduled, ctx).await?;
    if capped {
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    // Pods that become available with time (minReadySeconds) bring the
    // DaemonSet back then.
    let action = await_availability(ctx, uid, min_ready);
    Ok(match retry {
        Some(r) => action.at_most(r),
        None => action,
    })
}

/// Counts the daemon pods per node as the status says them.
async fn write_status(
    ds: &DaemonSet,
    spec: &DaemonSetSpec,
    hash: &str,
    misscheduled: i32,
    ctx: &Ctx,
) -> Result<(), ApiError> {
    let template_spec = spec.template.spec.clone().unwrap_or_default();
    let uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = std::time::SystemTime::now();
    let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
    for p in ctx.cache.store::<Pod>().controlled_by(uid) {
        if p.metadata.deletion_timestamp.is_none()
            && !weft_api::pod::is_finished(&p)
            && let Some(n) = node_of_pod(&p)
        {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut st = DaemonSetStatus {
        number_misscheduled: misscheduled,
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        ..DaemonSetStatus::default()
    };
    for node in ctx.cache.store::<Node>().list(None) {
        let (run, _) = placement(&template_spec, &node);
        let here = by_node.get(&node.name_any());
        if !run {
            continue;
        }
        st.desired_number_scheduled += 1;
        let Some(here) = here.filter(|v| !v.is_empty()) else {
            continue;
        };
        st.current_number_scheduled += 1;
        if here.iter().any(|p| is_ready(p)) {
            st.number_ready += 1;
        }
        let updated = here.iter().find(|p| hash_of(p) == Some(hash));
        if updated.is_some() {
            st.updated_number_scheduled = Some(st.updated_number_scheduled.unwrap_or(0) + 1);
        }
        if here
            .iter()
            .any(|p| available_in(p, min_ready, now).is_some_and(|w| w.is_zero()))
        {
            st.number_available = Some(st.number_available.unwrap_or(0) + 1);
        }
    }
    let available = st.number_available.unwrap_or(0);
    st.number_unavailable = Some(st.desired_number_scheduled - available).filter(|n| *n > 0);
    if st.number_available == Some(0) {
        st.number_available = None;
    }
    if ds.status.as_ref() == Some(&st) {
        return Ok(());
    }
    ctx.reg
        .modify::<DaemonSet>(
            ds.metadata.namespace.as_deref(),
            &ds.name_any(),
            Write::Status,
            |mut d| {
                d.status = Some(st.clone());
                Ok(d)
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use serde_json::{Value, json};

    fn node(labels: Value, taints: Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": labels},
            "spec": {"taints": taints},
        }))
        .expect("a node")
    }

    fn spec(v: Value) -> PodSpec {
        serde_json::from_value(v).expect("a pod spec")
    }

    #[test]
    fn placement_follows_selectors_and_taints_with_the_daemon_tolerations() {
        let plain = spec(json!({"containers": []}));
        // Cordoned and not-ready nodes still run daemon pods.
        let cordoned = node(
            json!({}),
            json!([{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                   {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]),
        );
        assert_eq!(placement(&plain, &cordoned), (true, true));
        // A taint it does not tolerate: NoSchedule keeps what runs there,
        // NoExecute does not.
        let dedicated = node(json!({}), json!([{"key": "gpu", "effect": "NoSchedule"}]));
        assert_eq!(placement(&plain, &dedicated), (false, true));
        let evicting = node(json!({}), json!([{"key": "gpu", "effect": "NoExecute"}]));
        assert_eq!(placement(&plain, &evicting), (false, false));
        let tolerant = spec(json!({"containers": [],
            "tolerations": [{"key": "gpu", "operator": "Exists"}]}));
        assert_eq!(placement(&tolerant, &evicting), (true, true));
        // nodeSelector and required affinity.
        let picky = spec(json!({"containers": [], "nodeSelector": {"role": "edge"}}));
        assert_eq!(
            placement(&picky, &node(json!({}), json!([]))),
            (false, false)
        );
        assert_eq!(
            placement(&picky, &node(json!({"role": "edge"}), json!([]))),
            (true, true)
        );
    }

    #[test]
    fn daemon_pods_are_pinned_to_their_node_and_carry_their_template_hash() {
        let ds: DaemonSet = serde_json::from_value(json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "u1", "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}],
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                            {"nodeSelectorTerms": [{"matchExpressions": [{"key": "role", "operator": "Exists"}]}]}}}}}},
        }))
        .expect("a DaemonSet");
        let spec = ds.spec.clone().expect("spec");
        let pod = daemon_pod(&ds, &spec, "abc", "n7");
        assert_eq!(node_of_pod(&pod).as_deref(), Some("n7"));
        let labels = pod.metadata.labels.clone().expect("labels");
        assert_eq!(labels[REVISION_HASH], "abc");
        assert_eq!(labels[TEMPLATE_GENERATION], "3");
        assert_eq!(labels["app"], "agent");
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .expect("tolerations");
        assert!(
            tolerations
                .iter()
                .any(|t| t.key.as_deref() == Some("node.kubernetes.io/unreachable"))
        );
        // The revision data restores the template, and reads back as it.
        let data = history::revision_data(&spec.template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        let cr = ControllerRevision {
            data: Some(RawExtension(data)),
            ..ControllerRevision::default()
        };
        assert_eq!(history::revision_template(&cr), Some(spec.template));
    }

    #[test]
    fn failed_daemon_pods_back_off_per_daemonset_and_node() {
        let t0 = Instant::now();
        let key = "uid-backoff-test/n1";
        assert_eq!(failed_pod_wait(key, t0), None, "the first goes at once");
        assert!(failed_pod_wait(key, t0).is_some_and(|w| w <= Duration::from_secs(1)));
        assert!(
            failed_pod_wait("uid-backoff-test/n2", t0).is_none(),
            "another node"
        );
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(failed_pod_wait(key, t1), None, "after 1 s");
        assert_eq!(
            failed_pod_wait(key, t1 + Duration::from_secs(1)),
            Some(Duration::from_secs(1)),
            "then 2 s"
        );
        // Quiet for longer than twice the maximum: from 1 s again.
        let later = t1 + 2 * FAILED_BACKOFF_MAX + Duration::from_secs(1);
        assert_eq!(failed_pod_wait(key, later), None);
        assert_eq!(
            failed_pod_wait(key, later + Duration::from_millis(500)),
            Some(Duration::from_millis(500))
        );
    }
}
