//! Role-based access control (rbac.authorization.k8s.io/v1): who may do
//! what, from the Roles, ClusterRoles and their bindings in the
//! controllers' cache, as kube-apiserver's RBAC authorizer decides.
//!
//! The bindings are indexed by subject (a user, a group; a service account
//! is its user `system:serviceaccount:NS:NAME`), each with the rules of the
//! role it binds, and the index is rebuilt when one of the four kinds
//! changes: a request looks up only its user's and groups' entries, however
//! many roles and bindings there are. [`defaults`] are the roles every
//! cluster starts with; [`rules`] what one rule allows and the escalation
//! check's covering.

pub mod defaults;
pub mod rules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};

pub use rules::Request;

use crate::cache::Cache;
use crate::identity::User;

/// Subject key to the rule sets bound to it (each a role's rules, shared).
type BySubject = HashMap<String, Vec<Arc<Vec<PolicyRule>>>>;

/// Rules granted to subjects: cluster-wide (ClusterRoleBindings) and per
/// namespace (RoleBindings).
#[derive(Default)]
struct Index {
    /// What is bound everywhere.
    cluster: BySubject,
    /// Namespace to what is bound there.
    namespaced: HashMap<String, BySubject>,
}

fn user_key(name: &str) -> String {
    format!("u:{name}")
}

fn group_key(name: &str) -> String {
    format!("g:{name}")
}

/// The index key of a binding's subject; None for a kind RBAC does not
/// know (validation refuses those).
fn subject_key(
    s: &k8s_openapi::api::rbac::v1::Subject,
    binding_ns: Option<&str>,
) -> Option<String> {
    match s.kind.as_str() {
        "User" => Some(user_key(&s.name)),
        "Group" => Some(group_key(&s.name)),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)?;
            Some(user_key(&format!("system:serviceaccount:{ns}:{}", s.name)))
        }
        _ => None,
    }
}

impl Index {
    fn build(cache: &Cache) -> Self {
        let cluster_roles: HashMap<String, Arc<Vec<PolicyRule>>> = cache
            .store::<ClusterRole>()
            .list(None)
            .into_iter()
            .map(|r| {
                (
                    r.metadata.name.clone().unwrap_or_default(),
                    Arc::new(r.rules.clone().unwrap_or_default()),
                )
            })
            .collect();
        let roles: HashMap<String, Arc<Vec<PolicyRule>>> = cache
            .store::<Role>()
            .list(None)
            .into_iter()
            .map(|r| {
                (
                    weft_api::meta::key(
                        r.metadata.namespace.as_deref(),
                        r.metadata.name.as_deref().unwrap_or_default(),
                    ),
                    Arc::new(r.rules.clone().unwrap_or_default()),
                )
            })
            .collect();
        let mut index = Index::default();
        for b in cache.store::<ClusterRoleBinding>().list(None) {
            if b.role_ref.kind != "ClusterRole" {
                continue;
            }
            let Some(rules) = cluster_roles.get(&b.role_ref.name) else {
                continue; // a binding to a role not (yet) there grants nothing
            };
            for s in b.subjects.iter().flatten() {
                if let Some(k) = subject_key(s, None) {
                    index.cluster.entry(k).or_default().push(rules.clone());
                }
            }
        }
        for b in cache.store::<RoleBinding>().list(None) {
            let ns = b.metadata.namespace.clone().unwrap_or_default();
            let rules = match b.role_ref.kind.as_str() {
                "ClusterRole" => cluster_roles.get(&b.role_ref.name),
                "Role" => roles.get(&format!("{ns}/{}", b.role_ref.name)),
                _ => None,
            };
            let Some(rules) = rules else { continue };
            for s in b.subjects.iter().flatten() {
                if let Some(k) = subject_key(s, Some(&ns)) {
                    index
                        .namespaced
                        .entry(ns.clone())
                        .or_default()
                        .entry(k)
                        .or_default()
                        .push(rules.clone());
                }
            }
        }
        index
    }

