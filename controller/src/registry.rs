//! The API's write semantics over the store: what happens to an object on
//! create, update, status update and delete, whoever asks (an HTTP client or
//! one of the controller's own loops).
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; the key's
//! `mod_revision` is put back as the resourceVersion on every read, so the
//! two can never disagree. Every write is one store transaction that also
//! carries what the write allocates or frees (IPs, node blocks, node ports),
//! so nothing is ever half-stored.

use std::sync::Arc;

use serde_json::{Value, json};
use weft_api::error::{ApiError, Cause};
use weft_api::meta::{new_uid, now_rfc3339};
use weft_api::resources::{self, Resource};
use weft_api::validate::{default_object, validate_object};

use crate::ipam;
use crate::store::{Compare, KeyValue, Op, Store, StoreError, Txn, TxnOutcome};

/// How often a write retries when something it allocates was taken by a
/// concurrent writer.
const ALLOCATION_RETRIES: usize = 64;

pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Compacted { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        other => ApiError::internal(other),
    }
}

/// Decodes a stored value, with its revision as the resourceVersion.
pub fn decode_stored(kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(format!("stored object {} does not decode: {e}", kv.key))
    })?;
    set_rv(&mut obj, kv.mod_revision);
    Ok(obj)
}

/// The stored JSON with `metadata.resourceVersion` spliced in, without
/// decoding it: what a watch sends per event and per watcher, so it must be
/// cheap. `None` when the object has no top-level metadata object.
pub fn splice_rv(stored: &[u8], rev: i64) -> Option<Vec<u8>> {
    let (mut depth, mut in_string, mut escaped) = (0i32, false, false);
    let mut key_start = None;
    let mut i = 0;
    while i < stored.len() {
        let b = stored[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                // A top-level key "metadata" followed by ':' and '{'.
                if depth == 1 && key_start.is_some_and(|s| &stored[s..i] == b"metadata") {
                    let mut j = i + 1;
                    while j < stored.len() && stored[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    if stored.get(j) == Some(&b':') {
                        j += 1;
                        while j < stored.len() && stored[j].is_ascii_whitespace() {
                            j += 1;
                        }
                        if stored.get(j) == Some(&b'{') {
                            let mut k = j + 1;
                            while k < stored.len() && stored[k].is_ascii_whitespace() {
                                k += 1;
                            }
                            let empty = stored.get(k) == Some(&b'}');
                            let field = format!(
                                "\"resourceVersion\":\"{rev}\"{}",
                                if empty { "" } else { "," }
                            );
                            let mut out = Vec::with_capacity(stored.len() + field.len());
                            out.extend_from_slice(&stored[..=j]);
                            out.extend_from_slice(field.as_bytes());
                            out.extend_from_slice(&stored[j + 1..]);
                            return Some(out);
                        }
                    }
                }
                key_start = None;
            }
        } else {
            match b {
                b'"' => {
                    in_string = true;
                    key_start = Some(i + 1);
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => depth -= 1,
                _ => {}
            }
        }
        i += 1;
    }
    None
}

pub fn set_rv(obj: &mut Value, rev: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

fn encode(obj: &Value) -> Vec<u8> {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&obj).expect("JSON values encode")
}

pub fn name_of(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

pub fn namespace_of(obj: &Value) -> Option<&str> {
    obj["metadata"]["namespace"].as_str()
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("object")
}

/// Parses a resourceVersion the client sent.
pub fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid resourceVersion \"{rv}\": must be a non-negative integer"
        ))
    })
}

/// Random suffix for generateName, from the alphabet Kubernetes uses (no
/// vowels, no look-alike characters).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4();
    bytes.as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// What a write is: create, update of the object or of its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Create,
    Update,
    Status,
}

#[derive(Clone)]
pub struct Registry {
    pub store: Arc<dyn Store>,
    /// Check and answer as usual, but write nothing (`dryRun=All`).
    pub dry_run: bool,
}

