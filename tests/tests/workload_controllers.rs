//! The workload controllers beyond Deployments on a real lab (controller,
//! agents, runc): Jobs (indexes, the pod failure policy, back-off limits,
//! deadlines, suspension, TTL, sidecars, deletion), CronJobs (on the
//! minute, concurrency, catch-up after an outage), PodDisruptionBudgets
//! with eviction and drain, and ReplicationControllers, each checked in
//! the objects' status, their pods and their Events, with `weft` and with
//! kubectl 1.32.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec};

fn up(nodes: usize) -> Result<Cluster> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(Cluster::up(ClusterSpec::new(nodes), |_| {}))
}

/// kubectl 1.32 on the lab, in its underlay namespace: (stdout, stderr).
fn kubectl(c: &Cluster, args: &[&str]) -> Result<(String, String)> {
    let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    let out = c.output_in(&c.lab.underlay, cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(out.status.success(), "kubectl {args:?}: {stderr}");
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), stderr))
}

/// kubectl 1.32 that must fail: its stderr.
fn kubectl_refused(c: &Cluster, args: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    let out = c.output_in(&c.lab.underlay, cmd)?;
    ensure!(!out.status.success(), "kubectl {args:?} succeeded");
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The Job's condition of `type_` that is True.
fn condition(job: &Value, type_: &str) -> Option<Value> {
    job["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .cloned()
}

/// Waits for the Job to end (Complete or Failed) and returns it.
fn wait_end(c: &Cluster, name: &str, timeout: Duration) -> Result<Value> {
    wait_until(&format!("job {name} to end"), timeout, || {
        let j = c.get_json(&["job", name]).ok()?;
        (condition(&j, "Complete").is_some() || condition(&j, "Failed").is_some()).then_some(j)
    })
    .map_err(|e| {
        let j = c.get_json(&["job", name]).unwrap_or_default();
        e.context(format!("status: {}", j["status"]))
    })
}

/// The Job's pods (by its name label).
fn pods_of(c: &Cluster, name: &str) -> Result<Vec<Value>> {
    let list = c.get_json(&[
        "pods",
        "-l",
        &format!("batch.kubernetes.io/job-name={name}"),
    ])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The reasons of the Events about Job `name`.
fn event_reasons(c: &Cluster, name: &str) -> Result<Vec<String>> {
    event_reasons_of(c, "Job", name)
}

/// `weft apply -f -` of `manifest`: whether it succeeded, and its stderr.
fn apply_refused(c: &Cluster, manifest: &str) -> Result<(bool, String)> {
    use std::io::Write as _;
    let mut cmd = c.weft_command(&["apply", "-f", "-"])?;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn no_tracking_finalizers(pods: &[Value]) -> Result<()> {
    for p in pods {
        ensure!(
            !p["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f == "batch.kubernetes.io/job-tracking"),
            "pod {} still has the tracking finalizer",
            p["metadata"]["name"]
        );
    }
    Ok(())
}

#[test]
fn indexed_jobs_run_each_index_and_the_failure_policy_decides() -> Result<()> {
    let c = up(2)?;
    // Each index resolves the next one's stable name through the
    // headless Service, and index 1 fails with the code its policy fails
    // the index for.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: work}
spec: {clusterIP: None, selector: {app: work}, ports: [{port: 80}]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: work}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  backoffLimitPerIndex: 1
  podFailurePolicy:
    rules:
    - action: FailIndex
      onExitCodes: {containerName: main, operator: In, values: [42]}
  template:
    metadata: {labels: {app: work}}
    spec:
      restartPolicy: Never
      subdomain: work
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        command:
        - sh
        - -c
        - |
          i=$JOB_COMPLETION_INDEX
          echo "index=$i host=$(hostname)"
          peer=work-$(( (i + 1) % 3 )).work.default.svc.cluster.local
          for t in $(seq 1 60); do
            if nslookup $peer >/dev/null 2>&1; then echo "peer-ok $peer"; break; fi
            sleep 0.5
          done
          sleep 4
          [ "$i" != 1 ] || exit 42
"#,
    )?;
    let job = wait_end(&c, "work", Duration::from_secs(120))?;
    let status = &job["status"];
    let failed = condition(&job, "Failed").unwrap_or_default();
    ensure!(failed["reason"] == "FailedIndexes", "{status}");
    ensure!(
        condition(&job, "FailureTarget").is_some(),
        "no FailureTarget before Failed: {status}"
    );
    ensure!(status["completedIndexes"] == "0,2", "{status}");
    ensure!(status["failedIndexes"] == "1", "{status}");
    ensure!(
        status["succeeded"] == 2 && status["failed"] == 1 && status["active"] == 0,
        "{status}"
    );
    // One pod per index, never retried: the failed index is not run again.
    let pods = pods_of(&c, "work")?;
    ensure!(pods.len() == 3, "{} pods", pods.len());
    no_tracking_finalizers(&pods)?;
    for p in &pods {
        let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        ensure!(name.starts_with(&format!("work-{index}-")), "{name}");
        let log = c.weft(&["logs", name])?;
        ensure!(
            log.contains(&format!("index={index} host=work-{index}")),
            "{name}: {log}"
        );
        ensure!(
            log.contains("peer-ok"),
            "{name} did not resolve its peer: {log}"
        );
        let phase = if index == "1" { "Failed" } else { "Succeeded" };
        ensure!(p["status"]["phase"] == phase, "{name}: {}", p["status"]);
    }
    let reasons = event_reasons(&c, "work")?;
    ensure!(
        reasons.iter().filter(|r| *r == "SuccessfulCreate").count() == 3
            && reasons.iter().any(|r| r == "FailedIndexes"),
        "{reasons:?}"
    );
    let (table, _) = kubectl(&c, &["get", "job", "work"])?;
    let row = table.lines().nth(1).unwrap_or_default();
    ensure!(
        table.starts_with("NAME") && table.contains("STATUS") && table.contains("COMPLETIONS"),
        "{table}"
    );
    ensure!(
        row.split_whitespace().take(3).collect::<Vec<_>>() == ["work", "Failed", "2/3"],
        "{table}"
    );
    let weft_table = c.weft(&["get", "jobs"])?;
    ensure!(
        weft_table.contains("work") && weft_table.contains("2/3"),
        "{weft_table}"
    );

    // With backoffLimitPerIndex the back-off is the index's own: index 0
    // fails and waits its 10 s, while index 1 (parallelism 1) runs at once.
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: apart}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 1
  backoffLimitPerIndex: 1
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: main
        image: weft.local/busybox:1.36
        command: [sh, -c, '[ "$JOB_COMPLETION_INDEX" = 1 ] || exit 1']
"#,
    )?;
    let job = wait_end(&c, "apart", Duration::from_secs(90))?;
    ensure!(
        job["status"]["completedIndexes"] == "1" && job["status"]["failedIndexes"] == "0",
        "{}",
        job["status"]
    );
    let mut runs: Vec<(String, i64, i64)> = pods_of(&c, "apart")?
        .iter()
        .map(|p| {
            let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let ended = &p["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"];
            (
                index,
                secs(&p["metadata"]["creationTimestamp"]),
                secs(ended),
            )
        })
        .collect();
    runs.sort_by_key(|r| r.1);
    ensure!(
        runs.iter().map(|r| r.0.as_str()).collect::<Vec<_>>() == ["0", "1", "0"],
        "{runs:?}"
    );
    let first_failure = runs[0].2;
    ensure!(
        runs[1].1 - first_failure < 8,
        "index 1 waited for index 0's back-off: {runs:?}"
    );
    ensure!(
        runs[2].1 - first_failure >= 9,
        "index 0 was retried without its back-off: {runs:?}"
    );

    // FailJob: the first pod with exit code 7 fails the whole Job at once,
    // although its backoffLimit would allow six more.
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: stop}
spec:
  completions: 2
  parallelism: 2
  podFailurePolicy:
    rules:
    - action: Ignore
      onExitCodes: {operator: In, values: [5]}
    - action: FailJob
      onExitCodes: {operator: In, values: [7]}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, 'sleep 1; exit 7']}
"#,
    )?;
    let job = wait_end(&c, "stop", Duration::from_secs(90))?;
    let failed = condition(&job, "Failed").unwrap_or_default();
    ensure!(failed["reason"] == "PodFailurePolicy", "{}", job["status"]);
    let message = failed["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("Container main for pod default/stop-")
            && message.ends_with("failed with exit code 7 matching FailJob rule at index 1"),
        "{message}"
    );
    let (described, _) = kubectl(&c, &["describe", "job", "stop"])?;
    ensure!(described.contains("PodFailurePolicy"), "{described}");
    no_tracking_finalizers(&pods_of(&c, "stop")?)?;
    Ok(())
}

#[test]
fn jobs_back_off_time_out_suspend_expire_and_end_with_their_sidecars() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: limit}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, 'exit 1']}
---
apiVersion: batch/v1
kind: Job
metadata: {name: deadline}
spec:
  activeDeadlineSeconds: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: later}
spec:
  suspend: true
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [echo, resumed]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: sidecar}
spec:
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 2
      initContainers:
      - {name: helper, image: weft.local/busybox:1.36, restartPolicy: Always, command: [sleep, "3600"]}
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sh, -c, 'sleep 1; echo main-done']}
---
apiVersion: batch/v1
kind: Job
metadata: {name: short}
spec:
  ttlSecondsAfterFinished: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [echo, brief]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: keep}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [echo, kept]}
