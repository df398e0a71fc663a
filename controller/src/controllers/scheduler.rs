//! The scheduler: binds each pending pod to a node. Filters: the node is
//! Ready and schedulable, its taints are tolerated, its labels satisfy the
//! pod's nodeSelector, and its allocatable CPU, memory and pod count minus
//! what is bound there cover the pod's requests. Scores: least allocated,
//! and spreading pods of one owner (a ReplicaSet) across nodes. A pod that
//! fits nowhere stays Pending with a PodScheduled=False condition and a
//! FailedScheduling Event saying why.
//!
//! As in kube-scheduler's queue, an unschedulable pod waits aside and is
//! tried again only after an event that could make it fit (a node added or
//! changed in what matters to scheduling, a pod leaving a node), and then
//! no sooner than its back-off (1 s, doubling per failed attempt up to
//! 10 s); every 30 s all of them are tried again regardless. The cost of an
//! event is O(1): it is noted, and the waiting pods are looked at once per
//! second at most, not once per event.
//!
//! Like kube-scheduler it keeps its own account of what each node holds, and
//! counts a pod on its node as soon as it decides ("assumes"), before the
//! binding lands, so that decisions in flight do not overcommit a node.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use k8s_openapi::api::core::v1::{NodeSelectorTerm, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;

use crate::cache::Cache;
use crate::registry::storage::{LOCAL_DRIVER, SELECTED_NODE, claim_request};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, Taint};
use kube::ResourceExt as _;
use tokio::sync::{Notify, Semaphore};
use weft_api::ApiError;
use weft_api::placement;

use super::{Ctx, follow, record_event, split_key};
use crate::cache::controller_uid;
use crate::registry::Write;

/// Bindings in flight at once (they are store writes; more in flight means
/// larger group commits).
const BINDS_IN_FLIGHT: usize = 64;
/// Workers writing why pods are unschedulable.
const REPORTERS: usize = 8;
const DEFAULT_MAX_PODS: i64 = 110;
/// An unschedulable pod's first back-off; it doubles per failed attempt.
const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How often every unschedulable pod is tried again, events or not (kube's
/// is five minutes).
const FLUSH_ALL: Duration = Duration::from_secs(30);

/// A pod that fit nowhere.
#[derive(Debug, Clone)]
struct Waiting {
    why: String,
    attempts: u32,
    failed_at: Instant,
}

impl Waiting {
    fn backoff(&self) -> Duration {
        let doublings = self.attempts.saturating_sub(1).min(8);
        (BACKOFF_INITIAL * 2u32.pow(doublings)).min(BACKOFF_MAX)
    }
}

/// What a pod asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Request {
    pub milli_cpu: i64,
    pub memory: i64,
}

