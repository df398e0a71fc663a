//! Endpoints and EndpointSlice controller: for every Service with a selector,
//! the addresses of the pods it selects, ready or not, with the Service's
//! ports resolved against each pod (named target ports included).

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt as _;
use kube::core::{Selector, SelectorExt as _};
use weft_api::ApiError;
use weft_api::pod::is_ready;

use super::{Action, Controller, Ctx, controller_ref, split_key};
use crate::cache::Change;
use crate::registry::{Kind, Write, revision_of};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice, as Kubernetes' default.
const SLICE_SIZE: usize = 100;

/// The Service's pod selector, when it has one (without one, whoever made
/// the Service manages its endpoints).
fn selector_of(svc: &Service) -> Option<Selector> {
    let map = svc.spec.as_ref()?.selector.as_ref()?;
    if map.is_empty() {
        return None;
    }
    Some(map.clone().into_iter().collect())
}

fn labels(obj: &impl kube::Resource) -> BTreeMap<String, String> {
    obj.meta().labels.clone().unwrap_or_default()
}

/// The Services of the pod's namespace that select it (before or after).
fn services_of(change: &Change<Pod>, cache: &crate::cache::Cache) -> Vec<String> {
    let Some(ns) = change.object().and_then(|p| p.metadata.namespace.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for svc in cache.store::<Service>().list(Some(&ns)) {
        let Some(sel) = selector_of(&svc) else {
            continue;
        };
        if [&change.new, &change.old]
            .into_iter()
            .flatten()
            .any(|p| sel.matches(&labels(&**p)))
        {
            out.push(weft_api::meta::key_of(&*svc));
        }
    }
    out
}

pub fn start(ctx: &Ctx) {
    Controller::<Service>::new("endpoints", ctx)
        .watches::<Endpoints>(|c, _| vec![c.key.clone()])
        .watches::<EndpointSlice>(|c, _| {
            [&c.new, &c.old]
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let svc = s.labels().get(SERVICE_NAME_LABEL)?;
                    Some(weft_api::meta::key(s.metadata.namespace.as_deref(), svc))
                })
                .collect()
        })
        .watches::<Pod>(services_of)
        .run_keyed(2, |key, svc, ctx| async move {
            reconcile(&ctx, &key, svc).await
        });
}

/// The pod port a Service port sends to, or None when the pod lacks a port
/// of that name.
fn resolve_port(pod: &Pod, svc_port: &ServicePort) -> Option<i32> {
    match &svc_port.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod.spec.as_ref()?.containers.iter().find_map(|c| {
            c.ports
                .as_ref()?
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
        }),
        None => Some(svc_port.port),
    }
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

fn pod_ip(p: &Pod) -> Option<&str> {
    p.status
        .as_ref()?
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
}

