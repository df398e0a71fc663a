//! Field ownership (`metadata.managedFields`) and server-side apply, as
//! kube-apiserver keeps them: every write records which manager set which
//! fields; an apply merges a manager's configuration into the object by
//! the type's list and map kinds (`crate::openapi`), removes what that
//! manager set before and no longer does, and is refused (409) where it
//! would change a field another manager set, unless forced.
//!
//! Writes are Update operations (by `?fieldManager=`, else the client's
//! user agent up to its `/`): they take the fields they change from
//! everyone else. Up to ten Update managers are kept; older ones merge
//! into `ancient-changes`, as kube's.

pub mod set;
pub mod walk;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use serde_json::{Value, json};
use weft_api::{ApiError, Cause};

use crate::openapi::Node;
pub use set::{Elem, Set};
use walk::Comparison;

/// Update managers kept, at most (kube's DefaultMaxUpdateManagers).
pub const MAX_UPDATE_MANAGERS: usize = 10;
/// The manager older Update managers are merged into.
pub const ANCIENT: &str = "ancient-changes";
/// The longest manager name (kube's limit).
pub const MAX_MANAGER_LEN: usize = 128;
/// The manager that owns what an object held before its first apply.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// Who writes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub name: String,
    pub apply: bool,
    /// The apiVersion written with (`apps/v1`).
    pub api_version: String,
    /// `status`, `scale` or empty.
    pub subresource: String,
}

/// One managedFields entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    apply: bool,
    api_version: String,
    subresource: String,
    time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    set: Set,
}

impl Entry {
    /// Entries are one per manager, operation and subresource, and for
    /// Update operations per apiVersion too.
    fn is(&self, m: &Manager) -> bool {
        self.manager == m.name
            && self.apply == m.apply
            && self.subresource == m.subresource
            && (m.apply || self.api_version == m.api_version)
    }

    /// How a conflict names this manager, as kube does.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if !self.apply {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// An object's field managers.
#[derive(Debug, Clone, Default)]
pub struct Managed(Vec<Entry>);

impl Managed {
    /// Reads `metadata.managedFields`; 422 causes for entries that are not
    /// well-formed.
    pub fn decode(entries: Option<&Vec<ManagedFieldsEntry>>) -> Result<Managed, Vec<Cause>> {
        let mut out: Vec<Entry> = Vec::new();
        let mut causes = Vec::new();
        for (i, e) in entries.into_iter().flatten().enumerate() {
            let at = |f: &str| format!("metadata.managedFields[{i}].{f}");
            let apply = match e.operation.as_deref() {
                Some("Apply") => true,
                Some("Update") => false,
                // kube's documented way to clear managedFields: `[{}]`.
                None if e.manager.is_none() && e.fields_v1.is_none() => continue,
                other => {
                    causes.push(Cause::not_supported(
                        at("operation"),
                        other.unwrap_or_default(),
                        &["Apply", "Update"],
                    ));
                    continue;
                }
            };
            if e.fields_type.as_deref().is_some_and(|t| t != "FieldsV1") {
                causes.push(Cause::not_supported(
                    at("fieldsType"),
                    e.fields_type.as_deref().unwrap_or_default(),
                    &["FieldsV1"],
                ));
                continue;
            }
            let manager = e.manager.clone().unwrap_or_default();
            if manager.len() > MAX_MANAGER_LEN {
                causes.push(Cause::too_long(at("manager"), MAX_MANAGER_LEN));
                continue;
            }
            let set = match &e.fields_v1 {
                None => Set::default(),
                Some(FieldsV1(v)) => match Set::from_fields_v1(v) {
                    Some(s) => s,
                    None => {
                        causes.push(Cause::invalid(
                            at("fieldsV1"),
                            "(fields)",
                            "not a fieldsV1 set of paths",
                        ));
                        continue;
                    }
                },
            };
            let entry = Entry {
                manager,
                apply,
                api_version: e.api_version.clone().unwrap_or_default(),
                subresource: e.subresource.clone().unwrap_or_default(),
                time: e.time.clone(),
                set,
            };
            let who = Manager {
                name: entry.manager.clone(),
                apply,
                api_version: entry.api_version.clone(),
                subresource: entry.subresource.clone(),
            };
            match out.iter_mut().find(|x| x.is(&who)) {
                Some(same) => same.set.union_in(&entry.set),
                None => out.push(entry),
            }
        }
        if causes.is_empty() {
            Ok(Managed(out))
        } else {
            Err(causes)
        }
    }