    /// The rule sets that apply to `user` in `ns` (cluster-wide ones for
    /// None).
    fn rule_sets<'a>(&'a self, user: &User, ns: Option<&str>) -> Vec<&'a Arc<Vec<PolicyRule>>> {
        let keys: Vec<String> = std::iter::once(user_key(&user.name))
            .chain(user.groups.iter().map(|g| group_key(g)))
            .collect();
        let mut out = Vec::new();
        for k in &keys {
            out.extend(self.cluster.get(k).into_iter().flatten());
        }
        if let Some(by_subject) = ns.and_then(|ns| self.namespaced.get(ns)) {
            for k in &keys {
                out.extend(by_subject.get(k).into_iter().flatten());
            }
        }
        out
    }
}

/// A 403 for `a`, in kube-apiserver's wording.
pub fn forbidden(a: &Request<'_>, reason: &str) -> weft_api::ApiError {
    if a.path.is_some() {
        return weft_api::ApiError::forbidden(format!("forbidden: {reason}"));
    }
    let what = if a.group.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let message = match a.name {
        Some(n) => format!("{what} \"{n}\" is forbidden: {reason}"),
        None => format!("{what} is forbidden: {reason}"),
    };
    weft_api::ApiError::forbidden(message).about(a.group, a.resource, a.name.unwrap_or_default())
}

/// The RBAC authorizer over the controllers' cache.
pub struct Authorizer {
    cache: Arc<Cache>,
    /// Bumped on every change to a role or binding.
    changes: Arc<AtomicU64>,
    /// The index and the value of `changes` it was built at.
    index: Mutex<(u64, Arc<Index>)>,
}

