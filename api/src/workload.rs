//! The pod-spec clauses beyond volumes and security: containers'
//! environment (`env`, `envFrom`) checked as kube-apiserver checks them,
//! and a refusal, naming the field, for each clause Weft's agent does not
//! keep yet, so that no pod runs without what it asked for. The
//! controller's validation calls [`check_pod_spec`]; docs/WORKLOADS.md
//! lists the same fields.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

use crate::error::Cause;

/// The pod fields an env variable's `fieldRef` may name (besides
/// `metadata.labels['k']` and `metadata.annotations['k']`).
pub const ENV_FIELD_PATHS: [&str; 9] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];

/// The resources a `resourceFieldRef` may name.
pub const RESOURCE_FIELDS: [&str; 6] = [
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
];

/// Whether `path` is a subscripted label or annotation reference
/// (`metadata.labels['app']`).
#[must_use]
pub fn is_subscripted_field(path: &str) -> bool {
    ["metadata.labels['", "metadata.annotations['"]
        .iter()
        .any(|p| {
            path.strip_prefix(p)
                .is_some_and(|r| r.len() > 2 && r.ends_with("']"))
        })
}

/// Kubernetes' rule for env variable names (1.32+, relaxed): printable
/// ASCII without '='.
fn env_name_error(name: &str) -> Option<&'static str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=');
    (!ok).then_some(
        "a valid environment variable name must consist only of printable ASCII characters other than '='",
    )
}

fn check_env_var(out: &mut Vec<Cause>, at: &str, e: &EnvVar) {
    if e.name.is_empty() {
        out.push(Cause::required(format!("{at}.name")));
    } else if let Some(why) = env_name_error(&e.name) {
        out.push(Cause::invalid(format!("{at}.name"), &e.name, why));
    }
    let Some(from) = &e.value_from else { return };
    let set = [
        from.field_ref.is_some(),
        from.resource_field_ref.is_some(),
        from.config_map_key_ref.is_some(),
        from.secret_key_ref.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    let vf = format!("{at}.valueFrom");
    if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
        out.push(Cause::invalid(
            vf.clone(),
            "",
            "may not be specified when `value` is not empty",
        ));
    }
    match set {
        0 => out.push(Cause::invalid(
            vf.clone(),
            "",
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        )),
        1 => {}
        _ => out.push(Cause::invalid(
            vf.clone(),
            "",
            "may not have more than one field specified at a time",
        )),
    }
    if let Some(f) = &from.field_ref {
        let p = f.field_path.as_str();
        if !ENV_FIELD_PATHS.contains(&p) && !is_subscripted_field(p) {
            out.push(Cause::not_supported(
                format!("{vf}.fieldRef.fieldPath"),
                p,
                &ENV_FIELD_PATHS,
            ));
        }
    }
    if let Some(r) = &from.resource_field_ref {
        if !RESOURCE_FIELDS.contains(&r.resource.as_str()) {
            out.push(Cause::not_supported(
                format!("{vf}.resourceFieldRef.resource"),
                &r.resource,
                &RESOURCE_FIELDS,
            ));
        }
        if let Some(d) = &r.divisor
            && crate::quantity::parse(&d.0).is_none_or(|v| v <= 0)
        {
            out.push(Cause::invalid(
                format!("{vf}.resourceFieldRef.divisor"),
                &d.0,
                "must be a positive quantity",
            ));
        }
    }
    for (field, name, key) in [
        (
            "configMapKeyRef",
            from.config_map_key_ref.as_ref().map(|r| &r.name),
            from.config_map_key_ref.as_ref().map(|r| &r.key),
        ),
        (
            "secretKeyRef",
            from.secret_key_ref.as_ref().map(|r| &r.name),
            from.secret_key_ref.as_ref().map(|r| &r.key),
        ),
    ] {
        if let (Some(name), Some(key)) = (name, key) {
            if name.is_empty() {
                out.push(Cause::required(format!("{vf}.{field}.name")));
            }
            if key.is_empty() {
                out.push(Cause::required(format!("{vf}.{field}.key")));
            }
        }
    }
}