    /// `metadata.managedFields`; `None` when there are none.
    pub fn encode(&self) -> Option<Vec<ManagedFieldsEntry>> {
        if self.0.is_empty() {
            return None;
        }
        Some(
            self.0
                .iter()
                .map(|e| ManagedFieldsEntry {
                    manager: Some(e.manager.clone()),
                    operation: Some(if e.apply { "Apply" } else { "Update" }.into()),
                    api_version: Some(e.api_version.clone()),
                    time: e.time.clone(),
                    fields_type: Some("FieldsV1".into()),
                    fields_v1: Some(FieldsV1(e.set.to_fields_v1())),
                    subresource: (!e.subresource.is_empty()).then(|| e.subresource.clone()),
                })
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fields `m` holds.
    pub fn set_of(&self, m: &Manager) -> Option<&Set> {
        self.0.iter().find(|e| e.is(m)).map(|e| &e.set)
    }

    fn entry(&mut self, m: &Manager) -> &mut Entry {
        if let Some(i) = self.0.iter().position(|e| e.is(m)) {
            return &mut self.0[i];
        }
        self.0.push(Entry {
            manager: m.name.clone(),
            apply: m.apply,
            api_version: m.api_version.clone(),
            subresource: m.subresource.clone(),
            time: None,
            set: Set::default(),
        });
        self.0.last_mut().expect("just pushed")
    }

    /// Takes `fields` from every manager but `except`.
    fn take_from_others(&mut self, except: &Manager, fields: &Set) {
        for e in &mut self.0 {
            if !e.is(except) {
                e.set = e.set.difference(fields);
            }
        }
    }

    fn drop_empty(&mut self) {
        self.0.retain(|e| !e.set.is_empty());
    }

    /// Keeps [`MAX_UPDATE_MANAGERS`] Update managers: the oldest beyond
    /// merge into [`ANCIENT`].
    fn cap(&mut self) {
        loop {
            let updates: Vec<usize> = (0..self.0.len())
                .filter(|&i| !self.0[i].apply && self.0[i].manager != ANCIENT)
                .collect();
            let ancient = self.0.iter().any(|e| !e.apply && e.manager == ANCIENT);
            if updates.len() + usize::from(ancient) <= MAX_UPDATE_MANAGERS {
                return;
            }
            let oldest = *updates
                .iter()
                .min_by_key(|&&i| self.0[i].time.as_ref().map(|t| t.0))
                .expect("more than the cap");
            let gone = self.0.remove(oldest);
            let into = Manager {
                name: ANCIENT.into(),
                apply: false,
                api_version: gone.api_version.clone(),
                subresource: String::new(),
            };
            let e = match self.0.iter().position(|e| !e.apply && e.manager == ANCIENT) {
                Some(i) => &mut self.0[i],
                None => self.entry(&into),
            };
            e.set.union_in(&gone.set);
            if e.time.is_none() {
                e.time = gone.time;
            }
        }
    }
}

/// Which part of an object a write's managers own: a status write owns
/// `status` only; any other write owns everything but `status` (for kinds
/// with a status subresource) and the fields the server sets.
pub fn skip_for(subresource: &str, has_status: bool) -> impl Fn(&[Elem]) -> bool + '_ {
    move |path: &[Elem]| {
        let top = |name: &str| matches!(path.first(), Some(Elem::Field(f)) if f == name);
        if subresource == "status" {
            return path.len() == 1 && !top("status");
        }
        if path.len() == 1 {
            return top("apiVersion") || top("kind") || (has_status && top("status"));
        }
        path.len() == 2
            && top("metadata")
            && matches!(&path[1], Elem::Field(f) if matches!(f.as_str(),
                "name" | "namespace" | "creationTimestamp" | "selfLink" | "uid"
                | "generation" | "managedFields" | "resourceVersion"
                | "deletionTimestamp" | "deletionGracePeriodSeconds"))
    }
}

fn now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    weft_api::meta::now_time()
}

/// Records an Update by `who` from `old` (none: a create) to `new`: `who`
/// takes the fields it added or changed from everyone else, and fields it
/// removed are nobody's.
pub fn update(
    managed: &mut Managed,
    old: Option<&Value>,
    new: &Value,
    node: Node<'_>,
    who: &Manager,
    has_status: bool,
) {
    let mut c = Comparison::default();
    let skip = skip_for(&who.subresource, has_status);
    walk::compare(old, Some(new), node, &mut Vec::new(), &skip, &mut c);
    if c.is_empty() {
        return;
    }
    managed.take_from_others(who, &c.all());
    let e = managed.entry(who);
    e.set.union_in(&c.added);
    e.set.union_in(&c.modified);
    e.set = e.set.difference(&c.removed);
    e.time = Some(now());
    managed.drop_empty();
    managed.cap();
}

/// What an apply makes of the live object.
pub struct Applied {
    pub object: Value,
    pub managed: Managed,
}

/// The fields an apply by `kubectl` may take from others without a
/// conflict on an object it managed with client-side apply: those of its
/// last-applied configuration (the annotation) that still hold the value
/// it applied. kubectl applies server-side first and moves the client-side
/// manager's fields to itself afterwards, so kube lets this first apply
/// through; so does Weft.
pub fn allowed_from_last_applied(live: &Value, node: Node<'_>) -> Option<Set> {
    let text = live["metadata"]["annotations"][LAST_APPLIED].as_str()?;
    let last: Value = serde_json::from_str(text).ok()?;
    let mut set = Set::default();
    walk::to_set(&last, node, &mut Vec::new(), &mut set).ok()?;
    let mut c = Comparison::default();
    walk::compare(
        Some(&last),
        Some(live),
        node,
        &mut Vec::new(),
        &|_| false,
        &mut c,
    );
    Some(set.difference(&c.modified))
}

/// The annotation `kubectl apply` (client-side) keeps its last
/// configuration in.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Applies `config` by `who` to `live` (none: the apply creates it).
/// Conflicts on fields in `allowed` alone are forced (see
/// [`allowed_from_last_applied`]).
///
/// # Errors
/// 409 naming every field another manager set to another value (unless
/// `force`), 422 for a configuration whose lists cannot be merged.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    live: Option<&Value>,
    mut managed: Managed,
    config: &Value,
    node: Node<'_>,
    who: &Manager,
    has_status: bool,
    force: bool,
    allowed: Option<&Set>,
) -> Result<Applied, ApiError> {
    let skip = skip_for(&who.subresource, has_status);
    // An object no manager is recorded for (made before Weft tracked
    // them): what it holds is one Update manager's, as kube does, so that
    // an apply cannot silently take it over.
    if let Some(live) = live
        && managed.is_empty()
    {
        let mut c = Comparison::default();
        walk::compare(None, Some(live), node, &mut Vec::new(), &skip, &mut c);
        if !c.added.is_empty() {
            let before = Manager {
                name: BEFORE_FIRST_APPLY.into(),
                apply: false,
                api_version: who.api_version.clone(),
                subresource: String::new(),
            };
            let e = managed.entry(&before);
            e.set = c.added;
            e.time = Some(now());
        }
    }
    let mut wanted = Set::default();
    walk::to_set(config, node, &mut Vec::new(), &mut wanted).map_err(|e| {
        ApiError::invalid_patch(format!("failed to create typed patch object: {e}"))
    })?;
    let wanted = drop_skipped(&wanted, &skip);
    let mut config = config.clone();
    if who.subresource != "status" {
        if has_status && let Some(m) = config.as_object_mut() {
            m.remove("status");
        }
    } else if let Some(m) = config.as_object_mut() {
        m.retain(|k, _| matches!(k.as_str(), "status" | "apiVersion" | "kind" | "metadata"));
    }
    let mut object = live.cloned().unwrap_or_else(|| json!({}));
    walk::merge(&mut object, &config, node);
    let last = managed.set_of(who).cloned();
    managed.entry(who).set = wanted.clone();
    // What this manager set before and no longer does goes, unless
    // someone else holds it too.
    if let Some(last) = last {
        let gone = last.difference(&wanted);
        if !gone.is_empty() {
            let mut owned = Set::default();
            for e in &managed.0 {
                owned.union_in(&e.set);
            }
            walk::prune(&mut object, &gone, Some(&owned));
        }
    }
    let mut c = Comparison::default();
    walk::compare(live, Some(&object), node, &mut Vec::new(), &skip, &mut c);
    let changed = c.added.union(&c.modified);
    let mut conflicts: Vec<(String, Vec<set::Path>, Set)> = Vec::new();
    for e in &managed.0 {
        if e.is(who) {
            continue;
        }
        let both = e.set.intersection(&changed);
        if !both.is_empty() {
            conflicts.push((e.describe(), both.paths(), both));
        }
    }
    if !conflicts.is_empty() && !force {
        let remaining: Vec<(String, Vec<set::Path>, Set)> = conflicts
            .iter()
            .filter_map(|(name, _, both)| {
                let rest = match allowed {
                    Some(a) => both.difference(a),
                    None => both.clone(),
                };
                (!rest.is_empty()).then(|| (name.clone(), rest.paths(), rest))
            })
            .collect();
        if !remaining.is_empty() {
            return Err(conflict_error(&remaining));
        }
    }
    for (name, _, both) in &conflicts {
        for e in &mut managed.0 {
            if !e.is(who) && &e.describe() == name {
                e.set = e.set.difference(both);
            }
        }
    }
    managed.take_from_others(who, &c.removed);
    let e = managed.entry(who);
    e.time = Some(now());
    e.api_version.clone_from(&who.api_version);
    managed.drop_empty();
    managed.cap();
    Ok(Applied { object, managed })
}

