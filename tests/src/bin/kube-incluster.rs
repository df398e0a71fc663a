//! A kube-rs program as an operator in a pod would be written: it finds
//! the API by `Config::infer()` (in a pod, the service account's token and
//! CA and KUBERNETES_SERVICE_HOST/PORT) and, in its namespace, lists, watches,
//! creates, patches, reads logs, execs and deletes; then tries another
//! namespace. Each step prints one JSON line `{"step": ...}` for the test
//! (tests/tests/incluster.rs) to check; an unexpected error ends it with a
//! `{"step": "error"}` line and exit status 1.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::io::AsyncReadExt;

fn out(step: &str, mut fields: serde_json::Value) {
    fields["step"] = json!(step);
    println!("{fields}");
}

async fn run(peer: &str) -> anyhow::Result<()> {
    let config = kube::Config::infer().await?;
    out(
        "config",
        json!({"url": config.cluster_url.to_string(), "namespace": config.default_namespace}),
    );
    let ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config)?;

    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let names: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    out("list", json!({"pods": names}));

    // A watch started before the object it should see.
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let watched = tokio::spawn({
        let cms = cms.clone();
        async move {
            let stream = watcher(cms, watcher::Config::default())
                .applied_objects()
                .try_filter(|cm| {
                    std::future::ready(cm.metadata.name.as_deref() == Some("from-kube-rs"))
                });
            let mut stream = std::pin::pin!(stream);
            stream.next().await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "from-kube-rs"}, "data": {"a": "1"}
    }))?;
    let created = cms.create(&Default::default(), &cm).await?;
    out(
        "create",
        json!({"uid": created.metadata.uid, "namespace": created.metadata.namespace}),
    );
    let seen = tokio::time::timeout(Duration::from_secs(15), watched).await;
    let seen = match seen {
        Ok(Ok(Some(Ok(cm)))) => cm.metadata.uid,
        other => anyhow::bail!("the watch did not see the ConfigMap: {other:?}"),
    };
    out("watch", json!({"uid": seen}));

    let patched = cms
        .patch(
            "from-kube-rs",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"by": "kube-rs"}}, "data": {"a": "2"}})),
        )
        .await?;
    out(
        "patch",
        json!({"labels": patched.metadata.labels, "data": patched.data}),
    );

    let logs = pods.logs(peer, &LogParams::default()).await?;
    out("logs", json!({"text": logs}));

    let mut proc = pods
        .exec(
            peer,
            ["echo", "exec-from-kube-rs"],
            &AttachParams::default().stderr(false),
        )
        .await?;
    let mut stdout = proc.stdout().expect("stdout was asked for");
    let mut text = String::new();
    stdout.read_to_string(&mut text).await?;
    let status = proc.take_status().expect("a status").await;
    out(
        "exec",
        json!({"stdout": text, "status": status.and_then(|s| s.status)}),
    );

    // A terminal: sized before the shell reads its first line, then asked
    // for its size and name; its exit code comes back in the Status.
    let mut proc = pods
        .exec(
            peer,
            ["sh", "-c", "read go; stty size; tty; exit 5"],
            &AttachParams::interactive_tty(),
        )
        .await?;
    let mut resize = proc.terminal_size().expect("a terminal was asked for");
    futures::SinkExt::send(
        &mut resize,
        kube::api::TerminalSize {
            width: 101,
            height: 33,
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stdin = proc.stdin().expect("stdin was asked for");
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n").await?;
    let mut stdout = proc.stdout().expect("stdout was asked for");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(15), stdout.read_to_string(&mut text)).await??;
    let status = proc.take_status().expect("a status").await;
    out(
        "tty",
        json!({"stdout": text, "status": status.as_ref().and_then(|s| s.status.clone()),
            "code": status.and_then(|s| s.details).and_then(|d| d.causes).and_then(|c| c.into_iter().next()).and_then(|c| c.message)}),
    );

    let gone = cms.delete("from-kube-rs", &DeleteParams::default()).await?;
    out("delete", json!({"status": gone.is_right()}));

    // What RBAC does not allow: another namespace.
    let elsewhere: Api<Pod> = Api::namespaced(client, "default");
    match elsewhere.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => out(
            "elsewhere",
            json!({"code": e.code, "message": e.message, "namespace": ns}),
        ),
        Ok(list) => out("elsewhere", json!({"code": 200, "count": list.items.len()})),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let peer = std::env::args().nth(1).unwrap_or_else(|| "talker".into());
    if let Err(e) = run(&peer).await {
        out("error", json!({"error": format!("{e:#}")}));
        std::process::exit(1);
    }
}
