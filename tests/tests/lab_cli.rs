//! `weft lab` as a user runs it: up (progress, the kubeconfig, the host's
//! clients), up twice, exec, a crash, down twice, bad input. The lab gets a
//! name of its own (`$WEFT_LAB_NAME`) and HOME is a temporary directory, so
//! a user's lab and kubeconfig are left alone.

use std::process::{Command, Output};

use anyhow::Result;
use weft_agent::netlink::netns;
use weft_lab::topology::{STATE_ROOT, default_weft_bin, unique_prefix};

struct Env {
    name: String,
    home: tempfile::TempDir,
}

impl Env {
    fn weft(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(default_weft_bin())
            .args(args)
            .env("WEFT_LAB_NAME", &self.name)
            .env("HOME", self.home.path())
            .env_remove("KUBECONFIG")
            .output()?)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.weft(&["lab", "down"]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn leftovers(name: &str) -> Vec<String> {
    let mut v: Vec<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(name))
        .collect();
    if std::path::Path::new(STATE_ROOT).join(name).exists() {
        v.push(format!("{STATE_ROOT}/{name}"));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    v.extend(
        mounts
            .lines()
            .filter(|l| l.contains(&format!("{STATE_ROOT}/{name}/")))
            .map(String::from),
    );
    // The nodes' pinned eBPF maps and links.
    if let Ok(rd) = std::fs::read_dir(weft_lab::topology::PIN_ROOT) {
        v.extend(
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .filter(|p| p.contains(&format!("/{name}-"))),
        );
    }
    for root in weft_agent::sandbox::cgroup_roots() {
        if let Ok(rd) = std::fs::read_dir(root.join("weft")) {
            v.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(name)),
            );
        }
    }
    v
}

#[test]
fn lab_up_exec_crash_and_down() -> Result<()> {
    // A port of our own on the host's loopback for the lab's API.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let port_s = port.to_string();
    let env = Env {
        name: unique_prefix("t"),
        home: tempfile::tempdir()?,
    };
    // Bad input makes nothing.
    let out = env.weft(&["lab", "up", "--nodes", "0", "--api-port", &port_s])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("1 to 100 nodes"), "{}", text(&out));
    let out = env.weft(&["lab", "up", "--nodes", "1", "--api-port", "0"])?;
    assert!(
        !out.status.success() && text(&out).contains("--api-port"),
        "{}",
        text(&out)
    );
    assert!(
        leftovers(&env.name).is_empty(),
        "{:?}",
        leftovers(&env.name)
    );

    let out = env.weft(&["lab", "up", "--nodes", "2", "--api-port", &port_s])?;
    assert!(out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    for step in [
        "[1] building",
        "[2] starting the controller",
        "[4] starting one agent",
        "[5] waiting",
    ] {
        assert!(err.contains(step), "progress {step:?} missing:\n{err}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("weft get nodes"));
    // The host's clients work right away through ~/.weft/config.
    let config = std::fs::read_to_string(env.home.path().join(".weft/config"))?;
    assert!(
        config.contains(&format!("https://127.0.0.1:{port}")),
        "{config}"
    );
    let out = env.weft(&["get", "nodes"])?;
    assert!(out.status.success(), "{}", text(&out));
    let nodes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        nodes.lines().filter(|l| l.contains(" Ready ")).count(),
        2,
        "{nodes}"
    );
    // Up twice: refused, and the running lab is untouched.
    let out = env.weft(&["lab", "up", "--nodes", "2", "--api-port", &port_s])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("already up"), "{}", text(&out));
    assert!(env.weft(&["get", "nodes"])?.status.success());

    // lab exec: output and exit code pass through.
    let pod = env.home.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: weft.local/busybox:1.36, command: [sleep, '3600']}\n",
    )?;
    assert!(
        env.weft(&["apply", "-f", pod.to_str().unwrap_or_default()])?
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let out = loop {
        let out = env.weft(&[
            "lab",
            "exec",
            "p",
            "--",
            "sh",
            "-c",
            "echo from-$(hostname); exit 3",
        ])?;
        if out.status.code() == Some(3) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-p\n");
    let out = env.weft(&[
        "lab", "exec", "-n", "default", "p", "-c", "nosuch", "--", "true",
    ])?;
    assert!(
        !out.status.success() && text(&out).contains("no container"),
        "{}",
        text(&out)
    );

    // A crash: every agent and the controller die. `down` still removes all.
    let procs = Command::new("pgrep")
        .args(["-f", &format!("{}/", env.name)])
        .output()?;
    for pid in String::from_utf8_lossy(&procs.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).output();
    }
    // `up` over the dead lab says what happened instead of "already up".
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = env.weft(&["lab", "up", "--nodes", "2", "--api-port", &port_s])?;
    assert!(!out.status.success());
    assert!(text(&out).contains("not running"), "{}", text(&out));
    let out = env.weft(&["lab", "down"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        leftovers(&env.name).is_empty(),
        "left after down: {:?}",
        leftovers(&env.name)
    );
    let pgrep = Command::new("pgrep").args(["-f", &env.name]).output()?;
    assert!(
        pgrep.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&pgrep.stdout)
    );
    // Down twice is safe.
    let out = env.weft(&["lab", "down"])?;
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}