fn quantity(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> i64 {
    // Milli-units for CPU; bytes (rounded up) for memory. The API refuses
    // a negative quantity; a huge one counts as the most there can be, as
    // Kubernetes' Quantity::Value saturates.
    clamp(q.and_then(|q| weft_api::quantity::parse(&q.0)).unwrap_or(0))
}

fn clamp(q: i128) -> i64 {
    i64::try_from(q.max(0)).unwrap_or(i64::MAX)
}

/// The pod's requests, as Kubernetes counts them: the sum over containers,
/// at least the largest init container; a limit without a request counts as
/// the request.
pub fn pod_request(spec: Option<&PodSpec>) -> Request {
    let one = |c: &Container| {
        let get = |r: &str| {
            let res = c.resources.as_ref();
            match res.and_then(|x| x.requests.as_ref()).and_then(|m| m.get(r)) {
                Some(req) => quantity(Some(req)),
                None => quantity(res.and_then(|x| x.limits.as_ref()).and_then(|m| m.get(r))),
            }
        };
        (get("cpu"), get("memory"))
    };
    let mut cpu = 0i64;
    let mut mem = 0i64;
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        let (c, m) = one(c);
        cpu = cpu.saturating_add(c);
        mem = mem.saturating_add(m);
    }
    for c in spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default()
    {
        let (c, m) = one(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    Request {
        milli_cpu: cpu,
        memory: mem / 1000,
    }
}

#[derive(Debug, Default, Clone)]
struct NodeUse {
    milli_cpu: i64,
    memory: i64,
    pods: i64,
    /// Pods per owner uid (for spreading).
    owners: HashMap<String, i64>,
}

/// What the scheduler needs of a Node, parsed once per change of it rather
/// than once per pod and node.
#[derive(Debug, Clone)]
struct NodeInfo {
    name: String,
    ready: bool,
    unschedulable: bool,
    taints: Vec<Taint>,
    labels: BTreeMap<String, String>,
    milli_cpu: i64,
    memory: i64,
    max_pods: i64,
}

impl NodeInfo {
    fn from(node: &Node) -> Self {
        let spec = node.spec.as_ref();
        Self {
            name: node.name_any(),
            ready: weft_api::node::is_ready(node),
            unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
            taints: spec
                .and_then(|s| s.taints.as_ref())
                .map(|ts| {
                    ts.iter()
                        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            labels: node.labels().clone(),
            milli_cpu: allocatable(node, "cpu").unwrap_or(i64::MAX / 4),
            memory: allocatable(node, "memory")
                .map(|m| m / 1000)
                .unwrap_or(i64::MAX / 4),
            max_pods: allocatable(node, "pods")
                .map(|p| p / 1000)
                .unwrap_or(DEFAULT_MAX_PODS),
        }
    }
}

#[derive(Default)]
struct State {
    /// The nodes, by name.
    infos: BTreeMap<String, NodeInfo>,
    /// What each node holds.
    nodes: HashMap<String, NodeUse>,
    /// Where each counted pod is, and what it was counted as.
    counted: HashMap<String, (String, Request, Option<String>)>,
    /// Pods waiting, in arrival order.
    pending: VecDeque<String>,
    queued: HashSet<String>,
    /// Pods that fit nowhere, set aside.
    unschedulable: HashMap<String, Waiting>,
    /// When an event last happened that could make a waiting pod fit.
    last_event: Option<Instant>,
}

impl State {
    fn uncount(&mut self, pod: &str) {
        if let Some((node, req, owner)) = self.counted.remove(pod)
            && let Some(u) = self.nodes.get_mut(&node)
        {
            u.milli_cpu = u.milli_cpu.saturating_sub(req.milli_cpu);
            u.memory = u.memory.saturating_sub(req.memory);
            u.pods -= 1;
            if let Some(o) = owner
                && let Some(n) = u.owners.get_mut(&o)
            {
                *n -= 1;
                if *n <= 0 {
                    u.owners.remove(&o);
                }
            }
        }
    }

    fn count(&mut self, pod: &str, node: &str, req: Request, owner: Option<String>) {
        self.uncount(pod);
        let u = self.nodes.entry(node.to_string()).or_default();
        u.milli_cpu = u.milli_cpu.saturating_add(req.milli_cpu);
        u.memory = u.memory.saturating_add(req.memory);
        u.pods += 1;
        if let Some(o) = &owner {
            *u.owners.entry(o.clone()).or_default() += 1;
        }
        self.counted
            .insert(pod.to_string(), (node.to_string(), req, owner));
    }

    fn enqueue(&mut self, pod: String) {
        if self.queued.insert(pod.clone()) {
            self.pending.push_back(pod);
        }
    }

    /// Notes an event that could make a waiting pod fit (O(1): the pods
    /// are moved by [`State::flush`]).
    fn relevant_event(&mut self) {
        self.last_event = Some(Instant::now());
    }

    /// Sets a pod aside that fit nowhere; whether its reason is new.
    fn set_aside(&mut self, key: &str, why: &str) -> bool {
        let now = Instant::now();
        match self.unschedulable.get_mut(key) {
            Some(w) => {
                let new = w.why != why;
                w.why = why.to_string();
                w.attempts = w.attempts.saturating_add(1);
                w.failed_at = now;
                new
            }
            None => {
                self.unschedulable.insert(
                    key.to_string(),
                    Waiting {
                        why: why.to_string(),
                        attempts: 1,
                        failed_at: now,
                    },
                );
                true
            }
        }
    }

    /// Moves back to the queue the waiting pods that an event since their
    /// failure may have made fit and whose back-off is over (all of them
    /// with `all`); how many.
    fn flush(&mut self, now: Instant, all: bool) -> usize {
        let last_event = self.last_event;
        let ready: Vec<String> = self
            .unschedulable
            .iter()
            .filter(|(_, w)| {
                all || (last_event.is_some_and(|e| e > w.failed_at)
                    && now >= w.failed_at + w.backoff())
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &ready {
            // Its attempts stay counted: failing again backs off longer.
            self.enqueue(key.clone());
        }
        ready.len()
    }
}

fn wants_scheduling(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|s| s == "default-scheduler")
        && pod.metadata.deletion_timestamp.is_none()
        && !weft_api::pod::is_finished(pod)
}

fn counts_on_node(pod: &Pod) -> Option<&str> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    if weft_api::pod::is_finished(pod) {
        return None;
    }
    Some(node)
}

fn owner_uid(pod: &Pod) -> Option<String> {
    controller_uid(pod).map(String::from)
}

/// Whether a Node change can change where pods fit.
fn node_changed(old: &Node, new: &Node) -> bool {
    // Conditions by type and status: a heartbeat time changes nothing.
    let conditions = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|cs| {
                cs.iter()
                    .map(|c| (c.type_.clone(), c.status.clone()))
                    .collect::<Vec<_>>()
            })
    };
    let allocatable = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.clone());
    old.spec != new.spec
        || conditions(old) != conditions(new)
        || old.metadata.labels != new.metadata.labels
        || allocatable(old) != allocatable(new)
}

pub fn start(ctx: Ctx) {
    let state = Arc::new(Mutex::new(State::default()));
    let wake = Arc::new(Notify::new());
    // Everything again: on start and whenever a follower fell behind.
    let resync = {
        let (st, wk, cache) = (state.clone(), wake.clone(), ctx.cache.clone());
        Arc::new(move || {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            *s = State::default();
            for node in cache.store::<Node>().list(None) {
                let info = NodeInfo::from(&node);
                s.infos.insert(info.name.clone(), info);
            }
            for pod in cache.store::<Pod>().list(None) {
                let key = weft_api::meta::key_of(&*pod);
                if let Some(node) = counts_on_node(&pod) {
                    s.count(&key, node, pod_request(pod.spec.as_ref()), owner_uid(&pod));
                }
                if wants_scheduling(&pod) {
                    s.enqueue(key);
                }
            }
            drop(s);
            wk.notify_one();
        })
    };
    {
        let (st, wk, rs) = (state.clone(), wake.clone(), resync.clone());
        follow::<Pod>(
            &ctx.cache,
            move |c| {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                let key = c.key.clone();
                // A pod leaving a node frees room there: the waiting may fit.
                let was_counted = s.counted.contains_key(&key);
                match &c.new {
                    Some(pod) => {
                        if let Some(node) = counts_on_node(pod) {
                            s.count(&key, node, pod_request(pod.spec.as_ref()), owner_uid(pod));
                        } else {
                            s.uncount(&key);
                            if was_counted {
                                s.relevant_event();
                            }
                        }
                        if wants_scheduling(pod) {
                            if !s.unschedulable.contains_key(&key) {
                                s.enqueue(key);
                            }
                        } else {
                            s.unschedulable.remove(&key);
                        }
                    }
                    None => {
                        s.uncount(&key);
                        s.unschedulable.remove(&key);
                        if was_counted {
                            s.relevant_event();
                        }
                    }
                }
                drop(s);
                wk.notify_one();
            },
            move || rs(),
        );
    }
    {
        let (st, wk, rs) = (state.clone(), wake.clone(), resync.clone());
        let first = std::sync::atomic::AtomicBool::new(true);
        follow::<Node>(
            &ctx.cache,
            move |c| {
                let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
                match &c.new {
                    Some(n) => {
                        let info = NodeInfo::from(n);
                        s.infos.insert(info.name.clone(), info);
                    }
                    None => {
                        s.infos.remove(&c.key);
                    }
                }
                let changed = match (&c.old, &c.new) {
                    (Some(o), Some(n)) => node_changed(o, n),
                    _ => true,
                };
                if changed {
                    s.relevant_event();
                }
                drop(s);
                wk.notify_one();
            },
            // The pod follower's first resync reads the nodes too: this
            // one only runs after falling behind.
            move || {
                if !first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    rs();
                }
            },
        );
    }
    // A claim or volume that changes may make a waiting pod fit (its claim
    // made or bound, as kube-scheduler's volume binding plugin hears).
    wake_on::<PersistentVolumeClaim>(&ctx, &state, &wake);
    wake_on::<PersistentVolume>(&ctx, &state, &wake);
    // Once a second, the waiting pods whose back-off is over and that an
    // event may have made fit go back to the queue; every FLUSH_ALL, all.
    {
        let (st, wk) = (state.clone(), wake.clone());
        tokio::spawn(async move {
            let mut last_all = Instant::now();
            loop {
                tokio::time::sleep(BACKOFF_INITIAL).await;
                let now = Instant::now();
                let all = now - last_all >= FLUSH_ALL;
                if all {
                    last_all = now;
                }
                let moved = st.lock().unwrap_or_else(|e| e.into_inner()).flush(now, all);
                if moved > 0 {
                    wk.notify_one();
                }
            }
        });
    }
    tokio::spawn(schedule_loop(ctx, state, wake));
}

