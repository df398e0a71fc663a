//! Pod Security admission, as Kubernetes' built-in admission plugin does
//! it: a namespace's `pod-security.kubernetes.io/enforce|warn|audit`
//! labels name a level (`privileged`, `baseline`, `restricted`) of the Pod
//! Security Standards; a pod that breaks its namespace's `enforce` level
//! is refused (403), one that breaks `warn` is admitted with a Warning,
//! `audit` is logged. Pod templates of workloads are checked the same way
//! but only warned about (their pods are refused when made). A namespace
//! without an `enforce` label gets the controller's default level
//! (`--pod-security-default`, `privileged` as in Kubernetes).
//!
//! The checks and their messages are Kubernetes' ("latest" version).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Namespace, PodSpec};
use weft_api::error::{ApiError, Cause};

use super::Registry;

/// Label prefix of the modes.
pub const PREFIX: &str = "pod-security.kubernetes.io/";

/// A level of the Pod Security Standards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No restriction.
    Privileged,
    /// Known privilege escalations prevented.
    Baseline,
    /// Hardened, current best practice.
    Restricted,
}

impl Level {
    /// The level named `s`, as the labels spell it.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "privileged" => Some(Self::Privileged),
            "baseline" => Some(Self::Baseline),
            "restricted" => Some(Self::Restricted),
            _ => None,
        }
    }

    /// Its name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Privileged => "privileged",
            Self::Baseline => "baseline",
            Self::Restricted => "restricted",
        }
    }
}

