//! A running pod's life, as kubelet's pod workers and prober drive it: one
//! sync reads every container's state, runs the liveness and readiness
//! probes that are due, kills a container whose liveness probe keeps
//! failing, and restarts exited containers per `restartPolicy` with
//! exponential back-off.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, Probe,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::{PodRecord, Sandbox, SandboxError, cgroups::oom_killed, pod_name};

/// What one sync of a pod reports.
#[derive(Debug, Clone, Default)]
pub struct PodSync {
    /// The init containers' statuses (sidecars among them), in order.
    pub init: Vec<ContainerStatus>,
    /// The containers' statuses.
    pub containers: Vec<ContainerStatus>,
    /// Whether every init container has completed.
    pub initialized: bool,
}

pub use weft_api::pod::is_sidecar;

fn named(c: &Container, id: &str, state: ContainerState) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        container_id: Some(format!("runc://{id}")),
        state: Some(state),
        ..Default::default()
    }
}

/// The last `max` bytes of a file as text; with `cri`, the text of its CRI
/// log lines (`time stream tag text`).
fn read_end(path: &std::path::Path, max: u64, cri: bool) -> Option<String> {
    use std::io::{Read as _, Seek as _};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    if !cri && len > max {
        // kubelet reads the first 4 KiB of a message, not its end.
        let mut buf = vec![0; usize::try_from(max).ok()?];
        f.read_exact(&mut buf).ok()?;
        return Some(String::from_utf8_lossy(&buf).into_owned());
    }
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(max)))
        .ok()?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    if !cri {
        return Some(text);
    }
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .collect();
    Some(lines.join("\n"))
}

fn completed() -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 0,
            reason: Some("Completed".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Longest restart back-off (Kubernetes: 5 minutes).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A container that ran this long before exiting restarts its back-off.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Per-container observations between syncs.
#[derive(Clone, Debug)]
pub(super) struct Observed {
    started: Instant,
    started_at: Timestamp,
    next_liveness: Instant,
    liveness_failures: i32,
    /// Whether the startup probe has passed (or there is none).
    pub(super) started_ok: bool,
    next_startup: Instant,
    startup_failures: i32,
    next_readiness: Instant,
    readiness_successes: i32,
    readiness_failures: i32,
    ready: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// How its previous run ended (the status's `lastState`).
    last: Option<ContainerStateTerminated>,
    /// When it was first seen exited.
    finished_at: Option<Timestamp>,
    /// Set when the node killed it (liveness), so the exit is explained.
    killed_for: Option<String>,
    /// Why its last start failed (waiting reason, message), while it waits
    /// to be tried again.
    start_error: Option<(String, String)>,
}

impl Observed {
    fn new(base: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            started_at: now_timestamp(),
            next_liveness: now,
            liveness_failures: 0,
            started_ok: false,
            next_startup: now,
            startup_failures: 0,
            next_readiness: now,
            readiness_successes: 0,
            readiness_failures: 0,
            ready: false,
            restart_at: None,
            backoff: base,
            last: None,
            finished_at: None,
            killed_for: None,
            start_error: None,
        }
    }
}

/// The waiting reason kubelet shows for a container whose start failed so.
fn start_failure(e: &SandboxError) -> &'static str {
    match e {
        SandboxError::Container { source, .. } => match source.as_ref() {
            crate::runtime::RuntimeError::Image(_) => "ErrImagePull",
            crate::runtime::RuntimeError::Bundle(_) => "CreateContainerConfigError",
            _ => "RunContainerError",
        },
        SandboxError::Config { .. } | SandboxError::InvalidPod { .. } => {
            "CreateContainerConfigError"
        }
        SandboxError::Hook { .. } => "PostStartHookError",
        SandboxError::Mount { .. } => "ContainerCreating",
        _ => "RunContainerError",
    }
}

pub(super) fn now_timestamp() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanosecond(i128::try_from(d.as_nanos()).unwrap_or(0))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(super) fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: (!message.is_empty()).then(|| message.to_string()),
        }),
        ..Default::default()
    }
}

impl Sandbox {
    /// One reconcile step for a pod: reads every container's state, runs
    /// the liveness and readiness probes that are due, kills a container
    /// whose liveness probe failed `failureThreshold` times, and restarts
    /// exited containers per `restartPolicy` with exponential back-off.
    /// Returns the containers' statuses as the API reports them. The agent
    /// calls this about once a second per pod; it never blocks for long.
    ///
    /// # Errors
    /// When the pod is unknown or a restart fails.
    pub async fn sync_pod(&self, uid: &str) -> Result<Vec<ContainerStatus>, SandboxError> {
        Ok(self.sync_pod_all(uid).await?.containers)
    }

