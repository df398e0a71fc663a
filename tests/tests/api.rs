//! The API server's behaviour, driven by a real `weft controller` in a
//! test-owned network namespace: kube-rs (unmodified) and raw HTTP clients,
//! authentication and authorization, bad input, watch semantics, IPAM.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::{Value, json};
use weft_tests::apitest::{
    self, Raw, client, eventually, items, open_watch, post, raw, read_lines, rss,
};
use weft_tests::control::{Backend, ControlOptions, ControlPlane};
use weft_tests::island::{Etcd, Island};

const T: Duration = Duration::from_secs(60);

fn run<F: std::future::Future<Output = Result<()>> + Send>(island: &Island, f: F) -> Result<()> {
    island.block_on(async { tokio::time::timeout(T, f).await? })?
}

async fn kube_rs_checks(cp: &ControlPlane) -> Result<()> {
    let c = client(cp, None).await?;
    // List, as every kube-rs program starts.
    let namespaces: Api<Namespace> = Api::all(c.clone());
    let names: HashSet<String> = namespaces
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        ensure!(names.contains(ns), "namespace {ns} missing from {names:?}");
    }
    // Create, typed.
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (name, app) in [("a1", "a"), ("a2", "a"), ("b1", "b")] {
        let p: Pod = serde_json::from_value(apitest::pod(name, json!({"app": app}), manual()))?;
        let created = pods.create(&PostParams::default(), &p).await?;
        ensure!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
        ensure!(
            created
                .spec
                .as_ref()
                .and_then(|s| s.restart_policy.as_deref())
                == Some("Always"),
            "defaulted"
        );
        ensure!(created.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"));
    }
    // Label and field selectors.
    let a = pods.list(&ListParams::default().labels("app=a")).await?;
    ensure!(a.items.len() == 2, "app=a selects {}", a.items.len());
    let not_a = pods.list(&ListParams::default().labels("app!=a")).await?;
    ensure!(not_a.items.len() == 1 && not_a.items[0].metadata.name.as_deref() == Some("b1"));
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=a2"))
        .await?;
    ensure!(by_name.items.len() == 1);
    let pending = pods
        .list(&ListParams::default().fields("status.phase=Pending,spec.nodeName="))
        .await?;
    ensure!(
        pending.items.len() == 3,
        "unbound pending pods: {}",
        pending.items.len()
    );

    // Watch from the list's resourceVersion; patch with the three patch types.
    let rv = a
        .metadata
        .resource_version
        .clone()
        .expect("list has a resourceVersion");
    let mut events = pods
        .watch(&WatchParams::default().labels("app=a"), &rv)
        .await?
        .boxed();
    pods.patch(
        "a1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "x"}}})),
    )
    .await?;
    pods.patch(
        "a1",
        &PatchParams::default(),
        &Patch::Strategic(
            json!({"spec": {"containers": [{"name": "c", "image": "weft.local/busybox:1.37"}]}}),
        ),
    )
    .await?;
    let json_patch: json_patch::Patch = serde_json::from_value(
        json!([{"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}}]),
    )?;
    let patched = pods
        .patch(
            "a1",
            &PatchParams::default(),
            &Patch::<Value>::Json(json_patch),
        )
        .await?;
    ensure!(
        patched
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tier"))
            .map(String::as_str)
            == Some("x")
    );
    ensure!(
        patched
            .spec
            .as_ref()
            .map(|s| s.containers[0].image.as_deref())
            == Some(Some("weft.local/busybox:1.37")),
        "strategic patch kept the container and changed its image"
    );
    ensure!(
        patched
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("k"))
            .map(String::as_str)
            == Some("v")
    );
    // b1 changes too, but the watch selects app=a only.
    pods.patch(
        "b1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await?;
    pods.delete("a2", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next()).await?? {
            Some(WatchEvent::Modified(p)) => {
                seen.push(format!("MODIFIED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Deleted(p)) => {
                seen.push(format!("DELETED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Added(p)) => {
                seen.push(format!("ADDED {}", p.metadata.name.unwrap_or_default()))
            }
            Some(WatchEvent::Bookmark(_)) => {}
            Some(WatchEvent::Error(e)) => anyhow::bail!("watch error {e:?}"),
            None => anyhow::bail!("watch ended"),
        }
    }
    ensure!(
        seen == ["MODIFIED a1", "MODIFIED a1", "MODIFIED a1", "DELETED a2"],
        "watch saw {seen:?}"
    );

    // kube-runtime's watcher (list, then watch) sees the current state.
    let stream = kube::runtime::watcher(
        pods.clone(),
        kube::runtime::watcher::Config::default().labels("app=a"),
    );
    let first: Vec<Pod> = kube::runtime::WatchStreamExt::applied_objects(stream)
        .take(1)
        .try_collect()
        .await?;
    ensure!(first[0].metadata.name.as_deref() == Some("a1"));

    // Replace with a stale resourceVersion: 409.
    let mut stale = pods.get("b1").await?;
    stale.metadata.resource_version = Some(rv.clone());
    match pods.replace("b1", &PostParams::default(), &stale).await {
        Err(kube::Error::Api(e)) if e.code == 409 && e.reason == "Conflict" => {}
        other => anyhow::bail!("stale replace: {other:?}"),
    }
    // Nodes are cluster-scoped and have a status subresource.
    let nodes: Api<Node> = Api::all(c.clone());
    let n: Node = serde_json::from_value(apitest::node_object("kn1", "2", "4Gi", json!({})))?;
    let made = nodes.create(&PostParams::default(), &n).await?;
    let cidr = made.spec.and_then(|s| s.pod_cidr).unwrap_or_default();
    ensure!(
        cidr.starts_with("10.244.") && cidr.ends_with(".0/24"),
        "node block {cidr}"
    );

    // Server-side apply as kube-rs writes it (Patch::Apply): on create, a
    // change, a conflict with another manager, forced.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "default");
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": v}});
    let pp = PatchParams::apply("kube-rs-test");
    let made = cms.patch("ssa", &pp, &Patch::Apply(cm("1"))).await?;
    ensure!(
        made.data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str)
            == Some("1")
    );
    let owners: Vec<String> = made
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    ensure!(owners == ["kube-rs-test"], "{owners:?}");
    let other = PatchParams::apply("someone-else");
    match cms.patch("ssa", &other, &Patch::Apply(cm("2"))).await {
        Err(kube::Error::Api(e)) if e.code == 409 => ensure!(
            e.message
                .contains("conflict with \"kube-rs-test\": .data.k"),
            "{}",
            e.message
        ),
        other => anyhow::bail!("an apply over another manager's field: {other:?}"),
    }
    let forced = cms
        .patch("ssa", &other.clone().force(), &Patch::Apply(cm("2")))
        .await?;
    ensure!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str)
            == Some("2")
    );
    // Without a field manager: 422, as kube.
    let raw_apply = http::Request::builder()
        .method("PATCH")
        .uri("/api/v1/namespaces/default/configmaps/ssa")
        .header("content-type", "application/apply-patch+yaml")
        .body(b"apiVersion: v1\nkind: ConfigMap\n".to_vec())?;
    match c.request::<Value>(raw_apply).await {
        Err(kube::Error::Api(e)) if e.code == 422 => {
            ensure!(
                e.message.contains("fieldManager: Required value"),
                "{}",
                e.message
            )
        }
        other => anyhow::bail!("an apply without a field manager: {other:?}"),
    }

    // Aggregated discovery, as kubectl asks for it.
    let req = http::Request::builder()
        .uri("/apis")
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(kube::client::Body::empty())?;
    let resp = c.send(req).await?;
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        ct == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        "{ct}"
    );
    use http_body_util::BodyExt as _;
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    let apps = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["metadata"]["name"] == "apps")
        .ok_or_else(|| anyhow::anyhow!("no apps group: {body}"))?;
    let deployments = apps["versions"][0]["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["resource"] == "deployments")
        .ok_or_else(|| anyhow::anyhow!("no deployments: {apps}"))?;
    ensure!(
        deployments["scope"] == "Namespaced"
            && deployments["subresources"]
                .as_array()
                .is_some_and(|s| s
                    .iter()
                    .any(|s| s["subresource"] == "scale"
                        && s["responseKind"]["group"] == "autoscaling")),
        "{deployments}"
    );
    // OpenAPI v3: the root names each group version's document.
    let root: Value = c
        .request(
            http::Request::builder()
                .uri("/openapi/v3")
                .body(Vec::new())?,
        )
        .await?;
    let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("{root}"))?
        .to_string();
    let doc: Value = c
        .request(http::Request::builder().uri(url).body(Vec::new())?)
        .await?;
    ensure!(
        doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"]
            [0]["kind"]
            == "Deployment",
        "no Deployment schema"
    );
    Ok(())
}

#[test]
fn kube_rs_client_works_unmodified_on_sqlite() -> Result<()> {
    let island = Island::new("api")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, kube_rs_checks(&cp))
}

#[test]
fn kube_rs_client_works_unmodified_on_etcd() -> Result<()> {
    let island = Island::new("apietcd")?;
    let etcd = Etcd::start(&island)?;
    let cp = ControlPlane::start(
        &island,
        ControlOptions {
            backend: Backend::Etcd(etcd.endpoint.clone()),
            args: vec![],
        },
    )?;
    run(&island, kube_rs_checks(&cp))
}

/// A pod spec fragment that keeps the scheduler away (another scheduler's
/// pod), so a test sees only its own writes.
fn manual() -> Value {
    json!({"schedulerName": "test-manual"})
}

fn status_reason(r: &Raw) -> &str {
    r.body["reason"].as_str().unwrap_or_default()
}