"#,
    )?;
    // backoffLimit 0: the first failure fails the Job.
    let job = wait_end(&c, "limit", Duration::from_secs(60))?;
    ensure!(
        condition(&job, "Failed").is_some_and(|f| f["reason"] == "BackoffLimitExceeded"),
        "{}",
        job["status"]
    );
    ensure!(job["status"]["failed"] == 1, "{}", job["status"]);
    ensure!(pods_of(&c, "limit")?.len() == 1, "a pod beyond the limit");

    // The deadline ends a pod that would run for an hour.
    let started = Instant::now();
    let job = wait_end(&c, "deadline", Duration::from_secs(60))?;
    ensure!(
        condition(&job, "Failed").is_some_and(|f| f["reason"] == "DeadlineExceeded"),
        "{}",
        job["status"]
    );
    ensure!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    wait_until(
        "the deadline's pod to stop",
        Duration::from_secs(30),
        || {
            let pods = pods_of(&c, "deadline").ok()?;
            pods.iter()
                .all(|p| {
                    p["metadata"]["deletionTimestamp"].is_string()
                        || p["status"]["phase"] == "Failed"
                })
                .then_some(())
        },
    )?;
    ensure!(event_reasons(&c, "deadline")?.contains(&"DeadlineExceeded".to_string()));

    // Suspended: no pod until it is resumed.
    let later = c.get_json(&["job", "later"])?;
    ensure!(
        condition(&later, "Suspended").is_some_and(|s| s["reason"] == "JobSuspended"),
        "{}",
        later["status"]
    );
    ensure!(
        later["status"]["startTime"].is_null(),
        "{}",
        later["status"]
    );
    ensure!(pods_of(&c, "later")?.is_empty(), "a suspended Job ran");
    kubectl(
        &c,
        &[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ],
    )?;
    let job = wait_end(&c, "later", Duration::from_secs(60))?;
    ensure!(condition(&job, "Complete").is_some(), "{}", job["status"]);
    let reasons = event_reasons(&c, "later")?;
    for r in ["Suspended", "Resumed", "Completed"] {
        ensure!(reasons.iter().any(|x| x == r), "{r} missing: {reasons:?}");
    }
    // A finished Job's status is not a client's to rewrite: counts do not
    // go negative or down, the terminal condition stays, and a finished
    // Job has no active pods (kube's status validation).
    for (patch, want) in [
        (r#"{"status":{"succeeded":-1}}"#, "status.succeeded"),
        (
            r#"{"status":{"succeeded":0}}"#,
            "cannot decrease the succeeded counter",
        ),
        (
            r#"{"status":{"conditions":[]}}"#,
            "cannot disable the terminal Complete=True condition",
        ),
        (
            r#"{"status":{"active":3}}"#,
            "active>0 is invalid for finished job",
        ),
        (
            r#"{"status":{"completionTime":"2020-01-01T00:00:00Z"}}"#,
            "completionTime cannot be mutated",
        ),
    ] {
        let err = kubectl_refused(
            &c,
            &[
                "patch",
                "job",
                "later",
                "--subresource=status",
                "--type=merge",
                "-p",
                patch,
            ],
        )?;
        ensure!(
            err.contains(want) && err.contains("Invalid"),
            "{patch}: {err}"
        );
    }
    let after = c.get_json(&["job", "later"])?;
    ensure!(
        after["status"] == job["status"],
        "{} became {}",
        job["status"],
        after["status"]
    );
    // Its log by the Job's name, with weft and kubectl; a kind without
    // pods of its own is refused, a missing Job is reported.
    let log = c.weft(&["logs", "job/later"])?;
    ensure!(log == "resumed\n", "{log:?}");
    let (log, _) = kubectl(&c, &["logs", "job/later"])?;
    ensure!(log == "resumed\n", "{log:?}");
    for (arg, want) in [
        ("job/nosuch", "not found"),
        ("cronjob/later", "cannot get the pods of a CronJob"),
        ("nosuchkind/later", "doesn't have a resource type"),
    ] {
        let out = c.weft_output(&["logs", arg])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains(want), "{arg}: {err}");
    }

    // A sidecar ends with the job's main container.
    let job = wait_end(&c, "sidecar", Duration::from_secs(60))?;
    ensure!(condition(&job, "Complete").is_some(), "{}", job["status"]);
    let pods = pods_of(&c, "sidecar")?;
    ensure!(
        pods.len() == 1 && pods[0]["status"]["phase"] == "Succeeded",
        "{:?}",
        pods.iter().map(|p| p["status"].clone()).collect::<Vec<_>>()
    );

    // TTL: the finished Job goes, with its pod.
    wait_until(
        "the TTL to delete job short",
        Duration::from_secs(40),
        || {
            let gone = c.get_json(&["job", "short"]).is_err();
            let pods = pods_of(&c, "short").ok()?;
            (gone && pods.is_empty()).then_some(())
        },
    )?;

    // Deleting a Job without a propagation policy keeps its pods (with
    // kube's warning); kubectl's default (background) takes them along.
    let job = wait_end(&c, "keep", Duration::from_secs(60))?;
    ensure!(job["status"]["succeeded"] == 1, "{}", job["status"]);
    let (_, warning) = kubectl(
        &c,
        &[
            "delete",
            "--raw",
            "/apis/batch/v1/namespaces/default/jobs/keep",
        ],
    )?;
    ensure!(warning.contains("child pods are preserved"), "{warning}");
    let mut seen = Vec::new();
    let kept = wait_until(
        "the kept pod to lose its owner",
        Duration::from_secs(20),
        || {
            seen = pods_of(&c, "keep").ok()?;
            let owners = seen.first()?["metadata"]["ownerReferences"]
                .as_array()
                .map_or(0, Vec::len);
            (seen.len() == 1 && owners == 0).then(|| seen.clone())
        },
    )
    .map_err(|e| e.context(format!("pods: {seen:?}")))?;
    no_tracking_finalizers(&kept)?;
    // A pod held by its finalizer after its node let it go is not worked
    // on again and again by the node.
    let log = c.agent_log("n1");
    let mut removed = std::collections::BTreeMap::<&str, usize>::new();
    for l in log
        .lines()
        .filter(|l| l.contains("pod removed from the node"))
    {
        let uid = l
            .split("uid=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next());
        *removed.entry(uid.unwrap_or_default()).or_default() += 1;
    }
    ensure!(!removed.is_empty(), "no pod was removed: {log}");
    if let Some((uid, _)) = removed.iter().find(|(_, n)| **n > 1) {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(uid)).collect();
        anyhow::bail!("pod {uid} removed again: {lines:#?}");
    }
    // Fewer in parallel: the pods taken away are not failures.
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: shrink}
spec:
  completions: 4
  parallelism: 3
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: orphaned}
spec:
  parallelism: 2
  completions: 2
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    wait_until("shrink's three pods", Duration::from_secs(60), || {
        let j = c.get_json(&["job", "shrink"]).ok()?;
        (j["status"]["active"] == 3 && j["status"]["ready"] == 3).then_some(())
    })?;
    kubectl(
        &c,
        &[
            "patch",
            "job",
            "shrink",
            "--type=merge",
            "-p",
            r#"{"spec":{"parallelism":1}}"#,
        ],
    )?;
    let shrunk = wait_until("shrink down to one pod", Duration::from_secs(60), || {
        let j = c.get_json(&["job", "shrink"]).ok()?;
        let pods = pods_of(&c, "shrink").ok()?;
        (j["status"]["active"] == 1 && j["status"]["terminating"] == 0 && pods.len() == 1)
            .then_some(j)
    })?;
    ensure!(
        shrunk["status"]["failed"].as_i64().unwrap_or(0) == 0
            && condition(&shrunk, "Failed").is_none(),
        "a scale-down failed the Job: {}",
        shrunk["status"]
    );
    // Orphaned while running: its pods stay, and no new ones are made.
    wait_until("orphaned's pods", Duration::from_secs(60), || {
        let j = c.get_json(&["job", "orphaned"]).ok()?;
        (j["status"]["active"] == 2).then_some(())
    })?;
    kubectl(&c, &["delete", "job", "orphaned", "--cascade=orphan"])?;
    std::thread::sleep(Duration::from_secs(3));
    let left = pods_of(&c, "orphaned")?;
    ensure!(
        left.len() == 2
            && left
                .iter()
                .all(|p| p["metadata"]["ownerReferences"].is_null()
                    && p["metadata"]["deletionTimestamp"].is_null()),
        "{left:?}"
    );
    no_tracking_finalizers(&left)?;
    c.weft(&[
        "delete",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=orphaned",
        "--wait=false",
    ])
    .or_else(|_| {
        for p in &left {
            c.weft(&[
                "delete",
                "pod",
                p["metadata"]["name"].as_str().unwrap_or_default(),
                "--wait=false",
            ])?;
        }
        Ok::<_, anyhow::Error>(String::new())
    })?;
    kubectl(&c, &["delete", "job", "later"])?;
    wait_until("job later's pods to go", Duration::from_secs(30), || {
        pods_of(&c, "later").ok()?.is_empty().then_some(())
    })?;
    Ok(())
}

#[test]
fn jobs_retry_after_back_off_stop_at_their_success_policy_and_count_once_across_restarts()
-> Result<()> {
    let mut c = up(1)?;
    let marks = tempfile::Builder::new().prefix("weft-jobs-").tempdir()?;
    let dir = marks.path().display().to_string();
    c.apply(&format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: retry}}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      volumes: [{{name: m, hostPath: {{path: {dir}, type: Directory}}}}]
      containers:
      - name: main
        image: weft.local/busybox:1.36
        volumeMounts: [{{name: m, mountPath: /m}}]
        command: [sh, -c, 'if [ -e /m/tried ]; then echo second; else touch /m/tried; exit 1; fi']
---
apiVersion: batch/v1
kind: Job
metadata: {{name: enough}}
spec:
  completionMode: Indexed
  completions: 3
  parallelism: 3
  successPolicy:
    rules: [{{succeededIndexes: "0", succeededCount: 1}}]
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        command: [sh, -c, '[ "$JOB_COMPLETION_INDEX" = 0 ] || exec sleep 3600; sleep 1']
---
apiVersion: batch/v1
kind: Job
metadata: {{name: many}}
spec:
  completions: 8
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers:
      - {{name: main, image: weft.local/busybox:1.36, command: [sh, -c, 'sleep 1']}}
