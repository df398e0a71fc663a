//! The pods bound to this node: one worker per pod (as kubelet's pod
//! workers) drives it from what the API says to what runs here, and reports
//! its status back.
//!
//! A worker creates the pod once its IP is assigned; syncs it every
//! `sync_interval` (probes, restarts, status); on a deletion with a grace
//! period stops it within that period and then deletes the API object for
//! good; and when the object is gone from the API (a forced delete, or a
//! delete while the agent was down) removes what is left on the node.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    Node,
    api::{describe, is_conflict, is_not_found, weft_now},
};
use crate::{
    informer::{Event, Informer},
    runtime::RuntimeError,
    sandbox::{PodSync, SandboxError},
};

/// Longest pause between attempts to create a pod that failed.
const MAX_CREATE_BACKOFF: Duration = Duration::from_secs(30);

struct Worker {
    tx: watch::Sender<Option<Pod>>,
}

/// Follows the pods bound to this node (from the agent's pod informer)
/// and keeps one worker per pod. Never returns.
pub(super) async fn run(node: Arc<Node>, pods: Informer<Pod>) -> Result<()> {
    let mut events = pods.subscribe();
    let creates = Arc::new(Semaphore::new(node.cfg.parallel_creates.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut listed_once = false;
    let mine = |p: &Pod| {
        p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node.cfg.node_name.as_str())
    };

    let spawn = |uid: &str, pod: Option<Pod>, workers: &mut HashMap<String, Worker>| {
        let (tx, rx) = watch::channel(pod);
        let w = PodWorker {
            node: node.clone(),
            uid: uid.to_string(),
            creates: creates.clone(),
            volume_error: Default::default(),
        };
        let done = done_tx.clone();
        let uid2 = uid.to_string();
        tokio::spawn(async move {
            w.supervise(rx).await;
            let _ = done.send(uid2);
        });
        workers.insert(uid.to_string(), Worker { tx });
    };
    // The pod, to its worker (started if need be).
    let give = |pod: &Pod, workers: &mut HashMap<String, Worker>| {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        match workers.get(&uid) {
            Some(w) => {
                w.tx.send_replace(Some(pod.clone()));
            }
            None => spawn(&uid, Some(pod.clone()), workers),
        }
    };

    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                // A worker finished (its pod is gone). If the pod came back
                // meanwhile under that UID, which cannot happen, the next
                // event starts a new worker.
                if workers.get(&uid).is_some_and(|w| w.tx.is_closed()) {
                    workers.remove(&uid);
                }
            }
            ev = events.next() => {
                let Some(ev) = ev else { anyhow::bail!("the pod informer ended") };
                match ev {
                    Event::Change { new: Some(pod), .. } if mine(&pod) => give(&pod, &mut workers),
                    Event::Change { old: Some(pod), new: None } => {
                        let Some(uid) = pod.metadata.uid.clone() else { continue };
                        if let Some(w) = workers.get(&uid) {
                            w.tx.send_replace(None);
                        }
                    }
                    Event::Change { .. } => {}
                    Event::Resync(all) => {
                        let mut seen = HashSet::new();
                        for pod in all.iter().filter(|p| mine(p)) {
                            if let Some(uid) = &pod.metadata.uid {
                                seen.insert(uid.clone());
                            }
                            give(pod, &mut workers);
                        }
                        // Workers of pods the API no longer has.
                        for (uid, w) in &workers {
                            if !seen.contains(uid) {
                                w.tx.send_replace(None);
                            }
                        }
                        // Pods on disk the API no longer has (deleted while
                        // the agent was down): removed by a worker each.
                        if !listed_once {
                            listed_once = true;
                            let records = node.sandbox.records().unwrap_or_default();
                            for r in records {
                                if !seen.contains(&r.uid) && !workers.contains_key(&r.uid) {
                                    tracing::info!(pod = %format!("{}/{}", r.namespace, r.name), "pod was deleted while the agent was away; removing it");
                                    spawn(&r.uid, None, &mut workers);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

struct PodWorker {
    node: Arc<Node>,
    uid: String,
    creates: Arc<Semaphore>,
    /// The last failure to refresh the pod's volumes, told once.
    volume_error: std::sync::Mutex<Option<String>>,
}

/// Syncs between two checks of a pod's emptyDir sizeLimits.
const EMPTY_DIR_CHECK_EVERY: u64 = 3;

/// Shortest time between two PIDLimitReached Events of a pod.
const PID_EVENT_EVERY: Duration = Duration::from_secs(300);

/// What a pod's worker has told of its refused forks.
#[derive(Default)]
struct PidLimitNotes {
    told: u64,
    at: Option<Instant>,
}

impl PidLimitNotes {
    /// The refusals to tell now, if an Event is due: some are new since
    /// the last one, and that was [`PID_EVENT_EVERY`] ago or never.
    fn due(&mut self, refused: u64, now: Instant) -> Option<u64> {
        if refused <= self.told
            || self
                .at
                .is_some_and(|t| now.duration_since(t) < PID_EVENT_EVERY)
        {
            return None;
        }
        let new = refused - self.told;
        self.told = refused;
        self.at = Some(now);
        Some(new)
    }
}

/// Where a pod that failed to be created stands.
struct Failure {
    count: u32,
    next: Instant,
}

impl PodWorker {
    /// Runs the worker, and runs it again after a back-off if it panics
    /// (a bug, or a resource the node ran out of), with the panic logged
    /// and told in an Event, so that no pod is left without a worker.
    async fn supervise(self, mut rx: watch::Receiver<Option<Pod>>) {
        use futures::FutureExt as _;
        let mut wait = Duration::from_secs(1);
        let mut panics: u32 = 0;
        loop {
            let run = std::panic::AssertUnwindSafe(self.run(&mut rx)).catch_unwind();
            let Err(panic) = run.await else { return };
            panics += 1;
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "unknown".into());
            tracing::error!(uid = %self.uid, panic = %what, retry_in = ?wait, "pod worker panicked; starting it again");
            let pod = rx.borrow().clone();
            // The first time and every tenth, not every retry.
            if let (Some(p), true) = (&pod, panics == 1 || panics.is_multiple_of(10)) {
                let msg = format!(
                    "the node's worker for this pod failed ({what}); retrying in {}s",
                    wait.as_secs()
                );
                self.event(p, "Warning", "FailedSync", &msg).await;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_CREATE_BACKOFF);
        }
    }

    async fn run(&self, rx: &mut watch::Receiver<Option<Pod>>) {
        let node = &self.node;
        // The pod's address once its sandbox exists (adopted after a restart).
        let record = node.sandbox.record(&self.uid);
        let mut created: Option<Ipv4Addr> = record.as_ref().map(|r| r.ip);
        // Finished, and its sandbox freed: nothing runs to sync.
        let mut released = record.is_some_and(|r| r.released);
        // When this worker first saw the pod finished in the API.
        let mut finished_since: Option<Instant> = None;
        let mut reported: Option<Value> = None;
        let mut failure: Option<Failure> = None;
        let mut pid_notes = PidLimitNotes::default();
        // Evicted by this worker: never created again (its status says
        // Failed once the informer has it).
        let mut evicted = false;
        let mut syncs: u64 = 0;
        loop {
            let pod = rx.borrow_and_update().clone();
            match pod {
                None => {
                    // Gone from the API: nothing waits for a grace period.
                    if created.is_none() || self.remove(None, Duration::ZERO).await {
                        return;
                    }
                }
                Some(p) if p.metadata.deletion_timestamp.is_some() => {
                    let grace = Duration::from_secs(
                        p.metadata
                            .deletion_grace_period_seconds
                            .unwrap_or(30)
                            .max(0)
                            .unsigned_abs(),
                    );
                    // Until the API has it (the controller may be down a
                    // while): a pod left Terminating would stay so.
                    if self.remove(Some(&p), grace).await {
                        created = None;
                        if self.confirm_deletion(&p).await {
                            return;
                        }
                    }
                }
                Some(_) if evicted => {}
                Some(p) if created.is_none() => {
                    // A finished pod is not run again; one without an IP
                    // waits for it; a failed one waits out its back-off.
                    let due = failure.as_ref().is_none_or(|f| Instant::now() >= f.next);
                    // On the node's network the pod's address is the node's.
                    let on_node = p.spec.as_ref().and_then(|s| s.host_network) == Some(true);
                    let ip = if on_node {
                        Some(node.node_ip)
                    } else {
                        pod_ip(&p)
                    };
                    if let (false, Some(ip), true) = (weft_api::pod::is_finished(&p), ip, due) {
                        match self.create(&p, ip).await {
                            Ok(()) => {
                                created = Some(ip);
                                failure = None;
                                // Report at once, then as it changes (each
                                // container's start is an Event then).
                                self.sync(&p, ip, &mut reported).await;
                            }
                            Err(e) => {
                                let count = failure.as_ref().map_or(1, |f| f.count + 1);
                                let wait =
                                    Duration::from_secs(1 << count.min(5)).min(MAX_CREATE_BACKOFF);
                                failure = Some(Failure {
                                    count,
                                    next: Instant::now() + wait,
                                });
                                self.report_failure(&p, &e, count, wait, &mut reported)
                                    .await;
                            }
                        }
                    }
                }
                Some(p) if created.is_some() && released => {
                    self.report_released(&p, &mut reported).await;
                }
                Some(p) if created.is_some() && weft_api::pod::is_finished(&p) => {
                    // The API has its final status. Its sidecars are being
                    // stopped: their end is reported first (a while at most:
                    // the release stops what still runs).
                    let since = *finished_since.get_or_insert_with(Instant::now);
                    let ip = created.unwrap_or(node.node_ip);
                    let running = self.sync(&p, ip, &mut reported).await;
                    if running && since.elapsed() < grace_of(&p) + Duration::from_secs(5) {
                        // Looked at again on the next sync.
                    } else {
                        // What the pod holds (address, namespace, cgroups,
                        // volumes) is freed now, not when it is deleted, as
                        // kubelet does; its logs stay.
                        match node.sandbox.release_finished(&self.uid, grace_of(&p)).await {
                            Ok(()) => {
                                released = true;
                                self.report_released(&p, &mut reported).await;
                            }
                            Err(e) => {
                                tracing::warn!(pod = %weft_api::meta::key_of(&p), error = %e, "cannot release the finished pod's sandbox yet; retrying");
                            }
                        }
                    }
                }
                Some(p) => {
                    if let Some(ip) = created {
                        self.sync(&p, ip, &mut reported).await;
                        self.pid_limit_events(&p, &mut pid_notes).await;
                        syncs += 1;
                        // emptyDir sizeLimits, every few syncs (it walks
                        // the volume), as kubelet's eviction manager does.
                        if syncs.is_multiple_of(EMPTY_DIR_CHECK_EVERY)
                            && let Some(why) = node.sandbox.empty_dir_over_limit(&p).await
                            && self
                                .evict(&p, "Evicted", &why, Duration::ZERO, &mut reported)
                                .await
                        {
                            created = None;
                            evicted = true;
                        }
                        // activeDeadlineSeconds, from the pod's start.
                        if past_deadline(&p)
                            && self
                                .evict(
                                    &p,
                                    "DeadlineExceeded",
                                    "Pod was active on the node longer than the specified deadline",
                                    grace_of(&p),
                                    &mut reported,
                                )
                                .await
                        {
                            created = None;
                            evicted = true;
                        }
                    }
                }
            }
            tokio::select! {
                r = rx.changed() => {
                    if r.is_err() {
                        // The dispatcher is gone: the agent is stopping.
                        return;
                    }
                }
                () = tokio::time::sleep(node.cfg.sync_interval) => {}
            }
        }
    }

    async fn create(&self, pod: &Pod, ip: Ipv4Addr) -> Result<(), SandboxError> {
        let _permit = self.creates.acquire().await.expect("semaphore open");
        let t = Instant::now();
        let r = self.node.sandbox.create_pod(pod, ip).await;
        match &r {
            Ok(_) => {
                tracing::info!(pod = %weft_api::meta::key_of(pod), %ip, ms = t.elapsed().as_millis() as u64, "pod started")
            }
            Err(e) => {
                tracing::warn!(pod = %weft_api::meta::key_of(pod), error = %e, "pod could not be started")
            }
        }
        r.map(drop)
    }

    /// An Event about the pod from this node.
    async fn event(&self, pod: &Pod, type_: &str, reason: &str, message: &str) {
        self.node
            .api
            .pod_event(pod, &self.node.cfg.node_name, type_, reason, message)
            .await;
    }

    /// Removes the pod from the node; false (and logged) when a step
    /// failed, so that the worker tries again.
    async fn remove(&self, pod: Option<&Pod>, grace: Duration) -> bool {
        let rec = self.node.sandbox.record(&self.uid);
        if let (Some(p), Some(_)) = (pod, &rec) {
            // One Event per container that runs, in kubelet's words.
            let running: Vec<String> = p
                .status
                .iter()
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .filter(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()))
                .map(|c| c.name.clone())
                .collect();
            for name in running {
                self.event(
                    p,
                    "Normal",
                    "Killing",
                    &format!("Stopping container {name}"),
                )
                .await;
            }
        }
        match self.node.sandbox.remove_pod(&self.uid, grace).await {
            Ok(()) => {
                // Nothing was here (a pod its finalizers still hold, seen
                // again after it was removed): nothing to say.
                if let Some(r) = rec {
                    let name = format!("{}/{}", r.namespace, r.name);
                    tracing::info!(uid = %self.uid, pod = %name, "pod removed from the node");
                }
                true
            }
            Err(e) => {
                tracing::warn!(uid = %self.uid, error = %e, "cannot remove the pod yet; retrying");
                false
            }
        }
    }

    /// Deletes the API object for good once nothing of it runs here (or
    /// leaves it to the finalizers that hold it); false when the API did
    /// not take it, to be tried again.
    async fn confirm_deletion(&self, pod: &Pod) -> bool {
        let api = self
            .node
            .api
            .namespaced::<Pod>(pod.metadata.namespace.as_deref().unwrap_or("default"));
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api
            .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
        {
            Ok(_) => true,
            // Gone, or the name is another pod's now (the uid
            // precondition failed): this one is gone either way.
            Err(e) if is_not_found(&e) || is_conflict(&e) => true,
            Err(e) => {
                tracing::warn!(pod = %weft_api::meta::key_of(pod), error = %describe(&e), "cannot finish the pod's deletion yet; retrying");
                false
            }
        }
    }

    /// A Warning Event when the pod's PID limit refused forks (its
    /// processes then fail to start new ones: a fork bomb, or a limit too
    /// low for the workload); at most one per [`PID_EVENT_EVERY`], so that
    /// a pod that keeps hitting its limit cannot fill the store with Events.
    async fn pid_limit_events(&self, pod: &Pod, notes: &mut PidLimitNotes) {
        let refused = self.node.sandbox.pids_refused(&self.uid);
        if let Some(new) = notes.due(refused, Instant::now()) {
            let limit = self
                .node
                .cfg
                .pod_max_pids
                .map_or_else(|| "the node's".to_string(), |l| l.to_string());
            self.event(
                pod,
                "Warning",
                "PIDLimitReached",
                &format!(
                    "the pod's PID limit ({limit}) refused {new} new processes or threads ({refused} in all)"
                ),
            )
            .await;
        }
    }

    /// Syncs the pod (probes, restarts) and reports its status if changed.
    /// Returns whether any of its containers (sidecars included) still
    /// runs (true when that could not be read).
    async fn sync(&self, pod: &Pod, ip: Ipv4Addr, reported: &mut Option<Value>) -> bool {
        let synced = match self.node.sandbox.sync_pod_all(&self.uid).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pod = %weft_api::meta::key_of(pod), error = %e, "pod sync failed");
                return true;
            }
        };
        let running = synced
            .init
            .iter()
            .chain(&synced.containers)
            .any(|c| c.state.as_ref().is_none_or(|s| s.terminated.is_none()));
        let all: Vec<ContainerStatus> = synced
            .init
            .iter()
            .chain(&synced.containers)
            .cloned()
            .collect();
        self.container_events(pod, &all, reported.as_ref()).await;
        self.refresh_volumes(pod).await;
        let status = pod_status(pod, &synced, Some(ip), self.node.node_ip);
        self.report(pod, status, reported).await;
        running
    }

    /// Evicts the pod as kubelet does when it breaks a local-storage limit:
    /// its containers are killed at once and its sandbox removed, and its
    /// status says Failed, Evicted, and why. Returns whether it is done.
    async fn evict(
        &self,
        pod: &Pod,
        reason: &str,
        why: &str,
        grace: Duration,
        reported: &mut Option<Value>,
    ) -> bool {
        tracing::warn!(pod = %weft_api::meta::key_of(pod), reason, why, "ending the pod");
        self.event(pod, "Warning", reason, why).await;
        if let Err(e) = self.node.sandbox.remove_pod(&self.uid, grace).await {
            tracing::warn!(pod = %weft_api::meta::key_of(pod), error = %e, "eviction: cannot remove the pod yet");
            return false;
        }
        let statuses: Vec<ContainerStatus> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    terminated: Some(k8s_openapi::api::core::v1::ContainerStateTerminated {
                        exit_code: 137,
                        reason: Some("Error".into()),
                        message: Some(why.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let mut status = pod_status(pod, &failed_sync(pod, statuses), None, self.node.node_ip);
        status["phase"] = json!("Failed");
        status["reason"] = json!(reason);
        status["message"] = json!(why);
        if reason == "Evicted"
            && let Some(conditions) = status["conditions"].as_array_mut()
        {
            // As kubelet's eviction manager: the pod was ended against its
            // will (a Job's pod failure policy may read it).
            conditions.push(json!({
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": why,
                "lastTransitionTime": weft_api::meta::now_time(),
            }));
        }
        self.report(pod, status, reported).await;
        true
    }

    /// Brings the pod's configMap, secret, downwardAPI and projected
    /// volumes up to date; a failure is logged and told in an Event once
    /// (FailedMount, as kubelet), until it changes.
    async fn refresh_volumes(&self, pod: &Pod) {
        let outcome = self.node.sandbox.refresh_volumes(pod).await;
        let key = weft_api::meta::key_of(pod);
        let failed = match outcome {
            Ok(done) => {
                if !done.is_empty() {
                    tracing::debug!(pod = %key, volumes = ?done, "volumes updated");
                }
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let changed = {
            let mut last = self.volume_error.lock().expect("lock");
            let changed = *last != failed;
            last.clone_from(&failed);
            changed
        };
        if let (true, Some(e)) = (changed, failed) {
            tracing::warn!(pod = %key, error = %e, "cannot update the pod's volumes");
            self.event(pod, "Warning", "FailedMount", &e).await;
        }
    }

    /// Events for what changed since the last report, as kubelet writes
    /// them: BackOff when a container enters CrashLoopBackOff, Unhealthy
    /// when a liveness probe had it killed, Failed (FailedMount,
    /// FailedPostStartHook) when it could not be started, once per new
    /// reason.
    async fn container_events(
        &self,
        pod: &Pod,
        statuses: &[ContainerStatus],
        last: Option<&Value>,
    ) {
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        // When a container's last run started, in whole seconds (as the
        // API keeps times): while it runs, once it has ended, or, waiting
        // to restart, its last run's.
        let run_started = |c: &ContainerStatus| {
            let st = c.state.as_ref();
            st.and_then(|s| s.running.as_ref()?.started_at.clone())
                .or_else(|| st.and_then(|s| s.terminated.as_ref()?.started_at.clone()))
                .or_else(|| {
                    c.last_state
                        .as_ref()
                        .and_then(|s| s.terminated.as_ref()?.started_at.clone())
                })
                .map(|t: Time| t.0.as_second())
        };
        // A run is new when neither the API (an agent that restarts does
        // not tell old starts again) nor this agent's last report shows it:
        // the starts they show, by container, read once per sync.
        let mut known: std::collections::HashMap<String, Vec<i64>> =
            std::collections::HashMap::new();
        let api = pod.status.iter().flat_map(|st| {
            st.init_container_statuses
                .iter()
                .flatten()
                .chain(st.container_statuses.iter().flatten())
                .cloned()
        });
        let ours = last.into_iter().flat_map(|l| {
            ["initContainerStatuses", "containerStatuses"]
                .iter()
                .filter_map(|k| l[*k].as_array())
                .flatten()
                .filter_map(|c| serde_json::from_value::<ContainerStatus>(c.clone()).ok())
                .collect::<Vec<_>>()
        });
        for c in api.chain(ours) {
            if let Some(t) = run_started(&c) {
                known.entry(c.name.clone()).or_default().push(t);
            }
        }
        for s in statuses {
            if let Some(started) = run_started(s)
                && !known.get(&s.name).is_some_and(|k| k.contains(&started))
            {
                self.event(
                    pod,
                    "Normal",
                    "Started",
                    &format!("Started container {}", s.name),
                )
                .await;
            }
            let prev = last.and_then(|l| {
                l["containerStatuses"]
                    .as_array()?
                    .iter()
                    .find(|c| c["name"] == s.name.as_str())
                    .cloned()
            });
            let waiting = s.state.as_ref().and_then(|st| st.waiting.as_ref());
            let backoff = waiting.is_some_and(|w| w.reason.as_deref() == Some("CrashLoopBackOff"));
            let was_backoff = prev
                .as_ref()
                .is_some_and(|p| p["state"]["waiting"]["reason"] == "CrashLoopBackOff");
            let failed = waiting.and_then(|w| {
                let message = w.message.as_deref().filter(|m| !m.is_empty())?;
                let reason = w.reason.as_deref()?;
                let seen = prev.as_ref().is_some_and(|p| {
                    p["state"]["waiting"]["reason"] == reason
                        && p["state"]["waiting"]["message"] == message
                });
                if seen {
                    return None;
                }
                match reason {
                    "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
                    | "ErrImagePull" => Some(("Failed", format!("Error: {message}"))),
                    "PostStartHookError" => Some(("FailedPostStartHook", message.to_string())),
                    "ContainerCreating" => Some(("FailedMount", message.to_string())),
                    _ => None,
                }
            });
            if let Some((reason, message)) = failed {
                self.event(pod, "Warning", reason, &message).await;
            }
            if backoff && !was_backoff {
                self.event(
                    pod,
                    "Warning",
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {} in pod {pod_name}",
                        s.name
                    ),
                )
                .await;
            }
            let restarted = prev
                .as_ref()
                .and_then(|p| p["restartCount"].as_i64())
                .is_some_and(|n| i64::from(s.restart_count) > n);
            let last_end = s.last_state.as_ref().and_then(|l| l.terminated.as_ref());
            if restarted && last_end.is_some_and(|t| t.reason.as_deref() == Some("Unhealthy")) {
                let why = last_end.and_then(|t| t.message.clone()).unwrap_or_default();
                self.event(
                    pod,
                    "Warning",
                    "Unhealthy",
                    &format!("{why}; container {} was restarted", s.name),
                )
                .await;
            }
        }
    }

    async fn report_failure(
        &self,
        pod: &Pod,
        e: &SandboxError,
        count: u32,
        wait: Duration,
        reported: &mut Option<Value>,
    ) {
        let (reason, event_reason) = classify(e, count);
        // kubelet's words: "Error: ..." for a failed start. The attempt is
        // left out, so that the Events of one cause are one Event.
        let message = if event_reason == "Failed" {
            format!("Error: {e}")
        } else {
            e.to_string()
        };
        tracing::debug!(pod = %weft_api::meta::key_of(pod), attempt = count, next_s = wait.as_secs(), "creation failed");
        let spec = pod.spec.clone().unwrap_or_default();
        let statuses: Vec<ContainerStatus> = spec
            .containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    waiting: Some(k8s_openapi::api::core::v1::ContainerStateWaiting {
                        reason: Some(reason.to_string()),
                        message: Some(e.to_string()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let status = pod_status(pod, &failed_sync(pod, statuses), None, self.node.node_ip);
        self.report(pod, status, reported).await;
        // An Event on the first failure and then every fifth, not every retry.
        if count == 1 || count.is_multiple_of(5) {
            self.event(pod, "Warning", event_reason, &message).await;
        }
    }

    /// Says that the finished pod's sandbox is gone: its
    /// PodReadyToStartContainers condition False (kubelet's signal that
    /// the sandbox was torn down), on which the controller frees its
    /// address for another pod.
    async fn report_released(&self, pod: &Pod, reported: &mut Option<Value>) {
        let mut scratch = Pod {
            status: pod.status.clone(),
            ..Pod::default()
        };
        weft_api::pod::set_condition(
            &mut scratch,
            weft_api::pod::SANDBOX_CONDITION,
            "False",
            None,
            None,
        );
        let cond = scratch.status.and_then(|s| s.conditions).and_then(|cs| {
            cs.into_iter()
                .find(|c| c.type_ == weft_api::pod::SANDBOX_CONDITION)
        });
        let already = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == weft_api::pod::SANDBOX_CONDITION && c.status == "False")
            });
        if let (Some(cond), false) = (cond, already) {
            self.report(pod, json!({"conditions": [cond]}), reported)
                .await;
        }
    }

    async fn report(&self, pod: &Pod, status: Value, reported: &mut Option<Value>) {
        if reported.as_ref() == Some(&status) {
            return;
        }
        let api = self
            .node
            .api
            .namespaced::<Pod>(pod.metadata.namespace.as_deref().unwrap_or("default"));
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Strategic(json!({"status": status})),
            )
            .await
        {
            Ok(_) => *reported = Some(status),
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                tracing::warn!(pod = %weft_api::meta::key_of(pod), error = %describe(&e), "cannot report pod status")
            }
        }
    }
}

/// What a failed creation shows: the container's waiting reason and the
/// Event's reason, as kubelet words them.
fn classify(e: &SandboxError, count: u32) -> (&'static str, &'static str) {
    match e {
        SandboxError::Container { source, .. } => match source.as_ref() {
            RuntimeError::Image(_) if count > 1 => ("ImagePullBackOff", "Failed"),
            RuntimeError::Image(_) => ("ErrImagePull", "Failed"),
            RuntimeError::Bundle(_) => ("CreateContainerConfigError", "Failed"),
            _ if count > 1 => ("CrashLoopBackOff", "BackOff"),
            _ => ("RunContainerError", "Failed"),
        },
        SandboxError::InvalidPod { .. } | SandboxError::Config { .. } => {
            ("CreateContainerConfigError", "Failed")
        }
        SandboxError::Mount { .. } => ("ContainerCreating", "FailedMount"),
        SandboxError::Hook { .. } => ("PostStartHookError", "FailedPostStartHook"),
        _ => ("ContainerCreating", "FailedCreatePodSandBox"),
    }
}

/// Whether the pod has run longer than its `activeDeadlineSeconds`.
fn past_deadline(pod: &Pod) -> bool {
    let Some(deadline) = pod.spec.as_ref().and_then(|s| s.active_deadline_seconds) else {
        return false;
    };
    let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.as_ref()) else {
        return false;
    };
    let ran = k8s_openapi::jiff::Timestamp::now().duration_since(start.0);
    ran.as_secs() >= deadline
}

/// The pod's termination grace period.
fn grace_of(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0)
            .unsigned_abs(),
    )
}

/// What a pod that could not be created (or was evicted) reports: its
/// containers' `statuses`, initialized unless it has init containers.
fn failed_sync(pod: &Pod, statuses: Vec<ContainerStatus>) -> PodSync {
    let has_init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|v| !v.is_empty());
    PodSync {
        init: Vec::new(),
        containers: statuses,
        initialized: !has_init,
    }
}

fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_ref()?.parse().ok()
}

/// The pod's status from its containers' statuses, keeping what did not
/// change (transition times, start times) as the API has it, so that an
/// agent restart writes nothing new for a pod that runs on undisturbed.
fn pod_status(pod: &Pod, synced: &PodSync, ip: Option<Ipv4Addr>, node_ip: Ipv4Addr) -> Value {
    let statuses = &synced.containers;
    let old = pod.status.clone().unwrap_or_default();
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into());
    let mut statuses = statuses.to_vec();
    // Start times: the API's, while it is the same run of the container.
    for s in &mut statuses {
        let prev = old
            .container_statuses
            .as_ref()
            .and_then(|cs| cs.iter().find(|c| c.name == s.name));
        if let (Some(prev), Some(running)) =
            (prev, s.state.as_mut().and_then(|st| st.running.as_mut()))
            && prev.container_id == s.container_id
            && prev.restart_count == s.restart_count
            && let Some(was) = prev.state.as_ref().and_then(|st| st.running.as_ref())
        {
            running.started_at = was.started_at.clone();
        }
    }
    let running = statuses
        .iter()
        .filter(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()))
        .count();
    let terminated: Vec<i32> = statuses
        .iter()
        .filter_map(|s| s.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
        .collect();
    let waiting_fresh = statuses.iter().any(|s| {
        s.state.as_ref().is_some_and(|st| st.waiting.is_some())
            && s.last_state.as_ref().is_none_or(|l| l.terminated.is_none())
    });
    // An init container that failed for good fails the pod.
    let init_failed = synced.init.iter().any(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0)
    }) && policy == "Never";
    // A pod whose containers have ended is still Running while its
    // sidecars are being stopped, as kubelet has it.
    let sidecar_running = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| crate::sandbox::is_sidecar(c))
        .any(|c| {
            synced.init.iter().any(|s| {
                s.name == c.name && s.state.as_ref().is_some_and(|st| st.running.is_some())
            })
        });
    let phase = if !synced.initialized {
        if init_failed { "Failed" } else { "Pending" }
    } else if !statuses.is_empty() && terminated.len() == statuses.len() && sidecar_running {
        "Running"
    } else if !statuses.is_empty() && terminated.len() == statuses.len() {
        if terminated.iter().all(|c| *c == 0) {
            "Succeeded"
        } else if policy == "Never" {
            "Failed"
        } else {
            "Running"
        }
    } else if waiting_fresh && running == 0 {
        "Pending"
    } else {
        "Running"
    };
    // Sidecars count for readiness, as in Kubernetes.
    let sidecars = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| crate::sandbox::is_sidecar(c))
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>();
    let containers_ready = synced.initialized
        && !statuses.is_empty()
        && statuses.iter().all(|s| s.ready)
        && synced
            .init
            .iter()
            .filter(|s| sidecars.contains(&s.name.as_str()))
            .all(|s| s.ready);
    // Ready also waits for every readiness gate's condition to be True
    // (set by whoever owns it), as kubelet does.
    let gates_open = pod
        .spec
        .iter()
        .flat_map(|s| s.readiness_gates.iter().flatten())
        .all(|g| {
            old.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == g.condition_type && c.status == "True")
        });
    let all_ready = containers_ready;
    let now = weft_now();
    // The conditions the agent owns, by the API's one rule: a transition
    // time moves only with the status.
    // A pod that succeeded is not ready because it completed (kubelet's
    // PodCompleted).
    let not_ready = (!all_ready).then_some(if phase == "Succeeded" {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    });
    let mut scratch = Pod {
        status: Some(old.clone()),
        ..Pod::default()
    };
    let status_of = |ok: bool| if ok { "True" } else { "False" };
    for (t, ok, reason) in [
        (weft_api::pod::SANDBOX_CONDITION, ip.is_some(), None),
        (
            "Initialized",
            synced.initialized,
            (!synced.initialized).then_some("ContainersNotInitialized"),
        ),
        ("ContainersReady", all_ready, not_ready),
        (
            "Ready",
            all_ready && gates_open,
            if all_ready && !gates_open {
                Some("ReadinessGatesNotReady")
            } else {
                not_ready
            },
        ),
    ] {
        weft_api::pod::set_condition(&mut scratch, t, status_of(ok), reason, None);
    }
    // Only the conditions the agent owns: the status goes as a strategic
    // merge patch (conditions merged by type), so others' conditions (a
    // readiness gate's, PodScheduled) are never written back stale.
    let conditions: Vec<_> = scratch
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .filter(|c| {
            matches!(
                c.type_.as_str(),
                "PodReadyToStartContainers" | "Initialized" | "ContainersReady" | "Ready"
            )
        })
        .collect();
    let start_time = old
        .start_time
        .as_ref()
        .map_or_else(|| json!(now), |t| json!(t));
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": node_ip.to_string(),
        "hostIPs": [{"ip": node_ip.to_string()}],
        "startTime": start_time,
        "containerStatuses": statuses,
    });
    if !synced.init.is_empty() {
        status["initContainerStatuses"] = json!(synced.init);
    }
    if let Some(ip) = ip {
        status["podIP"] = json!(ip.to_string());
        status["podIPs"] = json!([{"ip": ip.to_string()}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_limit_events_are_bounded_in_time() {
        let t0 = Instant::now();
        let mut n = PidLimitNotes::default();
        assert_eq!(n.due(0, t0), None, "nothing refused");
        assert_eq!(n.due(5, t0), Some(5), "the first refusals are told at once");
        // A pod that keeps hitting its limit: silent until the period ends,
        // then everything since the last Event in one.
        assert_eq!(n.due(900, t0 + Duration::from_secs(1)), None);
        assert_eq!(
            n.due(5000, t0 + PID_EVENT_EVERY - Duration::from_secs(1)),
            None
        );
        assert_eq!(n.due(5000, t0 + PID_EVENT_EVERY), Some(4995));
        assert_eq!(n.due(5000, t0 + 3 * PID_EVENT_EVERY), None, "nothing new");
        assert_eq!(n.due(5001, t0 + 3 * PID_EVENT_EVERY), Some(1));
    }
}