impl Authorizer {
    /// An authorizer over `cache`, following its roles and bindings.
    pub fn start(cache: Arc<Cache>) -> Arc<Self> {
        let changes = Arc::new(AtomicU64::new(1));
        fn follow<K: crate::registry::Kind>(cache: &Cache, changes: &Arc<AtomicU64>) {
            let mut rx = cache.store::<K>().subscribe();
            let changes = changes.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            changes.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        follow::<Role>(&cache, &changes);
        follow::<ClusterRole>(&cache, &changes);
        follow::<RoleBinding>(&cache, &changes);
        follow::<ClusterRoleBinding>(&cache, &changes);
        Arc::new(Self {
            cache,
            changes,
            index: Mutex::new((0, Arc::new(Index::default()))),
        })
    }

    fn index(&self) -> Arc<Index> {
        let now = self.changes.load(Ordering::SeqCst);
        let mut guard = self.index.lock().unwrap_or_else(|e| e.into_inner());
        if guard.0 != now {
            *guard = (now, Arc::new(Index::build(&self.cache)));
        }
        guard.1.clone()
    }

    /// Whether a binding of `user` (or of one of its groups) allows `req`.
    pub fn allows(&self, user: &User, req: &Request<'_>) -> bool {
        let index = self.index();
        index
            .rule_sets(user, req.namespace)
            .into_iter()
            .any(|rules| rules::any_allows(rules, req))
    }

    /// [`Self::allows`], and when it says no, once more after the cache has
    /// caught up with `store` (a binding just written is then honoured, as
    /// a reader of its own writes expects), waiting at most two seconds.
    pub async fn allows_fresh(
        &self,
        user: &User,
        req: &Request<'_>,
        store: &dyn crate::store::Store,
    ) -> bool {
        if self.allows(user, req) {
            return true;
        }
        let Ok(rev) = store.revision().await else {
            return false;
        };
        if self.cache.revision() >= rev {
            return false;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.cache.wait_for(rev)).await;
        // The change is in the cache; its subscriber may not have bumped
        // the index yet.
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.allows(user, req)
    }

    /// Every rule that applies to `user` in `ns` (cluster-wide rules only
    /// for None): what SelfSubjectRulesReview lists and what the
    /// escalation check compares with.
    pub fn rules_for(&self, user: &User, ns: Option<&str>) -> Vec<PolicyRule> {
        let index = self.index();
        index
            .rule_sets(user, ns)
            .into_iter()
            .flat_map(|r| r.iter().cloned())
            .collect()
    }
}

/// Full authority: what cluster-admin holds.
fn everything() -> Vec<PolicyRule> {
    let star = || Some(vec!["*".to_string()]);
    vec![
        PolicyRule {
            api_groups: star(),
            resources: star(),
            verbs: vec!["*".into()],
            ..Default::default()
        },
        PolicyRule {
            non_resource_urls: star(),
            verbs: vec!["*".into()],
            ..Default::default()
        },
    ]
}

impl Authorizer {
    /// kube's escalation prevention, for a write of a Role, ClusterRole,
    /// RoleBinding or ClusterRoleBinding (`obj`, in `ns` for the namespaced
    /// two) by `user`: a role may grant only what its writer holds (or the
    /// writer may `escalate`), a binding may bind only a role whose rules
    /// its writer holds (or the writer may `bind` it); an aggregated
    /// ClusterRole takes full authority. Admins (system:masters) may do
    /// anything.
    pub fn admit_write(
        &self,
        user: &User,
        resource: &str,
        ns: Option<&str>,
        obj: &serde_json::Value,
    ) -> Result<(), weft_api::ApiError> {
        if user.is_admin() {
            return Ok(());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = if matches!(resource, "roles" | "rolebindings") {
            ns
        } else {
            None
        };
        let may = |verb: &str, resource: &str, name: &str| {
            self.allows(
                user,
                &Request {
                    verb,
                    group: crate::registry::rbac::GROUP,
                    resource,
                    namespace: ns,
                    name: Some(name),
                    ..Default::default()
                },
            )
        };
        let refuse = |why: String| {
            forbidden(
                &Request {
                    verb: "create",
                    group: crate::registry::rbac::GROUP,
                    resource,
                    namespace: ns,
                    name: Some(name),
                    ..Default::default()
                },
                &why,
            )
        };
        let (wanted, verb_that_skips) = match resource {
            "roles" | "clusterroles" => {
                let rules: Vec<PolicyRule> =
                    serde_json::from_value(obj["rules"].clone()).unwrap_or_default();
                if resource == "clusterroles" && !obj["aggregationRule"].is_null() {
                    if !rules::uncovered(&self.rules_for(user, None), &everything()).is_empty() {
                        return Err(refuse(
                            "must have cluster-admin privileges to use the aggregationRule".into(),
                        ));
                    }
                    return Ok(());
                }
                if may("escalate", resource, name) {
                    return Ok(());
                }
                (rules, "escalate")
            }
            "rolebindings" | "clusterrolebindings" => {
                let kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
                let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
                let role_resource = if kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", role_resource, role) {
                    return Ok(());
                }
                let rules = match kind {
                    "Role" => self
                        .cache
                        .store::<Role>()
                        .get(ns, role)
                        .map(|r| r.rules.clone().unwrap_or_default()),
                    _ => self
                        .cache
                        .store::<ClusterRole>()
                        .get(None, role)
                        .map(|r| r.rules.clone().unwrap_or_default()),
                };
                let Some(rules) = rules else {
                    return Err(refuse(format!(
                        "{role_resource}.{} \"{role}\" not found; a binding to it needs the bind verb on it",
                        crate::registry::rbac::GROUP
                    )));
                };
                (rules, "bind")
            }
            _ => return Ok(()),
        };
        let missing = rules::uncovered(&self.rules_for(user, ns), &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let groups = user
            .groups
            .iter()
            .map(|g| format!("{g:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        let listed = missing
            .iter()
            .map(rules::describe)
            .collect::<Vec<_>>()
            .join("\n");
        Err(refuse(format!(
            "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{listed}\n(or it needs the {verb_that_skips} verb)",
            user.name
        )))
    }
}