"#
    ))?;

    // The controller dies while `many` runs, and again a little later:
    // each pod is counted once, and no completion is run twice.
    wait_until("job many to be under way", Duration::from_secs(60), || {
        let j = c.get_json(&["job", "many"]).ok()?;
        (j["status"]["succeeded"].as_i64()? >= 1).then_some(())
    })?;
    c.kill_controller()?;
    std::thread::sleep(Duration::from_secs(2));
    c.restart_controller()?;
    std::thread::sleep(Duration::from_secs(2));
    c.kill_controller()?;
    c.restart_controller()?;
    let job = wait_end(&c, "many", Duration::from_secs(120))?;
    ensure!(condition(&job, "Complete").is_some(), "{}", job["status"]);
    ensure!(
        job["status"]["succeeded"] == 8 && job["status"]["failed"] == 0,
        "{}",
        job["status"]
    );
    let pods = pods_of(&c, "many")?;
    ensure!(pods.len() == 8, "{} pods for 8 completions", pods.len());
    no_tracking_finalizers(&pods)?;

    // The first try fails; the second comes after the 10 s back-off.
    let job = wait_end(&c, "retry", Duration::from_secs(90))?;
    ensure!(condition(&job, "Complete").is_some(), "{}", job["status"]);
    ensure!(
        job["status"]["failed"] == 1 && job["status"]["succeeded"] == 1,
        "{}",
        job["status"]
    );
    let mut pods = pods_of(&c, "retry")?;
    ensure!(pods.len() == 2, "{} pods", pods.len());
    pods.sort_by_key(|p| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .map(String::from)
    });
    let failed_at = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
        .as_str()
        .and_then(weft_api::meta::parse_rfc3339)
        .unwrap_or_default();
    let retried_at = pods[1]["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(weft_api::meta::parse_rfc3339)
        .unwrap_or_default();
    ensure!(
        (9..=30).contains(&(retried_at - failed_at)),
        "retried {} s after the failure",
        retried_at - failed_at
    );
    ensure!(
        c.weft(&[
            "logs",
            pods[1]["metadata"]["name"].as_str().unwrap_or_default()
        ])?
        .contains("second")
    );

    // Index 0 is enough: the others are stopped and the Job completes.
    let job = wait_end(&c, "enough", Duration::from_secs(60))?;
    let complete = condition(&job, "Complete").unwrap_or_default();
    ensure!(complete["reason"] == "SuccessPolicy", "{}", job["status"]);
    ensure!(
        condition(&job, "SuccessCriteriaMet").is_some(),
        "{}",
        job["status"]
    );
    ensure!(
        job["status"]["completedIndexes"] == "0",
        "{}",
        job["status"]
    );
    // The other indexes were deleted (and are gone, their finalizers
    // off); index 0's pod stays, Succeeded.
    wait_until("the other indexes to go", Duration::from_secs(30), || {
        let pods = pods_of(&c, "enough").ok()?;
        (pods.len() == 1 && pods[0]["status"]["phase"] == "Succeeded").then_some(())
    })?;
    Ok(())
}

/// The Jobs of CronJob `name`, oldest first.
fn jobs_of(c: &Cluster, name: &str) -> Result<Vec<Value>> {
    let list = c.get_json(&["jobs"])?;
    let mut jobs: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| {
            j["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
                && j["metadata"]["ownerReferences"][0]["name"] == name
        })
        .cloned()
        .collect();
    jobs.sort_by_key(|j| j["metadata"]["name"].as_str().map(String::from));
    Ok(jobs)
}

fn secs(v: &Value) -> i64 {
    v.as_str()
        .and_then(weft_api::meta::parse_rfc3339)
        .unwrap_or_default()
}

#[test]
fn cronjobs_start_on_the_minute_forbid_overlaps_catch_up_once_and_keep_their_history() -> Result<()>
{
    let c = up(1)?;
    // What kube refuses, Weft refuses, naming the field.
    let (ok, err) = apply_refused(
        &c,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: wrong}\nspec:\n  schedule: '61 * * * *'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{name: c, image: weft.local/busybox:1.36}]\n",
    )?;
    ensure!(!ok && err.contains("spec.schedule"), "{err}");

    c.apply(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: forbid}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - {name: main, image: weft.local/busybox:1.36, command: [sleep, "70"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: replace}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Replace
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: replace}}
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: quick}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata: {labels: {from: quick}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: main, image: weft.local/busybox:1.36, command: [echo, tick]}
"#,
    )?;
    // The first minute: one Job each, named by the minute.
    let first = wait_until("forbid's first Job", Duration::from_secs(75), || {
        jobs_of(&c, "forbid").ok()?.into_iter().next()
    })?;
    let cj = c.get_json(&["cronjob", "forbid"])?;
    let m1 = secs(&cj["status"]["lastScheduleTime"]);
    ensure!(m1 % 60 == 0, "{}", cj["status"]);
    ensure!(
        first["metadata"]["name"] == format!("forbid-{}", m1 / 60),
        "{}",
        first["metadata"]["name"]
    );
    ensure!(
        first["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
            .as_str()
            .is_some_and(|t| weft_api::meta::parse_rfc3339(t) == Some(m1)),
        "{}",
        first["metadata"]
    );
    ensure!(
        cj["status"]["active"].as_array().map(Vec::len) == Some(1),
        "{}",
        cj["status"]
    );

    // The next minute: quick runs again (and keeps one finished Job);
    // forbid does not, its first Job still running.
    let m2 = m1 + 60;
    let quick = wait_until(
        "quick's second run to finish",
        Duration::from_secs(90),
        || {
            let jobs = jobs_of(&c, "quick").ok()?;
            let cj = c.get_json(&["cronjob", "quick"]).ok()?;
            (jobs.len() == 1
                && jobs[0]["metadata"]["name"] == format!("quick-{}", m2 / 60)
                && jobs[0]["status"]["succeeded"] == 1
                && cj["status"]["lastSuccessfulTime"].is_string())
            .then_some(cj)
        },
    )?;
    ensure!(
        secs(&quick["status"]["lastScheduleTime"]) >= m2,
        "{}",
        quick["status"]
    );
    let jobs = jobs_of(&c, "forbid")?;
    ensure!(
        jobs.len() == 1,
        "forbid ran alongside its first Job: {jobs:?}"
    );
    // Replace: the next minute's Job takes the place of the one still
    // running, whose pod goes with it.
    wait_until(
        "replace's second Job alone",
        Duration::from_secs(30),
        || {
            let names: Vec<String> = jobs_of(&c, "replace")
                .ok()?
                .iter()
                .filter(|j| j["metadata"]["deletionTimestamp"].is_null())
                .filter_map(|j| j["metadata"]["name"].as_str().map(String::from))
                .collect();
            let pods = c.get_json(&["pods", "-l", "app=replace"]).ok()?;
            let pod_jobs: Vec<String> = pods["items"]
                .as_array()?
                .iter()
                .filter_map(|p| {
                    p["metadata"]["labels"]["job-name"]
                        .as_str()
                        .map(String::from)
                })
                .collect();
            (names == [format!("replace-{}", m2 / 60)] && pod_jobs == names).then_some(())
        },
    )?;
    let replace_reasons = event_reasons_of(&c, "CronJob", "replace")?;
    ensure!(
        replace_reasons.iter().any(|r| r == "SuccessfulDelete"),
        "{replace_reasons:?}"
    );
    ensure!(
        event_reasons_of(&c, "CronJob", "forbid")?.contains(&"JobAlreadyActive".to_string()),
        "no JobAlreadyActive Event"
    );
    let quick_reasons = event_reasons_of(&c, "CronJob", "quick")?;
    for r in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        ensure!(
            quick_reasons.iter().any(|x| x == r),
            "{r}: {quick_reasons:?}"
        );
    }

    // The missed minute runs once the first Job has ended, as kube
    // catches up (one run, not one per missed minute).
    let second = wait_until("forbid's catch-up Job", Duration::from_secs(60), || {
        jobs_of(&c, "forbid")
            .ok()?
            .into_iter()
            .find(|j| j["metadata"]["name"] != first["metadata"]["name"])
    })?;
    let first_now = c.get_json(&[
        "job",
        first["metadata"]["name"].as_str().unwrap_or_default(),
    ])?;
    let first_done = secs(&first_now["status"]["completionTime"]);
    ensure!(
        first_done > 0 && secs(&second["metadata"]["creationTimestamp"]) >= first_done,
        "started before the first ended: {} vs {first_done}",
        second["metadata"]["creationTimestamp"]
    );
    let name = second["metadata"]["name"].as_str().unwrap_or_default();
    ensure!(
        name == format!("forbid-{}", m2 / 60) || name == format!("forbid-{}", m2 / 60 + 1),
        "{name}"
    );

    let (table, _) = kubectl(&c, &["get", "cronjob", "forbid"])?;
    ensure!(
        table.starts_with("NAME") && table.contains("SCHEDULE") && table.contains("LAST SCHEDULE"),
        "{table}"
    );
    let row = table.lines().nth(1).unwrap_or_default();
    ensure!(
        row.starts_with("forbid") && row.contains("* * * * *") && row.contains("False"),
        "{table}"
    );
    Ok(())
}

/// The reasons of the Events about the `kind` named `name`.
fn event_reasons_of(c: &Cluster, kind: &str, name: &str) -> Result<Vec<String>> {
    let events = c.get_json(&["events"])?;
    Ok(events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(String::from))
        .collect())
}

#[test]
fn a_cronjob_runs_only_the_latest_missed_time_after_a_controller_outage() -> Result<()> {
    let mut c = up(1)?;
    c.apply(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: outage}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: main, image: weft.local/busybox:1.36, command: [echo, tick]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: late}
spec:
  schedule: "* * * * *"
  startingDeadlineSeconds: 3
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: main, image: weft.local/busybox:1.36, command: [echo, tick]}
"#,
    )?;
    let first = wait_until("the first Job", Duration::from_secs(75), || {
        jobs_of(&c, "outage").ok()?.into_iter().next()
    })?;
    let m1 = secs(&c.get_json(&["cronjob", "outage"])?["status"]["lastScheduleTime"]);
    ensure!(first["metadata"]["name"] == format!("outage-{}", m1 / 60));
    // Down for two scheduled times.
    c.kill_controller()?;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    };
    while now() < m1 + 125 {
        std::thread::sleep(Duration::from_millis(500));
    }
    c.restart_controller()?;
    let m3 = m1 + 120;
    wait_until("the catch-up Job", Duration::from_secs(20), || {
        let jobs = jobs_of(&c, "outage").ok()?;
        jobs.iter()
            .any(|j| j["metadata"]["name"] == format!("outage-{}", m3 / 60))
            .then_some(())
    })?;
    // Only the latest missed time ran: nothing for the one before it.
    std::thread::sleep(Duration::from_secs(3));
    let names: Vec<String> = jobs_of(&c, "outage")?
        .iter()
        .filter_map(|j| j["metadata"]["name"].as_str().map(String::from))
        .collect();
    ensure!(
        !names.contains(&format!("outage-{}", (m1 + 60) / 60)),
        "the earlier missed time ran too: {names:?}"
    );
    // With startingDeadlineSeconds 3, the time missed 5 s before the
    // controller came back is too late to start.
    let late: Vec<String> = jobs_of(&c, "late")?
        .iter()
        .filter_map(|j| j["metadata"]["name"].as_str().map(String::from))
        .collect();
    ensure!(
        !late
            .iter()
            .any(|n| n == &format!("late-{}", m3 / 60) || n == &format!("late-{}", (m1 + 60) / 60)),
        "late started past its deadline: {late:?}"
    );
    let cj = c.get_json(&["cronjob", "outage"])?;
    ensure!(
        secs(&cj["status"]["lastScheduleTime"]) >= m3,
        "{}",
        cj["status"]
    );
    Ok(())
}

