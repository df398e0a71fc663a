//! Walks over objects by their schema: the fields a value sets, what
//! changed between two values, an applied configuration merged into the
//! live object, and fields taken out of it.

use serde_json::{Map, Value};

use super::set::{Elem, Path, Set};
use crate::openapi::{ListType, Node, Shape};

/// A key field left out of a list item takes its default, when its type
/// has one: `protocol` in ports (`TCP`), the only defaulted key field of
/// the kinds Weft serves.
fn key_default(field: &str) -> Option<Value> {
    (field == "protocol").then(|| Value::String("TCP".into()))
}

/// The key of `item` in a list keyed by `keys`; `None` when a key field
/// without a default is missing (or `item` is not an object).
pub fn item_key(item: &Value, keys: &[String]) -> Option<Elem> {
    let obj = item.as_object()?;
    let mut full = Map::new();
    for k in keys {
        match obj
            .get(k)
            .filter(|v| !v.is_null())
            .cloned()
            .or_else(|| key_default(k))
        {
            Some(v) => {
                full.insert(k.clone(), v);
            }
            None => return None,
        }
    }
    Some(Elem::key(&Value::Object(full), keys))
}

/// Why a list cannot be walked item by item.
#[derive(Debug)]
pub enum ListError {
    MissingKey(String),
    Duplicate(String),
}

/// Each item's path element: its key, its value (sets) or an error.
fn list_elems(items: &[Value], lt: &ListType) -> Result<Vec<Elem>, ListError> {
    let mut out: Vec<Elem> = Vec::with_capacity(items.len());
    for item in items {
        let e = match lt {
            ListType::Map(keys) => item_key(item, keys).ok_or_else(|| {
                let missing = keys
                    .iter()
                    .find(|k| {
                        item.get(k.as_str()).is_none_or(Value::is_null) && key_default(k).is_none()
                    })
                    .cloned()
                    .unwrap_or_default();
                ListError::MissingKey(missing)
            })?,
            ListType::Set => Elem::Value(item.to_string()),
            ListType::Atomic => unreachable!("atomic lists are leaves"),
        };
        if out.contains(&e) {
            return Err(ListError::Duplicate(e.to_string()));
        }
        out.push(e);
    }
    Ok(out)
}

/// Whether a value of this shape is owned and compared whole.
fn is_leaf(node: &Node<'_>, v: &Value) -> bool {
    match node.shape() {
        Shape::Scalar => true,
        Shape::Struct { atomic, .. } | Shape::Map { atomic, .. } => atomic || !v.is_object(),
        Shape::List { .. } => node.list_type() == ListType::Atomic || !v.is_array(),
        Shape::Untyped => !v.is_object(),
    }
}

fn item_node<'a>(node: &Node<'a>) -> Node<'a> {
    match node.shape() {
        Shape::List { item } => item,
        _ => *node,
    }
}

