//! The API from inside pods: every pod runs as a service account whose
//! token, the cluster CA and its namespace are mounted at
//! /var/run/secrets/kubernetes.io/serviceaccount, and finds the API through
//! the `kubernetes` Service (KUBERNETES_SERVICE_HOST/PORT), load-balanced
//! by the agents' eBPF like any Service; what the token may do is RBAC's.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::Value;
use weft_lab::cluster::{Cluster, ClusterSpec, pod_ready};

fn up(nodes: usize) -> Result<Cluster> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(Cluster::up(ClusterSpec::new(nodes), |_| {}))
}

fn wait_running(c: &Cluster, ns: &str, name: &str) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = c.get_json(&["-n", ns, "pod", name])?;
        if pod_ready(&p) && p["status"]["phase"] == "Running" {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!("pod {ns}/{name} did not start: {p}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

const CALL: &str = r#"TOKEN=$(cat /var/run/secrets/kubernetes.io/serviceaccount/token); NS=$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace); timeout 10 wget -q -O- --no-check-certificate --header "Authorization: Bearer $TOKEN" "https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$NS/pods" 2>&1; echo " exit=$?""#;

#[test]
fn a_pod_lists_pods_with_its_token_as_rbac_allows() -> Result<()> {
    let c = up(2)?;
    c.apply(
        r#"apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: lister, namespace: team}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: team}
spec:
  serviceAccountName: lister
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: opted-out, namespace: team}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
"#,
    )?;
    let pod = wait_running(&c, "team", "client")?;
    // What the admission added: the volume and its mount.
    let volumes = pod["spec"]["volumes"].to_string();
    ensure!(
        volumes.contains("kube-api-access-") && volumes.contains("serviceAccountToken"),
        "{pod}"
    );
    ensure!(pod["spec"]["serviceAccountName"] == "lister", "{pod}");
    let files = c.exec(
        "team",
        "client",
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount"],
    )?;
    ensure!(
        files.1.contains("token") && files.1.contains("ca.crt") && files.1.contains("namespace"),
        "{files:?}"
    );
    let (_, ca) = c.exec(
        "team",
        "client",
        &[
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        ],
    )?;
    ensure!(ca.contains("BEGIN CERTIFICATE"), "{ca}");
    let (_, env) = c.exec("team", "client", &["env"])?;
    ensure!(
        env.contains("KUBERNETES_SERVICE_HOST=") && env.contains("KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );
    // Refused until bound, in kube's words.
    let (_, out) = c.exec("team", "client", &["sh", "-c", CALL])?;
    ensure!(out.contains("403"), "before the binding: {out}");
    c.apply(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lister-view, namespace: team}
subjects:
- {kind: ServiceAccount, name: lister, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
"#,
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = c.exec("team", "client", &["sh", "-c", CALL])?;
        if out.contains("\"kind\":\"PodList\"") && out.contains("\"client\"") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the pod never listed pods: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Only its namespace.
    let other = CALL.replace("namespaces/$NS/pods", "namespaces/default/pods");
    let (_, out) = c.exec("team", "client", &["sh", "-c", &other])?;
    ensure!(
        !out.contains("PodList") && out.contains("403"),
        "another namespace: {out}"
    );
    // A pod that opted out has no token.
    wait_running(&c, "team", "opted-out")?;
    let (code, _) = c.exec(
        "team",
        "opted-out",
        &["ls", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
    )?;
    ensure!(code != 0, "opted out, yet a token");
    // A pod naming an account that does not exist is refused.
    let err = c
        .apply(
            r#"apiVersion: v1
kind: Pod
metadata: {name: stray, namespace: team}
spec:
  serviceAccountName: nobody
  containers:
  - {name: main, image: weft.local/busybox:1.36, command: ["sleep", "3600"]}
"#,
        )
        .expect_err("no such account");
    ensure!(
        format!("{err:#}").contains("serviceaccount \"nobody\" not found"),
        "{err:#}"
    );
    Ok(())
}
