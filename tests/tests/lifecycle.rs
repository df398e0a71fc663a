//! Container lifecycle in the pod sandbox: restartPolicy with back-off, and
//! exec, TCP and HTTP probes against real busybox containers.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use weft_agent::{runtime::busybox::BUSYBOX_IMAGE, sandbox::Sandbox};
use weft_lab::topology::{Lab, LabSpec};

const TIMEOUT: Duration = Duration::from_secs(120);
const BACKOFF: Duration = Duration::from_millis(300);

async fn lab_and_sandbox() -> Result<(Lab, Sandbox)> {
    let mut lab = Lab::up(LabSpec::new(1)).await?;
    lab.restart_backoff = BACKOFF;
    let sb = lab.sandbox(lab.node("n1"))?;
    lab.load_busybox(&sb)?;
    Ok((lab, sb))
}

fn pod(name: &str, seed: u32, restart_policy: &str, container: serde_json::Value) -> Pod {
    let mut c = serde_json::json!({"name": "main", "image": BUSYBOX_IMAGE});
    c.as_object_mut()
        .unwrap()
        .extend(container.as_object().unwrap().clone());
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{seed:08x}-2222-4000-8000-{:012x}", std::process::id())},
        "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 1,
                 "containers": [c]}
    }))
    .unwrap()
}

