//! What one PolicyRule allows, and whether one set of rules covers
//! another, with kube's semantics (`plugin/pkg/auth/authorizer/rbac` and
//! `pkg/registry/rbac/validation`).

use k8s_openapi::api::rbac::v1::PolicyRule;

/// One request, as RBAC sees it: a resource request (`path` None) or a
/// request for a path outside the resource tree (`/version`, `/apis`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    /// The path of a non-resource request.
    pub path: Option<&'a str>,
}

fn list(v: &Option<Vec<String>>) -> &[String] {
    v.as_deref().unwrap_or_default()
}

fn has_or_star(items: &[String], want: &str) -> bool {
    items.iter().any(|i| i == "*" || i == want)
}

fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// Whether `rule` allows `req`.
pub fn allows(rule: &PolicyRule, req: &Request<'_>) -> bool {
    if !has_or_star(&rule.verbs, req.verb) {
        return false;
    }
    if let Some(path) = req.path {
        return list(&rule.non_resource_urls)
            .iter()
            .any(|u| url_matches(u, path));
    }
    if !has_or_star(list(&rule.api_groups), req.group) {
        return false;
    }
    let combined = match req.subresource {
        Some(sub) => format!("{}/{sub}", req.resource),
        None => req.resource.to_string(),
    };
    let resource_ok = list(&rule.resources).iter().any(|r| {
        r == "*"
            || *r == combined
            || req
                .subresource
                .is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    });
    if !resource_ok {
        return false;
    }
    let names = list(&rule.resource_names);
    names.is_empty() || req.name.is_some_and(|n| names.iter().any(|x| x == n))
}

/// Whether any of `rules` allows `req`.
pub fn any_allows(rules: &[PolicyRule], req: &Request<'_>) -> bool {
    rules.iter().any(|r| allows(r, req))
}