/// The pods of app `app`: (name, node, ready, being deleted).
fn app_pods(c: &Cluster, app: &str) -> Result<Vec<(String, String, bool, bool)>> {
    let list = c.get_json(&["pods", "-l", &format!("app={app}")])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                weft_lab::cluster::pod_ready(p),
                p["metadata"]["deletionTimestamp"].is_string(),
            )
        })
        .collect())
}

#[test]
fn drains_evict_through_the_api_and_keep_disruption_budgets() -> Result<()> {
    let c = up(2)?;
    // Both replicas on n1: n2 is cordoned while they start.
    c.weft(&["cordon", "n2"])?;
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: batch}
spec:
  backoffLimit: 0
  podFailurePolicy:
    rules:
    - action: Ignore
      onPodConditions: [{type: DisruptionTarget}]
  template:
    metadata: {labels: {app: batch}}
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    wait_until("both replicas ready on n1", Duration::from_secs(60), || {
        let pods = app_pods(&c, "web").ok()?;
        (pods.len() == 2 && pods.iter().all(|p| p.1 == "n1" && p.2)).then_some(())
    })?;
    wait_until("the job's pod ready on n1", Duration::from_secs(60), || {
        let pods = app_pods(&c, "batch").ok()?;
        (pods.len() == 1 && pods[0].1 == "n1" && pods[0].2).then_some(())
    })?;
    // exec by the Deployment's name: one of its two pods, named on stderr.
    let out = c.weft_output(&["exec", "deploy/web", "--", "echo", "hi"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout) == "hi\n"
            && err.contains("Found 2 pods, using pod/web-"),
        "{err}"
    );
    let pdb = wait_until("the budget's status", Duration::from_secs(20), || {
        let p = c.get_json(&["pdb", "web"]).ok()?;
        (p["status"]["disruptionsAllowed"] == 1).then_some(p)
    })?;
    ensure!(
        pdb["status"]["currentHealthy"] == 2
            && pdb["status"]["desiredHealthy"] == 1
            && pdb["status"]["expectedPods"] == 2,
        "{}",
        pdb["status"]
    );
    let (table, _) = kubectl(&c, &["get", "pdb", "web"])?;
    ensure!(
        table.contains("MIN AVAILABLE")
            && table.lines().nth(1).is_some_and(|r| {
                r.split_whitespace().take(4).collect::<Vec<_>>() == ["web", "1", "N/A", "1"]
            }),
        "{table}"
    );
    c.weft(&["uncordon", "n2"])?;

    // kubectl drain: the first eviction is allowed, the second waits
    // until the first pod's replacement is Ready on n2.
    let started = Instant::now();
    let (out, err) = kubectl(
        &c,
        &[
            "drain",
            "n1",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ],
    )?;
    ensure!(out.contains("node/n1 drained"), "{out}\n{err}");
    ensure!(
        format!("{out}{err}")
            .contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "no eviction was held back by the budget:\n{out}\n{err}"
    );
    ensure!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let pods = app_pods(&c, "web")?;
    let live: Vec<_> = pods.iter().filter(|p| !p.3).collect();
    ensure!(
        live.len() == 2 && live.iter().all(|p| p.1 == "n2"),
        "after the drain: {pods:?}"
    );
    let node = c.get_json(&["node", "n1"])?;
    ensure!(node["spec"]["unschedulable"] == true, "{}", node["spec"]);
    // The evicted pods' agent said which container it stopped, and the
    // new ones' which it started, as kubelet words it.
    let events = c.get_json(&["events"])?;
    let said = |reason: &str, message: &str| {
        events["items"].as_array().is_some_and(|es| {
            es.iter().any(|e| {
                e["involvedObject"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("web-"))
                    && e["reason"] == reason
                    && e["message"] == message
            })
        })
    };
    ensure!(
        said("Killing", "Stopping container main") && said("Started", "Started container main"),
        "{events}"
    );
    // One Started Event per start: none of these pods restarted, so none
    // has two (an agent that told the same start on every sync would).
    let mut starts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for e in events["items"].as_array().into_iter().flatten() {
        if e["reason"] == "Started" {
            *starts
                .entry(
                    e["involvedObject"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
                .or_default() += 1;
        }
    }
    ensure!(
        !starts.is_empty() && starts.values().all(|n| *n == 1),
        "Started Events per pod: {starts:?}"
    );
    // The evicted Job pod was marked DisruptionTarget before it was
    // deleted, so the Job's failure policy ignored its end: no failure
    // counted against backoffLimit 0, and a new pod runs on n2.
    wait_until("the job's new pod on n2", Duration::from_secs(60), || {
        let pods = app_pods(&c, "batch").ok()?;
        (pods.len() == 1 && pods[0].1 == "n2" && pods[0].2).then_some(())
    })?;
    let job = c.get_json(&["job", "batch"])?;
    ensure!(
        condition(&job, "Failed").is_none()
            && condition(&job, "FailureTarget").is_none()
            && job["status"]["failed"].as_i64().unwrap_or(0) == 0,
        "{}",
        job["status"]
    );

    // An eviction the budget refuses answers 429 with kube's words; one it
    // allows deletes the pod.
    c.apply(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#,
    )?;
    wait_until(
        "the stricter budget's status",
        Duration::from_secs(20),
        || {
            let p = c.get_json(&["pdb", "web"]).ok()?;
            (p["status"]["disruptionsAllowed"] == 0 && p["status"]["desiredHealthy"] == 2)
                .then_some(())
        },
    )?;
    let victim = &live[0].0;
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}","namespace":"default"}}}}"#
    );
    let path = format!("/api/v1/namespaces/default/pods/{victim}/eviction");
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), body)?;
    let refused = kubectl(
        &c,
        &[
            "create",
            "--raw",
            &path,
            "-f",
            &file.path().display().to_string(),
        ],
    );
    let why = format!("{refused:?}");
    ensure!(
        refused.is_err()
            && why.contains("TooManyRequests")
            && why.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "{why}"
    );

    // weft drain, the other way: n1 back in service, n2 drained.
    c.weft(&["uncordon", "n1"])?;
    c.apply(
        r#"apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
"#,
    )?;
    wait_until(
        "the maxUnavailable budget's status",
        Duration::from_secs(20),
        || {
            let p = c.get_json(&["pdb", "web"]).ok()?;
            (p["status"]["disruptionsAllowed"] == 1 && p["status"]["expectedPods"] == 2)
                .then_some(())
        },
    )?;
    let out = c.weft(&["drain", "n2", "--timeout", "120s"])?;
    ensure!(
        out.contains("node/n2 drained")
            && out.contains("(will retry after 5s): The disruption budget web needs 1 healthy pods and has 1 currently"),
        "{out}"
    );
    let pods = app_pods(&c, "web")?;
    let live: Vec<_> = pods.iter().filter(|p| !p.3).collect();
    ensure!(
        live.len() == 2 && live.iter().all(|p| p.1 == "n1"),
        "after weft drain: {pods:?}"
    );
    // A pod no controller would make again stops a drain unless forced.
    c.weft(&["uncordon", "n2"])?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: lonely}
spec:
  nodeName: n2
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    let refused = c.weft_output(&["drain", "n2"])?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && err.contains("--force") && err.contains("default/lonely"),
        "{err}"
    );
    let out = c.weft(&["drain", "n2", "--force"])?;
    ensure!(out.contains("node/n2 drained"), "{out}");
    Ok(())
}

#[test]
fn replication_controllers_keep_their_replicas_as_replica_sets_do() -> Result<()> {
    let c = up(1)?;
    // An old manifest: the selector comes from the template's labels.
    c.apply(
        r#"apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: [sleep, "3600"]}
"#,
    )?;
    let rc = c.get_json(&["rc", "legacy"])?;
    ensure!(rc["spec"]["selector"]["app"] == "legacy", "{}", rc["spec"]);
    ensure!(
        rc["metadata"]["labels"]["app"] == "legacy",
        "{}",
        rc["metadata"]
    );
    wait_until("two ready replicas", Duration::from_secs(60), || {
        let rc = c.get_json(&["rc", "legacy"]).ok()?;
        (rc["status"]["readyReplicas"] == 2 && rc["status"]["replicas"] == 2).then_some(())
    })?;
    let pods = app_pods(&c, "legacy")?;
    let one = c.get_json(&["pod", &pods[0].0])?;
    let owner = &one["metadata"]["ownerReferences"][0];
    ensure!(
        owner["kind"] == "ReplicationController"
            && owner["apiVersion"] == "v1"
            && owner["controller"] == true,
        "{owner}"
    );
    // A pod that goes is replaced; a scale through the scale subresource
    // (kubectl scale) is kept.
    c.weft(&["delete", "pod", &pods[0].0, "--wait=false"])?;
    kubectl(&c, &["scale", "rc", "legacy", "--replicas=3"])?;
    wait_until("three ready replicas", Duration::from_secs(60), || {
        let live: Vec<_> = app_pods(&c, "legacy")
            .ok()?
            .into_iter()
            .filter(|p| !p.3 && p.2)
            .collect();
        (live.len() == 3 && !live.iter().any(|p| p.0 == pods[0].0)).then_some(())
    })?;
    let (table, _) = kubectl(&c, &["get", "rc", "legacy"])?;
    ensure!(
        table.lines().nth(1).is_some_and(|r| {
            r.split_whitespace().take(4).collect::<Vec<_>>() == ["legacy", "3", "3", "3"]
        }),
        "{table}"
    );
    // What kube refuses: a template that does not match the selector.
    let (ok, err) = apply_refused(
        &c,
        "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: wrong}\nspec:\n  selector: {app: a}\n  template:\n    metadata: {labels: {app: b}}\n    spec:\n      containers: [{name: c, image: weft.local/busybox:1.36}]\n",
    )?;
    ensure!(
        !ok && err.contains("spec.template.metadata.labels"),
        "{err}"
    );
    kubectl(&c, &["delete", "rc", "legacy"])?;
    wait_until("the replicas to go", Duration::from_secs(30), || {
        app_pods(&c, "legacy").ok()?.is_empty().then_some(())
    })?;
    Ok(())
}

/// Processes on this machine whose cgroup path holds `needle`.
fn processes_in_cgroups_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("cgroup")).is_ok_and(|c| c.contains(needle))
        })
        .map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            format!(
                "{} {:?} in {:?}",
                e.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " "),
                cg.lines().find(|l| l.contains(needle)).unwrap_or_default()
            )
        })
        .collect()
}