async fn schedule_loop(ctx: Ctx, state: Arc<Mutex<State>>, wake: Arc<Notify>) {
    let binds = Arc::new(Semaphore::new(BINDS_IN_FLIGHT));
    let ctx = Arc::new(ctx);
    // Why a pod fits nowhere is written (its condition, an Event) by
    // workers of their own: the loop goes on deciding meanwhile.
    let (reports, queue) = tokio::sync::mpsc::unbounded_channel::<(Arc<Pod>, String)>();
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    for _ in 0..REPORTERS {
        let (ctx, queue) = (ctx.clone(), queue.clone());
        tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some((pod, why)) = next else { return };
                report_unschedulable(&ctx, &pod, &why).await;
            }
        });
    }
    loop {
        let next = state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .pop_front();
        let Some(key) = next else {
            wake.notified().await;
            continue;
        };
        state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queued
            .remove(&key);
        let Some(pod) = ctx.cache.store::<Pod>().get_key(&key) else {
            continue;
        };
        if !wants_scheduling(&pod) {
            continue;
        }
        // Its claims first: a missing or unbound-immediate one keeps it
        // aside; a bound one's volume holds it to the volume's nodes.
        let needs = match volume_needs(&ctx.cache, &pod) {
            Ok(n) => n,
            Err(why) => {
                let first = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_aside(&key, &why);
                if first {
                    let _ = reports.send((pod.clone(), why));
                }
                continue;
            }
        };
        let decision = {
            let s = state.lock().unwrap_or_else(|e| e.into_inner());
            choose_with(&s, &pod, &needs)
        };
        match decision {
            Ok(node) => {
                let req = pod_request(pod.spec.as_ref());
                state.lock().unwrap_or_else(|e| e.into_inner()).count(
                    &key,
                    &node,
                    req,
                    owner_uid(&pod),
                );
                let permit = binds.clone().acquire_owned().await.expect("never closed");
                let (ctx, state, wake, key) =
                    (ctx.clone(), state.clone(), wake.clone(), key.clone());
                let pod = pod.clone();
                tokio::spawn(async move {
                    let (ns, name) = split_key(&key);
                    // WaitForFirstConsumer claims: their volumes are made
                    // on the chosen node (the volume controller sees the
                    // annotation), before the pod is bound.
                    for claim in &needs.to_place {
                        let r = ctx
                            .reg
                            .modify::<PersistentVolumeClaim>(ns, claim, Write::Update, |mut c| {
                                let a = c.metadata.annotations.get_or_insert_with(Default::default);
                                match a.get(SELECTED_NODE) {
                                    // Another pod of the claim placed it
                                    // meanwhile: this one goes there too.
                                    Some(other) if *other != node => {
                                        return Err(ApiError::conflict(
                                            "persistentvolumeclaims",
                                            "",
                                            claim,
                                            format!("its volume is to be on node {other}"),
                                        ));
                                    }
                                    Some(_) => {}
                                    None => {
                                        a.insert(SELECTED_NODE.to_string(), node.clone());
                                    }
                                }
                                Ok(c)
                            })
                            .await;
                        if let Err(e) = r {
                            // Not bound: it waits aside and goes back to the
                            // queue on the claim's change (its placement).
                            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                            st.uncount(&key);
                            st.set_aside(
                                &key,
                                &format!("persistentvolumeclaim \"{claim}\": {}", e.message),
                            );
                            drop(st);
                            drop(permit);
                            wake.notify_one();
                            return;
                        }
                    }
                    let result = ctx.reg.bind(ns.unwrap_or("default"), name, &node).await;
                    drop(permit);
                    match result {
                        Ok(_) => {}
                        Err(e) => {
                            {
                                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                                s.uncount(&key);
                                if e.code != 404 && e.code != 409 {
                                    tracing::warn!(pod = %key, node = %node, "binding failed: {e}");
                                    s.set_aside(&key, &e.to_string());
                                }
                            }
                            wake.notify_one();
                            if e.code != 404 && e.code != 409 {
                                record_event(
                                    &ctx.reg,
                                    &*pod,
                                    "Warning",
                                    "FailedScheduling",
                                    &format!("Binding rejected: {e}"),
                                    "default-scheduler",
                                )
                                .await;
                            }
                        }
                    }
                });
            }
            Err(why) => {
                let first = state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_aside(&key, &why);
                if first {
                    let _ = reports.send((pod.clone(), why));
                }
            }
        }
    }
}

