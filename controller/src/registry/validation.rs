//! Checks more than one kind needs, on the typed objects: labels and label
//! selectors, ports and protocols, port names, pod specs (in Pods and in
//! the templates of Deployments and ReplicaSets), with the field paths and
//! messages kube-apiserver gives.

use std::collections::{BTreeMap, HashSet};

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use weft_api::error::Cause;
use weft_api::meta::dns_label_error;

/// The protocols a port may name.
pub const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// A port number, 1-65535; `None` is a missing one.
pub fn check_port(out: &mut Vec<Cause>, field: String, port: Option<i32>) {
    match port {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => out.push(Cause::invalid(
            field,
            p,
            "must be between 1 and 65535, inclusive",
        )),
        None => out.push(Cause::required(field)),
    }
}

/// A protocol, when given.
pub fn check_protocol(out: &mut Vec<Cause>, field: String, protocol: Option<&str>) {
    if let Some(p) = protocol
        && !PROTOCOLS.contains(&p)
    {
        out.push(Cause::not_supported(field, p, PROTOCOLS));
    }
}

/// What a label key must be.
const LABEL_KEY_RULE: &str = "a label key must be an optional DNS subdomain prefix and '/', then a name of at most 63 characters that consists of alphanumeric characters, '-', '_' or '.', and starts and ends with an alphanumeric character";
/// What a label value must be.
const LABEL_VALUE_RULE: &str = "a valid label must be an empty string or consist of at most 63 alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// Label keys and values (`metadata.labels`, a Service's selector).
pub fn check_labels(out: &mut Vec<Cause>, field: &str, labels: Option<&BTreeMap<String, String>>) {
    for (k, v) in labels.into_iter().flatten() {
        if !weft_api::selector::valid_key(k) {
            out.push(Cause::invalid(field, serde_json::json!(k), LABEL_KEY_RULE));
        } else if !weft_api::selector::valid_value(v) {
            out.push(Cause::invalid(
                format!("{field}[{k}]"),
                serde_json::json!(v),
                LABEL_VALUE_RULE,
            ));
        }
    }
}

/// Kubernetes' limit on all of an object's annotations together, keys and
/// values.
pub const MAX_ANNOTATIONS: usize = 256 * 1024;

/// Annotation keys (qualified names, as label keys) and their total size.
pub fn check_annotations(out: &mut Vec<Cause>, annotations: Option<&BTreeMap<String, String>>) {
    let mut total = 0usize;
    for (k, v) in annotations.into_iter().flatten() {
        total += k.len() + v.len();
        if !weft_api::selector::valid_key(&k.to_ascii_lowercase()) {
            out.push(Cause::invalid(
                "metadata.annotations",
                serde_json::json!(k),
                "an annotation key must be an optional DNS subdomain prefix and '/', then a name of at most 63 characters that consists of alphanumeric characters, '-', '_' or '.', and starts and ends with an alphanumeric character",
            ));
        }
    }
    if total > MAX_ANNOTATIONS {
        out.push(Cause::too_long("metadata.annotations", MAX_ANNOTATIONS));
    }
}

/// What is wrong with a label selector object, as one message (its
/// operators), or `None`.
pub fn selector_error(selector: &LabelSelector) -> Option<String> {
    weft_api::selector::LabelSelector::from_typed(selector).err()
}

/// Whether a label selector object selects nothing in particular (no
/// labels and no expressions).
pub fn selector_is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

/// Whether `labels` satisfy `selector` (kube-core's matching; an invalid
/// selector matches nothing).
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    use kube::core::SelectorExt as _;
    kube::core::Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// A label selector object (matchLabels, matchExpressions) at `field`.
pub fn check_selector(out: &mut Vec<Cause>, field: &str, selector: Option<&LabelSelector>) {
    let Some(selector) = selector else {
        return;
    };
    if let Some(e) = selector_error(selector) {
        out.push(Cause::invalid(field, json!(selector), e));
    }
    check_expression_values(out, field, selector);
    check_selector_labels(out, field, selector);
}

/// The keys and values a label selector names are label keys and values
/// (matchLabels, and the keys and In/NotIn values of matchExpressions).
/// Returns whether all are.
pub fn check_selector_labels(out: &mut Vec<Cause>, field: &str, selector: &LabelSelector) -> bool {
    let before = out.len();
    check_labels(
        out,
        &format!("{field}.matchLabels"),
        selector.match_labels.as_ref(),
    );
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if !weft_api::selector::valid_key(&e.key) {
            out.push(Cause::invalid(
                format!("{at}.key"),
                json!(e.key),
                LABEL_KEY_RULE,
            ));
        }
        for (n, v) in e.values.iter().flatten().enumerate() {
            if !weft_api::selector::valid_value(v) {
                out.push(Cause::invalid(
                    format!("{at}.values[{n}]"),
                    json!(v),
                    LABEL_VALUE_RULE,
                ));
            }
        }
    }
    out.len() == before
}

/// As kube-apiserver: In and NotIn need values, Exists and DoesNotExist
/// take none. Returns whether all is well.
pub fn check_expression_values(
    out: &mut Vec<Cause>,
    field: &str,
    selector: &LabelSelector,
) -> bool {
    let before = out.len();
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        let at = format!("{field}.matchExpressions[{i}].values");
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push(Cause::required(at)),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(Cause::invalid(
                at,
                json!(values),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            _ => {}
        }
    }
    out.len() == before
}

/// Kubernetes' IANA_SVC_NAME rule for port names: at most 15 characters,
/// lowercase letters, digits and '-', at least one letter, no '-' at
/// either end or twice in a row.
pub fn port_name_error(n: &str) -> Option<&'static str> {
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