fn node_name(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

/// A Service port as the endpoints list it, resolved to `port`.
#[derive(Clone)]
struct Resolved {
    name: Option<String>,
    port: i32,
    protocol: String,
}

pub async fn reconcile(
    ctx: &Ctx,
    key: &str,
    svc: Option<Arc<Service>>,
) -> Result<Action, ApiError> {
    let (ns, name) = split_key(key);
    let slices: Vec<Arc<EndpointSlice>> = ctx
        .cache
        .store::<EndpointSlice>()
        .list(ns)
        .into_iter()
        .filter(|s| {
            let l = s.labels();
            l.get(SERVICE_NAME_LABEL).map(String::as_str) == Some(name)
                && l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        })
        .collect();
    let endpoints_store = ctx.cache.store::<Endpoints>();
    let Some((svc, sel)) = svc.and_then(|s| selector_of(&s).map(|sel| (s, sel))) else {
        // No Service (or one without a selector, whose endpoints its owner
        // manages): remove what this controller made for it.
        if ctx.cache.store::<Service>().get(ns, name).is_none()
            && endpoints_store.get(ns, name).is_some()
        {
            delete_quietly::<Endpoints>(ctx, ns, name).await?;
        }
        for s in slices {
            delete_quietly::<EndpointSlice>(ctx, ns, &s.name_any()).await?;
        }
        return Ok(Action::await_change());
    };
    let mut pods: Vec<Arc<Pod>> = ctx
        .cache
        .store::<Pod>()
        .list(ns)
        .into_iter()
        .filter(|p| {
            sel.matches(&labels(&**p)) && pod_ip(p).is_some() && !weft_api::pod::is_finished(p)
        })
        .collect();
    pods.sort_by(|a, b| pod_ip(a).cmp(&pod_ip(b)));
    let svc_spec = svc.spec.clone().unwrap_or_default();
    let svc_ports = svc_spec.ports.clone().unwrap_or_default();

    // Group pods by the ports they resolve to (named ports may differ).
    // Keyed by the ports' JSON (sorted keys), which orders the subsets and
    // slices as they always were.
    let mut groups: BTreeMap<String, (Vec<Resolved>, Vec<Arc<Pod>>)> = BTreeMap::new();
    for pod in &pods {
        let ports: Vec<Resolved> = svc_ports
            .iter()
            .filter_map(|sp| {
                Some(Resolved {
                    name: Some(sp.name.clone().unwrap_or_default()),
                    port: resolve_port(pod, sp)?,
                    protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
                })
            })
            .collect();
        let id = serde_json::to_string(
            &ports
                .iter()
                .map(|r| {
                    let mut p = serde_json::json!({"port": r.port, "protocol": r.protocol});
                    if let Some(n) = &r.name {
                        p["name"] = serde_json::json!(n);
                    }
                    p
                })
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        groups
            .entry(id)
            .or_insert_with(|| (ports, Vec::new()))
            .1
            .push(pod.clone());
    }

    // publishNotReadyAddresses: every pod counts as ready (what StatefulSet
    // peers use to find each other before they are ready).
    let publish_all = svc_spec.publish_not_ready_addresses == Some(true);
    let counts_ready = |p: &Pod| publish_all || is_ready(p);
    // A pod with `hostname` whose `subdomain` is this Service is published
    // under that name (DNS: hostname.service.namespace.svc).
    let hostname = |p: &Pod| {
        let spec = p.spec.as_ref()?;
        spec.hostname
            .clone()
            .filter(|h| !h.is_empty() && spec.subdomain.as_deref() == Some(name))
    };
    // Endpoints: terminating pods are left out, not-ready ones listed apart.
    let mut subsets = Vec::new();
    for (ports, members) in groups.values() {
        let addr = |p: &Pod| EndpointAddress {
            ip: pod_ip(p).unwrap_or_default().to_string(),
            target_ref: Some(target_ref(p)),
            node_name: node_name(p),
            hostname: hostname(p),
        };
        let live: Vec<&Arc<Pod>> = members
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let ready: Vec<EndpointAddress> = live
            .iter()
            .filter(|p| counts_ready(p))
            .map(|p| addr(p))
            .collect();
        let not_ready: Vec<EndpointAddress> = live
            .iter()
            .filter(|p| !counts_ready(p))
            .map(|p| addr(p))
            .collect();
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        subsets.push(EndpointSubset {
            ports: Some(
                ports
                    .iter()
                    .cloned()
                    .map(|r| CorePort {
                        name: r.name,
                        port: r.port,
                        protocol: Some(r.protocol),
                        app_protocol: None,
                    })
                    .collect(),
            ),
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
        });
    }
    let svc_labels = svc.metadata.labels.clone();
    match endpoints_store.get(ns, name) {
        None => {
            let endpoints = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: ns.map(String::from),
                    labels: svc_labels.clone(),
                    ..ObjectMeta::default()
                },
                subsets: Some(subsets),
            };
            match ctx.reg.create(ns, endpoints).await {
                Ok(_) | Err(ApiError { code: 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Some(current)
            if current.subsets.as_ref() != Some(&subsets)
                || current.metadata.labels != svc_labels =>
        {
            ctx.reg
                .modify::<Endpoints>(ns, name, Write::Update, |mut obj| {
                    obj.subsets = Some(subsets.clone());
                    obj.metadata.labels.clone_from(&svc_labels);
                    Ok(obj)
                })
                .await?;
        }
        Some(_) => {}
    }

    // EndpointSlices: terminating endpoints stay, marked, so that load
    // balancers let their connections finish.
    // A port's name is always written, "" for an unnamed one, as kube's
    // EndpointSlice controller writes it (kubectl describe reads it).
    let slice_port = |r: Resolved| SlicePort {
        name: Some(r.name.unwrap_or_default()),
        port: Some(r.port),
        protocol: Some(r.protocol),
        app_protocol: None,
    };
    let mut wanted: Vec<(Vec<Endpoint>, Vec<SlicePort>)> = Vec::new();
    for (ports, members) in groups.values() {
        for chunk in members.chunks(SLICE_SIZE) {
            let endpoints: Vec<Endpoint> = chunk
                .iter()
                .map(|p| {
                    let terminating = p.metadata.deletion_timestamp.is_some();
                    let serving = is_ready(p);
                    let ready = publish_all || (serving && !terminating);
                    Endpoint {
                        addresses: vec![pod_ip(p).unwrap_or_default().to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(ready),
                            serving: Some(serving),
                            terminating: Some(terminating),
                        }),
                        target_ref: Some(target_ref(p)),
                        node_name: node_name(p),
                        hostname: hostname(p),
                        ..Endpoint::default()
                    }
                })
                .collect();
            wanted.push((endpoints, ports.iter().cloned().map(slice_port).collect()));
        }
    }
    let mut slice_labels = svc_labels.clone().unwrap_or_default();
    slice_labels.insert(SERVICE_NAME_LABEL.into(), name.into());
    slice_labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut existing = slices;
    existing.sort_by_key(|s| s.name_any());
    // A Service with no endpoints still gets one (empty) slice.
    if wanted.is_empty() {
        let ports = svc_ports
            .iter()
            .map(|sp| SlicePort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(match &sp.target_port {
                    Some(IntOrString::Int(t)) => *t,
                    _ => sp.port,
                }),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: None,
            })
            .collect();
        wanted.push((Vec::new(), ports));
    }
    for (i, (endpoints, ports)) in wanted.iter().enumerate() {
        match existing.get(i) {
            Some(cur) => {
                if cur.endpoints != *endpoints
                    || cur.ports.as_ref() != Some(ports)
                    || cur.metadata.labels.as_ref() != Some(&slice_labels)
                {
                    ctx.reg
                        .modify::<EndpointSlice>(ns, &cur.name_any(), Write::Update, |mut obj| {
                            obj.endpoints = endpoints.clone();
                            obj.ports = Some(ports.clone());
                            obj.metadata.labels = Some(slice_labels.clone());
                            Ok(obj)
                        })
                        .await?;
                }
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        generate_name: Some(format!("{name}-")),
                        namespace: ns.map(String::from),
                        labels: Some(slice_labels.clone()),
                        owner_references: controller_ref(&*svc),
                        ..ObjectMeta::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints: endpoints.clone(),
                    ports: Some(ports.clone()),
                };
                let created = ctx.reg.create(ns, slice).await?;
                ctx.cache.wait_for(revision_of(&created)).await;
            }
        }
    }
    for extra in existing.iter().skip(wanted.len()) {
        delete_quietly::<EndpointSlice>(ctx, ns, &extra.name_any()).await?;
    }
    Ok(Action::await_change())
}

async fn delete_quietly<K: Kind>(ctx: &Ctx, ns: Option<&str>, name: &str) -> Result<(), ApiError> {
    match ctx.reg.delete::<K>(ns, name, (None, None), None).await {
        Ok(_) | Err(ApiError { code: 404, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
