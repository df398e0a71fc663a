//! The Kubernetes OpenAPI definitions of the kinds Weft serves, vendored
//! from kube-apiserver 1.33's document by scripts/k8s-openapi.py
//! (`controller/openapi/k8s.json`): one source for what server-side apply
//! needs to know of a type (which lists merge by key, as sets or whole;
//! which maps and structs are atomic) and for the OpenAPI documents served
//! to clients.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

pub mod documents;

static SOURCE: &str = include_str!("../../openapi/k8s.json");

/// The definitions, by name (`io.k8s.api.core.v1.Pod`), and the kinds
/// they describe.
pub struct Schemas {
    defs: Map<String, Value>,
    by_gvk: HashMap<(String, String, String), String>,
}

static SCHEMAS: LazyLock<Schemas> = LazyLock::new(|| {
    let mut doc: Value = serde_json::from_str(SOURCE).expect("controller/openapi/k8s.json parses");
    let Value::Object(defs) = doc["definitions"].take() else {
        panic!("controller/openapi/k8s.json has no definitions");
    };
    let mut by_gvk = HashMap::new();
    for (name, def) in &defs {
        for gvk in def["x-kubernetes-group-version-kind"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let part = |k: &str| gvk[k].as_str().unwrap_or_default().to_string();
            by_gvk.insert((part("group"), part("version"), part("kind")), name.clone());
        }
    }
    Schemas { defs, by_gvk }
});

/// The vendored definitions.
pub fn schemas() -> &'static Schemas {
    &SCHEMAS
}

/// How a list's items are told apart (`x-kubernetes-list-type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole; one owner.
    Atomic,
    /// Scalars, each its own field.
    Set,
    /// Objects identified by the values of these fields.
    Map(Vec<String>),
}

/// What a schema node is, as server-side apply walks it.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// A string, number, boolean, quantity, time, int-or-string.
    Scalar,
    /// Named fields (`properties`); `atomic` when owned and replaced whole.
    Struct {
        props: &'a Map<String, Value>,
        atomic: bool,
    },
    /// Keys of one value type (`additionalProperties`, as labels).
    Map { value: Node<'a>, atomic: bool },
    /// Items of one type; [`Node::list_type`] says how they merge.
    List { item: Node<'a> },
    /// No schema (RawExtension, unknown fields): maps are walked key by
    /// key, lists are atomic.
    Untyped,
}

/// A schema node: a definition or a property's schema.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    schemas: &'a Schemas,
    value: Option<&'a Value>,
}

impl Schemas {
    /// The schema of kind `kind` in `group`/`version`.
    pub fn kind(&self, group: &str, version: &str, kind: &str) -> Option<Node<'_>> {
        Some(self.definition(self.name_of(group, version, kind)?))
    }

    /// The name of the definition of kind `kind` in `group`/`version`.
    pub fn name_of(&self, group: &str, version: &str, kind: &str) -> Option<&str> {
        self.by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .map(String::as_str)
    }

    /// The definition `name`; an untyped node when there is none.
    pub fn definition(&self, name: &str) -> Node<'_> {
        Node {
            schemas: self,
            value: self.defs.get(name),
        }
    }

    /// An untyped node (no schema).
    pub fn untyped(&self) -> Node<'_> {
        Node {
            schemas: self,
            value: None,
        }
    }

    /// Every definition, by name.
    pub fn definitions(&self) -> &Map<String, Value> {
        &self.defs
    }

    /// The definition describing each (group, version, kind).
    pub fn kinds(&self) -> impl Iterator<Item = (&(String, String, String), &String)> {
        self.by_gvk.iter()
    }
}

impl std::fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Node({:?})", self.value.map(|v| v.to_string()))
    }
}

