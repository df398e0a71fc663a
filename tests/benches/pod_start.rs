//! Full pod start (network + image ready + runc start of busybox) over 100
//! pods, side by side with the floor: a bare `runc run --detach` of the same
//! bundle, with its rootfs already mounted and its netns already made.
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

fn main() -> Result<()> {
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
        for i in 0..PODS {
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

            let p = pod(i);
            let ip = sb.free_ip()?;
            let t = Instant::now();
            sb.create_pod(&p, ip).await?;
            weft.push(t.elapsed());
        }
        for i in 0..PODS {
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
        println!(
            "\nweft p50 / floor p50 = {:.2}",
            percentile(&weft, 50.0).as_secs_f64() / percentile(&floor, 50.0).as_secs_f64()
        );
        Ok(())
    })
}