impl Registry {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            dry_run: false,
        }
    }

    /// The same registry, writing nothing.
    pub fn dry(&self) -> Self {
        Self {
            store: self.store.clone(),
            dry_run: true,
        }
    }

    /// Takes the ownerReferences to `owner` off everything that has them,
    /// so that deleting it orphans them (propagationPolicy=Orphan).
    pub async fn orphan_dependents(&self, owner: &Value) -> Result<usize, ApiError> {
        let uid = owner["metadata"]["uid"].clone();
        let ns = owner["metadata"]["namespace"].as_str();
        let mut n = 0;
        for r in resources::RESOURCES
            .iter()
            .filter(|r| r.namespaced || ns.is_none())
        {
            let owned = |o: &Value| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|x| x["uid"] == uid))
            };
            let (deps, _) = self
                .list(r, if r.namespaced { ns } else { None }, owned)
                .await?;
            for dep in deps {
                let name = name_of(&dep).to_string();
                let result = self
                    .modify(r, namespace_of(&dep), &name, Write::Update, |mut o| {
                        if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                            refs.retain(|x| x["uid"] != uid);
                        }
                        Ok(o)
                    })
                    .await;
                match result {
                    Ok(_) => n += 1,
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(n)
    }

    /// The object and its revision, if it exists.
    pub async fn get_raw(
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

    pub async fn get(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.get_raw(res, ns, name)
            .await?
            .map(|(obj, _)| obj)
            .ok_or_else(|| ApiError::not_found(res.plural, res.group, name))
    }

    /// Objects of `res` in `ns` (all namespaces for `None`) that pass
    /// `keep`, and the revision the list was read at.
    pub async fn list(
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

    /// Creates `obj` (already decoded as `res`'s kind) in `ns`.
    pub async fn create(
        &self,
        res: &Resource,
        ns: Option<&str>,
        mut obj: Value,
    ) -> Result<Value, ApiError> {
        let ns = if res.namespaced {
            Some(ns.unwrap_or("default"))
        } else {
            None
        };
        {
            let meta = meta_mut(&mut obj);
            match (ns, meta.get("namespace").and_then(Value::as_str)) {
                (Some(ns), Some(given)) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
                    )));
                }
                (Some(ns), _) => {
                    meta.insert("namespace".into(), json!(ns));
                }
                (None, _) => {
                    meta.remove("namespace");
                }
            }
            let name = meta
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if name.is_empty()
                && let Some(prefix) = meta
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|p| !p.is_empty())
            {
                let generated = format!("{prefix}{}", random_suffix());
                meta.insert("name".into(), json!(generated));
            }
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
            meta.remove("resourceVersion");
            meta.remove("deletionTimestamp");
            meta.remove("deletionGracePeriodSeconds");
            meta.remove("managedFields");
            meta.remove("selfLink");
            if obj.get("spec").is_some() {
                meta_mut(&mut obj).insert("generation".into(), json!(1));
            }
        }
        match res.kind {
            "Pod" => {
                obj["status"] = json!({"phase": "Pending", "qosClass": qos_class(&obj["spec"])});
            }
            "Namespace" => obj["status"] = json!({"phase": "Active"}),
            "Deployment" | "ReplicaSet" | "Service" => {
                if let Some(map) = obj.as_object_mut() {
                    map.remove("status");
                }
            }
            _ => {}
        }
        default_object(res, &mut obj);
        let causes = validate_object(res, &obj);
        let name = name_of(&obj).to_string();
        if !causes.is_empty() {
            return Err(ApiError::invalid(res.kind, res.group, &name, causes));
        }
        if let Some(ns) = ns {
            self.check_namespace_open(ns).await?;
        }
        let key = res.key(ns, &name);
        let base = obj;
        for _ in 0..ALLOCATION_RETRIES {
            let mut obj = base.clone();
            let mut txn = Txn::new().when(Compare::absent(&key));
            ipam::on_create(self, res, &mut obj, &mut txn).await?;
            txn = txn.then(Op::put(&key, encode(&obj)));
            if self.dry_run {
                if self.store.get(&key).await.map_err(store_error)?.is_some() {
                    return Err(ApiError::already_exists(res.plural, res.group, &name));
                }
                return Ok(obj);
            }
            match self.store.txn(txn).await.map_err(store_error)? {
                TxnOutcome::Applied { revision } => {
                    set_rv(&mut obj, revision);
                    return Ok(obj);
                }
                TxnOutcome::Failed { .. } => {
                    if self.store.get(&key).await.map_err(store_error)?.is_some() {
                        return Err(ApiError::already_exists(res.plural, res.group, &name));
                    }
                    // Something allocated was taken meanwhile: try again.
                }
            }
        }
        Err(ApiError::conflict(
            res.plural,
            res.group,
            &name,
            "too many concurrent allocations; try again",
        ))
    }

    async fn check_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        let namespaces = resources::by_path("", "v1", "namespaces").expect("namespaces are served");
        match self.get_raw(namespaces, None, ns).await? {
            None => Err(ApiError::not_found("namespaces", "", ns)),
            Some((obj, _)) if obj["metadata"]["deletionTimestamp"].is_string() => {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Replaces the object (or, for `Write::Status`, its status) with `new`.
    /// `new`'s resourceVersion, when set, must be the current one.
    pub async fn update(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        new: Value,
        write: Write,
    ) -> Result<Value, ApiError> {
        let ns = if res.namespaced { ns } else { None };
        let key = res.key(ns, name);
        let wanted_rv = new["metadata"]["resourceVersion"]
            .as_str()
            .map(parse_rv)
            .transpose()?;
        for _ in 0..ALLOCATION_RETRIES {
            let Some((old, rev)) = self.get_raw(res, ns, name).await? else {
                return Err(ApiError::not_found(res.plural, res.group, name));
            };
            if let Some(wanted) = wanted_rv
                && wanted != rev
            {
                return Err(ApiError::conflict(
                    res.plural,
                    res.group,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let mut obj = prepare_update(res, &old, new.clone(), write, name, ns)?;
            if obj == old {
                // Nothing changed: no write, no event, same resourceVersion.
                return Ok(old);
            }
            let mut txn = Txn::new().when(Compare::at(&key, rev));
            ipam::on_update(self, res, &old, &mut obj, &mut txn).await?;
            // Finalizers gone from an object being deleted: it goes now.
            let finished = obj["metadata"]["deletionTimestamp"].is_string()
                && obj["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty)
                && obj["spec"]["finalizers"]
                    .as_array()
                    .is_none_or(Vec::is_empty);
            if finished {
                ipam::on_delete(res, &old, &mut txn);
                txn = txn.then(Op::delete(&key));
            } else {
                txn = txn.then(Op::put(&key, encode(&obj)));
            }
            if self.dry_run {
                return Ok(obj);
            }
            match self.store.txn(txn).await.map_err(store_error)? {
                TxnOutcome::Applied { revision } => {
                    set_rv(&mut obj, revision);
                    return Ok(obj);
                }
                TxnOutcome::Failed { .. } => {
                    let now = self.store.get(&key).await.map_err(store_error)?;
                    if now.map(|kv| kv.mod_revision) != Some(rev) && wanted_rv.is_some() {
                        return Err(ApiError::conflict(
                            res.plural,
                            res.group,
                            name,
                            "the object has been modified; please apply your changes to the latest version and try again",
                        ));
                    }
                    // Changed underneath an unconditional update, or an
                    // allocation was taken: read again and retry.
                }
            }
        }
        Err(ApiError::conflict(
            res.plural,
            res.group,
            name,
            "too many concurrent writers; try again",
        ))
    }

    /// Reads, changes with `f` and writes back, retrying on conflicts: the
    /// read-modify-write of controllers and of patches.
    pub async fn modify(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        write: Write,
        mut f: impl FnMut(Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        let mut last = None;
        for _ in 0..ALLOCATION_RETRIES {
            let old = self.get(res, ns, name).await?;
            let rv = old["metadata"]["resourceVersion"].clone();
            let mut new = f(old)?;
            meta_mut(&mut new).insert("resourceVersion".into(), rv);
            match self.update(res, ns, name, new, write).await {
                Err(e) if e.reason == "Conflict" => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| {
            ApiError::conflict(res.plural, res.group, name, "too many concurrent writers")
        }))
    }

    /// Deletes the object; with finalizers it is only marked for deletion.
    /// `precondition` is (uid, resourceVersion) from DeleteOptions. A pod
    /// running on a node is deleted gracefully (see [`Registry::delete_with`]).
    pub async fn delete(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        precondition: (Option<String>, Option<i64>),
    ) -> Result<Value, ApiError> {
        self.delete_with(res, ns, name, precondition, None).await
    }

    /// Deletes with a grace period, as kube-apiserver does for pods: a pod
    /// bound to a node and not finished is only marked (deletionTimestamp
    /// now + grace, deletionGracePeriodSeconds) so that its node's agent
    /// stops its containers and then deletes it with grace 0. `grace` None
    /// takes the pod's terminationGracePeriodSeconds (30 s by default); 0
    /// deletes at once (`--force --grace-period=0`, and the agent's final
    /// delete). Other kinds ignore `grace`.
    pub async fn delete_with(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        precondition: (Option<String>, Option<i64>),
        grace: Option<i64>,
    ) -> Result<Value, ApiError> {
        let ns = if res.namespaced { ns } else { None };
        let key = res.key(ns, name);
        loop {
            let Some((mut obj, rev)) = self.get_raw(res, ns, name).await? else {
                return Err(ApiError::not_found(res.plural, res.group, name));
            };
            if let Some(uid) = &precondition.0
                && obj["metadata"]["uid"].as_str() != Some(uid)
            {
                return Err(ApiError::conflict(
                    res.plural,
                    res.group,
                    name,
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        obj["metadata"]["uid"].as_str().unwrap_or_default()
                    ),
                ));
            }
            if let Some(want) = precondition.1
                && want != rev
            {
                return Err(ApiError::conflict(
                    res.plural,
                    res.group,
                    name,
                    format!(
                        "Precondition failed: ResourceVersion in precondition: {want}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            let has_finalizers = obj["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| !f.is_empty())
                || (res.kind == "Namespace"
                    && obj["spec"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty()));
            let mut txn = Txn::new().when(Compare::at(&key, rev));
            if res.kind == "Pod" && grace != Some(0) && runs_on_node(&obj) {
                if obj["metadata"]["deletionTimestamp"].is_string() {
                    return Ok(obj); // already terminating
                }
                let secs = grace
                    .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
                    .max(0);
                let at = std::time::SystemTime::now()
                    + std::time::Duration::from_secs(secs.unsigned_abs());
                meta_mut(&mut obj).insert(
                    "deletionTimestamp".into(),
                    json!(weft_api::meta::format_rfc3339(at)),
                );
                meta_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(secs));
                txn = txn.then(Op::put(&key, encode(&obj)));
            } else if has_finalizers {
                if obj["metadata"]["deletionTimestamp"].is_string() {
                    return Ok(obj);
                }
                meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(now_rfc3339()));
                meta_mut(&mut obj).insert("deletionGracePeriodSeconds".into(), json!(0));
                if res.kind == "Namespace" {
                    obj["status"]["phase"] = json!("Terminating");
                }
                txn = txn.then(Op::put(&key, encode(&obj)));
            } else {
                ipam::on_delete(res, &obj, &mut txn);
                txn = txn.then(Op::delete(&key));
            }
            if self.dry_run {
                return Ok(obj);
            }
            if let TxnOutcome::Applied { revision } =
                self.store.txn(txn).await.map_err(store_error)?
            {
                set_rv(&mut obj, revision);
                return Ok(obj);
            }
        }
    }
}

/// The object to store for an update of `old` with `new`.
fn prepare_update(
    res: &Resource,
    old: &Value,
    mut new: Value,
    write: Write,
    name: &str,
    ns: Option<&str>,
) -> Result<Value, ApiError> {
    let given_name = name_of(&new).to_string();
    if !given_name.is_empty() && given_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({given_name}) does not match the name on the URL ({name})"
        )));
    }
    if let (Some(ns), Some(given)) = (ns, namespace_of(&new))
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
        obj["status"] = new.get("status").cloned().unwrap_or(Value::Null);
        if let Some(map) = obj.as_object_mut()
            && map["status"].is_null()
        {
            map.remove("status");
        }
        return Ok(obj);
    }
    {
        let old_meta = &old["metadata"];
        let meta = meta_mut(&mut new);
        for fixed in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(fixed) {
                Some(v) => meta.insert(fixed.into(), v.clone()),
                None => meta.remove(fixed),
            };
        }
        meta.remove("managedFields");
    }
    if res.has_status() {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    default_object(res, &mut new);
    let mut causes = validate_object(res, &new);
    causes.extend(immutable_changes(res, old, &new));
    if !causes.is_empty() {
        return Err(ApiError::invalid(res.kind, res.group, name, causes));
    }
    if old.get("spec") != new.get("spec") && new.get("spec").is_some() {
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        meta_mut(&mut new).insert("generation".into(), json!(generation));
    }
    // Compare without the resourceVersion the client sent.
    let mut cmp = new.clone();
    meta_mut(&mut cmp).insert(
        "resourceVersion".into(),
        old["metadata"]["resourceVersion"].clone(),
    );
    Ok(cmp)
}

/// Fields that may not change once set.
fn immutable_changes(res: &Resource, old: &Value, new: &Value) -> Vec<Cause> {
    let mut out = Vec::new();
    match res.kind {
        "Pod" => {
            // As in Kubernetes: only images (and tolerations, activeDeadline)
            // of a pod may change; the rest means a new pod.
            let mut a = old["spec"].clone();
            let mut b = new["spec"].clone();
            for spec in [&mut a, &mut b] {
                for list in ["containers", "initContainers"] {
                    if let Some(cs) = spec[list].as_array_mut() {
                        for c in cs {
                            c["image"] = Value::Null;
                        }
                    }
                }
                spec["tolerations"] = Value::Null;
                spec["activeDeadlineSeconds"] = Value::Null;
            }
            if a != b {
                out.push(Cause {
                    reason: "FieldValueForbidden",
                    message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)".into(),
                    field: "spec".into(),
                });
            }
        }
        "Service" => {
            let old_ip = old["spec"]["clusterIP"].as_str().unwrap_or_default();
            let new_ip = new["spec"]["clusterIP"].as_str().unwrap_or_default();
            if !old_ip.is_empty() && !new_ip.is_empty() && old_ip != new_ip {
                out.push(Cause::invalid(
                    "spec.clusterIP",
                    new_ip,
                    "field is immutable",
                ));
            }
        }
        "Deployment" | "ReplicaSet" if old["spec"]["selector"] != new["spec"]["selector"] => {
            out.push(Cause::invalid(
                "spec.selector",
                serde_json::to_string(&new["spec"]["selector"]).unwrap_or_default(),
                "field is immutable",
            ));
        }
        "Node" => {
            let old_cidr = old["spec"]["podCIDR"].as_str().unwrap_or_default();
            let new_cidr = new["spec"]["podCIDR"].as_str().unwrap_or_default();
            if !old_cidr.is_empty() && !new_cidr.is_empty() && old_cidr != new_cidr {
                out.push(Cause::invalid(
                    "spec.podCIDR",
                    new_cidr,
                    "field is immutable once set",
                ));
            }
        }
        _ => {}
    }
    out
}

