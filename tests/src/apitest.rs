//! Helpers for API tests: kube-rs clients for a test controller, raw
//! requests, and simulated nodes (Node objects whose Leases a task renews).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::control::ControlPlane;

/// A kube-rs client from the controller's kubeconfig; `token` overrides the
/// admin token (`Some("")` sends none). Call inside the island's runtime.
pub async fn client(cp: &ControlPlane, token: Option<&str>) -> Result<kube::Client> {
    build_client(cp, token, Duration::from_secs(30), true).await
}

/// The kube-rs client of the control plane's kubeconfig: `token` as in
/// [`client`], answers awaited up to `read_timeout`, kube-rs' retries of
/// 429, 503 and 504 on or off.
async fn build_client(
    cp: &ControlPlane,
    token: Option<&str>,
    read_timeout: Duration,
    retry: bool,
) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(cp.kubeconfig())?;
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    match token {
        None => {}
        Some("") => cfg.auth_info.token = None,
        Some(t) => cfg.auth_info.token = Some(t.to_string().into()),
    }
    cfg.read_timeout = Some(read_timeout);
    cfg.default_retry = retry;
    Ok(kube::Client::try_from(cfg)?)
}

/// As `client` (admin), waiting up to `read_timeout` for an answer: for
/// requests a test overloads on purpose, whose own latency it does not
/// judge (kube-rs' default is 295 s).
pub async fn slow_client(cp: &ControlPlane, read_timeout: Duration) -> Result<kube::Client> {
    build_client(cp, None, read_timeout, true).await
}

/// As `client`, without kube-rs' retries of 429, 503 and 504: for tests
/// that must see those answers.
pub async fn client_without_retries(cp: &ControlPlane) -> Result<kube::Client> {
    build_client(cp, None, Duration::from_secs(30), false).await
}

/// A raw response: status code, JSON body (Null when not JSON), headers.
pub struct Raw {
    /// HTTP status.
    pub code: u16,
    /// The body as JSON, or Null.
    pub body: Value,
    /// The body as text.
    pub text: String,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// The body as sent.
    pub bytes: Vec<u8>,
}

/// Sends one request with `client`'s credentials.
pub async fn raw(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
) -> Result<Raw> {
    raw_accepting(client, method, path, body, content_type, None).await
}

/// [`raw`] with an Accept header.
pub async fn raw_accepting(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    content_type: &str,
    accept: Option<&str>,
) -> Result<Raw> {
    let mut req = http::Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("Content-Type", content_type);
    }
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let req = req.body(kube::client::Body::from(body.unwrap_or_default()))?;
    let resp = client
        .send(req)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect_bytes().await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Raw {
        code,
        body,
        text,
        headers,
        bytes: bytes.to_vec(),
    })
}

/// POSTs a JSON object.
pub async fn post(client: &kube::Client, path: &str, obj: &Value) -> Result<Raw> {
    raw(
        client,
        "POST",
        path,
        Some(serde_json::to_vec(obj)?),
        "application/json",
    )
    .await
}

/// The current time as Kubernetes MicroTime.
pub fn micro_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_micros()
    )
}

/// A Ready Node with this much to allocate, as an agent would register it.
pub fn node_object(name: &str, cpu: &str, memory: &str, labels: Value) -> Value {
    let now = micro_now();
    let second = now.split('.').next().unwrap_or_default().to_string() + "Z";
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated", "lastHeartbeatTime": second, "lastTransitionTime": second}],
            "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
        }
    })
}

/// Registers a simulated node and renews its Lease every `every` until the
/// returned handle is aborted.
pub async fn simulated_node(
    client: &kube::Client,
    name: &str,
    cpu: &str,
    memory: &str,
    labels: Value,
    every: Duration,
) -> Result<tokio::task::JoinHandle<()>> {
    let r = post(
        client,
        "/api/v1/nodes",
        &node_object(name, cpu, memory, labels),
    )
    .await?;
    if r.code != 201 {
        bail!("register node {name}: {} {}", r.code, r.text);
    }
    renew_lease(client, name).await?;
    let (client, name) = (client.clone(), name.to_string());
    Ok(tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let _ = renew_lease(&client, &name).await;
            // What an agent does for a pod deleted gracefully: stop it (there
            // is nothing to stop here) and delete it for good.
            let _ = finish_deletions(&client, &name).await;
        }
    }))
}

