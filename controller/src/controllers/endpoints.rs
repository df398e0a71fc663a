//! Endpoints and EndpointSlice controller: for every Service with a selector,
//! the addresses of the pods it selects, ready or not, with the Service's
//! ports resolved against each pod (named target ports included).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::selector::{LabelSelector, Requirement};

use super::{
    Ctx, Queue, follow_changes, key_of, owner_ref, pod_ready, res, run_workers, split_key,
};
use crate::registry::Write;

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice, as Kubernetes' default.
const SLICE_SIZE: usize = 100;

fn selector_of(svc: &Value) -> Option<LabelSelector> {
    let map = svc["spec"]["selector"].as_object()?;
    if map.is_empty() {
        return None;
    }
    Some(LabelSelector(
        map.iter()
            .map(|(k, v)| {
                Requirement::In(k.clone(), vec![v.as_str().unwrap_or_default().to_string()])
            })
            .collect(),
    ))
}

pub fn start(ctx: Ctx) {
    let queue = Queue::new();
    {
        let (q, q2, cache, cache2) = (
            queue.clone(),
            queue.clone(),
            ctx.cache.clone(),
            ctx.cache.clone(),
        );
        let svc_res = res("", "services");
        follow_changes(
            ctx.cache.clone(),
            move |c| match c.res.kind {
                "Service" => q.add(c.key_tail()),
                "Endpoints" => q.add(c.key_tail()),
                "EndpointSlice" => {
                    for obj in [&c.new, &c.old].into_iter().flatten() {
                        if let Some(svc) = obj["metadata"]["labels"][SERVICE_NAME_LABEL].as_str() {
                            let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
                            q.add(format!("{ns}/{svc}"));
                        }
                    }
                }
                "Pod" => {
                    let ns = c
                        .new
                        .as_ref()
                        .or(c.old.as_ref())
                        .and_then(|p| p["metadata"]["namespace"].as_str())
                        .unwrap_or_default();
                    for svc in cache.list(svc_res, Some(ns), |_| true) {
                        let Some(sel) = selector_of(&svc) else {
                            continue;
                        };
                        if [&c.new, &c.old]
                            .into_iter()
                            .flatten()
                            .any(|p| sel.matches_object(p))
                        {
                            q.add(key_of(&svc));
                        }
                    }
                }
                _ => {}
            },
            move || {
                for svc in cache2.list(svc_res, None, |_| true) {
                    q2.add(key_of(&svc));
                }
            },
        );
    }
    let ctx = Arc::new(ctx);
    run_workers("endpoints", queue, 2, move |key| {
        let ctx = ctx.clone();
        async move { reconcile(&ctx, &key).await.map(|_| None) }
    });
}

/// The pod port a Service port sends to, or None when the pod lacks a port
/// of that name.
fn resolve_port(pod: &Value, svc_port: &Value) -> Option<i64> {
    match &svc_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => pod["spec"]["containers"].as_array()?.iter().find_map(|c| {
            c["ports"]
                .as_array()?
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_i64())
        }),
        _ => svc_port["port"].as_i64(),
    }
}

