//! What the API server checks and fills in before it stores an object.
//!
//! Three steps, as kube-apiserver takes them: decode into the typed
//! k8s-openapi struct (which gives type errors with their field path), find
//! the fields that the typed struct dropped (unknown fields: refused under
//! strict field validation, reported as warnings otherwise, never kept), then
//! default and validate per kind.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Cause};
use crate::meta::{dns_label_error, dns_subdomain_error};
use crate::resources::Resource;
use crate::selector::LabelSelector;

fn decode<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: Value,
) -> Result<Value, (String, String)> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        (
            if path == "." { String::new() } else { path },
            e.inner().to_string(),
        )
    })?;
    serde_json::to_value(typed).map_err(|e| (String::new(), e.to_string()))
}

/// Decodes `value` as the typed struct of `kind` and returns it re-encoded.
fn typed_roundtrip(kind: &str, value: Value) -> Result<Value, (String, String)> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    match kind {
        "Namespace" => decode::<core::Namespace>(value),
        "Pod" => decode::<core::Pod>(value),
        "Service" => decode::<core::Service>(value),
        "Endpoints" => decode::<core::Endpoints>(value),
        "Node" => decode::<core::Node>(value),
        "Event" => decode::<core::Event>(value),
        "EndpointSlice" => decode::<disc::EndpointSlice>(value),
        "Lease" => decode::<coord::Lease>(value),
        "Deployment" => decode::<apps::Deployment>(value),
        "ReplicaSet" => decode::<apps::ReplicaSet>(value),
        "NetworkPolicy" => decode::<k8s_openapi::api::networking::v1::NetworkPolicy>(value),
        "Binding" => decode::<core::Binding>(value),
        "Scale" => decode::<k8s_openapi::api::autoscaling::v1::Scale>(value),
        "DeleteOptions" => {
            decode::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>(value)
        }
        other => Err((String::new(), format!("no typed decoder for kind {other}"))),
    }
}

fn unknown_fields(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(p),
                    Some(kv) => unknown_fields(v, kv, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, kv)) in a.iter().zip(b).enumerate() {
                unknown_fields(v, kv, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The result of decoding a body as an object of some kind.
#[derive(Debug)]
pub struct Decoded {
    /// The object in its typed form: unknown fields dropped.
    pub object: Value,
    /// Paths of the fields the kind does not have.
    pub unknown: Vec<String>,
}

/// Decodes `body` as an object of `kind` (apiVersion `api_version`): fills a
/// missing apiVersion/kind, refuses a different one, and finds unknown fields.
pub fn decode_object(api_version: &str, kind: &str, mut body: Value) -> Result<Decoded, ApiError> {
    let Some(map) = body.as_object_mut() else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object of kind {kind}"
        )));
    };
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None => {
            map.insert("kind".into(), json!(kind));
        }
        Some(k) if k == kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind})"
            )));
        }
    }
    let object = typed_roundtrip(kind, body.clone()).map_err(|(path, message)| {
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let field = if path.is_empty() {
            "<body>".to_string()
        } else {
            path
        };
        let mut e = ApiError::bad_request(format!(
            "{kind} in version \"{api_version}\" cannot be handled as a {kind}: {field}: {message}"
        ));
        e.causes = vec![Cause {
            reason: "FieldValueTypeInvalid",
            message,
            field,
        }];
        e.kind = Some(kind.to_string());
        e.name = Some(name);
        e
    })?;
    let mut unknown = Vec::new();
    unknown_fields(&body, &object, "", &mut unknown);
    Ok(Decoded { object, unknown })
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("object")
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

