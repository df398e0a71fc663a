//! An island: one network namespace with only its loopback up, for tests of
//! the control plane (etcd, the API server, kubectl). Servers listen on the
//! island's 127.0.0.1, so nothing is ever bound in the host's namespace and
//! concurrent tests cannot collide on ports.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_agent::netlink::{Netlink, netns};

use weft_lab::topology::unique_prefix;

/// A test-owned network namespace, removed (with every process in it) on drop.
pub struct Island {
    name: String,
}

impl Island {
    /// Creates a namespace named from `kind` and a unique prefix, loopback up.
    pub fn new(kind: &str) -> Result<Self> {
        let name = unique_prefix(kind);
        netns::create(&name).with_context(|| format!("create namespace {name}"))?;
        let island = Island { name };
        island.block_on(async { Netlink::open(None)?.loopback_up().await })??;
        Ok(island)
    }

    /// The namespace's name (as `ip netns` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `fut` to completion on a fresh tokio runtime whose thread lives
    /// in the namespace: every socket it opens is the island's.
    pub fn block_on<F: Future + Send>(&self, fut: F) -> Result<F::Output>
    where
        F::Output: Send,
    {
        netns::run_in(Some(&self.name), || {
            // A current-thread runtime keeps every socket on this thread.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            Ok::<_, std::io::Error>(rt.block_on(fut))
        })
        .map_err(anyhow::Error::from)?
        .context("start a runtime in the island")
    }

    /// A multi-threaded tokio runtime whose worker and blocking threads all
    /// live in the namespace (for load generators that need more than one
    /// core).
    pub fn runtime(&self, workers: usize) -> Result<tokio::runtime::Runtime> {
        let path = netns::path(&self.name);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .on_thread_start(move || {
                // Each runtime thread joins the island before it runs anything.
                let file = std::fs::File::open(&path).expect("open the island's namespace");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("join the island's namespace");
            })
            .build()?;
        Ok(rt)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<i32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = netns::delete(&self.name);
    }
}

/// A single-member etcd (Debian's etcd-server) serving on the island's
/// loopback, with its data in a temporary directory.
pub struct Etcd {
    child: Child,
    _dir: tempfile::TempDir,
    /// The client URL, valid inside the island.
    pub endpoint: String,
}

impl Etcd {
    /// Starts etcd in `island` and waits until it answers.
    pub fn start(island: &Island) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let endpoint = "http://127.0.0.1:2379".to_string();
        let log = std::fs::File::create(dir.path().join("etcd.log"))?;
        let child = island
            .command("etcd")
            .args([
                "--name",
                "weft-test",
                "--data-dir",
                &dir.path().join("data").to_string_lossy(),
                "--listen-client-urls",
                &endpoint,
                "--advertise-client-urls",
                &endpoint,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "weft-test=http://127.0.0.1:2380",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start etcd (is etcd-server installed? scripts/setup.sh installs it)")?;
        let mut etcd = Etcd {
            child,
            _dir: dir,
            endpoint,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let endpoint = etcd.endpoint.clone();
            let ok = island.block_on(async move {
                let store = weft_controller::store::EtcdStore::connect(&[endpoint]).await?;
                weft_controller::store::Store::revision(&store).await
            })?;
            if ok.is_ok() {
                return Ok(etcd);
            }
            if let Some(status) = etcd.child.try_wait()? {
                let log =
                    std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd exited with {status}: {log}");
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy within 20 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