#[test]
fn tokens_and_node_authorization() -> Result<()> {
    let island = Island::new("auth")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let n1_token = cp.node_token("n1")?;
    ensure!(cp.node_token("n1")? == n1_token, "a node's token is stable");
    run(&island, async {
        let admin = client(&cp, None).await?;
        // No token, a wrong token: 401, on reads and writes alike.
        for token in ["", "not-a-token"] {
            let c = client(&cp, Some(token)).await?;
            let r = raw(&c, "GET", "/api/v1/namespaces", None, "").await?;
            ensure!(
                r.code == 401 && status_reason(&r) == "Unauthorized",
                "token {token:?}: {} {}",
                r.code,
                r.text
            );
            let r = post(
                &c,
                "/api/v1/namespaces",
                &json!({"metadata": {"name": "x"}}),
            )
            .await?;
            ensure!(r.code == 401);
        }
        let node = client(&cp, Some(&n1_token)).await?;
        // Its own Node and Lease: yes. Another's: 403.
        let r = post(
            &node,
            "/api/v1/nodes",
            &apitest::node_object("n1", "2", "2Gi", json!({})),
        )
        .await?;
        ensure!(
            r.code == 201,
            "node registers itself: {} {}",
            r.code,
            r.text
        );
        let r = post(
            &node,
            "/api/v1/nodes",
            &apitest::node_object("n2", "2", "2Gi", json!({})),
        )
        .await?;
        ensure!(
            r.code == 403 && status_reason(&r) == "Forbidden",
            "node n1 creating n2: {} {}",
            r.code,
            r.text
        );
        ensure!(
            post(
                &admin,
                "/api/v1/nodes",
                &apitest::node_object("n2", "2", "2Gi", json!({}))
            )
            .await?
            .code
                == 201
        );
        let status_patch =
            serde_json::to_vec(&json!({"status": {"nodeInfo": {"kubeletVersion": "v1.33.0"}}}))?;
        ensure!(
            raw(
                &node,
                "PATCH",
                "/api/v1/nodes/n1/status",
                Some(status_patch.clone()),
                "application/merge-patch+json"
            )
            .await?
            .code
                == 200
        );
        ensure!(
            raw(
                &node,
                "PATCH",
                "/api/v1/nodes/n2/status",
                Some(status_patch),
                "application/merge-patch+json"
            )
            .await?
            .code
                == 403
        );
        apitest::renew_lease(&node, "n1").await?;
        ensure!(
            apitest::renew_lease(&node, "n2").await.is_err(),
            "n1 renewing n2's lease must fail"
        );
        // Reads are allowed; other writes are not.
        ensure!(raw(&node, "GET", "/api/v1/pods", None, "").await?.code == 200);
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        ensure!(
            post(&node, "/apis/apps/v1/namespaces/default/deployments", &d)
                .await?
                .code
                == 403
        );
        ensure!(
            raw(&node, "DELETE", "/api/v1/namespaces/default", None, "")
                .await?
                .code
                == 403
        );
        // Pod status: only for pods bound to it.
        for (name, bound) in [("on-n1", "n1"), ("on-n2", "n2")] {
            let r = post(
                &admin,
                "/api/v1/namespaces/default/pods",
                &apitest::pod(name, json!({}), json!({"nodeName": bound})),
            )
            .await?;
            ensure!(r.code == 201, "{} {}", r.code, r.text);
        }
        let st = serde_json::to_vec(&json!({"status": {"phase": "Running"}}))?;
        let r = raw(
            &node,
            "PATCH",
            "/api/v1/namespaces/default/pods/on-n1/status",
            Some(st.clone()),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 200 && r.body["status"]["phase"] == "Running",
            "{} {}",
            r.code,
            r.text
        );
        let r = raw(
            &node,
            "PATCH",
            "/api/v1/namespaces/default/pods/on-n2/status",
            Some(st),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 403,
            "n1 changing a pod on n2: {} {}",
            r.code,
            r.text
        );
        // A status write cannot move the pod or change its address.
        let moved = serde_json::to_vec(
            &json!({"spec": {"nodeName": "n2"}, "status": {"podIP": "10.9.9.9"}}),
        )?;
        let r = raw(
            &node,
            "PATCH",
            "/api/v1/namespaces/default/pods/on-n1/status",
            Some(moved),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 200
                && r.body["spec"]["nodeName"] == "n1"
                && r.body["status"]["podIP"] != "10.9.9.9",
            "{}",
            r.text
        );
        node_restriction(&cp, &admin, &node).await
    })
}

/// NodeRestriction (issue 16): what node n1's agent may write on its Node
/// and in Events, and what it may read.
async fn node_restriction(
    cp: &ControlPlane,
    admin: &kube::Client,
    node: &kube::Client,
) -> Result<()> {
    let merge = "application/merge-patch+json";
    let label = |k: &str, v: Option<&str>| {
        serde_json::to_vec(&json!({"metadata": {"labels": {k: v}}})).expect("JSON")
    };
    // Another node: refused, naming the rule.
    let r = raw(
        node,
        "PATCH",
        "/api/v1/nodes/n2",
        Some(label("example.com/x", Some("y"))),
        merge,
    )
    .await?;
    ensure!(
        r.code == 403
            && r.text
                .contains("may only change its own node, not \\\"n2\\\""),
        "n1 changing n2: {} {}",
        r.code,
        r.text
    );
    // Roles and restricted labels: refused, and named.
    for key in [
        "node-role.kubernetes.io/control-plane",
        "node-restriction.kubernetes.io/pool",
        "kubernetes.io/role",
        "sub.k8s.io/x",
    ] {
        let r = raw(
            node,
            "PATCH",
            "/api/v1/nodes/n1",
            Some(label(key, Some(""))),
            merge,
        )
        .await?;
        ensure!(
            r.code == 403
                && r.text
                    .contains(&format!("is not allowed to modify labels: {key}")),
            "n1 setting {key}: {} {}",
            r.code,
            r.text
        );
    }
    // Its own labels and other namespaces: allowed.
    for key in [
        "example.com/team",
        "node.kubernetes.io/pool",
        "topology.kubernetes.io/zone",
    ] {
        let r = raw(
            node,
            "PATCH",
            "/api/v1/nodes/n1",
            Some(label(key, Some("a"))),
            merge,
        )
        .await?;
        ensure!(r.code == 200, "n1 setting {key}: {} {}", r.code, r.text);
    }
    // A role an admin gave it stays through the node's own writes, and the
    // node may not take it off.
    let r = raw(
        admin,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(label("node-role.kubernetes.io/worker", Some(""))),
        merge,
    )
    .await?;
    ensure!(r.code == 200, "admin labelling n1: {}", r.text);
    let r = raw(
        node,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(label("example.com/team", Some("b"))),
        merge,
    )
    .await?;
    ensure!(
        r.code == 200 && r.body["metadata"]["labels"]["node-role.kubernetes.io/worker"] == "",
        "n1 relabelling itself: {}",
        r.text
    );
    let r = raw(
        node,
        "PATCH",
        "/api/v1/nodes/n1",
        Some(label("node-role.kubernetes.io/worker", None)),
        merge,
    )
    .await?;
    ensure!(r.code == 403, "n1 dropping its role: {} {}", r.code, r.text);
    let taint =
        serde_json::to_vec(&json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}}))?;
    let r = raw(node, "PATCH", "/api/v1/nodes/n1", Some(taint), merge).await?;
    ensure!(
        r.code == 403 && r.text.contains("taints"),
        "n1 tainting itself: {} {}",
        r.code,
        r.text
    );
    // A new node may not register with a role either; nothing is stored.
    let n3 = client(cp, Some(&cp.node_token("n3")?)).await?;
    let r = post(
        &n3,
        "/api/v1/nodes",
        &apitest::node_object(
            "n3",
            "2",
            "2Gi",
            json!({"node-role.kubernetes.io/control-plane": ""}),
        ),
    )
    .await?;
    ensure!(
        r.code == 403,
        "n3 registering as control plane: {} {}",
        r.code,
        r.text
    );
    ensure!(
        raw(admin, "GET", "/api/v1/nodes/n3", None, "").await?.code == 404,
        "n3 was stored"
    );

    // Events: about itself and its pods only.
    let event = |ns: &str, kind: &str, about_ns: &str, name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": "e.", "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": kind, "namespace": about_ns, "name": name},
            "type": "Warning", "reason": "Test", "message": "m",
        })
    };
    let events = |ns: &str| format!("/api/v1/namespaces/{ns}/events");
    for (ns, kind, about_ns, name, want) in [
        ("default", "Pod", "default", "on-n1", 201),
        ("default", "Node", "", "n1", 201),
        ("default", "Pod", "default", "on-n2", 403),
        ("default", "Pod", "default", "missing", 403),
        ("kube-system", "Pod", "default", "on-n1", 403),
        ("default", "Node", "", "n2", 403),
        ("default", "Deployment", "default", "d", 403),
    ] {
        let r = post(node, &events(ns), &event(ns, kind, about_ns, name)).await?;
        ensure!(
            r.code == want
                && (want != 403 || r.text.contains("may only write Events about itself")),
            "n1's Event in {ns} about {kind} {about_ns}/{name}: {} {}",
            r.code,
            r.text
        );
    }
    // An Event about another node's pod may not be rewritten by n1, nor
    // one of n1's turned into one about n2's pod.
    let theirs = post(
        admin,
        &events("default"),
        &event("default", "Pod", "default", "on-n2"),
    )
    .await?;
    let theirs = theirs.body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let msg = serde_json::to_vec(&json!({"message": "rewritten"}))?;
    let r = raw(
        node,
        "PATCH",
        &format!("{}/{theirs}", events("default")),
        Some(msg),
        merge,
    )
    .await?;
    ensure!(
        r.code == 403,
        "n1 rewriting an Event about n2's pod: {} {}",
        r.code,
        r.text
    );
    let mine = post(
        node,
        &events("default"),
        &event("default", "Pod", "default", "on-n1"),
    )
    .await?;
    let mine = mine.body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let retarget = serde_json::to_vec(&json!({"involvedObject": {"name": "on-n2"}}))?;
    let r = raw(
        node,
        "PATCH",
        &format!("{}/{mine}", events("default")),
        Some(retarget),
        merge,
    )
    .await?;
    ensure!(
        r.code == 403,
        "n1 retargeting its Event: {} {}",
        r.code,
        r.text
    );

    // Reads: what the agent serves from, not workloads' controllers nor Events.
    for (path, want) in [
        ("/api/v1/services", 200),
        ("/api/v1/namespaces", 200),
        ("/apis/discovery.k8s.io/v1/endpointslices", 200),
        ("/apis/networking.k8s.io/v1/networkpolicies", 200),
        (
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            200,
        ),
        ("/apis/apps/v1/deployments", 403),
        ("/api/v1/events", 403),
        (
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            403,
        ),
    ] {
        let r = raw(node, "GET", path, None, "").await?;
        ensure!(r.code == want, "n1 reading {path}: {} {}", r.code, r.text);
    }
    Ok(())
}

