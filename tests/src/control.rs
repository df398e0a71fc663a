//! A real `weft controller` process serving in an island (a test-owned
//! network namespace), with its data directory, kubeconfig and kubectl.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::island::Island;
use weft_lab::topology::default_weft_bin;

/// Which store the controller runs on.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded SQLite store.
    Sqlite,
    /// etcd at this client URL (inside the island).
    Etcd(String),
}

/// Options of a test controller.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// The store.
    pub backend: Backend,
    /// Extra flags for `weft controller`.
    pub args: Vec<String>,
}

impl Default for ControlOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            args: Vec::new(),
        }
    }
}

/// A running controller.
pub struct ControlPlane {
    child: Option<Child>,
    dir: tempfile::TempDir,
    netns: String,
    options: ControlOptions,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The API's URL (valid inside the island).
    pub url: String,
}

/// Where kubectl of a given minor version lives on machines of this kind.
pub fn kubectl_path(minor: Option<u32>) -> PathBuf {
    match minor {
        None => PathBuf::from("/usr/bin/kubectl"),
        Some(m) => PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{m}")),
    }
}

impl ControlPlane {
    /// Starts `weft controller` in `island` on 127.0.0.1:6443 and waits until
    /// it serves.
    pub fn start(island: &Island, options: ControlOptions) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cp = ControlPlane {
            child: None,
            kubeconfig: dir.path().join("kubeconfig"),
            dir,
            netns: island.name().to_string(),
            options,
            url: "https://127.0.0.1:6443".into(),
        };
        cp.spawn()?;
        Ok(cp)
    }

    /// The data directory (store, PKI, tokens).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("controller.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(default_weft_bin())
            .args(["controller", "--listen", "127.0.0.1:6443", "--data-dir"])
            .arg(self.data_dir())
            .arg("--kubeconfig-out")
            .arg(&self.kubeconfig);
        if let Backend::Etcd(url) = &self.options.backend {
            cmd.args(["--store", "etcd", "--etcd-endpoints", url]);
        }
        cmd.args(&self.options.args);
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start weft controller")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("weft controller exited with {status}: {}", self.log());
            }
            if self.kubeconfig.exists() {
                let out = self.kubectl(None, &["get", "--raw", "/healthz"])?;
                if out.status.success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("weft controller did not serve within 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The controller's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// The controller's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the controller with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the command, so this is the controller.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the controller again on the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Runs kubectl (of `minor`, or /usr/bin/kubectl) in the island with the
    /// admin kubeconfig.
    pub fn kubectl(&self, minor: Option<u32>, args: &[&str]) -> Result<Output> {
        let cache = self
            .dir
            .path()
            .join(format!("kubectl-cache-{}", minor.unwrap_or(0)));
        Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(kubectl_path(minor))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--request-timeout=20s")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("run kubectl")
    }

    /// The token of a node's agent (created on first use).
    pub fn node_token(&self, node: &str) -> Result<String> {
        let out = Command::new(default_weft_bin())
            .args(["controller", "node-token", node, "--data-dir"])
            .arg(self.data_dir())
            .output()?;
        if !out.status.success() {
            bail!(
                "weft controller node-token: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// The admin token from the kubeconfig.
    pub fn admin_token(&self) -> Result<String> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("token: "))
            .map(|t| t.trim_matches('"').to_string())
            .context("no token in the kubeconfig")
    }

    /// The kubeconfig path.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.kill9();
    }
}
