//! The `weft` CLI against a real controller: apply (files, directories,
//! multi-document YAML; create, update, unchanged), get (tables, -o, -l,
//! -A), describe, scale, delete, kubeconfig lookup, and errors that say
//! where the problem is.

use std::process::{Command, Output};

use anyhow::{Result, ensure};
use serde_json::Value;
use weft_lab::topology::default_weft_bin;
use weft_tests::control::{ControlOptions, ControlPlane};
use weft_tests::island::Island;

struct Cli<'a> {
    island: &'a Island,
    kubeconfig: String,
}

impl Cli<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.island.name()])
            .arg(default_weft_bin())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", "/nonexistent");
        c
    }
    fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(self.cmd(args).output()?)
    }
    fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(out.status.success(), "weft {}: {text}", args.join(" "));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args)?;
        ensure!(!out.status.success(), "weft {} should fail", args.join(" "));
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: httpd
        image: weft.local/busybox:1.36
";

const SERVICE_AND_NS: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector: {app: web}
  ports:
  - port: 80
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
";

#[test]
fn weft_cli_drives_the_api() -> Result<()> {
    let island = Island::new("cli")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let cli = Cli {
        island: &island,
        kubeconfig: cp.kubeconfig().to_string_lossy().into_owned(),
    };
    let dir = tempfile::tempdir()?;
    let manifests = dir.path().join("app");
    std::fs::create_dir(&manifests)?;
    std::fs::write(
        manifests.join("a-deploy.yaml"),
        DEPLOY.replace(
            "name: web\n  labels",
            "name: web\n  namespace: shop\n  labels",
        ),
    )?;
    std::fs::write(manifests.join("b-rest.yml"), SERVICE_AND_NS)?;
    std::fs::write(manifests.join("notes.txt"), "not a manifest")?;
    let m = manifests.to_string_lossy().to_string();

    // A directory of files, one with two documents; the namespace is made first.
    let out = cli.ok(&["apply", "-f", &m])?;
    ensure!(
        out.contains("namespace/shop created")
            && out.contains("deployment.apps/web created")
            && out.contains("service/web created"),
        "{out}"
    );
    let out = cli.ok(&["apply", "-f", &m])?;
    ensure!(
        out.matches("unchanged").count() == 3,
        "second apply changes nothing: {out}"
    );
    std::fs::write(
        manifests.join("a-deploy.yaml"),
        DEPLOY
            .replace(
                "name: web\n  labels",
                "name: web\n  namespace: shop\n  labels",
            )
            .replace("replicas: 2", "replicas: 3"),
    )?;
    let out = cli.ok(&["apply", "-f", &m])?;
    ensure!(
        out.contains("deployment.apps/web configured") && out.contains("service/web unchanged"),
        "{out}"
    );

    // get: tables, wide, -l, -A, -o json/yaml/name.
    let out = cli.ok(&["get", "deploy", "-n", "shop"])?;
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines[0].split_whitespace().collect::<Vec<_>>()
            == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    ensure!(
        lines[1].starts_with("web") && lines[1].contains("0/3"),
        "{out}"
    );
    let out = cli.ok(&["get", "pods", "-n", "shop", "-o", "wide", "-l", "app=web"])?;
    ensure!(
        out.lines().count() == 4 && out.lines().next().unwrap_or_default().contains("NODE"),
        "{out}"
    );
    let out = cli.ok(&["get", "pods", "-A"])?;
    ensure!(
        out.starts_with("NAMESPACE") && out.lines().filter(|l| l.starts_with("shop")).count() == 3,
        "{out}"
    );
    let out = cli.ok(&["get", "svc", "web", "-n", "shop", "-o", "json"])?;
    let svc: Value = serde_json::from_str(&out)?;
    ensure!(
        svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.")),
        "{out}"
    );
    let out = cli.ok(&["get", "deploy,svc", "-n", "shop", "-o", "name"])?;
    ensure!(
        out.lines().collect::<Vec<_>>() == ["deployment.apps/web", "service/web"],
        "{out}"
    );
    let out = cli.ok(&["get", "deploy", "web", "-n", "shop", "-o", "yaml"])?;
    ensure!(
        out.contains("kind: Deployment") && out.contains("replicas: 3"),
        "{out}"
    );
    let out = cli.ok(&["get", "all", "-n", "shop"])?;
    ensure!(
        out.contains("deployment.apps/web")
            && out.contains("service/web")
            && out.contains("pod/web-"),
        "{out}"
    );

    // scale and describe.
    ensure!(
        cli.ok(&["scale", "deploy/web", "--replicas", "1", "-n", "shop"])?
            .contains("deployment.apps/web scaled")
    );
    let out = cli.ok(&["describe", "deploy", "web", "-n", "shop"])?;
    ensure!(
        out.contains("Name:         web")
            && out.contains("replicas:  1")
            && out.contains("ScalingReplicaSet"),
        "{out}"
    );

    // Errors say where: file, document, field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok}\nspec: {ports: [{port: 81}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s2}\nspec:\n  ports: [{port: 99999}]\n",
    )?;
    let err = cli.fails(&["apply", "-f", &bad.to_string_lossy()])?;
    ensure!(
        err.contains("bad.yaml (document 2)") && err.contains("spec.ports[0].port"),
        "{err}"
    );
    // All or nothing: the good first document was not applied either.
    ensure!(err.contains("nothing was applied"), "{err}");
    ensure!(
        !cli.run(&["get", "svc", "ok"])?.status.success(),
        "document 1 must not be stored when document 2 is refused"
    );
    std::fs::write(&bad, "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n")?;
    let err = cli.fails(&["apply", "-f", &bad.to_string_lossy()])?;
    ensure!(
        err.contains("bad.yaml (document 1)") && err.contains("unknown kind Widget"),
        "{err}"
    );
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: i, imagePullPolicyy: Always}\n",
    )?;
    let err = cli.fails(&["apply", "-f", &bad.to_string_lossy()])?;
    ensure!(err.contains("spec.containers[0].imagePullPolicyy"), "{err}");
    std::fs::write(&bad, "kind: [\n")?;
    let err = cli.fails(&["apply", "-f", &bad.to_string_lossy()])?;
    ensure!(
        err.contains("bad.yaml (document 1)") && err.contains("line"),
        "{err}"
    );
    let err = cli.fails(&["get", "widgets"])?;
    ensure!(
        err.contains("doesn't have a resource type \"widgets\""),
        "{err}"
    );
    let err = cli.fails(&["get", "pods", "-l", "a in (b"])?;
    ensure!(err.contains("labelSelector"), "{err}");

    // Delete by name and from manifests.
    ensure!(
        cli.ok(&["delete", "svc", "web", "-n", "shop"])?
            .contains("service \"web\" deleted")
    );
    let err = cli.fails(&["delete", "svc", "web", "-n", "shop"])?;
    ensure!(err.contains("not found"), "{err}");
    cli.ok(&["delete", "svc", "web", "-n", "shop", "--ignore-not-found"])?;
    let out = cli.ok(&[
        "delete",
        "-f",
        &manifests.join("a-deploy.yaml").to_string_lossy(),
    ])?;
    ensure!(out.contains("deployment.apps \"web\" deleted"), "{out}");

    // The kubeconfig: --kubeconfig wins over $KUBECONFIG; none at all is explained.
    let out = cli
        .cmd(&["get", "ns", "--kubeconfig", &cli.kubeconfig])
        .env("KUBECONFIG", "/nonexistent/config")
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli
        .cmd(&["--kubeconfig", &cli.kubeconfig, "get", "ns"])
        .env("KUBECONFIG", "/nonexistent/config")
        .output()?;
    ensure!(
        out.status.success(),
        "--kubeconfig before the command: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli
        .cmd(&["get", "ns"])
        .env("KUBECONFIG", "/nonexistent/config")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("no kubeconfig at /nonexistent/config"),
        "{err}"
    );
    Ok(())
}