#[test]
fn bad_input_gets_a_status_and_stores_nothing() -> Result<()> {
    let island = Island::new("bad")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let pods = "/api/v1/namespaces/default/pods";
        let check = |r: &Raw, code: u16, reason: &str, what: &str| -> Result<()> {
            ensure!(
                r.code == code && r.body["kind"] == "Status" && status_reason(r) == reason,
                "{what}: expected {code} {reason}, got {} {}",
                r.code,
                r.text
            );
            Ok(())
        };
        check(
            &raw(
                &c,
                "POST",
                pods,
                Some(b"{not json".to_vec()),
                "application/json",
            )
            .await?,
            400,
            "BadRequest",
            "malformed JSON",
        )?;
        check(
            &raw(
                &c,
                "POST",
                pods,
                Some(b"kind: [".to_vec()),
                "application/yaml",
            )
            .await?,
            400,
            "BadRequest",
            "malformed YAML",
        )?;
        check(
            &raw(&c, "GET", "/api/v1/widgets", None, "").await?,
            404,
            "NotFound",
            "unknown resource",
        )?;
        check(
            &raw(&c, "GET", "/apis/example.com/v1/things", None, "").await?,
            404,
            "NotFound",
            "unknown group",
        )?;
        // Unknown fields: refused under Strict with the path, warned otherwise, never kept.
        let mut p = apitest::pod("strict", json!({}), json!({}));
        p["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        let r = raw(
            &c,
            "POST",
            &format!("{pods}?fieldValidation=Strict"),
            Some(serde_json::to_vec(&p)?),
            "application/json",
        )
        .await?;
        check(&r, 400, "BadRequest", "unknown field, strict")?;
        ensure!(
            r.text.contains("spec.containers[0].imagePullPolicyy"),
            "the field path is named: {}",
            r.text
        );
        let r = raw(
            &c,
            "POST",
            pods,
            Some(serde_json::to_vec(&p)?),
            "application/json",
        )
        .await?;
        ensure!(r.code == 201, "warn mode creates: {} {}", r.code, r.text);
        let warning = r
            .headers
            .get("warning")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        ensure!(
            warning.contains("imagePullPolicyy"),
            "warning header: {warning:?}"
        );
        ensure!(
            r.body["spec"]["containers"][0]
                .get("imagePullPolicyy")
                .is_none(),
            "an unknown field is not stored"
        );
        // Wrong types name the field.
        let mut p = apitest::pod("typed", json!({}), json!({}));
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}]);
        let r = post(&c, pods, &p).await?;
        check(&r, 400, "BadRequest", "wrong type")?;
        ensure!(
            r.text.contains("spec.containers[0].ports[0].containerPort"),
            "{}",
            r.text
        );
        // Invalid values: 422 with causes and field paths.
        let r = post(&c, pods, &apitest::pod("Bad_Name", json!({}), json!({}))).await?;
        check(&r, 422, "Invalid", "invalid name")?;
        ensure!(
            r.body["details"]["causes"][0]["field"] == "metadata.name",
            "{}",
            r.text
        );
        let mut p = apitest::pod("nocontainers", json!({}), json!({}));
        p["spec"]["containers"] = json!([]);
        let r = post(&c, pods, &p).await?;
        check(&r, 422, "Invalid", "no containers")?;
        ensure!(r.body["details"]["causes"][0]["field"] == "spec.containers");
        // Quantities: a negative one is refused at its field, with one sign
        // at most; a huge one is stored (Kubernetes' quantities saturate)
        // and the scheduler goes on with other pods (see the scheduler's
        // unit tests).
        for (q, why) in [
            ("-1", "greater than or equal to 0"),
            ("+-1", "must be a quantity"),
        ] {
            let mut p = apitest::pod("badquantity", json!({}), manual());
            p["spec"]["containers"][0]["resources"] = json!({"limits": {"memory": q}});
            let r = post(&c, pods, &p).await?;
            check(&r, 422, "Invalid", "a bad quantity")?;
            ensure!(
                r.body["details"]["causes"][0]["field"]
                    == "spec.containers[0].resources.limits[memory]"
                    && r.text.contains(why),
                "{q}: {}",
                r.text
            );
        }
        // Label keys and values, each named as itself.
        for (labels, field, value) in [
            (json!({"bad key!": "x"}), "metadata.labels", "bad key!"),
            (json!({"app": "-x"}), "metadata.labels[app]", "-x"),
        ] {
            let r = post(&c, pods, &apitest::pod("badlabel", labels, manual())).await?;
            check(&r, 422, "Invalid", "a bad label")?;
            let cause = &r.body["details"]["causes"][0];
            ensure!(
                cause["field"] == field
                    && cause["message"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with(&format!("Invalid value: \"{value}\"")),
                "{}",
                r.text
            );
        }
        // What Weft cannot honour of a pod's security is refused by name
        // (a network sysctl on the node's network would change the node's),
        // in a pod and in a workload's template, never run without it.
        for (spec, field, what) in [
            (
                json!({"hostNetwork": true, "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]}}),
                "spec.securityContext.sysctls[0].name",
                "node's network",
            ),
            (json!({"hostUsers": false}), "spec.hostUsers", "Forbidden"),
            (
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
                "spec.securityContext.sysctls[0].name",
                "not in the safe set",
            ),
            (
                json!({"securityContext": {"seLinuxOptions": {"level": "s0:c1"}}}),
                "spec.securityContext.seLinuxOptions",
                "SELinux",
            ),
            (
                json!({"securityContext": {"runAsUser": -1}}),
                "spec.securityContext.runAsUser",
                "between 0 and 2147483647",
            ),
            // Volumes: what is not mounted yet is refused.
            (
                json!({"volumes": [{"name": "nfs", "nfs": {"server": "a", "path": "/x"}}]}),
                "spec.volumes[0].nfs",
                "supported values: \"configMap\"",
            ),
            (
                json!({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 60}}]}}]}),
                "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds",
                "less than 10 minutes",
            ),
            (
                json!({"volumes": [{"name": "c", "configMap": {"name": "x", "items": [{"key": "a", "path": "../etc/passwd"}]}}]}),
                "spec.volumes[0].configMap.items[0].path",
                "'..'",
            ),
            (
                json!({"volumes": [{"name": "c", "secret": {"secretName": "x", "defaultMode": 4096}}]}),
                "spec.volumes[0].secret.defaultMode",
                "0777",
            ),
            (
                json!({"volumes": [{"name": "d", "downwardAPI": {"items": [{"path": "ip", "fieldRef": {"fieldPath": "status.podIP"}}]}}]}),
                "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath",
                "supported values",
            ),
            (
                json!({"volumes": [{"name": "e", "emptyDir": {"medium": "HugePages"}}]}),
                "spec.volumes[0].emptyDir.medium",
                "Memory",
            ),
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "etc"}}]}),
                "spec.volumes[0].hostPath.path",
                "absolute",
            ),
            (
                json!({"volumes": [{"name": "h", "hostPath": {"path": "/etc", "type": "Folder"}}]}),
                "spec.volumes[0].hostPath.type",
                "DirectoryOrCreate",
            ),
        ] {
            let mut p = apitest::pod("insecure", json!({}), manual());
            for (k, v) in spec.as_object().unwrap() {
                p["spec"][k] = v.clone();
            }
            let r = post(&c, pods, &p).await?;
            check(&r, 422, "Invalid", field)?;
            let cause = &r.body["details"]["causes"][0];
            ensure!(
                cause["field"] == field
                    && cause["message"].as_str().unwrap_or_default().contains(what),
                "{field}: {}",
                r.text
            );
            let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "insecure"},
                "spec": {"selector": {"matchLabels": {"a": "b"}},
                         "template": {"metadata": {"labels": {"a": "b"}}, "spec": p["spec"].clone()}}});
            d["spec"]["template"]["spec"]
                .as_object_mut()
                .unwrap()
                .remove("nodeName");
            let r = post(&c, "/apis/apps/v1/namespaces/default/deployments", &d).await?;
            check(&r, 422, "Invalid", field)?;
            ensure!(
                r.text.contains(&format!("spec.template.{field}")),
                "{field}: {}",
                r.text
            );
        }
        let mut p = apitest::pod("apparmor", json!({}), manual());
        p["metadata"]["annotations"] =
            json!({"container.apparmor.security.beta.kubernetes.io/c": "runtime/default"});
        let r = post(&c, pods, &p).await?;
        check(&r, 422, "Invalid", "an AppArmor annotation")?;
        ensure!(r.text.contains("AppArmor"), "{}", r.text);
        // A Service's name is a DNS-1035 label: it starts with a letter.
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1abc"}, "spec": {"ports": [{"port": 80}]}});
        let r = post(&c, "/api/v1/namespaces/default/services", &svc).await?;
        check(&r, 422, "Invalid", "a Service name starting with a digit")?;
        ensure!(
            r.body["details"]["causes"][0]["field"] == "metadata.name",
            "{}",
            r.text
        );
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000, "protocol": "TCPX"}]}});
        let r = post(&c, "/api/v1/namespaces/default/services", &svc).await?;
        check(&r, 422, "Invalid", "bad port and protocol")?;
        let fields: Vec<&str> = r.body["details"]["causes"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| c["field"].as_str()).collect())
            .unwrap_or_default();
        ensure!(
            fields.contains(&"spec.ports[0].port") && fields.contains(&"spec.ports[0].protocol"),
            "{fields:?}"
        );
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "c"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let r = post(&c, "/apis/apps/v1/namespaces/default/deployments", &d).await?;
        check(&r, 422, "Invalid", "selector does not match labels")?;
        ensure!(r.text.contains("spec.template.metadata.labels"));
        // Kind in the body must match the path.
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &apitest::pod("x", json!({}), json!({})),
        )
        .await?;
        check(&r, 400, "BadRequest", "kind mismatch")?;
        // A namespace that does not exist.
        let r = post(
            &c,
            "/api/v1/namespaces/nope/pods",
            &apitest::pod("x", json!({}), json!({})),
        )
        .await?;
        check(&r, 404, "NotFound", "missing namespace")?;
        // Duplicates and stale updates: 409.
        let ok = post(&c, pods, &apitest::pod("dup", json!({}), manual())).await?;
        ensure!(ok.code == 201);
        check(
            &post(&c, pods, &apitest::pod("dup", json!({}), manual())).await?,
            409,
            "AlreadyExists",
            "duplicate",
        )?;
        let mut stale = ok.body.clone();
        stale["metadata"]["labels"] = json!({"v": "1"});
        ensure!(
            raw(
                &c,
                "PUT",
                &format!("{pods}/dup"),
                Some(serde_json::to_vec(&stale)?),
                "application/json"
            )
            .await?
            .code
                == 200
        );
        stale["metadata"]["labels"] = json!({"v": "2"});
        check(
            &raw(
                &c,
                "PUT",
                &format!("{pods}/dup"),
                Some(serde_json::to_vec(&stale)?),
                "application/json",
            )
            .await?,
            409,
            "Conflict",
            "stale update",
        )?;
        // Over the size limit: 413.
        let mut big = apitest::pod("big", json!({}), json!({}));
        big["metadata"]["annotations"] = json!({"blob": "x".repeat(4 * 1024 * 1024)});
        check(
            &post(&c, pods, &big).await?,
            413,
            "RequestEntityTooLarge",
            "large body",
        )?;
        // Selectors that do not parse.
        check(
            &raw(
                &c,
                "GET",
                &format!("{pods}?labelSelector=a%20in%20(b"),
                None,
                "",
            )
            .await?,
            400,
            "BadRequest",
            "label selector",
        )?;
        check(
            &raw(
                &c,
                "GET",
                &format!("{pods}?fieldSelector=spec.bogus%3Dx"),
                None,
                "",
            )
            .await?,
            400,
            "BadRequest",
            "field selector",
        )?;
        // dryRun=All: checked and answered, not stored; other values refused.
        let dry = serde_json::to_vec(&apitest::pod("dry", json!({}), manual()))?;
        let r = raw(
            &c,
            "POST",
            &format!("{pods}?dryRun=All"),
            Some(dry),
            "application/json",
        )
        .await?;
        ensure!(
            r.code == 201 && r.body["metadata"]["name"] == "dry",
            "{} {}",
            r.code,
            r.text
        );
        check(
            &raw(&c, "GET", &format!("{pods}/dry"), None, "").await?,
            404,
            "NotFound",
            "a dry-run create stores nothing",
        )?;
        let bad = serde_json::to_vec(&apitest::pod("Bad_Name", json!({}), json!({})))?;
        check(
            &raw(
                &c,
                "POST",
                &format!("{pods}?dryRun=All"),
                Some(bad.clone()),
                "application/json",
            )
            .await?,
            422,
            "Invalid",
            "a dry run validates",
        )?;
        check(
            &raw(
                &c,
                "POST",
                &format!("{pods}?dryRun=Some"),
                Some(bad),
                "application/json",
            )
            .await?,
            400,
            "BadRequest",
            "dryRun value",
        )?;
        // Server-side apply of what is not an object of the kind: 400;
        // `force` on another patch: 422.
        let r = raw(
            &c,
            "PATCH",
            &format!("{pods}/dup?fieldManager=x"),
            Some(b"{}".to_vec()),
            "application/apply-patch+yaml",
        )
        .await?;
        ensure!(
            r.code == 400 && r.text.contains("Object 'Kind' is missing"),
            "{} {}",
            r.code,
            r.text
        );
        let r = raw(
            &c,
            "PATCH",
            &format!("{pods}/dup?force=true"),
            Some(b"{}".to_vec()),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("may not be specified for non-apply patch"),
            "{} {}",
            r.code,
            r.text
        );
        // Nothing half-stored: only the three good pods exist.
        let list = raw(&c, "GET", pods, None, "").await?;
        let names: Vec<String> = items(&list.body)
            .iter()
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        ensure!(names == ["dup", "strict"], "stored pods: {names:?}");
        Ok(())
    })
}

