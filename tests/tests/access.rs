//! Who may do what: users by client certificate and static token, RBAC
//! with kube's default roles, escalation prevention, the review APIs, and
//! kubectl's `auth can-i` and `auth whoami` with them, against a real
//! `weft controller`.

use std::path::Path;
use std::process::Output;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use weft_tests::control::{ControlOptions, ControlPlane, kubectl_path};
use weft_tests::island::Island;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// kubectl 1.`minor` in the island with `kubeconfig`.
fn kubectl(island: &Island, minor: u32, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    let cache = kubeconfig.with_extension(format!("cache-{minor}"));
    std::process::Command::new("ip")
        .args(["netns", "exec", island.name()])
        .arg(kubectl_path(Some(minor)))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .with_context(|| format!("kubectl {}", args.join(" ")))
}

fn weft(args: &[&str]) -> Result<Output> {
    Ok(
        std::process::Command::new(weft_lab::topology::default_weft_bin())
            .args(args)
            .output()?,
    )
}

/// The department story of docs/ACCESS.md with examples/departments.yaml:
/// sales-admin (a client certificate) administers sales and nothing else,
/// may not grant more than it holds, and kubectl's auth verbs say so.
fn departments(minor: u32) -> Result<()> {
    let island = Island::new(&format!("access{minor}"))?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let admin = cp.kubeconfig().to_path_buf();
    let k = |kc: &Path, args: &[&str]| kubectl(&island, minor, kc, args);
    let ok = |kc: &Path, args: &[&str]| -> Result<String> {
        let out = k(kc, args)?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            text(&out)
        );
        Ok(text(&out))
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/departments.yaml");
    ok(&admin, &["apply", "-f", &example.to_string_lossy()])?;

    let dir = tempfile::tempdir()?;
    let sales = dir.path().join("sales.kubeconfig");
    let data = cp.data_dir();
    let out = weft(&[
        "controller",
        "user-kubeconfig",
        "sales-admin",
        "--group",
        "sales",
        "--group",
        "managers",
        "--out",
        &sales.to_string_lossy(),
        "--server",
        "https://127.0.0.1:6443",
        "--data-dir",
        &data.to_string_lossy(),
    ])?;
    ensure!(out.status.success(), "{}", text(&out));
    let kc: Value = serde_norway::from_str(&std::fs::read_to_string(&sales)?)?;
    ensure!(
        kc["users"][0]["user"]["client-certificate-data"].is_string()
            && kc["users"][0]["user"]["token"].is_null(),
        "{kc}"
    );

    // Who: the certificate's CN and O.
    let t = ok(&sales, &["auth", "whoami"])?;
    ensure!(
        t.contains("sales-admin") && t.contains("[sales managers system:authenticated]"),
        "{t}"
    );
    // Everything in sales.
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "deployment",
            "web",
            "--image=weft.local/busybox:1.36",
            "--replicas=0",
        ],
    )?;
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "configmap",
            "conf",
            "--from-literal=a=b",
        ],
    )?;
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "secret",
            "generic",
            "key",
            "--from-literal=a=b",
        ],
    )?;
    ok(
        &sales,
        &["-n", "sales", "scale", "deployment", "web", "--replicas=0"],
    )?;
    let t = ok(&sales, &["-n", "sales", "get", "deploy,cm,secret,svc,pods"])?;
    ensure!(
        t.contains("web") && t.contains("conf") && t.contains("key"),
        "{t}"
    );
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "role",
            "reader",
            "--verb=get",
            "--resource=pods",
        ],
    )?;
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "rolebinding",
            "reader",
            "--role=reader",
            "--user=intern",
        ],
    )?;
    ok(&sales, &["-n", "sales", "delete", "configmap", "conf"])?;
    // Nothing elsewhere, in kube's words.
    let out = k(&sales, &["-n", "finance", "get", "pods"])?;
    ensure!(
        !out.status.success()
            && text(&out).contains(
                r#"pods is forbidden: User "sales-admin" cannot list resource "pods" in API group "" in the namespace "finance""#
            ),
        "{}",
        text(&out)
    );
    let out = k(&sales, &["-n", "finance", "delete", "pod", "api"])?;
    ensure!(
        !out.status.success() && text(&out).contains(r#"pods "api" is forbidden"#),
        "{}",
        text(&out)
    );
    let out = k(&sales, &["get", "nodes"])?;
    ensure!(
        !out.status.success() && text(&out).contains("at the cluster scope"),
        "{}",
        text(&out)
    );
    let out = k(&sales, &["get", "namespaces"])?;
    ensure!(!out.status.success(), "{}", text(&out));
    let out = k(&sales, &["get", "--raw", "/metrics"])?;
    ensure!(
        !out.status.success() && text(&out).contains("cannot get path \"/metrics\""),
        "{}",
        text(&out)
    );
    // Escalation: no more than it holds.
    let out = k(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "rolebinding",
            "root",
            "--clusterrole=cluster-admin",
            "--user=sales-admin",
        ],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("not currently held"),
        "{}",
        text(&out)
    );
    let out = k(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "role",
            "nodes",
            "--verb=get",
            "--resource=nodes",
        ],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("not currently held"),
        "{}",
        text(&out)
    );
    let out = k(
        &sales,
        &[
            "create",
            "clusterrolebinding",
            "mine",
            "--clusterrole=admin",
            "--user=sales-admin",
        ],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("forbidden"),
        "{}",
        text(&out)
    );
    // ... but edit and view, which admin holds, it may hand on.
    ok(
        &sales,
        &[
            "-n",
            "sales",
            "create",
            "rolebinding",
            "helpers",
            "--clusterrole=edit",
            "--group=sales-helpers",
        ],
    )?;

    // can-i, as kubectl asks it.
    for (args, want) in [
        (
            vec!["auth", "can-i", "create", "deployments", "-n", "sales"],
            "yes",
        ),
        (
            vec!["auth", "can-i", "delete", "secrets", "-n", "sales"],
            "yes",
        ),
        (vec!["auth", "can-i", "get", "pods", "-n", "finance"], "no"),
        (vec!["auth", "can-i", "list", "nodes"], "no"),
        (vec!["auth", "can-i", "get", "/version"], "yes"),
    ] {
        let out = k(&sales, &args)?;
        let t = text(&out);
        ensure!(t.trim().starts_with(want), "{}: {t}", args.join(" "));
        ensure!(
            out.status.success() == (want == "yes"),
            "exit status of {}",
            args.join(" ")
        );
    }
    let t = ok(&sales, &["auth", "can-i", "--list", "-n", "sales"])?;
    ensure!(
        t.contains("deployments.apps") && t.contains("rolebindings.rbac.authorization.k8s.io"),
        "{t}"
    );
    // weft's own auth verbs, with the same answers.
    let weft_as = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", sales.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        // ip netns exec: the controller listens in the island.
        std::process::Command::new("ip")
            .args(["netns", "exec", island.name()])
            .arg(weft_lab::topology::default_weft_bin())
            .args(&all)
            .output()
    };
    let out = weft_as(&["auth", "can-i", "create", "deploy", "-n", "sales"])?;
    ensure!(
        out.status.success() && text(&out).trim() == "yes",
        "{}",
        text(&out)
    );
    let out = weft_as(&["auth", "can-i", "get", "pods", "-n", "finance"])?;
    ensure!(
        out.status.code() == Some(1) && text(&out).trim() == "no",
        "{}",
        text(&out)
    );
    let out = weft_as(&["auth", "whoami"])?;
    ensure!(
        out.status.success() && text(&out).contains("sales-admin"),
        "{}",
        text(&out)
    );

    // The admin's view: the bindings sales-admin made, in a table.
    let t = ok(
        &admin,
        &["-n", "sales", "get", "rolebindings", "-o", "wide"],
    )?;
    ensure!(
        t.contains("ClusterRole/edit") && t.contains("sales-helpers"),
        "{t}"
    );
    // Aggregation: admin gained what its aggregated roles hold.
    let role: Value =
        serde_json::from_str(&ok(&admin, &["get", "clusterrole", "admin", "-o", "json"])?)?;
    let rules = role["rules"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(rules > 5, "admin aggregates its rules: {role}");
    Ok(())
}