async fn report_unschedulable(ctx: &Ctx, pod: &Pod, why: &str) {
    let already = weft_api::pod::condition(pod, "PodScheduled")
        .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(why));
    if already {
        return;
    }
    let name = pod.name_any();
    let result = ctx
        .reg
        .modify::<Pod>(pod.namespace().as_deref(), &name, Write::Status, |mut p| {
            weft_api::pod::set_condition(
                &mut p,
                "PodScheduled",
                "False",
                Some("Unschedulable"),
                Some(why),
            );
            Ok(p)
        })
        .await;
    if let Err(e) = result {
        if e.code != 404 {
            tracing::warn!(pod = %name, "could not report why it is unschedulable: {e}");
        }
        return;
    }
    record_event(
        &ctx.reg,
        pod,
        "Warning",
        "FailedScheduling",
        why,
        "default-scheduler",
    )
    .await;
}

/// Whether the pod tolerates `node.kubernetes.io/unschedulable:NoSchedule`.
fn tolerates_cordon(pod: &Pod) -> bool {
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Taint::default()
    };
    weft_api::placement::tolerates(
        pod.spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default(),
        &taint,
    )
}

fn allocatable(node: &Node, what: &str) -> Option<i64> {
    let status = node.status.as_ref()?;
    let q = status
        .allocatable
        .as_ref()
        .and_then(|a| a.get(what))
        .or_else(|| status.capacity.as_ref().and_then(|c| c.get(what)))?;
    weft_api::quantity::parse(&q.0).map(clamp)
}