/// Reads watch events (one JSON object per line) from a raw watch request.
async fn watch_lines(
    c: &kube::Client,
    path: &str,
    want: usize,
    timeout: Duration,
) -> Result<Vec<Value>> {
    let req = http::Request::builder()
        .method("GET")
        .uri(path)
        .body(kube::client::Body::empty())?;
    let resp = c.send(req).await?;
    ensure!(resp.status() == 200, "watch status {}", resp.status());
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    use http_body_util::BodyExt;
    while out.len() < want {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(f)) => f?,
        };
        if let Ok(data) = frame.into_data() {
            apitest::take_lines(&mut buf, &data, |line| {
                out.push(serde_json::from_slice(line)?);
                Ok(())
            })?;
        }
    }
    Ok(out)
}

#[test]
fn watch_resumes_filters_bookmarks_and_expires() -> Result<()> {
    let island = Island::new("watch")?;
    let args = ["--watch-history", "5", "--bookmark-interval", "300ms"]
        .map(String::from)
        .to_vec();
    let cp = ControlPlane::start(
        &island,
        ControlOptions {
            backend: Backend::Sqlite,
            args,
        },
    )?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let pods = "/api/v1/namespaces/default/pods";
        let start = raw(&c, "GET", pods, None, "").await?.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for (name, app) in [("w1", "web"), ("w2", "db"), ("w3", "web")] {
            ensure!(
                post(&c, pods, &apitest::pod(name, json!({"app": app}), manual()))
                    .await?
                    .code
                    == 201
            );
        }
        // Resume from a resourceVersion: the later events, in order, selected.
        let ev = watch_lines(
            &c,
            &format!("{pods}?watch=1&resourceVersion={start}&labelSelector=app%3Dweb"),
            2,
            Duration::from_secs(5),
        )
        .await?;
        let names: Vec<&str> = ev
            .iter()
            .map(|e| e["object"]["metadata"]["name"].as_str().unwrap_or_default())
            .collect();
        ensure!(
            names == ["w1", "w3"] && ev.iter().all(|e| e["type"] == "ADDED"),
            "{ev:?}"
        );
        // resourceVersion=0: the current state as ADDED first.
        let ev = watch_lines(
            &c,
            &format!("{pods}?watch=true&resourceVersion=0"),
            3,
            Duration::from_secs(5),
        )
        .await?;
        ensure!(ev.len() == 3 && ev.iter().all(|e| e["type"] == "ADDED"));
        // An object that stops matching the selector is DELETED for that watch.
        let rv = raw(&c, "GET", pods, None, "").await?.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let patch = serde_json::to_vec(&json!({"metadata": {"labels": {"app": "db"}}}))?;
        ensure!(
            raw(
                &c,
                "PATCH",
                &format!("{pods}/w3"),
                Some(patch),
                "application/merge-patch+json"
            )
            .await?
            .code
                == 200
        );
        let ev = watch_lines(
            &c,
            &format!("{pods}?watch=1&resourceVersion={rv}&labelSelector=app%3Dweb"),
            1,
            Duration::from_secs(5),
        )
        .await?;
        // As kube-apiserver sends it: the object as it last matched, at the
        // change's resourceVersion.
        let now = raw(&c, "GET", &format!("{pods}/w3"), None, "").await?.body;
        ensure!(
            ev.len() == 1
                && ev[0]["type"] == "DELETED"
                && ev[0]["object"]["metadata"]["name"] == "w3"
                && ev[0]["object"]["metadata"]["labels"]["app"] == "web"
                && ev[0]["object"]["metadata"]["resourceVersion"]
                    == now["metadata"]["resourceVersion"],
            "{ev:?}"
        );
        // Bookmarks, when asked for, carry a resourceVersion to resume from.
        let now_rv = raw(&c, "GET", pods, None, "").await?.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let bm = tokio::spawn({
            let c = c.clone();
            let now_rv = now_rv.clone();
            async move {
                watch_lines(&c, &format!("/api/v1/namespaces/default/services?watch=1&allowWatchBookmarks=true&resourceVersion={now_rv}"), 1, Duration::from_secs(8)).await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Writes elsewhere move the revision on; the bookmark says so.
        ensure!(
            post(&c, pods, &apitest::pod("w4", json!({}), manual()))
                .await?
                .code
                == 201
        );
        let ev = bm.await??;
        ensure!(
            ev.len() == 1 && ev[0]["type"] == "BOOKMARK" && ev[0]["object"]["kind"] == "Service",
            "{ev:?}"
        );
        let bm_rv: i64 = ev[0]["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .parse()?;
        ensure!(
            bm_rv > now_rv.parse::<i64>()?,
            "bookmark {bm_rv} after {now_rv}"
        );
        // Too old: after more writes than the history kept and a compaction,
        // a watch from the start gets an ERROR event with 410 Gone.
        for i in 0..10 {
            ensure!(
                post(
                    &c,
                    pods,
                    &apitest::pod(&format!("x{i}"), json!({}), json!({}))
                )
                .await?
                .code
                    == 201
            );
        }
        let ev = eventually(
            Duration::from_secs(15),
            "410 for a compacted resourceVersion",
            || {
                let c = c.clone();
                let start = start.clone();
                async move {
                    let ev = watch_lines(
                        &c,
                        &format!("{pods}?watch=1&resourceVersion={start}"),
                        1,
                        Duration::from_secs(2),
                    )
                    .await?;
                    Ok(ev.into_iter().next().filter(|e| e["type"] == "ERROR"))
                }
            },
        )
        .await?;
        ensure!(
            ev["object"]["code"] == 410 && ev["object"]["reason"] == "Expired",
            "{ev}"
        );
        Ok(())
    })
}

#[test]
fn ipam_never_hands_out_an_address_twice() -> Result<()> {
    let island = Island::new("ipam")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        // Node blocks: distinct /24s of 10.244.0.0/16; a taken one is refused.
        let mut blocks = HashSet::new();
        for i in 0..5 {
            let r = post(
                &c,
                "/api/v1/nodes",
                &apitest::node_object(&format!("n{i}"), "2", "2Gi", json!({})),
            )
            .await?;
            ensure!(r.code == 201);
            let cidr = r.body["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ensure!(
                cidr.starts_with("10.244.") && cidr.ends_with("/24") && blocks.insert(cidr.clone()),
                "block {cidr}"
            );
        }
        let taken = blocks.iter().next().cloned().unwrap_or_default();
        let mut n = apitest::node_object("dup", "2", "2Gi", json!({}));
        n["spec"] = json!({"podCIDR": taken});
        let r = post(&c, "/api/v1/nodes", &n).await?;
        ensure!(
            r.code == 422 && r.text.contains("already allocated"),
            "{} {}",
            r.code,
            r.text
        );
        // Pods get addresses from their node's block, all distinct, when bound.
        let mut tasks = Vec::new();
        for i in 0..60 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let node = format!("n{}", i % 2);
                post(
                    &c,
                    "/api/v1/namespaces/default/pods",
                    &apitest::pod(&format!("p{i}"), json!({}), json!({"nodeName": node})),
                )
                .await
            }));
        }
        let mut ips = HashSet::new();
        for t in tasks {
            let r = t.await??;
            ensure!(r.code == 201, "{} {}", r.code, r.text);
            let ip = r.body["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let node = r.body["spec"]["nodeName"].as_str().unwrap_or_default();
            let block = raw(&c, "GET", &format!("/api/v1/nodes/{node}"), None, "")
                .await?
                .body["spec"]["podCIDR"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let prefix = block.trim_end_matches("0/24");
            ensure!(
                ip.starts_with(prefix),
                "pod IP {ip} outside its node's block {block}"
            );
            ensure!(ips.insert(ip.clone()), "IP {ip} handed out twice");
        }
        // The binding subresource gives an address too.
        ensure!(
            post(
                &c,
                "/api/v1/namespaces/default/pods",
                &apitest::pod("unbound", json!({}), manual())
            )
            .await?
            .code
                == 201
        );
        let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "unbound"}, "target": {"kind": "Node", "name": "n3"}});
        // A dry run binds nothing; a Binding names the pod of its URL.
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods/unbound/binding?dryRun=All",
            &binding,
        )
        .await?;
        ensure!(r.code == 201, "dry-run binding: {} {}", r.code, r.text);
        let other = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "other"}, "target": {"kind": "Node", "name": "n3"}});
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods/unbound/binding",
            &other,
        )
        .await?;
        ensure!(
            r.code == 400,
            "binding another pod's name: {} {}",
            r.code,
            r.text
        );
        // A dry run asked for in any way is one, or a 400: never a real write.
        for q in ["dryRun=All&dryRun=", "dryRun", "dryRun=Bogus&dryRun=All"] {
            let r = post(
                &c,
                &format!("/api/v1/namespaces/default/pods/unbound/binding?{q}"),
                &binding,
            )
            .await?;
            ensure!(r.code == 400, "binding with {q}: {} {}", r.code, r.text);
        }
        let pod = raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/pods/unbound",
            None,
            "",
        )
        .await?
        .body;
        ensure!(
            pod["spec"]["nodeName"].is_null(),
            "a dry run or refused binding bound the pod: {pod}"
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods/unbound/binding",
            &binding,
        )
        .await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        let bound = raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/pods/unbound",
            None,
            "",
        )
        .await?
        .body;
        ensure!(
            bound["spec"]["nodeName"] == "n3"
                && ips.insert(
                    bound["status"]["podIP"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                )
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods/unbound/binding",
            &binding,
        )
        .await?;
        ensure!(r.code == 409, "binding twice: {} {}", r.code, r.text);
        // ClusterIPs: concurrent creates never collide.
        let mut tasks = Vec::new();
        for i in 0..80 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s{i}")}, "spec": {"ports": [{"port": 80}]}});
                post(&c, "/api/v1/namespaces/default/services", &svc).await
            }));
        }
        let mut vips = HashSet::new();
        for t in tasks {
            let r = t.await??;
            ensure!(r.code == 201, "{} {}", r.code, r.text);
            let ip = r.body["spec"]["clusterIP"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let parsed: std::net::Ipv4Addr = ip.parse()?;
            ensure!(
                u32::from(parsed) >> 20 == u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20,
                "{ip} outside 10.96.0.0/12"
            );
            ensure!(vips.insert(ip.clone()), "ClusterIP {ip} handed out twice");
        }
        // A requested ClusterIP: honoured when free, refused clearly when not.
        let want = |name: &str, ip: &str| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"clusterIP": ip, "ports": [{"port": 53, "protocol": "UDP"}]}});
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &want("dns", "10.96.0.10"),
        )
        .await?;
        ensure!(
            r.code == 201 && r.body["spec"]["clusterIP"] == "10.96.0.10",
            "{}",
            r.text
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &want("dns2", "10.96.0.10"),
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("provided IP is already allocated"),
            "{} {}",
            r.code,
            r.text
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &want("far", "192.168.1.1"),
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("not in the valid range"),
            "{} {}",
            r.code,
            r.text
        );
        // Released on delete: the address can be requested again.
        ensure!(
            raw(
                &c,
                "DELETE",
                "/api/v1/namespaces/default/services/dns",
                None,
                ""
            )
            .await?
            .code
                == 200
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &want("dns2", "10.96.0.10"),
        )
        .await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        // clusterIPs: a request through it alone is honoured; it cannot
        // disagree with clusterIP, hold two, or move a Service onto another
        // Service's address (which it once could, through a patch).
        let mut only = want("byips", "");
        only["spec"]["clusterIPs"] = json!(["10.96.0.20"]);
        let r = post(&c, "/api/v1/namespaces/default/services", &only).await?;
        ensure!(
            r.code == 201 && r.body["spec"]["clusterIP"] == "10.96.0.20",
            "{} {}",
            r.code,
            r.text
        );
        let mut two = want("twoips", "10.96.0.21");
        two["spec"]["clusterIPs"] = json!(["10.96.0.22"]);
        let r = post(&c, "/api/v1/namespaces/default/services", &two).await?;
        ensure!(
            r.code == 422 && r.text.contains("spec.clusterIPs[0]"),
            "{} {}",
            r.code,
            r.text
        );
        two["spec"]["clusterIPs"] = json!(["10.96.0.21", "fd00::1"]);
        let r = post(&c, "/api/v1/namespaces/default/services", &two).await?;
        ensure!(
            r.code == 422 && r.text.contains("spec.clusterIPs"),
            "{} {}",
            r.code,
            r.text
        );
        for patch in [
            json!({"spec": {"clusterIPs": ["10.96.0.10"]}}),
            json!({"spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"]}}),
        ] {
            let r = raw(
                &c,
                "PATCH",
                "/api/v1/namespaces/default/services/byips",
                Some(serde_json::to_vec(&patch)?),
                "application/merge-patch+json",
            )
            .await?;
            ensure!(
                r.code == 422 && r.text.contains("spec.clusterIP"),
                "{patch}: {} {}",
                r.code,
                r.text
            );
        }
        // Leaving clusterIPs out of an update keeps them, as Kubernetes does.
        let r = raw(
            &c,
            "PATCH",
            "/api/v1/namespaces/default/services/byips",
            Some(serde_json::to_vec(&json!({"spec": {"clusterIPs": null}}))?),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 200 && r.body["spec"]["clusterIPs"] == json!(["10.96.0.20"]),
            "{} {}",
            r.code,
            r.text
        );
        // Headless through clusterIPs alone is headless.
        let mut headless = want("headless", "");
        headless["spec"]["clusterIPs"] = json!(["None"]);
        let r = post(&c, "/api/v1/namespaces/default/services", &headless).await?;
        ensure!(
            r.code == 201 && r.body["spec"]["clusterIP"] == "None",
            "{} {}",
            r.code,
            r.text
        );
        // NodePorts: allocated in range, distinct, a taken one refused.
        let np = |name: &str, port: Option<u16>| {
            let mut p = json!({"port": 80});
            if let Some(n) = port {
                p["nodePort"] = json!(n);
            }
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"type": "NodePort", "ports": [p]}})
        };
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &np("np1", Some(30080)),
        )
        .await?;
        ensure!(
            r.code == 201 && r.body["spec"]["ports"][0]["nodePort"] == 30080,
            "{}",
            r.text
        );
        let r = post(
            &c,
            "/api/v1/namespaces/default/services",
            &np("np2", Some(30080)),
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("provided port is already allocated"),
            "{}",
            r.text
        );
        let r = post(&c, "/api/v1/namespaces/default/services", &np("np3", None)).await?;
        let port = r.body["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0);
        ensure!(
            r.code == 201 && (30000..=32767).contains(&port) && port != 30080,
            "{}",
            r.text
        );
        Ok(())
    })
}