fn target_ref(pod: &Value) -> Value {
    json!({"kind": "Pod", "namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]})
}

pub async fn reconcile(ctx: &Ctx, key: &str) -> Result<(), ApiError> {
    let (ns, name) = split_key(key);
    let (svc_res, ep_res, slice_res, pods_res) = (
        res("", "services"),
        res("", "endpoints"),
        res("discovery.k8s.io", "endpointslices"),
        res("", "pods"),
    );
    let svc = ctx.cache.get(svc_res, ns, name);
    let slices: Vec<Arc<Value>> = ctx.cache.list(slice_res, ns, |s| {
        s["metadata"]["labels"][SERVICE_NAME_LABEL] == name
            && s["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
    });
    let Some(svc) = svc.filter(|s| selector_of(s).is_some()) else {
        // No Service (or one without a selector, whose endpoints its owner
        // manages): remove what this controller made for it.
        if ctx.cache.get(svc_res, ns, name).is_none() && ctx.cache.get(ep_res, ns, name).is_some() {
            delete_quietly(ctx, ep_res, ns, name).await?;
        }
        for s in slices {
            delete_quietly(
                ctx,
                slice_res,
                ns,
                s["metadata"]["name"].as_str().unwrap_or_default(),
            )
            .await?;
        }
        return Ok(());
    };
    let sel = selector_of(&svc).expect("checked");
    let mut pods: Vec<Arc<Value>> = ctx.cache.list(pods_res, ns, |p| {
        sel.matches_object(p)
            && p["status"]["podIP"]
                .as_str()
                .is_some_and(|ip| !ip.is_empty())
            && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
    });
    pods.sort_by(|a, b| {
        a["status"]["podIP"]
            .as_str()
            .cmp(&b["status"]["podIP"].as_str())
    });
    let svc_ports = svc["spec"]["ports"].as_array().cloned().unwrap_or_default();

    // Group pods by the ports they resolve to (named ports may differ).
    let mut groups: BTreeMap<String, (Vec<Value>, Vec<Arc<Value>>)> = BTreeMap::new();
    for pod in &pods {
        let ports: Vec<Value> = svc_ports
            .iter()
            .filter_map(|sp| {
                let port = resolve_port(pod, sp)?;
                let mut p =
                    json!({"port": port, "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) {
                    p["name"] = json!(n);
                }
                Some(p)
            })
            .collect();
        let id = serde_json::to_string(&ports).unwrap_or_default();
        groups
            .entry(id)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(pod.clone());
    }

    // publishNotReadyAddresses: every pod counts as ready (what StatefulSet
    // peers use to find each other before they are ready).
    let publish_all = svc["spec"]["publishNotReadyAddresses"].as_bool() == Some(true);
    let counts_ready = |p: &Value| publish_all || pod_ready(p);
    // A pod with `hostname` whose `subdomain` is this Service is published
    // under that name (DNS: hostname.service.namespace.svc).
    let hostname = |p: &Value| {
        p["spec"]["hostname"]
            .as_str()
            .filter(|h| !h.is_empty() && p["spec"]["subdomain"].as_str() == Some(name))
            .map(String::from)
    };
    // Endpoints: terminating pods are left out, not-ready ones listed apart.
    let mut subsets = Vec::new();
    for (ports, members) in groups.values() {
        let addr = |p: &Value| {
            let mut a = json!({"ip": p["status"]["podIP"], "targetRef": target_ref(p)});
            if let Some(n) = p["spec"]["nodeName"].as_str() {
                a["nodeName"] = json!(n);
            }
            if let Some(h) = hostname(p) {
                a["hostname"] = json!(h);
            }
            a
        };
        let live: Vec<&Arc<Value>> = members
            .iter()
            .filter(|p| !p["metadata"]["deletionTimestamp"].is_string())
            .collect();
        let ready: Vec<Value> = live
            .iter()
            .filter(|p| counts_ready(p))
            .map(|p| addr(p))
            .collect();
        let not_ready: Vec<Value> = live
            .iter()
            .filter(|p| !counts_ready(p))
            .map(|p| addr(p))
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let mut subset = json!({"ports": ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        subsets.push(subset);
    }
    let labels = svc["metadata"]["labels"].clone();
    let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": labels}, "subsets": subsets});
    match ctx.cache.get(ep_res, ns, name) {
        None => match ctx.reg.create(ep_res, ns, endpoints).await {
            Ok(_) | Err(ApiError { code: 409, .. }) => {}
            Err(e) => return Err(e),
        },
        Some(current)
            if current["subsets"] != endpoints["subsets"]
                || current["metadata"]["labels"] != labels =>
        {
            ctx.reg
                .modify(ep_res, ns, name, Write::Update, |mut obj| {
                    obj["subsets"] = endpoints["subsets"].clone();
                    obj["metadata"]["labels"] = labels.clone();
                    Ok(obj)
                })
                .await?;
        }
        Some(_) => {}
    }

    // EndpointSlices: terminating endpoints stay, marked, so that load
    // balancers let their connections finish.
    let mut wanted: Vec<Value> = Vec::new();
    for (ports, members) in groups.values() {
        for chunk in members.chunks(SLICE_SIZE) {
            let endpoints: Vec<Value> = chunk
                .iter()
                .map(|p| {
                    let terminating = p["metadata"]["deletionTimestamp"].is_string();
                    let serving = pod_ready(p);
                    let ready = publish_all || (serving && !terminating);
                    let mut e = json!({
                        "addresses": [p["status"]["podIP"]],
                        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                        "targetRef": target_ref(p),
                    });
                    if let Some(n) = p["spec"]["nodeName"].as_str() {
                        e["nodeName"] = json!(n);
                    }
                    if let Some(h) = hostname(p) {
                        e["hostname"] = json!(h);
                    }
                    e
                })
                .collect();
            wanted.push(json!({"endpoints": endpoints, "ports": ports}));
        }
    }
    let mut slice_labels = labels.as_object().cloned().unwrap_or_default();
    slice_labels.insert(SERVICE_NAME_LABEL.into(), json!(name));
    slice_labels.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
    let mut existing: Vec<Arc<Value>> = slices;
    existing.sort_by(|a, b| {
        a["metadata"]["name"]
            .as_str()
            .cmp(&b["metadata"]["name"].as_str())
    });
    // A Service with no endpoints still gets one (empty) slice.
    if wanted.is_empty() {
        wanted.push(json!({"endpoints": [], "ports": svc_ports.iter().map(|sp| {
            let mut p = json!({"port": sp["targetPort"].as_i64().or(sp["port"].as_i64()), "protocol": sp["protocol"].as_str().unwrap_or("TCP")});
            if let Some(n) = sp["name"].as_str().filter(|n| !n.is_empty()) { p["name"] = json!(n); }
            p
        }).collect::<Vec<_>>()}));
    }
    for (i, want) in wanted.iter().enumerate() {
        match existing.get(i) {
            Some(cur) => {
                if cur["endpoints"] != want["endpoints"]
                    || cur["ports"] != want["ports"]
                    || cur["metadata"]["labels"] != json!(slice_labels)
                {
                    let slice_name = cur["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    ctx.reg
                        .modify(slice_res, ns, &slice_name, Write::Update, |mut obj| {
                            obj["endpoints"] = want["endpoints"].clone();
                            obj["ports"] = want["ports"].clone();
                            obj["metadata"]["labels"] = json!(slice_labels);
                            Ok(obj)
                        })
                        .await?;
                }
            }
            None => {
                let slice = json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": format!("{name}-"),
                        "namespace": ns,
                        "labels": slice_labels,
                        "ownerReferences": [owner_ref(&svc)],
                    },
                    "addressType": "IPv4",
                    "endpoints": want["endpoints"],
                    "ports": want["ports"],
                });
                let created = ctx.reg.create(slice_res, ns, slice).await?;
                let rev = super::resource_version(&created);
                ctx.cache.wait_for(rev).await;
            }
        }
    }
    for extra in existing.iter().skip(wanted.len()) {
        delete_quietly(
            ctx,
            slice_res,
            ns,
            extra["metadata"]["name"].as_str().unwrap_or_default(),
        )
        .await?;
    }
    Ok(())
}

async fn delete_quietly(
    ctx: &Ctx,
    r: &weft_api::Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    match ctx.reg.delete(r, ns, name, (None, None)).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
