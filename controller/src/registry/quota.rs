//! LimitRanges and ResourceQuotas, as kube-apiserver's LimitRanger and
//! ResourceQuota admission plugins apply them, per namespace:
//!
//! - A new pod first gets the defaults of its namespace's LimitRanges
//!   (`default` limits, `defaultRequest` requests, for each container that
//!   sets none), then is refused (403) when a container or the pod breaks a
//!   `min`, `max` or `maxLimitRequestRatio`, with kube's words.
//! - Every new object is charged to the namespace's ResourceQuotas in the
//!   same store transaction that creates it: the quota's `status.used` is
//!   raised with a compare on its revision, so two creations can never
//!   both take the last unit. Over a limit, kube's "exceeded quota"
//!   refusal; a compute quota also needs every container to say how much
//!   (kube's "must specify"). The quota controller
//!   (`controllers::quota`) recounts `used` as objects go.
//!
//! Counted: `pods`, `cpu`/`requests.cpu`, `memory`/`requests.memory`,
//! `limits.cpu`, `limits.memory`, `services`, `services.nodeports`,
//! `services.loadbalancers`, `configmaps`, `secrets`, and `count/<resource>`
//! of any served namespaced kind. Other resources and quota scopes are
//! refused rather than accepted and not enforced.

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    Container, LimitRange, LimitRangeItem, LimitRangeSpec, Pod, ResourceQuota, ResourceQuotaSpec,
    ResourceQuotaStatus, Service,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;
use weft_api::error::{ApiError, Cause};
use weft_api::resources::{self, Resource};

use super::kind::{Kind, kind_fields};
use super::{Registry, decode_typed, encode, store_error};
use crate::store::{Compare, Op, Txn};

/// Amounts by resource name, in thousandths (kube's milli-units).
pub type Usage = BTreeMap<String, i128>;

/// The quota resources Weft counts, besides `count/<resource>`.
pub const QUOTA_RESOURCES: [&str; 14] = [
    "configmaps",
    "persistentvolumeclaims",
    "cpu",
    "limits.cpu",
    "limits.memory",
    "memory",
    "pods",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "secrets",
    "services",
    "services.loadbalancers",
    "services.nodeports",
];

/// The served resource a `count/<plural>[.<group>]` quota counts.
fn counted(name: &str) -> Option<&'static Resource> {
    let rest = name.strip_prefix("count/")?;
    let (plural, group) = rest.split_once('.').unwrap_or((rest, ""));
    resources::RESOURCES
        .iter()
        .find(|r| r.namespaced && r.plural == plural && r.group == group)
}

fn milli(q: &Quantity) -> Option<i128> {
    weft_api::quantity::parse(&q.0)
}