#[test]
fn pods_on_nodes_are_deleted_gracefully() -> Result<()> {
    let island = Island::new("gd")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        // A node that renews its lease but never finishes deletions.
        let n = apitest::node_object("n1", "2", "4Gi", json!({}));
        ensure!(post(&c, "/api/v1/nodes", &n).await?.code == 201);
        apitest::renew_lease(&c, "n1").await?;
        let pod = |name: &str, extra: Value| {
            let mut p = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
            if let Some(m) = extra.as_object() {
                for (k, v) in m {
                    p["spec"][k] = v.clone();
                }
            }
            p
        };
        let pods = "/api/v1/namespaces/default/pods";
        ensure!(
            post(
                &c,
                pods,
                &pod(
                    "bound",
                    json!({"nodeName": "n1", "terminationGracePeriodSeconds": 7})
                )
            )
            .await?
            .code
                == 201
        );
        ensure!(
            post(&c, pods, &pod("short", json!({"nodeName": "n1"})))
                .await?
                .code
                == 201
        );
        ensure!(
            post(
                &c,
                pods,
                &pod("loose", json!({"nodeSelector": {"no": "such"}}))
            )
            .await?
            .code
                == 201
        );
        // Bound: only marked, with the pod's own grace period.
        let r = raw(&c, "DELETE", &format!("{pods}/bound"), None, "").await?;
        ensure!(r.code == 200, "{}", r.text);
        let got = raw(&c, "GET", &format!("{pods}/bound"), None, "").await?;
        ensure!(got.code == 200, "a bound pod vanished at once");
        ensure!(
            got.body["metadata"]["deletionGracePeriodSeconds"] == 7,
            "{}",
            got.text
        );
        ensure!(got.body["metadata"]["deletionTimestamp"].is_string());
        // Deleting again changes nothing; grace period 0 removes it.
        let again = raw(&c, "DELETE", &format!("{pods}/bound"), None, "").await?;
        ensure!(again.code == 200 && again.body["metadata"]["deletionGracePeriodSeconds"] == 7);
        let body = serde_json::to_vec(&json!({"gracePeriodSeconds": 0}))?;
        let r = raw(
            &c,
            "DELETE",
            &format!("{pods}/bound"),
            Some(body),
            "application/json",
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        ensure!(
            raw(&c, "GET", &format!("{pods}/bound"), None, "")
                .await?
                .code
                == 404
        );
        // The query parameter asks for a grace period too; a bad one is a 400.
        let r = raw(
            &c,
            "DELETE",
            &format!("{pods}/short?gracePeriodSeconds=3"),
            None,
            "",
        )
        .await?;
        ensure!(
            r.code == 200 && r.body["metadata"]["deletionGracePeriodSeconds"] == 3,
            "{}",
            r.text
        );
        let r = raw(
            &c,
            "DELETE",
            &format!("{pods}/short?gracePeriodSeconds=soon"),
            None,
            "",
        )
        .await?;
        ensure!(r.code == 400, "{}", r.text);
        // Unbound: nobody runs it, so it goes at once.
        ensure!(
            raw(&c, "DELETE", &format!("{pods}/loose"), None, "")
                .await?
                .code
                == 200
        );
        ensure!(
            raw(&c, "GET", &format!("{pods}/loose"), None, "")
                .await?
                .code
                == 404
        );
        Ok(())
    })
}

