//! Roles, ClusterRoles and their bindings (rbac.authorization.k8s.io/v1),
//! validated as kube-apiserver's `pkg/apis/rbac/validation` does. Who may
//! write them (the escalation check) is `crate::rbac`'s and the API
//! handler's; what they grant, `crate::rbac::Authorizer`'s.

use async_trait::async_trait;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use weft_api::error::Cause;

use super::kind::{Kind, NameRule, kind_fields, path_segment_error};

pub const GROUP: &str = "rbac.authorization.k8s.io";

fn check_rules(out: &mut Vec<Cause>, rules: Option<&Vec<PolicyRule>>, namespaced: bool) {
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        if r.verbs.is_empty() {
            out.push(Cause::required(format!("{at}.verbs")));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let groups = r.api_groups.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                out.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    format!("{urls:?}"),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !groups.is_empty() || !resources.is_empty() {
                out.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    format!("{urls:?}"),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            for (j, u) in urls.iter().enumerate() {
                // kube accepts "*" and paths; a path starts with "/".
                if u != "*" && !u.starts_with('/') {
                    out.push(Cause::invalid(
                        format!("{at}.nonResourceURLs[{j}]"),
                        u,
                        "must be \"*\" or a path starting with \"/\"",
                    ));
                }
            }
            continue;
        }
        if groups.is_empty() {
            out.push(Cause::required(format!("{at}.apiGroups")));
        }
        if resources.is_empty() {
            out.push(Cause::required(format!("{at}.resources")));
        }
    }
}

fn check_role_ref(out: &mut Vec<Cause>, r: &RoleRef, namespaced: bool) {
    if r.api_group != GROUP {
        out.push(Cause::not_supported(
            "roleRef.apiGroup",
            &r.api_group,
            &[GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&r.kind.as_str()) {
        out.push(Cause::not_supported("roleRef.kind", &r.kind, kinds));
    }
    if r.name.is_empty() {
        out.push(Cause::required("roleRef.name"));
    } else if let Some(e) = path_segment_error(&r.name) {
        out.push(Cause::invalid("roleRef.name", &r.name, e));
    }
}

fn check_subjects(out: &mut Vec<Cause>, subjects: Option<&Vec<Subject>>, namespaced: bool) {
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let at = format!("subjects[{i}]");
        if s.name.is_empty() {
            out.push(Cause::required(format!("{at}.name")));
        }
        let group = s.api_group.as_deref().unwrap_or_default();
        match s.kind.as_str() {
            "ServiceAccount" => {
                if !group.is_empty() {
                    out.push(Cause::not_supported(format!("{at}.apiGroup"), group, &[""]));
                }
                if let Some(e) =
                    weft_api::meta::dns_subdomain_error(&s.name).filter(|_| !s.name.is_empty())
                {
                    out.push(Cause::invalid(format!("{at}.name"), &s.name, e));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                    out.push(Cause::required(format!("{at}.namespace")));
                }
            }
            "User" | "Group" => {
                if group != GROUP {
                    out.push(Cause::not_supported(
                        format!("{at}.apiGroup"),
                        group,
                        &[GROUP],
                    ));
                }
            }
            other => out.push(Cause::not_supported(
                format!("{at}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

#[async_trait]
impl Kind for Role {
    kind_fields!();
    const NAME: NameRule = NameRule::PathSegment;

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_rules(&mut out, self.rules.as_ref(), true);
        out
    }
}

#[async_trait]
impl Kind for ClusterRole {
    kind_fields!();
    const NAME: NameRule = NameRule::PathSegment;

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_rules(&mut out, self.rules.as_ref(), false);
        if let Some(agg) = &self.aggregation_rule {
            let selectors = agg.cluster_role_selectors.as_deref().unwrap_or_default();
            if selectors.is_empty() {
                out.push(Cause::required("aggregationRule.clusterRoleSelectors"));
            }
            for (i, sel) in selectors.iter().enumerate() {
                super::validation::check_selector(
                    &mut out,
                    &format!("aggregationRule.clusterRoleSelectors[{i}]"),
                    Some(sel),
                );
            }
        }
        out
    }
}

fn role_ref_unchanged(new: &RoleRef, old: &RoleRef) -> Vec<Cause> {
    if new == old {
        Vec::new()
    } else {
        vec![Cause::invalid(
            "roleRef",
            format!("{}/{}", new.kind, new.name),
            "cannot change roleRef",
        )]
    }
}

#[async_trait]
impl Kind for RoleBinding {
    kind_fields!();
    const NAME: NameRule = NameRule::PathSegment;

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_role_ref(&mut out, &self.role_ref, true);
        check_subjects(&mut out, self.subjects.as_ref(), true);
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        role_ref_unchanged(&self.role_ref, &old.role_ref)
    }
}

#[async_trait]
impl Kind for ClusterRoleBinding {
    kind_fields!();
    const NAME: NameRule = NameRule::PathSegment;

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        check_role_ref(&mut out, &self.role_ref, false);
        check_subjects(&mut out, self.subjects.as_ref(), false);
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        role_ref_unchanged(&self.role_ref, &old.role_ref)
    }
}