/// A quantity of `resource` as kube prints it (`2`, `500m`, `128Mi`).
#[must_use]
pub fn format(resource: &str, millis: i128) -> String {
    if millis % 1000 != 0 {
        return format!("{millis}m");
    }
    let n = millis / 1000;
    if resource.contains("memory") || resource.contains("storage") {
        for (suffix, size) in [("Gi", 1i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if n != 0 && n % size == 0 {
                return format!("{}{suffix}", n / size);
            }
        }
    }
    n.to_string()
}

fn request_of(c: &Container, which: &str, r: &str) -> Option<i128> {
    let res = c.resources.as_ref()?;
    let m = if which == "limits" {
        res.limits.as_ref()
    } else {
        res.requests.as_ref()
    };
    milli(m?.get(r)?)
}

/// What a pod uses of a quota: its count and its effective requests and
/// limits (the containers' and sidecars' sum, or an init container's when
/// larger, as the scheduler counts them). A finished pod uses nothing.
#[must_use]
pub fn pod_usage(pod: &Pod) -> Usage {
    let mut u = Usage::new();
    if weft_api::pod::is_finished(pod) {
        return u;
    }
    u.insert("pods".into(), 1000);
    let Some(spec) = pod.spec.as_ref() else {
        return u;
    };
    for (which, r, keys) in [
        ("requests", "cpu", &["requests.cpu", "cpu"][..]),
        ("requests", "memory", &["requests.memory", "memory"][..]),
        ("limits", "cpu", &["limits.cpu"][..]),
        ("limits", "memory", &["limits.memory"][..]),
    ] {
        let mut running: i128 = spec
            .containers
            .iter()
            .filter_map(|c| request_of(c, which, r))
            .sum();
        let mut init_max = 0;
        for c in spec.init_containers.iter().flatten() {
            let v = request_of(c, which, r).unwrap_or(0);
            if weft_api::pod::is_sidecar(c) {
                running += v;
            } else {
                init_max = init_max.max(v);
            }
        }
        let total = running.max(init_max);
        if total > 0 {
            for k in keys {
                u.insert((*k).into(), total);
            }
        }
    }
    u
}

fn service_usage(svc: &Service) -> Usage {
    let mut u = Usage::new();
    u.insert("services".into(), 1000);
    let spec = svc.spec.as_ref();
    let ty = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    if matches!(ty, "NodePort" | "LoadBalancer") {
        let ports = spec.and_then(|s| s.ports.as_ref()).map_or(0, Vec::len);
        u.insert("services.nodeports".into(), ports as i128 * 1000);
    }
    if ty == "LoadBalancer" {
        u.insert("services.loadbalancers".into(), 1000);
    }
    u
}

/// What one object of `res` (as JSON) uses of a quota.
#[must_use]
pub fn usage(res: &Resource, obj: &Value) -> Usage {
    let mut u = match res.kind {
        "Pod" => serde_json::from_value::<Pod>(obj.clone())
            .map(|p| pod_usage(&p))
            .unwrap_or_default(),
        "Service" => serde_json::from_value::<Service>(obj.clone())
            .map(|s| service_usage(&s))
            .unwrap_or_default(),
        "ConfigMap" => [("configmaps".to_string(), 1000)].into(),
        "Secret" => [("secrets".to_string(), 1000)].into(),
        "PersistentVolumeClaim" => {
            let mut u: Usage = [("persistentvolumeclaims".to_string(), 1000)].into();
            if let Ok(c) = serde_json::from_value::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(
                obj.clone(),
            ) && let Some(bytes) = super::storage::claim_request(&c)
            {
                u.insert("requests.storage".into(), bytes * 1000);
            }
            u
        }
        _ => Usage::new(),
    };
    // A finished pod is not counted at all.
    if res.kind == "Pod" && u.is_empty() {
        return u;
    }
    let count = if res.group.is_empty() {
        format!("count/{}", res.plural)
    } else {
        format!("count/{}.{}", res.plural, res.group)
    };
    u.insert(count, 1000);
    u
}

/// The resources a compute quota needs every container to state, that
/// container `c` does not.
fn unstated(hard: &BTreeMap<String, Quantity>, c: &Container) -> Vec<&'static str> {
    let mut out = Vec::new();
    for (key, which, r) in [
        ("limits.cpu", "limits", "cpu"),
        ("limits.memory", "limits", "memory"),
        ("requests.cpu", "requests", "cpu"),
        ("requests.memory", "requests", "memory"),
        ("cpu", "requests", "cpu"),
        ("memory", "requests", "memory"),
    ] {
        if hard.contains_key(key) && request_of(c, which, r).is_none() && !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn pretty(resources: &[&String], values: impl Fn(&str) -> String) -> String {
    resources
        .iter()
        .map(|k| format!("{k}={}", values(k)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether an update of an object of `res` can use more of a quota than
/// the object did (a Service's type; nothing else Weft counts can grow).
#[must_use]
pub fn grows_on_update(res: &Resource) -> bool {
    res.kind == "Service" && res.group.is_empty()
}

/// Charges a new object to every ResourceQuota of its namespace, in `txn`
/// (see the module docs); for an update (`old` given), what it uses more
/// than `old` did. `what` is `<plural> "<name>"` for messages.
pub async fn charge(
    reg: &Registry,
    res: &Resource,
    ns: &str,
    obj: &Value,
    old: Option<&Value>,
    what: &str,
    txn: &mut Txn,
) -> Result<(), ApiError> {
    let mut asked = usage(res, obj);
    if let Some(old) = old {
        let before = usage(res, old);
        asked = asked
            .into_iter()
            .map(|(k, v)| {
                let was = before.get(&k).copied().unwrap_or(0);
                (k, v - was)
            })
            .filter(|(_, v)| *v > 0)
            .collect();
    }
    if asked.is_empty() {
        return Ok(());
    }
    let quotas = ResourceQuota::resource();
    let (kvs, _) = reg
        .store
        .list(&quotas.list_prefix(Some(ns)))
        .await
        .map_err(store_error)?;
    if kvs.is_empty() {
        return Ok(());
    }
    for kv in kvs {
        let mut quota: ResourceQuota = decode_typed(&kv)?;
        let name = quota.metadata.name.clone().unwrap_or_default();
        let hard = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let constrained: Vec<&String> = hard.keys().filter(|k| asked.contains_key(*k)).collect();
        // A compute quota needs every container to say how much.
        if res.kind == "Pod"
            && old.is_none()
            && let Ok(pod) = serde_json::from_value::<Pod>(obj.clone())
        {
            let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            let spec = pod.spec.unwrap_or_default();
            for c in spec
                .init_containers
                .iter()
                .flatten()
                .chain(&spec.containers)
            {
                for key in unstated(&hard, c) {
                    missing.entry(key).or_default().push(c.name.clone());
                }
            }
            if !missing.is_empty() {
                let list: Vec<String> = missing
                    .iter()
                    .map(|(k, cs)| format!("{k} for: {}", cs.join(",")))
                    .collect();
                return Err(ApiError::forbidden(format!(
                    "{what} is forbidden: failed quota: {name}: must specify {}",
                    list.join("; ")
                )));
            }
        }
        if constrained.is_empty() {
            continue;
        }
        let status = quota.status.get_or_insert_with(Default::default);
        let used = status.used.get_or_insert_with(Default::default);
        let now = |k: &str| used.get(k).and_then(milli).unwrap_or(0);
        let exceeded: Vec<&String> = constrained
            .iter()
            .copied()
            .filter(|k| {
                let limit = hard.get(*k).and_then(milli).unwrap_or(0);
                now(k) + asked[*k] > limit
            })
            .collect();
        if !exceeded.is_empty() {
            return Err(ApiError::forbidden(format!(
                "{what} is forbidden: exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                pretty(&exceeded, |k| format(k, asked[k])),
                pretty(&exceeded, |k| format(k, now(k))),
                pretty(&exceeded, |k| hard[k].0.clone()),
            )));
        }
        let raised: Vec<(String, i128)> = constrained
            .iter()
            .map(|k| ((*k).clone(), now(k) + asked[*k]))
            .collect();
        for (k, v) in raised {
            let shown = format(&k, v);
            used.insert(k, Quantity(shown));
        }
        status.hard = Some(hard.clone());
        let key = quotas.key(Some(ns), &name);
        txn.compares.push(Compare::at(&key, kv.mod_revision));
        txn.ops.push(Op::put(&key, encode(&quota)));
    }
    Ok(())
}

/// What the objects of namespace `ns` use of `hard`'s resources, counted
/// in the store.
pub async fn count(
    reg: &Registry,
    ns: &str,
    hard: &BTreeMap<String, Quantity>,
) -> Result<BTreeMap<String, Quantity>, ApiError> {
    let mut kinds: Vec<&'static Resource> = Vec::new();
    for k in hard.keys() {
        let res = match k.as_str() {
            "pods" | "cpu" | "memory" | "requests.cpu" | "requests.memory" | "limits.cpu"
            | "limits.memory" => resources::by_kind("v1", "Pod"),
            "services" | "services.nodeports" | "services.loadbalancers" => {
                resources::by_kind("v1", "Service")
            }
            "configmaps" => resources::by_kind("v1", "ConfigMap"),
            "secrets" => resources::by_kind("v1", "Secret"),
            "persistentvolumeclaims" | "requests.storage" => {
                resources::by_kind("v1", "PersistentVolumeClaim")
            }
            other => counted(other),
        };
        if let Some(res) = res
            && !kinds.contains(&res)
        {
            kinds.push(res);
        }
    }
    let mut total = Usage::new();
    for res in kinds {
        let (objs, _) = reg.list_json(res, Some(ns), |_| true).await?;
        for o in objs {
            for (k, v) in usage(res, &o) {
                *total.entry(k).or_default() += v;
            }
        }
    }
    Ok(hard
        .keys()
        .map(|k| {
            (
                k.clone(),
                Quantity(format(k, total.get(k).copied().unwrap_or(0))),
            )
        })
        .collect())
}

#[async_trait]
impl Kind for ResourceQuota {
    kind_fields!(spec: ResourceQuotaSpec, status: ResourceQuotaStatus);

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let spec = self.spec.as_ref();
        for (k, v) in spec.and_then(|s| s.hard.as_ref()).into_iter().flatten() {
            let field = format!("spec.hard[{k}]");
            if !QUOTA_RESOURCES.contains(&k.as_str()) && counted(k).is_none() {
                out.push(Cause::forbidden(
                    field.clone(),
                    format!(
                        "{k} is not a resource Weft counts: use one of {} or count/<resource> of a served kind",
                        QUOTA_RESOURCES.join(", ")
                    ),
                ));
            }
            match milli(v) {
                None => out.push(Cause::invalid(field, &v.0, "must be a quantity")),
                Some(n) if n < 0 => {
                    out.push(Cause::invalid(
                        field,
                        &v.0,
                        "must be greater than or equal to 0",
                    ));
                }
                Some(_) => {}
            }
        }
        if spec.is_some_and(|s| {
            s.scopes.as_ref().is_some_and(|v| !v.is_empty()) || s.scope_selector.is_some()
        }) {
            out.push(Cause::forbidden(
                "spec.scopes",
                "quota scopes are not supported by Weft yet; a quota without scopes counts every object",
            ));
        }
        out
    }

    async fn on_create(&mut self, reg: &Registry, _txn: &mut Txn) -> Result<(), ApiError> {
        // Counted at once, so that the quota holds from its first moment.
        let ns = self.metadata.namespace.clone().unwrap_or_default();
        let hard = self
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default();
        let used = count(reg, &ns, &hard).await?;
        self.status = Some(ResourceQuotaStatus {
            hard: Some(hard),
            used: Some(used),
        });
        Ok(())
    }

    async fn on_update(
        &mut self,
        old: &Self,
        reg: &Registry,
        _txn: &mut Txn,
    ) -> Result<(), ApiError> {
        // New limits: counted again (status writes keep what they say).
        if self.spec != old.spec {
            let ns = self.metadata.namespace.clone().unwrap_or_default();
            let hard = self
                .spec
                .as_ref()
                .and_then(|s| s.hard.clone())
                .unwrap_or_default();
            let used = count(reg, &ns, &hard).await?;
            self.status = Some(ResourceQuotaStatus {
                hard: Some(hard),
                used: Some(used),
            });
        }
        Ok(())
    }
}

/// The LimitRange item types Weft applies.
const LIMIT_TYPES: [&str; 3] = ["Container", "Pod", "PersistentVolumeClaim"];

fn items(lr: &LimitRange) -> &[LimitRangeItem] {
    lr.spec.as_ref().map_or(&[], |s| s.limits.as_slice())
}

#[async_trait]
impl Kind for LimitRange {
    kind_fields!(spec: LimitRangeSpec);

    fn default_fields(&mut self) {
        // kube's defaults of a Container item: the default limit is the
        // max, the default request the default limit, else the min.
        for it in self.spec.iter_mut().flat_map(|s| s.limits.iter_mut()) {
            if it.type_ != "Container" {
                continue;
            }
            let max = it.max.clone().unwrap_or_default();
            let default = it.default.get_or_insert_with(Default::default);
            for (k, v) in max {
                default.entry(k).or_insert(v);
            }
            let default = default.clone();
            let request = it.default_request.get_or_insert_with(Default::default);
            for (k, v) in default {
                request.entry(k).or_insert(v);
            }
            for (k, v) in it.min.clone().unwrap_or_default() {
                request.entry(k).or_insert(v);
            }
            if it.default.as_ref().is_some_and(BTreeMap::is_empty) {
                it.default = None;
            }
            if it.default_request.as_ref().is_some_and(BTreeMap::is_empty) {
                it.default_request = None;
            }
        }
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        for (i, it) in items(self).iter().enumerate() {
            let at = format!("spec.limits[{i}]");
            if !LIMIT_TYPES.contains(&it.type_.as_str()) {
                out.push(Cause::not_supported(
                    format!("{at}.type"),
                    &it.type_,
                    &LIMIT_TYPES,
                ));
                continue;
            }
            if it.type_ == "Pod" && (it.default.is_some() || it.default_request.is_some()) {
                out.push(Cause::forbidden(
                    format!("{at}.default"),
                    "may not be specified when `type` is 'Pod'",
                ));
            }
            let maps = [
                ("max", &it.max),
                ("min", &it.min),
                ("default", &it.default),
                ("defaultRequest", &it.default_request),
                ("maxLimitRequestRatio", &it.max_limit_request_ratio),
            ];
            let allowed: &[&str] = if it.type_ == "PersistentVolumeClaim" {
                &["storage"]
            } else {
                &["cpu", "memory"]
            };
            if it.type_ == "PersistentVolumeClaim"
                && (it.default.is_some()
                    || it.default_request.is_some()
                    || it.max_limit_request_ratio.is_some())
            {
                out.push(Cause::forbidden(
                    format!("{at}.default"),
                    "a PersistentVolumeClaim item takes only min and max",
                ));
            }
            for (name, m) in maps {
                for (k, v) in m.iter().flatten() {
                    if !allowed.contains(&k.as_str()) {
                        out.push(Cause::not_supported(
                            format!("{at}.{name}[{k}]"),
                            k,
                            allowed,
                        ));
                    }
                    if milli(v).is_none_or(|n| n < 0) {
                        out.push(Cause::invalid(
                            format!("{at}.{name}[{k}]"),
                            &v.0,
                            "must be a non-negative quantity",
                        ));
                    }
                }
            }
            let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
                m.as_ref().and_then(|m| m.get(k)).and_then(milli)
            };
            for k in ["cpu", "memory"] {
                let (min, max) = (get(&it.min, k), get(&it.max, k));
                let (def, req) = (get(&it.default, k), get(&it.default_request, k));
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    out.push(Cause::invalid(
                        format!("{at}.min[{k}]"),
                        format(k, a),
                        format!(
                            "min value {} is greater than max value {}",
                            format(k, a),
                            format(k, b)
                        ),
                    ));
                }
                if let (Some(r), Some(d)) = (req, def)
                    && r > d
                {
                    out.push(Cause::invalid(
                        format!("{at}.defaultRequest[{k}]"),
                        format(k, r),
                        format!(
                            "default request value {} is greater than default limit value {}",
                            format(k, r),
                            format(k, d)
                        ),
                    ));
                }
                if let (Some(d), Some(b)) = (def, max)
                    && d > b
                {
                    out.push(Cause::invalid(
                        format!("{at}.default[{k}]"),
                        format(k, d),
                        format!(
                            "default value {} is greater than max value {}",
                            format(k, d),
                            format(k, b)
                        ),
                    ));
                }
                if let (Some(a), Some(r)) = (min, req)
                    && a > r
                {
                    out.push(Cause::invalid(
                        format!("{at}.defaultRequest[{k}]"),
                        format(k, r),
                        format!(
                            "min value {} is greater than default request value {}",
                            format(k, a),
                            format(k, r)
                        ),
                    ));
                }
            }
        }
        out
    }
}

/// Checks a new claim against its namespace's LimitRanges'
/// `PersistentVolumeClaim` items (min and max storage), with kube's words.
pub async fn limit_claim(
    reg: &Registry,
    pvc: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
) -> Result<(), ApiError> {
    let ns = pvc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (kvs, _) = reg
        .store
        .list(&LimitRange::resource().list_prefix(Some(&ns)))
        .await
        .map_err(store_error)?;
    let request = super::storage::claim_request(pvc).map(|b| b * 1000);
    let mut broken = Vec::new();
    for kv in &kvs {
        let lr: LimitRange = decode_typed(kv)?;
        for it in items(&lr)
            .iter()
            .filter(|it| it.type_ == "PersistentVolumeClaim")
        {
            let bound = |m: &Option<BTreeMap<String, Quantity>>| {
                m.as_ref().and_then(|m| m.get("storage")).cloned()
            };
            if let Some(min) = bound(&it.min)
                && request.is_none_or(|r| r < milli(&min).unwrap_or(0))
            {
                broken.push(format!(
                    "minimum storage usage per PersistentVolumeClaim is {}, but request is {}",
                    min.0,
                    request.map_or("none".into(), |r| format("storage", r))
                ));
            }
            if let Some(max) = bound(&it.max)
                && request.is_some_and(|r| r > milli(&max).unwrap_or(0))
            {
                broken.push(format!(
                    "maximum storage usage per PersistentVolumeClaim is {}, but request is {}",
                    max.0,
                    format("storage", request.unwrap_or(0))
                ));
            }
        }
    }
    if broken.is_empty() {
        return Ok(());
    }
    let name = pvc.metadata.name.clone().unwrap_or_default();
    Err(ApiError::forbidden(format!(
        "persistentvolumeclaims \"{name}\" is forbidden: [{}]",
        broken.join(", ")
    )))
}

/// Applies the LimitRanges of the pod's namespace (see the module docs).
pub async fn limit_pod(reg: &Registry, pod: &mut Pod) -> Result<(), ApiError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let (kvs, _) = reg
        .store
        .list(&LimitRange::resource().list_prefix(Some(&ns)))
        .await
        .map_err(store_error)?;
    if kvs.is_empty() {
        return Ok(());
    }
    let ranges: Vec<LimitRange> = kvs.iter().map(decode_typed).collect::<Result<_, _>>()?;
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    // Defaults first, for every container that states nothing.
    for it in ranges
        .iter()
        .flat_map(items)
        .filter(|it| it.type_ == "Container")
    {
        for c in spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut())
        {
            let r = c.resources.get_or_insert_with(Default::default);
            for (field, defaults) in [("limits", &it.default), ("requests", &it.default_request)] {
                let m = if field == "limits" {
                    r.limits.get_or_insert_with(Default::default)
                } else {
                    r.requests.get_or_insert_with(Default::default)
                };
                for (k, v) in defaults.iter().flatten() {
                    m.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            if r.limits.as_ref().is_some_and(BTreeMap::is_empty) {
                r.limits = None;
            }
            if r.requests.as_ref().is_some_and(BTreeMap::is_empty) {
                r.requests = None;
            }
        }
    }
    // Then the bounds.
    let mut broken = Vec::new();
    let all: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    for it in ranges
        .iter()
        .flat_map(items)
        .filter(|it| it.type_ != "PersistentVolumeClaim")
    {
        let per = it.type_.as_str();
        for k in ["cpu", "memory"] {
            let bound =
                |m: &Option<BTreeMap<String, Quantity>>| m.as_ref().and_then(|m| m.get(k)).cloned();
            let subjects: Vec<(Option<i128>, Option<i128>)> = if per == "Container" {
                all.iter()
                    .map(|c| (request_of(c, "requests", k), request_of(c, "limits", k)))
                    .collect()
            } else {
                let sum = |which: &str| {
                    let vals: Vec<Option<i128>> =
                        all.iter().map(|c| request_of(c, which, k)).collect();
                    vals.iter()
                        .all(Option::is_some)
                        .then(|| vals.iter().flatten().sum())
                };
                vec![(sum("requests"), sum("limits"))]
            };
            for (request, limit) in subjects {
                if let Some(min) = bound(&it.min) {
                    match request {
                        Some(r) if r >= milli(&min).unwrap_or(0) => {}
                        Some(r) => broken.push(format!(
                            "minimum {k} usage per {per} is {}, but request is {}",
                            min.0,
                            format(k, r)
                        )),
                        None => broken.push(format!(
                            "minimum {k} usage per {per} is {}.  No request is specified",
                            min.0
                        )),
                    }
                }
                if let Some(max) = bound(&it.max) {
                    match limit {
                        Some(l) if l <= milli(&max).unwrap_or(0) => {}
                        Some(l) => broken.push(format!(
                            "maximum {k} usage per {per} is {}, but limit is {}",
                            max.0,
                            format(k, l)
                        )),
                        None => broken.push(format!(
                            "maximum {k} usage per {per} is {}.  No limit is specified",
                            max.0
                        )),
                    }
                }
                if let Some(ratio) = bound(&it.max_limit_request_ratio)
                    && let (Some(r), Some(l)) = (request, limit)
                    && r > 0
                {
                    let allowed = milli(&ratio).unwrap_or(0);
                    // l / r > allowed / 1000, in integers.
                    if l * 1000 > allowed * r {
                        broken.push(format!(
                            "{k} max limit to request ratio per {per} is {}, but provided ratio is {:.6}",
                            ratio.0,
                            l as f64 / r as f64
                        ));
                    }
                }
            }
        }
    }
    if !broken.is_empty() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::forbidden(format!(
            "pods \"{name}\" is forbidden: [{}]",
            broken.join(", ")
        )));
    }
    Ok(())
}