/// Fills the defaults kube-apiserver fills for this kind.
pub fn default_object(resource: &Resource, obj: &mut Value) {
    match resource.kind {
        "Pod" => {
            default_pod_spec(obj_mut(obj, "spec"));
        }
        "Service" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(port, "protocol", json!("TCP"));
                    let p = port.get("port").cloned().unwrap_or(Value::Null);
                    set_default(port, "targetPort", p);
                }
            }
        }
        "Deployment" | "ReplicaSet" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "replicas", json!(1));
            if resource.kind == "Deployment" {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
                if let Some(s) = strategy.as_object_mut() {
                    set_default(s, "type", json!("RollingUpdate"));
                    if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                        if let Some(ru) = ru.as_object_mut() {
                            set_default(ru, "maxSurge", json!("25%"));
                            set_default(ru, "maxUnavailable", json!("25%"));
                        }
                    }
                }
            }
            if let Some(template) = spec.get_mut("template") {
                default_pod_spec(obj_mut(template, "spec"));
            }
        }
        "Namespace" => {
            let spec = obj_mut(obj, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
            // As kube-apiserver (1.21+): every namespace carries its name
            // as a label, so that policies can select it by name.
            if let Some(name) = obj["metadata"]["name"].as_str().map(String::from) {
                let meta = obj_mut(obj, "metadata");
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if let Some(l) = labels.as_object_mut() {
                    l.insert("kubernetes.io/metadata.name".into(), json!(name));
                }
            }
        }
        "NetworkPolicy" => {
            let spec = obj_mut(obj, "spec");
            // Ingress always, Egress when there are egress rules.
            let listed = spec
                .get("policyTypes")
                .and_then(Value::as_array)
                .is_some_and(|t| !t.is_empty());
            if !listed {
                let egress = spec
                    .get("egress")
                    .and_then(Value::as_array)
                    .is_some_and(|e| !e.is_empty());
                let mut types = vec![json!("Ingress")];
                if egress {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), json!(types));
            }
            for dir in ["ingress", "egress"] {
                for rule in spec
                    .get_mut(dir)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for port in rule
                        .get_mut("ports")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_object_mut)
                    {
                        set_default(port, "protocol", json!("TCP"));
                    }
                }
            }
        }
        _ => {}
    }
}

fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    for list in ["initContainers", "containers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                let last = image.rsplit('/').next().unwrap_or_default();
                let latest =
                    !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
                set_default(
                    c,
                    "imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
            }
        }
    }
}

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn check_port(out: &mut Vec<Cause>, field: String, v: &Value) {
    match v.as_i64() {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => out.push(Cause::invalid(
            field,
            p,
            "must be between 1 and 65535, inclusive",
        )),
        None => out.push(Cause::required(field)),
    }
}

fn check_protocol(out: &mut Vec<Cause>, field: String, v: &Value) {
    if let Some(p) = v.as_str()
        && !PROTOCOLS.contains(&p)
    {
        out.push(Cause::not_supported(field, p, PROTOCOLS));
    }
}

fn check_labels(out: &mut Vec<Cause>, field: &str, labels: &Value) {
    let Some(map) = labels.as_object() else {
        return;
    };
    for (k, v) in map {
        let sel = format!("{k}={}", v.as_str().unwrap_or_default());
        if let Err(e) = LabelSelector::parse(&sel) {
            out.push(Cause::invalid(format!("{field}[{k}]"), sel, e));
        }
    }
}

fn check_pod_spec(out: &mut Vec<Cause>, spec: &Value, path: &str) {
    let policies = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    if let Some(p) = spec["dnsPolicy"].as_str()
        && !policies.contains(&p)
    {
        out.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            p,
            &policies,
        ));
    }
    let servers = items_of(&spec["dnsConfig"]["nameservers"]);
    if spec["dnsPolicy"] == "None" && servers.is_empty() {
        out.push(Cause::required(format!(
            "{path}.dnsConfig.nameservers: at least one with dnsPolicy None"
        )));
    }
    if servers.len() > 3 {
        out.push(Cause::invalid(
            format!("{path}.dnsConfig.nameservers"),
            servers.len(),
            "must not have more than 3 nameservers",
        ));
    }
    for (i, s) in servers.iter().enumerate() {
        let s = s.as_str().unwrap_or_default();
        if s.parse::<std::net::IpAddr>().is_err() {
            out.push(Cause::invalid(
                format!("{path}.dnsConfig.nameservers[{i}]"),
                s,
                "must be a valid IP address",
            ));
        }
    }
    let containers = items_of(&spec["containers"]);
    if containers.is_empty() {
        out.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    for (list, items) in [
        ("initContainers", spec["initContainers"].as_array()),
        ("containers", Some(&containers.to_vec())),
    ] {
        for (i, c) in items
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let base = format!("{path}.{list}[{i}]");
            match c["name"].as_str() {
                None | Some("") => out.push(Cause::required(format!("{base}.name"))),
                Some(n) => {
                    if let Some(e) = dns_label_error(n) {
                        out.push(Cause::invalid(format!("{base}.name"), n, e));
                    }
                    if !names.insert(n.to_string()) {
                        out.push(Cause::duplicate(format!("{base}.name"), n));
                    }
                }
            }
            if c["image"].as_str().is_none_or(|s| s.trim().is_empty()) {
                out.push(Cause::required(format!("{base}.image")));
            }
            for (j, p) in items_of(&c["ports"]).iter().enumerate() {
                check_port(
                    out,
                    format!("{base}.ports[{j}].containerPort"),
                    &p["containerPort"],
                );
                check_protocol(out, format!("{base}.ports[{j}].protocol"), &p["protocol"]);
            }
            for kind in ["requests", "limits"] {
                if let Some(map) = c["resources"][kind].as_object() {
                    for (k, v) in map {
                        let q = v.as_str().unwrap_or_default();
                        if crate::quantity::parse(q).is_none() {
                            out.push(Cause::invalid(
                                format!("{base}.resources.{kind}[{k}]"),
                                q,
                                "must be a quantity such as 100m, 0.5 or 64Mi",
                            ));
                        }
                    }
                }
            }
        }
    }
    if let Some(p) = spec["restartPolicy"].as_str()
        && !["Always", "OnFailure", "Never"].contains(&p)
    {
        out.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
        ));
    }
}