impl<'a> Node<'a> {
    /// The definition a `$ref` (or an `allOf` of one, as OpenAPI v3 wraps
    /// them) points at.
    fn resolved(&self) -> Option<&'a Value> {
        let mut v = self.value?;
        for _ in 0..4 {
            let target = v["$ref"]
                .as_str()
                .or_else(|| v["allOf"][0]["$ref"].as_str());
            match target.and_then(|r| r.rsplit('/').next()) {
                Some(name) => v = self.schemas.defs.get(name)?,
                None => break,
            }
        }
        Some(v)
    }

    fn child(&self, value: Option<&'a Value>) -> Node<'a> {
        Node {
            schemas: self.schemas,
            value,
        }
    }

    /// What this node is.
    pub fn shape(&self) -> Shape<'a> {
        let (Some(own), Some(def)) = (self.value, self.resolved()) else {
            return Shape::Untyped;
        };
        // `x-kubernetes-map-type` may sit on the property or on its type.
        let atomic = |v: &Value| v["x-kubernetes-map-type"] == "atomic";
        if let Some(props) = def["properties"].as_object() {
            return Shape::Struct {
                props,
                atomic: atomic(own) || atomic(def),
            };
        }
        if def["additionalProperties"].is_object() {
            return Shape::Map {
                value: self.child(def.get("additionalProperties")),
                atomic: atomic(own) || atomic(def),
            };
        }
        if def["type"] == "array" {
            return Shape::List {
                item: self.child(def.get("items")),
            };
        }
        match def["type"].as_str() {
            Some("object") => Shape::Untyped,
            Some(_) => Shape::Scalar,
            // IntOrString, Quantity: a format, no type; RawExtension has
            // neither properties nor type.
            None if def.get("format").is_some() => Shape::Scalar,
            None => Shape::Untyped,
        }
    }

    /// The schema of field `name` of a struct.
    pub fn field(&self, name: &str) -> Node<'a> {
        match self.shape() {
            Shape::Struct { props, .. } => self.child(props.get(name)),
            Shape::Map { value, .. } => value,
            _ => self.child(None),
        }
    }

    /// How this list's items are told apart: `x-kubernetes-list-type`,
    /// else the strategic merge patch's (a merge key makes it a map, merge
    /// without one a set), else atomic; as kube's conversion of its
    /// OpenAPI for server-side apply reads them.
    pub fn list_type(&self) -> ListType {
        let Some(own) = self.value else {
            return ListType::Atomic;
        };
        let keys = || -> Vec<String> {
            own["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        };
        match own["x-kubernetes-list-type"].as_str() {
            Some("map") => return ListType::Map(keys()),
            Some("set") => return ListType::Set,
            Some(_) => return ListType::Atomic,
            None => {}
        }
        let strategy = own["x-kubernetes-patch-strategy"]
            .as_str()
            .unwrap_or_default();
        if strategy.split(',').any(|s| s == "merge") {
            return match own["x-kubernetes-patch-merge-key"].as_str() {
                Some(key) => ListType::Map(vec![key.to_string()]),
                None => ListType::Set,
            };
        }
        ListType::Atomic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vendored_definitions_say_how_lists_and_maps_merge() {
        let s = schemas();
        let pod = s.kind("", "v1", "Pod").expect("Pod");
        let containers = pod.field("spec").field("containers");
        assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
        let Shape::List { item, .. } = containers.shape() else {
            panic!("containers is a list");
        };
        assert_eq!(
            item.field("ports").list_type(),
            ListType::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert_eq!(item.field("args").list_type(), ListType::Atomic);
        assert!(matches!(item.field("image").shape(), Shape::Scalar));
        assert_eq!(
            pod.field("metadata").field("finalizers").list_type(),
            ListType::Set
        );
        assert!(matches!(
            pod.field("metadata").field("labels").shape(),
            Shape::Map { atomic: false, .. }
        ));
        let deployment = s.kind("apps", "v1", "Deployment").expect("Deployment");
        assert!(matches!(
            deployment.field("spec").field("selector").shape(),
            Shape::Struct { atomic: true, .. }
        ));
        assert!(matches!(
            deployment.field("spec").field("strategy").shape(),
            Shape::Struct { atomic: false, .. }
        ));
        // Quantities and int-or-strings are scalars.
        assert!(matches!(
            deployment
                .field("spec")
                .field("strategy")
                .field("rollingUpdate")
                .field("maxSurge")
                .shape(),
            Shape::Scalar
        ));
        assert!(
            s.kind("rbac.authorization.k8s.io", "v1", "ClusterRole")
                .is_some()
        );
    }
}