#[test]
fn finished_pods_give_back_their_sandbox_and_address() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes: [{name: scratch, emptyDir: {medium: Memory}}]
  containers:
  - name: main
    image: weft.local/busybox:1.36
    volumeMounts: [{name: scratch, mountPath: /scratch}]
    command: [sh, -c, 'echo kept > /scratch/f && echo "bye from $(hostname)"']
"#,
    )?;
    // Succeeded, then its node says the sandbox is gone.
    let pod = wait_until(
        "pod done to finish and be released",
        Duration::from_secs(60),
        || {
            let p = c.get_json(&["pod", "done"]).ok()?;
            let released = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "PodReadyToStartContainers" && c["status"] == "False");
            (p["status"]["phase"] == "Succeeded" && released).then_some(p)
        },
    )?;
    // It still shows the address it had, as in Kubernetes.
    ensure!(pod["status"]["podIP"].is_string(), "{}", pod["status"]);
    let su: String = pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    ensure!(su.len() == 12, "uid {}", pod["metadata"]["uid"]);
    // Nothing of it runs or is mounted: no container, namespace, veth,
    // process or mount (its memory-backed emptyDir is gone too).
    let [records, containers, namespaces, veths] = c.node_inventory("n1")?;
    ensure!(records == ["default/done"], "records {records:?}");
    ensure!(
        containers.is_empty() && namespaces.is_empty() && veths.is_empty(),
        "left running: containers {containers:?}, namespaces {namespaces:?}, veths {veths:?}"
    );
    // (A killed process may be a zombie a moment, until its reaper runs.)
    wait_until(
        "the finished pod's processes to be gone",
        Duration::from_secs(10),
        || processes_in_cgroups_with(&su).is_empty().then_some(()),
    )
    .with_context(|| format!("still there: {:?}", processes_in_cgroups_with(&su)))?;
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter(|l| l.contains(&su))
        .map(String::from)
        .collect();
    ensure!(mounts.is_empty(), "mounts of the finished pod: {mounts:?}");
    // Its logs stay readable; exec is refused with the reason.
    let logs = c.weft(&["logs", "done"])?;
    ensure!(logs.contains("bye from done"), "logs: {logs:?}");
    let exec = c.weft_output(&["exec", "done", "--", "true"])?;
    let stderr = String::from_utf8_lossy(&exec.stderr);
    ensure!(
        !exec.status.success() && stderr.contains("completed pod"),
        "exec into a finished pod: {stderr}"
    );
    // A finished pod stays finished: a status write may not revive it.
    let (revived, why) = {
        let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
        cmd.arg("--kubeconfig").arg(&c.kubeconfig).args([
            "patch",
            "pod",
            "done",
            "--subresource=status",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ]);
        let out = c.output_in(&c.lab.underlay, cmd)?;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    ensure!(
        !revived && why.contains("status.phase") && why.contains("terminal phase"),
        "a finished pod revived by a status write: {why}"
    );
    // Nor may a write say its released sandbox is back.
    let why = kubectl_refused(
        &c,
        &[
            "patch",
            "pod",
            "done",
            "--subresource=status",
            "-p",
            r#"{"status":{"conditions":[{"type":"PodReadyToStartContainers","status":"True"}]}}"#,
        ],
    )?;
    ensure!(
        why.contains("status.conditions") && why.contains("released"),
        "{why}"
    );

    // More finished pods than the node's /24 has addresses: each gives its
    // address back, so the Job never runs out of them.
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: many}
spec:
  completions: 300
  parallelism: 25
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: ["true"]}
"#,
    )?;
    let job = wait_end(&c, "many", Duration::from_secs(400))?;
    ensure!(
        condition(&job, "Complete").is_some() && job["status"]["succeeded"] == 300,
        "{}",
        job["status"]
    );
    // Kube promises the completions, not the number of pods: a pod may be
    // started more than once (its docs say so); one extra was seen once
    // under CI's load. More than a parallelism's worth would be a bug.
    let pods = pods_of(&c, "many")?;
    ensure!((300..=325).contains(&pods.len()), "{} pods", pods.len());
    let addresses: std::collections::HashSet<&str> = pods
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .collect();
    ensure!(
        addresses.len() <= 253,
        "{} addresses for 300 pods of one /24: none was reused",
        addresses.len()
    );
    let [_, containers, namespaces, veths] = c.node_inventory("n1")?;
    ensure!(
        containers.is_empty() && namespaces.is_empty() && veths.is_empty(),
        "left running: containers {containers:?}, namespaces {namespaces:?}, veths {veths:?}"
    );

    // Deleting the finished pod removes what was left (its record, logs).
    c.weft(&["delete", "pod", "done"])?;
    wait_until("pod done's record to go", Duration::from_secs(30), || {
        let [records, ..] = c.node_inventory("n1").ok()?;
        (!records.contains(&"default/done".to_string())).then_some(())
    })?;
    Ok(())
}

/// The DaemonSet's live pods: (name, node, controller-revision-hash, ready).
fn daemon_pods(c: &Cluster, app: &str) -> Result<Vec<(String, String, String, bool)>> {
    let list = c.get_json(&["pods", "-l", &format!("app={app}")])?;
    let mut out: Vec<_> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                s(&p["spec"]["nodeName"]),
                s(&p["metadata"]["labels"]["controller-revision-hash"]),
                weft_lab::cluster::pod_ready(p),
            )
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

