//! The OpenAPI documents served to clients, made from the vendored
//! definitions: v3 per group version (`/openapi/v3/apis/apps/v1`: what
//! `kubectl explain` reads) and v2 as one document (JSON).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::schemas;

/// The `info` of every document.
fn info() -> Value {
    json!({"title": "Kubernetes", "version": "v1.33.0"})
}

/// Every definition `names` refer to, themselves included.
fn closure(names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    let defs = schemas().definitions();
    let mut keep = BTreeSet::new();
    let mut todo: Vec<String> = names.into_iter().collect();
    while let Some(n) = todo.pop() {
        if !defs.contains_key(&n) || !keep.insert(n.clone()) {
            continue;
        }
        refs(&defs[&n], &mut todo);
    }
    keep
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str)
                && let Some(name) = r.strip_prefix("#/definitions/")
            {
                out.push(name.to_string());
            }
            for c in m.values() {
                refs(c, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| refs(c, out)),
        _ => {}
    }
}

/// A v2 schema as v3 writes it: references point into
/// `#/components/schemas/`, and a reference with a description (or any
/// other sibling, which v3 would ignore) is wrapped in `allOf`, as
/// kube-apiserver writes its v3 documents.
fn to_v3(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, c) in m {
                out.insert(k.clone(), to_v3(c));
            }
            if let Some(Value::String(r)) = out.get("$ref").cloned() {
                let target = r.replace("#/definitions/", "#/components/schemas/");
                if out.len() == 1 {
                    out.insert("$ref".into(), Value::String(target));
                } else {
                    out.remove("$ref");
                    out.insert("allOf".into(), json!([{"$ref": target}]));
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_v3).collect()),
        other => other.clone(),
    }
}

/// Meta types every group version's document holds beside its kinds (the
/// answers of deletes, lists and watches).
const META: &[&str] = &[
    "io.k8s.apimachinery.pkg.apis.meta.v1.APIResourceList",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
];

/// A resource a group version serves: its kind, plural and scope.
pub struct Served<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub plural: &'a str,
    pub namespaced: bool,
}

/// The paths of a resource (its collection and its objects), with the
/// operations clients read kinds from (`kubectl explain` finds a
/// resource's kind by its paths' `x-kubernetes-group-version-kind`).
fn resource_paths(r: &Served<'_>, schema: Option<&str>, out: &mut Map<String, Value>) {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let base = if r.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{prefix}/{}", r.plural)
    };
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let response = |schema: Option<String>| {
        let mut ok = json!({"description": "OK"});
        if let Some(s) = schema {
            ok["content"] = json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{s}")}}});
        }
        json!({"200": ok})
    };
    let op = |action: &str, what: &str, schema: Option<String>| {
        json!({
            "description": format!("{what} {}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "responses": response(schema),
        })
    };
    let mut params = vec![];
    if r.namespaced {
        params.push(json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    }
    let item = schema.map(str::to_string);
    let list = schema.map(|s| format!("{s}List"));
    out.insert(
        base.clone(),
        json!({"get": op("list", "list or watch objects of kind", list), "post": op("post", "create a", item.clone()), "parameters": params}),
    );
    let mut item_params = params.clone();
    item_params.insert(0, json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}}));
    out.insert(
        format!("{base}/{{name}}"),
        json!({
            "get": op("get", "read the specified", item.clone()),
            "put": op("put", "replace the specified", item.clone()),
            "patch": op("patch", "partially update the specified", item.clone()),
            "delete": op("delete", "delete a", None),
            "parameters": item_params,
        }),
    );
}

/// The OpenAPI v3 document of one group version serving `kinds` (group,
/// version, kind) and `resources`: their schemas, their lists' and every
/// one they use, and the resources' paths.
pub fn v3_document(kinds: &[(&str, &str, &str)], resources: &[Served<'_>]) -> Value {
    let s = schemas();
    let mut seeds: Vec<String> = META.iter().map(|m| m.to_string()).collect();
    for (g, v, k) in kinds {
        for kind in [k.to_string(), format!("{k}List")] {
            if let Some(name) = s.name_of(g, v, &kind) {
                seeds.push(name.to_string());
            }
        }
    }
    let defs = s.definitions();
    let mut schemas_out = Map::new();
    for name in closure(seeds) {
        schemas_out.insert(name.clone(), to_v3(&defs[&name]));
    }
    let mut paths = Map::new();
    for r in resources {
        resource_paths(r, s.name_of(r.group, r.version, r.kind), &mut paths);
    }
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {"schemas": schemas_out},
    })
}

/// The OpenAPI v2 document: every vendored definition.
pub fn v2_document() -> Value {
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": {},
        "definitions": schemas().definitions(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_versions_document_holds_its_kinds_and_what_they_use() {
        let served = Served {
            group: "apps",
            version: "v1",
            kind: "Deployment",
            plural: "deployments",
            namespaced: true,
        };
        let doc = v3_document(
            &[("apps", "v1", "Deployment"), ("apps", "v1", "ReplicaSet")],
            &[served],
        );
        let get = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["get"];
        assert_eq!(get["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert_eq!(
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.Deployment"
        );
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        assert!(schemas.contains_key("io.k8s.api.apps.v1.Deployment"));
        assert!(schemas.contains_key("io.k8s.api.apps.v1.DeploymentList"));
        assert!(
            schemas.contains_key("io.k8s.api.core.v1.PodSpec"),
            "referred to"
        );
        assert!(
            !schemas.contains_key("io.k8s.api.core.v1.Service"),
            "not referred to"
        );
        let spec = &schemas["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        assert_eq!(
            spec["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(spec["description"].is_string());
        assert!(!doc.to_string().contains("#/definitions/"));
        assert_eq!(
            schemas["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
    }
}