/// `rule` broken into rules of one verb, group, resource and name (or one
/// verb and URL), as kube's escalation check compares them.
fn atoms(rule: &PolicyRule) -> Vec<PolicyRule> {
    let one = |s: &String| Some(vec![s.clone()]);
    let mut out = Vec::new();
    for verb in &rule.verbs {
        for url in list(&rule.non_resource_urls) {
            out.push(PolicyRule {
                verbs: vec![verb.clone()],
                non_resource_urls: one(url),
                ..Default::default()
            });
        }
        for group in list(&rule.api_groups) {
            for resource in list(&rule.resources) {
                let base = PolicyRule {
                    verbs: vec![verb.clone()],
                    api_groups: one(group),
                    resources: one(resource),
                    ..Default::default()
                };
                let names = list(&rule.resource_names);
                if names.is_empty() {
                    out.push(base);
                } else {
                    for n in names {
                        out.push(PolicyRule {
                            resource_names: one(n),
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    out
}

/// Whether `owner` covers the single-valued rule `atom`.
fn covers_atom(owner: &PolicyRule, atom: &PolicyRule) -> bool {
    let verb = &atom.verbs[0];
    if !owner.verbs.iter().any(|v| v == "*" || v == verb) {
        return false;
    }
    if let Some(url) = list(&atom.non_resource_urls).first() {
        return list(&owner.non_resource_urls).iter().any(|o| {
            o == "*"
                || o == url
                || o.strip_suffix('*')
                    .is_some_and(|prefix| url.starts_with(prefix))
        });
    }
    let group = &list(&atom.api_groups)[0];
    if !has_or_star(list(&owner.api_groups), group) {
        return false;
    }
    let resource = &list(&atom.resources)[0];
    let resource_ok = list(&owner.resources).iter().any(|o| {
        o == "*"
            || o == resource
            || resource
                .split_once('/')
                .is_some_and(|(_, sub)| o.strip_prefix("*/") == Some(sub))
    });
    if !resource_ok {
        return false;
    }
    let owner_names = list(&owner.resource_names);
    if owner_names.is_empty() {
        return true;
    }
    list(&atom.resource_names)
        .first()
        .is_some_and(|n| owner_names.contains(n))
}

/// What of `servant` the rules of `owner` do not cover, broken into
/// single-valued rules; empty when `owner` covers it all (kube's
/// `validation.Covers`, the heart of its escalation check).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(atoms)
        .filter(|atom| !owner.iter().any(|o| covers_atom(o, atom)))
        .collect()
}

/// A rule as kube prints it in escalation errors:
/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["create"]}`.
pub fn describe(rule: &PolicyRule) -> String {
    let quoted = |l: &[String]| {
        l.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut parts = Vec::new();
    if !list(&rule.api_groups).is_empty() {
        parts.push(format!("APIGroups:[{}]", quoted(list(&rule.api_groups))));
    }
    if !list(&rule.resources).is_empty() {
        parts.push(format!("Resources:[{}]", quoted(list(&rule.resources))));
    }
    if !list(&rule.resource_names).is_empty() {
        parts.push(format!(
            "ResourceNames:[{}]",
            quoted(list(&rule.resource_names))
        ));
    }
    if !list(&rule.non_resource_urls).is_empty() {
        parts.push(format!(
            "NonResourceURLs:[{}]",
            quoted(list(&rule.non_resource_urls))
        ));
    }
    parts.push(format!("Verbs:[{}]", quoted(&rule.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            api_groups: v(groups),
            resources: v(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn req<'a>(verb: &'a str, group: &'a str, resource: &'a str) -> Request<'a> {
        Request {
            verb,
            group,
            resource,
            ..Default::default()
        }
    }

    #[test]
    fn rules_match_as_kube_matches_them() {
        let r = rule(
            &["apps"],
            &["deployments", "deployments/scale"],
            &["get", "update"],
        );
        assert!(allows(&r, &req("get", "apps", "deployments")));
        assert!(!allows(&r, &req("delete", "apps", "deployments")));
        assert!(!allows(&r, &req("get", "", "deployments")), "group");
        assert!(!allows(&r, &req("get", "apps", "replicasets")));
        let scale = Request {
            subresource: Some("scale"),
            ..req("update", "apps", "deployments")
        };
        assert!(allows(&r, &scale));
        let status = Request {
            subresource: Some("status"),
            ..req("update", "apps", "deployments")
        };
        assert!(!allows(&r, &status), "a subresource is named on its own");
        let any_status = rule(&["*"], &["*/status"], &["*"]);
        assert!(allows(&any_status, &status));
        assert!(!allows(&any_status, &req("update", "apps", "deployments")));
        // Names: a rule with names matches only requests naming one.
        let mut named = rule(&[""], &["configmaps"], &["get"]);
        named.resource_names = Some(vec!["app".into()]);
        let mut get = req("get", "", "configmaps");
        assert!(!allows(&named, &get), "no name");
        get.name = Some("app");
        assert!(allows(&named, &get));
        get.name = Some("other");
        assert!(!allows(&named, &get));
        // URLs.
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/apis/*".into(), "/version".into()]),
            ..Default::default()
        };
        let path = |p| Request {
            verb: "get",
            path: Some(p),
            ..Default::default()
        };
        assert!(allows(&urls, &path("/apis/apps/v1")));
        assert!(allows(&urls, &path("/version")));
        assert!(!allows(&urls, &path("/version/x")));
        assert!(!allows(&urls, &path("/metrics")));
        assert!(
            !allows(&r, &path("/apis")),
            "a resource rule allows no path"
        );
    }

    #[test]
    fn covering_is_checked_per_verb_resource_and_name() {
        let owner = vec![
            rule(&["", "apps"], &["pods", "deployments"], &["get", "list"]),
            rule(&["*"], &["*/scale"], &["update"]),
        ];
        assert!(uncovered(&owner, &[rule(&["apps"], &["deployments"], &["get"])]).is_empty());
        assert!(
            uncovered(
                &owner,
                &[rule(&["apps"], &["deployments/scale"], &["update"])]
            )
            .is_empty()
        );
        let left = uncovered(
            &owner,
            &[rule(&["", "apps"], &["pods"], &["get", "delete"])],
        );
        assert_eq!(left.len(), 2, "delete of pods in two groups: {left:?}");
        assert_eq!(
            describe(&left[0]),
            r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#
        );
        // A star is only covered by a star.
        assert_eq!(
            uncovered(&owner, &[rule(&["apps"], &["*"], &["get"])]).len(),
            1
        );
        // Names: an owner limited to names covers only those.
        let mut limited = rule(&[""], &["secrets"], &["get"]);
        limited.resource_names = Some(vec!["a".into()]);
        let mut want = limited.clone();
        assert!(uncovered(std::slice::from_ref(&limited), &[want.clone()]).is_empty());
        want.resource_names = Some(vec!["a".into(), "b".into()]);
        assert_eq!(uncovered(std::slice::from_ref(&limited), &[want]).len(), 1);
        assert_eq!(
            uncovered(&[limited], &[rule(&[""], &["secrets"], &["get"])]).len(),
            1,
            "all names are more than one"
        );
        // The cluster-admin rules cover everything.
        let all = vec![
            rule(&["*"], &["*"], &["*"]),
            PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: Some(vec!["*".into()]),
                ..Default::default()
            },
        ];
        assert!(uncovered(&all, &owner).is_empty());
        assert!(uncovered(&all, &all).is_empty());
        assert_eq!(uncovered(&owner, &all).len(), 2);
    }
}
