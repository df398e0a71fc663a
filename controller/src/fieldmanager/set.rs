//! Sets of field paths, as `metadata.managedFields[].fieldsV1` writes them:
//! `{"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers":
//! {"k:{\"name\":\"web\"}": {".": {}, "f:image": {}}}}}}}`. A path is in
//! the set when its node is a member (a leaf `{}`, or `"."` beside the
//! node's children); nodes that only lead to members are structure.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Elem {
    /// A struct field or map key: `f:name`.
    Field(String),
    /// A list item by its key fields, as compact JSON with the fields in
    /// name order: `k:{"name":"web"}`.
    Key(String),
    /// A set's item by its value, as JSON: `v:"x"`.
    Value(String),
    /// An item by position: `i:0`.
    Index(u64),
}

impl Elem {
    fn encode(&self) -> String {
        match self {
            Elem::Field(f) => format!("f:{f}"),
            Elem::Key(k) => format!("k:{k}"),
            Elem::Value(v) => format!("v:{v}"),
            Elem::Index(i) => format!("i:{i}"),
        }
    }

    fn decode(s: &str) -> Option<Elem> {
        let (kind, rest) = s.split_at_checked(2)?;
        Some(match kind {
            "f:" => Elem::Field(rest.to_string()),
            "k:" => {
                let keys: Map<String, Value> = serde_json::from_str(rest).ok()?;
                Elem::Key(Value::Object(keys).to_string())
            }
            "v:" => {
                let v: Value = serde_json::from_str(rest).ok()?;
                Elem::Value(v.to_string())
            }
            "i:" => Elem::Index(rest.parse().ok()?),
            _ => return None,
        })
    }

    /// An item's key from its key fields' values (missing ones left out).
    pub fn key(item: &Value, fields: &[String]) -> Elem {
        let mut keys = Map::new();
        for f in fields {
            if let Some(v) = item.get(f).filter(|v| !v.is_null()) {
                keys.insert(f.clone(), v.clone());
            }
        }
        // serde_json's Map keeps its keys sorted: the JSON is canonical.
        Elem::Key(Value::Object(keys).to_string())
    }
}

impl fmt::Display for Elem {
    /// As kube prints a path's step in a conflict: `.name`,
    /// `[name="web"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Elem::Field(name) => write!(f, ".{name}"),
            Elem::Key(k) => {
                let keys: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            Elem::Value(v) => write!(f, "[={v}]"),
            Elem::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path from the object's root.
pub type Path = Vec<Elem>;

/// Prints `path` as kube does (`.spec.template.spec.containers[name="web"].image`).
pub fn display(path: &[Elem]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A set of paths, as a tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    /// Whether the path leading here is in the set.
    pub member: bool,
    pub children: BTreeMap<Elem, Set>,
}

/// The most nested a fieldsV1 may be: deeper than any Kubernetes type.
const MAX_DEPTH: usize = 64;

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    /// Adds `path`.
    pub fn insert(&mut self, path: &[Elem]) {
        let mut node = self;
        for e in path {
            node = node.children.entry(e.clone()).or_default();
        }
        node.member = true;
    }

    /// The node at `path`, if the tree has one.
    pub fn at(&self, path: &[Elem]) -> Option<&Set> {
        let mut node = self;
        for e in path {
            node = node.children.get(e)?;
        }
        Some(node)
    }

    /// Whether `path` or anything under it is in the set.
    pub fn has_at_or_under(&self, path: &[Elem]) -> bool {
        self.at(path).is_some_and(|n| !n.is_empty())
    }

    /// Every path in `self` or `other`.
    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.union_in(other);
        out
    }

    pub fn union_in(&mut self, other: &Set) {
        self.member |= other.member;
        for (e, child) in &other.children {
            self.children.entry(e.clone()).or_default().union_in(child);
        }
    }

    /// The paths of `self` not in `other`.
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (e, child) in &self.children {
            let rest = match other.children.get(e) {
                Some(o) => child.difference(o),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(e.clone(), rest);
            }
        }
        out
    }

    /// The paths in both.
    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (e, child) in &self.children {
            if let Some(o) = other.children.get(e) {
                let both = child.intersection(o);
                if !both.is_empty() {
                    out.children.insert(e.clone(), both);
                }
            }
        }
        out
    }

    /// The set without anything at or under the top-level field `name`
    /// (or, with `keep`, only that).
    pub fn only_or_without(&self, name: &str, keep: bool) -> Set {
        let mut out = Set::default();
        for (e, child) in &self.children {
            if (e == &Elem::Field(name.to_string())) == keep {
                out.children.insert(e.clone(), child.clone());
            }
        }
        out
    }

    /// Every path in the set, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        if self.member && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (e, child) in &self.children {
            prefix.push(e.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The set as fieldsV1 JSON.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (e, child) in &self.children {
            m.insert(e.encode(), child.to_fields_v1());
        }
        Value::Object(m)
    }

    /// Reads fieldsV1 JSON; `None` when it is not well-formed.
    pub fn from_fields_v1(v: &Value) -> Option<Set> {
        let mut set = Self::read(v, 0)?;
        set.member = false;
        Some(set)
    }

    fn read(v: &Value, depth: usize) -> Option<Set> {
        if depth > MAX_DEPTH {
            return None;
        }
        let m = v.as_object()?;
        let mut set = Set {
            // A leaf (`{}`) is a member; so is a node with ".".
            member: m.is_empty() || m.contains_key("."),
            children: BTreeMap::new(),
        };
        for (k, child) in m {
            if k == "." {
                if !child.as_object().is_some_and(Map::is_empty) {
                    return None;
                }
                continue;
            }
            let e = Elem::decode(k)?;
            set.children.insert(e, Self::read(child, depth + 1)?);
        }
        Some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(s: &str) -> Elem {
        Elem::Field(s.into())
    }

    #[test]
    fn fields_v1_round_trips_and_sets_combine() {
        let v = json!({"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"web\"}": {".": {}, "f:image": {}, "f:name": {}}}}}}});
        let set = Set::from_fields_v1(&v).expect("well-formed");
        assert_eq!(set.to_fields_v1(), v);
        let web = Elem::key(&json!({"name": "web", "image": "x"}), &["name".to_string()]);
        assert_eq!(web, Elem::Key(r#"{"name":"web"}"#.into()));
        let image = vec![
            f("spec"),
            f("template"),
            f("spec"),
            f("containers"),
            web.clone(),
            f("image"),
        ];
        assert_eq!(
            display(&image),
            r#".spec.template.spec.containers[name="web"].image"#
        );
        let mut other = Set::default();
        other.insert(&image);
        other.insert(&[f("spec"), f("paused")]);
        assert_eq!(set.intersection(&other).paths(), vec![image.clone()]);
        let rest = set.difference(&other);
        assert!(rest.at(&image).is_none());
        assert!(
            rest.has_at_or_under(&[f("spec"), f("template")]),
            "the item and its name stay"
        );
        assert_eq!(set.union(&other).paths().len(), set.paths().len() + 1);
        // Not fieldsV1: refused, not guessed at.
        assert!(Set::from_fields_v1(&json!({"x:y": {}})).is_none());
        assert!(Set::from_fields_v1(&json!({".": {"f:a": {}}})).is_none());
        assert!(Set::from_fields_v1(&json!({"f:a": 1})).is_none());
    }
}