/// The fields `v` sets, as server-side apply counts an applied
/// configuration's: every scalar and atomic value, every list item, and
/// every map key whose value is null, empty or not a declared field.
/// Errors name the list whose items cannot be told apart.
pub fn to_set(v: &Value, node: Node<'_>, path: &mut Path, out: &mut Set) -> Result<(), String> {
    if path.len() > 64 {
        return Err(format!("{}: nested too deeply", super::set::display(path)));
    }
    if is_leaf(&node, v) {
        if !path.is_empty() {
            out.insert(path);
        }
        return Ok(());
    }
    match v {
        Value::Object(m) => {
            let declared = matches!(node.shape(), Shape::Struct { .. });
            for (k, child) in m {
                let child_node = node.field(k);
                path.push(Elem::Field(k.clone()));
                to_set(child, child_node, path, out)?;
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || !declared {
                    out.insert(path);
                }
                path.pop();
            }
        }
        Value::Array(items) => {
            let lt = node.list_type();
            let elems = list_elems(items, &lt).map_err(|e| list_error(path, e))?;
            let item = item_node(&node);
            for (e, child) in elems.into_iter().zip(items) {
                path.push(e);
                if lt != ListType::Set {
                    to_set(child, item, path, out)?;
                }
                out.insert(path);
                path.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

fn list_error(path: &[Elem], e: ListError) -> String {
    let at = super::set::display(path);
    match e {
        ListError::MissingKey(k) => format!(
            "{at}: associative list with keys has an element that omits key field \"{k}\" (and doesn't have default value)"
        ),
        ListError::Duplicate(k) => format!("{at}: duplicate entries for key {k}"),
    }
}

/// What an update changed: paths it added, changed and removed.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    /// Every path the update touched.
    pub fn all(&self) -> Set {
        self.added.union(&self.modified).union(&self.removed)
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// Compares `old` and `new` under `path`, skipping the top-level fields
/// `skip` says to (at the root only).
pub fn compare(
    old: Option<&Value>,
    new: Option<&Value>,
    node: Node<'_>,
    path: &mut Path,
    skip: &dyn Fn(&[Elem]) -> bool,
    c: &mut Comparison,
) {
    let (old, new) = (present(old), present(new));
    let leaf = |v: Option<&Value>| v.is_some_and(|v| is_leaf(&node, v));
    if old.is_none() && new.is_none() {
        return;
    }
    if leaf(old)
        || leaf(new)
        || old.is_some_and(|o| {
            new.is_some_and(|n| std::mem::discriminant(o) != std::mem::discriminant(n))
        })
    {
        match (old, new) {
            (None, Some(_)) => c.added.insert(path),
            (Some(_), None) => c.removed.insert(path),
            (Some(o), Some(n)) if o != n => c.modified.insert(path),
            _ => {}
        }
        return;
    }
    let empty_map = Map::new();
    match (old.or(new), new.or(old)) {
        (Some(Value::Object(_)), _) => {
            let om = old.and_then(Value::as_object).unwrap_or(&empty_map);
            let nm = new.and_then(Value::as_object).unwrap_or(&empty_map);
            for k in om.keys().chain(nm.keys().filter(|k| !om.contains_key(*k))) {
                path.push(Elem::Field(k.clone()));
                if !skip(path) {
                    compare(om.get(k), nm.get(k), node.field(k), path, skip, c);
                }
                path.pop();
            }
        }
        (Some(Value::Array(_)), _) => {
            let empty = Vec::new();
            let oi = old.and_then(Value::as_array).unwrap_or(&empty);
            let ni = new.and_then(Value::as_array).unwrap_or(&empty);
            let lt = node.list_type();
            match (list_elems(oi, &lt), list_elems(ni, &lt)) {
                (Ok(oe), Ok(ne)) => {
                    let item = item_node(&node);
                    for (i, e) in oe.iter().enumerate() {
                        path.push(e.clone());
                        let newer = ne.iter().position(|x| x == e).map(|j| &ni[j]);
                        if lt == ListType::Set {
                            if newer.is_none() {
                                c.removed.insert(path);
                            }
                        } else {
                            compare(Some(&oi[i]), newer, item, path, skip, c);
                        }
                        path.pop();
                    }
                    for (j, e) in ne.iter().enumerate() {
                        if oe.contains(e) {
                            continue;
                        }
                        path.push(e.clone());
                        if lt == ListType::Set {
                            c.added.insert(path);
                        } else {
                            compare(None, Some(&ni[j]), item, path, skip, c);
                        }
                        path.pop();
                    }
                }
                // Items that cannot be told apart (a stored object from
                // before a key was required): the list is one value.
                _ => match (old, new) {
                    (None, Some(_)) => c.added.insert(path),
                    (Some(_), None) => c.removed.insert(path),
                    (Some(o), Some(n)) if o != n => c.modified.insert(path),
                    _ => {}
                },
            }
        }
        _ => {}
    }
    if !path.is_empty() {
        match (old, new) {
            (None, Some(_)) => c.added.insert(path),
            (Some(_), None) => c.removed.insert(path),
            _ => {}
        }
    }
}

/// Merges applied configuration `config` into `live`: objects key by key,
/// keyed lists item by item, sets as a union; scalars and atomic values
/// are replaced, and a null removes the field.
pub fn merge(live: &mut Value, config: &Value, node: Node<'_>) {
    if is_leaf(&node, config)
        || is_leaf(&node, live)
        || std::mem::discriminant(live) != std::mem::discriminant(config)
    {
        *live = config.clone();
        return;
    }
    match (live, config) {
        (Value::Object(lm), Value::Object(cm)) => {
            for (k, cv) in cm {
                if cv.is_null() {
                    lm.remove(k);
                    continue;
                }
                match lm.get_mut(k) {
                    Some(lv) if !lv.is_null() => merge(lv, cv, node.field(k)),
                    _ => {
                        lm.insert(k.clone(), cv.clone());
                    }
                }
            }
        }
        (Value::Array(li), Value::Array(ci)) => {
            let lt = node.list_type();
            match lt {
                ListType::Set => {
                    for c in ci {
                        if !li.contains(c) {
                            li.push(c.clone());
                        }
                    }
                }
                ListType::Map(ref keys) => {
                    let item = item_node(&node);
                    for c in ci {
                        let key = item_key(c, keys);
                        let at = key.as_ref().and_then(|k| {
                            li.iter()
                                .position(|l| item_key(l, keys).as_ref() == Some(k))
                        });
                        match at {
                            Some(i) => merge(&mut li[i], c, item),
                            None => li.push(c.clone()),
                        }
                    }
                }
                ListType::Atomic => *li = ci.clone(),
            }
        }
        (live, config) => *live = config.clone(),
    }
}

/// Removes from `v` the paths of `remove` that nobody in `owned` holds
/// (at or under them): what an applier set before and no longer does.
pub fn prune(v: &mut Value, remove: &Set, owned: Option<&Set>) {
    for (e, child) in &remove.children {
        let owned_child = owned.and_then(|o| o.children.get(e));
        let kept = owned_child.is_some_and(|o| !o.is_empty());
        match (&mut *v, e) {
            (Value::Object(m), Elem::Field(k)) => {
                if child.member && !kept {
                    m.remove(k);
                } else if let Some(sub) = m.get_mut(k) {
                    prune(sub, child, owned_child);
                }
            }
            (Value::Array(items), Elem::Key(_) | Elem::Value(_) | Elem::Index(_)) => {
                let Some(i) = position(items, e) else {
                    continue;
                };
                if child.member && !kept {
                    items.remove(i);
                } else {
                    prune(&mut items[i], child, owned_child);
                }
            }
            _ => {}
        }
    }
}

/// Where the item named by `e` is in `items`.
fn position(items: &[Value], e: &Elem) -> Option<usize> {
    match e {
        Elem::Key(k) => {
            let keys: Map<String, Value> = serde_json::from_str(k).ok()?;
            items.iter().position(|item| {
                keys.iter().all(|(f, want)| {
                    item.get(f)
                        .filter(|v| !v.is_null())
                        .cloned()
                        .or_else(|| key_default(f))
                        .as_ref()
                        == Some(want)
                })
            })
        }
        Elem::Value(v) => {
            let want: Value = serde_json::from_str(v).ok()?;
            items.iter().position(|item| *item == want)
        }
        Elem::Index(i) => usize::try_from(*i).ok().filter(|i| *i < items.len()),
        Elem::Field(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::schemas;
    use serde_json::json;

    fn deployment() -> Node<'static> {
        schemas()
            .kind("apps", "v1", "Deployment")
            .expect("Deployment")
    }

    #[test]
    fn an_applied_configuration_owns_its_leaves_and_items() {
        let config = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                    {"name": "web", "image": "x:1", "ports": [{"containerPort": 80}]}],
                    "volumes": [{"name": "tmp", "emptyDir": {}}]}}}});
        let mut set = Set::default();
        to_set(&config, deployment(), &mut Vec::new(), &mut set).unwrap();
        assert_eq!(
            set.to_fields_v1(),
            json!({"f:apiVersion": {}, "f:kind": {},
                "f:metadata": {"f:labels": {"f:app": {}}, "f:name": {}},
                "f:spec": {"f:replicas": {}, "f:selector": {}, "f:template": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}},
                    "f:volumes": {"k:{\"name\":\"tmp\"}": {".": {}, "f:emptyDir": {}, "f:name": {}}}}}}})
        );
        let bad = json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}});
        let err = to_set(&bad, deployment(), &mut Vec::new(), &mut Set::default()).unwrap_err();
        assert!(err.contains(".spec.template.spec.containers: associative list with keys has an element that omits key field \"name\""), "{err}");
    }

    #[test]
    fn comparisons_merges_and_prunes_follow_the_list_types() {
        let old = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "a", "image": "x:1", "args": ["1"]}, {"name": "b", "image": "y:1"}]}}}});
        let new = json!({"spec": {"replicas": 1, "paused": true, "template": {"spec": {"containers": [
            {"name": "a", "image": "x:2", "args": ["1", "2"]}]}}}});
        let mut c = Comparison::default();
        compare(
            Some(&old),
            Some(&new),
            deployment(),
            &mut Vec::new(),
            &|_| false,
            &mut c,
        );
        let paths = |s: &Set| {
            s.paths()
                .iter()
                .map(|p| super::super::set::display(p))
                .collect::<Vec<_>>()
        };
        assert_eq!(paths(&c.added), vec![".spec.paused"]);
        assert_eq!(
            paths(&c.modified),
            vec![
                ".spec.template.spec.containers[name=\"a\"].args",
                ".spec.template.spec.containers[name=\"a\"].image"
            ]
        );
        assert_eq!(
            paths(&c.removed),
            vec![
                ".spec.template.spec.containers[name=\"b\"]",
                ".spec.template.spec.containers[name=\"b\"].image",
                ".spec.template.spec.containers[name=\"b\"].name"
            ]
        );
        // Merge: containers by name, args whole.
        let mut live = old.clone();
        merge(
            &mut live,
            &json!({"spec": {"template": {"spec": {"containers": [
            {"name": "b", "image": "y:2", "args": ["9"]}, {"name": "c", "image": "z:1"}]}}}}),
            deployment(),
        );
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"],
            json!([
            {"name": "a", "image": "x:1", "args": ["1"]},
            {"name": "b", "image": "y:2", "args": ["9"]},
            {"name": "c", "image": "z:1"}])
        );
        // Prune: b's args go; c is owned by someone else and stays.
        let mut remove = Set::default();
        let b = Elem::Key(r#"{"name":"b"}"#.into());
        let c_key = Elem::Key(r#"{"name":"c"}"#.into());
        let base = vec![
            Elem::Field("spec".into()),
            Elem::Field("template".into()),
            Elem::Field("spec".into()),
            Elem::Field("containers".into()),
        ];
        let with = |e: &Elem, f: Option<&str>| {
            let mut p = base.clone();
            p.push(e.clone());
            if let Some(f) = f {
                p.push(Elem::Field(f.into()));
            }
            p
        };
        remove.insert(&with(&b, Some("args")));
        remove.insert(&with(&c_key, None));
        let mut owned = Set::default();
        owned.insert(&with(&c_key, Some("image")));
        prune(&mut live, &remove, Some(&owned));
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"],
            json!([
            {"name": "a", "image": "x:1", "args": ["1"]},
            {"name": "b", "image": "y:2"},
            {"name": "c", "image": "z:1"}])
        );
    }
}
