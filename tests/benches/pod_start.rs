//! Full pod start (network + image ready + runc start of busybox) over 100
//! pods, side by side with the floor: a bare `runc run --detach` of the same
//! bundle, with its rootfs already mounted and its netns already made; and
//! the same floor without the bundle's seccomp filter (what RuntimeDefault
//! costs runc). The agent's own debug events say where weft's time goes:
//! the pod's network, the rootfs and config.json, and the shim up to the
//! container running.
//!
//! Run: `sudo bash scripts/bench.sh` (or `cargo bench -p weft-tests --bench pod_start`).

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use weft_agent::{netlink::netns, runtime::busybox::BUSYBOX_IMAGE, sandbox::remove_cgroups};
use weft_lab::topology::{Lab, LabSpec};
use weft_tests::stats::{ends, ms, percentile};

const PODS: u32 = 100;

fn pod(i: u32) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("b{i}"), "namespace": "default",
                     "uid": format!("{i:08x}-4444-4000-8000-{:012x}", std::process::id())},
        "spec": {"containers": [{"name": "main", "image": BUSYBOX_IMAGE, "command": ["sleep", "600"]}]}
    }))
    .expect("pod")
}

fn row(name: &str, s: &[Duration]) {
    let (f, l) = ends(s, 10);
    println!(
        "| {name} | {} | {} | {} | {} |",
        ms(percentile(s, 50.0)),
        ms(percentile(s, 99.0)),
        ms(f),
        ms(l)
    );
}

/// `name=value` milliseconds of every debug event with `message` in the log.
fn phase(log: &str, message: &str, name: &str) -> Vec<Duration> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let v = l
                .split(&format!("{name}="))
                .nth(1)?
                .split_whitespace()
                .next()?;
            v.parse::<f64>().ok()
        })
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect()
}

fn main() -> Result<()> {
    let log_file = tempfile::NamedTempFile::new()?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("weft_agent=debug"))
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log_file.reopen()?))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let lab = Lab::up(LabSpec::new(1)).await?;
        let node = lab.node("n1").clone();
        let state = lab.node_state_dir(&node);
        let sb = lab.sandbox(&node)?;
        lab.load_busybox(&sb)?;

        // A template pod: its bundle is the one the floor runs.
        let tpl = sb.create_pod(&pod(999), sb.free_ip()?).await?;
        let tpl_id = &tpl.containers[0].1;
        let config: serde_json::Value = serde_json::from_slice(&std::fs::read(
            sb.runtime().bundle_dir(tpl_id).join("config.json"),
        )?)?;
        let image = sb.runtime().images().resolve(BUSYBOX_IMAGE)?;
        let lower = sb
            .runtime()
            .images()
            .lower_dirs(&image)?
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let runc_root = state.join("runc");

        // Floor: prepare every bundle first, then time only `runc run -d`.
        let floor_dir = state.join("floor");
        let mut floor = Vec::new();
        let mut bare = Vec::new();
        for i in 0..2 * PODS {
            let b = floor_dir.join(format!("b{i}"));
            for d in ["rootfs", "upper", "work"] {
                std::fs::create_dir_all(b.join(d))?;
            }
            let opts = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                b.join("upper").display(),
                b.join("work").display()
            );
            mount(
                Some("overlay"),
                &b.join("rootfs"),
                Some("overlay"),
                MsFlags::empty(),
                Some(opts.as_str()),
            )?;
            let mut c = config.clone();
            c["linux"]["cgroupsPath"] = format!("/weft/{}/floor/c{i}", node.netns).into();
            // The second hundred: no seccomp filter.
            if i >= PODS {
                ensure!(
                    c["linux"]
                        .as_object_mut()
                        .and_then(|l| l.remove("seccomp"))
                        .is_some(),
                    "the template's bundle has no seccomp filter"
                );
            }
            std::fs::write(b.join("config.json"), serde_json::to_vec(&c)?)?;
        }
        // Interleaved, so that both see the same node (mount table, cgroups,
        // running containers) at every step.
        let mut weft = Vec::new();
        for i in 0..PODS {
            let b = floor_dir.join(format!("b{i}"));
            let t = Instant::now();
            let st = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--detach", "--bundle"])
                .arg(&b)
                .arg(format!("floor{i}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            floor.push(t.elapsed());
            ensure!(st.success(), "runc run floor{i} failed");
            let j = PODS + i;
            let t = Instant::now();
            let st = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--detach", "--bundle"])
                .arg(floor_dir.join(format!("b{j}")))
                .arg(format!("floor{j}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            bare.push(t.elapsed());
            ensure!(st.success(), "runc run floor{j} failed");

            let p = pod(i);
            let ip = sb.free_ip()?;
            let t = Instant::now();
            sb.create_pod(&p, ip).await?;
            weft.push(t.elapsed());
        }
        for i in 0..2 * PODS {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force", &format!("floor{i}")])
                .output();
            let _ = umount2(
                &floor_dir.join(format!("b{i}/rootfs")),
                MntFlags::MNT_DETACH,
            );
        }
        remove_cgroups(&format!("weft/{}/floor", node.netns));
        std::fs::remove_dir_all(&floor_dir)?;
        let running = sb.records()?.len();
        ensure!(running == PODS as usize + 1, "{running} pods");
        sb.remove_all(Duration::ZERO).await?;
        ensure!(
            netns::list()?
                .iter()
                .all(|n| !n.starts_with(&format!("{}-p-", node.netns)))
        );

        println!("Pod start, {PODS} pods of busybox `sleep` on one node (ms)\n");
        println!("| | p50 | p99 | first 10 (p50) | last 10 (p50) |");
        println!("|---|---|---|---|---|");
        row(
            "weft create_pod (netns + veth + tc + rootfs + bundle + shim + runc run -d)",
            &weft,
        );
        row("floor: runc run --detach of a prepared bundle", &floor);
        row("the same floor without the seccomp filter", &bare);
        println!(
            "\nweft p50 / floor p50 = {:.2}",
            percentile(&weft, 50.0).as_secs_f64() / percentile(&floor, 50.0).as_secs_f64()
        );
        // The template pod's events come first: skip them.
        let log = std::fs::read_to_string(log_file.path())?;
        let network = phase(&log, "pod sandbox built", "network_ms");
        let bundle = phase(&log, "container started", "bundle_ms");
        let shim = phase(&log, "container started", "shim_ms");
        ensure!(
            network.len() == PODS as usize + 1
                && bundle.len() == network.len()
                && shim.len() == network.len(),
            "the agent's debug events: {} {} {}",
            network.len(),
            bundle.len(),
            shim.len()
        );
        println!("\nWhere weft's time goes (from the agent's debug events, ms)\n");
        println!("| | p50 | p99 | first 10 (p50) | last 10 (p50) |");
        println!("|---|---|---|---|---|");
        row("network: netns, veth, address, guard, tc", &network[1..]);
        row("rootfs overlay + config.json", &bundle[1..]);
        row("shim: spawn, runc run -d, report", &shim[1..]);
        Ok(())
    })
}