    /// As [`Sandbox::sync_pod`], with the init containers: the next of
    /// them is started once the one before has completed (a sidecar, an
    /// init container with `restartPolicy: Always`, once it runs), the
    /// containers once every init container has completed; a failed init
    /// container is restarted with back-off unless the pod's policy is
    /// Never. Sidecars restart whenever they exit, and are stopped once
    /// every container has finished for good.
    ///
    /// # Errors
    /// When the pod is unknown or a restart fails.
    pub async fn sync_pod_all(&self, uid: &str) -> Result<PodSync, SandboxError> {
        let (mut rec, pod) = self.load_pod(uid)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let grace = Duration::from_secs(
            u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
        );
        let mut out = PodSync::default();
        let inits = spec.init_containers.clone().unwrap_or_default();
        // Whether an init container before this one has not completed.
        let mut blocked = false;
        for (c, (_, id)) in inits.iter().zip(rec.init_containers.clone()) {
            let sidecar = is_sidecar(c);
            if blocked {
                out.init.push(named(c, &id, waiting("PodInitializing", "")));
                continue;
            }
            let id2 = id.clone();
            let exists = self
                .runtime_call(&pod_name(&rec), &c.name, move |rt| rt.state(&id2))
                .await
                .is_ok();
            if !exists {
                if rec.initialized && !sidecar {
                    // Completed, and gone since (an agent restart that
                    // lost its runtime state): it does not run again.
                    out.init.push(named(c, &id, completed()));
                    continue;
                }
                // Its turn.
                if let Err(e) = self.start_container(&rec, &pod, c, &id).await {
                    let reason = match &e {
                        SandboxError::Config { .. } => "CreateContainerConfigError",
                        _ => "RunContainerError",
                    };
                    out.init
                        .push(named(c, &id, waiting(reason, &e.to_string())));
                    blocked = true;
                    continue;
                }
            }
            let init_policy = if sidecar {
                "Always"
            } else if policy == "Never" {
                "Never"
            } else {
                "OnFailure"
            };
            let st = self
                .sync_container(&mut rec, &pod, c, &id, init_policy, grace)
                .await?;
            let state = st.state.as_ref();
            let done = if sidecar {
                state.is_some_and(|s| s.running.is_some()) && st.started == Some(true)
            } else {
                state
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            };
            if !done && !rec.initialized {
                blocked = true;
            }
            out.init.push(st);
        }
        if !rec.initialized && !blocked {
            for (c, (_, id)) in spec.containers.iter().zip(rec.containers.clone()) {
                let id2 = id.clone();
                let exists = self
                    .runtime_call(&pod_name(&rec), &c.name, move |rt| rt.state(&id2))
                    .await
                    .is_ok();
                if exists {
                    continue;
                }
                // A container that cannot start (a missing key, a subPath
                // that leads out of its volume) says why in its status and
                // is tried again with back-off by its sync, as a restart is.
                if let Err(e) = self.start_container(&rec, &pod, c, &id).await {
                    tracing::info!(pod = %pod_name(&rec), container = %c.name, error = %e, "start failed; backing off");
                    let mut obs = self.observed(&id);
                    obs.restart_at = Some(Instant::now() + obs.backoff);
                    obs.start_error = Some((start_failure(&e).to_string(), e.to_string()));
                    self.observed
                        .lock()
                        .expect("observed lock")
                        .insert(id.clone(), obs);
                }
            }
            rec.initialized = true;
            self.save(&rec)?;
        }
        out.initialized = rec.initialized;
        if !rec.initialized {
            out.containers = spec
                .containers
                .iter()
                .zip(&rec.containers)
                .map(|(c, (_, id))| named(c, id, waiting("PodInitializing", "")))
                .collect();
            return Ok(out);
        }
        for (c, (_, id)) in spec.containers.iter().zip(rec.containers.clone()) {
            let st = self
                .sync_container(&mut rec, &pod, c, &id, &policy, grace)
                .await?;
            out.containers.push(st);
        }
        // Every container finished for good: the sidecars go too, last
        // first, as kubelet ends a Job's pod.
        let finished = !out.containers.is_empty()
            && out
                .containers
                .iter()
                .all(|s| s.state.as_ref().is_some_and(|st| st.terminated.is_some()));
        if finished {
            // Stopped in the background (a sidecar may take its whole grace
            // period), so that the containers' end is reported at once,
            // as kubelet reports it; the next syncs see the sidecars go.
            let mut stopping = Vec::new();
            for (c, (_, id)) in inits.iter().zip(rec.init_containers.clone()).rev() {
                if !is_sidecar(c) {
                    continue;
                }
                // Once, and again if it still runs well past its grace
                // period (a stop that failed).
                let mut done = self.done_sidecars.lock().expect("lock");
                let due = done
                    .get(&id)
                    .is_none_or(|at| at.elapsed() > grace + Duration::from_secs(5));
                if due {
                    done.insert(id.clone(), Instant::now());
                    stopping.push(id);
                }
            }
            if !stopping.is_empty() {
                let rt = self.runtime.clone();
                let pod = pod_name(&rec);
                tokio::task::spawn_blocking(move || {
                    for id in stopping {
                        let r = rt.state(&id).and_then(|st| {
                            if matches!(st.status, crate::runtime::Status::Running) {
                                rt.stop(&id, grace)?;
                            }
                            Ok(())
                        });
                        if let Err(e) = r {
                            tracing::info!(pod = %pod, container = %id, error = %e, "cannot stop the sidecar; the pod's release will");
                        }
                    }
                });
            }
        }
        Ok(out)
    }