fn check_container(out: &mut Vec<Cause>, base: &str, c: &Container) {
    for (i, e) in c.env.iter().flatten().enumerate() {
        check_env_var(out, &format!("{base}.env[{i}]"), e);
    }
    for (i, f) in c.env_from.iter().flatten().enumerate() {
        let at = format!("{base}.envFrom[{i}]");
        match (&f.config_map_ref, &f.secret_ref) {
            (Some(_), Some(_)) => out.push(Cause::invalid(
                at.clone(),
                "",
                "may not have more than one field specified at a time",
            )),
            (None, None) => out.push(Cause::invalid(
                at.clone(),
                "",
                "must specify one of: `configMapRef` or `secretRef`",
            )),
            (Some(r), None) if r.name.is_empty() => {
                out.push(Cause::required(format!("{at}.configMapRef.name")));
            }
            (None, Some(r)) if r.name.is_empty() => {
                out.push(Cause::required(format!("{at}.secretRef.name")));
            }
            _ => {}
        }
        if let Some(p) = f.prefix.as_deref()
            && !p.is_empty()
            && let Some(why) = env_name_error(p)
        {
            out.push(Cause::invalid(format!("{at}.prefix"), p, why));
        }
    }
    if let Some(p) = c.termination_message_path.as_deref()
        && !p.starts_with('/')
    {
        out.push(Cause::invalid(
            format!("{base}.terminationMessagePath"),
            p,
            "must be an absolute path",
        ));
    }
    if let Some(p) = c.termination_message_policy.as_deref()
        && !["File", "FallbackToLogsOnError"].contains(&p)
    {
        out.push(Cause::not_supported(
            format!("{base}.terminationMessagePolicy"),
            p,
            &["File", "FallbackToLogsOnError"],
        ));
    }
    // gRPC probes: the agent probes with exec, httpGet and tcpSocket only.
    for (field, p) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        if p.as_ref().is_some_and(|p| p.grpc.is_some()) {
            out.push(Cause::forbidden(
                format!("{base}.{field}.grpc"),
                "gRPC probes are not supported by Weft yet; use exec (a grpc_health_probe binary), httpGet or tcpSocket",
            ));
        }
    }
    // hostPort: nothing on the node forwards it yet.
    for (i, port) in c.ports.iter().flatten().enumerate() {
        if port.host_port.is_some_and(|p| p != 0) {
            out.push(Cause::forbidden(
                format!("{base}.ports[{i}].hostPort"),
                "hostPort is not supported by Weft yet; use a NodePort Service, or hostNetwork",
            ));
        }
    }
    // A tcpSocket hook is accepted by kube and fails at run time: refused.
    for (field, h) in [
        (
            "postStart",
            c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()),
        ),
        (
            "preStop",
            c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()),
        ),
    ] {
        let Some(h) = h else { continue };
        let at = format!("{base}.lifecycle.{field}");
        if h.tcp_socket.is_some() {
            out.push(Cause::forbidden(
                format!("{at}.tcpSocket"),
                "tcpSocket is not a lifecycle handler (Kubernetes fails it at run time); use exec, httpGet or sleep",
            ));
        }
        let set = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()]
            .iter()
            .filter(|s| **s)
            .count();
        if set == 0 && h.tcp_socket.is_none() {
            out.push(Cause::required(format!(
                "{at}: must specify a handler type"
            )));
        } else if set > 1 {
            out.push(Cause::forbidden(
                at.clone(),
                "may not specify more than 1 handler type",
            ));
        }
        if let Some(sl) = &h.sleep
            && sl.seconds < 0
        {
            out.push(Cause::invalid(
                format!("{at}.sleep.seconds"),
                sl.seconds,
                "must be non-negative",
            ));
        }
    }
}