/// Syncs the pod every 50 ms until `pred` holds for its first container.
async fn sync_until(
    sb: &Sandbox,
    uid: &str,
    within: Duration,
    what: &str,
    pred: impl Fn(&ContainerStatus) -> bool,
) -> Result<ContainerStatus> {
    let deadline = Instant::now() + within;
    loop {
        let st = sb.sync_pod(uid).await?.remove(0);
        if pred(&st) {
            return Ok(st);
        }
        if Instant::now() > deadline {
            bail!("{what}: not reached within {within:?}; last status {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn waiting_reason(s: &ContainerStatus) -> Option<&str> {
    s.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}
fn terminated(s: &ContainerStatus) -> Option<(i32, &str)> {
    let t = s.state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.as_deref().unwrap_or_default()))
}
fn last_terminated(s: &ContainerStatus) -> Option<(i32, &str)> {
    let t = s.last_state.as_ref()?.terminated.as_ref()?;
    Some((t.exit_code, t.reason.as_deref().unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policy_always_restarts_with_growing_back_off_and_keeps_logs() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (_lab, sb) = lab_and_sandbox().await?;
        let p = pod(
            "crasher",
            1,
            "Always",
            serde_json::json!({"command": ["sh", "-c", "echo run; exit 3"]}),
        );
        let rec = sb.create_pod(&p, sb.free_ip()?).await?;
        let st = sync_until(&sb, &rec.uid, Duration::from_secs(10), "back-off", |s| {
            waiting_reason(s) == Some("CrashLoopBackOff")
        })
        .await?;
        assert_eq!(last_terminated(&st), Some((3, "Error")));
        let t0 = Instant::now();
        sync_until(&sb, &rec.uid, Duration::from_secs(10), "1st restart", |s| {
            s.restart_count == 1
        })
        .await?;
        let first = t0.elapsed();
        let t1 = Instant::now();
        sync_until(&sb, &rec.uid, Duration::from_secs(10), "2nd restart", |s| {
            s.restart_count == 2
        })
        .await?;
        let second = t1.elapsed();
        // The second wait includes a doubled back-off (600 ms vs 300 ms).
        assert!(
            second >= BACKOFF * 2,
            "back-off doubled: {first:?} then {second:?}"
        );
        // Each run has its own log; the current run's and the two before
        // are kept, older ones go, so a crash loop cannot fill the disk.
        for n in 0..2 {
            let log = std::fs::read_to_string(sb.log_path(&rec.uid, "main", n))?;
            assert!(log.ends_with(" stdout F run\n"), "run {n}: {log:?}");
            assert_eq!(
                log.lines().count(),
                1,
                "run {n} logs only its own output: {log:?}"
            );
        }
        sync_until(&sb, &rec.uid, Duration::from_secs(10), "3rd restart", |s| {
            s.restart_count == 3
        })
        .await?;
        assert!(
            !sb.log_path(&rec.uid, "main", 0).exists(),
            "the log of run 0 outlived three restarts"
        );
        // The restart count survives the agent: a new sandbox reads it from disk.
        let sb2 = _lab.sandbox(_lab.node("n1"))?;
        assert!(sb2.sync_pod(&rec.uid).await?[0].restart_count >= 2);
        sb.remove_pod(&rec.uid, Duration::ZERO).await?;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_on_failure_and_never() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (_lab, sb) = lab_and_sandbox().await?;
        let ok = sb
            .create_pod(
                &pod(
                    "done",
                    2,
                    "OnFailure",
                    serde_json::json!({"command": ["true"]}),
                ),
                sb.free_ip()?,
            )
            .await?;
        let st = sync_until(&sb, &ok.uid, Duration::from_secs(10), "completed", |s| {
            terminated(s).is_some()
        })
        .await?;
        assert_eq!(terminated(&st), Some((0, "Completed")));
        let fail = sb
            .create_pod(
                &pod(
                    "retry",
                    3,
                    "OnFailure",
                    serde_json::json!({"command": ["false"]}),
                ),
                sb.free_ip()?,
            )
            .await?;
        sync_until(
            &sb,
            &fail.uid,
            Duration::from_secs(10),
            "OnFailure restart",
            |s| s.restart_count >= 1,
        )
        .await?;
        let never = sb
            .create_pod(
                &pod(
                    "once",
                    4,
                    "Never",
                    serde_json::json!({"command": ["sh", "-c", "exit 9"]}),
                ),
                sb.free_ip()?,
            )
            .await?;
        let st = sync_until(
            &sb,
            &never.uid,
            Duration::from_secs(10),
            "terminated",
            |s| terminated(s).is_some(),
        )
        .await?;
        assert_eq!(terminated(&st), Some((9, "Error")));
        // Completed and Never pods stay down: no restart however long we sync.
        tokio::time::sleep(BACKOFF * 3).await;
        assert_eq!(sb.sync_pod(&ok.uid).await?[0].restart_count, 0);
        assert_eq!(sb.sync_pod(&never.uid).await?[0].restart_count, 0);
        sb.remove_all(Duration::ZERO).await?;
        Ok(())
    })
    .await?
}

fn httpd_with(probe_kind: &str, probe: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "command": ["httpd", "-f", "-p", "80", "-h", "/var/www"],
        "ports": [{"name": "http", "containerPort": 80}],
        probe_kind: probe,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_http_and_tcp_probes() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (_lab, sb) = lab_and_sandbox().await?;
        let fast = |h: serde_json::Value| {
            let mut p = serde_json::json!({"periodSeconds": 1, "failureThreshold": 1});
            p.as_object_mut()
                .unwrap()
                .extend(h.as_object().unwrap().clone());
            p
        };
        let cases = [
            (
                "http-ok",
                fast(serde_json::json!({"httpGet": {"path": "/index.html", "port": "http"}})),
                true,
            ),
            (
                "http-404",
                fast(serde_json::json!({"httpGet": {"path": "/missing", "port": 80}})),
                false,
            ),
            (
                "tcp-ok",
                fast(serde_json::json!({"tcpSocket": {"port": "http"}})),
                true,
            ),
            (
                "tcp-closed",
                fast(serde_json::json!({"tcpSocket": {"port": 81}})),
                false,
            ),
            (
                "exec-ok",
                fast(
                    serde_json::json!({"exec": {"command": ["test", "-f", "/var/www/index.html"]}}),
                ),
                true,
            ),
            (
                "exec-fail",
                fast(serde_json::json!({"exec": {"command": ["test", "-f", "/nope"]}})),
                false,
            ),
        ];
        for (i, (name, probe, want)) in cases.into_iter().enumerate() {
            let rec = sb
                .create_pod(
                    &pod(
                        name,
                        10 + i as u32,
                        "Always",
                        httpd_with("readinessProbe", probe),
                    ),
                    sb.free_ip()?,
                )
                .await?;
            if want {
                sync_until(&sb, &rec.uid, Duration::from_secs(10), name, |s| s.ready).await?;
            } else {
                // Probed several times (period 1 s) and never ready.
                let deadline = Instant::now() + Duration::from_millis(2500);
                while Instant::now() < deadline {
                    let st = sb.sync_pod(&rec.uid).await?.remove(0);
                    assert!(!st.ready, "{name} must not become ready: {st:?}");
                    assert!(
                        st.state.as_ref().unwrap().running.is_some(),
                        "{name} keeps running"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            sb.remove_pod(&rec.uid, Duration::ZERO).await?;
        }
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_kills_and_restarts_the_container() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let (_lab, sb) = lab_and_sandbox().await?;
        // Healthy for about a second, then the file the probe checks is gone.
        let p = pod(
            "sick",
            20,
            "Always",
            serde_json::json!({
                "command": ["sh", "-c", "touch /tmp/healthy; sleep 1; rm /tmp/healthy; exec sleep 600"],
                "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/healthy"]},
                                  "periodSeconds": 1, "failureThreshold": 2}
            }),
        );
        let rec = sb.create_pod(&p, sb.free_ip()?).await?;
        let st = sync_until(&sb, &rec.uid, Duration::from_secs(20), "restart after liveness", |s| {
            s.restart_count == 1
        })
        .await?;
        let last = st.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.reason.as_deref(), Some("Unhealthy"));
        assert!(last.message.as_deref().unwrap_or_default().contains("Liveness probe failed"), "{last:?}");
        // The new run is healthy again at first.
        let st = sync_until(&sb, &rec.uid, Duration::from_secs(10), "running again", |s| {
            s.state.as_ref().is_some_and(|x| x.running.is_some())
        })
        .await?;
        assert_eq!(st.restart_count, 1);
        sb.remove_pod(&rec.uid, Duration::ZERO).await?;
        Ok(())
    })
    .await?
}
