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

use super::{PodRecord, Sandbox, SandboxError, cgroups::oom_killed, pod_name};

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
    next_readiness: Instant,
    readiness_successes: i32,
    readiness_failures: i32,
    ready: bool,
    restart_at: Option<Instant>,
    backoff: Duration,
    /// Why it last ended: (exit code, reason, message).
    last: Option<(i32, String, String)>,
    /// Set when the node killed it (liveness), so the exit is explained.
    killed_for: Option<String>,
}

impl Observed {
    fn new(base: Duration) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            started_at: now_timestamp(),
            next_liveness: now,
            liveness_failures: 0,
            next_readiness: now,
            readiness_successes: 0,
            readiness_failures: 0,
            ready: false,
            restart_at: None,
            backoff: base,
            last: None,
            killed_for: None,
        }
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
        let (mut rec, pod) = self.load_pod(uid)?;
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let grace = Duration::from_secs(
            u64::try_from(spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
        );
        let mut out = Vec::new();
        for (c, (_, id)) in spec.containers.iter().zip(rec.containers.clone()) {
            let id2 = id.clone();
            let state = self
                .runtime_call(&pod_name(&rec), &c.name, move |rt| rt.state(&id2))
                .await?;
            let mut obs = self.observed(&id);
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
                    self.probe(&rec, c, &id, &mut obs, grace).await;
                    status.ready = obs.ready;
                    status.started = Some(true);
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
                    let message = obs.killed_for.clone().unwrap_or_default();
                    let again = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if !again {
                        status.state = Some(ContainerState {
                            terminated: Some(ContainerStateTerminated {
                                exit_code: code,
                                reason: Some(reason),
                                message: (!message.is_empty()).then_some(message),
                                ..Default::default()
                            }),
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
                        obs.last = Some((code, reason, message));
                        if now >= due {
                            let id2 = id.clone();
                            self.runtime_call(&pod_name(&rec), &c.name, move |rt| rt.delete(&id2))
                                .await?;
                            // Counted first, so that this run logs to `<n>.log`.
                            let n = restarts + 1;
                            rec.restarts.insert(c.name.clone(), n);
                            self.start_container(&rec, &pod, c, &id).await?;
                            self.save(&rec)?;
                            status.restart_count = n;
                            let next = (obs.backoff * 2).min(MAX_BACKOFF);
                            let last = obs.last.take();
                            obs = Observed::new(self.cfg.restart_backoff);
                            obs.backoff = next;
                            obs.last = last;
                            status.state = Some(waiting("ContainerCreating", ""));
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
            if let Some((code, reason, message)) = &obs.last {
                status.last_state = Some(ContainerState {
                    terminated: Some(ContainerStateTerminated {
                        exit_code: *code,
                        reason: Some(reason.clone()),
                        message: (!message.is_empty()).then(|| message.clone()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            self.observed
                .lock()
                .expect("observed lock")
                .insert(id.clone(), obs);
            out.push(status);
        }
        Ok(out)
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
    /// container when liveness fails past its threshold.
    pub(super) async fn probe(
        &self,
        rec: &PodRecord,
        c: &k8s_openapi::api::core::v1::Container,
        id: &str,
        obs: &mut Observed,
        grace: Duration,
    ) {
        let now = Instant::now();
        let run = |p: &Probe| {
            let (p, c, id, rt, ip, ns) = (
                p.clone(),
                c.clone(),
                id.to_string(),
                self.runtime.clone(),
                rec.ip,
                self.cfg.node_netns.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::probe::run(
                    &p,
                    crate::probe::Target {
                        container: &c,
                        container_id: &id,
                        pod_ip: ip,
                        node_netns: ns.as_deref(),
                    },
                    &rt,
                )
            })
        };
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0))
        };
        if let Some(p) = &c.liveness_probe {
            let start = obs.started + secs(p.initial_delay_seconds, 0);
            if now >= start && now >= obs.next_liveness {
                obs.next_liveness = now
                    + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                        .max(Duration::from_millis(100));
                match run(p).await.expect("probe task") {
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
                            let _ = tokio::task::spawn_blocking(move || rt.stop(&id2, grace)).await;
                        }
                    }
                }
            }
        }
        match &c.readiness_probe {
            None => obs.ready = true,
            Some(p) => {
                let start = obs.started + secs(p.initial_delay_seconds, 0);
                if now >= start && now >= obs.next_readiness {
                    obs.next_readiness = now
                        + secs(p.period_seconds, crate::probe::defaults::PERIOD_S)
                            .max(Duration::from_millis(100));
                    match run(p).await.expect("probe task") {
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
