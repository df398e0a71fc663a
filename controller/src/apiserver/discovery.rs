//! Discovery: what clients read to learn which groups, versions and
//! resources the server has (/api, /apis, /api/v1, /apis/{g}/{v}, /version).

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::resources::{self, RESOURCES, Resource};

use super::json_response;

/// The Kubernetes version whose API Weft serves.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

pub fn version() -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": format!("v{KUBE_MAJOR}.{KUBE_MINOR}.0+weft-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "none (weft is written in Rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH }),
    })
}

pub fn root_paths() -> Value {
    let mut paths = vec![
        "/api".to_string(),
        "/api/v1".into(),
        "/apis".into(),
        "/healthz".into(),
        "/livez".into(),
        "/readyz".into(),
        "/version".into(),
    ];
    for (g, vs) in served_groups() {
        paths.push(format!("/apis/{g}"));
        for v in vs {
            paths.push(format!("/apis/{g}/{v}"));
        }
    }
    json!({"paths": paths})
}

/// Every API group but core, with its versions (the preferred first): the
/// stored kinds' groups and those serving only reviews.
fn served_groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = resources::groups()
        .into_iter()
        .map(|(g, v)| (g, vec![v]))
        .collect();
    for (g, vs) in super::reviews::groups() {
        if !out.iter().any(|(o, _)| *o == g) {
            out.push((g, vs.to_vec()));
        }
    }
    out
}

pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn group_entry(g: &str, vs: &[&str]) -> Value {
    let gvs: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = served_groups()
        .into_iter()
        .map(|(g, vs)| group_entry(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(g: &str) -> Result<Value, ApiError> {
    let (g, vs) = served_groups()
        .into_iter()
        .find(|(name, _)| *name == g)
        .ok_or_else(|| ApiError::no_route(&format!("/apis/{g}")))?;
    let mut entry = group_entry(g, &vs);
    entry["kind"] = json!("APIGroup");
    entry["apiVersion"] = json!("v1");
    Ok(entry)
}

fn verbs(r: &Resource) -> Vec<&'static str> {
    vec![
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    ]
    .into_iter()
    .filter(|v| !(r.kind == "Namespace" && *v == "deletecollection"))
    .collect()
}

fn subresource_entry(r: &Resource, sub: &str) -> Value {
    let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, &[&str]) = match sub {
        "status" => (r.kind, None, None, &["get", "patch", "update"]),
        "scale" => (
            "Scale",
            Some("autoscaling"),
            Some("v1"),
            &["get", "patch", "update"],
        ),
        "binding" => ("Binding", None, None, &["create"]),
        "eviction" => ("Eviction", Some("policy"), Some("v1"), &["create"]),
        "log" => ("Pod", None, None, &["get"]),
        "exec" => ("PodExecOptions", None, None, &["create", "get"]),
        "finalize" => (r.kind, None, None, &["update"]),
        _ => (r.kind, None, None, &["get"]),
    };
    let mut e = json!({
        "name": format!("{}/{sub}", r.plural),
        "singularName": "",
        "namespaced": r.namespaced,
        "kind": kind,
        "verbs": verbs,
    });
    if let (Some(g), Some(v)) = (group, version) {
        e["group"] = json!(g);
        e["version"] = json!(v);
    }
    e
}

pub fn resource_list(g: &str, v: &str) -> Result<Value, ApiError> {
    let members: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == g && r.version == v)
        .collect();
    let reviews = super::reviews::served(g, v);
    if members.is_empty() && reviews.is_empty() {
        return Err(ApiError::no_route(&format!("/apis/{g}/{v}")));
    }
    let mut list: Vec<Value> = reviews
        .into_iter()
        .map(|(plural, kind, namespaced)| {
            json!({"name": plural, "singularName": "", "namespaced": namespaced,
                "kind": kind, "verbs": ["create"]})
        })
        .collect();
    for r in members {
        let mut e = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs(r),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        list.push(e);
        for sub in r.subresources {
            list.push(subresource_entry(r, sub));
        }
    }
    let gv = if g.is_empty() {
        v.to_string()
    } else {
        format!("{g}/{v}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

/// The aggregated discovery version a client accepts, if any: `v2`
/// (kubectl 1.30+) or `v2beta1` (kubectl 1.26 to 1.32), in its order.
fn aggregated_version(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        if !params.contains(&"g=apidiscovery.k8s.io")
            || !params.contains(&"as=APIGroupDiscoveryList")
        {
            continue;
        }
        if params.contains(&"v=v2") {
            return Some("v2");
        }
        if params.contains(&"v=v2beta1") {
            return Some("v2beta1");
        }
    }
    None
}

/// A resource as aggregated discovery lists it, with its subresources.
fn aggregated_resource(r: &Resource) -> Value {
    let subresources: Vec<Value> = r
        .subresources
        .iter()
        .map(|sub| {
            let legacy = subresource_entry(r, sub);
            json!({
                "subresource": sub,
                "responseKind": {
                    "group": legacy["group"].as_str().unwrap_or(r.group),
                    "version": legacy["version"].as_str().unwrap_or(r.version),
                    "kind": legacy["kind"],
                },
                "verbs": legacy["verbs"],
            })
        })
        .collect();
    let mut e = json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": verbs(r),
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !subresources.is_empty() {
        e["subresources"] = json!(subresources);
    }
    e
}

/// /api (`core`) or /apis as an APIGroupDiscoveryList: every group, its
/// versions and their resources in one answer.
fn aggregated(core: bool, version: &str) -> Value {
    let groups: Vec<(&str, Vec<&str>)> = if core {
        vec![("", vec!["v1"])]
    } else {
        served_groups()
    };
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let versions: Vec<Value> = vs
                .iter()
                .map(|v| {
                    let mut resources: Vec<Value> = super::reviews::served(g, v)
                        .into_iter()
                        .map(|(plural, kind, namespaced)| {
                            json!({"resource": plural,
                                "responseKind": {"group": g, "version": v, "kind": kind},
                                "scope": if namespaced { "Namespaced" } else { "Cluster" },
                                "singularResource": "", "verbs": ["create"]})
                        })
                        .collect();
                    resources.extend(
                        RESOURCES
                            .iter()
                            .filter(|r| r.group == g && r.version == *v)
                            .map(aggregated_resource),
                    );
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let meta = if g.is_empty() {
                json!({"creationTimestamp": null})
            } else {
                json!({"name": g, "creationTimestamp": null})
            };
            json!({"metadata": meta, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    })
}

/// Answers /api and /apis: aggregated (every group's resources at once)
/// when the client accepts it, as kube-apiserver does, else the legacy
/// list.
pub fn respond(headers: &HeaderMap, core: bool) -> Response {
    match aggregated_version(headers) {
        Some(v) => {
            let mut resp = json_response(200, &aggregated(core, v));
            resp.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_str(&format!(
                    "application/json;g=apidiscovery.k8s.io;v={v};as=APIGroupDiscoveryList"
                ))
                .expect("a valid header"),
            );
            resp
        }
        None if core => json_response(200, &api_versions()),
        None => json_response(200, &api_group_list()),
    }
}

/// A served OpenAPI document, encoded once, and its hash.
struct Document {
    hash: String,
    body: bytes::Bytes,
}

impl Document {
    fn new(v: &Value) -> Self {
        use sha2::Digest as _;
        let body = serde_json::to_vec(v).expect("a document encodes");
        let hash = sha2::Sha256::digest(&body)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Self {
            hash,
            body: body.into(),
        }
    }
}

/// A kind: group, version, kind.
type Gvk = (&'static str, &'static str, &'static str);

/// The kinds each served group version's OpenAPI v3 document describes
/// (its stored kinds, its reviews, the kinds of their subresources), by
/// its path (`api/v1`, `apis/apps/v1`).
fn v3_group_versions() -> Vec<(String, Vec<Gvk>)> {
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    for (g, vs) in served_groups() {
        for v in vs {
            gvs.push((g, v));
        }
    }
    gvs.into_iter()
        .map(|(g, v)| {
            let mut kinds: Vec<(&str, &str, &str)> = super::reviews::served(g, v)
                .into_iter()
                .map(|(_, kind, _)| (g, v, kind))
                .collect();
            for r in RESOURCES.iter().filter(|r| r.group == g && r.version == v) {
                kinds.push((r.group, r.version, r.kind));
                for sub in r.subresources {
                    match *sub {
                        "scale" => kinds.push(("autoscaling", "v1", "Scale")),
                        "eviction" => kinds.push(("policy", "v1", "Eviction")),
                        "binding" => kinds.push(("", "v1", "Binding")),
                        _ => {}
                    }
                }
            }
            let path = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            (path, kinds)
        })
        .collect()
}

static V3: std::sync::LazyLock<Vec<(String, Document)>> = std::sync::LazyLock::new(|| {
    v3_group_versions()
        .into_iter()
        .map(|(path, kinds)| {
            let served: Vec<crate::openapi::documents::Served<'_>> = RESOURCES
                .iter()
                .filter(|r| {
                    kinds
                        .iter()
                        .any(|(g, v, k)| (*g, *v, *k) == (r.group, r.version, r.kind))
                })
                .map(|r| crate::openapi::documents::Served {
                    group: r.group,
                    version: r.version,
                    kind: r.kind,
                    plural: r.plural,
                    namespaced: r.namespaced,
                })
                .collect();
            (
                path,
                Document::new(&crate::openapi::documents::v3_document(&kinds, &served)),
            )
        })
        .collect()
});

static V2: std::sync::LazyLock<Document> =
    std::sync::LazyLock::new(|| Document::new(&crate::openapi::documents::v2_document()));

/// `/openapi/v3`: where each group version's document is, with its hash.
pub fn openapi_v3_root() -> Value {
    let paths: serde_json::Map<String, Value> = V3
        .iter()
        .map(|(path, doc)| {
            (
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash)}),
            )
        })
        .collect();
    json!({ "paths": paths })
}

fn document_response(doc: &Document, asked_hash: Option<&str>) -> Response {
    let mut resp = Response::new(axum::body::Body::from(doc.body.clone()));
    let h = resp.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    if let Ok(etag) = axum::http::HeaderValue::from_str(&format!("\"{}\"", doc.hash)) {
        h.insert(axum::http::header::ETAG, etag);
    }
    // A URL with the current hash never changes (kube's caching rule).
    let cache = if asked_hash == Some(doc.hash.as_str()) {
        "public, immutable"
    } else {
        "no-cache, private"
    };
    h.insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static(cache),
    );
    resp
}

/// `/openapi/v3/{path}`: one group version's document.
pub fn openapi_v3(path: &str, asked_hash: Option<&str>) -> Result<Response, ApiError> {
    let (_, doc) = V3
        .iter()
        .find(|(p, _)| p == path)
        .ok_or_else(|| ApiError::no_route(&format!("/openapi/v3/{path}")))?;
    Ok(document_response(doc, asked_hash))
}

/// Whether a client asks for OpenAPI v2 as JSON rather than protobuf (the
/// first of the two its Accept names).
pub fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let json = accept.find("application/json");
    let proto = accept.find("protobuf");
    match (json, proto) {
        (Some(j), Some(p)) => j < p,
        (Some(_), None) => true,
        (None, _) => accept.contains("*/*") && proto.is_none(),
    }
}

/// `/openapi/v2` as JSON: every definition.
pub fn openapi_v2_json() -> Response {
    document_response(&V2, None)
}

/// /openapi/v2 as an empty protobuf document, for clients that ask for
/// protobuf (kubectl): it makes kubectl skip client-side validation (the
/// server validates: fieldValidation=Strict) and compute client-side apply
/// patches from the types compiled into it. `kubectl explain` reads v3.
pub fn openapi_v2() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
        ),
    );
    resp
}