/// Runs `kubectl rollout status` for the DaemonSet while sampling how many
/// of its pods are ready; returns the fewest seen.
fn roll_out(c: &Cluster, ds: &str, app: &str) -> Result<usize> {
    let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args([
        "rollout",
        "status",
        &format!("ds/{ds}"),
        "--timeout=180s",
    ]);
    weft_lab::cluster::in_netns(&mut cmd, &c.lab.underlay, false)?;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut fewest = usize::MAX;
    while child.try_wait()?.is_none() {
        let ready = daemon_pods(c, app)?.iter().filter(|p| p.3).count();
        fewest = fewest.min(ready);
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("successfully rolled out"),
        "rollout status: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(fewest)
}

#[test]
fn daemonsets_follow_their_nodes_roll_updates_and_undo_them() -> Result<()> {
    let mut c = up(3)?;
    // Refused as kube refuses them, each naming its field.
    let (ok, why) = apply_refused(
        &c,
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: bad}
spec:
  selector: {matchLabels: {app: bad}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 0}}
  template:
    metadata: {labels: {app: bad}}
    spec:
      restartPolicy: Never
      containers: [{name: main, image: weft.local/busybox:1.36}]
"#,
    )?;
    ensure!(
        !ok && why.contains("spec.template.spec.restartPolicy")
            && why.contains("spec.updateStrategy.rollingUpdate.maxUnavailable"),
        "{why}"
    );
    // n1 cordoned and n3 tainted before: a daemon pod goes to a cordoned
    // node, not to one whose NoSchedule taint it does not tolerate.
    c.weft(&["cordon", "n1"])?;
    kubectl(&c, &["taint", "node", "n3", "gpu=yes:NoSchedule"])?;
    c.apply(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, annotations: {kubernetes.io/change-cause: first}}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        env: [{name: V, value: "1"}]
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"#,
    )?;
    let pods = wait_until("a daemon pod on n1 and n2", Duration::from_secs(60), || {
        let p = daemon_pods(&c, "agent").ok()?;
        (p.len() == 2 && p.iter().all(|p| p.3)).then_some(p)
    })?;
    ensure!(
        pods[0].1 == "n1" && pods[1].1 == "n2",
        "daemon pods on {pods:?}"
    );
    let ds = c.get_json(&["ds", "agent"])?;
    ensure!(
        ds["status"]["desiredNumberScheduled"] == 2 && ds["status"]["numberReady"] == 2,
        "{}",
        ds["status"]
    );
    // The probe is stored with kube's defaults for what it left out.
    let probe = &ds["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
    ensure!(
        probe["periodSeconds"] == 1
            && probe["timeoutSeconds"] == 1
            && probe["successThreshold"] == 1
            && probe["failureThreshold"] == 3,
        "{probe}"
    );
    // The taint goes: n3 gets its pod.
    kubectl(&c, &["taint", "node", "n3", "gpu=yes:NoSchedule-"])?;
    wait_until("a daemon pod on n3", Duration::from_secs(30), || {
        let p = daemon_pods(&c, "agent").ok()?;
        (p.len() == 3 && p.iter().all(|p| p.3)).then_some(())
    })?;
    c.weft(&["uncordon", "n1"])?;
    // A NoSchedule taint that comes later leaves the pod running; the node
    // no longer counts as one that should run it (misscheduled), as kube.
    kubectl(&c, &["taint", "node", "n3", "gpu=yes:NoSchedule"])?;
    wait_until("n3 misscheduled", Duration::from_secs(30), || {
        let ds = c.get_json(&["ds", "agent"]).ok()?;
        (ds["status"]["desiredNumberScheduled"] == 2 && ds["status"]["numberMisscheduled"] == 1)
            .then_some(())
    })?;
    ensure!(
        daemon_pods(&c, "agent")?.len() == 3,
        "{:?}",
        daemon_pods(&c, "agent")?
    );
    kubectl(&c, &["taint", "node", "n3", "gpu=yes:NoSchedule-"])?;
    wait_until("n3 counted again", Duration::from_secs(30), || {
        let ds = c.get_json(&["ds", "agent"]).ok()?;
        (ds["status"]["desiredNumberScheduled"] == 3
            && ds["status"]["numberMisscheduled"].as_i64().unwrap_or(0) == 0)
            .then_some(())
    })?;

    // A node that leaves and joins again: its pod goes with the node and
    // a new one comes within seconds of the node being Ready.
    c.kill_agent("n3")?;
    c.weft(&["delete", "node", "n3"])?;
    wait_until("n3's daemon pod to go", Duration::from_secs(60), || {
        let p = daemon_pods(&c, "agent").ok()?;
        (p.len() == 2).then_some(())
    })?;
    c.start_agent("n3")?;
    let started = Instant::now();
    wait_until("n3 Ready again", Duration::from_secs(60), || {
        c.node_ready("n3").ok()?.then_some(())
    })?;
    let ready_at = started.elapsed();
    wait_until(
        "a daemon pod on the new n3",
        Duration::from_secs(30),
        || {
            let p = daemon_pods(&c, "agent").ok()?;
            (p.len() == 3 && p.iter().all(|p| p.3)).then_some(())
        },
    )?;
    eprintln!(
        "n3 Ready after {ready_at:?}, its daemon pod ready after {:?}",
        started.elapsed()
    );
    let first_hash = daemon_pods(&c, "agent")?[0].2.clone();

    // A rolling update, one node at a time (maxUnavailable 1).
    kubectl(&c, &["set", "env", "ds/agent", "V=2"])?;
    let fewest = roll_out(&c, "agent", "agent")?;
    let pods = daemon_pods(&c, "agent")?;
    ensure!(pods.len() == 3, "{pods:?}");
    let second_hash = pods[0].2.clone();
    ensure!(
        second_hash != first_hash && pods.iter().all(|p| p.2 == second_hash),
        "after the update: {pods:?}"
    );
    ensure!(
        fewest >= 2,
        "{fewest} of 3 pods ready at one point: more than maxUnavailable"
    );
    let (history, _) = kubectl(&c, &["rollout", "history", "ds/agent"])?;
    let rows: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(
        rows.contains(&vec!["1", "first"]) && rows.iter().any(|r| r.first() == Some(&"2")),
        "rollout history:\n{history}"
    );
    let (revisions, _) = kubectl(&c, &["get", "controllerrevisions"])?;
    ensure!(
        revisions.contains("daemonset.apps/agent") && revisions.lines().count() == 3,
        "{revisions}"
    );

    // Undo: the first template comes back as revision 3.
    kubectl(&c, &["rollout", "undo", "ds/agent"])?;
    roll_out(&c, "agent", "agent")?;
    let pods = daemon_pods(&c, "agent")?;
    ensure!(
        pods.len() == 3 && pods.iter().all(|p| p.2 == first_hash),
        "after the undo: {pods:?}"
    );
    let (history, _) = kubectl(&c, &["rollout", "history", "ds/agent"])?;
    let numbers: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.parse::<u32>().is_ok())
        .collect();
    ensure!(
        numbers == ["2", "3"],
        "rollout history after undo:\n{history}"
    );
    let (env, _) = kubectl(
        &c,
        &[
            "get",
            "ds",
            "agent",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[0].value}",
        ],
    )?;
    ensure!(env == "1", "the template after undo has V={env}");
    // An undo to the revision it already has changes nothing, and kubectl
    // says so (it compares the revision's data with the live template).
    let (out, _) = kubectl(&c, &["rollout", "undo", "ds/agent", "--to-revision=3"])?;
    ensure!(
        out.contains("skipped rollback (current template already matches revision 3)"),
        "{out}"
    );
    let out = c.weft(&["rollout", "undo", "daemonset/agent", "--to-revision", "3"])?;
    ensure!(
        out.contains("skipped rollback (current template already matches revision 3)"),
        "{out}"
    );

    // Surge: the new pod starts beside the old one, so all three nodes
    // keep a ready pod throughout.
    kubectl(
        &c,
        &[
            "patch",
            "ds",
            "agent",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#,
        ],
    )?;
    kubectl(&c, &["set", "env", "ds/agent", "V=3"])?;
    let fewest = roll_out(&c, "agent", "agent")?;
    ensure!(
        fewest >= 3,
        "{fewest} of 3 pods ready at one point during a surge update"
    );

    // OnDelete: nothing changes until a pod is deleted.
    kubectl(
        &c,
        &[
            "patch",
            "ds",
            "agent",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/updateStrategy","value":{"type":"OnDelete"}}]"#,
        ],
    )?;
    let before = daemon_pods(&c, "agent")?;
    kubectl(&c, &["set", "env", "ds/agent", "V=4"])?;
    std::thread::sleep(Duration::from_secs(3));
    let after = daemon_pods(&c, "agent")?;
    ensure!(
        before == after,
        "OnDelete replaced pods: {before:?} -> {after:?}"
    );
    c.weft(&["delete", "pod", &after[0].0])?;
    let now = wait_until("n1's replacement", Duration::from_secs(60), || {
        let p = daemon_pods(&c, "agent").ok()?;
        (p.len() == 3 && p.iter().all(|p| p.3) && p[0].0 != after[0].0).then_some(p)
    })?;
    ensure!(
        now[0].2 != after[0].2 && now[1] == after[1] && now[2] == after[2],
        "OnDelete: {after:?} -> {now:?}"
    );

    // Deleted with --cascade=orphan and made again: the new DaemonSet
    // adopts the three pods (no second pod on any node) and its history.
    let kept: Vec<String> = daemon_pods(&c, "agent")?.into_iter().map(|p| p.0).collect();
    let mut again = c.get_json(&["ds", "agent"])?;
    kubectl(&c, &["delete", "ds", "agent", "--cascade=orphan"])?;
    wait_until("the DaemonSet to go", Duration::from_secs(30), || {
        c.get_json(&["ds"]).ok()?["items"]
            .as_array()?
            .is_empty()
            .then_some(())
    })?;
    if let Some(m) = again["metadata"].as_object_mut() {
        m.retain(|k, _| ["name", "namespace", "labels", "annotations"].contains(&k.as_str()));
    }
    if let Some(o) = again.as_object_mut() {
        o.remove("status");
    }
    let (ok, why) = apply_refused(&c, &again.to_string())?;
    ensure!(ok, "{why}");
    wait_until("the pods adopted", Duration::from_secs(30), || {
        let ds = c.get_json(&["ds", "agent"]).ok()?;
        (ds["status"]["numberReady"] == 3 && ds["status"]["currentNumberScheduled"] == 3)
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    let now: Vec<String> = daemon_pods(&c, "agent")?.into_iter().map(|p| p.0).collect();
    ensure!(now == kept, "after re-creation: {now:?} (before {kept:?})");

    // kubectl's table.
    let (table, _) = kubectl(&c, &["get", "ds", "agent"])?;
    let header = table.lines().next().unwrap_or_default();
    ensure!(
        header.split_whitespace().collect::<Vec<_>>()
            == [
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE",
                "SELECTOR",
                "AGE"
            ],
        "{table}"
    );
    // Deleting the DaemonSet takes its pods and history with it.
    c.weft(&["delete", "ds", "agent"])?;
    wait_until(
        "the pods and revisions to go",
        Duration::from_secs(60),
        || {
            let pods = daemon_pods(&c, "agent").ok()?;
            let revs = c.get_json(&["controllerrevisions"]).ok()?;
            (pods.is_empty() && revs["items"].as_array().is_some_and(Vec::is_empty)).then_some(())
        },
    )?;
    Ok(())
}

/// The `V` env values of the Deployment's live pods, sorted.
fn web_versions(c: &Cluster) -> Result<Vec<String>> {
    let list = c.get_json(&["pods", "-l", "app=web"])?;
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .map(|p| {
            p["spec"]["containers"][0]["env"][0]["value"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The rows of a `rollout history` listing: (revision, change-cause).
fn history_rows(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next()?;
            n.parse::<u32>().ok()?;
            Some((n.to_string(), w.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

fn rows(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
        .collect()
}

#[test]
fn deployments_roll_back_pause_resume_and_restart_with_kubectl_and_weft() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {kubernetes.io/change-cause: v1}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        env: [{name: V, value: "1"}]
        command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
        readinessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"#,
    )?;
    let out = c.weft(&["rollout", "status", "deployment/web", "--timeout", "120s"])?;
    ensure!(
        out.contains("deployment \"web\" successfully rolled out"),
        "{out}"
    );
    kubectl(&c, &["set", "env", "deploy/web", "V=2"])?;
    kubectl(
        &c,
        &[
            "annotate",
            "deploy/web",
            "kubernetes.io/change-cause=v2",
            "--overwrite",
        ],
    )?;
    kubectl(&c, &["rollout", "status", "deploy/web", "--timeout=120s"])?;
    ensure!(web_versions(&c)? == ["2", "2"], "{:?}", web_versions(&c)?);
    wait_until("v2 in the history", Duration::from_secs(20), || {
        let (h, _) = kubectl(&c, &["rollout", "history", "deploy/web"]).ok()?;
        (history_rows(&h) == rows(&[("1", "v1"), ("2", "v2")])).then_some(())
    })?;
    let weft_history = c.weft(&["rollout", "history", "deployment/web"])?;
    ensure!(
        history_rows(&weft_history) == rows(&[("1", "v1"), ("2", "v2")]),
        "{weft_history}"
    );

    // kubectl's undo: the first template, renumbered 3, with its cause.
    kubectl(&c, &["rollout", "undo", "deploy/web"])?;
    kubectl(&c, &["rollout", "status", "deploy/web", "--timeout=120s"])?;
    ensure!(web_versions(&c)? == ["1", "1"], "{:?}", web_versions(&c)?);
    wait_until("revision 3", Duration::from_secs(20), || {
        let (h, _) = kubectl(&c, &["rollout", "history", "deploy/web"]).ok()?;
        (history_rows(&h) == rows(&[("2", "v2"), ("3", "v1")])).then_some(())
    })
    .with_context(|| {
        format!(
            "history: {:?}\nreplica sets: {}\ndeployment: {}",
            kubectl(&c, &["rollout", "history", "deploy/web"]),
            c.get_json(&["rs"])
                .map(|l| l["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| format!(
                        "{} {} {}",
                        r["metadata"]["name"], r["metadata"]["annotations"], r["spec"]["template"]
                    ))
                    .collect::<Vec<_>>()
                    .join("\n"))
                .unwrap_or_default(),
            c.get_json(&["deploy", "web"])
                .map(|d| d["spec"]["template"].to_string())
                .unwrap_or_default()
        )
    })?;
    let (d, _) = kubectl(&c, &["get", "deploy", "web", "-o", "json"])?;
    let d: Value = serde_json::from_str(&d)?;
    ensure!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3",
        "{}",
        d["metadata"]
    );
    // weft's undo to a named revision.
    let out = c.weft(&["rollout", "undo", "deployment/web", "--to-revision", "2"])?;
    ensure!(out.contains("deployment.apps/web rolled back"), "{out}");
    c.weft(&["rollout", "status", "deployment/web", "--timeout", "120s"])?;
    ensure!(web_versions(&c)? == ["2", "2"], "{:?}", web_versions(&c)?);
    let (shown, _) = kubectl(&c, &["rollout", "history", "deploy/web", "--revision=4"])?;
    ensure!(
        shown
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["V:", "2"]),
        "revision 4's template:\n{shown}"
    );
    let err = c.weft_output(&["rollout", "undo", "deployment/web", "--to-revision", "9"])?;
    ensure!(
        !err.status.success()
            && String::from_utf8_lossy(&err.stderr).contains("unable to find specified revision 9"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );

    // Paused: a template change waits, a scale does not.
    kubectl(&c, &["rollout", "pause", "deploy/web"])?;
    kubectl(&c, &["set", "env", "deploy/web", "V=5"])?;
    kubectl(&c, &["scale", "deploy/web", "--replicas=3"])?;
    wait_until("a scale while paused", Duration::from_secs(60), || {
        (web_versions(&c).ok()? == ["2", "2", "2"]).then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        web_versions(&c)? == ["2", "2", "2"],
        "rolled out while paused"
    );
    let d = c.get_json(&["deploy", "web"])?;
    ensure!(
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused"),
        "{}",
        d["status"]
    );
    let again = c.weft_output(&["rollout", "pause", "deployment/web"])?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("is paused"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let out = c.weft(&["rollout", "resume", "deployment/web"])?;
    ensure!(out.contains("deployment.apps/web resumed"), "{out}");
    c.weft(&["rollout", "status", "deployment/web", "--timeout", "120s"])?;
    ensure!(
        web_versions(&c)? == ["5", "5", "5"],
        "{:?}",
        web_versions(&c)?
    );

    // Restart: new pods, same template otherwise.
    let before: Vec<String> = c.get_json(&["pods", "-l", "app=web"])?["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    let out = c.weft(&["rollout", "restart", "deployment/web"])?;
    ensure!(out.contains("deployment.apps/web restarted"), "{out}");
    kubectl(&c, &["rollout", "status", "deploy/web", "--timeout=120s"])?;
    let after = c.get_json(&["pods", "-l", "app=web"])?;
    let names: Vec<&str> = after["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    ensure!(
        names.len() == 3 && names.iter().all(|n| !before.iter().any(|b| b == n)),
        "after a restart: {names:?} (before {before:?})"
    );
    ensure!(
        web_versions(&c)? == ["5", "5", "5"],
        "{:?}",
        web_versions(&c)?
    );

    // A rollout that cannot progress (its image does not exist) is
    // reported once progressDeadlineSeconds pass, and kubectl stops.
    kubectl(
        &c,
        &[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"progressDeadlineSeconds":3}}"#,
        ],
    )?;
    kubectl(
        &c,
        &["set", "image", "deploy/web", "main=weft.local/nope:1"],
    )?;
    let mut cmd = std::process::Command::new("/usr/lib/google-cloud-sdk/bin/kubectl.1.32");
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args([
        "rollout",
        "status",
        "deploy/web",
        "--timeout=60s",
    ]);
    let t = Instant::now();
    let out = c.output_in(&c.lab.underlay, cmd)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("exceeded its progress deadline"),
        "kubectl rollout status after {:?}: {stderr}",
        t.elapsed()
    );
    let d = c.get_json(&["deploy", "web"])?;
    ensure!(
        d["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing"
                && c["status"] == "False"
                && c["reason"] == "ProgressDeadlineExceeded"),
        "{}",
        d["status"]
    );
    // The old pods keep serving meanwhile (maxUnavailable 25% of 3 is 0).
    let pods = app_pods(&c, "web")?;
    ensure!(pods.iter().filter(|p| p.2).count() == 3, "{pods:?}");
    Ok(())
}

/// The StatefulSet's pods by name: (node, podIP, ready, revision label).
fn set_pods(
    c: &Cluster,
    app: &str,
) -> Result<std::collections::BTreeMap<String, (String, String, bool, String)>> {
    let list = c.get_json(&["pods", "-l", &format!("app={app}")])?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .map(|p| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&p["metadata"]["name"]),
                (
                    s(&p["spec"]["nodeName"]),
                    s(&p["status"]["podIP"]),
                    weft_lab::cluster::pod_ready(p),
                    s(&p["metadata"]["labels"]["controller-revision-hash"]),
                ),
            )
        })
        .collect())
}