/// A namespace's level for a mode (`enforce`, `warn`, `audit`) and its
/// version label: `None` when not set. A level that does not parse counts
/// as `restricted`, as in Kubernetes (fail closed).
#[must_use]
pub fn level(labels: &BTreeMap<String, String>, mode: &str) -> Option<(Level, String)> {
    let l = labels.get(&format!("{PREFIX}{mode}"))?;
    let version = labels
        .get(&format!("{PREFIX}{mode}-version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    Some((Level::parse(l).unwrap_or(Level::Restricted), version))
}

/// The labels of a namespace, checked: each mode names a level, each
/// version is `latest` or `vMAJOR.MINOR`.
pub fn check_labels(out: &mut Vec<Cause>, labels: Option<&BTreeMap<String, String>>) {
    for (k, v) in labels.into_iter().flatten() {
        let Some(mode) = k.strip_prefix(PREFIX) else {
            continue;
        };
        let field = format!("metadata.labels[{k}]");
        match mode {
            "enforce" | "warn" | "audit" if Level::parse(v).is_none() => {
                out.push(Cause::not_supported(
                    field,
                    v,
                    &["privileged", "baseline", "restricted"],
                ));
            }
            "enforce-version" | "warn-version" | "audit-version" => {
                let ok = v == "latest"
                    || v.strip_prefix("v1.")
                        .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
                if !ok {
                    out.push(Cause::invalid(
                        field,
                        v,
                        "must be \"latest\" or a Kubernetes version such as \"v1.33\"",
                    ));
                }
            }
            _ => {}
        }
    }
}

/// Capabilities a baseline pod may add.
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The type of a volume a restricted pod may not use, if it is one.
fn restricted_volume_type(v: &k8s_openapi::api::core::v1::Volume) -> Option<String> {
    const ALLOWED: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    let value = serde_json::to_value(v).ok()?;
    let t = value.as_object()?.keys().find(|k| *k != "name")?.clone();
    (!ALLOWED.contains(&t.as_str())).then_some(t)
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "container "a"" or "containers "a", "b"".
fn containers_phrase(names: &[&str]) -> String {
    if names.len() == 1 {
        format!("container {}", quoted(names))
    } else {
        format!("containers {}", quoted(names))
    }
}

fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

fn sc_of(c: &Container) -> Option<&k8s_openapi::api::core::v1::SecurityContext> {
    c.security_context.as_ref()
}

/// What `spec` breaks of `level`: each check's message, in Kubernetes'
/// words and order. Empty when it complies.
#[must_use]
pub fn violations(level: Level, spec: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    if level == Level::Privileged {
        return out;
    }
    let psc = spec.security_context.as_ref();
    // Baseline.
    let host: Vec<&str> = [
        (spec.host_network, "hostNetwork=true"),
        (spec.host_pid, "hostPID=true"),
        (spec.host_ipc, "hostIPC=true"),
    ]
    .into_iter()
    .filter(|(v, _)| *v == Some(true))
    .map(|(_, s)| s)
    .collect();
    if !host.is_empty() {
        out.push(format!("host namespaces ({})", host.join(", ")));
    }
    let privileged: Vec<&str> = all_containers(spec)
        .filter(|c| sc_of(c).and_then(|s| s.privileged) == Some(true))
        .map(|c| c.name.as_str())
        .collect();
    if !privileged.is_empty() {
        out.push(format!(
            "privileged ({} must not set securityContext.privileged=true)",
            containers_phrase(&privileged)
        ));
    }
    let mut added = Vec::new();
    for c in all_containers(spec) {
        let adds = sc_of(c)
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|k| k.add.clone())
            .unwrap_or_default();
        let bad: Vec<String> = adds
            .iter()
            .map(|a| a.trim_start_matches("CAP_").to_string())
            .filter(|a| !BASELINE_CAPABILITIES.contains(&a.as_str()))
            .collect();
        if !bad.is_empty() {
            added.push(format!(
                "container {:?} must not include {} in securityContext.capabilities.add",
                c.name,
                quoted(&bad.iter().map(String::as_str).collect::<Vec<_>>())
            ));
        }
    }
    if !added.is_empty() {
        out.push(format!("non-default capabilities ({})", added.join("; ")));
    }
    let host_paths: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .map(|v| v.name.as_str())
        .collect();
    if !host_paths.is_empty() {
        let what = if host_paths.len() == 1 {
            "volume"
        } else {
            "volumes"
        };
        out.push(format!("hostPath volumes ({what} {})", quoted(&host_paths)));
    }
    let mut ports = Vec::new();
    for c in all_containers(spec) {
        let hp: Vec<String> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.host_port.filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !hp.is_empty() {
            let what = if hp.len() == 1 {
                "hostPort"
            } else {
                "hostPorts"
            };
            ports.push(format!(
                "container {:?} uses {what} {}",
                c.name,
                hp.join(", ")
            ));
        }
    }
    if !ports.is_empty() {
        out.push(format!("hostPort ({})", ports.join("; ")));
    }
    let unconfined_armor = |a: Option<&k8s_openapi::api::core::v1::AppArmorProfile>| {
        a.is_some_and(|a| a.type_ == "Unconfined")
    };
    let mut armor = Vec::new();
    if unconfined_armor(psc.and_then(|p| p.app_armor_profile.as_ref())) {
        armor.push(
            "pod must not set securityContext.appArmorProfile.type to \"Unconfined\"".to_string(),
        );
    }
    for c in all_containers(spec) {
        if unconfined_armor(sc_of(c).and_then(|s| s.app_armor_profile.as_ref())) {
            armor.push(format!(
                "container {:?} must not set securityContext.appArmorProfile.type to \"Unconfined\"",
                c.name
            ));
        }
    }
    if !armor.is_empty() {
        out.push(format!("forbidden AppArmor profile ({})", armor.join("; ")));
    }
    let unconfined = |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
        p.is_some_and(|p| p.type_ == "Unconfined")
    };
    let mut seccomp = Vec::new();
    if unconfined(psc.and_then(|p| p.seccomp_profile.as_ref())) {
        seccomp.push(
            "pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string(),
        );
    }
    let bad: Vec<&str> = all_containers(spec)
        .filter(|c| unconfined(sc_of(c).and_then(|s| s.seccomp_profile.as_ref())))
        .map(|c| c.name.as_str())
        .collect();
    if !bad.is_empty() {
        seccomp.push(format!(
            "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
            containers_phrase(&bad)
        ));
    }
    let baseline_seccomp =
        (!seccomp.is_empty()).then(|| format!("seccompProfile ({})", seccomp.join("; ")));
    if level == Level::Baseline {
        out.extend(baseline_seccomp);
        return out;
    }

    // Restricted.
    let restricted_volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| {
            restricted_volume_type(v)
                .map(|t| format!("volume {:?} uses restricted volume type {t:?}", v.name))
        })
        .collect();
    if !restricted_volumes.is_empty() {
        out.push(format!(
            "restricted volume types ({})",
            restricted_volumes.join("; ")
        ));
    }
    let escalating: Vec<&str> = all_containers(spec)
        .filter(|c| sc_of(c).and_then(|s| s.allow_privilege_escalation) != Some(false))
        .map(|c| c.name.as_str())
        .collect();
    if !escalating.is_empty() {
        out.push(format!(
            "allowPrivilegeEscalation != false ({} must set securityContext.allowPrivilegeEscalation=false)",
            containers_phrase(&escalating)
        ));
    }
    let mut caps = Vec::new();
    let no_drop_all: Vec<&str> = all_containers(spec)
        .filter(|c| {
            !sc_of(c)
                .and_then(|s| s.capabilities.as_ref())
                .and_then(|k| k.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        })
        .map(|c| c.name.as_str())
        .collect();
    if !no_drop_all.is_empty() {
        caps.push(format!(
            "{} must set securityContext.capabilities.drop=[\"ALL\"]",
            containers_phrase(&no_drop_all)
        ));
    }
    for c in all_containers(spec) {
        let bad: Vec<String> = sc_of(c)
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|k| k.add.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.trim_start_matches("CAP_").to_string())
            .filter(|a| a != "NET_BIND_SERVICE")
            .collect();
        if !bad.is_empty() {
            caps.push(format!(
                "container {:?} must not include {} in securityContext.capabilities.add",
                c.name,
                quoted(&bad.iter().map(String::as_str).collect::<Vec<_>>())
            ));
        }
    }
    if !caps.is_empty() {
        out.push(format!("unrestricted capabilities ({})", caps.join("; ")));
    }
    // runAsNonRoot: the pod's, or every container's own.
    let pod_non_root = psc.and_then(|p| p.run_as_non_root);
    let mut non_root = Vec::new();
    if pod_non_root == Some(false) {
        non_root.push("pod must not set securityContext.runAsNonRoot=false".to_string());
    }
    let explicit_false: Vec<&str> = all_containers(spec)
        .filter(|c| sc_of(c).and_then(|s| s.run_as_non_root) == Some(false))
        .map(|c| c.name.as_str())
        .collect();
    if !explicit_false.is_empty() {
        non_root.push(format!(
            "{} must not set securityContext.runAsNonRoot=false",
            containers_phrase(&explicit_false)
        ));
    }
    if pod_non_root != Some(true) {
        let unset: Vec<&str> = all_containers(spec)
            .filter(|c| sc_of(c).and_then(|s| s.run_as_non_root).is_none())
            .map(|c| c.name.as_str())
            .collect();
        if !unset.is_empty() {
            non_root.push(format!(
                "pod or {} must set securityContext.runAsNonRoot=true",
                containers_phrase(&unset)
            ));
        }
    }
    if !non_root.is_empty() {
        out.push(format!("runAsNonRoot != true ({})", non_root.join("; ")));
    }
    let mut root = Vec::new();
    if psc.and_then(|p| p.run_as_user) == Some(0) {
        root.push("pod must not set runAsUser=0".to_string());
    }
    let zero: Vec<&str> = all_containers(spec)
        .filter(|c| sc_of(c).and_then(|s| s.run_as_user) == Some(0))
        .map(|c| c.name.as_str())
        .collect();
    if !zero.is_empty() {
        root.push(format!(
            "{} must not set runAsUser=0",
            containers_phrase(&zero)
        ));
    }
    if !root.is_empty() {
        out.push(format!("runAsUser=0 ({})", root.join("; ")));
    }
    // seccompProfile: RuntimeDefault or Localhost, the pod's or each
    // container's (and never Unconfined, the baseline rule).
    let allowed = |p: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
        p.is_some_and(|p| p.type_ == "RuntimeDefault" || p.type_ == "Localhost")
    };
    let pod_ok = allowed(psc.and_then(|p| p.seccomp_profile.as_ref()));
    let unset: Vec<&str> = all_containers(spec)
        .filter(|c| {
            let own = sc_of(c).and_then(|s| s.seccomp_profile.as_ref());
            own.is_none() && !pod_ok
        })
        .map(|c| c.name.as_str())
        .collect();
    let mut seccomp_r = seccomp;
    if !unset.is_empty() {
        seccomp_r.push(format!(
            "pod or {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
            containers_phrase(&unset)
        ));
    }
    if !seccomp_r.is_empty() {
        out.push(format!("seccompProfile ({})", seccomp_r.join("; ")));
    }
    out
}

