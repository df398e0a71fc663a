//! Node lifecycle: a node whose Lease is not renewed within the grace period
//! becomes NotReady (Ready=Unknown) and is tainted unreachable; after the
//! eviction delay its pods are deleted, so their controllers make new ones
//! elsewhere. A node that renews again loses the taints. Pods bound to a
//! node that no longer exists are deleted too.
//!
//! As kube's node lifecycle controller does, the grace period is counted on
//! the controller's own clock, from when it last saw the node's heartbeat
//! change (not from the Lease's renewTime), and only over time in which it
//! could have seen one:
//! - a controller that starts or restarts observes every node afresh, so
//!   each gets a full grace period;
//! - a sweep that comes late (the process was stopped, or starved of CPU)
//!   observes every node afresh too;
//! - while the controllers' cache lags the store (the controller is too
//!   busy to take in the renewals that are there), the lag does not count.
//!
//! When most nodes look silent at once (all of them, or more than two and
//! at least 55%, kube's zone-disruption thresholds), the fault is more
//! likely the controller's or the network's than the nodes': their Ready
//! condition says Unknown, but their pods are neither marked not Ready nor
//! evicted until enough nodes are back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use weft_api::ApiError;

use super::{Ctx, record_event};
use crate::registry::{DELETION_BY_POD_GC, DELETION_BY_TAINT, Disruption, Write};

pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// kube's `unhealthyZoneThreshold`: the share of silent nodes (of more than
/// two) from which the controller suspects itself or the network.
const DISRUPTION_SHARE: f64 = 0.55;

pub fn start(ctx: Ctx) {
    tokio::spawn(async move {
        let every =
            (ctx.cfg.node_grace / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let mut seen = Observer::new(every);
        loop {
            seen.look(&ctx).await;
            if let Err(e) = sweep(&ctx, &mut seen).await {
                tracing::warn!("node lifecycle: {e}");
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// What the controller itself has seen of the nodes' heartbeats.
struct Observer {
    every: Duration,
    /// Per node: its last heartbeat as written (Lease renewTime, Ready
    /// heartbeat), when this controller saw it change, and whether it has
    /// changed since this controller's first look.
    nodes: HashMap<String, (f64, Instant, bool)>,
    /// When the last sweep began.
    last_sweep: Option<Instant>,
    /// The store's revision at past moments, oldest first.
    samples: VecDeque<(Instant, i64)>,
    /// Up to when the cache is known to hold everything the store held.
    fresh_until: Instant,
    /// Whether the last sweep found most nodes silent.
    disrupted: bool,
}

impl Observer {
    fn new(every: Duration) -> Self {
        Self {
            every,
            nodes: HashMap::new(),
            last_sweep: None,
            samples: VecDeque::new(),
            fresh_until: Instant::now(),
            disrupted: false,
        }
    }

    /// Before a sweep: notices a late sweep, and how far the cache is
    /// behind the store.
    async fn look(&mut self, ctx: &Ctx) {
        let now = Instant::now();
        if let Some(last) = self.last_sweep {
            let gap = now - last;
            if gap > self.every * 3 + Duration::from_secs(1) {
                tracing::warn!(
                    "node lifecycle: no sweep for {:.1} s (the controller was stopped or starved); every node gets a full grace period from now",
                    gap.as_secs_f64()
                );
                for (_, at, renewed) in self.nodes.values_mut() {
                    *at = now;
                    *renewed = false;
                }
                self.samples.clear();
                self.fresh_until = now;
            }
        }
        self.last_sweep = Some(now);
        if let Ok(rev) = ctx.reg.store.revision().await {
            self.samples.push_back((now, rev));
        }
        // The cache holds everything the store held at each sample whose
        // revision it has reached.
        let cached = ctx.cache.revision();
        while let Some(&(at, rev)) = self.samples.front() {
            if rev > cached {
                break;
            }
            self.fresh_until = self.fresh_until.max(at);
            self.samples.pop_front();
        }
        // A cache far behind: keep only samples enough to tell.
        while self.samples.len() > 1000 {
            self.samples.pop_front();
        }
    }

    /// How long the node has been silent, as far as this controller could
    /// have seen: a heartbeat that changed since the last look restarts it.
    fn silent_for(&mut self, name: &str, heartbeat: f64, now: Instant) -> Duration {
        let entry = self
            .nodes
            .entry(name.to_string())
            .or_insert((heartbeat, now, false));
        if entry.0 != heartbeat {
            *entry = (heartbeat, now, true);
        }
        self.fresh_until.saturating_duration_since(entry.1)
    }

    /// Whether this controller has seen the node renew since its first look
    /// (or since it last resumed): not silent yet is not alive again.
    fn renewed(&self, name: &str) -> bool {
        self.nodes.get(name).is_some_and(|n| n.2)
    }

    /// Forgets nodes that are gone.
    fn keep(&mut self, known: &HashSet<String>) {
        self.nodes.retain(|n, _| known.contains(n));
    }
}

/// Whether `silent` of `total` nodes silent at once is a disruption rather
/// than node failures (kube's full and partial zone disruption).
fn disruption(silent: usize, total: usize) -> bool {
    silent > 0
        && (silent == total || (silent > 2 && silent as f64 >= total as f64 * DISRUPTION_SHARE))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch, fractions included.
fn secs(t: &Timestamp) -> f64 {
    t.as_second() as f64 + f64::from(t.subsec_nanosecond()) * 1e-9
}

/// When the node last showed it is alive: its Lease, else its Ready
/// condition's heartbeat, else its creation.
fn last_heartbeat(ctx: &Ctx, node: &Node) -> f64 {
    let lease = ctx
        .cache
        .store::<Lease>()
        .get(Some("kube-node-lease"), &node.name_any());
    let from_lease = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| secs(&t.0)));
    let from_condition = weft_api::node::ready_condition(node)
        .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| secs(&t.0)));
    let created = node
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(0.0, |t| secs(&t.0));
    from_lease
        .into_iter()
        .chain(from_condition)
        .fold(created, f64::max)
}

fn unreachable_taint(node: &Node) -> Option<&Taint> {
    node.spec
        .as_ref()?
        .taints
        .as_ref()?
        .iter()
        .find(|t| t.key == UNREACHABLE && t.effect == "NoExecute")
}

/// How long a pod stays on an unreachable node: its toleration's seconds,
/// forever for a toleration without them, else the controller's delay.
fn tolerated_for(pod: &Pod, default: Duration) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    for t in tolerations {
        let key = t.key.as_deref().unwrap_or_default();
        let key_ok =
            key == UNREACHABLE || (key.is_empty() && t.operator.as_deref() == Some("Exists"));
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == "NoExecute");
        if key_ok && effect_ok {
            return t
                .toleration_seconds
                .map(|s| Duration::from_secs(s.max(0).unsigned_abs()));
        }
    }
    Some(default)
}

/// When (seconds since the epoch) `taints` evict the pod: at once for one
/// it does not tolerate, else its tolerations' seconds after each taint was
/// added (the earliest); `None` when it tolerates them all for good.
fn eviction_due(pod: &Pod, taints: &[&Taint]) -> Option<f64> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    taints
        .iter()
        .filter_map(|taint| {
            let matching: Vec<_> = tolerations
                .iter()
                .filter(|t| weft_api::placement::tolerates(std::slice::from_ref(*t), taint))
                .collect();
            if matching.is_empty() {
                return Some(0.0);
            }
            // The longest a matching toleration allows; none without seconds.
            if matching.iter().any(|t| t.toleration_seconds.is_none()) {
                return None;
            }
            let secs_allowed = matching
                .iter()
                .filter_map(|t| t.toleration_seconds)
                .max()
                .unwrap_or(0)
                .max(0) as f64;
            let added = taint.time_added.as_ref().map_or(0.0, |t| secs(&t.0));
            Some(added + secs_allowed)
        })
        .reduce(f64::min)
}

