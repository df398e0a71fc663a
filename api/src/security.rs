//! A pod's security settings: what Weft can honour and the rules
//! kube-apiserver applies to them, in one place for the API server (which
//! refuses what cannot be honoured) and the agent (which applies the rest).

use k8s_openapi::api::core::v1::{
    AppArmorProfile, PodSpec, SELinuxOptions, SeccompProfile, SecurityContext,
};

use crate::error::Cause;

/// Every capability the kernel knows (Linux 6.x), as Kubernetes names
/// them, in the kernel's bit order (`CAP_CHOWN` is bit 0).
pub const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability name as Kubernetes writes it (`NET_ADMIN`), or with the
/// kernel's `CAP_` prefix, or `ALL`: its canonical form, if known.
#[must_use]
pub fn capability_name(name: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    (bare == "ALL" || ALL_CAPABILITIES.contains(&bare)).then(|| bare.to_string())
}

/// The sysctls a pod may set: Kubernetes' safe set, each namespaced to
/// the pod (its IPC or network namespace) and unable to hurt its node.
/// Weft has no flag for unsafe ones: they are refused.
pub const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// The seccomp profile types Kubernetes defines.
pub const SECCOMP_TYPES: [&str; 3] = ["RuntimeDefault", "Unconfined", "Localhost"];

const MAX_ID: i64 = 2_147_483_647;

fn check_id(out: &mut Vec<Cause>, field: String, v: Option<i64>) {
    if let Some(v) = v
        && !(0..=MAX_ID).contains(&v)
    {
        out.push(Cause::invalid(
            field,
            v,
            "must be between 0 and 2147483647, inclusive",
        ));
    }
}

fn check_seccomp(out: &mut Vec<Cause>, path: &str, p: Option<&SeccompProfile>) {
    let Some(p) = p else { return };
    let field = format!("{path}.seccompProfile");
    if !SECCOMP_TYPES.contains(&p.type_.as_str()) {
        out.push(Cause::not_supported(
            format!("{field}.type"),
            &p.type_,
            &SECCOMP_TYPES,
        ));
    }
    match (p.type_.as_str(), p.localhost_profile.as_deref()) {
        ("Localhost", None | Some("")) => out.push(Cause::required(format!(
            "{field}.localhostProfile: must be set when seccomp type is Localhost"
        ))),
        ("Localhost", Some(rel)) => {
            let bad = rel.starts_with('/') || rel.split('/').any(|c| c == "..");
            if bad {
                out.push(Cause::invalid(
                    format!("{field}.localhostProfile"),
                    rel,
                    "must be a relative path without '..'",
                ));
            }
        }
        (_, Some(_)) => out.push(Cause::invalid(
            format!("{field}.localhostProfile"),
            "set",
            "can only be set when seccomp type is Localhost",
        )),
        _ => {}
    }
}

/// What Weft cannot enforce on its nodes, refused rather than ignored.
fn check_unenforceable(
    out: &mut Vec<Cause>,
    path: &str,
    se_linux: Option<&SELinuxOptions>,
    app_armor: Option<&AppArmorProfile>,
) {
    if se_linux.is_some() {
        out.push(Cause::forbidden(
            format!("{path}.seLinuxOptions"),
            "Weft's nodes do not run SELinux and cannot apply these labels",
        ));
    }
    if let Some(a) = app_armor
        && a.type_ != "Unconfined"
    {
        out.push(Cause::forbidden(
            format!("{path}.appArmorProfile.type"),
            format!(
                "Weft's nodes do not enforce AppArmor; only Unconfined can be honoured, not {:?}",
                a.type_
            ),
        ));
    }
}

