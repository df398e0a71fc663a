//! The review APIs: questions put to the authorizer and the authenticator,
//! answered and never stored, as kube-apiserver serves them.
//!
//! - authorization.k8s.io/v1 SelfSubjectAccessReview (`kubectl auth
//!   can-i`), SelfSubjectRulesReview (`can-i --list`), SubjectAccessReview
//!   and LocalSubjectAccessReview (about another user);
//! - authentication.k8s.io/v1 (and v1beta1) SelfSubjectReview (`kubectl
//!   auth whoami`), and v1 TokenReview (is this token valid, and whose?).

use axum::http::{HeaderMap, Method};
use axum::response::Response;
use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::error::Cause;

use super::auth::{self, Attributes, Decision, User};
use super::{ApiState, authorized, json_response, parse_body};

/// A review resource: (group, versions, plural, kind, namespaced).
const REVIEWS: &[(&str, &[&str], &str, &str, bool)] = &[
    (
        "authorization.k8s.io",
        &["v1"],
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        &["v1"],
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        "authorization.k8s.io",
        &["v1"],
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        &["v1"],
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        "authentication.k8s.io",
        &["v1", "v1beta1"],
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
    (
        "authentication.k8s.io",
        &["v1"],
        "tokenreviews",
        "TokenReview",
        false,
    ),
];

/// The review resources of `group`/`version`, for discovery: (plural,
/// kind, namespaced).
pub fn served(group: &str, version: &str) -> Vec<(&'static str, &'static str, bool)> {
    REVIEWS
        .iter()
        .filter(|(g, vs, ..)| *g == group && vs.contains(&version))
        .map(|(_, _, p, k, n)| (*p, *k, *n))
        .collect()
}

/// The groups and versions that serve reviews only (not stored kinds).
pub fn groups() -> Vec<(&'static str, &'static [&'static str])> {
    let mut out: Vec<(&str, &[&str])> = Vec::new();
    for (g, vs, ..) in REVIEWS {
        if !out.iter().any(|(o, _)| o == g) {
            out.push((g, vs));
        }
    }
    out
}

/// Serves `segs` when it is a review; None otherwise.
pub async fn serve(
    st: &ApiState,
    user: &User,
    method: &Method,
    segs: &[&str],
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<Option<Response>, ApiError> {
    let (group, version, ns, plural) = match segs {
        ["apis", g, v, p] => (*g, *v, None, *p),
        ["apis", g, v, "namespaces", ns, p] => (*g, *v, Some(*ns), *p),
        _ => return Ok(None),
    };
    let Some((_, _, _, kind, namespaced)) = REVIEWS
        .iter()
        .find(|(g, vs, p, ..)| *g == group && vs.contains(&version) && *p == plural)
    else {
        return Ok(None);
    };
    if *namespaced != ns.is_some() {
        return Err(ApiError::no_route(&format!("/{}", segs.join("/"))));
    }
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {plural}: reviews are only created"
        )));
    }
    authorized(
        st,
        user,
        &Attributes {
            verb: "create",
            group,
            resource: plural,
            namespace: ns,
            ..Default::default()
        },
    )
    .await?;
    let mut body = parse_body(headers, bytes)?;
    if !body.is_object() {
        return Err(ApiError::bad_request(format!("a {kind} must be an object")));
    }
    let api_version = format!("{group}/{version}");
    body["apiVersion"] = json!(api_version);
    body["kind"] = json!(kind);
    let spec = body["spec"].clone();
    let status = match plural {
        "selfsubjectaccessreviews" => access(st, user, &spec, None, kind).await?,
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let subject = User {
                name: spec["user"].as_str().unwrap_or_default().to_string(),
                uid: spec["uid"].as_str().unwrap_or_default().to_string(),
                groups: strings(&spec["groups"]),
            };
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    group,
                    "",
                    vec![Cause::invalid(
                        "spec.user",
                        "",
                        "at least one of user or group must be specified",
                    )],
                ));
            }
            access(st, &subject, &spec, ns, kind).await?
        }
        "selfsubjectrulesreviews" => rules(st, user, &spec),
        "tokenreviews" => token_review(st, &spec).await,
        _ => json!({"userInfo": {
            "username": user.name,
            "uid": user.uid,
            "groups": user.groups,
        }}),
    };
    body["status"] = status;
    body["metadata"]["creationTimestamp"] = Value::Null;
    Ok(Some(json_response(201, &body)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

/// An access review's status: whether `who` may do what `spec` asks (in
/// `url_ns` for a LocalSubjectAccessReview, whose spec may not name another).
async fn access(
    st: &ApiState,
    who: &User,
    spec: &Value,
    url_ns: Option<&str>,
    kind: &str,
) -> Result<Value, ApiError> {
    let res = &spec["resourceAttributes"];
    let non = &spec["nonResourceAttributes"];
    let invalid = |field: &str, why: &str| {
        ApiError::invalid(
            kind,
            "authorization.k8s.io",
            "",
            vec![Cause::invalid(field, "", why)],
        )
    };
    if res.is_object() == non.is_object() {
        return Err(invalid(
            "spec.resourceAttributes",
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        ));
    }
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let (verb, group, resource, sub, name, path) = (
        s(if res.is_object() {
            &res["verb"]
        } else {
            &non["verb"]
        }),
        s(&res["group"]),
        s(&res["resource"]),
        s(&res["subresource"]),
        s(&res["name"]),
        s(&non["path"]),
    );
    let mut ns = s(&res["namespace"]);
    if let Some(url_ns) = url_ns {
        if !ns.is_empty() && ns != url_ns {
            return Err(invalid(
                "spec.resourceAttributes.namespace",
                "must match metadata.namespace",
            ));
        }
        ns = url_ns.to_string();
    }
    let a = Attributes {
        verb: &verb,
        group: &group,
        resource: &resource,
        subresource: (!sub.is_empty()).then_some(sub.as_str()),
        namespace: (!ns.is_empty()).then_some(ns.as_str()),
        name: (!name.is_empty()).then_some(name.as_str()),
        path: non.is_object().then_some(path.as_str()),
    };
    let allowed = match auth::authorize(who, &a) {
        Decision::Allow => true,
        // Allowed only for some objects: not a yes to the question.
        Decision::IfPodOnNode(_) | Decision::IfReferencedOnNode(_) => false,
        Decision::Deny(_) => {
            st.rbac
                .allows_fresh(who, &a, st.registry.store.as_ref())
                .await
        }
    };
    Ok(if allowed {
        json!({"allowed": true, "reason": "allowed by RBAC"})
    } else {
        json!({"allowed": false})
    })
}

/// A token review's status: who `spec.token` speaks for, if it is valid
/// for one of `spec.audiences` (the API's when none is given).
async fn token_review(st: &ApiState, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let asked = strings(&spec["audiences"]);
    let audiences: Vec<&str> = if asked.is_empty() {
        vec![super::satoken::ISSUER]
    } else {
        asked.iter().map(String::as_str).collect()
    };
    let user_info = |u: &User, extra: Value| json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": extra});
    if let Some(u) = st.tokens.find(token).filter(|_| !token.is_empty()) {
        // A static token is for the API itself.
        if audiences.contains(&super::satoken::ISSUER) {
            return json!({"authenticated": true, "user": user_info(&u, json!({})),
                "audiences": [super::satoken::ISSUER]});
        }
        return json!({"authenticated": false, "error": "token audiences is invalid for the target audiences"});
    }
    match super::service_account_user(st, token, &audiences).await {
        Ok((u, claims)) => {
            let mut extra = json!({});
            if let Some(pod) = &claims.kube.pod {
                extra["authentication.kubernetes.io/pod-name"] = json!([pod.name]);
                extra["authentication.kubernetes.io/pod-uid"] = json!([pod.uid]);
            }
            extra["authentication.kubernetes.io/credential-id"] =
                json!([format!("JTI={}", claims.jti)]);
            let matched: Vec<&str> = audiences
                .iter()
                .copied()
                .filter(|a| claims.aud.iter().any(|x| x == a))
                .collect();
            json!({"authenticated": true, "user": user_info(&u, extra), "audiences": matched})
        }
        Err(why) => json!({"authenticated": false, "error": why}),
    }
}

/// A rules review's status: what the user may do in `spec.namespace`.
fn rules(st: &ApiState, user: &User, spec: &Value) -> Value {
    let ns = spec["namespace"].as_str().filter(|n| !n.is_empty());
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in st.rbac.rules_for(user, ns) {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        } else {
            let mut rule = json!({
                "verbs": r.verbs,
                "apiGroups": r.api_groups.unwrap_or_default(),
                "resources": r.resources.unwrap_or_default(),
            });
            if let Some(names) = r.resource_names.filter(|n| !n.is_empty()) {
                rule["resourceNames"] = json!(names);
            }
            resource_rules.push(rule);
        }
    }
    json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": false,
    })
}