/// Deletes a pod at once (its node will never stop it), marked
/// `DisruptionTarget` for `why` first, as kube's taint eviction and pod
/// garbage collector do.
async fn delete_now(ctx: &Ctx, pod: &Pod, why: Disruption) -> Result<bool, ApiError> {
    // A StatefulSet's pod has one identity that must not run twice: as
    // kube's taint eviction leaves it, it is only marked for deletion and
    // stays (Terminating) until its node confirms it stopped, the Node is
    // deleted, or someone forces it; the set makes it again only then.
    let at_most_one = why != DELETION_BY_POD_GC
        && pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.kind == "StatefulSet");
    if at_most_one && pod.metadata.deletion_timestamp.is_some() {
        return Ok(false);
    }
    ctx.reg
        .mark_disrupted(
            pod.namespace().as_deref().unwrap_or("default"),
            &pod.name_any(),
            pod.metadata.uid.as_deref(),
            why,
        )
        .await?;
    match ctx
        .reg
        .delete::<Pod>(
            pod.namespace().as_deref(),
            &pod.name_any(),
            (pod.metadata.uid.clone(), None),
            (!at_most_one).then_some(0),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(ApiError {
            code: 404 | 409, ..
        }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The taint eviction of a pod (a NoExecute taint it does not tolerate,
/// or no longer): deleted as [`delete_now`] says, with kube's Event.
async fn evict_for_taint(ctx: &Ctx, pod: &Pod) -> Result<(), ApiError> {
    if delete_now(ctx, pod, DELETION_BY_TAINT).await? {
        record_event(
            &ctx.reg,
            pod,
            "Normal",
            "TaintManagerEviction",
            &format!("Marking for deletion Pod {}", weft_api::meta::key_of(pod)),
            "taint-eviction-controller",
        )
        .await;
    }
    Ok(())
}

fn status_unknown(node: &Node) -> bool {
    weft_api::node::ready_condition(node).is_some_and(|c| c.status == "Unknown")
}

/// Sets the node's Ready condition to Unknown, as its agent no longer says.
async fn mark_status_unknown(ctx: &Ctx, name: &str) -> Result<(), ApiError> {
    let stamp = weft_api::meta::now_time();
    ctx.reg
        .modify::<Node>(None, name, Write::Status, |mut n| {
            let status = n.status.get_or_insert_with(Default::default);
            let heartbeat =
                weft_api::node::status_ready(status).and_then(|c| c.last_heartbeat_time.clone());
            let mut out: Vec<NodeCondition> = status
                .conditions
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.type_ != "Ready")
                .collect();
            out.push(NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusUnknown".into()),
                message: Some("Kubelet stopped posting node status.".into()),
                last_heartbeat_time: heartbeat,
                last_transition_time: Some(stamp.clone()),
            });
            status.conditions = Some(out);
            Ok(n)
        })
        .await?;
    Ok(())
}

async fn mark_not_ready(ctx: &Ctx, node: &Node) -> Result<(), ApiError> {
    let name = node.name_any();
    if !status_unknown(node) {
        mark_status_unknown(ctx, &name).await?;
    }
    let stamp = weft_api::meta::now_time();
    ctx.reg
        .modify::<Node>(None, &name, Write::Update, |mut n| {
            let taints = n
                .spec
                .get_or_insert_with(Default::default)
                .taints
                .get_or_insert_with(Vec::new);
            taints.retain(|t| t.key != UNREACHABLE);
            for effect in ["NoSchedule", "NoExecute"] {
                taints.push(Taint {
                    key: UNREACHABLE.into(),
                    effect: effect.into(),
                    time_added: Some(stamp.clone()),
                    value: None,
                });
            }
            Ok(n)
        })
        .await?;
    // As kube's MarkPodsNotReady: nobody vouches for its pods any more, so
    // they leave their Services' endpoints now, not at eviction.
    for pod in ctx.cache.store::<Pod>().on_node(&name) {
        let r = ctx
            .reg
            .modify::<Pod>(
                pod.namespace().as_deref(),
                &pod.name_any(),
                Write::Status,
                |mut p| {
                    let conditions = p
                        .status
                        .as_mut()
                        .and_then(|s| s.conditions.as_mut())
                        .into_iter()
                        .flatten();
                    for c in conditions.filter(|c| c.type_ == "Ready" && c.status != "False") {
                        c.status = "False".into();
                        c.reason = Some("NodeNotReady".into());
                        c.last_transition_time = Some(stamp.clone());
                    }
                    Ok(p)
                },
            )
            .await;
        if let Err(e) = r
            && e.code != 404
        {
            tracing::warn!(pod = %pod.name_any(), error = %e, "cannot mark the pod not ready");
        }
    }
    record_event(
        &ctx.reg,
        node,
        "Normal",
        "NodeNotReady",
        &format!("Node {name} status is now: NodeNotReady"),
        "node-controller",
    )
    .await;
    tracing::info!(node = %name, "node stopped renewing its lease: NotReady");
    Ok(())
}

async fn sweep(ctx: &Ctx, seen: &mut Observer) -> Result<(), ApiError> {
    let grace = ctx.cfg.node_grace;
    let now = now_secs();
    let pods = ctx.cache.store::<Pod>();
    let nodes = ctx.cache.store::<Node>().list(None);
    let known: HashSet<String> = nodes.iter().map(|n| n.name_any()).collect();
    seen.keep(&known);
    let silent: HashSet<String> = nodes
        .iter()
        .filter(|n| seen.silent_for(&n.name_any(), last_heartbeat(ctx, n), Instant::now()) > grace)
        .map(|n| n.name_any())
        .collect();
    let disrupted = disruption(silent.len(), nodes.len());
    if disrupted != seen.disrupted {
        seen.disrupted = disrupted;
        if disrupted {
            tracing::warn!(
                silent = silent.len(),
                nodes = nodes.len(),
                "node lifecycle: most nodes look silent at once; suspecting the controller or the network, not marking pods not Ready nor evicting until enough are back"
            );
        } else {
            tracing::info!("node lifecycle: enough nodes are back; handling silent nodes again");
        }
    }
    for node in &nodes {
        let name = node.name_any();
        let silent = silent.contains(&name);
        let tainted = unreachable_taint(node).is_some();
        if silent && disrupted {
            // Say what is known (nothing), and do nothing about it.
            if !status_unknown(node) {
                mark_status_unknown(ctx, &name).await?;
                tracing::info!(node = %name, "node silent during a disruption: Ready=Unknown, pods left alone");
            }
        } else if silent && !tainted {
            mark_not_ready(ctx, node).await?;
        } else if !silent && tainted && !seen.renewed(&name) {
            // Tainted before this controller looked (a restart, a resume)
            // and not heard from since: within its fresh grace period it is
            // neither judged alive nor are its pods evicted.
        } else if !silent && tainted {
            ctx.reg
                .modify::<Node>(None, &name, Write::Update, |mut n| {
                    if let Some(taints) = n.spec.as_mut().and_then(|s| s.taints.as_mut()) {
                        taints.retain(|t| t.key != UNREACHABLE);
                    }
                    Ok(n)
                })
                .await?;
            tracing::info!(node = %name, "node renews its lease again");
        } else if let Some(taint) = unreachable_taint(node).filter(|_| !disrupted) {
            let since = taint.time_added.as_ref().map_or(now, |t| secs(&t.0));
            for pod in pods.on_node(&name) {
                let Some(delay) = tolerated_for(&pod, ctx.cfg.eviction_delay) else {
                    continue;
                };
                if now - since < delay.as_secs_f64() {
                    continue;
                }
                evict_for_taint(ctx, &pod).await?;
            }
        }
    }
    // Other NoExecute taints (added by hand or by another controller), as
    // kube's taint-eviction controller: a pod that does not tolerate one
    // goes at once, one that tolerates it for tolerationSeconds goes that
    // long after the taint was added.
    for node in &nodes {
        let taints: Vec<&Taint> = node
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .filter(|t| t.effect == "NoExecute" && t.key != UNREACHABLE)
            .collect();
        if taints.is_empty() {
            continue;
        }
        for pod in pods.on_node(&node.name_any()) {
            if pod.metadata.deletion_timestamp.is_some() || weft_api::pod::is_finished(&pod) {
                continue;
            }
            let Some(due) = eviction_due(&pod, &taints) else {
                continue;
            };
            if now < due {
                continue;
            }
            evict_for_taint(ctx, &pod).await?;
        }
    }
    // Pods bound to a node that does not exist: nothing will ever run them.
    for node in pods.nodes().into_iter().filter(|n| !known.contains(n)) {
        for pod in pods.on_node(&node) {
            // Registered since the nodes were listed: not an orphan.
            if ctx.cache.store::<Node>().get(None, &node).is_some() {
                break;
            }
            let created = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(now, |t| secs(&t.0));
            if now - created < 5.0 {
                continue; // the node may be registering right now
            }
            delete_now(ctx, &pod, DELETION_BY_POD_GC).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_nodes_silent_at_once_is_a_disruption() {
        assert!(!disruption(0, 3));
        assert!(disruption(1, 1), "the only node");
        assert!(disruption(2, 2), "every node");
        assert!(!disruption(1, 2));
        assert!(!disruption(1, 3));
        assert!(!disruption(2, 3), "two of three: not more than two");
        assert!(disruption(3, 5));
        assert!(!disruption(3, 6), "50%");
        assert!(disruption(6, 10));
    }

    #[test]
    fn silence_counts_only_what_the_controller_could_see() {
        let mut seen = Observer::new(Duration::from_millis(200));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        seen.fresh_until = t0;
        // First observation: no silence yet, whatever the heartbeat says.
        assert_eq!(seen.silent_for("n1", 1.0, t0), Duration::ZERO);
        // The cache was fresh 5 s later and the heartbeat did not change.
        seen.fresh_until = at(5);
        assert_eq!(seen.silent_for("n1", 1.0, at(5)), Duration::from_secs(5));
        // A new heartbeat restarts it.
        assert_eq!(seen.silent_for("n1", 2.0, at(5)), Duration::ZERO);
        // A cache that falls behind stops the count where it was fresh.
        seen.fresh_until = at(7);
        assert_eq!(seen.silent_for("n1", 2.0, at(30)), Duration::from_secs(2));
    }

    #[test]
    fn times_with_fractions() {
        let t: Timestamp = "2023-11-14T22:13:20.250000Z".parse().expect("a time");
        assert!((secs(&t) - 1_700_000_000.25).abs() < 1e-6);
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [],
            "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 7}]}}))
        .expect("a pod");
        assert_eq!(
            tolerated_for(&pod, Duration::from_secs(30)),
            Some(Duration::from_secs(7))
        );
        let plain: Pod =
            serde_json::from_value(serde_json::json!({"spec": {"containers": []}})).expect("a pod");
        assert_eq!(
            tolerated_for(&plain, Duration::from_secs(30)),
            Some(Duration::from_secs(30))
        );
    }
}
