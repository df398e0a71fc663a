//! What a kind means to the API server, in the manner of kube-apiserver's
//! per-kind strategies (`pkg/registry/*/strategy.go`): the [`Kind`] trait,
//! implemented once per served kind in this folder's other files, on the
//! k8s-openapi type itself. The generic write path in [`super::Registry`]
//! calls it; [`DynKind`] is the same, with JSON at its edges, for the HTTP
//! handlers, and [`KINDS`] lists every served kind.
//!
//! Adding a kind: a file here with `impl Kind for ...`, its entry in
//! [`KINDS`] (and in `weft_api::resources::RESOURCES`), and its table
//! columns in `apiserver::table`.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use weft_api::error::{ApiError, Cause};
use weft_api::resources::{self, Resource};
use weft_api::validate::{FieldValidation, decode_object};

use super::{Registry, Write};
use crate::store::Txn;

/// Which name rule `metadata.name` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (Namespaces: their names become DNS labels).
    Label,
    /// A DNS-1035 label, one that starts with a letter (Services).
    Label1035,
    /// Any name that can be one segment of a URL path: not `.` or `..`,
    /// no `/` or `%` (RBAC's roles and bindings, `system:discovery`).
    PathSegment,
}

/// A served kind: the k8s-openapi type with what the API server does to it.
#[async_trait]
pub trait Kind:
    kube::Resource<DynamicType = ()>
    + k8s_openapi::Resource
    + Serialize
    + DeserializeOwned
    + Clone
    + PartialEq
    + Default
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The kind's `spec` (`()` for kinds without one).
    type Spec: PartialEq + Send + Sync;
    /// The kind's `status` (`()` for kinds without one).
    type Status: PartialEq + Clone + Send + Sync;

    /// The spec, if the object has one.
    fn spec(&self) -> Option<&Self::Spec>;
    /// The status, if the object has one.
    fn status(&self) -> Option<&Self::Status>;
    /// Replaces the status (a kind without one ignores it).
    fn set_status(&mut self, status: Option<Self::Status>);

    /// Which rule the name follows.
    const NAME: NameRule = NameRule::Subdomain;

    /// Where the kind is served.
    fn resource() -> &'static Resource {
        resources::by_kind(
            <Self as k8s_openapi::Resource>::API_VERSION,
            <Self as k8s_openapi::Resource>::KIND,
        )
        .expect("every Kind is served")
    }

    /// kube-apiserver's `PrepareForCreate`: what the server sets on a new
    /// object whatever the client sent (an initial status).
    fn prepare_for_create(&mut self) {}

    /// The defaults kube-apiserver fills (on create and on update).
    fn default_fields(&mut self) {}

    /// What is wrong with the object (its name is checked already).
    fn validate(&self) -> Vec<Cause> {
        Vec::new()
    }

    /// What an update may not change.
    fn validate_update(&self, _old: &Self) -> Vec<Cause> {
        Vec::new()
    }

    /// What a status update (the status subresource) may not change.
    fn validate_status_update(&self, _old: &Self) -> Vec<Cause> {
        Vec::new()
    }

    /// kube's NodeRestriction admission: whether node `node`'s agent may
    /// write this (created, or updated from `old`). Nodes' writes are
    /// authorized per verb and name first; this sees the objects.
    async fn admit_node(
        &self,
        _old: Option<&Self>,
        _node: &str,
        _reg: &Registry,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Mutating admission on create, after defaulting and before
    /// validation (a pod's LimitRange defaults and bounds).
    async fn admit(&mut self, _reg: &Registry) -> Result<(), ApiError> {
        Ok(())
    }

    /// What a create also claims in the same transaction (addresses,
    /// blocks, ports), filling them into the object.
    async fn on_create(&mut self, _reg: &Registry, _txn: &mut Txn) -> Result<(), ApiError> {
        Ok(())
    }

    /// What an update keeps of `old` and also claims or frees.
    async fn on_update(
        &mut self,
        _old: &Self,
        _reg: &Registry,
        _txn: &mut Txn,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// What a delete also frees, in the transaction deleting the object.
    fn on_delete(&self, _reg: &Registry, _txn: &mut Txn) {}

    /// Whether deleting the object waits for something besides its
    /// `metadata.finalizers` (a Namespace's `spec.finalizers`).
    fn has_spec_finalizers(&self) -> bool {
        false
    }

    /// The grace period a delete asking for `grace` gives this object, when
    /// it must be stopped before it goes (a pod running on a node); `None`
    /// deletes at once.
    fn graceful_deletion(&self, _grace: Option<i64>) -> Option<i64> {
        None
    }

    /// What marking the object for deletion also changes (a Namespace's
    /// phase).
    fn on_terminating(&mut self) {}

    /// The node the object is bound to (a pod's), which the controllers'
    /// cache indexes.
    fn node_name(&self) -> Option<&str> {
        None
    }
}

/// Implements the spec and status accessors of [`Kind`] for a type with
/// those fields (or without, for `()`).
macro_rules! kind_fields {
    (spec: $spec:ty, status: $status:ty) => {
        type Spec = $spec;
        type Status = $status;
        fn spec(&self) -> Option<&Self::Spec> {
            self.spec.as_ref()
        }
        fn status(&self) -> Option<&Self::Status> {
            self.status.as_ref()
        }
        fn set_status(&mut self, status: Option<Self::Status>) {
            self.status = status;
        }
    };
    (spec: $spec:ty) => {
        type Spec = $spec;
        type Status = ();
        fn spec(&self) -> Option<&Self::Spec> {
            self.spec.as_ref()
        }
        fn status(&self) -> Option<&Self::Status> {
            None
        }
        fn set_status(&mut self, _status: Option<Self::Status>) {}
    };
    () => {
        type Spec = ();
        type Status = ();
        fn spec(&self) -> Option<&Self::Spec> {
            None
        }
        fn status(&self) -> Option<&Self::Status> {
            None
        }
        fn set_status(&mut self, _status: Option<Self::Status>) {}
    };
}
pub(crate) use kind_fields;

/// Why `name` cannot be one segment of a URL path (kube's
/// `ValidatePathSegmentName`).
pub(super) fn path_segment_error(name: &str) -> Option<String> {
    if name == "." || name == ".." {
        return Some(format!("may not be '{name}'"));
    }
    ["/", "%"]
        .iter()
        .find(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
}

/// The checks every kind gets: its name.
pub(super) fn validate_meta<K: Kind>(obj: &K) -> Vec<Cause> {
    let mut out = Vec::new();
    let name = obj.meta().name.as_deref().unwrap_or_default();
    if name.is_empty() {
        out.push(Cause::required("metadata.name"));
    } else {
        let err = match K::NAME {
            NameRule::Label => weft_api::meta::dns_label_error(name),
            NameRule::Label1035 => weft_api::meta::dns_1035_label_error(name),
            NameRule::Subdomain => weft_api::meta::dns_subdomain_error(name),
            NameRule::PathSegment => path_segment_error(name),
        };
        if let Some(e) = err {
            out.push(Cause::invalid("metadata.name", name, e));
        }
    }
    super::validation::check_labels(&mut out, "metadata.labels", obj.meta().labels.as_ref());
    super::validation::check_annotations(&mut out, obj.meta().annotations.as_ref());
    out
}

/// A kind, with JSON at its edges: what the HTTP handlers call.
#[async_trait]
pub trait DynKind: Send + Sync {
    /// Where it is served.
    fn resource(&self) -> &'static Resource;

    /// Decodes a request body as the kind, checking its fields (unknown
    /// ones as `fv` says).
    ///
    /// # Errors
    /// A body that is not the kind, or unknown fields `fv` refuses.
    fn decode(&self, body: Value, fv: &FieldValidation) -> Result<Decoded, ApiError>;

    /// Creates the decoded object.
    async fn create(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        obj: Decoded,
    ) -> Result<Value, ApiError>;

    /// Replaces the object (or its status) with the decoded one.
    async fn update(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        obj: Decoded,
        write: Write,
    ) -> Result<Value, ApiError>;

    /// Reads, changes with `f` (a patch, a scale) and writes back, retrying
    /// on conflicts.
    async fn modify(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        write: Write,
        fv: &FieldValidation,
        f: &mut (dyn FnMut(Value) -> Result<Value, ApiError> + Send),
    ) -> Result<(Value, Vec<String>), ApiError>;

    /// Deletes the object (see [`Registry::delete`]).
    async fn delete(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        precondition: (Option<String>, Option<i64>),
        grace: Option<i64>,
    ) -> Result<Value, ApiError>;

    /// Takes the ownerReferences to `uid` off the object.
    async fn drop_owner(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Result<(), ApiError>;
}

/// A request body decoded as its kind (which the kind's [`DynKind`] knows).
pub struct Decoded {
    object: Box<dyn std::any::Any + Send + Sync>,
    /// `metadata.name`, for the handler's checks.
    pub name: String,
    /// What to tell the client about its body (unknown fields).
    pub warnings: Vec<String>,
}

impl Decoded {
    /// The decoded object, if it is a `K`.
    #[must_use]
    pub fn peek<K: 'static>(&self) -> Option<&K> {
        self.object.downcast_ref::<K>()
    }

    fn take<K: Kind>(self) -> Result<K, ApiError> {
        self.object
            .downcast::<K>()
            .map(|k| *k)
            .map_err(|_| ApiError::internal("a body decoded as another kind"))
    }
}

/// [`DynKind`] for one [`Kind`].
pub struct Typed<K>(std::marker::PhantomData<fn() -> K>);

impl<K> Typed<K> {
    /// The kind `K`.
    pub const KIND: Self = Self(std::marker::PhantomData);
}

fn to_json<K: Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("k8s-openapi objects encode")
}

/// Decodes a body as `K`, checking its fields as `fv` says.
pub fn decode<K: Kind>(body: Value, fv: &FieldValidation) -> Result<(K, Vec<String>), ApiError> {
    let res = K::resource();
    let decoded = decode_object::<K>(&res.api_version(), res.kind, body)?;
    let warnings = fv.check(res.kind, &decoded.unknown)?;
    Ok((decoded.object, warnings))
}

#[async_trait]
impl<K: Kind> DynKind for Typed<K> {
    fn resource(&self) -> &'static Resource {
        K::resource()
    }

    fn decode(&self, body: Value, fv: &FieldValidation) -> Result<Decoded, ApiError> {
        let (obj, warnings) = decode::<K>(body, fv)?;
        Ok(Decoded {
            name: obj.meta().name.clone().unwrap_or_default(),
            object: Box::new(obj),
            warnings,
        })
    }

    async fn create(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        obj: Decoded,
    ) -> Result<Value, ApiError> {
        let created = reg.create(ns, obj.take::<K>()?).await?;
        Ok(to_json(&created))
    }

    async fn update(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        obj: Decoded,
        write: Write,
    ) -> Result<Value, ApiError> {
        let updated = reg.update(ns, name, obj.take::<K>()?, write).await?;
        Ok(to_json(&updated))
    }

    async fn modify(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        write: Write,
        fv: &FieldValidation,
        f: &mut (dyn FnMut(Value) -> Result<Value, ApiError> + Send),
    ) -> Result<(Value, Vec<String>), ApiError> {
        let mut warnings = Vec::new();
        let updated = reg
            .modify::<K>(ns, name, write, |obj| {
                let (obj, w) = decode::<K>(f(to_json(&obj))?, fv)?;
                warnings = w;
                Ok(obj)
            })
            .await?;
        Ok((to_json(&updated), warnings))
    }

    async fn delete(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        precondition: (Option<String>, Option<i64>),
        grace: Option<i64>,
    ) -> Result<Value, ApiError> {
        reg.delete::<K>(ns, name, precondition, grace)
            .await
            .map(|o| to_json(&o))
    }

    async fn drop_owner(
        &self,
        reg: &Registry,
        ns: Option<&str>,
        name: &str,
        uid: &str,
    ) -> Result<(), ApiError> {
        reg.modify::<K>(ns, name, Write::Update, |mut o| {
            let meta = o.meta_mut();
            if let Some(refs) = meta.owner_references.as_mut() {
                refs.retain(|r| r.uid != uid);
            }
            // No owner left: none listed, as kube-apiserver stores it.
            if meta.owner_references.as_ref().is_some_and(Vec::is_empty) {
                meta.owner_references = None;
            }
            Ok(o)
        })
        .await
        .map(drop)
    }
}

