//! LimitRanges and ResourceQuotas through a real `weft controller`:
//! defaults and bounds applied to new pods, quotas that refuse what would
//! exceed them with kube's words (never both of two racing creations for
//! the last unit), and a status that follows deletions. Also the volume
//! binder's pre-binding (a claim naming its volume, a volume naming its
//! claim), a namespace's storage as departments use it.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::{Value, json};
use weft_tests::apitest::{client, eventually, post, raw};
use weft_tests::control::{ControlOptions, ControlPlane};
use weft_tests::island::Island;

const T: Duration = Duration::from_secs(90);

fn run<F: std::future::Future<Output = Result<()>> + Send>(island: &Island, f: F) -> Result<()> {
    island.block_on(async { tokio::time::timeout(T, f).await? })?
}

fn pod(name: &str, resources: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "busybox", "resources": resources}]}})
}

#[test]
fn limit_ranges_and_quotas_bound_a_namespace() -> Result<()> {
    let island = Island::new("quota")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        for ns in ["team", "race", "strict"] {
            ensure!(
                post(&c, "/api/v1/namespaces", &json!({"metadata": {"name": ns}}))
                    .await?
                    .code
                    == 201
            );
        }
        let pods = "/api/v1/namespaces/team/pods";
        // LimitRange: defaults, then bounds.
        let r = post(&c, "/api/v1/namespaces/team/limitranges", &json!({"metadata": {"name": "lr"}, "spec": {"limits": [
            {"type": "Container", "default": {"cpu": "500m", "memory": "256Mi"}, "defaultRequest": {"cpu": "100m"}, "max": {"cpu": "1"}, "min": {"memory": "64Mi"}}
        ]}})).await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        let r = post(&c, pods, &pod("plain", json!({}))).await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        let res = &r.body["spec"]["containers"][0]["resources"];
        ensure!(
            res["limits"] == json!({"cpu": "500m", "memory": "256Mi"}),
            "{res}"
        );
        ensure!(
            res["requests"] == json!({"cpu": "100m", "memory": "256Mi"}),
            "{res}"
        );
        let r = post(&c, pods, &pod("big", json!({"limits": {"cpu": "2"}}))).await?;
        ensure!(
            r.code == 403
                && r.text
                    .contains("maximum cpu usage per Container is 1, but limit is 2"),
            "{} {}",
            r.code,
            r.text
        );
        let r = post(
            &c,
            pods,
            &pod("small", json!({"requests": {"memory": "32Mi"}})),
        )
        .await?;
        ensure!(
            r.code == 403
                && r.text
                    .contains("minimum memory usage per Container is 64Mi, but request is 32Mi"),
            "{} {}",
            r.code,
            r.text
        );
        let r = post(&c, "/api/v1/namespaces/team/limitranges", &json!({"metadata": {"name": "bad"}, "spec": {"limits": [{"type": "Container", "min": {"cpu": "2"}, "max": {"cpu": "1"}}]}})).await?;
        ensure!(r.code == 422, "min above max: {} {}", r.code, r.text);

        // Every namespace holds the cluster CA's ConfigMap (made by a
        // controller, as kube's root-ca-cert-publisher does), and a quota
        // counts it: wait for it, so that the count below is fixed.
        eventually(Duration::from_secs(10), "kube-root-ca.crt in team", || {
            let c = c.clone();
            async move {
                let r = raw(
                    &c,
                    "GET",
                    "/api/v1/namespaces/team/configmaps/kube-root-ca.crt",
                    None,
                    "",
                )
                .await?;
                Ok((r.code == 200).then_some(()))
            }
        })
        .await?;
        // ResourceQuota: counted at once, then charged per creation.
        let r = post(&c, "/api/v1/namespaces/team/resourcequotas", &json!({"metadata": {"name": "compute"}, "spec": {"hard": {"pods": "2", "requests.cpu": "1", "limits.memory": "1Gi", "configmaps": "2", "count/secrets": "1"}}})).await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        ensure!(
            r.body["status"]["used"]["pods"] == "1",
            "counted at once: {}",
            r.body["status"]
        );
        ensure!(
            r.body["status"]["used"]["limits.memory"] == "256Mi",
            "{}",
            r.body["status"]
        );
        ensure!(post(&c, pods, &pod("second", json!({}))).await?.code == 201);
        let r = post(&c, pods, &pod("third", json!({}))).await?;
        ensure!(r.code == 403, "{} {}", r.code, r.text);
        ensure!(
            r.body["message"]
                == "pods \"third\" is forbidden: exceeded quota: compute, requested: pods=1, used: pods=2, limited: pods=2",
            "{}",
            r.text
        );
        let q = raw(
            &c,
            "GET",
            "/api/v1/namespaces/team/resourcequotas/compute",
            None,
            "",
        )
        .await?;
        ensure!(
            q.body["status"]["used"]["pods"] == "2"
                && q.body["status"]["used"]["requests.cpu"] == "200m",
            "{}",
            q.body["status"]
        );
        ensure!(
            post(
                &c,
                "/api/v1/namespaces/team/configmaps",
                &json!({"metadata": {"name": "a"}})
            )
            .await?
            .code
                == 201
        );
        let r = post(
            &c,
            "/api/v1/namespaces/team/configmaps",
            &json!({"metadata": {"name": "b"}}),
        )
        .await?;
        ensure!(
            r.code == 403
                && r.text
                    .contains("exceeded quota: compute, requested: configmaps=1"),
            "{} {}",
            r.code,
            r.text
        );
        ensure!(
            post(
                &c,
                "/api/v1/namespaces/team/secrets",
                &json!({"metadata": {"name": "a"}})
            )
            .await?
            .code
                == 201
        );
        let r = post(
            &c,
            "/api/v1/namespaces/team/secrets",
            &json!({"metadata": {"name": "b"}}),
        )
        .await?;
        ensure!(
            r.code == 403 && r.text.contains("count/secrets"),
            "{} {}",
            r.code,
            r.text
        );

        // A deletion frees its share.
        let r = raw(
            &c,
            "DELETE",
            "/api/v1/namespaces/team/pods/second",
            None,
            "",
        )
        .await?;
        ensure!(r.code == 200, "{} {}", r.code, r.text);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = post(&c, pods, &pod("third", json!({}))).await?;
            if r.code == 201 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the deletion was never uncounted: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A compute quota needs every container to say how much.
        ensure!(post(&c, "/api/v1/namespaces/strict/resourcequotas", &json!({"metadata": {"name": "cpu"}, "spec": {"hard": {"requests.cpu": "2", "limits.memory": "1Gi"}}})).await?.code == 201);
        let r = post(
            &c,
            "/api/v1/namespaces/strict/pods",
            &pod("vague", json!({"requests": {"cpu": "100m"}})),
        )
        .await?;
        ensure!(
            r.code == 403
                && r.text
                    .contains("failed quota: cpu: must specify limits.memory for: c"),
            "{} {}",
            r.code,
            r.text
        );

        // Racing creations never both take the last unit.
        ensure!(
            post(
                &c,
                "/api/v1/namespaces/race/resourcequotas",
                &json!({"metadata": {"name": "five"}, "spec": {"hard": {"pods": "5"}}})
            )
            .await?
            .code
                == 201
        );
        let tries = (0..12).map(|i| {
            let c = c.clone();
            async move {
                post(
                    &c,
                    "/api/v1/namespaces/race/pods",
                    &pod(&format!("p{i}"), json!({})),
                )
                .await
            }
        });
        let results = futures::future::join_all(tries).await;
        let made = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.code == 201))
            .count();
        let refused = results
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.code == 403))
            .count();
        ensure!(made == 5 && refused == 7, "made {made}, refused {refused}");

        // Claims: counted and bounded by size.
        let claim = |name: &str, size: &str| json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
        let claims = "/api/v1/namespaces/strict/persistentvolumeclaims";
        ensure!(post(&c, "/api/v1/namespaces/strict/resourcequotas", &json!({"metadata": {"name": "disk"}, "spec": {"hard": {"persistentvolumeclaims": "2", "requests.storage": "1Gi"}}})).await?.code == 201);
        ensure!(post(&c, "/api/v1/namespaces/strict/limitranges", &json!({"metadata": {"name": "disk"}, "spec": {"limits": [{"type": "PersistentVolumeClaim", "max": {"storage": "800Mi"}, "min": {"storage": "1Mi"}}]}})).await?.code == 201);
        let r = post(&c, claims, &claim("big", "900Mi")).await?;
        ensure!(
            r.code == 403
                && r.text.contains(
                    "maximum storage usage per PersistentVolumeClaim is 800Mi, but request is 900Mi"
                ),
            "{} {}",
            r.code,
            r.text
        );
        let r = post(&c, claims, &claim("a", "700Mi")).await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        ensure!(
            r.body["spec"]["storageClassName"] == "local-path",
            "the default class: {}",
            r.body
        );
        let r = post(&c, claims, &claim("b", "400Mi")).await?;
        ensure!(r.code == 403 && r.text.contains("exceeded quota: disk, requested: requests.storage=400Mi, used: requests.storage=700Mi, limited: requests.storage=1Gi"), "{} {}", r.code, r.text);

        // What Weft does not count is refused, not ignored.
        let r = post(
            &c,
            "/api/v1/namespaces/race/resourcequotas",
            &json!({"metadata": {"name": "x"}, "spec": {"hard": {"requests.ephemeral-storage": "1Gi"}}}),
        )
        .await?;
        ensure!(r.code == 422, "{} {}", r.code, r.text);
        let r = post(&c, "/api/v1/namespaces/race/resourcequotas", &json!({"metadata": {"name": "y"}, "spec": {"hard": {"pods": "1"}, "scopes": ["BestEffort"]}})).await?;
        ensure!(r.code == 422, "{} {}", r.code, r.text);

        // An update is charged for what it adds: a Service turned into a
        // NodePort one takes node ports.
        ensure!(post(&c, "/api/v1/namespaces/race/resourcequotas", &json!({"metadata": {"name": "ports"}, "spec": {"hard": {"services": "2", "services.nodeports": "1"}}})).await?.code == 201);
        let services = "/api/v1/namespaces/race/services";
        let svc = |name: &str, ty: &str, ports: usize| {
            let ports: Vec<Value> = (0..ports)
                .map(|i| json!({"name": format!("p{i}"), "port": 80 + i, "protocol": "TCP"}))
                .collect();
            json!({"metadata": {"name": name}, "spec": {"type": ty, "selector": {"app": name}, "ports": ports}})
        };
        ensure!(post(&c, services, &svc("web", "ClusterIP", 2)).await?.code == 201);
        let to_node_port = serde_json::to_vec(&json!({"spec": {"type": "NodePort"}}))?;
        let r = raw(
            &c,
            "PATCH",
            &format!("{services}/web"),
            Some(to_node_port.clone()),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(
            r.code == 403 && r.text.contains("exceeded quota: ports, requested: services.nodeports=2, used: services.nodeports=0, limited: services.nodeports=1"),
            "{} {}",
            r.code,
            r.text
        );
        let s: Value = serde_json::from_str(
            &raw(&c, "GET", &format!("{services}/web"), None, "")
                .await?
                .text,
        )?;
        ensure!(s["spec"]["type"] == "ClusterIP", "{s}");
        // One port fits; then the next Service's does not.
        ensure!(post(&c, services, &svc("one", "ClusterIP", 1)).await?.code == 201);
        let r = raw(
            &c,
            "PATCH",
            &format!("{services}/one"),
            Some(to_node_port),
            "application/merge-patch+json",
        )
        .await?;
        ensure!(r.code == 200, "{} {}", r.code, r.text);
        let r = post(&c, services, &svc("third", "ClusterIP", 1)).await?;
        ensure!(
            r.code == 403 && r.text.contains("exceeded quota: ports"),
            "{} {}",
            r.code,
            r.text
        );
        Ok(())
    })?;
    // kubectl shows usage as it does for kube.
    let out = cp.kubectl(Some(33), &["get", "quota", "-n", "team"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("pods: 2/2"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The JSON at `path` (200).
async fn get(c: &kube::Client, path: &str) -> Result<Value> {
    let r = raw(c, "GET", path, None, "").await?;
    ensure!(r.code == 200, "GET {path}: {} {}", r.code, r.text);
    Ok(serde_json::from_str(&r.text)?)
}

/// Polls `path` until `check` holds.
async fn wait_for(
    c: &kube::Client,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get(c, path).await?;
        if check(&v) {
            return Ok(v);
        }
        ensure!(Instant::now() < deadline, "{path}: {what}: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn claims_bind_to_the_volumes_they_name_and_volumes_wait_for_their_claim() -> Result<()> {
    let island = Island::new("prebind")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    run(&island, async {
        let c = client(&cp, None).await?;
        let pvs = "/api/v1/persistentvolumes";
        let claims = "/api/v1/namespaces/default/persistentvolumeclaims";
        let pv = |name: &str, claim_ref: Value| {
            json!({"metadata": {"name": name}, "spec": {
                "storageClassName": "manual", "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"], "persistentVolumeReclaimPolicy": "Delete",
                "hostPath": {"path": format!("/tmp/weft-prebind-{name}")}, "claimRef": claim_ref}})
        };
        let claim = |name: &str, volume: Option<&str>| {
            json!({"metadata": {"name": name}, "spec": {
                "storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "100Mi"}}, "volumeName": volume}})
        };
        // A volume pre-bound to a claim that does not exist yet: Available,
        // neither released nor deleted, and no other claim's.
        let r = post(
            &c,
            pvs,
            &pv("reserved", json!({"namespace": "default", "name": "later"})),
        )
        .await?;
        ensure!(r.code == 201, "{} {}", r.code, r.text);
        ensure!(post(&c, claims, &claim("other", None)).await?.code == 201);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let v = get(&c, &format!("{pvs}/reserved")).await?;
        ensure!(v["status"]["phase"] == "Available", "{v}");
        let o = get(&c, &format!("{claims}/other")).await?;
        ensure!(o["status"]["phase"] == "Pending", "{o}");
        // Its claim comes: bound to it, with the claim's UID.
        ensure!(post(&c, claims, &claim("later", None)).await?.code == 201);
        let l = wait_for(&c, &format!("{claims}/later"), "bound", |v| {
            v["status"]["phase"] == "Bound"
        })
        .await?;
        ensure!(l["spec"]["volumeName"] == "reserved", "{l}");
        let v = get(&c, &format!("{pvs}/reserved")).await?;
        ensure!(v["spec"]["claimRef"]["uid"] == l["metadata"]["uid"], "{v}");

        // A claim that names its volume gets that one, not a better fit.
        ensure!(post(&c, pvs, &pv("named", Value::Null)).await?.code == 201);
        ensure!(
            post(&c, claims, &claim("naming", Some("named")))
                .await?
                .code
                == 201
        );
        let n = wait_for(&c, &format!("{claims}/naming"), "bound", |v| {
            v["status"]["phase"] == "Bound"
        })
        .await?;
        ensure!(n["spec"]["volumeName"] == "named", "{n}");
        let v = wait_for(&c, &format!("{pvs}/named"), "bound", |v| {
            v["status"]["phase"] == "Bound"
        })
        .await?;
        ensure!(v["spec"]["claimRef"]["uid"] == n["metadata"]["uid"], "{v}");
        // Naming a missing volume, or one bound to another claim: Pending.
        ensure!(
            post(&c, claims, &claim("missing", Some("nowhere")))
                .await?
                .code
                == 201
        );
        ensure!(post(&c, claims, &claim("taken", Some("named"))).await?.code == 201);
        tokio::time::sleep(Duration::from_secs(3)).await;
        for name in ["missing", "taken", "other"] {
            let v = get(&c, &format!("{claims}/{name}")).await?;
            ensure!(v["status"]["phase"] == "Pending", "{name}: {v}");
        }
        Ok(())
    })
}