/// The one-line form Kubernetes gives, after "violates" or "would
/// violate": `PodSecurity "restricted:latest": a, b`.
#[must_use]
pub fn summary(level: Level, version: &str, violations: &[String]) -> String {
    format!(
        "PodSecurity \"{}:{version}\": {}",
        level.name(),
        violations.join(", ")
    )
}

/// The labels of namespace `ns` (from the controllers' cache when it has
/// them), or `None` when the namespace does not exist: the write itself
/// then says so.
pub async fn namespace_labels(reg: &Registry, ns: &str) -> Option<BTreeMap<String, String>> {
    if let Some(n) = reg.namespaces.as_ref().and_then(|c| c.namespace(ns)) {
        return Some(n.metadata.labels.clone().unwrap_or_default());
    }
    reg.get::<Namespace>(None, ns)
        .await
        .ok()
        .map(|n| n.metadata.labels.unwrap_or_default())
}

/// Checks a pod spec against its namespace's labels (`default` where no
/// `enforce` label is): for a pod (`is_pod`), breaking `enforce` is a 403
/// with kube's message; for a workload's template, a warning. What breaks
/// `warn` comes back as warnings, what breaks `audit` is logged.
///
/// # Errors
/// 403 for a pod that breaks the enforced level.
pub fn check(
    default: Level,
    labels: &BTreeMap<String, String>,
    ns: &str,
    name: &str,
    spec: &PodSpec,
    is_pod: bool,
) -> Result<Vec<String>, ApiError> {
    let mut warnings = Vec::new();
    let (enforced, version) = level(labels, "enforce").unwrap_or((default, "latest".into()));
    let broken = violations(enforced, spec);
    if !broken.is_empty() {
        let what = summary(enforced, &version, &broken);
        if is_pod {
            return Err(forbidden(name, &what));
        }
        warnings.push(format!("would violate {what}"));
    }
    if let Some((warn, version)) = level(labels, "warn")
        && (warn != enforced || is_pod)
    {
        let broken = violations(warn, spec);
        if !broken.is_empty() {
            warnings.push(format!(
                "would violate {}",
                summary(warn, &version, &broken)
            ));
        }
    }
    if let Some((audit, version)) = level(labels, "audit") {
        let broken = violations(audit, spec);
        if !broken.is_empty() {
            tracing::info!(
                namespace = ns,
                name,
                audit = %format!("violates {}", summary(audit, &version, &broken)),
                "pod security audit"
            );
        }
    }
    Ok(warnings)
}