#[test]
fn departments_with_kubectl_1_27() -> Result<()> {
    departments(27)
}

#[test]
fn departments_with_kubectl_1_33() -> Result<()> {
    departments(33)
}

/// A user of the static token file, a SubjectAccessReview about another
/// user, and an aggregated role growing when a labelled role appears.
#[test]
fn tokens_reviews_and_aggregation() -> Result<()> {
    let island = Island::new("accesstok")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let admin = cp.kubeconfig().to_path_buf();
    let k = |kc: &Path, args: &[&str]| kubectl(&island, 33, kc, args);
    // A token user: a line in the token file, read when it changes.
    let tokens = cp.data_dir().join("tokens.csv");
    let mut text_file = std::fs::read_to_string(&tokens)?;
    text_file.push_str("0123456789abcdef0123456789abcdef,dev,dev-uid,\"devs\"\n");
    std::fs::write(&tokens, text_file)?;
    let dir = tempfile::tempdir()?;
    let dev = dir.path().join("dev.kubeconfig");
    let mut kc: Value = serde_norway::from_str(&std::fs::read_to_string(&admin)?)?;
    kc["users"][0]["user"] = json!({"token": "0123456789abcdef0123456789abcdef"});
    std::fs::write(&dev, serde_norway::to_string(&kc)?)?;
    let out = k(&dev, &["get", "pods"])?;
    ensure!(
        !out.status.success() && text(&out).contains(r#"User "dev" cannot list resource "pods""#),
        "{}",
        text(&out)
    );
    let out = k(
        &admin,
        &[
            "create",
            "rolebinding",
            "devs-view",
            "--clusterrole=view",
            "--group=devs",
        ],
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    // Honoured as soon as it is written.
    let out = k(&dev, &["get", "pods"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let out = k(&dev, &["get", "secrets"])?;
    ensure!(
        !out.status.success(),
        "view reads no secrets: {}",
        text(&out)
    );
    // Impersonation: the admin may act as dev; dev may not act as anyone.
    let out = k(
        &admin,
        &["--as", "dev", "--as-group", "devs", "get", "pods"],
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    let out = k(
        &admin,
        &["--as", "dev", "--as-group", "devs", "get", "secrets"],
    )?;
    ensure!(
        !out.status.success()
            && text(&out).contains(r#"User "dev" cannot list resource "secrets""#),
        "{}",
        text(&out)
    );
    let out = k(&dev, &["--as", "weft-admin", "get", "secrets"])?;
    ensure!(
        !out.status.success() && text(&out).contains("cannot impersonate resource \"users\""),
        "{}",
        text(&out)
    );
    let out = k(&dev, &["auth", "whoami", "-o", "json"])?;
    let who: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    ensure!(who["status"]["userInfo"]["uid"] == "dev-uid", "{who}");

    // A SubjectAccessReview: the admin asks about dev.
    let sar = dir.path().join("sar.json");
    std::fs::write(
        &sar,
        serde_json::to_string(&json!({"apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {"user": "dev", "groups": ["devs"],
                "resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}}))?,
    )?;
    let out = k(
        &admin,
        &["create", "-f", &sar.to_string_lossy(), "-o", "json"],
    )?;
    let review: Value = serde_json::from_slice(&out.stdout).with_context(|| text(&out))?;
    ensure!(review["status"]["allowed"] == true, "{review}");
    // dev may not ask about others.
    let out = k(&dev, &["create", "-f", &sar.to_string_lossy()])?;
    ensure!(
        !out.status.success() && text(&out).contains("subjectaccessreviews"),
        "{}",
        text(&out)
    );

    // Aggregation: a role labelled for view adds to view, and so to dev.
    let out = k(
        &dev,
        &["get", "leases.coordination.k8s.io", "-n", "default"],
    )?;
    ensure!(out.status.success(), "view reads leases: {}", text(&out));
    let extra = dir.path().join("extra.yaml");
    std::fs::write(
        &extra,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: read-nodes\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [\"\"]\n  resources: [\"nodes\"]\n  verbs: [\"list\"]\n",
    )?;
    let out = k(
        &admin,
        &[
            "create",
            "clusterrolebinding",
            "devs-view-all",
            "--clusterrole=view",
            "--group=devs",
        ],
    )?;
    ensure!(out.status.success(), "{}", text(&out));
    ensure!(
        !k(&dev, &["get", "nodes"])?.status.success(),
        "no nodes before"
    );
    ensure!(
        k(&admin, &["create", "-f", &extra.to_string_lossy()])?
            .status
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = k(&dev, &["get", "nodes"])?;
        if out.status.success() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "view never aggregated read-nodes: {}",
            text(&out)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Bad roles are refused with the field named.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: bad\nrules:\n- nonResourceURLs: [\"/metrics\"]\n  verbs: [\"get\"]\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: []\n",
    )?;
    let out = k(&admin, &["create", "-f", &bad.to_string_lossy()])?;
    let t = text(&out);
    ensure!(
        !out.status.success()
            && t.contains("rules[0].nonResourceURLs")
            && t.contains("rules[1].verbs"),
        "{t}"
    );
    // roleRef may not change.
    let out = k(
        &admin,
        &[
            "patch",
            "rolebinding",
            "devs-view",
            "--type=merge",
            "-p",
            r#"{"roleRef":{"name":"edit"}}"#,
        ],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("cannot change roleRef"),
        "{}",
        text(&out)
    );
    Ok(())
}

/// Service accounts: a `default` one (and the CA's ConfigMap) in every
/// namespace, tokens from TokenRequest (`kubectl create token`) that
/// authenticate as the account, bound to a pod and dead with it, reviewed
/// by TokenReview, and refused once the account is gone.
#[test]
fn service_account_tokens() -> Result<()> {
    let island = Island::new("accesssa")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let admin = cp.kubeconfig().to_path_buf();
    let k = |kc: &Path, args: &[&str]| kubectl(&island, 33, kc, args);
    let ok = |kc: &Path, args: &[&str]| -> Result<String> {
        let out = k(kc, args)?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            text(&out)
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ok(&admin, &["create", "namespace", "team"])?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(k(&admin, &["-n", "team", "get", "serviceaccount", "default"])?
        .status
        .success()
        && k(
            &admin,
            &["-n", "team", "get", "configmap", "kube-root-ca.crt"],
        )?
        .status
        .success())
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "no default service account or CA in team"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ca: Value = serde_json::from_str(&ok(
        &admin,
        &["-n", "team", "get", "cm", "kube-root-ca.crt", "-o", "json"],
    )?)?;
    ensure!(
        ca["data"]["ca.crt"] == std::fs::read_to_string(cp.data_dir().join("pki/ca.crt"))?,
        "{ca}"
    );

    // A token for the account: it authenticates as the account, which may
    // do nothing until bound.
    let dir = tempfile::tempdir()?;
    let as_token = |token: &str, name: &str| -> Result<std::path::PathBuf> {
        let mut kc: Value = serde_norway::from_str(&std::fs::read_to_string(&admin)?)?;
        kc["users"][0]["user"] = json!({"token": token});
        let path = dir.path().join(name);
        std::fs::write(&path, serde_norway::to_string(&kc)?)?;
        Ok(path)
    };
    let token = ok(&admin, &["-n", "team", "create", "token", "default"])?;
    ensure!(token.split('.').count() == 3, "{token}");
    let sa = as_token(&token, "sa.kubeconfig")?;
    let t = ok(&sa, &["auth", "whoami"])?;
    ensure!(
        t.contains("system:serviceaccount:team:default")
            && t.contains("system:serviceaccounts:team"),
        "{t}"
    );
    let out = k(&sa, &["-n", "team", "get", "pods"])?;
    ensure!(
        !out.status.success()
            && text(&out).contains(
                r#"User "system:serviceaccount:team:default" cannot list resource "pods""#
            ),
        "{}",
        text(&out)
    );
    ok(
        &admin,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "sa-view",
            "--clusterrole=view",
            "--serviceaccount=team:default",
        ],
    )?;
    ok(&sa, &["-n", "team", "get", "pods"])?;
    ensure!(
        !k(&sa, &["-n", "default", "get", "pods"])?.status.success(),
        "only in team"
    );

    // Bound to a pod: valid while that pod lives.
    let pod = dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\nspec:\n  containers:\n  - name: c\n    image: weft.local/busybox:1.36\n",
    )?;
    ok(&admin, &["create", "-f", &pod.to_string_lossy()])?;
    let bound = ok(
        &admin,
        &[
            "-n",
            "team",
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "p",
        ],
    )?;
    let bound_kc = as_token(&bound, "bound.kubeconfig")?;
    ok(&bound_kc, &["-n", "team", "get", "pods"])?;
    // TokenReview says whose it is, and for which audience.
    let review = |token: &str, audiences: Value| -> Result<Value> {
        let f = dir.path().join("review.json");
        std::fs::write(
            &f,
            serde_json::to_string(
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": audiences}}),
            )?,
        )?;
        Ok(serde_json::from_str(&ok(
            &admin,
            &["create", "-f", &f.to_string_lossy(), "-o", "json"],
        )?)?)
    };
    let r = review(&bound, json!([]))?;
    ensure!(
        r["status"]["authenticated"] == true
            && r["status"]["user"]["username"] == "system:serviceaccount:team:default"
            && r["status"]["user"]["extra"]["authentication.kubernetes.io/pod-name"][0] == "p",
        "{r}"
    );
    let r = review(&bound, json!(["vault"]))?;
    ensure!(
        r["status"]["authenticated"] == false,
        "another audience: {r}"
    );
    let vault = ok(
        &admin,
        &[
            "-n",
            "team",
            "create",
            "token",
            "default",
            "--audience",
            "vault",
        ],
    )?;
    let r = review(&vault, json!(["vault"]))?;
    ensure!(r["status"]["authenticated"] == true, "{r}");
    let out = k(
        &as_token(&vault, "vault.kubeconfig")?,
        &["-n", "team", "get", "pods"],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("You must be logged in"),
        "a vault token is not for the API: {}",
        text(&out)
    );
    ok(
        &admin,
        &[
            "-n",
            "team",
            "delete",
            "pod",
            "p",
            "--grace-period=0",
            "--force",
        ],
    )?;
    let out = k(&bound_kc, &["-n", "team", "get", "pods"])?;
    ensure!(
        !out.status.success() && text(&out).contains("You must be logged in"),
        "the pod is gone: {}",
        text(&out)
    );
    ensure!(review(&bound, json!([]))?["status"]["authenticated"] == false);

    // Bad requests.
    let out = k(
        &admin,
        &["-n", "team", "create", "token", "default", "--duration=60s"],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("10 minutes"),
        "{}",
        text(&out)
    );
    let out = k(&admin, &["-n", "team", "create", "token", "nobody"])?;
    ensure!(
        !out.status.success() && text(&out).contains("not found"),
        "{}",
        text(&out)
    );
    // A forged token is nobody.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[2] = "AAAA";
    let out = k(
        &as_token(&parts.join("."), "forged.kubeconfig")?,
        &["-n", "team", "get", "pods"],
    )?;
    ensure!(
        !out.status.success() && text(&out).contains("You must be logged in"),
        "{}",
        text(&out)
    );

    // The account deleted (and made again by the controller, a new uid):
    // its old tokens are refused.
    ok(
        &admin,
        &["-n", "team", "delete", "serviceaccount", "default"],
    )?;
    let out = k(&sa, &["-n", "team", "get", "pods"])?;
    ensure!(
        !out.status.success() && text(&out).contains("You must be logged in"),
        "{}",
        text(&out)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !k(&admin, &["-n", "team", "get", "serviceaccount", "default"])?
        .status
        .success()
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "default was not made again"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ensure!(
        !k(&sa, &["-n", "team", "get", "pods"])?.status.success(),
        "an old token of a new account"
    );
    Ok(())
}