/// Checks an object of `resource` (already defaulted); the causes carry
/// field paths.
pub fn validate_object(resource: &Resource, obj: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = str_at(obj, &["metadata", "name"]).unwrap_or_default();
    if name.is_empty() {
        out.push(Cause::required("metadata.name"));
    } else {
        let err = match resource.kind {
            "Namespace" | "Service" => dns_label_error(name),
            _ => dns_subdomain_error(name),
        };
        if let Some(e) = err {
            out.push(Cause::invalid("metadata.name", name, e));
        }
    }
    check_labels(&mut out, "metadata.labels", &obj["metadata"]["labels"]);
    match resource.kind {
        "Pod" => check_pod_spec(&mut out, &obj["spec"], "spec"),
        "Service" => {
            let spec = &obj["spec"];
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
            if !types.contains(&ty) {
                out.push(Cause::not_supported("spec.type", ty, &types));
            }
            let ports = items_of(&spec["ports"]);
            let headless = spec["clusterIP"].as_str() == Some("None");
            if ports.is_empty() && ty != "ExternalName" && !headless {
                out.push(Cause::required("spec.ports"));
            }
            if ty == "ExternalName" && str_at(spec, &["externalName"]).is_none_or(str::is_empty) {
                out.push(Cause::required("spec.externalName"));
            }
            let mut names = std::collections::HashSet::new();
            for (i, p) in ports.iter().enumerate() {
                check_port(&mut out, format!("spec.ports[{i}].port"), &p["port"]);
                check_protocol(
                    &mut out,
                    format!("spec.ports[{i}].protocol"),
                    &p["protocol"],
                );
                match p["name"].as_str() {
                    Some(n) if !n.is_empty() => {
                        if let Some(e) = dns_label_error(n) {
                            out.push(Cause::invalid(format!("spec.ports[{i}].name"), n, e));
                        }
                        if !names.insert(n.to_string()) {
                            out.push(Cause::duplicate(format!("spec.ports[{i}].name"), n));
                        }
                    }
                    _ if ports.len() > 1 => {
                        out.push(Cause::required(format!("spec.ports[{i}].name")))
                    }
                    _ => {}
                }
                if let Some(t) = p["targetPort"].as_i64()
                    && !(1..=65535).contains(&t)
                {
                    out.push(Cause::invalid(
                        format!("spec.ports[{i}].targetPort"),
                        t,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                // A named targetPort is a container port's name.
                if let Some(t) = p["targetPort"].as_str()
                    && let Some(e) = port_name_error(t)
                {
                    out.push(Cause::invalid(format!("spec.ports[{i}].targetPort"), t, e));
                }
                if let Some(np) = p["nodePort"].as_i64()
                    && !(30000..=32767).contains(&np)
                {
                    out.push(Cause::invalid(format!("spec.ports[{i}].nodePort"), np, "provided port is not in the valid range. The range of valid ports is 30000-32767"));
                }
            }
            if let Some(a) = spec["sessionAffinity"].as_str()
                && !["None", "ClientIP"].contains(&a)
            {
                out.push(Cause::not_supported(
                    "spec.sessionAffinity",
                    a,
                    &["None", "ClientIP"],
                ));
            }
            let timeout = &spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
            if !timeout.is_null() && !timeout.as_i64().is_some_and(|t| (1..=86_400).contains(&t)) {
                out.push(Cause::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout.clone(),
                    "must be greater than 0 and less than 86400",
                ));
            }
            check_labels(&mut out, "spec.selector", &spec["selector"]);
        }
        "Deployment" | "ReplicaSet" => {
            let spec = &obj["spec"];
            if let Some(r) = spec["replicas"].as_i64()
                && r < 0
            {
                out.push(Cause::invalid(
                    "spec.replicas",
                    r,
                    "must be greater than or equal to 0",
                ));
            }
            let selector = &spec["selector"];
            match LabelSelector::from_k8s(selector) {
                Err(e) => out.push(Cause::invalid("spec.selector", selector, e)),
                Ok(sel) if sel.is_empty() => out.push(Cause::required("spec.selector")),
                Ok(sel) => {
                    let labels = crate::selector::labels_of(&spec["template"]);
                    if !sel.matches(&labels) {
                        out.push(Cause::invalid(
                            "spec.template.metadata.labels",
                            serde_json::to_string(&spec["template"]["metadata"]["labels"])
                                .unwrap_or_default(),
                            "`selector` does not match template `labels`",
                        ));
                    }
                }
            }
            check_labels(
                &mut out,
                "spec.template.metadata.labels",
                &spec["template"]["metadata"]["labels"],
            );
            check_pod_spec(&mut out, &spec["template"]["spec"], "spec.template.spec");
            if resource.kind == "Deployment"
                && let Some(t) = spec["strategy"]["type"].as_str()
                && !["RollingUpdate", "Recreate"].contains(&t)
            {
                out.push(Cause::not_supported(
                    "spec.strategy.type",
                    t,
                    &["RollingUpdate", "Recreate"],
                ));
            }
        }
        "NetworkPolicy" => check_network_policy(&mut out, &obj["spec"]),
        _ => {}
    }
    out
}

/// A label selector object (matchLabels, matchExpressions) at `field`.
fn check_selector(out: &mut Vec<Cause>, field: &str, selector: &Value) {
    if selector.is_null() {
        return;
    }
    if let Err(e) = LabelSelector::from_k8s(selector) {
        out.push(Cause::invalid(field, selector.clone(), e));
    }
    // As kube-apiserver: In and NotIn need values, Exists and
    // DoesNotExist take none.
    for (i, e) in items_of(&selector["matchExpressions"]).iter().enumerate() {
        let values = items_of(&e["values"]);
        let at = format!("{field}.matchExpressions[{i}].values");
        match e["operator"].as_str().unwrap_or_default() {
            "In" | "NotIn" if values.is_empty() => out.push(Cause::required(at)),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(Cause::invalid(
                at,
                e["values"].clone(),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            _ => {}
        }
    }
    check_labels(
        out,
        &format!("{field}.matchLabels"),
        &selector["matchLabels"],
    );
}

/// A NetworkPolicy's spec, as the Kubernetes API checks it.
fn check_network_policy(out: &mut Vec<Cause>, spec: &Value) {
    if spec["podSelector"].is_null() {
        out.push(Cause::required("spec.podSelector"));
    }
    check_selector(out, "spec.podSelector", &spec["podSelector"]);
    let types = ["Ingress", "Egress"];
    let listed = items_of(&spec["policyTypes"]);
    for (i, t) in listed.iter().enumerate() {
        let t = t.as_str().unwrap_or_default();
        if !types.contains(&t) {
            out.push(Cause::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                &types,
            ));
        }
    }
    for (dir, peers_key) in [("ingress", "from"), ("egress", "to")] {
        let rules = items_of(&spec[dir]);
        for (i, rule) in rules.iter().enumerate() {
            let base = format!("spec.{dir}[{i}]");
            let peers = items_of(&rule[peers_key]);
            for (j, peer) in peers.iter().enumerate() {
                let at = format!("{base}.{peers_key}[{j}]");
                let selectors = ["podSelector", "namespaceSelector"]
                    .iter()
                    .filter(|k| !peer[**k].is_null())
                    .count();
                let block = &peer["ipBlock"];
                if selectors == 0 && block.is_null() {
                    out.push(Cause::required(format!(
                        "{at}: one of podSelector, namespaceSelector or ipBlock"
                    )));
                }
                if selectors > 0 && !block.is_null() {
                    out.push(Cause::invalid(
                        format!("{at}.ipBlock"),
                        block.clone(),
                        "may not be specified with podSelector or namespaceSelector",
                    ));
                }
                check_selector(out, &format!("{at}.podSelector"), &peer["podSelector"]);
                check_selector(
                    out,
                    &format!("{at}.namespaceSelector"),
                    &peer["namespaceSelector"],
                );
                if !block.is_null() {
                    check_ip_block(out, &format!("{at}.ipBlock"), block);
                }
            }
            let ports = items_of(&rule["ports"]);
            for (j, p) in ports.iter().enumerate() {
                let at = format!("{base}.ports[{j}]");
                check_protocol(out, format!("{at}.protocol"), &p["protocol"]);
                match &p["port"] {
                    Value::Null => {
                        if !p["endPort"].is_null() {
                            out.push(Cause::required(format!("{at}.port")));
                        }
                    }
                    Value::String(name) => {
                        if let Some(e) = port_name_error(name) {
                            out.push(Cause::invalid(format!("{at}.port"), name.as_str(), e));
                        }
                        if !p["endPort"].is_null() {
                            out.push(Cause::invalid(
                                format!("{at}.endPort"),
                                p["endPort"].clone(),
                                "may not be specified when `port` is non-numeric",
                            ));
                        }
                    }
                    v => {
                        check_port(out, format!("{at}.port"), v);
                        if !p["endPort"].is_null() {
                            check_port(out, format!("{at}.endPort"), &p["endPort"]);
                            if let (Some(s), Some(e)) = (v.as_i64(), p["endPort"].as_i64())
                                && e < s
                            {
                                out.push(Cause::invalid(
                                    format!("{at}.endPort"),
                                    e,
                                    "must be greater than or equal to `port`",
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// An ipBlock: a CIDR, and exceptions inside it.
fn check_ip_block(out: &mut Vec<Cause>, at: &str, block: &Value) {
    let cidr = block["cidr"].as_str().unwrap_or_default();
    // A CIDR names its prefix length: "10.0.0.1" alone is refused, as
    // kube-apiserver does.
    let Some(net) = cidr
        .contains('/')
        .then(|| cidr.parse::<ipnetwork::IpNetwork>().ok())
        .flatten()
    else {
        if cidr.is_empty() {
            out.push(Cause::required(format!("{at}.cidr")));
        } else {
            out.push(Cause::invalid(
                format!("{at}.cidr"),
                cidr,
                "must be a valid CIDR",
            ));
        }
        return;
    };
    let excepts = items_of(&block["except"]);
    for (k, e) in excepts.iter().enumerate() {
        let s = e.as_str().unwrap_or_default();
        let field = format!("{at}.except[{k}]");
        match s
            .contains('/')
            .then(|| s.parse::<ipnetwork::IpNetwork>().ok())
            .flatten()
        {
            None => out.push(Cause::invalid(field, s, "must be a valid CIDR")),
            Some(x) if !(x.prefix() > net.prefix() && net.contains(x.network())) => {
                out.push(Cause::invalid(
                    field,
                    s,
                    "must be a strict subset of `cidr`",
                ));
            }
            Some(_) => {}
        }
    }
}

/// The items of a JSON list, none when it is absent or not a list.
fn items_of(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

/// Kubernetes' IANA_SVC_NAME rule for port names: at most 15 characters,
/// lowercase letters, digits and '-', at least one letter, no '-' at
/// either end or twice in a row.
fn port_name_error(n: &str) -> Option<&'static str> {
    if n.is_empty() || n.len() > 15 {
        return Some("must be no more than 15 characters and not empty");
    }
    if !n
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)");
    }
    if !n.chars().any(|c| c.is_ascii_lowercase()) {
        return Some("must contain at least one letter (a-z)");
    }
    if n.starts_with('-') || n.ends_with('-') || n.contains("--") {
        return Some("must not begin or end with a hyphen, or contain adjacent hyphens");
    }
    None
}