/// The defaults kube-apiserver fills in a pod spec (a Pod's, or a
/// template's).
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers {
        let image = c.image.as_deref().unwrap_or_default();
        let last = image.rsplit('/').next().unwrap_or_default();
        let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
        c.image_pull_policy
            .get_or_insert_with(|| if latest { "Always" } else { "IfNotPresent" }.into());
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        for probe in [
            c.liveness_probe.as_mut(),
            c.readiness_probe.as_mut(),
            c.startup_probe.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            weft_api::pod::default_probe(probe);
        }
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
        }
        // A limit without a request requests as much (kube's defaulting).
        if let Some(r) = c.resources.as_mut()
            && let Some(limits) = r.limits.clone()
        {
            let requests = r.requests.get_or_insert_with(Default::default);
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
        }
        // `resources: {}` (what Go clients send for an unset struct, as
        // kubectl's rollback does) is no resources: one form, so that a
        // template written back compares equal to the one it came from.
        if c.resources.as_ref().is_some_and(|r| {
            r.limits.as_ref().is_none_or(|m| m.is_empty())
                && r.requests.as_ref().is_none_or(|m| m.is_empty())
                && r.claims.as_ref().is_none_or(Vec::is_empty)
        }) {
            c.resources = None;
        }
    }
}

/// A pod spec at `path` (a Pod's `spec`, a template's `spec.template.spec`).
pub fn check_pod_spec(out: &mut Vec<Cause>, spec: Option<&PodSpec>, path: &str) {
    let empty = PodSpec::default();
    let spec = spec.unwrap_or(&empty);
    let policies = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
    if let Some(p) = spec.dns_policy.as_deref()
        && !policies.contains(&p)
    {
        out.push(Cause::not_supported(
            format!("{path}.dnsPolicy"),
            p,
            &policies,
        ));
    }
    let servers = spec
        .dns_config
        .as_ref()
        .and_then(|c| c.nameservers.as_deref())
        .unwrap_or_default();
    if spec.dns_policy.as_deref() == Some("None") && servers.is_empty() {
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
        if s.parse::<std::net::IpAddr>().is_err() {
            out.push(Cause::invalid(
                format!("{path}.dnsConfig.nameservers[{i}]"),
                s,
                "must be a valid IP address",
            ));
        }
    }
    weft_api::security::check_pod_spec(out, spec, path);
    weft_api::volumes::check(out, spec, path);
    weft_api::workload::check_pod_spec(out, spec, path);
    if spec.containers.is_empty() {
        out.push(Cause::required(format!("{path}.containers")));
    }
    let mut names = HashSet::new();
    for (at, c) in weft_api::pod::containers_with_paths(spec) {
        let base = format!("{path}.{at}");
        if c.name.is_empty() {
            out.push(Cause::required(format!("{base}.name")));
        } else {
            if let Some(e) = dns_label_error(&c.name) {
                out.push(Cause::invalid(format!("{base}.name"), &c.name, e));
            }
            if !names.insert(c.name.clone()) {
                out.push(Cause::duplicate(format!("{base}.name"), &c.name));
            }
        }
        if c.image.as_deref().is_none_or(|s| s.trim().is_empty()) {
            out.push(Cause::required(format!("{base}.image")));
        }
        for (j, p) in c.ports.iter().flatten().enumerate() {
            check_port(
                out,
                format!("{base}.ports[{j}].containerPort"),
                Some(p.container_port),
            );
            check_protocol(
                out,
                format!("{base}.ports[{j}].protocol"),
                p.protocol.as_deref(),
            );
        }
        let resources = c.resources.as_ref();
        // Limits first, as kube-apiserver reports them.
        for (kind, map) in [
            ("limits", resources.and_then(|r| r.limits.as_ref())),
            ("requests", resources.and_then(|r| r.requests.as_ref())),
        ] {
            for (k, q) in map.into_iter().flatten() {
                let why = match weft_api::quantity::parse(&q.0) {
                    None => "must be a quantity such as 100m, 0.5 or 64Mi",
                    Some(v) if v < 0 => "must be greater than or equal to 0",
                    Some(_) => continue,
                };
                out.push(Cause::invalid(
                    format!("{base}.resources.{kind}[{k}]"),
                    &q.0,
                    why,
                ));
            }
        }
    }
    if let Some(p) = spec.restart_policy.as_deref()
        && !["Always", "OnFailure", "Never"].contains(&p)
    {
        out.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            p,
            &["Always", "OnFailure", "Never"],
        ));
    }
}

/// An integer or a percentage that is not negative (and, as a
/// percentage, at most 100%).
pub(crate) fn check_int_or_percent(out: &mut Vec<Cause>, field: &str, v: Option<&IntOrString>) {
    match v {
        Some(IntOrString::Int(n)) if *n < 0 => out.push(Cause::invalid(
            field,
            n,
            "must be greater than or equal to 0",
        )),
        Some(IntOrString::String(s)) => {
            match s.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                Some(p) if p > 100 => out.push(Cause::invalid(
                    field,
                    s,
                    "must not be greater than 100%",
                )),
                Some(_) => {}
                None => out.push(Cause::invalid(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )),
            }
        }
        _ => {}
    }
}

/// A count or a number of seconds that may not be negative.
pub fn non_negative<T: PartialOrd + Default + std::fmt::Display>(
    out: &mut Vec<Cause>,
    field: &str,
    v: Option<T>,
) {
    if let Some(v) = v
        && v < T::default()
    {
        out.push(Cause::invalid(
            field,
            v,
            "must be greater than or equal to 0",
        ));
    }
}