    /// One container's state, probes and restart per `policy` (Always,
    /// OnFailure, Never), as the API reports it.
    async fn sync_container(
        &self,
        rec: &mut PodRecord,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        policy: &str,
        grace: Duration,
    ) -> Result<ContainerStatus, SandboxError> {
        // A sidecar stopped because its pod finished is not restarted.
        let policy = if self.done_sidecars.lock().expect("lock").contains_key(id) {
            "Never"
        } else {
            policy
        };
        let id2 = id.to_string();
        let state = match self
            .runtime_call(&pod_name(rec), &c.name, move |rt| rt.state(&id2))
            .await
        {
            Ok(s) => s,
            // Gone (a start that failed after its delete): started again
            // once its back-off is over, saying why it waits meanwhile.
            Err(SandboxError::Container { source, .. })
                if matches!(*source, crate::runtime::RuntimeError::NotFound(_)) =>
            {
                let mut obs = self.observed(id);
                let restarts = rec.restarts.get(&c.name).copied().unwrap_or(0);
                let mut status = ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    restart_count: restarts,
                    ..Default::default()
                };
                let now = Instant::now();
                if obs.restart_at.is_none_or(|due| now >= due) {
                    self.try_start(rec, pod, c, id, &mut obs, &mut status)
                        .await?;
                } else {
                    let (reason, message) = obs
                        .start_error
                        .clone()
                        .unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
                    status.state = Some(waiting(&reason, &message));
                }
                self.observed
                    .lock()
                    .expect("observed lock")
                    .insert(id.to_string(), obs);
                return Ok(status);
            }
            Err(e) => return Err(e),
        };
        let mut obs = self.observed(id);
        let restarts = rec.restarts.get(&c.name).copied().unwrap_or(0);
        let mut status = ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            container_id: Some(format!("runc://{id}")),
            restart_count: restarts,
            ..Default::default()
        };
        match state.status {
            crate::runtime::Status::Running => {
                self.probe(rec, c, id, &mut obs, grace).await;
                status.ready = obs.ready;
                status.started = Some(obs.started_ok);
                status.state = Some(ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(Time(obs.started_at)),
                    }),
                    ..Default::default()
                });
            }
            crate::runtime::Status::Created => {
                status.state = Some(waiting("ContainerCreating", ""));
            }
            crate::runtime::Status::Exited(code) => {
                let cgroup = self.container_cgroup(&rec.uid, &c.name);
                let reason = obs.killed_for.clone().map_or_else(
                    || {
                        if code == 0 {
                            "Completed".to_string()
                        } else if oom_killed(&cgroup) {
                            "OOMKilled".to_string()
                        } else {
                            "Error".to_string()
                        }
                    },
                    |_| "Unhealthy".to_string(),
                );
                // The container's own last words first (its termination
                // message), then why the node killed it.
                let message = self
                    .termination_message(rec, c, code)
                    .or_else(|| obs.killed_for.clone())
                    .unwrap_or_default();
                let again = policy == "Always" || (policy == "OnFailure" && code != 0);
                let finished = *obs.finished_at.get_or_insert_with(now_timestamp);
                let ended = ContainerStateTerminated {
                    exit_code: code,
                    reason: Some(reason),
                    message: (!message.is_empty()).then_some(message),
                    started_at: Some(Time(obs.started_at)),
                    finished_at: Some(Time(finished)),
                    container_id: Some(format!("runc://{id}")),
                    ..Default::default()
                };
                if !again {
                    status.state = Some(ContainerState {
                        terminated: Some(ended),
                        ..Default::default()
                    });
                } else {
                    let now = Instant::now();
                    let due = *obs.restart_at.get_or_insert_with(|| {
                        if obs.started.elapsed() >= BACKOFF_RESET {
                            obs.backoff = self.cfg.restart_backoff;
                        }
                        now + obs.backoff
                    });
                    obs.last = Some(ended);
                    if now >= due {
                        let id2 = id.to_string();
                        self.runtime_call(&pod_name(rec), &c.name, move |rt| rt.delete(&id2))
                            .await?;
                        self.try_start(rec, pod, c, id, &mut obs, &mut status)
                            .await?;
                    } else {
                        let left = due.saturating_duration_since(now);
                        status.state = Some(waiting(
                            "CrashLoopBackOff",
                            &format!(
                                "back-off {}s restarting failed container {}",
                                left.as_secs() + 1,
                                c.name
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(ended) = &obs.last {
            status.last_state = Some(ContainerState {
                terminated: Some(ended.clone()),
                ..Default::default()
            });
        }
        self.observed
            .lock()
            .expect("observed lock")
            .insert(id.to_string(), obs);
        Ok(status)
    }

    /// Starts container `c` again (its runtime container is gone): the
    /// restart is counted and saved first (so this run logs to `<n>.log`,
    /// and a failed start still counts), the back-off doubles; a start that
    /// fails leaves it waiting, with kubelet's reason, for the next try.
    async fn try_start(
        &self,
        rec: &mut PodRecord,
        pod: &Pod,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        obs: &mut Observed,
        status: &mut ContainerStatus,
    ) -> Result<(), SandboxError> {
        // A run that never started (its configuration could not be made,
        // a subPath was refused: the shim, which makes the run's log, was
        // never reached) is no restart: it is tried again under the same
        // number, and the restart count does not move, as kubelet's.
        let current = rec.restarts.get(&c.name).copied().unwrap_or(0);
        let ran = self.log_path(&rec.uid, &c.name, current).exists();
        let n = if ran { current + 1 } else { current };
        rec.restarts.insert(c.name.clone(), n);
        self.save(rec)?;
        status.restart_count = n;
        let next = (obs.backoff * 2).min(MAX_BACKOFF);
        let last = obs.last.take();
        match self.start_container(rec, pod, c, id).await {
            Ok(()) => {
                *obs = Observed::new(self.cfg.restart_backoff);
                obs.backoff = next;
                obs.last = last;
                status.state = Some(waiting("ContainerCreating", ""));
            }
            Err(e) => {
                let reason = start_failure(&e);
                tracing::info!(pod = %pod_name(rec), container = %c.name, error = %e, "restart failed; backing off");
                // A postStart failure leaves a stopped container: gone, so
                // that the next try starts it afresh.
                let id2 = id.to_string();
                let _ = self
                    .runtime_call(&pod_name(rec), &c.name, move |rt| {
                        if rt.state(&id2).is_ok() {
                            rt.delete(&id2)?;
                        }
                        Ok(())
                    })
                    .await;
                obs.backoff = next;
                obs.restart_at = Some(Instant::now() + next);
                obs.last = last;
                obs.start_error = Some((reason.to_string(), e.to_string()));
                status.state = Some(waiting(reason, &e.to_string()));
            }
        }
        Ok(())
    }

    /// What container `c` left at its `terminationMessagePath` this run
    /// (at most 4 KiB, as kubelet reads), or, with the policy
    /// FallbackToLogsOnError and a failure, the end of its log (80 lines,
    /// 2 KiB at most).
    fn termination_message(&self, rec: &PodRecord, c: &Container, code: i32) -> Option<String> {
        let run = rec.restarts.get(&c.name).copied().unwrap_or(0);
        let own = read_end(&self.termination_path(&rec.uid, &c.name, run), 4096, false)
            .filter(|m| !m.is_empty());
        if own.is_some() {
            return own;
        }
        if code != 0 && c.termination_message_policy.as_deref() == Some("FallbackToLogsOnError") {
            let log = read_end(&self.log_path(&rec.uid, &c.name, run), 64 * 1024, true)?;
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            let start = tail.len().saturating_sub(2048);
            let start = (start..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(0);
            return Some(tail[start..].to_string()).filter(|m| !m.is_empty());
        }
        None
    }

    pub(super) fn observed(&self, id: &str) -> Observed {
        self.observed
            .lock()
            .expect("observed lock")
            .get(id)
            .cloned()
            .unwrap_or_else(|| Observed::new(self.cfg.restart_backoff))
    }

    /// Runs the container's due probes and updates `obs`; kills the
    /// container when liveness (or startup) fails past its threshold. The
    /// kill runs on its own (SIGTERM, SIGKILL at the end of the grace
    /// period): the pod's sync goes on meanwhile, so that a deletion of
    /// the pod starts at once, not after that grace period.
    pub(super) async fn probe(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        obs: &mut Observed,
        grace: Duration,
    ) {
        // Being killed for a failed probe: no probe runs until it is gone
        // (and restarted, with fresh observations).
        if obs.killed_for.is_some() {
            obs.ready = false;
            return;
        }
        let now = Instant::now();
        let run = |p: &Probe| {
            let p = p.clone();
            self.check_in(rec, c, id, move |t, rt| crate::probe::run(&p, t, rt))
        };
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        // The startup probe first: until it passes, no other probe runs;
        // failing it `failureThreshold` times kills the container.
        match &c.startup_probe {
            None => obs.started_ok = true,
            Some(p) if !obs.started_ok => {
                let start = obs.started + secs(p.initial_delay_seconds, 0);
                if now >= start && now >= obs.next_startup {
                    obs.next_startup = now
                        + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                            .max(Duration::from_millis(100));
                    match run(p).await {
                        crate::probe::Outcome::Success => obs.started_ok = true,
                        crate::probe::Outcome::Failure(why) => {
                            obs.startup_failures += 1;
                            if obs.startup_failures
                                >= p.failure_threshold
                                    .unwrap_or(crate::probe::defaults::FAILURE_THRESHOLD)
                            {
                                tracing::info!(container = %id, %why, "startup probe failed; killing");
                                obs.killed_for = Some(format!("Startup probe failed: {why}"));
                                let rt = self.runtime.clone();
                                let id2 = id.to_string();
                                drop(tokio::task::spawn_blocking(move || rt.stop(&id2, grace)));
                            }
                        }
                    }
                }
                if !obs.started_ok {
                    obs.ready = false;
                    return;
                }
                // Started: the other probes count from now.
                obs.next_liveness = now;
                obs.next_readiness = now;
            }
            Some(_) => {}
        }
        if let Some(p) = &c.liveness_probe {
            let start = obs.started + secs(p.initial_delay_seconds, 0);
            if now >= start && now >= obs.next_liveness {
                obs.next_liveness = now
                    + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                        .max(Duration::from_millis(100));
                match run(p).await {
                    crate::probe::Outcome::Success => obs.liveness_failures = 0,
                    crate::probe::Outcome::Failure(why) => {
                        obs.liveness_failures += 1;
                        if obs.liveness_failures
                            >= p.failure_threshold
                                .unwrap_or(crate::probe::defaults::FAILURE_THRESHOLD)
                        {
                            tracing::info!(container = %id, %why, "liveness probe failed; killing");
                            obs.killed_for = Some(format!("Liveness probe failed: {why}"));
                            let rt = self.runtime.clone();
                            let id2 = id.to_string();
                            drop(tokio::task::spawn_blocking(move || rt.stop(&id2, grace)));
                        }
                    }
                }
            }
        }
        if obs.killed_for.is_some() {
            obs.ready = false;
            return;
        }
        match &c.readiness_probe {
            None => obs.ready = true,
            Some(p) => {
                let start = obs.started + secs(p.initial_delay_seconds, 0);
                if now >= start && now >= obs.next_readiness {
                    obs.next_readiness = now
                        + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                            .max(Duration::from_millis(100));
                    match run(p).await {
                        crate::probe::Outcome::Success => {
                            obs.readiness_failures = 0;
                            obs.readiness_successes += 1;
                            if obs.readiness_successes
                                >= p.success_threshold
                                    .unwrap_or(crate::probe::defaults::SUCCESS_THRESHOLD)
                            {
                                obs.ready = true;
                            }
                        }
                        crate::probe::Outcome::Failure(_) => {
                            obs.readiness_successes = 0;
                            obs.readiness_failures += 1;
                            if obs.readiness_failures
                                >= p.failure_threshold
                                    .unwrap_or(crate::probe::defaults::FAILURE_THRESHOLD)
                            {
                                obs.ready = false;
                            }
                        }
                    }
                }
            }
        }
    }
}