fn claim_names(c: &Cluster) -> Result<Vec<String>> {
    let list = c.get_json(&["pvc"])?;
    let mut out: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    out.sort();
    Ok(out)
}

#[test]
fn statefulsets_keep_names_storage_and_order() -> Result<()> {
    let c = up(2)?;
    let (ok, why) = apply_refused(
        &c,
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: bad}
spec:
  serviceName: bad
  podManagementPolicy: Random
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: bad}}
    spec: {containers: [{name: main, image: weft.local/busybox:1.36}]}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce]}
"#,
    )?;
    ensure!(
        !ok && why.contains("spec.podManagementPolicy")
            && why.contains("spec.volumeClaimTemplates[0].spec.resources[storage]"),
        "{why}"
    );
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 80}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        env: [{name: V, value: "1"}]
        command: [sh, -c, 'test -f /data/id || hostname > /data/id; trap "exit 0" TERM; while true; do sleep 1; done']
        volumeMounts: [{name: data, mountPath: /data}]
        readinessProbe: {exec: {command: [test, -f, /data/id]}, periodSeconds: 1}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Mi}}}
"#,
    )?;
    // In order: each pod is made once the one before is Ready.
    let mut seen: Vec<String> = Vec::new();
    let pods = wait_until("three Ready pods", Duration::from_secs(120), || {
        let pods = set_pods(&c, "db").ok()?;
        for name in pods.keys() {
            if !seen.contains(name) {
                seen.push(name.clone());
            }
        }
        let ready_before = |n: usize| pods.get(&format!("db-{n}")).is_some_and(|p| p.2);
        // A pod never exists while the one before it is not Ready.
        for n in 1..3 {
            if pods.contains_key(&format!("db-{n}")) && !ready_before(n - 1) {
                return Some(Err(format!(
                    "db-{n} exists while db-{} is not Ready: {pods:?}",
                    n - 1
                )));
            }
        }
        (pods.len() == 3 && pods.values().all(|p| p.2)).then_some(Ok(pods))
    })?
    .map_err(anyhow::Error::msg)?;
    ensure!(
        seen == ["db-0", "db-1", "db-2"],
        "pods appeared as {seen:?}"
    );
    ensure!(
        claim_names(&c)? == ["data-db-0", "data-db-1", "data-db-2"],
        "{:?}",
        claim_names(&c)?
    );
    // Each pod's DNS name resolves to it, through the headless Service.
    let (code, out) = c.exec(
        "default",
        "db-0",
        &["nslookup", "db-1.db.default.svc.cluster.local"],
    )?;
    let ip1 = &pods["db-1"].1;
    ensure!(
        code == 0 && out.contains(ip1.as_str()),
        "db-1 ({ip1}): {out}"
    );
    let (_, host) = c.exec("default", "db-2", &["hostname"])?;
    ensure!(host.trim() == "db-2", "hostname {host}");

    // A deleted pod comes back with its name, its node and its data.
    c.exec("default", "db-1", &["sh", "-c", "echo kept-7 > /data/m"])?;
    let (node1, _, _, _) = pods["db-1"].clone();
    c.weft(&["delete", "pod", "db-1"])?;
    let back = wait_until("db-1 back", Duration::from_secs(90), || {
        let pods = set_pods(&c, "db").ok()?;
        let p = pods.get("db-1")?.clone();
        p.2.then_some(p)
    })?;
    ensure!(
        back.0 == node1,
        "db-1 came back on {} (was {node1})",
        back.0
    );
    let (_, kept) = c.exec("default", "db-1", &["cat", "/data/m", "/data/id"])?;
    ensure!(
        kept.contains("kept-7") && kept.contains("db-1"),
        "db-1's data: {kept}"
    );

    // Scale down: the highest ordinal goes first; the claims stay.
    kubectl(&c, &["scale", "sts/db", "--replicas=1"])?;
    let mut order = Vec::new();
    wait_until("one pod left", Duration::from_secs(90), || {
        let pods = set_pods(&c, "db").ok()?;
        for n in ["db-2", "db-1"] {
            if !pods.contains_key(n) && !order.contains(&n) {
                order.push(n);
            }
        }
        (pods.len() == 1).then_some(())
    })?;
    ensure!(
        order == ["db-2", "db-1"],
        "scaled down in the order {order:?}"
    );
    ensure!(claim_names(&c)?.len() == 3, "{:?}", claim_names(&c)?);
    // Back up: db-1 finds its data again.
    kubectl(&c, &["scale", "sts/db", "--replicas=3"])?;
    wait_until("three Ready pods again", Duration::from_secs(120), || {
        let pods = set_pods(&c, "db").ok()?;
        (pods.len() == 3 && pods.values().all(|p| p.2)).then_some(())
    })?;
    let (_, kept) = c.exec("default", "db-1", &["cat", "/data/m"])?;
    ensure!(
        kept.contains("kept-7"),
        "db-1's data after the scale: {kept}"
    );

    // A rolling update, highest ordinal first.
    kubectl(&c, &["set", "env", "sts/db", "V=2"])?;
    let (status, _) = kubectl(&c, &["rollout", "status", "sts/db", "--timeout=180s"])?;
    ensure!(
        status.contains("partitioned roll out complete: 3 new pods"),
        "{status}"
    );
    let pods = set_pods(&c, "db")?;
    let rev = pods["db-0"].3.clone();
    ensure!(
        rev.starts_with("db-") && pods.values().all(|p| p.3 == rev),
        "after the update: {pods:?}"
    );
    let sts = c.get_json(&["sts", "db"])?;
    ensure!(
        sts["status"]["currentRevision"] == rev.as_str()
            && sts["status"]["updateRevision"] == rev.as_str(),
        "{}",
        sts["status"]
    );
    // A partition: only the ordinals at or above it move.
    kubectl(
        &c,
        &[
            "patch",
            "sts",
            "db",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":2}}}}"#,
        ],
    )?;
    kubectl(&c, &["set", "env", "sts/db", "V=3"])?;
    let out = c.weft(&["rollout", "status", "statefulset/db", "--timeout", "180s"])?;
    ensure!(
        out.contains("partitioned roll out complete: 1 new pods"),
        "{out}"
    );
    let pods = set_pods(&c, "db")?;
    ensure!(
        pods["db-2"].3 != rev && pods["db-1"].3 == rev && pods["db-0"].3 == rev,
        "with partition 2: {pods:?}"
    );
    // Undo goes back to V=2's template for the partition's pods.
    kubectl(&c, &["rollout", "undo", "sts/db"])?;
    wait_until(
        "db-2 back at the earlier revision",
        Duration::from_secs(120),
        || {
            let pods = set_pods(&c, "db").ok()?;
            (pods.len() == 3 && pods.values().all(|p| p.2 && p.3 == rev)).then_some(())
        },
    )?;

    // whenScaled: Delete removes the claims of the ordinals scaled away.
    kubectl(
        &c,
        &[
            "patch",
            "sts",
            "db",
            "-p",
            r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#,
        ],
    )?;
    kubectl(&c, &["scale", "sts/db", "--replicas=1"])?;
    wait_until(
        "the scaled-away claims to go",
        Duration::from_secs(90),
        || (claim_names(&c).ok()? == ["data-db-0"]).then_some(()),
    )
    .with_context(|| format!("claims: {:?}", claim_names(&c)))?;
    let (table, _) = kubectl(&c, &["get", "sts", "db"])?;
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure!(
        rows.first().is_some_and(|h| h == &["NAME", "READY", "AGE"])
            && rows.get(1).is_some_and(|r| r[..2] == ["db", "1/1"]),
        "{table}"
    );
    // Deleted with --cascade=orphan and made again: the new set adopts the
    // pod (the same uid, now its own) and the revisions left behind.
    let before = c.get_json(&["pod", "db-0"])?;
    let mut again = c.get_json(&["sts", "db"])?;
    kubectl(&c, &["delete", "sts", "db", "--cascade=orphan"])?;
    wait_until("the set to go", Duration::from_secs(30), || {
        c.get_json(&["sts"]).ok()?["items"]
            .as_array()?
            .is_empty()
            .then_some(())
    })?;
    let orphan = c.get_json(&["pod", "db-0"])?;
    ensure!(
        orphan["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{}",
        orphan["metadata"]
    );
    if let Some(m) = again["metadata"].as_object_mut() {
        m.retain(|k, _| ["name", "namespace", "labels", "annotations"].contains(&k.as_str()));
    }
    if let Some(o) = again.as_object_mut() {
        o.remove("status");
    }
    let (ok, why) = apply_refused(&c, &again.to_string())?;
    ensure!(ok, "{why}");
    let sts_uid = c.get_json(&["sts", "db"])?["metadata"]["uid"].clone();
    wait_until("db-0 adopted", Duration::from_secs(30), || {
        let p = c.get_json(&["pod", "db-0"]).ok()?;
        (p["metadata"]["uid"] == before["metadata"]["uid"]
            && p["metadata"]["ownerReferences"][0]["uid"] == sts_uid)
            .then_some(())
    })
    .with_context(|| {
        let log = c.controller_log();
        let panic: Vec<&str> = log
            .lines()
            .skip_while(|l| !l.contains("panicked"))
            .take(8)
            .collect();
        format!("controller panic, if any:\n{}", panic.join("\n"))
    })?;
    wait_until("the set's status", Duration::from_secs(30), || {
        let s = c.get_json(&["sts", "db"]).ok()?;
        (s["status"]["readyReplicas"] == 1).then_some(())
    })?;
    // whenDeleted: Delete: the set owns its claims, which go with it.
    kubectl(
        &c,
        &[
            "patch",
            "sts",
            "db",
            "-p",
            r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenDeleted":"Delete"}}}"#,
        ],
    )?;
    wait_until("the set to own its claim", Duration::from_secs(30), || {
        let pvc = c.get_json(&["pvc", "data-db-0"]).ok()?;
        pvc["metadata"]["ownerReferences"]
            .as_array()?
            .iter()
            .any(|r| r["kind"] == "StatefulSet" && r["name"] == "db")
            .then_some(())
    })?;
    c.weft(&["delete", "sts", "db"])?;
    wait_until("the pods and claims to go", Duration::from_secs(90), || {
        (set_pods(&c, "db").ok()?.is_empty() && claim_names(&c).ok()?.is_empty()).then_some(())
    })
    .with_context(|| format!("claims: {:?}", claim_names(&c)))?;
    Ok(())
}