/// The environment of every container, and a refusal for each clause the
/// agent does not keep yet.
pub fn check_pod_spec(out: &mut Vec<Cause>, spec: &PodSpec, path: &str) {
    for (at, c) in crate::pod::containers_with_paths(spec) {
        check_container(out, &format!("{path}.{at}"), c);
    }
    let not_yet = "is not supported by Weft yet; remove it (see docs/WORKLOADS.md)";
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let at = format!("{path}.initContainers[{i}]");
        match c.restart_policy.as_deref() {
            None => {
                for (field, set) in [
                    ("lifecycle", c.lifecycle.is_some()),
                    ("livenessProbe", c.liveness_probe.is_some()),
                    ("readinessProbe", c.readiness_probe.is_some()),
                    ("startupProbe", c.startup_probe.is_some()),
                ] {
                    if set {
                        out.push(Cause::forbidden(
                            format!("{at}.{field}"),
                            "may not be set for init containers without restartPolicy=Always",
                        ));
                    }
                }
            }
            Some("Always") => {}
            Some(other) => out.push(Cause::not_supported(
                format!("{at}.restartPolicy"),
                other,
                &["Always"],
            )),
        }
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if c.restart_policy.is_some() {
            out.push(Cause::forbidden(
                format!("{path}.containers[{i}].restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    // Scheduling and runtime clauses Weft cannot keep yet.
    let affinity = spec.affinity.as_ref();
    for (field, set) in [
        (
            "affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution",
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution",
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.required_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "schedulingGates",
            spec.scheduling_gates
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        ("runtimeClassName", spec.runtime_class_name.is_some()),
        ("overhead", spec.overhead.is_some()),
        (
            "resourceClaims",
            spec.resource_claims.as_ref().is_some_and(|v| !v.is_empty()),
        ),
        (
            "ephemeralContainers",
            spec.ephemeral_containers
                .as_ref()
                .is_some_and(|v| !v.is_empty()),
        ),
        ("setHostnameAsFQDN", spec.set_hostname_as_fqdn == Some(true)),
    ] {
        if set {
            out.push(Cause::forbidden(format!("{path}.{field}"), not_yet));
        }
    }
    for (i, t) in spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .enumerate()
    {
        if t.when_unsatisfiable == "DoNotSchedule" {
            out.push(Cause::forbidden(
                format!("{path}.topologySpreadConstraints[{i}].whenUnsatisfiable"),
                "DoNotSchedule is not supported by Weft's scheduler yet (ScheduleAnyway is accepted, as advice); see docs/WORKLOADS.md",
            ));
        }
    }
    if let Some(os) = &spec.os
        && os.name != "linux"
    {
        out.push(Cause::not_supported(
            format!("{path}.os.name"),
            &os.name,
            &["linux"],
        ));
    }
    if let Some(h) = spec.hostname.as_deref()
        && let Some(e) = crate::meta::dns_label_error(h)
    {
        out.push(Cause::invalid(format!("{path}.hostname"), h, e));
    }
    if spec.share_process_namespace == Some(true) && spec.host_pid == Some(true) {
        out.push(Cause::invalid(
            format!("{path}.shareProcessNamespace"),
            "true",
            "ShareProcessNamespace and HostPID cannot both be enabled",
        ));
    }
    for (i, s) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if s.name.is_empty() {
            out.push(Cause::required(format!(
                "{path}.imagePullSecrets[{i}].name"
            )));
        }
    }
    for (i, a) in spec.host_aliases.iter().flatten().enumerate() {
        let at = format!("{path}.hostAliases[{i}]");
        if a.ip.parse::<std::net::IpAddr>().is_err() {
            out.push(Cause::invalid(
                format!("{at}.ip"),
                &a.ip,
                "must be a valid IP address",
            ));
        }
        for (j, h) in a.hostnames.iter().flatten().enumerate() {
            if let Some(e) = crate::meta::dns_subdomain_error(h) {
                out.push(Cause::invalid(format!("{at}.hostnames[{j}]"), h, e));
            }
        }
    }
}

/// What Weft accepts of a pod spec and does not act on, where Kubernetes
/// too treats it as a preference: each becomes a Warning header.
#[must_use]
pub fn advisories(spec: &PodSpec, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let affinity = spec.affinity.as_ref();
    let preferred = [
        (
            "nodeAffinity",
            affinity
                .and_then(|a| a.node_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "podAffinity",
            affinity
                .and_then(|a| a.pod_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|v| !v.is_empty()),
        ),
        (
            "podAntiAffinity",
            affinity
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .and_then(|a| {
                    a.preferred_during_scheduling_ignored_during_execution
                        .as_ref()
                })
                .is_some_and(|v| !v.is_empty()),
        ),
    ];
    for (kind, set) in preferred {
        if set {
            out.push(format!(
                "{path}.affinity.{kind}.preferredDuringSchedulingIgnoredDuringExecution: Weft's scheduler does not weigh preferences yet; the pod may land anywhere it fits"
            ));
        }
    }
    if spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .any(|t| t.when_unsatisfiable == "ScheduleAnyway")
    {
        out.push(format!(
            "{path}.topologySpreadConstraints: ScheduleAnyway spreading is not weighed by Weft's scheduler yet (it spreads a workload's pods across nodes on its own)"
        ));
    }
    if spec.priority_class_name.is_some()
        || spec.priority.is_some()
        || spec.preemption_policy.is_some()
    {
        out.push(format!(
            "{path}.priorityClassName: Weft does not order or preempt pods by priority"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscripted_fields() {
        assert!(is_subscripted_field("metadata.labels['app']"));
        assert!(is_subscripted_field("metadata.annotations['a/b']"));
        assert!(!is_subscripted_field("metadata.labels"));
        assert!(!is_subscripted_field("metadata.labels['']"));
        assert!(!is_subscripted_field("metadata.labels['a'"));
    }

    #[test]
    fn env_names() {
        assert!(env_name_error("FOO_1").is_none());
        assert!(env_name_error("foo.bar-baz").is_none());
        assert!(env_name_error("A=B").is_some());
        assert!(env_name_error("").is_some());
        assert!(env_name_error("a\tb").is_some());
    }
}