fn check_container(out: &mut Vec<Cause>, path: &str, sc: &SecurityContext) {
    check_id(out, format!("{path}.runAsUser"), sc.run_as_user);
    check_id(out, format!("{path}.runAsGroup"), sc.run_as_group);
    check_seccomp(out, path, sc.seccomp_profile.as_ref());
    check_unenforceable(
        out,
        path,
        sc.se_linux_options.as_ref(),
        sc.app_armor_profile.as_ref(),
    );
    let no_escalation = sc.allow_privilege_escalation == Some(false);
    if no_escalation && sc.privileged == Some(true) {
        out.push(Cause::invalid(
            path.to_string(),
            "privileged",
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        ));
    }
    let caps = sc.capabilities.as_ref();
    for (list, names) in [
        ("add", caps.and_then(|c| c.add.as_deref())),
        ("drop", caps.and_then(|c| c.drop.as_deref())),
    ] {
        for (i, n) in names.unwrap_or_default().iter().enumerate() {
            match capability_name(n) {
                None => out.push(Cause::invalid(
                    format!("{path}.capabilities.{list}[{i}]"),
                    n,
                    "not a Linux capability (such as NET_ADMIN, or ALL)",
                )),
                Some(c) if list == "add" && no_escalation && c == "SYS_ADMIN" => {
                    out.push(Cause::invalid(
                        path.to_string(),
                        "CAP_SYS_ADMIN",
                        "cannot set `allowPrivilegeEscalation` to false and `capabilities.Add` CAP_SYS_ADMIN",
                    ));
                }
                Some(_) => {}
            }
        }
    }
    if let Some(m) = sc.proc_mount.as_deref() {
        match m {
            "Default" => {}
            "Unmasked" => out.push(Cause::forbidden(
                format!("{path}.procMount"),
                "`hostUsers` must be false to use `Unmasked`, and Weft does not run pods in user namespaces",
            )),
            other => out.push(Cause::not_supported(
                format!("{path}.procMount"),
                other,
                &["Default", "Unmasked"],
            )),
        }
    }
}

/// The security settings of a pod spec at `path`: Kubernetes' rules, and
/// a refusal for each setting Weft cannot honour (SELinux labels, AppArmor
/// profiles, user namespaces, unsafe sysctls).
pub fn check_pod_spec(out: &mut Vec<Cause>, spec: &PodSpec, path: &str) {
    if spec.host_users == Some(false) {
        out.push(Cause::forbidden(
            format!("{path}.hostUsers"),
            "Weft does not run pods in user namespaces",
        ));
    }
    if let Some(sc) = &spec.security_context {
        let sp = format!("{path}.securityContext");
        check_id(out, format!("{sp}.runAsUser"), sc.run_as_user);
        check_id(out, format!("{sp}.runAsGroup"), sc.run_as_group);
        check_id(out, format!("{sp}.fsGroup"), sc.fs_group);
        for (i, g) in sc.supplemental_groups.iter().flatten().enumerate() {
            check_id(out, format!("{sp}.supplementalGroups[{i}]"), Some(*g));
        }
        if let Some(p) = sc.fs_group_change_policy.as_deref()
            && !["OnRootMismatch", "Always"].contains(&p)
        {
            out.push(Cause::not_supported(
                format!("{sp}.fsGroupChangePolicy"),
                p,
                &["OnRootMismatch", "Always"],
            ));
        }
        if let Some(p) = sc.supplemental_groups_policy.as_deref()
            && !["Merge", "Strict"].contains(&p)
        {
            out.push(Cause::not_supported(
                format!("{sp}.supplementalGroupsPolicy"),
                p,
                &["Merge", "Strict"],
            ));
        }
        check_seccomp(out, &sp, sc.seccomp_profile.as_ref());
        check_unenforceable(
            out,
            &sp,
            sc.se_linux_options.as_ref(),
            sc.app_armor_profile.as_ref(),
        );
        let mut seen = std::collections::HashSet::new();
        for (i, s) in sc.sysctls.iter().flatten().enumerate() {
            let field = format!("{sp}.sysctls[{i}].name");
            let name = s.name.replace('/', ".");
            if !seen.insert(name.clone()) {
                out.push(Cause::duplicate(field, &s.name));
            } else if !SAFE_SYSCTLS.contains(&name.as_str()) {
                out.push(Cause::forbidden(
                    field,
                    format!(
                        "{} is not in the safe set Weft allows ({})",
                        s.name,
                        SAFE_SYSCTLS.join(", ")
                    ),
                ));
            } else if spec.host_ipc == Some(true) && name.starts_with("kernel.shm") {
                out.push(Cause::forbidden(
                    field,
                    format!(
                        "{}: an IPC sysctl cannot be set on the node's IPC namespace (hostIPC)",
                        s.name
                    ),
                ));
            } else if spec.host_network == Some(true) && name.starts_with("net.") {
                out.push(Cause::forbidden(
                    field,
                    format!(
                        "{}: a network sysctl cannot be set on the node's network",
                        s.name
                    ),
                ));
            }
        }
    }
    for (at, c) in crate::pod::containers_with_paths(spec) {
        if let Some(sc) = &c.security_context {
            check_container(out, &format!("{path}.{at}.securityContext"), sc);
        }
    }
}