/// NetworkPolicy (networking.k8s.io/v1, issue 7): served, stored, listed
/// by kubectl with its table, and bad specs refused with field paths.
#[test]
fn network_policies_are_served_validated_and_listed() -> Result<()> {
    let island = Island::new("netpol")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let path = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";
    run(&island, async {
        let c = client(&cp, None).await?;
        let good = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "web-allow"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [
                        {"podSelector": {"matchLabels": {"role": "client"}},
                         "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a", "b"]}]}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
                    ],
                    "ports": [{"port": "http"}, {"protocol": "UDP", "port": 5000, "endPort": 5010}]
                }],
                "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "UDP", "port": 53}]}]
            }
        });
        let r = post(&c, path, &good).await?;
        ensure!(r.code == 201, "create: {}", r.text);
        let got = raw(&c, "GET", &format!("{path}/web-allow"), None, "").await?;
        // Stored as sent, with the port's protocol defaulted as
        // kube-apiserver does.
        let mut want = good["spec"].clone();
        want["ingress"][0]["ports"][0]["protocol"] = json!("TCP");
        ensure!(
            got.code == 200 && got.body["spec"] == want,
            "stored as sent: {}",
            got.text
        );
        // policyTypes is filled in: Ingress, and Egress with egress rules.
        for (name, egress, types) in [
            ("only-in", json!(null), json!(["Ingress"])),
            (
                "in-out",
                json!([{"ports": [{"port": 53, "protocol": "UDP"}]}]),
                json!(["Ingress", "Egress"]),
            ),
        ] {
            let mut p = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name}, "spec": {"podSelector": {}}});
            if !egress.is_null() {
                p["spec"]["egress"] = egress;
            }
            let r = post(&c, path, &p).await?;
            ensure!(
                r.code == 201 && r.body["spec"]["policyTypes"] == types,
                "{name}: {}",
                r.text
            );
        }
        // Every mistake is named by its field.
        let bad = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "bad"},
            "spec": {
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]},
                "policyTypes": ["Sideways"],
                "ingress": [{
                    "from": [
                        {"ipBlock": {"cidr": "10.0.0.0/33"}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}},
                        {"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}},
                        {},
                        {"ipBlock": {"cidr": "10.0.0.1"}},
                        {"namespaceSelector": {"matchExpressions": [
                            {"key": "a", "operator": "In"},
                            {"key": "b", "operator": "Exists", "values": ["x"]}
                        ]}}
                    ],
                    "ports": [
                        {"port": 70000},
                        {"protocol": "ICMP", "port": 80},
                        {"port": 90, "endPort": 80},
                        {"port": "http", "endPort": 90}
                    ]
                }]
            }
        });
        let r = post(&c, path, &bad).await?;
        ensure!(
            r.code == 422 && r.body["reason"] == "Invalid",
            "bad spec: {}",
            r.text
        );
        let fields: HashSet<String> = r.body["details"]["causes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["field"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        for f in [
            "spec.podSelector",
            "spec.policyTypes[0]",
            "spec.ingress[0].from[0].ipBlock.cidr",
            "spec.ingress[0].from[1].ipBlock.except[0]",
            "spec.ingress[0].from[2].ipBlock",
            "spec.ingress[0].ports[0].port",
            "spec.ingress[0].ports[1].protocol",
            "spec.ingress[0].ports[2].endPort",
            "spec.ingress[0].ports[3].endPort",
            "spec.ingress[0].from[4].ipBlock.cidr",
            "spec.ingress[0].from[5].namespaceSelector.matchExpressions[0].values",
            "spec.ingress[0].from[5].namespaceSelector.matchExpressions[1].values",
        ] {
            ensure!(fields.contains(f), "no cause for {f}: {fields:?}");
        }
        ensure!(
            fields
                .iter()
                .any(|f| f.starts_with("spec.ingress[0].from[3]")),
            "an empty peer: {fields:?}"
        );
        let gone = raw(&c, "GET", &format!("{path}/bad"), None, "").await?;
        ensure!(gone.code == 404, "nothing stored: {}", gone.text);
        Ok(())
    })?;
    // kubectl finds the kind through discovery and prints its table.
    let out = cp.kubectl(None, &["get", "netpol"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("web-allow") && text.contains("app=web"),
        "kubectl get netpol: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp.kubectl(None, &["delete", "networkpolicy", "web-allow"])?;
    ensure!(out.status.success(), "kubectl delete");
    Ok(())
}

/// LIST pages (issue 16): `limit` and `continue` over one snapshot, as
/// kube-rs and kubectl page; an expired token gets 410 with a fresh one;
/// malformed parameters get 400.
#[test]
fn lists_page_over_a_consistent_snapshot() -> Result<()> {
    let island = Island::new("paging")?;
    // Five revisions of history, compacted every five seconds: a token
    // expires soon after a few writes.
    let cp = ControlPlane::start(
        &island,
        ControlOptions {
            args: vec!["--watch-history".into(), "5".into()],
            ..Default::default()
        },
    )?;
    let path = "/api/v1/namespaces/default/pods";
    run(&island, async {
        let c = client(&cp, None).await?;
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        let mut names = Vec::new();
        for i in 0..25 {
            let name = format!("p{i:02}");
            let p: Pod =
                serde_json::from_value(apitest::pod(&name, json!({"app": "x"}), manual()))?;
            pods.create(&PostParams::default(), &p).await?;
            names.push(name);
        }
        // Page one, then writes, then the rest: the rest is as of page one.
        let first = raw(&c, "GET", &format!("{path}?limit=10"), None, "").await?;
        ensure!(first.code == 200, "page one: {}", first.text);
        let rv = first.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut got: Vec<String> = items(&first.body)
            .iter()
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        ensure!(got.len() == 10, "page one holds {}", got.len());
        let p: Pod = serde_json::from_value(apitest::pod("a-new", json!({}), manual()))?;
        pods.create(&PostParams::default(), &p).await?;
        pods.delete("p20", &DeleteParams::default().grace_period(0))
            .await?;
        let mut token = first.body["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(
            !token.is_empty(),
            "page one has no continue token: {}",
            first.text
        );
        let mut pages = 1;
        while !token.is_empty() {
            let page = raw(
                &c,
                "GET",
                &format!("{path}?limit=10&continue={token}"),
                None,
                "",
            )
            .await?;
            ensure!(page.code == 200, "page {}: {}", pages + 1, page.text);
            ensure!(
                page.body["metadata"]["resourceVersion"].as_str() == Some(&rv),
                "page {} read at another revision: {}",
                pages + 1,
                page.body["metadata"]
            );
            got.extend(items(&page.body).iter().map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            }));
            token = page.body["metadata"]["continue"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            pages += 1;
        }
        ensure!(
            got == names && pages == 3,
            "{pages} pages of the snapshot: {got:?}"
        );
        // The same list at that exact revision, all at once.
        let exact = raw(
            &c,
            "GET",
            &format!("{path}?resourceVersion={rv}&resourceVersionMatch=Exact"),
            None,
            "",
        )
        .await?;
        ensure!(
            exact.code == 200 && items(&exact.body).len() == 25,
            "exact: {}",
            exact.text
        );

        // kube-rs pages with its ListParams.
        let mut seen = Vec::new();
        let mut lp = ListParams::default().limit(7);
        loop {
            let list = pods.list(&lp).await?;
            seen.extend(list.items.iter().filter_map(|p| p.metadata.name.clone()));
            match list.metadata.continue_.filter(|t| !t.is_empty()) {
                Some(t) => lp = lp.continue_token(&t),
                None => break,
            }
        }
        let mut now: Vec<String> = names.iter().filter(|n| *n != "p20").cloned().collect();
        now.insert(0, "a-new".into());
        ensure!(seen == now, "kube-rs pages: {seen:?}");

        // A token from the list of every namespace, used on one
        // namespace's list, does not reach into the others.
        let everywhere = raw(&c, "GET", "/api/v1/pods?limit=1", None, "").await?;
        let token = everywhere.body["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(!token.is_empty(), "no token: {}", everywhere.text);
        let elsewhere = raw(
            &c,
            "GET",
            &format!("/api/v1/namespaces/kube-system/pods?continue={token}"),
            None,
            "",
        )
        .await?;
        ensure!(
            elsewhere.code == 200 && items(&elsewhere.body).is_empty(),
            "kube-system's list, continued with another list's token: {}",
            elsewhere.text.chars().take(300).collect::<String>()
        );

        // Malformed parameters.
        for (q, want) in [
            ("resourceVersion=abc", "invalid resourceVersion"),
            ("limit=ten", "invalid limit"),
            ("continue=not-a-token", "continue key is not valid"),
            ("resourceVersion=+5", "invalid resourceVersion"),
            ("watch=1&resourceVersion=abc", "invalid resourceVersion"),
            (
                "watch=1&resourceVersion=1&resourceVersionMatch=NotOlderThan",
                "forbidden for watch",
            ),
            (
                "resourceVersionMatch=Exact",
                "resourceVersionMatch is forbidden",
            ),
            (
                &format!(
                    "continue={}&resourceVersion=5",
                    first.body["metadata"]["continue"]
                        .as_str()
                        .unwrap_or_default()
                ),
                "not allowed when using continue",
            ),
        ] {
            let r = raw(&c, "GET", &format!("{path}?{q}"), None, "").await?;
            ensure!(
                r.code == 400 && r.text.contains(want),
                "{q}: {} {}",
                r.code,
                r.text
            );
        }
        // A GET reads resourceVersion as a list does.
        let r = raw(
            &c,
            "GET",
            &format!("{path}/p00?resourceVersion=abc"),
            None,
            "",
        )
        .await?;
        ensure!(
            r.code == 400,
            "GET with a malformed resourceVersion: {} {}",
            r.code,
            r.text
        );
        let r = raw(
            &c,
            "GET",
            &format!("{path}/p00?resourceVersion={rv}"),
            None,
            "",
        )
        .await?;
        ensure!(
            r.code == 200,
            "GET not older than {rv}: {} {}",
            r.code,
            r.text
        );
        // A namespaced kind is not created on its cluster-wide path.
        let r = post(
            &c,
            "/api/v1/pods",
            &apitest::pod("nowhere", json!({}), manual()),
        )
        .await?;
        ensure!(r.code == 405, "POST /api/v1/pods: {} {}", r.code, r.text);
        // Nor deleted there: that would empty the kind in every namespace.
        let r = raw(&c, "DELETE", "/api/v1/pods", None, "").await?;
        ensure!(r.code == 405, "DELETE /api/v1/pods: {} {}", r.code, r.text);
        ensure!(
            items(&raw(&c, "GET", path, None, "").await?.body).len() == 25,
            "pods went"
        );
        let ahead = rv.parse::<i64>()? + 100_000;
        // kube-rs retries a 504 (as client-go does): ask once.
        let once = apitest::client_without_retries(&cp).await?;
        let r = raw(
            &once,
            "GET",
            &format!("{path}?resourceVersion={ahead}"),
            None,
            "",
        )
        .await?;
        ensure!(
            r.code == 504 && r.text.contains("Too large resource version"),
            "future: {} {}",
            r.code,
            r.text
        );

        // An expired token: 410 Expired with a token that goes on from now.
        let page = raw(&c, "GET", &format!("{path}?limit=5"), None, "").await?;
        let stale = page.body["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for i in 0..10 {
            let p: Pod =
                serde_json::from_value(apitest::pod(&format!("z{i}"), json!({}), manual()))?;
            pods.create(&PostParams::default(), &p).await?;
        }
        let expired = eventually(Duration::from_secs(20), "the token to expire", || {
            let c = c.clone();
            let stale = stale.clone();
            async move {
                let r = raw(
                    &c,
                    "GET",
                    &format!("{path}?limit=5&continue={stale}"),
                    None,
                    "",
                )
                .await?;
                Ok((r.code == 410).then_some(r))
            }
        })
        .await?;
        ensure!(
            expired.body["reason"] == "Expired"
                && expired
                    .text
                    .contains("too old to display a consistent list"),
            "expired: {}",
            expired.text
        );
        let fresh = expired.body["metadata"]["continue"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(!fresh.is_empty(), "no fresh token: {}", expired.text);
        let rest = raw(&c, "GET", &format!("{path}?continue={fresh}"), None, "").await?;
        let rest_names: Vec<String> = items(&rest.body)
            .iter()
            .map(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        // p04 to p24 but p20, and z0 to z9.
        ensure!(
            rest.code == 200
                && rest_names.first().map(String::as_str) == Some("p04")
                && rest_names.len() == 30,
            "after the fresh token: {} {rest_names:?}",
            rest.code
        );
        Ok(())
    })?;
    // kubectl's chunked get (tables, 4 rows a request) lists every pod.
    let out = cp.kubectl(Some(31), &["get", "pods", "--chunk-size=4", "-v=6"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "kubectl get: {stderr}");
    let rows = stdout.lines().skip(1).count();
    ensure!(rows == 35, "kubectl listed {rows} pods: {stdout}");
    ensure!(
        stderr.contains("limit=4") && stderr.contains("continue="),
        "kubectl did not page: {stderr}"
    );
    Ok(())
}

/// Kubernetes' size limits (issue 16): all annotations of an object
/// together at most 256 KiB (422), a stored object at most 1.5 MiB by
/// default (413), dry runs included; nothing is stored.
#[test]
fn objects_and_annotations_have_kubernetes_size_limits() -> Result<()> {
    let island = Island::new("limits")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let path = "/api/v1/namespaces/default/pods";
    run(&island, async {
        let c = client(&cp, None).await?;
        let with_annotations = |name: &str, sizes: &[usize]| {
            let mut p = apitest::pod(name, json!({}), manual());
            for (i, n) in sizes.iter().enumerate() {
                p["metadata"]["annotations"][format!("example.com/a{i}")] = json!("x".repeat(*n));
            }
            p
        };
        // 300 KiB in one annotation, and in three that pass alone.
        for (name, sizes) in [("one", vec![300 * 1024]), ("three", vec![100 * 1024; 3])] {
            let r = post(&c, path, &with_annotations(name, &sizes)).await?;
            ensure!(
                r.code == 422
                    && r.body["details"]["causes"][0]["field"] == "metadata.annotations"
                    && r.body["details"]["causes"][0]["reason"] == "FieldValueTooLong"
                    && r.text.contains("262144"),
                "{name}: {} {}",
                r.code,
                r.text
            );
        }
        // Under the limit it is stored; a patch that takes it over is refused.
        let r = post(&c, path, &with_annotations("under", &[200 * 1024])).await?;
        ensure!(
            r.code == 201,
            "200 KiB of annotations: {} {}",
            r.code,
            r.text
        );
        let patch =
            json!({"metadata": {"annotations": {"example.com/more": "y".repeat(100 * 1024)}}});
        let r = raw(
            &c,
            "PATCH",
            &format!("{path}/under"),
            Some(serde_json::to_vec(&patch)?),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("metadata.annotations"),
            "patch over the limit: {} {}",
            r.code,
            r.text
        );
        let bad_key = json!({"metadata": {"annotations": {"not a key!": "v"}}});
        let r = raw(
            &c,
            "PATCH",
            &format!("{path}/under"),
            Some(serde_json::to_vec(&bad_key)?),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("not a key!"),
            "bad annotation key: {} {}",
            r.code,
            r.text
        );

        // 2 MiB in an environment variable: within the 3 MiB body limit,
        // over the 1.5 MiB object limit; so in a dry run too.
        let mut big = apitest::pod("big", json!({}), manual());
        big["spec"]["containers"][0]["env"] =
            json!([{"name": "BLOB", "value": "z".repeat(2 * 1024 * 1024)}]);
        for q in ["", "?dryRun=All"] {
            let r = post(&c, &format!("{path}{q}"), &big).await?;
            ensure!(
                r.code == 413
                    && r.body["reason"] == "RequestEntityTooLarge"
                    && r.text.contains("1572864"),
                "2 MiB pod{q}: {} {}",
                r.code,
                &r.text[..r.text.len().min(300)]
            );
        }
        let got = raw(&c, "GET", &format!("{path}/big"), None, "").await?;
        ensure!(got.code == 404, "the refused pod was stored: {}", got.code);

        // An object just under the limit, held by a finalizer, can still
        // be deleted: the deletion's mark takes it a little over, and a
        // refusal would leave it (and its namespace) stuck.
        let mut held = apitest::pod("held", json!({}), manual());
        held["metadata"]["finalizers"] = json!(["example.com/hold"]);
        held["spec"]["containers"][0]["env"] = big["spec"]["containers"][0]["env"].clone();
        let r = post(&c, path, &held).await?;
        let size: usize = r
            .text
            .split("too large to store: ")
            .nth(1)
            .and_then(|t| t.split(' ').next())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!("no size in {} {}", r.code, &r.text[..r.text.len().min(300)])
            })?;
        let fits = 2 * 1024 * 1024 - (size - 1572864) - 16;
        held["spec"]["containers"][0]["env"][0]["value"] = json!("z".repeat(fits));
        let r = post(&c, path, &held).await?;
        ensure!(
            r.code == 201,
            "a pod 16 bytes under the limit: {} {}",
            r.code,
            &r.text[..r.text.len().min(300)]
        );
        let r = raw(&c, "DELETE", &format!("{path}/held"), None, "").await?;
        ensure!(
            r.code == 200,
            "deleting it: {} {}",
            r.code,
            &r.text[..r.text.len().min(300)]
        );
        let release = serde_json::to_vec(&json!({"metadata": {"finalizers": null}}))?;
        let r = raw(
            &c,
            "PATCH",
            &format!("{path}/held"),
            Some(release),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 200,
            "releasing it: {} {}",
            r.code,
            &r.text[..r.text.len().min(300)]
        );
        eventually(Duration::from_secs(10), "the held pod gone", || {
            let c = c.clone();
            async move {
                Ok((raw(&c, "GET", &format!("{path}/held"), None, "")
                    .await?
                    .code
                    == 404)
                    .then_some(()))
            }
        })
        .await?;
        Ok(())
    })
}

/// A watcher that reads nothing is closed once its buffer stays full
/// (issue 16), counted in /metrics and logged, while a watcher beside it
/// gets every event.
#[test]
fn a_watcher_that_reads_nothing_is_closed() -> Result<()> {
    let island = Island::new("slowwatch")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods",
            &apitest::pod("big", json!({}), manual()),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let rv = r.body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/pods?watch=1&resourceVersion={rv}");
        let stalled = open_watch(&c, &path).await?;
        let reader = tokio::spawn(read_lines(open_watch(&c, &path).await?, 40));
        // A watcher with a selector gets the same lines (the shared ones).
        let selected = format!("{path}&fieldSelector=metadata.name%3Dbig");
        let selecting = tokio::spawn(read_lines(open_watch(&c, &selected).await?, 40));
        // A timeout beyond what the clock can count is no timeout (it once
        // panicked the watch's task).
        let endless =
            open_watch(&c, &format!("{path}&timeoutSeconds=18446744073709551615")).await?;
        // 40 MiB: more than the socket buffers and the watcher's own.
        for i in 0..40 {
            apitest::big_status(&c, "big", char::from(b'a' + (i % 26) as u8), 1024 * 1024).await?;
        }
        for (what, watcher) in [("reading", reader), ("selecting", selecting)] {
            let got = tokio::time::timeout(Duration::from_secs(30), watcher).await???;
            ensure!(
                got >= 40 * 1024 * 1024,
                "the {what} watcher got {got} bytes"
            );
        }
        let closed = eventually(
            Duration::from_secs(30),
            "the stalled watcher closed",
            || {
                let c = c.clone();
                async move {
                    let m = raw(&c, "GET", "/metrics", None, "").await?;
                    let n = m
                        .text
                        .lines()
                        .find_map(|l| l.strip_prefix("weft_apiserver_watchers_closed_slow_total "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    Ok((n >= 1).then_some(m.text))
                }
            },
        )
        .await?;
        ensure!(
            closed.contains("weft_controller_heap_in_use_bytes"),
            "{closed}"
        );
        drop(stalled);
        drop(endless);
        ensure!(
            cp.log().contains("read nothing for 10 s"),
            "not logged:\n{}",
            cp.log()
        );
        ensure!(!cp.log().contains("panicked"), "{}", cp.log());
        // A node's token may not read the metrics.
        let node = client(&cp, Some(&cp.node_token("n1")?)).await?;
        ensure!(raw(&node, "GET", "/metrics", None, "").await?.code == 403);
        Ok(())
    })
}

/// 1 000 watchers of a 1 MiB pod patched five times, and 200 that read
/// nothing (issue 16): the controller's memory stays bounded, and comes
/// back once they close.
#[test]
fn a_thousand_watchers_share_each_event() -> Result<()> {
    const WATCHERS: usize = 1_000;
    const STALLED: usize = 200;
    let island = Island::new("watchmem")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let pid = cp.pid().expect("running");
    island.block_on(async {
        use futures::StreamExt as _;
        let c = client(&cp, None).await?;
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods",
            &apitest::pod("big", json!({}), manual()),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        apitest::big_status(&c, "big", 'x', 1024 * 1024).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (idle, _) = rss(pid)?;
        let rv = raw(&c, "GET", "/api/v1/namespaces/default/pods/big", None, "")
            .await?
            .body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let path = format!("/api/v1/pods?watch=1&resourceVersion={rv}");
        let opened = std::time::Instant::now();
        let watches: Vec<_> = futures::stream::iter(0..WATCHERS + STALLED)
            .map(|_| open_watch(&c, &path))
            .buffer_unordered(64)
            .collect()
            .await;
        let mut watches = watches.into_iter().collect::<Result<Vec<_>>>()?;
        eprintln!("{} watches open in {:?}", watches.len(), opened.elapsed());
        let stalled: Vec<_> = watches.split_off(WATCHERS);
        let readers: Vec<_> = watches
            .into_iter()
            .map(|w| tokio::spawn(read_lines(w, 5)))
            .collect();
        for i in 0..5 {
            apitest::big_status(&c, "big", char::from(b'a' + i as u8), 1024 * 1024).await?;
        }
        for r in readers {
            let got = tokio::time::timeout(Duration::from_secs(120), r).await???;
            ensure!(got >= 5 * 1024 * 1024, "a watcher got {got} bytes");
        }
        let (during, peak) = rss(pid)?;
        eprintln!(
            "controller RSS idle {} MiB, with the watchers {} MiB, peak {} MiB",
            idle >> 20,
            during >> 20,
            peak >> 20
        );
        drop(stalled);
        ensure!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
        let back = eventually(
            Duration::from_secs(60),
            "memory back within 200 MiB of idle",
            || async move {
                let (now, _) = rss(pid)?;
                Ok((now < idle + (200 << 20)).then_some(now))
            },
        )
        .await?;
        eprintln!("back to {} MiB", back >> 20);
        Ok(())
    })?
}

/// Pod Security admission: namespaces labelled with an enforce level refuse
/// the pods that break it (403 naming each broken rule, in Kubernetes'
/// words), warn about what breaks their warn level and about workload
/// templates, and refuse unknown levels; namespaces without a label get
/// the controller's --pod-security-default.
#[test]
fn pod_security_levels_refuse_and_warn() -> Result<()> {
    let island = Island::new("psa")?;
    let cp = ControlPlane::start(
        &island,
        ControlOptions {
            args: vec!["--pod-security-default".into(), "baseline".into()],
            ..ControlOptions::default()
        },
    )?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let ns = |name: &str, labels: Value| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        let r = post(
            &c,
            "/api/v1/namespaces",
            &ns(
                "strict",
                json!({"pod-security.kubernetes.io/enforce": "restricted"}),
            ),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = post(
            &c,
            "/api/v1/namespaces",
            &ns("base", json!({"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted"})),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = post(
            &c,
            "/api/v1/namespaces",
            &ns(
                "typo",
                json!({"pod-security.kubernetes.io/enforce": "strict"}),
            ),
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("pod-security.kubernetes.io/enforce"),
            "an unknown level: {}",
            r.text
        );
        let warnings = |r: &weft_tests::apitest::Raw| -> Vec<String> {
            r.headers
                .get_all("Warning")
                .iter()
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .collect()
        };
        // A plain pod breaks restricted: refused, each rule named.
        let plain = apitest::pod("plain", json!({}), manual());
        let r = post(&c, "/api/v1/namespaces/strict/pods", &plain).await?;
        ensure!(
            r.code == 403 && r.body["reason"] == "Forbidden",
            "{}",
            r.text
        );
        let msg = r.body["message"].as_str().unwrap_or_default();
        for want in [
            "pods \"plain\" is forbidden: violates PodSecurity \"restricted:latest\": ",
            "allowPrivilegeEscalation != false (container \"c\" must set securityContext.allowPrivilegeEscalation=false)",
            "unrestricted capabilities (container \"c\" must set securityContext.capabilities.drop=[\"ALL\"])",
            "runAsNonRoot != true (pod or container \"c\" must set securityContext.runAsNonRoot=true)",
            "seccompProfile (pod or container \"c\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
        ] {
            ensure!(msg.contains(want), "{want} not in {msg}");
        }
        // A hardened one is admitted.
        let mut hardened = apitest::pod("hardened", json!({}), manual());
        hardened["spec"]["securityContext"] = json!({"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}});
        hardened["spec"]["containers"][0]["securityContext"] =
            json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
        let r = post(&c, "/api/v1/namespaces/strict/pods", &hardened).await?;
        ensure!(r.code == 201, "{}", r.text);
        ensure!(warnings(&r).is_empty(), "{:?}", warnings(&r));
        // Baseline enforced, restricted warned: the plain pod is admitted
        // with a warning, a privileged one refused.
        let r = post(&c, "/api/v1/namespaces/base/pods", &plain).await?;
        ensure!(r.code == 201, "{}", r.text);
        let w = warnings(&r);
        ensure!(
            w.iter().any(
                |w| w.contains("would violate PodSecurity \\\"restricted:latest\\\"")
                    || w.contains("would violate PodSecurity \"restricted:latest\"")
            ),
            "{w:?}"
        );
        let mut privileged = apitest::pod("priv", json!({}), manual());
        privileged["spec"]["containers"][0]["securityContext"] = json!({"privileged": true});
        let r = post(&c, "/api/v1/namespaces/base/pods", &privileged).await?;
        ensure!(
            r.code == 403 && r.text.contains("violates PodSecurity \\\"baseline:latest\\\": privileged (container \\\"c\\\" must not set securityContext.privileged=true)"),
            "{}",
            r.text
        );
        // The controller's default level where no label says otherwise.
        let r = post(&c, "/api/v1/namespaces/default/pods", &privileged).await?;
        ensure!(
            r.code == 403 && r.text.contains("baseline:latest"),
            "{}",
            r.text
        );
        // A workload's template is warned about, not refused: its pods are.
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": plain["spec"].clone()}}});
        let r = post(&c, "/apis/apps/v1/namespaces/strict/deployments", &d).await?;
        ensure!(r.code == 201, "{}", r.text);
        let w = warnings(&r);
        ensure!(w.iter().any(|w| w.contains("restricted:latest")), "{w:?}");
        // A PATCH is judged by what it makes of the spec: the template
        // given the node's network is warned about by name...
        let merge = |path: &str, body: Value| {
            let c = c.clone();
            let path = path.to_string();
            async move {
                raw(
                    &c,
                    "PATCH",
                    &path,
                    Some(serde_json::to_vec(&body)?),
                    "application/merge-patch+json",
                )
                .await
            }
        };
        let r = merge(
            "/apis/apps/v1/namespaces/strict/deployments/d",
            json!({"spec": {"template": {"spec": {"hostNetwork": true}}}}),
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        let w = warnings(&r);
        ensure!(
            w.iter()
                .any(|w| w.contains("restricted:latest") && w.contains("host namespaces")),
            "{w:?}"
        );
        // ...a patch of its labels alone is not judged again.
        let r = merge(
            "/apis/apps/v1/namespaces/strict/deployments/d",
            json!({"metadata": {"labels": {"tier": "web"}}}),
        )
        .await?;
        ensure!(
            r.code == 200 && warnings(&r).is_empty(),
            "{} {:?}",
            r.text,
            warnings(&r)
        );
        // The pods a workload's controller makes are held to the level
        // too: the ReplicaSet reports FailedCreate with kube's message,
        // and no pod runs.
        let pd = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "pd"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pd"}},
                "template": {"metadata": {"labels": {"app": "pd"}}, "spec": privileged["spec"].clone()}}});
        let r = post(&c, "/apis/apps/v1/namespaces/base/deployments", &pd).await?;
        ensure!(r.code == 201, "{}", r.text);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = raw(&c, "GET", "/api/v1/namespaces/base/events", None, "").await?;
            let refused = r.body["items"].as_array().into_iter().flatten().any(|e| {
                e["reason"] == "FailedCreate"
                    && e["message"].as_str().is_some_and(|m| {
                        m.contains(
                            "is forbidden: violates PodSecurity \"baseline:latest\": privileged",
                        )
                    })
            });
            if refused {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "no FailedCreate for the privileged template: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = raw(
            &c,
            "GET",
            "/api/v1/namespaces/base/pods?labelSelector=app%3Dpd",
            None,
            "",
        )
        .await?;
        ensure!(
            r.body["items"].as_array().is_some_and(Vec::is_empty),
            "a pod of the privileged template was made: {}",
            r.text
        );
        // A pod admitted before its namespace was labelled can still be
        // relabelled, as on Kubernetes: the label alone changes no rule.
        let r = post(
            &c,
            "/api/v1/namespaces",
            &ns(
                "open",
                json!({"pod-security.kubernetes.io/enforce": "privileged"}),
            ),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = post(&c, "/api/v1/namespaces/open/pods", &privileged).await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = merge(
            "/api/v1/namespaces/open",
            json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}),
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        let r = merge(
            "/api/v1/namespaces/open/pods/priv",
            json!({"metadata": {"labels": {"checked": "yes"}}}),
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        Ok(())
    })
}

/// A pod on its node's network takes the node's address (as kubelet
/// reports it) and claims none of the node's block.
#[test]
fn host_network_pods_take_their_nodes_address() -> Result<()> {
    let island = Island::new("hostnet")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let r = post(
            &c,
            "/api/v1/nodes",
            &apitest::node_object("n1", "4", "8Gi", json!({})),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let mut on_node = apitest::pod(
            "on-node",
            json!({}),
            json!({"nodeName": "n1", "hostNetwork": true}),
        );
        on_node["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}]);
        let r = post(&c, "/api/v1/namespaces/default/pods", &on_node).await?;
        ensure!(r.code == 201, "{}", r.text);
        ensure!(r.body["status"]["podIP"] == "192.0.2.10", "{}", r.text);
        let r = post(
            &c,
            "/api/v1/namespaces/default/pods",
            &apitest::pod("in-block", json!({}), json!({"nodeName": "n1"})),
        )
        .await?;
        ensure!(r.code == 201, "{}", r.text);
        let ip = r.body["status"]["podIP"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(ip.starts_with("10.244."), "{}", r.text);
        // Deleting the host pod frees nothing of the block; the other
        // pod's address stays its own.
        let r = raw(
            &c,
            "DELETE",
            "/api/v1/namespaces/default/pods/on-node",
            None,
            "",
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        let r = raw(
            &c,
            "GET",
            "/api/v1/namespaces/default/pods/in-block",
            None,
            "",
        )
        .await?;
        ensure!(r.body["status"]["podIP"] == ip.as_str(), "{}", r.text);
        Ok(())
    })
}

/// A DELETE answers as kube-apiserver's does: a Status naming the resource
/// for most kinds, the object for the kinds whose stores return it (pods,
/// services, namespaces...) and for a deletion still pending; 202 for a
/// pending one that asked `orphanDependents: false`; orphanDependents and
/// propagationPolicy together are refused.
#[test]
fn delete_answers_a_status_or_the_object_as_kube_does() -> Result<()> {
    let island = Island::new("delans")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let cms = "/api/v1/namespaces/default/configmaps";
        let cm = |name: &str, finalizers: Value| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "finalizers": finalizers}, "data": {"k": "v"}})
        };
        let r = post(&c, cms, &cm("plain", json!([]))).await?;
        ensure!(r.code == 201, "{}", r.text);
        let uid = r.body["metadata"]["uid"].clone();
        let r = raw(&c, "DELETE", &format!("{cms}/plain"), None, "").await?;
        ensure!(r.code == 200, "{} {}", r.code, r.text);
        ensure!(
            r.body["kind"] == "Status"
                && r.body["status"] == "Success"
                && r.body["details"]
                    == json!({"name": "plain", "group": "", "kind": "configmaps", "uid": uid}),
            "{}",
            r.text
        );
        // Held by a finalizer: the object, marked.
        let r = post(&c, cms, &cm("held", json!(["example.com/hold"]))).await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = raw(&c, "DELETE", &format!("{cms}/held"), None, "").await?;
        ensure!(
            r.code == 200
                && r.body["kind"] == "ConfigMap"
                && r.body["metadata"]["deletionTimestamp"].is_string(),
            "{} {}",
            r.code,
            r.text
        );
        let r = post(&c, cms, &cm("held2", json!(["example.com/hold"]))).await?;
        ensure!(r.code == 201, "{}", r.text);
        let old = serde_json::to_vec(&json!({"orphanDependents": false}))?;
        let r = raw(
            &c,
            "DELETE",
            &format!("{cms}/held2"),
            Some(old),
            "application/json",
        )
        .await?;
        ensure!(
            r.code == 202 && r.body["kind"] == "ConfigMap",
            "{} {}",
            r.code,
            r.text
        );
        let both = serde_json::to_vec(
            &json!({"orphanDependents": true, "propagationPolicy": "Background"}),
        )?;
        let r = post(&c, cms, &cm("both", json!([]))).await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = raw(
            &c,
            "DELETE",
            &format!("{cms}/both"),
            Some(both),
            "application/json",
        )
        .await?;
        ensure!(
            r.code == 422 && r.text.contains("cannot be both set"),
            "{} {}",
            r.code,
            r.text
        );
        ensure!(raw(&c, "GET", &format!("{cms}/both"), None, "").await?.code == 200);
        // A group's kind: the group is named.
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "d"}},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}});
        let deploys = "/apis/apps/v1/namespaces/default/deployments";
        let r = post(&c, deploys, &deploy).await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = raw(&c, "DELETE", &format!("{deploys}/d"), None, "").await?;
        ensure!(
            r.code == 200
                && r.body["details"]["group"] == "apps"
                && r.body["details"]["kind"] == "deployments",
            "{} {}",
            r.code,
            r.text
        );
        // A Service comes back as itself.
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80}]}});
        let svcs = "/api/v1/namespaces/default/services";
        let r = post(&c, svcs, &svc).await?;
        ensure!(r.code == 201, "{}", r.text);
        let r = raw(&c, "DELETE", &format!("{svcs}/s"), None, "").await?;
        ensure!(
            r.code == 200 && r.body["kind"] == "Service" && r.body["metadata"]["name"] == "s",
            "{} {}",
            r.code,
            r.text
        );
        Ok(())
    })
}

