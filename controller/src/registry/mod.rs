//! The API's write semantics over the store: what happens to an object on
//! create, update, status update and delete, whoever asks (an HTTP client or
//! one of the controller's own loops).
//!
//! The generic compare-and-swap write path is here, once for every kind;
//! what a kind means (defaults, validation, immutable fields, what a write
//! also claims or frees) is its [`Kind`] implementation, one file per kind
//! (or group of kinds) in this folder, in the manner of kube-apiserver's
//! strategies. Every write is one store transaction that also carries what
//! the write allocates or frees (IPs, node blocks, node ports), so nothing is
//! ever half-stored.

mod apps;
mod batch;
mod config;
mod core;
mod kind;
mod namespace;
mod network_policy;
mod node;
pub mod object;
mod pod;
pub mod pod_security;
mod policy;
pub mod quota;
pub mod rbac;
mod service;
pub mod serviceaccount;
pub mod storage;
pub mod validation;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use serde_json::Value;
use weft_api::error::ApiError;
use weft_api::meta::new_uid;
use weft_api::resources::{self, Resource};
use weft_api::validate::FieldValidation;

pub(crate) use kind::for_each_kind;
pub use kind::{Decoded, DynKind, KINDS, Kind, NameRule, kind_of};
pub use object::{
    decode_stored, decode_typed, encode, parse_rv, revision_of, set_rv, splice_rv, store_error,
};
pub use pod::{DELETION_BY_POD_GC, DELETION_BY_TAINT, Disruption, EVICTION_BY_API, qos_class};
pub use policy::selects_pod;

use crate::ipam::Ipam;
use crate::store::{Compare, Op, Store, Txn, TxnOutcome};

/// How often a write retries when something it allocates was taken by a
/// concurrent writer.
const ALLOCATION_RETRIES: usize = 64;

/// What a write is: create, update of the object or of its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// A new object.
    Create,
    /// The object (its status is kept as it is).
    Update,
    /// Its status subresource (nothing else changes).
    Status,
}

/// The API's writes, over the store.
#[derive(Clone)]
pub struct Registry {
    /// Where objects live.
    pub store: Arc<dyn Store>,
    /// The address and port ranges writes allocate from.
    pub ipam: Arc<Ipam>,
    /// Check and answer as usual, but write nothing (`dryRun=All`).
    pub dry_run: bool,
    /// The largest object stored, encoded, in bytes.
    pub max_object: usize,
    /// The node whose agent writes through this registry: what it writes is
    /// admitted by [`Kind::admit_node`] (kube's NodeRestriction).
    pub node: Option<String>,
    /// The controllers' cache, once it runs: a create finds its namespace
    /// there first (see [`Registry::open_namespace`]).
    pub namespaces: Option<Arc<dyn Namespaces>>,
    /// The Pod Security level of namespaces without an `enforce` label
    /// (`--pod-security-default`).
    pub pod_security_default: pod_security::Level,
    /// The cluster CA (PEM), published in each namespace for pods.
    pub root_ca: Option<Arc<str>>,
    /// Who writes, for `metadata.managedFields`.
    pub owner: FieldOwner,
}

/// Who writes through a registry, for `metadata.managedFields`
/// (`crate::fieldmanager`).
#[derive(Clone, Debug)]
pub struct FieldOwner {
    /// The manager's name.
    pub name: Arc<str>,
    /// The subresource written (`scale`), when the write is not `Write::Status`.
    pub subresource: &'static str,
    /// The write is an apply whose managedFields are already made: they
    /// are stored as given.
    pub applied: bool,
}

impl FieldOwner {
    /// The manager of the controllers' own writes.
    pub fn controller() -> Self {
        Self {
            name: Arc::from(CONTROLLER_MANAGER),
            subresource: "",
            applied: false,
        }
    }
}

/// The manager name of writes the controller makes itself.
pub const CONTROLLER_MANAGER: &str = "weft-controller";

/// Namespaces as a cache holds them (the controllers' cache implements it):
/// a copy that may lag the store.
pub trait Namespaces: Send + Sync {
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>>;
    /// The pods bound to `node`, from the node index.
    fn pods_on_node(&self, node: &str) -> Vec<Arc<k8s_openapi::api::core::v1::Pod>>;
    /// The ServiceAccount `ns/name`.
    fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<Arc<k8s_openapi::api::core::v1::ServiceAccount>>;
    /// Whether the ConfigMap `ns/name` exists.
    fn has_config_map(&self, ns: &str, name: &str) -> bool;
}