/// Sends the waiting pods back to the queue whenever an object of kind `K`
/// changes.
fn wake_on<K: crate::registry::Kind>(ctx: &Ctx, state: &Arc<Mutex<State>>, wake: &Arc<Notify>) {
    let (st, wk) = (state.clone(), wake.clone());
    follow::<K>(
        &ctx.cache,
        move |_| {
            st.lock()
                .unwrap_or_else(|e| e.into_inner())
                .relevant_event();
            wk.notify_one();
        },
        || {},
    );
}

/// What a pod's claims ask of its node.
#[derive(Default)]
struct VolumeNeeds {
    /// The node selector terms of each bound volume (one term of each must
    /// match).
    terms: Vec<Vec<NodeSelectorTerm>>,
    /// WaitForFirstConsumer claims still to be given a node.
    to_place: Vec<String>,
    /// Bytes of those to be made by the local provisioner on the chosen
    /// node.
    local_bytes: i128,
    /// With `local_bytes`: each node's room for new local volumes (nodes
    /// that do not say are left out, and not held to it).
    room: BTreeMap<String, i128>,
}

/// The constraints of the pod's PersistentVolumeClaims, or why it cannot be
/// placed yet (kube-scheduler's words).
fn volume_needs(cache: &Cache, pod: &Pod) -> Result<VolumeNeeds, String> {
    let mut needs = VolumeNeeds::default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let claims = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    for name in claims {
        let Some(pvc) = cache.store::<PersistentVolumeClaim>().get(Some(ns), &name) else {
            return Err(format!("persistentvolumeclaim \"{name}\" not found"));
        };
        if pvc.metadata.deletion_timestamp.is_some() {
            return Err(format!("persistentvolumeclaim \"{name}\" is being deleted"));
        }
        let spec = pvc.spec.clone().unwrap_or_default();
        match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            Some(pv_name) => {
                let Some(pv) = cache.store::<PersistentVolume>().get(None, pv_name) else {
                    return Err(format!("persistentvolume \"{pv_name}\" not found"));
                };
                if let Some(terms) = pv
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_affinity.as_ref())
                    .and_then(|a| a.required.as_ref())
                {
                    needs.terms.push(terms.node_selector_terms.clone());
                }
            }
            None => {
                let class = spec
                    .storage_class_name
                    .as_deref()
                    .and_then(|c| cache.store::<StorageClass>().get(None, c));
                let wait = class.as_ref().is_some_and(|c| {
                    c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer")
                });
                if !wait {
                    return Err("pod has unbound immediate PersistentVolumeClaims".into());
                }
                let placed = pvc
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SELECTED_NODE));
                match placed {
                    // Placed before: the pod goes where its volume will be.
                    Some(node) => needs.terms.push(vec![NodeSelectorTerm {
                        match_fields: Some(vec![
                            k8s_openapi::api::core::v1::NodeSelectorRequirement {
                                key: "metadata.name".into(),
                                operator: "In".into(),
                                values: Some(vec![node.clone()]),
                            },
                        ]),
                        ..Default::default()
                    }]),
                    None => {
                        if class
                            .as_ref()
                            .is_some_and(|c| c.provisioner == LOCAL_DRIVER)
                        {
                            needs.local_bytes += claim_request(&pvc).unwrap_or(0);
                        }
                        needs.to_place.push(name);
                    }
                }
            }
        }
    }
    if needs.local_bytes > 0 {
        for node in cache.store::<Node>().list(None) {
            if let Some(room) = super::volumes::local_room(cache, &node) {
                needs.room.insert(node.name_any(), room);
            }
        }
    }
    Ok(needs)
}

