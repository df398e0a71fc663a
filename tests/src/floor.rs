//! The floor pod-start benchmarks compare with: `runc` alone on bundles
//! prepared in advance (the busybox rootfs mounted by overlayfs, the OCI
//! config of a pod Weft made, each in a cgroup of its own under the node's),
//! so that what is timed is the runtime's start and nothing of Weft.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use weft_agent::runtime::busybox::BUSYBOX_IMAGE;
use weft_agent::sandbox::{PodRecord, Sandbox, remove_cgroups};
use weft_lab::topology::LabNode;

/// Bundles ready for `runc`, removed by [`Floor::remove`].
pub struct Floor {
    runc_root: PathBuf,
    dir: PathBuf,
    cgroup: String,
    count: usize,
}

impl Floor {
    /// `count` bundles on `node` (whose state directory is `state`) with
    /// the OCI config of `template`'s first container; `args`, when given,
    /// replace its process's command (`["true"]`: a run that ends at once).
    ///
    /// # Errors
    /// When the image, a mount or a file cannot be made.
    pub fn prepare(
        sb: &Sandbox,
        node: &LabNode,
        state: &std::path::Path,
        template: &PodRecord,
        count: usize,
        args: Option<&[&str]>,
    ) -> Result<Self> {
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(
            sb.runtime()
                .bundle_dir(&template.containers[0].1)
                .join("config.json"),
        )?)?;
        if let Some(args) = args {
            config["process"]["args"] = serde_json::json!(args);
        }
        let image = sb.runtime().images().resolve(BUSYBOX_IMAGE)?;
        let lower = sb
            .runtime()
            .images()
            .lower_dirs(&image)?
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let floor = Self {
            runc_root: state.join("runc"),
            dir: state.join("floor"),
            cgroup: format!("weft/{}/floor", node.netns),
            count,
        };
        for i in 0..count {
            let b = floor.dir.join(format!("b{i}"));
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
            c["linux"]["cgroupsPath"] = format!("/{}/c{i}", floor.cgroup).into();
            std::fs::write(b.join("config.json"), serde_json::to_vec(&c)?)?;
        }
        Ok(floor)
    }

    fn runc(&self, args: &[&str], i: usize) -> Result<Duration> {
        let t = Instant::now();
        let st = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(args)
            .arg(self.dir.join(format!("b{i}")))
            .arg(format!("floor{i}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let took = t.elapsed();
        ensure!(st.success(), "runc {args:?} floor{i} failed");
        Ok(took)
    }

    /// `runc run --detach` of bundle `i`: the container's start.
    ///
    /// # Errors
    /// When runc fails.
    pub fn start(&self, i: usize) -> Result<Duration> {
        self.runc(&["run", "--detach", "--bundle"], i)
    }

    /// `runc run` of bundle `i` until its process ends (with `args` of
    /// a command that ends at once: the container's whole run).
    ///
    /// # Errors
    /// When runc or the process fails.
    pub fn run(&self, i: usize) -> Result<Duration> {
        self.runc(&["run", "--bundle"], i)
    }

    /// Deletes the containers, unmounts and removes the bundles and their
    /// cgroups.
    pub fn remove(self) {
        for i in 0..self.count {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&self.runc_root)
                .args(["delete", "--force", &format!("floor{i}")])
                .output();
            let _ = umount2(&self.dir.join(format!("b{i}/rootfs")), MntFlags::MNT_DETACH);
        }
        remove_cgroups(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