/// Deletes a deletecollection (or a namespace's deletion) runs at once:
/// enough for the store to commit them in groups.
pub const COLLECTION_WORKERS: usize = 32;

/// The default largest stored object: etcd's default request limit, as in
/// Kubernetes.
pub const MAX_OBJECT: usize = 1536 * 1024;

/// What an object being deleted may hold beyond the largest stored object.
const DELETION_MARK: usize = 1024;

/// `res`'s namespace for an object: the given one (or `default`) when the
/// kind is namespaced, none otherwise.
fn scope(res: &Resource, ns: Option<&str>) -> Option<String> {
    res.namespaced.then(|| ns.unwrap_or("default").to_string())
}

fn invalid<K: Kind>(name: &str, causes: Vec<weft_api::Cause>) -> ApiError {
    let res = K::resource();
    ApiError::invalid(res.kind, res.group, name, causes)
}

fn conflict<K: Kind>(name: &str, why: impl std::fmt::Display) -> ApiError {
    let res = K::resource();
    ApiError::conflict(res.plural, res.group, name, why)
}

fn not_found<K: Kind>(name: &str) -> ApiError {
    let res = K::resource();
    ApiError::not_found(res.plural, res.group, name)
}

impl Registry {
    /// A registry over `store`, allocating from `ipam`'s ranges.
    pub fn new(store: Arc<dyn Store>, ipam: Ipam) -> Self {
        Self {
            store,
            ipam: Arc::new(ipam),
            dry_run: false,
            max_object: MAX_OBJECT,
            node: None,
            namespaces: None,
            pod_security_default: pod_security::Level::Privileged,
            root_ca: None,
            owner: FieldOwner::controller(),
        }
    }

    /// The same registry, writing as field manager `name` (on
    /// `subresource`, for one that is not `status`).
    pub fn managed_by(&self, name: &str, subresource: &'static str) -> Self {
        Self {
            owner: FieldOwner {
                name: Arc::from(name),
                subresource,
                applied: false,
            },
            ..self.clone()
        }
    }

    /// The same registry, storing the managedFields an apply made.
    pub fn applying(&self) -> Self {
        Self {
            owner: FieldOwner {
                applied: true,
                ..self.owner.clone()
            },
            ..self.clone()
        }
    }

    /// Records `new`'s write (from `old`; none for a create) in its
    /// managedFields, as an Update by this registry's owner; an apply's
    /// are stored as made. Given managedFields (a client may set them)
    /// must be well-formed (422).
    fn track_fields<K: Kind>(
        &self,
        old: Option<&K>,
        new: &mut K,
        write: Write,
    ) -> Result<(), ApiError> {
        let res = K::resource();
        let name = new.meta().name.clone().unwrap_or_default();
        let mut managed = crate::fieldmanager::Managed::decode(new.meta().managed_fields.as_ref())
            .map_err(|causes| invalid::<K>(&name, causes))?;
        if self.owner.applied {
            new.meta_mut().managed_fields = managed.encode();
            return Ok(());
        }
        let Some(node) = crate::openapi::schemas().kind(res.group, res.version, res.kind) else {
            return Ok(());
        };
        let who = crate::fieldmanager::Manager {
            name: self.owner.name.to_string(),
            apply: false,
            api_version: res.api_version(),
            subresource: if write == Write::Status {
                "status".into()
            } else {
                self.owner.subresource.into()
            },
        };
        let json = |o: &K| serde_json::to_value(o).map_err(ApiError::internal);
        let old = old.map(json).transpose()?;
        let now = json(new)?;
        crate::fieldmanager::update(
            &mut managed,
            old.as_ref(),
            &now,
            node,
            &who,
            res.has_status(),
        );
        new.meta_mut().managed_fields = managed.encode();
        Ok(())
    }

    /// The same registry, for writes by node `node`'s agent.
    pub fn as_node(&self, node: &str) -> Self {
        Self {
            node: Some(node.to_string()),
            ..self.clone()
        }
    }

    /// The same registry, writing nothing.
    pub fn dry(&self) -> Self {
        Self {
            dry_run: true,
            ..self.clone()
        }
    }