fn drop_skipped(set: &Set, skip: &dyn Fn(&[Elem]) -> bool) -> Set {
    let mut out = Set::default();
    for p in set.paths() {
        if !(1..=p.len()).any(|n| skip(&p[..n])) {
            out.insert(&p);
        }
    }
    out
}

/// kube's apply conflict: 409, a cause per field.
fn conflict_error(conflicts: &[(String, Vec<set::Path>, Set)]) -> ApiError {
    let count: usize = conflicts.iter().map(|(_, p, _)| p.len()).sum();
    let mut causes = Vec::new();
    let mut lines = Vec::new();
    for (manager, paths, _) in conflicts {
        lines.push(format!("conflicts with {manager}:"));
        for p in paths {
            let field = set::display(p);
            lines.push(format!("- {field}"));
            causes.push(Cause {
                reason: "FieldManagerConflict",
                message: format!("conflict with {manager}"),
                field,
            });
        }
    }
    let message = if count == 1 {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            conflicts[0].0,
            set::display(&conflicts[0].1[0])
        )
    } else {
        format!("Apply failed with {count} conflicts: {}", lines.join("\n"))
    };
    let mut e = ApiError::conflict("", "", "", "");
    e.message = message;
    e.kind = None;
    e.group = None;
    e.name = None;
    e.causes = causes;
    e
}

