//! `weft cordon`, `uncordon` and `drain`, as kubectl's: cordoning marks
//! the node unschedulable; draining cordons it, then evicts its pods
//! through the eviction subresource, so that PodDisruptionBudgets are kept
//! (a refused eviction, 429, is tried again every 5 s until `--timeout`),
//! and waits until they are gone.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};
use weft_api::client::{Client, ClientError};
use weft_api::error::ApiError;

/// How a drain treats the pods of its node.
pub struct DrainOptions {
    /// Also delete pods no controller would make again.
    pub force: bool,
    /// Leave DaemonSet pods (which would come back) alone.
    pub ignore_daemonsets: bool,
    /// Also evict pods with emptyDir volumes (whose data is lost).
    pub delete_emptydir_data: bool,
    /// The grace period each pod gets (default: its own).
    pub grace_period: Option<i64>,
    /// Give up after this long (zero: never).
    pub timeout: Duration,
}

/// Sets the node's `spec.unschedulable`.
pub async fn cordon(c: &Client, node: &str, on: bool) -> Result<()> {
    let path = format!("/api/v1/nodes/{node}");
    let current = c.get(&path).await?;
    let was = current["spec"]["unschedulable"].as_bool().unwrap_or(false);
    let word = if on { "cordoned" } else { "uncordoned" };
    if was == on {
        println!("node/{node} already {word}");
        return Ok(());
    }
    c.request(
        "PATCH",
        &path,
        Some(&json!({"spec": {"unschedulable": if on { json!(true) } else { Value::Null }}})),
        "application/merge-patch+json",
        "application/json",
    )
    .await?;
    println!("node/{node} {word}");
    Ok(())
}

/// Why a pod may not be evicted without a flag, kubectl's words.
fn blocker(pod: &Value, opts: &DrainOptions) -> Option<(&'static str, bool)> {
    let owner = pod["metadata"]["ownerReferences"]
        .as_array()
        .and_then(|refs| refs.iter().find(|r| r["controller"] == true));
    if owner.is_some_and(|o| o["kind"] == "DaemonSet") {
        // (message, skip it rather than fail)
        return Some((
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
            opts.ignore_daemonsets,
        ));
    }
    if owner.is_none() && !opts.force {
        return Some((
            "cannot delete Pods that declare no controller (use --force to override)",
            false,
        ));
    }
    let empty_dir = pod["spec"]["volumes"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["emptyDir"].is_object()));
    if empty_dir && !opts.delete_emptydir_data {
        return Some((
            "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
            false,
        ));
    }
    None
}

fn finished(pod: &Value) -> bool {
    matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    )
}

/// Cordons `node`, evicts its pods and waits for them to go.
pub async fn drain(c: &Client, node: &str, opts: &DrainOptions) -> Result<()> {
    cordon(c, node, true).await?;
    let list = c
        .get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"
        ))
        .await?;
    let pods: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    let mut errors = Vec::new();
    let mut todo = Vec::new();
    for p in pods {
        let id = format!(
            "{}/{}",
            p["metadata"]["namespace"].as_str().unwrap_or_default(),
            p["metadata"]["name"].as_str().unwrap_or_default()
        );
        match blocker(&p, opts) {
            Some((_, true)) => println!("Warning: ignoring DaemonSet-managed Pod: {id}"),
            Some((why, false)) if !finished(&p) => errors.push(format!("{why}: {id}")),
            _ => todo.push(p),
        }
    }
    if !errors.is_empty() {
        bail!(
            "cannot drain node {node:?}, aborting (it stays cordoned):\n  {}",
            errors.join("\n  ")
        );
    }
    let deadline = (!opts.timeout.is_zero()).then(|| Instant::now() + opts.timeout);
    let mut evicted = Vec::new();
    while let Some(p) = todo.first() {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        let mut body = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns}});
        if let Some(g) = opts.grace_period {
            body["deleteOptions"] = json!({"gracePeriodSeconds": g});
        }
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}/eviction");
        match c
            .request(
                "POST",
                &path,
                Some(&body),
                "application/json",
                "application/json",
            )
            .await
        {
            Ok(_) | Err(ClientError::Api(ApiError { code: 404, .. })) => {
                println!("evicting pod {ns}/{name}");
                evicted.push(todo.remove(0));
            }
            Err(ClientError::Api(e)) if e.code == 429 => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    // Say which of those evicted have gone meanwhile.
                    for p in &evicted {
                        if gone(c, p).await? {
                            println!(
                                "pod/{} evicted",
                                p["metadata"]["name"].as_str().unwrap_or_default()
                            );
                        }
                    }
                    bail!(
                        "draining node {node:?} timed out: {ns}/{name}: {}",
                        e.message
                    );
                }
                let why = e
                    .causes
                    .first()
                    .map_or(e.message.clone(), |c| c.message.clone());
                println!("error when evicting pod {ns}/{name} (will retry after 5s): {why}");
                // Not past the timeout.
                let pause = deadline.map_or(Duration::from_secs(5), |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(5))
                });
                tokio::time::sleep(pause).await;
                // The others first, then this one again.
                let again = todo.remove(0);
                todo.push(again);
            }
            Err(e) => return Err(e.into()),
        }
    }
    for p in &evicted {
        let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        loop {
            if gone(c, p).await? {
                println!("pod/{name} evicted");
                break;
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                bail!("draining node {node:?} timed out waiting for {ns}/{name} to go");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    println!("node/{node} drained");
    Ok(())
}

/// Whether the pod is gone: none of its name and uid exists.
async fn gone(c: &Client, p: &Value) -> Result<bool> {
    let ns = p["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = p["metadata"]["name"].as_str().unwrap_or_default();
    match c.get(&format!("/api/v1/namespaces/{ns}/pods/{name}")).await {
        Ok(now) => Ok(now["metadata"]["uid"] != p["metadata"]["uid"]),
        Err(ClientError::Api(ApiError { code: 404, .. })) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(force: bool) -> DrainOptions {
        DrainOptions {
            force,
            ignore_daemonsets: false,
            delete_emptydir_data: false,
            grace_period: None,
            timeout: Duration::ZERO,
        }
    }

    #[test]
    fn pods_a_drain_would_lose_need_their_flag() {
        let owned =
            json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": true}]}});
        assert!(blocker(&owned, &opts(false)).is_none());
        let bare = json!({"metadata": {}});
        assert!(
            blocker(&bare, &opts(false)).is_some_and(|(w, skip)| w.contains("--force") && !skip)
        );
        assert!(blocker(&bare, &opts(true)).is_none());
        let scratch = json!({"metadata": {"ownerReferences": [{"kind": "ReplicaSet", "controller": true}]},
            "spec": {"volumes": [{"name": "s", "emptyDir": {}}]}});
        assert!(
            blocker(&scratch, &opts(false))
                .is_some_and(|(w, _)| w.contains("--delete-emptydir-data"))
        );
        let daemon =
            json!({"metadata": {"ownerReferences": [{"kind": "DaemonSet", "controller": true}]}});
        assert!(blocker(&daemon, &opts(false)).is_some_and(|(_, skip)| !skip));
    }
}
