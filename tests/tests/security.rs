//! The security context, observed from inside real runc containers in
//! the lab: every field Weft honours changes what the container's own
//! process sees in /proc/self/status and can do, and what it cannot honour
//! fails the pod with the reason.

use std::time::{Duration, Instant};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use weft_agent::{
    runtime::busybox::BUSYBOX_IMAGE,
    sandbox::{Sandbox, SandboxError},
};
use weft_lab::topology::{Lab, LabSpec};

const TIMEOUT: Duration = Duration::from_secs(180);

/// What the container reports about itself, then it sleeps.
const REPORT: &str = "grep -E '^(Uid|Gid|Groups|CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; \
    (touch /probe 2>/dev/null && echo root=rw) || echo root=ro; \
    (unshare -U true 2>/dev/null && echo userns=ok) || echo userns=denied; \
    (mkdir /tmp/d 2>/dev/null && echo mkdir=ok) || echo mkdir=denied; \
    echo pid1=$(cat /proc/1/comm); echo ipc=$(readlink /proc/self/ns/ipc); \
    echo devices=$(ls /dev | wc -l); \
    echo port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); \
    echo done; sleep 600";

fn pod(name: &str, seed: u32, spec: serde_json::Value) -> Pod {
    let mut spec = spec;
    let c = serde_json::json!({"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", REPORT]});
    let mut container = c;
    if let Some(sc) = spec
        .get_mut("containerSecurityContext")
        .map(serde_json::Value::take)
    {
        container["securityContext"] = sc;
    }
    spec.as_object_mut()
        .unwrap()
        .remove("containerSecurityContext");
    spec["containers"] = serde_json::json!([container]);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{seed:08x}-5ec0-4000-8000-{:012x}", std::process::id())},
        "spec": spec,
    }))
    .expect("valid pod")
}

