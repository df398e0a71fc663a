//! Pods with real runc containers in the lab: HTTP across nodes, logs and
//! exit codes, bad input leaving nothing behind, and recovery after an
//! interrupted setup.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use k8s_openapi::api::core::v1::Pod;
use weft_agent::{
    netlink::netns,
    runtime::{
        Status,
        busybox::{BUSYBOX_BIN, BUSYBOX_IMAGE, build_layout},
    },
    sandbox::{Phase, PodRecord, Sandbox, SandboxError},
};
use weft_lab::topology::{Lab, LabSpec};

const TIMEOUT: Duration = Duration::from_secs(120);

fn pod(name: &str, uid_seed: u32, command: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default",
                     "uid": format!("{uid_seed:08x}-1111-4000-8000-{:012x}", std::process::id())},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": command}]}
    }))
    .expect("valid pod")
}

/// A sandbox for the node with the busybox image loaded.
fn node_sandbox(lab: &Lab, node: &str) -> Result<Sandbox> {
    let sb = lab.sandbox(lab.node(node))?;
    lab.load_busybox(&sb)?;
    Ok(sb)
}

fn http_get(ns: &str, to: SocketAddr) -> Result<String> {
    netns::run_in(Some(ns), move || -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    write!(s, "GET / HTTP/1.0\r\nHost: {to}\r\n\r\n")?;
                    let mut out = String::new();
                    s.read_to_string(&mut out)?;
                    return Ok(out);
                }
                // httpd may still be starting.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(e.into()),
            }
        }
    })?
}

async fn wait_exit(sb: &Sandbox, id: &str) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Status::Exited(c) = sb.runtime().state(id)?.status {
            return Ok(c);
        }
        anyhow::ensure!(Instant::now() < deadline, "container {id} did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_httpd_answers_http_from_a_pod_on_another_node() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(2)).await?;
        let sb1 = node_sandbox(&lab, "n1")?;
        let sb2 = node_sandbox(&lab, "n2")?;
        let web = sb2
            .create_pod(
                &pod("web", 1, &["httpd", "-f", "-p", "80", "-h", "/var/www"]),
                sb2.free_ip()?,
            )
            .await?;
        let client = sb1
            .create_pod(&pod("client", 2, &["sleep", "600"]), sb1.free_ip()?)
            .await?;
        assert_ne!(web.ip, client.ip);

        // A real HTTP client from the client pod's namespace...
        let reply = http_get(&client.netns, SocketAddr::new(web.ip.into(), 80))?;
        assert!(
            reply.starts_with("HTTP/1.") && reply.contains(" 200 "),
            "{reply}"
        );
        assert!(reply.ends_with("hello from weft\n"), "{reply}");
        // ...and busybox wget inside the client container.
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(lab.node_state_dir(lab.node("n1")).join("runc"))
            .args([
                "exec",
                &client.containers[0].1,
                "wget",
                "-qO-",
                &format!("http://{}/", web.ip),
            ])
            .output()?;
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from weft\n");

        // The eBPF counters on the web pod's veth saw the traffic.
        let c = sb2.counters(&web.uid).await?;
        assert!(c.rx_packets >= 4 && c.tx_packets >= 4, "{c:?}");

        sb1.remove_pod(&client.uid, Duration::from_secs(1)).await?;
        sb2.remove_pod(&web.uid, Duration::from_secs(2)).await?;
        assert!(!netns::exists(&web.netns));
        assert!(sb2.records()?.is_empty());
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exit_codes_are_kept() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = node_sandbox(&lab, "n1")?;
        let rec = sb
            .create_pod(
                &pod(
                    "job",
                    3,
                    &["sh", "-c", "echo to-out; echo to-err >&2; exit 7"],
                ),
                sb.free_ip()?,
            )
            .await?;
        let id = &rec.containers[0].1;
        assert_eq!(wait_exit(&sb, id).await?, 7);
        let log = std::fs::read_to_string(sb.log_path(&rec.uid, "main", 0))?;
        let mut lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        // The two streams are read independently, so their relative order is
        // not defined (as with any CRI runtime); each line's stream is.
        lines.sort_by_key(|l| l.split(' ').nth(1) != Some("stdout"));
        for (l, stream, text) in [
            (lines[0], "stdout", "to-out"),
            (lines[1], "stderr", "to-err"),
        ] {
            let mut f = l.splitn(4, ' ');
            let ts = f.next().unwrap();
            assert!(humantime_ok(ts), "timestamp {ts:?}");
            assert_eq!(f.next(), Some(stream), "{l}");
            assert_eq!(f.next(), Some("F"), "{l}");
            assert_eq!(f.next(), Some(text), "{l}");
        }
        // A container that handles SIGTERM stops on it, well within the grace period.
        let polite = sb
            .create_pod(
                &pod(
                    "polite",
                    14,
                    &[
                        "sh",
                        "-c",
                        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                    ],
                ),
                sb.free_ip()?,
            )
            .await?;
        let t = Instant::now();
        let st = sb
            .runtime()
            .stop(&polite.containers[0].1, Duration::from_secs(10))?;
        assert_eq!(st, Status::Exited(0));
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "stopped by SIGTERM, not the grace period"
        );
        // One that ignores it is killed when the grace period ends.
        let rec2 = sb
            .create_pod(&pod("sleeper", 4, &["sleep", "600"]), sb.free_ip()?)
            .await?;
        let id2 = &rec2.containers[0].1;
        assert_eq!(sb.runtime().state(id2)?.status, Status::Running);
        let t = Instant::now();
        let st = sb.runtime().stop(id2, Duration::from_secs(1))?;
        // sleep as PID 1 has no SIGTERM handler, so the signal does nothing.
        assert_eq!(st, Status::Exited(128 + 9));
        assert!(t.elapsed() >= Duration::from_secs(1));
        sb.remove_all(Duration::ZERO).await?;
        assert!(sb.runtime().list()?.is_empty());
        Ok(())
    })
    .await?
}