/// Enforces the namespace's level on a pod about to be stored, whoever
/// makes it: the API's clients and the controllers (a ReplicaSet's pods
/// are refused here, and the ReplicaSet reports FailedCreate, as in
/// Kubernetes). Warnings and audit are the API's, not repeated here.
///
/// # Errors
/// 403 for a pod that breaks the enforced level.
pub async fn enforce(reg: &Registry, ns: &str, name: &str, spec: &PodSpec) -> Result<(), ApiError> {
    let Some(labels) = namespace_labels(reg, ns).await else {
        return Ok(());
    };
    let (enforced, version) =
        level(&labels, "enforce").unwrap_or((reg.pod_security_default, "latest".into()));
    let broken = violations(enforced, spec);
    if broken.is_empty() {
        return Ok(());
    }
    Err(forbidden(name, &summary(enforced, &version, &broken)))
}

/// kube-apiserver's refusal of pod `name` for the violations `what`.
fn forbidden(name: &str, what: &str) -> ApiError {
    ApiError::forbidden(format!("pods {name:?} is forbidden: violates {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn baseline_refuses_the_known_escalations() {
        let s = spec(serde_json::json!({
            "hostNetwork": true, "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 8080}],
                "securityContext": {"privileged": true, "capabilities": {"add": ["NET_ADMIN", "CHOWN"]},
                    "seccompProfile": {"type": "Unconfined"}}}]
        }));
        let v = violations(Level::Baseline, &s);
        assert_eq!(
            v,
            [
                "host namespaces (hostNetwork=true, hostPID=true)",
                "privileged (container \"c\" must not set securityContext.privileged=true)",
                "non-default capabilities (container \"c\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
                "hostPath volumes (volume \"root\")",
                "hostPort (container \"c\" uses hostPort 8080)",
                "seccompProfile (container \"c\" must not set securityContext.seccompProfile.type to \"Unconfined\")",
            ]
        );
        assert!(violations(Level::Privileged, &s).is_empty());
        let plain = spec(serde_json::json!({"containers": [{"name": "c"}]}));
        assert!(violations(Level::Baseline, &plain).is_empty());
    }

    #[test]
    fn restricted_wants_the_hardened_settings() {
        let plain = spec(serde_json::json!({"containers": [{"name": "c"}, {"name": "d"}]}));
        assert_eq!(
            violations(Level::Restricted, &plain),
            [
                "allowPrivilegeEscalation != false (containers \"c\", \"d\" must set securityContext.allowPrivilegeEscalation=false)",
                "unrestricted capabilities (containers \"c\", \"d\" must set securityContext.capabilities.drop=[\"ALL\"])",
                "runAsNonRoot != true (pod or containers \"c\", \"d\" must set securityContext.runAsNonRoot=true)",
                "seccompProfile (pod or containers \"c\", \"d\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")",
            ]
        );
        let good = spec(serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "cfg", "configMap": {"name": "x"}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]
        }));
        assert!(
            violations(Level::Restricted, &good).is_empty(),
            "{:?}",
            violations(Level::Restricted, &good)
        );
        let root = spec(serde_json::json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
            "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"], "add": ["SYS_TIME"]}}}]
        }));
        let v = violations(Level::Restricted, &root);
        assert!(
            v.contains(
                &"restricted volume types (volume \"h\" uses restricted volume type \"hostPath\")"
                    .to_string()
            ),
            "{v:?}"
        );
        assert!(
            v.contains(&"runAsUser=0 (pod must not set runAsUser=0)".to_string()),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m.starts_with(
                "unrestricted capabilities (container \"c\" must not include \"SYS_TIME\""
            )),
            "{v:?}"
        );
        assert!(
            v.iter().any(|m| m.starts_with("non-default capabilities")),
            "baseline applies too: {v:?}"
        );
    }

    #[test]
    fn labels_parse_and_fail_closed() {
        let mut l = BTreeMap::new();
        assert_eq!(level(&l, "enforce"), None);
        l.insert(format!("{PREFIX}enforce"), "baseline".to_string());
        assert_eq!(
            level(&l, "enforce"),
            Some((Level::Baseline, "latest".into()))
        );
        l.insert(format!("{PREFIX}warn"), "strict".to_string());
        l.insert(format!("{PREFIX}warn-version"), "v1.29".to_string());
        assert_eq!(level(&l, "warn"), Some((Level::Restricted, "v1.29".into())));
        let mut out = Vec::new();
        check_labels(&mut out, Some(&l));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].field, format!("metadata.labels[{PREFIX}warn]"));
        l.insert(format!("{PREFIX}enforce-version"), "1.29".to_string());
        let mut out = Vec::new();
        check_labels(&mut out, Some(&l));
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