/// Protobuf bodies (application/vnd.kubernetes.protobuf) in and out, as
/// kubectl 1.32+ and client-go's typed clients send and ask for them;
/// kubectl itself is tested against them in tests/kubectl.rs. A broken body
/// is a 400 that stores nothing.
#[test]
fn protobuf_bodies_are_read_and_answered() -> Result<()> {
    use weft_controller::apiserver::protobuf;
    let island = Island::new("proto")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let cms = "/api/v1/namespaces/default/configmaps";
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "pb", "labels": {"a": "b"}},
            "data": {"k": "v"}, "binaryData": {"b": "AAEC"}});
        let body = protobuf::encode(&cm).expect("a ConfigMap message");
        let r = apitest::raw_accepting(
            &c,
            "POST",
            cms,
            Some(body),
            protobuf::MEDIA_TYPE,
            Some("application/vnd.kubernetes.protobuf,application/json"),
        )
        .await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        ensure!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok())
                == Some(protobuf::MEDIA_TYPE),
            "{:?}",
            r.headers
        );
        let created = protobuf::decode(&r.bytes)?;
        ensure!(
            created["data"]["k"] == "v"
                && created["binaryData"]["b"] == "AAEC"
                && created["metadata"]["uid"].is_string()
                && created["metadata"]["creationTimestamp"].is_string(),
            "{created}"
        );
        // The same object read back in JSON and in protobuf.
        let json_list = raw(&c, "GET", cms, None, "").await?;
        let r = apitest::raw_accepting(
            &c,
            "GET",
            cms,
            None,
            "",
            Some("application/vnd.kubernetes.protobuf, */*"),
        )
        .await?;
        ensure!(r.code == 200, "{}", r.text);
        let pb_list = protobuf::decode(&r.bytes)?;
        ensure!(
            pb_list["kind"] == "ConfigMapList"
                && pb_list["items"][0]["data"] == json_list.body["items"][0]["data"]
                && pb_list["metadata"]["resourceVersion"]
                    == json_list.body["metadata"]["resourceVersion"],
            "{pb_list} vs {}",
            json_list.text
        );
        ensure!(
            r.bytes.len() < json_list.bytes.len(),
            "protobuf {} bytes, JSON {}",
            r.bytes.len(),
            json_list.bytes.len()
        );
        // JSON first in Accept: JSON.
        let r = apitest::raw_accepting(
            &c,
            "GET",
            &format!("{cms}/pb"),
            None,
            "",
            Some("application/json, application/vnd.kubernetes.protobuf"),
        )
        .await?;
        ensure!(r.body["metadata"]["name"] == "pb", "{}", r.text);
        // Broken bodies: a 400 naming the trouble, nothing stored.
        let mut cut = protobuf::encode(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cut"}}),
        )
        .expect("encodes");
        cut.truncate(cut.len() - 3);
        for (body, says) in [(b"not protobuf".to_vec(), "prefix"), (cut, "invalid")] {
            let r = raw(&c, "POST", cms, Some(body), protobuf::MEDIA_TYPE).await?;
            ensure!(
                r.code == 400 && r.text.contains(says),
                "{} {}",
                r.code,
                r.text
            );
        }
        ensure!(raw(&c, "GET", &format!("{cms}/cut"), None, "").await?.code == 404);
        Ok(())
    })
}