/// The best node for `pod`, or why none fits (in kube-scheduler's words).
#[cfg(test)]
fn choose(s: &State, pod: &Pod) -> Result<String, String> {
    choose_with(s, pod, &VolumeNeeds::default())
}

/// As [`choose`], on the nodes that satisfy one term of each of the
/// pod's bound volumes and have room for the local volumes to be made.
fn choose_with(s: &State, pod: &Pod, needs: &VolumeNeeds) -> Result<String, String> {
    let volumes = &needs.terms;
    let req = pod_request(pod.spec.as_ref());
    let owner = owner_uid(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let empty = NodeUse::default();
    let mut feasible: Vec<(&NodeInfo, &NodeUse)> = Vec::new();
    for info in s.infos.values() {
        if !info.ready {
            *reasons.entry("node(s) were not ready".into()).or_default() += 1;
            continue;
        }
        // Cordoned: only pods that tolerate the unschedulable taint
        // (daemon pods) still go there, as kube's NodeUnschedulable plugin.
        if info.unschedulable && !tolerates_cordon(pod) {
            *reasons
                .entry("node(s) were unschedulable".into())
                .or_default() += 1;
            continue;
        }
        let untolerated = placement::untolerated(pod.spec.as_ref(), &info.taints);
        if let Some(t) = untolerated {
            let text = format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or_default()
            );
            *reasons.entry(text).or_default() += 1;
            continue;
        }
        let affinity_ok = placement::affinity_allows(pod.spec.as_ref(), &info.name, &info.labels);
        let volumes_ok = volumes.iter().all(|terms| {
            terms
                .iter()
                .any(|t| placement::term_matches(t, &info.name, &info.labels))
        });
        if !volumes_ok {
            *reasons
                .entry("node(s) had volume node affinity conflict".into())
                .or_default() += 1;
            continue;
        }
        if needs.local_bytes > 0
            && needs
                .room
                .get(&info.name)
                .is_some_and(|room| *room < needs.local_bytes)
        {
            *reasons
                .entry("node(s) did not have enough free storage".into())
                .or_default() += 1;
            continue;
        }
        if !affinity_ok || !placement::selector_allows(pod.spec.as_ref(), &info.labels) {
            *reasons
                .entry("node(s) didn't match Pod's node affinity/selector".into())
                .or_default() += 1;
            continue;
        }
        let used = s.nodes.get(&info.name).unwrap_or(&empty);
        let mut fits = true;
        if used.pods + 1 > info.max_pods {
            *reasons.entry("Too many pods".into()).or_default() += 1;
            fits = false;
        }
        if req.milli_cpu > 0 && used.milli_cpu.saturating_add(req.milli_cpu) > info.milli_cpu {
            *reasons.entry("Insufficient cpu".into()).or_default() += 1;
            fits = false;
        }
        if req.memory > 0 && used.memory.saturating_add(req.memory) > info.memory {
            *reasons.entry("Insufficient memory".into()).or_default() += 1;
            fits = false;
        }
        if fits {
            feasible.push((info, used));
        }
    }
    if s.infos.is_empty() {
        return Err("no nodes available to schedule pods".into());
    }
    if feasible.is_empty() {
        let parts: Vec<String> = reasons
            .into_iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        let detail = if parts.is_empty() {
            String::new()
        } else {
            format!(" {}", parts.join(", "))
        };
        return Err(format!("0/{} nodes are available:{detail}.", s.infos.len()));
    }
    let same = |u: &NodeUse| {
        owner
            .as_ref()
            .and_then(|o| u.owners.get(o))
            .copied()
            .unwrap_or(0)
    };
    let max_same = feasible.iter().map(|(_, u)| same(u)).max().unwrap_or(0);
    let free = |total: i64, used: i64, want: i64| -> i64 {
        if total <= 0 || total >= i64::MAX / 8 {
            return 100;
        }
        let left = i128::from(total) - i128::from(used) - i128::from(want);
        (left.max(0) * 100 / i128::from(total)) as i64
    };
    let mut best: Option<(i64, i64, &str)> = None;
    for (info, used) in &feasible {
        // Least allocated: CPU and memory, or pod count when nothing is requested.
        let least = if req.milli_cpu == 0 && req.memory == 0 {
            free(info.max_pods, used.pods, 1)
        } else {
            (free(info.milli_cpu, used.milli_cpu, req.milli_cpu)
                + free(info.memory, used.memory, req.memory))
                / 2
        };
        let spread = if max_same == 0 {
            100
        } else {
            100 - (same(used) * 100) / (max_same + 1)
        };
        let score = least + 2 * spread;
        // Ties go to the node with fewer pods, then by name, so equal nodes fill evenly.
        let better = match best {
            None => true,
            Some((b, bpods, bname)) => {
                score > b || (score == b && (used.pods, info.name.as_str()) < (bpods, bname))
            }
        };
        if better {
            best = Some((score, used.pods, info.name.as_str()));
        }
    }
    Ok(best
        .map(|(_, _, n)| n.to_string())
        .expect("feasible is not empty"))
}