    // --- The read path of the HTTP handlers: JSON straight from the store.

    /// The object as JSON and its revision, if it exists.
    pub async fn get_json(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<(Value, i64)>, ApiError> {
        let kv = self
            .store
            .get(&res.key(ns, name))
            .await
            .map_err(store_error)?;
        kv.map(|kv| Ok((decode_stored(&kv)?, kv.mod_revision)))
            .transpose()
    }

    /// Objects of `res` in `ns` (all namespaces for `None`) that pass
    /// `keep`, as JSON, and the revision the list was read at.
    pub async fn list_json(
        &self,
        res: &Resource,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<(Vec<Value>, i64), ApiError> {
        let (kvs, rev) = self
            .store
            .list(&res.list_prefix(ns))
            .await
            .map_err(store_error)?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let obj = decode_stored(kv)?;
            if keep(&obj) {
                out.push(obj);
            }
        }
        Ok((out, rev))
    }

    // --- Typed objects.

    /// The object and its revision, if it exists.
    pub async fn find<K: Kind>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<(K, i64)>, ApiError> {
        let res = K::resource();
        let ns = scope(res, ns);
        let kv = self
            .store
            .get(&res.key(ns.as_deref(), name))
            .await
            .map_err(store_error)?;
        kv.map(|kv| Ok((decode_typed::<K>(&kv)?, kv.mod_revision)))
            .transpose()
    }

    /// The object (404 when it does not exist).
    pub async fn get<K: Kind>(&self, ns: Option<&str>, name: &str) -> Result<K, ApiError> {
        self.find::<K>(ns, name)
            .await?
            .map(|(o, _)| o)
            .ok_or_else(|| not_found::<K>(name))
    }

    /// Creates `obj` in `ns`.
    pub async fn create<K: Kind>(&self, ns: Option<&str>, mut obj: K) -> Result<K, ApiError> {
        let res = K::resource();
        let ns = scope(res, ns);
        {
            let meta = obj.meta_mut();
            match (&ns, meta.namespace.as_deref()) {
                (Some(ns), Some(given)) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                    )));
                }
                _ => meta.namespace.clone_from(&ns),
            }
            if meta.name.as_deref().unwrap_or_default().is_empty()
                && let Some(prefix) = meta.generate_name.as_deref().filter(|p| !p.is_empty())
            {
                meta.name = Some(format!("{prefix}{}", object::random_suffix()));
            }
            meta.uid = Some(new_uid());
            meta.creation_timestamp = Some(weft_api::meta::now_time());
            meta.resource_version = None;
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            meta.self_link = None;
        }
        if obj.spec().is_some() {
            obj.meta_mut().generation = Some(1);
        }
        obj.prepare_for_create();
        obj.default_fields();
        obj.admit(self).await?;
        let name = obj.meta().name.clone().unwrap_or_default();
        let mut causes = kind::validate_meta(&obj);
        causes.extend(obj.validate());
        if !causes.is_empty() {
            return Err(invalid::<K>(&name, causes));
        }
        if let Some(node) = &self.node {
            obj.admit_node(None, node, self).await?;
        }
        self.track_fields(None, &mut obj, Write::Create)?;
        let key = res.key(ns.as_deref(), &name);
        for attempt in 0..ALLOCATION_RETRIES {
            let mut obj = obj.clone();
            let mut txn = Txn::new().when(Compare::absent(&key));
            if let Some(ns) = &ns {
                txn = txn.when(self.open_namespace(ns, attempt > 0).await?);
            }
            obj.on_create(self, &mut txn).await?;
            if let Some(ns) = &ns {
                let json = serde_json::to_value(&obj).map_err(ApiError::internal)?;
                let what = format!("{} \"{name}\"", res.plural);
                quota::charge(self, res, ns, &json, None, &what, &mut txn).await?;
            }
            txn = txn.then(Op::put(&key, encode(&obj)));
            self.check_size(&txn, &obj)?;
            if self.dry_run {
                if self.store.get(&key).await.map_err(store_error)?.is_some() {
                    return Err(ApiError::already_exists(res.plural, res.group, &name));
                }
                return Ok(obj);
            }
            if self.commit(txn, &mut obj).await? {
                return Ok(obj);
            }
            if self.store.get(&key).await.map_err(store_error)?.is_some() {
                return Err(ApiError::already_exists(res.plural, res.group, &name));
            }
            // Something allocated was taken meanwhile: try again.
        }
        Err(conflict::<K>(
            &name,
            "too many concurrent allocations; try again",
        ))
    }

    /// Namespace `ns`, open for new content (404 when it does not exist,
    /// 403 while it is being deleted), as a compare for the create's
    /// transaction: the create lands only if the namespace has not changed
    /// since, so none slips in after its deletion began. The namespace comes
    /// from the controllers' cache unless `fresh` (a retry) or the cache
    /// does not have it yet, as kube-apiserver's NamespaceLifecycle admission
    /// reads its informer; a stale copy only costs a retry.
    async fn open_namespace(&self, ns: &str, fresh: bool) -> Result<Compare, ApiError> {
        let cached = if fresh {
            None
        } else {
            self.namespaces.as_ref().and_then(|c| c.namespace(ns))
        };
        let (obj, rev) = match cached {
            // A terminating copy may be stale (the namespace made again):
            // the store decides.
            Some(obj) if obj.metadata.deletion_timestamp.is_none() => {
                let rev = revision_of(obj.as_ref());
                (obj, rev)
            }
            _ => match self.find::<Namespace>(None, ns).await? {
                Some((obj, rev)) => (Arc::new(obj), rev),
                None => return Err(ApiError::not_found("namespaces", "", ns)),
            },
        };
        if obj.metadata.deletion_timestamp.is_some() {
            return Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(Compare::at(Namespace::resource().key(None, ns), rev))
    }

    /// Replaces the object (or, for `Write::Status`, its status) with `new`.
    /// `new`'s resourceVersion, when set, must be the current one.
    pub async fn update<K: Kind>(
        &self,
        ns: Option<&str>,
        name: &str,
        new: K,
        write: Write,
    ) -> Result<K, ApiError> {
        let res = K::resource();
        let ns = scope(res, ns);
        let key = res.key(ns.as_deref(), name);
        let wanted_rv = new
            .meta()
            .resource_version
            .as_deref()
            .map(parse_rv)
            .transpose()?;
        for _ in 0..ALLOCATION_RETRIES {
            let Some((old, rev)) = self.find::<K>(ns.as_deref(), name).await? else {
                return Err(not_found::<K>(name));
            };
            if let Some(wanted) = wanted_rv
                && wanted != rev
            {
                return Err(conflict::<K>(
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let mut obj = prepare_update(
                &old,
                new.clone(),
                write,
                name,
                ns.as_deref(),
                self.owner.applied,
            )?;
            if let Some(node) = &self.node {
                obj.admit_node(Some(&old), node, self).await?;
            }
            if obj == old {
                // Nothing changed: no write, no event, same resourceVersion.
                return Ok(old);
            }
            self.track_fields(Some(&old), &mut obj, write)?;
            let mut txn = Txn::new().when(Compare::at(&key, rev));
            obj.on_update(&old, self, &mut txn).await?;
            // What an update adds is charged, as kube's quota admission
            // does: a Service's type changed to NodePort or LoadBalancer.
            // (A pod's resources, a claim's request and the other counted
            // objects cannot grow on update.)
            if let Some(ns) = &ns
                && write == Write::Update
                && quota::grows_on_update(res)
            {
                let (json, was) = (
                    serde_json::to_value(&obj).map_err(ApiError::internal)?,
                    serde_json::to_value(&old).map_err(ApiError::internal)?,
                );
                let what = format!("{} \"{name}\"", res.plural);
                quota::charge(self, res, ns, &json, Some(&was), &what, &mut txn).await?;
            }
            // Finalizers gone from an object being deleted: it goes now,
            // unless its node is still stopping it (a pod in its grace
            // period goes when the node confirms, as without finalizers).
            let finished = obj.meta().deletion_timestamp.is_some()
                && obj.meta().finalizers.as_ref().is_none_or(Vec::is_empty)
                && !obj.has_spec_finalizers()
                && obj.meta().deletion_grace_period_seconds.unwrap_or(0) == 0;
            if finished {
                old.on_delete(self, &mut txn);
                txn = txn.then(Op::delete(&key));
            } else {
                txn = txn.then(Op::put(&key, encode(&obj)));
            }
            self.check_size(&txn, &obj)?;
            if self.dry_run {
                return Ok(obj);
            }
            if self.commit(txn, &mut obj).await? {
                return Ok(obj);
            }
            let now = self.store.get(&key).await.map_err(store_error)?;
            if now.map(|kv| kv.mod_revision) != Some(rev) && wanted_rv.is_some() {
                return Err(conflict::<K>(
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            // Changed underneath an unconditional update, or an allocation
            // was taken: read again and retry.
        }
        Err(conflict::<K>(
            name,
            "too many concurrent writers; try again",
        ))
    }

    /// Reads, changes with `f` and writes back, retrying on conflicts: the
    /// read-modify-write of controllers and of patches.
    pub async fn modify<K: Kind>(
        &self,
        ns: Option<&str>,
        name: &str,
        write: Write,
        mut f: impl FnMut(K) -> Result<K, ApiError> + Send,
    ) -> Result<K, ApiError> {
        let mut last = None;
        for _ in 0..ALLOCATION_RETRIES {
            let old = self.get::<K>(ns, name).await?;
            let rv = old.meta().resource_version.clone();
            let mut new = f(old)?;
            new.meta_mut().resource_version = rv;
            match self.update(ns, name, new, write).await {
                Err(e) if e.reason == "Conflict" => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| conflict::<K>(name, "too many concurrent writers")))
    }

    /// Deletes the object; with finalizers it is only marked for deletion.
    /// `precondition` is (uid, resourceVersion) from DeleteOptions. An
    /// object that must be stopped first (a pod running on a node) is only
    /// marked too, with a grace period (see [`Kind::graceful_deletion`]):
    /// `grace` None takes the object's own, 0 deletes at once.
    pub async fn delete<K: Kind>(
        &self,
        ns: Option<&str>,
        name: &str,
        precondition: (Option<String>, Option<i64>),
        grace: Option<i64>,
    ) -> Result<K, ApiError> {
        let res = K::resource();
        let ns = scope(res, ns);
        let key = res.key(ns.as_deref(), name);
        loop {
            let Some((mut obj, rev)) = self.find::<K>(ns.as_deref(), name).await? else {
                return Err(not_found::<K>(name));
            };
            if let Some(uid) = &precondition.0
                && obj.meta().uid.as_deref() != Some(uid)
            {
                return Err(conflict::<K>(
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        obj.meta().uid.as_deref().unwrap_or_default()
                    ),
                ));
            }
            if let Some(want) = precondition.1
                && want != rev
            {
                return Err(conflict::<K>(
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            let has_finalizers = obj
                .meta()
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
                || obj.has_spec_finalizers();
            let mut txn = Txn::new().when(Compare::at(&key, rev));
            if let Some(secs) = obj.graceful_deletion(grace) {
                if obj.meta().deletion_timestamp.is_some() {
                    return Ok(obj); // already terminating
                }
                let at = std::time::SystemTime::now()
                    + std::time::Duration::from_secs(secs.unsigned_abs());
                obj.meta_mut().deletion_timestamp = Some(weft_api::meta::time_at(at));
                obj.meta_mut().deletion_grace_period_seconds = Some(secs);
                txn = txn.then(Op::put(&key, encode(&obj)));
            } else if has_finalizers {
                if obj.meta().deletion_timestamp.is_some() {
                    if obj.meta().deletion_grace_period_seconds.unwrap_or(0) == 0 {
                        return Ok(obj);
                    }
                    // Its node has stopped it (or the grace is cut short):
                    // only the finalizers hold it now.
                    obj.meta_mut().deletion_grace_period_seconds = Some(0);
                    txn = txn.then(Op::put(&key, encode(&obj)));
                    self.check_size(&txn, &obj)?;
                    if self.dry_run || self.commit(txn, &mut obj).await? {
                        return Ok(obj);
                    }
                    continue;
                }
                obj.meta_mut().deletion_timestamp = Some(weft_api::meta::now_time());
                obj.meta_mut().deletion_grace_period_seconds = Some(0);
                obj.on_terminating();
                txn = txn.then(Op::put(&key, encode(&obj)));
            } else {
                obj.on_delete(self, &mut txn);
                txn = txn.then(Op::delete(&key));
            }
            self.check_size(&txn, &obj)?;
            if self.dry_run {
                return Ok(obj);
            }
            if self.commit(txn, &mut obj).await? {
                return Ok(obj);
            }
        }
    }

    /// Applies `txn` and, when it applies, gives `obj` its revision as
    /// resourceVersion. False: a compare failed and nothing was written.
    pub(crate) async fn commit<K: Kind>(&self, txn: Txn, obj: &mut K) -> Result<bool, ApiError> {
        self.check_size(&txn, obj)?;
        match self.store.txn(txn).await.map_err(store_error)? {
            TxnOutcome::Applied { revision } => {
                obj.meta_mut().resource_version = Some(revision.to_string());
                Ok(true)
            }
            TxnOutcome::Failed { .. } => Ok(false),
        }
    }

    /// 413 when `txn` would store a value over `max_object` (a dry run is
    /// refused as the write would be).
    fn check_size<K: Kind>(&self, txn: &Txn, obj: &K) -> Result<(), ApiError> {
        // An object being deleted may pass the limit by its deletion's mark
        // (a timestamp, a grace period): refusing the mark would leave an
        // object just under the limit, held by a finalizer, undeletable.
        let limit = if obj.meta().deletion_timestamp.is_some() {
            self.max_object + DELETION_MARK
        } else {
            self.max_object
        };
        for op in &txn.ops {
            if let crate::store::Op::Put { value, .. } = op
                && value.len() > limit
            {
                return Err(ApiError::object_too_large(
                    K::resource().kind,
                    obj.meta().name.as_deref().unwrap_or_default(),
                    value.len(),
                    self.max_object,
                ));
            }
        }
        Ok(())
    }

    /// Deletes an object of `res` as a DELETE asks: with its preconditions
    /// (uid, resourceVersion), propagation policy and grace period.
    ///
    /// `Orphan` is done as kube-apiserver and its garbage collector do it:
    /// the owner is held by the `orphan` finalizer and marked deleted (so
    /// its controller makes nothing more), its dependents lose their
    /// reference to it, and then it goes. A failed precondition changes
    /// nothing. `Foreground` is served as `Background`: the object goes at
    /// once and the garbage collector removes its dependents after it.
    pub async fn delete_object(
        &self,
        res: &'static Resource,
        ns: Option<&str>,
        name: &str,
        (uid, rv): (Option<String>, Option<i64>),
        policy: Option<&str>,
        grace: Option<i64>,
    ) -> Result<Value, ApiError> {
        let kind = kind_of(res);
        if policy != Some("Orphan") || self.dry_run {
            return kind.delete(self, ns, name, (uid, rv), grace).await;
        }
        let fv = FieldValidation::default();
        let (held, _) = kind
            .modify(self, ns, name, Write::Update, &fv, &mut |mut obj| {
                if uid.as_deref().is_some_and(|u| obj["metadata"]["uid"] != u) {
                    return Err(ApiError::conflict(
                        res.plural,
                        res.group,
                        name,
                        "Precondition failed: UID in precondition does not match",
                    ));
                }
                if rv.is_some_and(|v| {
                    obj["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse::<i64>().ok())
                        != Some(v)
                }) {
                    return Err(ApiError::conflict(
                        res.plural,
                        res.group,
                        name,
                        "Precondition failed: ResourceVersion in precondition does not match",
                    ));
                }
                let list = &mut obj["metadata"]["finalizers"];
                if !list
                    .as_array()
                    .is_some_and(|l| l.iter().any(|f| f == "orphan"))
                {
                    if !list.is_array() {
                        *list = serde_json::json!([]);
                    }
                    if let Some(l) = list.as_array_mut() {
                        l.push(serde_json::json!("orphan"));
                    }
                }
                Ok(obj)
            })
            .await?;
        let owner_uid = held["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let deleted = kind
            .delete(self, ns, name, (Some(owner_uid.clone()), None), grace)
            .await?;
        self.orphan_dependents(held["metadata"]["namespace"].as_str(), &owner_uid)
            .await?;
        match kind
            .modify(self, ns, name, Write::Update, &fv, &mut |mut obj| {
                if let Some(l) = obj["metadata"]["finalizers"].as_array_mut() {
                    l.retain(|f| f != "orphan");
                }
                Ok(obj)
            })
            .await
        {
            Ok(_) | Err(ApiError { code: 404, .. }) => Ok(deleted),
            Err(e) => Err(e),
        }
    }

    /// Deletes each of `objects` (namespace, name) of `res`, at most
    /// [`COLLECTION_WORKERS`] at once, as kube-apiserver's deletecollection
    /// does; objects already gone or changed meanwhile (404, 409) are
    /// skipped. What was deleted, or marked for deletion, in JSON.
    pub async fn delete_collection(
        &self,
        res: &'static Resource,
        objects: Vec<(Option<String>, String)>,
        policy: Option<&str>,
        grace: Option<i64>,
    ) -> Result<Vec<Value>, ApiError> {
        use futures::StreamExt as _;
        let mut deletes = futures::stream::iter(objects)
            .map(|(ns, name)| async move {
                self.delete_object(res, ns.as_deref(), &name, (None, None), policy, grace)
                    .await
            })
            .buffer_unordered(COLLECTION_WORKERS);
        let mut deleted = Vec::new();
        while let Some(r) = deletes.next().await {
            match r {
                Ok(obj) => deleted.push(obj),
                Err(e) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Takes the ownerReferences to `owner_uid` off everything that has
    /// them (in `ns`, and cluster-scoped objects), so that deleting the
    /// owner orphans them (propagationPolicy=Orphan).
    pub async fn orphan_dependents(
        &self,
        ns: Option<&str>,
        owner_uid: &str,
    ) -> Result<usize, ApiError> {
        let mut n = 0;
        for r in resources::RESOURCES
            .iter()
            .filter(|r| r.namespaced || ns.is_none())
        {
            let owned = |o: &Value| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|x| x["uid"] == owner_uid))
            };
            let (deps, _) = self
                .list_json(r, if r.namespaced { ns } else { None }, owned)
                .await?;
            for dep in deps {
                let name = dep["metadata"]["name"].as_str().unwrap_or_default();
                match kind_of(r)
                    .drop_owner(self, dep["metadata"]["namespace"].as_str(), name, owner_uid)
                    .await
                {
                    Ok(()) => n += 1,
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }
}

/// The object to store for an update of `old` with `new`.
fn prepare_update<K: Kind>(
    old: &K,
    mut new: K,
    write: Write,
    name: &str,
    ns: Option<&str>,
    applied: bool,
) -> Result<K, ApiError> {
    let given_name = new.meta().name.clone().unwrap_or_default();
    if !given_name.is_empty() && given_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(ns), Some(given)) = (ns, new.meta().namespace.as_deref())
        && !given.is_empty()
        && given != ns
    {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({given}) does not match the namespace on the URL ({ns})"
        )));
    }
    if write == Write::Status {
        // A status update changes the status and nothing else.
        let mut obj = old.clone();
        obj.set_status(new.status().cloned());
        if applied {
            // An apply to the status: its managers as it made them.
            obj.meta_mut()
                .managed_fields
                .clone_from(&new.meta().managed_fields);
        }
        let causes = obj.validate_status_update(old);
        if !causes.is_empty() {
            return Err(invalid::<K>(name, causes));
        }
        return Ok(obj);
    }
    {
        let (om, nm) = (old.meta(), new.meta_mut());
        nm.name.clone_from(&om.name);
        nm.namespace.clone_from(&om.namespace);
        nm.uid.clone_from(&om.uid);
        nm.creation_timestamp.clone_from(&om.creation_timestamp);
        nm.deletion_timestamp.clone_from(&om.deletion_timestamp);
        nm.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
        nm.generation = om.generation;
        nm.resource_version.clone_from(&om.resource_version);
        // Field managers a client sends replace the stored ones (kube lets
        // clients edit them: `[{}]` clears them); none sent keeps them, so
        // that a client that does not know them cannot drop them.
        if !applied && nm.managed_fields.as_ref().is_none_or(Vec::is_empty) {
            nm.managed_fields.clone_from(&om.managed_fields);
        }
    }
    if K::resource().has_status() {
        new.set_status(old.status().cloned());
    }
    new.default_fields();
    let mut causes = kind::validate_meta(&new);
    causes.extend(new.validate());
    causes.extend(new.validate_update(old));
    if !causes.is_empty() {
        return Err(invalid::<K>(name, causes));
    }
    if old.spec() != new.spec() && new.spec().is_some() {
        new.meta_mut().generation = Some(old.meta().generation.unwrap_or(0) + 1);
    }
    Ok(new)
}