/// Calls the macro `$m` with every served kind's type: the one list of
/// them, from which [`KINDS`] and the controllers' cache are both made.
macro_rules! for_each_kind {
    ($m:ident) => {
        $m! {
            k8s_openapi::api::core::v1::Namespace,
            k8s_openapi::api::core::v1::Pod,
            k8s_openapi::api::core::v1::Service,
            k8s_openapi::api::core::v1::Endpoints,
            k8s_openapi::api::core::v1::Node,
            k8s_openapi::api::core::v1::Event,
            k8s_openapi::api::core::v1::ConfigMap,
            k8s_openapi::api::core::v1::Secret,
            k8s_openapi::api::core::v1::ServiceAccount,
            k8s_openapi::api::core::v1::LimitRange,
            k8s_openapi::api::core::v1::ResourceQuota,
            k8s_openapi::api::core::v1::PersistentVolume,
            k8s_openapi::api::core::v1::PersistentVolumeClaim,
            k8s_openapi::api::storage::v1::StorageClass,
            k8s_openapi::api::discovery::v1::EndpointSlice,
            k8s_openapi::api::coordination::v1::Lease,
            k8s_openapi::api::networking::v1::NetworkPolicy,
            k8s_openapi::api::apps::v1::Deployment,
            k8s_openapi::api::apps::v1::ReplicaSet,
            k8s_openapi::api::apps::v1::DaemonSet,
            k8s_openapi::api::apps::v1::StatefulSet,
            k8s_openapi::api::apps::v1::ControllerRevision,
            k8s_openapi::api::core::v1::ReplicationController,
            k8s_openapi::api::batch::v1::Job,
            k8s_openapi::api::batch::v1::CronJob,
            k8s_openapi::api::policy::v1::PodDisruptionBudget,
            k8s_openapi::api::rbac::v1::Role,
            k8s_openapi::api::rbac::v1::RoleBinding,
            k8s_openapi::api::rbac::v1::ClusterRole,
            k8s_openapi::api::rbac::v1::ClusterRoleBinding
        }
    };
}
pub(crate) use for_each_kind;

macro_rules! dyn_kinds {
    ($($k:ty),*) => {
        &[$(&Typed::<$k>::KIND),*]
    };
}

/// Every served kind.
pub static KINDS: &[&dyn DynKind] = for_each_kind!(dyn_kinds);

/// The kind served as `res`.
pub fn kind_of(res: &Resource) -> &'static dyn DynKind {
    KINDS
        .iter()
        .copied()
        .find(|k| k.resource() == res)
        .expect("every served resource is a Kind")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_resource_is_a_kind() {
        for r in resources::RESOURCES {
            assert_eq!(kind_of(r).resource(), r);
        }
        assert_eq!(KINDS.len(), resources::RESOURCES.len());
    }
}