/// Deletes for good (grace period 0) the pods on `node` that are marked
/// for deletion, as the node's agent would once they stopped.
pub async fn finish_deletions(client: &kube::Client, node: &str) -> Result<()> {
    let r = raw(
        client,
        "GET",
        &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
        None,
        "",
    )
    .await?;
    for p in items(&r.body) {
        if p["metadata"]["deletionTimestamp"].is_string() {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{}",
                p["metadata"]["namespace"].as_str().unwrap_or("default"),
                p["metadata"]["name"].as_str().unwrap_or_default()
            );
            let body = serde_json::to_vec(&json!({"gracePeriodSeconds": 0}))?;
            raw(client, "DELETE", &path, Some(body), "application/json").await?;
        }
    }
    Ok(())
}

/// Creates or renews the node's Lease in kube-node-lease.
pub async fn renew_lease(client: &kube::Client, node: &str) -> Result<()> {
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}");
    let patch = json!({"spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": micro_now()}});
    let r = raw(
        client,
        "PATCH",
        &path,
        Some(serde_json::to_vec(&patch)?),
        "application/merge-patch+json",
    )
    .await?;
    if r.code == 404 {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": node, "namespace": "kube-node-lease"}, "spec": patch["spec"]});
        let r = post(
            client,
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            &lease,
        )
        .await?;
        if r.code != 201 {
            bail!("create lease {node}: {} {}", r.code, r.text);
        }
    } else if r.code != 200 {
        bail!("renew lease {node}: {} {}", r.code, r.text);
    }
    Ok(())
}

/// Waits (up to `timeout`) until `check` returns Some.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("{what}: not within {timeout:?} (last error: {e:#})"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod JSON object.
pub fn pod(name: &str, labels: Value, extra_spec: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "image": "weft.local/busybox:1.36", "command": ["sleep", "3600"]}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec})
}

/// Marks a pod Running and Ready (what its agent would report).
pub async fn mark_ready(client: &kube::Client, ns: &str, name: &str) -> Result<()> {
    let patch = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "image": "x", "imageID": "", "state": {"running": {}}}]}});
    let r = raw(
        client,
        "PATCH",
        &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
        Some(serde_json::to_vec(&patch)?),
        "application/merge-patch+json",
    )
    .await?;
    if r.code != 200 {
        bail!("mark {ns}/{name} ready: {} {}", r.code, r.text);
    }
    Ok(())
}

/// Items of a list response.
pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// The controller's resident memory in bytes, now and at its peak.
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line.split_whitespace().nth(1).unwrap_or_default().parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Opens a watch; the response, whose body is not read yet.
pub async fn open_watch(
    c: &kube::Client,
    path: &str,
) -> Result<http::Response<kube::client::Body>> {
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .body(kube::client::Body::empty())?;
    let resp = c.send(req).await?;
    anyhow::ensure!(resp.status() == 200, "watch {path}: {}", resp.status());
    Ok(resp)
}

/// Appends `data` to `buf` and hands each complete line (newline
/// included) to `f`; what follows the last newline stays in `buf`. Linear in
/// the bytes, however many lines a chunk holds (draining each line from the
/// front would move the rest every time).
pub fn take_lines(
    buf: &mut Vec<u8>,
    data: &[u8],
    mut f: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    buf.extend_from_slice(data);
    let mut start = 0;
    while let Some(pos) = buf[start..].iter().position(|b| *b == b'\n') {
        f(&buf[start..start + pos + 1])?;
        start += pos + 1;
    }
    buf.drain(..start);
    Ok(())
}

/// Reads `n` watch lines from a watch's body; their total size.
pub async fn read_lines(resp: http::Response<kube::client::Body>, n: usize) -> Result<usize> {
    use http_body_util::BodyExt as _;
    let mut body = resp.into_body();
    let (mut lines, mut bytes) = (0, 0);
    while lines < n {
        let frame = body
            .frame()
            .await
            .ok_or_else(|| anyhow::anyhow!("the watch ended after {lines} lines"))??;
        if let Ok(data) = frame.into_data() {
            bytes += data.len();
            lines += data.iter().filter(|b| **b == b'\n').count();
        }
    }
    Ok(bytes)
}

/// Sets pod `name`'s (in `default`) status message to `size` bytes of
/// `fill`: a large object that changes, for watch tests.
pub async fn big_status(c: &kube::Client, name: &str, fill: char, size: usize) -> Result<()> {
    let patch = json!({"status": {"message": fill.to_string().repeat(size)}});
    let r = raw(
        c,
        "PATCH",
        &format!("/api/v1/namespaces/default/pods/{name}/status"),
        Some(serde_json::to_vec(&patch)?),
        "application/merge-patch+json",
    )
    .await?;
    anyhow::ensure!(
        r.code == 200,
        "patch {name}: {} {}",
        r.code,
        &r.text[..r.text.len().min(200)]
    );
    Ok(())
}