/// The AppArmor annotations of a pod's metadata
/// (`container.apparmor.security.beta.kubernetes.io/<container>`), which
/// Weft cannot enforce beyond `unconfined`.
pub fn check_annotations(
    out: &mut Vec<Cause>,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
    path: &str,
) {
    const PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";
    for (k, v) in annotations.into_iter().flatten() {
        if k.starts_with(PREFIX) && v != "unconfined" {
            out.push(Cause::forbidden(
                format!("{path}.annotations[{k}]"),
                format!("Weft's nodes do not enforce AppArmor; only \"unconfined\" can be honoured, not {v:?}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn causes(spec: serde_json::Value) -> Vec<String> {
        let spec: PodSpec = serde_json::from_value(spec).unwrap();
        let mut out = Vec::new();
        check_pod_spec(&mut out, &spec, "spec");
        out.iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn what_weft_honours_passes() {
        let ok = causes(serde_json::json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true,
                "fsGroup": 2000, "supplementalGroups": [3000], "seccompProfile": {"type": "RuntimeDefault"},
                "sysctls": [{"name": "net.ipv4.tcp_syncookies", "value": "1"}]},
            "containers": [{"name": "c", "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE", "CAP_CHOWN"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/a.json"},
                "procMount": "Default"}}],
            "hostPID": true, "hostIPC": true
        }));
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn what_weft_cannot_honour_is_refused_by_name() {
        let got = causes(serde_json::json!({
            "hostUsers": false,
            "securityContext": {"runAsUser": -1, "seLinuxOptions": {"level": "s0"},
                "sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "kernel.msgmax", "value": "2"}],
                "seccompProfile": {"type": "Localhost"}},
            "containers": [{"name": "c", "securityContext": {
                "privileged": true, "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_SPOOF"]}, "procMount": "Unmasked",
                "appArmorProfile": {"type": "RuntimeDefault"},
                "seccompProfile": {"type": "Unconfined", "localhostProfile": "x"}}}]
        }));
        for want in [
            "spec.hostUsers: Forbidden",
            "spec.securityContext.runAsUser: Invalid value: -1",
            "spec.securityContext.seLinuxOptions: Forbidden",
            "spec.securityContext.sysctls[0].name: Forbidden: kernel.msgmax is not in the safe set",
            "spec.securityContext.sysctls[1].name: Duplicate value",
            "spec.securityContext.seccompProfile.localhostProfile: must be set",
            "spec.containers[0].securityContext: Invalid value: privileged",
            "spec.containers[0].securityContext.capabilities.add[0]: Invalid value: NET_SPOOF",
            "spec.containers[0].securityContext.procMount: Forbidden",
            "spec.containers[0].securityContext.appArmorProfile.type: Forbidden",
            "spec.containers[0].securityContext.seccompProfile.localhostProfile: Invalid value",
        ] {
            assert!(
                got.iter().any(|g| g.starts_with(want) || g.contains(want)),
                "{want} not in {got:#?}"
            );
        }
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability_name("cap_net_raw").as_deref(), Some("NET_RAW"));
        assert_eq!(capability_name("ALL").as_deref(), Some("ALL"));
        assert_eq!(capability_name("NET_SPOOF"), None);
    }
}