#[test]
fn jobs_keep_max_failed_indexes_pod_replacement_and_managed_by() -> Result<()> {
    let c = up(1)?;
    c.apply(
        r#"apiVersion: batch/v1
kind: Job
metadata: {name: capped}
spec:
  completionMode: Indexed
  completions: 4
  parallelism: 4
  backoffLimitPerIndex: 0
  maxFailedIndexes: 1
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: weft.local/busybox:1.36
        command: [sh, -c, 'case $JOB_COMPLETION_INDEX in 1|2) exit 1;; 0) exit 0;; *) trap "exit 0" TERM; sleep 60 & wait;; esac']
---
apiVersion: batch/v1
kind: Job
metadata: {name: elsewhere}
spec:
  managedBy: example.com/another-controller
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: weft.local/busybox:1.36, command: ["true"]}
---
apiVersion: batch/v1
kind: Job
metadata: {name: replaced}
spec:
  podReplacementPolicy: Failed
  backoffLimit: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 5
      containers:
      - name: main
        image: weft.local/busybox:1.36
        command: [sh, -c, 'trap "sleep 2; exit 1" TERM; while true; do sleep 1; done']
"#,
    )?;
    // Two failed indexes are more than maxFailedIndexes allows: the Job
    // fails at once, its running index stopped.
    let job = wait_end(&c, "capped", Duration::from_secs(90))?;
    let failed = condition(&job, "Failed").unwrap_or_default();
    ensure!(
        failed["reason"] == "MaxFailedIndexesExceeded",
        "{}",
        job["status"]
    );
    // (Index 3, stopped as the Job failed, ends Failed too: kube's
    // isIndexFailed counts it, as here.)
    ensure!(
        job["status"]["failedIndexes"] == "1,2" || job["status"]["failedIndexes"] == "1-3",
        "{}",
        job["status"]
    );
    ensure!(
        job["status"]["completedIndexes"] == "0",
        "{}",
        job["status"]
    );

    // podReplacementPolicy Failed: the replacement waits until the deleted
    // pod has stopped for good, so the two never run at once.
    let first = wait_until("replaced's pod running", Duration::from_secs(60), || {
        let pods = pods_of(&c, "replaced").ok()?;
        let p = pods.first()?.clone();
        (pods.len() == 1 && p["status"]["phase"] == "Running").then_some(p)
    })?;
    let first_name = first["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    c.weft(&["delete", "pod", &first_name, "--wait=false"])?;
    let deleted = Instant::now();
    let second = wait_until("a replacement", Duration::from_secs(60), || {
        let pods = pods_of(&c, "replaced").ok()?;
        // Still running its stop (not Failed yet, not gone).
        let old_still_there = pods.iter().any(|p| {
            p["metadata"]["name"] == first_name.as_str()
                && p["status"]["phase"] != "Failed"
                && p["status"]["phase"] != "Succeeded"
        });
        let others: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["name"] != first_name.as_str())
            .collect();
        match (old_still_there, others.first()) {
            (true, Some(_)) => Some(Err(format!(
                "a replacement while the deleted pod is still stopping: {:?}",
                pods.iter()
                    .map(|p| &p["metadata"]["name"])
                    .collect::<Vec<_>>()
            ))),
            (false, Some(p)) => Some(Ok((*p).clone())),
            _ => None,
        }
    })?
    .map_err(anyhow::Error::msg)?;
    ensure!(
        deleted.elapsed() >= Duration::from_secs(2),
        "replaced after {:?}, before the old pod's 2 s stop",
        deleted.elapsed()
    );
    ensure!(second["metadata"]["name"] != first_name.as_str());

    // managedBy another controller: Weft leaves the Job alone.
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        pods_of(&c, "elsewhere")?.is_empty(),
        "pods made for a Job managed elsewhere"
    );
    let job = c.get_json(&["job", "elsewhere"])?;
    ensure!(
        job["status"]
            .as_object()
            .is_none_or(serde_json::Map::is_empty),
        "{}",
        job["status"]
    );
    Ok(())
}

#[test]
fn no_execute_taints_evict_what_does_not_tolerate_them() -> Result<()> {
    let c = up(1)?;
    let pod = |name: &str, tolerations: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  tolerations: {tolerations}
  containers:
  - name: main
    image: weft.local/busybox:1.36
    command: [sh, -c, 'trap "exit 0" TERM; while true; do sleep 1; done']
---
"#
        )
    };
    c.apply(&format!(
        "{}{}{}",
        pod("victim", "[]"),
        pod(
            "patient",
            r#"[{key: evict, operator: Exists, effect: NoExecute, tolerationSeconds: 4}]"#
        ),
        pod(
            "stays",
            r#"[{key: evict, operator: Exists, effect: NoExecute}]"#
        ),
    ))?;
    wait_until("three running pods", Duration::from_secs(60), || {
        let list = c.get_json(&["pods"]).ok()?;
        let items = list["items"].as_array()?;
        (items.len() == 3 && items.iter().all(weft_lab::cluster::pod_ready)).then_some(())
    })?;
    kubectl(&c, &["taint", "node", "n1", "evict=1:NoExecute"])?;
    let tainted = Instant::now();
    let node = c.get_json(&["node", "n1"])?;
    ensure!(
        node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["key"] == "evict" && t["timeAdded"].is_string()),
        "no timeAdded: {}",
        node["spec"]
    );
    let gone = |name: &str| {
        c.get_json(&["pods"]).ok().is_some_and(|l| {
            !l["items"].as_array().into_iter().flatten().any(|p| {
                p["metadata"]["name"] == name && !p["metadata"]["deletionTimestamp"].is_string()
            })
        })
    };
    wait_until("victim evicted", Duration::from_secs(20), || {
        gone("victim").then_some(())
    })?;
    ensure!(!gone("patient"), "patient evicted before its 4 s");
    wait_until("patient evicted", Duration::from_secs(30), || {
        gone("patient").then_some(())
    })?;
    // Counted from the taint's timeAdded, which is in whole seconds (as
    // kube's): up to a second before the taint request returned.
    let added = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == "evict")
        .and_then(|t| t["timeAdded"].as_str())
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .context("the taint's timeAdded")?;
    ensure!(
        std::time::SystemTime::now() >= added + Duration::from_secs(4),
        "patient evicted {:?} after the taint's timeAdded ({:?} after the request)",
        std::time::SystemTime::now().duration_since(added),
        tainted.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        !gone("stays"),
        "a pod tolerating the taint for good was evicted"
    );
    ensure!(
        event_reasons_of(&c, "Pod", "victim")?.contains(&"TaintManagerEviction".to_string()),
        "{:?}",
        event_reasons_of(&c, "Pod", "victim")?
    );
    Ok(())
}
