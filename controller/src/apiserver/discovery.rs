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

/// Answers /api and /apis in the legacy form. Clients that ask for the
/// aggregated form (apidiscovery.k8s.io) see a plain application/json
/// response and fall back to reading each group version.
pub fn respond(_headers: &HeaderMap, legacy: Value) -> Response {
    json_response(200, &legacy)
}

/// /openapi/v2 as an empty protobuf document. kubectl (create, apply) wants
/// to download it before it writes; an empty document makes it skip
/// client-side validation (the server validates: fieldValidation=Strict) and
/// compute apply patches from the types compiled into it.
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