/// Errors the scheduler cannot act on are reported, not retried forever.
pub fn is_permanent(e: &ApiError) -> bool {
    e.code == 422 || e.code == 403
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("a pod")
    }

    #[test]
    fn waiting_pods_move_only_after_a_relevant_event_and_their_backoff() {
        let mut s = State::default();
        assert!(s.set_aside("ns/a", "no room"));
        assert!(!s.set_aside("ns/a", "no room"), "same reason: not new");
        let t = s.unschedulable["ns/a"].failed_at;
        // No event since the failure: nothing moves, however late.
        assert_eq!(s.flush(t + Duration::from_secs(60), false), 0);
        s.last_event = Some(t + Duration::from_millis(10));
        // Two attempts: a 2 s back-off.
        assert_eq!(s.flush(t + Duration::from_secs(1), false), 0);
        assert_eq!(s.flush(t + Duration::from_secs(2), false), 1);
        assert_eq!(s.pending.len(), 1);
        // Back-off doubles per attempt, up to 10 s.
        let w = |attempts| Waiting {
            why: String::new(),
            attempts,
            failed_at: t,
        };
        assert_eq!(w(1).backoff(), Duration::from_secs(1));
        assert_eq!(w(4).backoff(), Duration::from_secs(8));
        assert_eq!(w(40).backoff(), Duration::from_secs(10));
        // `all` moves everything.
        s.set_aside("ns/b", "no room");
        s.pending.clear();
        s.queued.clear();
        assert_eq!(s.flush(Instant::now(), true), 2);
    }

    #[test]
    fn requests_sum_containers_and_respect_init() {
        let p = pod(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "200m"}}}
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "1"}}}]
        }}));
        assert_eq!(
            pod_request(p.spec.as_ref()),
            Request {
                milli_cpu: 1000,
                memory: 64 * 1024 * 1024
            }
        );
    }

    /// Regression: a quantity beyond i64 wrapped negative and the fit's
    /// arithmetic overflowed, which killed the scheduler for every pod.
    #[test]
    fn huge_requests_saturate_and_do_not_fit() {
        let huge = "99999999999999999999999Gi";
        let p = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"limits": {"cpu": huge, "memory": huge}}},
            {"name": "b", "resources": {"requests": {"cpu": huge, "memory": huge}}}
        ]}}));
        let req = pod_request(p.spec.as_ref());
        assert_eq!(req.milli_cpu, i64::MAX);
        assert!(req.memory > 0);
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "allocatable": {"cpu": huge, "memory": "64Gi", "pods": "110"}}
        }))
        .expect("a node");
        let mut s = State::default();
        s.infos.insert("n1".into(), NodeInfo::from(&node));
        s.count(
            "other",
            "n1",
            Request {
                milli_cpu: 1000,
                memory: 1,
            },
            None,
        );
        let why = choose(&s, &p).expect_err("nothing holds it");
        assert!(why.contains("Insufficient"), "{why}");
        let small = pod(json!({"spec": {"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "100m", "memory": "1Mi"}}}
        ]}}));
        assert_eq!(choose(&s, &small), Ok("n1".to_string()));
    }

    #[test]
    fn local_volumes_to_make_need_room_on_the_node() {
        let node = |name: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
            }))
            .expect("a node")
        };
        let mut s = State::default();
        for n in ["full", "roomy", "silent"] {
            s.infos.insert(n.into(), NodeInfo::from(&node(n)));
        }
        let p = pod(json!({"spec": {"containers": [{"name": "a"}]}}));
        let gib = 1i128 << 30;
        let mut needs = VolumeNeeds {
            local_bytes: 2 * gib,
            room: [("full".to_string(), gib), ("roomy".to_string(), 10 * gib)].into(),
            ..Default::default()
        };
        s.infos.remove("silent");
        assert_eq!(choose_with(&s, &p, &needs), Ok("roomy".to_string()));
        needs.room.insert("roomy".into(), gib);
        let why = choose_with(&s, &p, &needs).expect_err("no room anywhere");
        assert!(
            why.contains("2 node(s) did not have enough free storage"),
            "{why}"
        );
        // A node that does not report its storage is not refused for it.
        s.infos
            .insert("silent".into(), NodeInfo::from(&node("silent")));
        assert_eq!(choose_with(&s, &p, &needs), Ok("silent".to_string()));
        // Nothing to make: room does not matter.
        needs.local_bytes = 0;
        s.infos.remove("silent");
        assert!(choose_with(&s, &p, &needs).is_ok());
    }
}