/// Runs the pod and returns the container's report as key → value.
async fn report(sb: &Sandbox, pod: &Pod) -> Result<std::collections::BTreeMap<String, String>> {
    let rec = sb.create_pod(pod, sb.free_ip()?).await?;
    let log = sb.log_path(&rec.uid, "main", 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.contains(" done") {
            break t;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no report from {}: {t}",
            rec.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // CRI lines: time stream tag text.
    let mut out = std::collections::BTreeMap::new();
    for l in text.lines() {
        let Some(msg) = l.splitn(4, ' ').nth(3) else {
            continue;
        };
        if let Some((k, v)) = msg.split_once(':').filter(|(k, _)| !k.contains('=')) {
            out.insert(
                k.trim().to_string(),
                v.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        } else if let Some((k, v)) = msg.split_once('=') {
            out.insert(k.to_string(), v.to_string());
        }
    }
    sb.remove_pod(&rec.uid, Duration::ZERO).await?;
    Ok(out)
}

fn caps_mask(names: &[&str]) -> String {
    let mut m = 0u64;
    for n in names {
        let bit = weft_api::security::ALL_CAPABILITIES
            .iter()
            .position(|c| c == n)
            .expect("known capability");
        m |= 1 << bit;
    }
    format!("{m:016x}")
}

const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_security_context_is_what_the_container_sees() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = lab.sandbox(lab.node("n1"))?;
        lab.load_busybox(&sb)?;
        let host_ipc = std::fs::read_link("/proc/self/ns/ipc")?.display().to_string();
        let host_init = std::fs::read_to_string("/proc/1/comm")?.trim().to_string();

        // Nothing asked: root, the runtimes' default capabilities, the
        // default seccomp filter (no user namespaces), a writable root.
        let r = report(&sb, &pod("plain", 1, serde_json::json!({}))).await?;
        let plain_devices: u32 = r["devices"].parse()?;
        assert_eq!(r["Uid"], "0 0 0 0", "{r:?}");
        assert_eq!(r["CapEff"], caps_mask(&DEFAULT_CAPS), "{r:?}");
        assert_eq!(r["NoNewPrivs"], "0");
        assert_eq!(r["Seccomp"], "2", "RuntimeDefault is Weft's default");
        assert_eq!(r["root"], "rw");
        assert_eq!(r["userns"], "denied", "{r:?}");
        assert_eq!(r["mkdir"], "ok");
        assert_eq!(r["pid1"], "sh", "its own PID namespace");
        assert_ne!(r["ipc"], host_ipc, "its own IPC namespace");

        // A restricted pod: user, groups, no escalation, read-only root,
        // no capabilities, and a safe sysctl.
        let r = report(
            &sb,
            &pod(
                "restricted",
                2,
                serde_json::json!({
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                        "supplementalGroups": [4000], "fsGroup": 5000,
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"}]},
                    "containerSecurityContext": {"allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                }),
            ),
        )
        .await?;
        assert_eq!(r["Uid"], "1000 1000 1000 1000", "{r:?}");
        assert_eq!(r["Gid"], "3000 3000 3000 3000", "{r:?}");
        assert_eq!(r["Groups"], "4000 5000", "{r:?}");
        assert_eq!(r["CapBnd"], "0000000000000000", "{r:?}");
        assert_eq!(r["NoNewPrivs"], "1");
        assert_eq!(r["root"], "ro");
        assert_eq!(r["port_start"], "80");

        // One capability dropped, one added; the filter relaxes for it.
        let r = report(
            &sb,
            &pod(
                "caps",
                3,
                serde_json::json!({"containerSecurityContext": {
                    "capabilities": {"drop": ["NET_RAW"], "add": ["SYS_ADMIN"]}}}),
            ),
        )
        .await?;
        let mut want: Vec<&str> = DEFAULT_CAPS.iter().copied().filter(|c| *c != "NET_RAW").collect();
        want.push("SYS_ADMIN");
        assert_eq!(r["CapEff"], caps_mask(&want), "{r:?}");
        assert_eq!(r["userns"], "ok", "SYS_ADMIN lifts the namespace rules: {r:?}");

        // Unconfined: no filter at all.
        let r = report(
            &sb,
            &pod(
                "unconfined",
                4,
                serde_json::json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
            ),
        )
        .await?;
        assert_eq!(r["Seccomp"], "0", "{r:?}");
        assert_eq!(r["userns"], "ok", "{r:?}");

        // Localhost: the node's own profile, from its seccomp directory.
        let dir = lab.node_state_dir(lab.node("n1")).join("seccomp");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("no-mkdir.json"),
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )?;
        let r = report(
            &sb,
            &pod(
                "localhost",
                5,
                serde_json::json!({"containerSecurityContext": {"seccompProfile":
                    {"type": "Localhost", "localhostProfile": "no-mkdir.json"}}}),
            ),
        )
        .await?;
        assert_eq!(r["mkdir"], "denied", "{r:?}");
        assert_eq!(r["userns"], "ok", "only the profile's rules apply: {r:?}");

        // Privileged: every capability the node has, no filter, the host's devices.
        let r = report(
            &sb,
            &pod("privileged", 6, serde_json::json!({"containerSecurityContext": {"privileged": true}})),
        )
        .await?;
        let bnd = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
            .unwrap();
        assert_eq!(r["CapEff"], bnd, "{r:?}");
        assert_eq!(r["Seccomp"], "0");
        assert!(
            r["devices"].parse::<u32>()? > plain_devices,
            "the host's devices: {r:?}"
        );

        // The node's PID and IPC namespaces.
        let r = report(
            &sb,
            &pod("host-ns", 7, serde_json::json!({"hostPID": true, "hostIPC": true})),
        )
        .await?;
        assert_eq!(r["pid1"], host_init, "{r:?}");
        assert_eq!(r["ipc"], host_ipc, "{r:?}");

        // runAsNonRoot with an image that runs as root: refused with
        // kubelet's reason, and nothing is left behind.
        let err = sb
            .create_pod(
                &pod("nonroot", 8, serde_json::json!({"securityContext": {"runAsNonRoot": true}})),
                sb.free_ip()?,
            )
            .await
            .expect_err("root image under runAsNonRoot");
        assert!(matches!(err, SandboxError::Container { .. }), "{err:?}");
        assert!(err.to_string().contains("image will run as root"), "{err}");
        // A Localhost profile that does not exist.
        let err = sb
            .create_pod(
                &pod(
                    "noprofile",
                    9,
                    serde_json::json!({"containerSecurityContext": {"seccompProfile":
                        {"type": "Localhost", "localhostProfile": "missing.json"}}}),
                ),
                sb.free_ip()?,
            )
            .await
            .expect_err("missing profile");
        assert!(err.to_string().contains("cannot load seccomp profile"), "{err}");
        assert!(sb.records()?.is_empty());
        assert!(sb.runtime().list()?.is_empty());
        Ok(())
    })
    .await?
}

/// Whether a process runs (a zombie has ended).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn plain_pod(name: &str, seed: u32, command: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{seed:08x}-b0b0-4000-8000-{:012x}", std::process::id())},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sh", "-c", command]}]},
    }))
    .expect("valid pod")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_is_bounded_and_no_container_outlives_its_pod() -> Result<()> {
    use weft_agent::sandbox::{DEFAULT_POD_MAX_PIDS, procs};
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = lab.sandbox(lab.node("n1"))?;
        lab.load_busybox(&sb)?;

        // Every fork it can make, for ever: held at the pod's limit.
        let bomb = sb
            .create_pod(
                // The forking shell dies at its first refused fork (as ash
                // does); what it made lives on under the pod's own shell.
                &plain_pod(
                    "bomb",
                    1,
                    "sh -c 'while true; do sleep 1000 & done'; sleep 1000",
                ),
                sb.free_ip()?,
            )
            .await?;
        let cgroup = sb.pod_cgroup(&bomb.uid);
        let t = Instant::now();
        while sb.pids_refused(&bomb.uid) == 0 {
            let events: Vec<String> = weft_agent::sandbox::cgroup_roots()
                .iter()
                .filter_map(|r| std::fs::read_to_string(r.join(&cgroup).join("pids.events")).ok())
                .collect();
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(60),
                "the bomb never hit the limit: {} processes, pids.events {events:?}",
                procs(&cgroup).len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let held = procs(&cgroup).len() as u64;
        assert!(
            held <= DEFAULT_POD_MAX_PIDS && held > DEFAULT_POD_MAX_PIDS / 2,
            "{held} processes against a limit of {DEFAULT_POD_MAX_PIDS}"
        );
        // The node still starts pods and runs their commands meanwhile.
        let other = sb
            .create_pod(
                &plain_pod("neighbour", 2, "echo alive; sleep 600"),
                sb.free_ip()?,
            )
            .await?;
        let log = sb.log_path(&other.uid, "main", 0);
        let t = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("alive")
        {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20),
                "the neighbour never ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Removing the bomb takes every one of its processes.
        let t = Instant::now();
        sb.remove_pod(&bomb.uid, Duration::ZERO).await?;
        assert!(
            procs(&cgroup).is_empty(),
            "bomb processes survive its removal"
        );
        eprintln!("removed a pod of {held} processes in {:?}", t.elapsed());

        // A container runc has lost (its state gone): the removal still
        // stops it, through the pod's cgroup, before releasing anything.
        let lost = sb
            .create_pod(&plain_pod("lost", 3, "sleep 600"), sb.free_ip()?)
            .await?;
        let runc_root = lab.node_state_dir(lab.node("n1")).join("runc");
        std::fs::remove_dir_all(runc_root.join(&lost.containers[0].1))?;
        let lost_cgroup = sb.pod_cgroup(&lost.uid);
        let pids = procs(&lost_cgroup);
        assert!(!pids.is_empty());
        sb.remove_pod(&lost.uid, Duration::ZERO).await?;
        assert!(
            procs(&lost_cgroup).is_empty(),
            "a container runc lost outlived its pod"
        );
        assert!(!pids.iter().any(|p| alive(*p)), "{pids:?} still run");

        // A pod with neither record nor runc state (a crash at the worst
        // moment): the orphan sweep finds its cgroup and kills what runs.
        let orphan = sb
            .create_pod(&plain_pod("orphan", 4, "sleep 600"), sb.free_ip()?)
            .await?;
        let orphan_cgroup = sb.pod_cgroup(&orphan.uid);
        std::fs::remove_dir_all(runc_root.join(&orphan.containers[0].1))?;
        let records = lab.node_state_dir(lab.node("n1")).join("sandbox/pods");
        for e in std::fs::read_dir(&records)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "json")
                && std::fs::read_to_string(&p)?.contains(&orphan.uid)
            {
                std::fs::remove_file(&p)?;
            }
        }
        let pids = procs(&orphan_cgroup);
        assert!(!pids.is_empty());
        let swept = sb.sweep().await?;
        assert!(!pids.iter().any(|p| alive(*p)), "{pids:?} still run");
        assert!(
            procs(&orphan_cgroup).is_empty(),
            "sweep left the orphan running: {swept:?}"
        );
        assert!(
            swept.iter().any(|s| s.contains(&orphan_cgroup)),
            "{swept:?}"
        );

        sb.remove_all(Duration::ZERO).await?;
        assert!(sb.runtime().runc_ids()?.is_empty());
        Ok(())
    })
    .await?
}