fn humantime_ok(ts: &str) -> bool {
    ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_leaves_nothing() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1").clone();
        let sb = node_sandbox(&lab, "n1")?;
        let nothing_left = |sb: &Sandbox| -> Result<()> {
            assert!(sb.records()?.is_empty(), "records: {:?}", sb.records()?);
            assert!(
                sb.runtime().list()?.is_empty(),
                "containers: {:?}",
                sb.runtime().list()?
            );
            let pods: Vec<_> = netns::list()?
                .into_iter()
                .filter(|n| n.starts_with(&format!("{}-p-", node.netns)))
                .collect();
            assert!(pods.is_empty(), "pod netns left: {pods:?}");
            let claims: Vec<_> = std::fs::read_dir(lab.node_state_dir(&node).join("sandbox/ips"))?
                .flatten()
                .collect();
            assert!(claims.is_empty(), "address claims left: {claims:?}");
            let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
            assert!(
                !mounts.contains(&format!("{}/", lab.node_state_dir(&node).display())),
                "mounts left"
            );
            for root in weft_agent::sandbox::cgroup_roots() {
                let d = root.join("weft").join(&node.netns).join("pods");
                // Pods' cgroups (directories), not the control files of
                // the node's pods cgroup: it stays while the node runs.
                let kids: Vec<_> = std::fs::read_dir(&d)
                    .map(|r| {
                        r.flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(
                    kids.is_empty(),
                    "cgroups left under {}: {kids:?}",
                    d.display()
                );
            }
            Ok(())
        };
        let with_image = |img: &str| {
            let mut p = pod("bad", 5, &["true"]);
            p.spec.as_mut().unwrap().containers[0].image = Some(img.into());
            p
        };
        // weft.local images live only in nodes' stores: not there, not
        // looked for anywhere else.
        let e = sb
            .create_pod(&with_image("weft.local/nope:1"), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("image weft.local/nope:1 not found on this node"),
            "{e}"
        );
        nothing_left(&sb)?;
        // Not on the node: it is pulled (IfNotPresent); a registry that
        // refuses the connection is named in the error.
        let e = sb
            .create_pod(&with_image("192.0.2.1:5999/nope:1"), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("registry 192.0.2.1:5999: cannot reach"),
            "{e}"
        );
        nothing_left(&sb)?;
        // With imagePullPolicy Never it is simply not found.
        let mut never = with_image("weft.local/nope:1");
        never.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
        let e = sb.create_pod(&never, sb.free_ip()?).await.unwrap_err();
        assert!(e.to_string().contains("not found on this node"), "{e}");
        nothing_left(&sb)?;
        let e = sb
            .create_pod(&with_image("Bad Ref!"), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("invalid image reference"), "{e}");
        nothing_left(&sb)?;

        // A command that does not exist: runc's own words, nothing left.
        let e = sb
            .create_pod(&pod("nocmd", 6, &["/bin/does-not-exist"]), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("does-not-exist"), "{e}");
        nothing_left(&sb)?;

        // Duplicate pod and a used address.
        let ok = sb
            .create_pod(&pod("dup", 7, &["sleep", "60"]), sb.free_ip()?)
            .await?;
        let e = sb
            .create_pod(&pod("dup", 7, &["sleep", "60"]), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::DuplicatePod { .. }), "{e}");
        // Same namespace/name under another UID: still a duplicate.
        let e = sb
            .create_pod(&pod("dup", 70, &["sleep", "60"]), sb.free_ip()?)
            .await
            .unwrap_err();
        assert!(matches!(e, SandboxError::DuplicatePod { .. }), "{e}");
        assert!(
            e.to_string().contains(&ok.uid),
            "names the pod already there: {e}"
        );
        // Names Kubernetes would refuse are refused here too.
        let mut bad_name = pod("x", 71, &["true"]);
        bad_name.metadata.name = Some("Bad Name/..".into());
        let e = sb.create_pod(&bad_name, sb.free_ip()?).await.unwrap_err();
        assert!(e.to_string().contains("metadata.name"), "{e}");
        let mut bad_ns = pod("x", 72, &["true"]);
        bad_ns.metadata.namespace = Some("Weird NS".into());
        let e = sb.create_pod(&bad_ns, sb.free_ip()?).await.unwrap_err();
        assert!(e.to_string().contains("metadata.namespace"), "{e}");
        let e = sb
            .create_pod(&pod("other", 8, &["sleep", "60"]), ok.ip)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("in use by pod default/dup"), "{e}");
        let e = sb
            .create_pod(&pod("other", 8, &["sleep", "60"]), "10.9.9.9".parse()?)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("outside the node's block"), "{e}");
        sb.remove_pod(&ok.uid, Duration::ZERO).await?;
        nothing_left(&sb)?;

        // Digest mismatch: a tampered layout is refused and nothing is tagged.
        let layout = lab.node_state_dir(&node).join("tampered");
        build_layout(
            &layout,
            std::path::Path::new(BUSYBOX_BIN),
            "weft.local/tampered:1",
        )?;
        let blobs: Vec<PathBuf> = std::fs::read_dir(layout.join("blobs/sha256"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        let biggest = blobs
            .iter()
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .unwrap();
        let mut data = std::fs::read(biggest)?;
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        std::fs::write(biggest, data)?;
        // A fresh store: the node's store already holds a verified copy of
        // this (identical) layer and would rightly not read it again.
        let fresh = weft_agent::runtime::image::ImageStore::open(
            lab.node_state_dir(&node).join("fresh-store"),
        )?;
        let e = fresh.import(&layout, None).unwrap_err();
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(fresh.resolve("weft.local/tampered:1").is_err());
        let kept: Vec<_> = std::fs::read_dir(fresh.root().join("blobs/sha256"))?
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(
            !kept.iter().any(|p| p.file_name() == biggest.file_name()),
            "the bad blob was not kept"
        );
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_setup_is_rolled_back_and_orphans_are_swept() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = node_sandbox(&lab, "n1")?;
        // A pod fully created, then its record rewound to "Creating": what a
        // crash between the container start and the final save leaves.
        let rec = sb
            .create_pod(&pod("half", 9, &["sleep", "600"]), sb.free_ip()?)
            .await?;
        let rewound = PodRecord {
            phase: Phase::Creating,
            ..rec.clone()
        };
        let path = lab
            .node_state_dir(lab.node("n1"))
            .join("sandbox/pods")
            .join(format!("{}.json", &rec.uid.replace('-', "")[..12]));
        std::fs::write(&path, serde_json::to_vec(&rewound)?)?;
        // And a pod whose record vanished (crash before the record was saved
        // cannot happen, but a lost state file can): an orphan.
        let orphan = sb
            .create_pod(&pod("orphan", 10, &["sleep", "600"]), sb.free_ip()?)
            .await?;
        std::fs::remove_file(
            path.with_file_name(format!("{}.json", &orphan.uid.replace('-', "")[..12])),
        )?;

        // A new agent process would open the same state: do the same.
        drop(sb);
        let sb = lab.sandbox(lab.node("n1"))?;
        let rolled = sb.recover().await?;
        assert_eq!(rolled, vec![rec.uid.clone()]);
        let swept = sb.sweep().await?;
        assert!(
            swept.iter().any(|s| s.contains(&orphan.containers[0].1)),
            "{swept:?}"
        );
        assert!(
            swept.iter().any(|s| s.contains(&orphan.host_veth)),
            "{swept:?}"
        );
        assert!(swept.iter().any(|s| s.contains(&orphan.netns)), "{swept:?}");
        for r in [&rec, &orphan] {
            assert!(!netns::exists(&r.netns), "netns {} left", r.netns);
        }
        assert!(sb.runtime().list()?.is_empty());
        assert!(sb.records()?.is_empty());
        // A second sweep finds nothing: it converged.
        assert!(sb.sweep().await?.is_empty());
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_limits_become_cgroup_limits() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1").clone();
        let sb = node_sandbox(&lab, "n1")?;
        let mut p = pod("limited", 11, &["sleep", "600"]);
        p.spec.as_mut().unwrap().containers[0].resources = Some(serde_json::from_value(
            serde_json::json!({"limits": {"memory": "64Mi", "cpu": "250m"}}),
        )?);
        let rec = sb.create_pod(&p, sb.free_ip()?).await?;
        let rel = format!(
            "weft/{}/pods/{}/main",
            node.netns,
            &rec.uid.replace('-', "")[..12]
        );
        assert_eq!(rel, sb.container_cgroup(&rec.uid, "main"));
        let roots = weft_agent::sandbox::cgroup_roots();
        let read = |file: &str| -> Option<String> {
            roots
                .iter()
                .map(|r| r.join(&rel).join(file))
                .find(|p| p.exists())
                .and_then(|p| std::fs::read_to_string(p).ok())
                .map(|s| s.trim().to_string())
        };
        // cgroup v1 (hybrid hosts) or v2, whichever this host has.
        if let Some(v) = read("memory.limit_in_bytes") {
            assert_eq!(v, "67108864");
            assert_eq!(read("cpu.cfs_quota_us").as_deref(), Some("25000"));
        } else {
            assert_eq!(read("memory.max").as_deref(), Some("67108864"));
            assert_eq!(read("cpu.max").as_deref(), Some("25000 100000"));
        }
        sb.remove_pod(&rec.uid, Duration::ZERO).await?;
        assert!(
            roots.iter().all(|r| !r.join(&rel).exists()),
            "cgroup removed with the pod"
        );
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_registry_in_the_lab() -> Result<()> {
    use weft_agent::runtime::{image::ImageStore, registry::RegistryOptions};
    use weft_lab::topology::REGISTRY_ADDR;
    tokio::time::timeout(TIMEOUT, async {
        let mut lab = Lab::up(LabSpec::new(2)).await?;
        lab.start_registry()?;
        let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
        let opts = |ns: &str| RegistryOptions {
            plain_http: vec![REGISTRY_ADDR.into()],
            netns: Some(ns.to_string()),
            timeout: Some(Duration::from_secs(3)),
        };
        // n1 has the image and pushes it; n2 has nothing.
        let sb1 = node_sandbox(&lab, "n1")?;
        let remote = format!("{REGISTRY_ADDR}/weft/busybox:1.36");
        sb1.runtime()
            .images()
            .push(BUSYBOX_IMAGE, &remote, &opts(&n1.netns))?;
        let local_digest = sb1
            .runtime()
            .images()
            .resolve(BUSYBOX_IMAGE)?
            .manifest_digest;

        let sb2 = lab.sandbox(&n2)?;
        assert!(sb2.runtime().images().resolve(&remote).is_err());
        let mut p = pod("pulled", 12, &["httpd", "-f", "-p", "80", "-h", "/var/www"]);
        p.spec.as_mut().unwrap().containers[0].image = Some(remote.clone());
        let rec = sb2.create_pod(&p, sb2.free_ip()?).await?;
        let reply = http_get(&n1.netns, SocketAddr::new(rec.ip.into(), 80))?;
        assert!(reply.ends_with("hello from weft\n"), "{reply}");
        // Same content, same digest; and a digest reference pulls it too.
        assert_eq!(
            sb2.runtime().images().resolve(&remote)?.manifest_digest,
            local_digest
        );
        let fresh = ImageStore::open(lab.node_state_dir(&n2).join("fresh"))?;
        let by_digest = format!("{REGISTRY_ADDR}/weft/busybox@{local_digest}");
        assert_eq!(
            fresh.pull(&by_digest, &opts(&n2.netns))?.manifest_digest,
            local_digest
        );

        // Unreachable registry and unknown image: clear errors, nothing made.
        for (img, want) in [
            ("192.0.2.99:5000/weft/busybox:1.36", "192.0.2.99:5000"),
            (&format!("{REGISTRY_ADDR}/weft/nope:1") as &str, "nope"),
        ] {
            let mut bad = pod("bad-pull", 13, &["true"]);
            bad.spec.as_mut().unwrap().containers[0].image = Some(img.to_string());
            let e = sb2.create_pod(&bad, sb2.free_ip()?).await.unwrap_err();
            assert!(
                e.to_string().contains("registry") && e.to_string().contains(want),
                "{e}"
            );
            assert_eq!(sb2.records()?.len(), 1, "only the pulled pod is there");
        }

        // A registry serving content that does not match its digest is caught,
        // and the bad blob is not kept.
        let layer = sb1.runtime().images().resolve(BUSYBOX_IMAGE)?.layers[0].clone();
        let hex = layer.trim_start_matches("sha256:");
        let data = std::path::Path::new(weft_lab::topology::STATE_ROOT)
            .join(&lab.prefix)
            .join("registry/data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&data)?;
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&data, bytes)?;
        let fresh2 = ImageStore::open(lab.node_state_dir(&n2).join("fresh2"))?;
        let e = fresh2.pull(&remote, &opts(&n2.netns)).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("digest"), "{e}");
        assert!(!fresh2.has_blob(&layer));
        assert!(fresh2.resolve(&remote).is_err());
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_address_block_is_refused_cleanly() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        // A /29 block: network, gateway and broadcast leave 5 pod addresses.
        let mut spec = LabSpec::new(1);
        spec.block_prefix = 29;
        let lab = Lab::up(spec).await?;
        let sb = node_sandbox(&lab, "n1")?;
        let mut ips = Vec::new();
        for i in 0..5 {
            let rec = sb
                .create_pod(
                    &pod(&format!("fill-{i}"), 30 + i, &["sleep", "600"]),
                    sb.free_ip()?,
                )
                .await?;
            ips.push(rec.ip);
        }
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 5, "five distinct addresses");
        let e = sb.free_ip().unwrap_err();
        assert!(
            matches!(e, SandboxError::AddressBlockExhausted { .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("10.244.1.0/29") && e.to_string().contains("exhausted"),
            "{e}"
        );
        // Freeing one pod frees its address for the next.
        let recs = sb.records()?;
        sb.remove_pod(&recs[0].uid, Duration::ZERO).await?;
        assert_eq!(sb.free_ip()?, recs[0].ip);
        sb.remove_all(Duration::ZERO).await?;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_spec_reaches_the_process() -> Result<()> {
    tokio::time::timeout(TIMEOUT, async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let sb = node_sandbox(&lab, "n1")?;
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "spec-check", "namespace": "team-a",
                         "uid": format!("{:08x}-5555-4000-8000-000000000000", std::process::id())},
            "spec": {"restartPolicy": "Never", "containers": [{
                "name": "main", "image": BUSYBOX_IMAGE,
                "command": ["sh", "-c"],
                "args": ["echo FOO=$FOO; echo PWD=$(pwd); echo HOST=$(hostname); cat /etc/resolv.conf /etc/hosts"],
                "env": [{"name": "FOO", "value": "bar baz"}],
                "workingDir": "/tmp"
            }]}
        }))?;
        let rec = sb.create_pod(&p, sb.free_ip()?).await?;
        let id = &rec.containers[0].1;
        assert_eq!(wait_exit(&sb, id).await?, 0);
        let log = std::fs::read_to_string(sb.log_path(&rec.uid, "main", 0))?;
        let out: Vec<&str> = log.lines().map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default()).collect();
        assert!(out.contains(&"FOO=bar baz"), "{out:?}");
        assert!(out.contains(&"PWD=/tmp"), "{out:?}");
        assert!(out.contains(&"HOST=spec-check"), "{out:?}");
        let gw = lab.node("n1").gateway().ip();
        assert!(out.contains(&format!("nameserver {gw}").as_str()), "{out:?}");
        assert!(
            out.contains(&"search team-a.svc.cluster.local svc.cluster.local cluster.local"),
            "{out:?}"
        );
        assert!(out.contains(&"options ndots:5"), "{out:?}");
        assert!(out.contains(&format!("{}\tspec-check", rec.ip).as_str()), "{out:?}");
        sb.remove_all(Duration::ZERO).await?;
        Ok(())
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_import_from_layout_archives_plain_and_gzipped() -> Result<()> {
    use weft_agent::runtime::image::ImageStore;
    let dir = std::path::Path::new(weft_lab::topology::STATE_ROOT)
        .join(weft_lab::topology::unique_prefix("t"));
    let layout = dir.join("layout");
    let digest = build_layout(
        &layout,
        std::path::Path::new(BUSYBOX_BIN),
        "weft.local/arch:1",
    )?;
    for (name, flags) in [("image.tar", "-cf"), ("image.tar.gz", "-czf")] {
        let archive = dir.join(name);
        let st = std::process::Command::new("tar")
            .arg(flags)
            .arg(&archive)
            .arg("-C")
            .arg(&layout)
            .arg(".")
            .status()?;
        assert!(st.success());
        let store = ImageStore::open(dir.join(format!("store-{name}")))?;
        let refs = store.import(&archive, None)?;
        assert_eq!(refs[0].to_string(), "weft.local/arch:1");
        let img = store.resolve("weft.local/arch:1")?;
        assert_eq!(img.manifest_digest, digest);
        // The layer unpacks once; a second call reuses it.
        let a = store.unpack_layer(&img.layers[0])?;
        assert!(a.join("bin/busybox").is_file() && a.join("bin/sh").is_symlink());
        assert_eq!(store.unpack_layer(&img.layers[0])?, a);
    }
    // Not an image at all: a clear error, nothing tagged.
    let junk = dir.join("junk.tar");
    std::fs::write(&junk, b"not a tar file")?;
    let store = ImageStore::open(dir.join("store-junk"))?;
    let e = store.import(&junk, None).unwrap_err();
    assert!(e.to_string().contains("not an OCI image layout"), "{e}");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