/// The manager of an Update: `?fieldManager=`, else the user agent's
/// first word (kube's default), at most [`MAX_MANAGER_LEN`] bytes.
///
/// # Errors
/// 422 for a `fieldManager` longer than that or with control characters.
pub fn manager_name(
    field_manager: Option<&str>,
    user_agent: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(m) = field_manager {
        let mut causes = Vec::new();
        if m.len() > MAX_MANAGER_LEN {
            causes.push(Cause::too_long("fieldManager", MAX_MANAGER_LEN));
        }
        if m.chars().any(char::is_control) {
            causes.push(Cause::invalid(
                "fieldManager",
                format!("{m:?}"),
                "must be made of printable characters",
            ));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid("PatchOptions", "meta.k8s.io", "", causes));
        }
        return Ok(m.to_string());
    }
    let agent = user_agent.unwrap_or_default();
    let first = agent.split('/').next().unwrap_or_default();
    let mut name: String = first.chars().filter(|c| !c.is_control()).collect();
    while name.len() > MAX_MANAGER_LEN {
        name.pop();
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::schemas;

    fn node() -> Node<'static> {
        schemas()
            .kind("apps", "v1", "Deployment")
            .expect("Deployment")
    }

    fn mgr(name: &str, apply: bool) -> Manager {
        Manager {
            name: name.into(),
            apply,
            api_version: "apps/v1".into(),
            subresource: String::new(),
        }
    }

    fn dep(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image}]}}}})
    }

    #[test]
    fn applies_conflict_with_other_managers_and_force_takes_over() {
        let applied = apply(
            None,
            Managed::default(),
            &dep(2, "x:1"),
            node(),
            &mgr("kubectl", true),
            true,
            false,
            None,
        )
        .expect("apply on create");
        let mut managed = applied.managed;
        let mut live = applied.object;
        // Someone scales it: an Update that takes spec.replicas.
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        update(
            &mut managed,
            Some(&live),
            &scaled,
            node(),
            &mgr("kubectl-scale", false),
            true,
        );
        live = scaled;
        let err = apply(
            Some(&live),
            managed.clone(),
            &dep(2, "x:2"),
            node(),
            &mgr("kubectl", true),
            true,
            false,
            None,
        )
        .err()
        .expect("a conflict");
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message,
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        assert_eq!(err.causes[0].reason, "FieldManagerConflict");
        // The same value is no conflict: both hold it.
        let shared = apply(
            Some(&live),
            managed.clone(),
            &dep(5, "x:2"),
            node(),
            &mgr("kubectl", true),
            true,
            false,
            None,
        )
        .expect("same value");
        assert_eq!(
            shared.object["spec"]["template"]["spec"]["containers"][0]["image"],
            "x:2"
        );
        // Forced: the applier takes it.
        let forced = apply(
            Some(&live),
            managed,
            &dep(2, "x:2"),
            node(),
            &mgr("kubectl", true),
            true,
            true,
            None,
        )
        .expect("forced");
        assert_eq!(forced.object["spec"]["replicas"], 2);
        let scale = forced.managed.set_of(&mgr("kubectl-scale", false));
        assert!(scale.is_none(), "{scale:?}");
    }

    #[test]
    fn an_apply_removes_what_it_no_longer_sets() {
        let mut with_paused = dep(1, "x:1");
        with_paused["spec"]["paused"] = json!(true);
        with_paused["metadata"]["labels"] = json!({"a": "1", "b": "2"});
        let first = apply(
            None,
            Managed::default(),
            &with_paused,
            node(),
            &mgr("kubectl", true),
            true,
            false,
            None,
        )
        .unwrap();
        let mut without = dep(1, "x:1");
        without["metadata"]["labels"] = json!({"a": "1"});
        let second = apply(
            Some(&first.object),
            first.managed,
            &without,
            node(),
            &mgr("kubectl", true),
            true,
            false,
            None,
        )
        .unwrap();
        assert!(
            second.object["spec"].get("paused").is_none(),
            "{}",
            second.object
        );
        assert_eq!(second.object["metadata"]["labels"], json!({"a": "1"}));
        // Update managers are capped.
        let mut managed = second.managed;
        let mut live = second.object;
        for i in 0..15 {
            let mut next = live.clone();
            next["metadata"]["annotations"][format!("k{i}")] = json!("v");
            update(
                &mut managed,
                Some(&live),
                &next,
                node(),
                &mgr(&format!("m{i}"), false),
                true,
            );
            live = next;
        }
        let entries = managed.encode().unwrap();
        assert!(
            entries
                .iter()
                .filter(|e| e.operation.as_deref() == Some("Update"))
                .count()
                <= MAX_UPDATE_MANAGERS
        );
        assert!(
            entries
                .iter()
                .any(|e| e.manager.as_deref() == Some(ANCIENT))
        );
        assert!(
            entries
                .iter()
                .any(|e| e.manager.as_deref() == Some("kubectl"))
        );
    }

    #[test]
    fn manager_names_come_from_the_request() {
        assert_eq!(
            manager_name(None, Some("kubectl/v1.33.1 (linux/amd64)")).unwrap(),
            "kubectl"
        );
        assert_eq!(
            manager_name(Some("mine"), Some("kubectl/v1")).unwrap(),
            "mine"
        );
        assert_eq!(
            manager_name(Some(&"x".repeat(129)), None).unwrap_err().code,
            422
        );
    }
}