/// The QoS class Kubernetes gives a pod from its containers' resources.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        for r in ["cpu", "memory"] {
            let (req, lim) = (requests[r].as_str(), limits[r].as_str());
            if req.is_some() || lim.is_some() {
                any = true;
            }
            let eq = match (req, lim) {
                (Some(a), Some(b)) => weft_api::quantity::parse(a) == weft_api::quantity::parse(b),
                (None, Some(_)) => true,
                _ => false,
            };
            if !eq {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// Whether a pod's deletion must wait for its node: it is bound to one and
/// has not finished. Unbound and finished pods go at once, as in Kubernetes.
fn runs_on_node(pod: &Value) -> bool {
    pod["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty())
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_matches_decoding() {
        for obj in [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "labels": {"metadata": "x"}}, "spec": {"template": {"metadata": {}}}}),
            json!({"kind": "Pod", "metadata": {}, "data": "\"metadata\":{"}),
            json!({"a": {"metadata": {"x": 1}}, "metadata": {"name": "b"}}),
        ] {
            let stored = encode(&obj);
            let spliced: Value =
                serde_json::from_slice(&splice_rv(&stored, 42).expect("has metadata"))
                    .expect("valid JSON");
            let mut want = obj.clone();
            set_rv(&mut want, 42);
            assert_eq!(spliced, want);
        }
        assert!(splice_rv(b"{\"kind\":\"x\"}", 1).is_none());
    }
}
