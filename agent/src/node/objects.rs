//! The pods' ConfigMaps and Secrets, read from the API with the node's
//! token (which may read exactly what the node's pods reference, as kube's
//! node authorizer allows): the [`ObjectSource`] of the node's sandbox.
//!
//! Each object is read at most once per [`FRESH`] whatever the number of
//! pods that use it (kubelet's "Get" change-detection strategy with a short
//! cache): the pod workers refresh volumes every second, so an update
//! reaches a running pod within about two. Values are never logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret, Service,
};

use super::api::{describe, is_not_found};
use crate::sandbox::env::ObjectSource;

/// How long a read answers for.
const FRESH: Duration = Duration::from_millis(900);
/// Entries older than this are dropped (the object is no longer used).
const FORGET: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Cached {
    ConfigMap(Option<Arc<ConfigMap>>),
    Secret(Option<Arc<Secret>>),
    Services(Vec<Arc<Service>>),
}

/// (kind, namespace, name).
type Key = (&'static str, String, String);

/// (pod uid, account, audience, seconds) to a token, when it was issued
/// and how long it lives.
type Tokens = HashMap<(String, String, String, i64), (String, Instant, Duration)>;

/// Reads objects through the node's API client.
pub(crate) struct ApiObjects {
    client: kube::Client,
    cache: Mutex<HashMap<Key, (Instant, Cached)>>,
    tokens: Mutex<Tokens>,
}

impl ApiObjects {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self {
            client,
            cache: Mutex::default(),
            tokens: Mutex::default(),
        }
    }

    fn cached(&self, kind: &'static str, ns: &str, name: &str) -> Option<Cached> {
        let cache = self.cache.lock().expect("cache lock");
        cache
            .get(&(kind, ns.to_string(), name.to_string()))
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, v)| v.clone())
    }

    fn remember(&self, kind: &'static str, ns: &str, name: &str, v: Cached) {
        let mut cache = self.cache.lock().expect("cache lock");
        cache.retain(|_, (at, _)| at.elapsed() < FORGET);
        cache.insert(
            (kind, ns.to_string(), name.to_string()),
            (Instant::now(), v),
        );
    }

    async fn get<K>(&self, ns: &str, name: &str) -> Result<Option<Arc<K>>, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: kube::Api<K> = kube::Api::namespaced(self.client.clone(), ns);
        match api.get(name).await {
            Ok(obj) => Ok(Some(Arc::new(obj))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(format!(
                "cannot read {} {ns}/{name}: {}",
                K::kind(&()).to_lowercase(),
                describe(&e)
            )),
        }
    }
}

#[async_trait]
impl ObjectSource for ApiObjects {
    async fn config_map(&self, ns: &str, name: &str) -> Result<Option<Arc<ConfigMap>>, String> {
        if let Some(Cached::ConfigMap(v)) = self.cached("configmaps", ns, name) {
            return Ok(v);
        }
        let v = self.get(ns, name).await?;
        self.remember("configmaps", ns, name, Cached::ConfigMap(v.clone()));
        Ok(v)
    }
    async fn claim(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<Arc<PersistentVolumeClaim>>, String> {
        // Never cached: a claim is read until it is bound.
        self.get(ns, name).await
    }
    async fn volume(&self, name: &str) -> Result<Option<Arc<PersistentVolume>>, String> {
        let api: kube::Api<PersistentVolume> = kube::Api::all(self.client.clone());
        match api.get(name).await {
            Ok(pv) => Ok(Some(Arc::new(pv))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(format!(
                "cannot read persistentvolume {name}: {}",
                describe(&e)
            )),
        }
    }
    async fn services(&self, ns: &str) -> Result<Vec<Arc<Service>>, String> {
        if let Some(Cached::Services(v)) = self.cached("services", ns, "") {
            return Ok(v);
        }
        let api: kube::Api<Service> = kube::Api::namespaced(self.client.clone(), ns);
        let list = api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| format!("cannot list the services of {ns}: {}", describe(&e)))?;
        let v: Vec<Arc<Service>> = list.items.into_iter().map(Arc::new).collect();
        self.remember("services", ns, "", Cached::Services(v.clone()));
        Ok(v)
    }
    async fn service_account_token(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        sa: &str,
        audience: Option<&str>,
        seconds: i64,
    ) -> Result<String, String> {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        use k8s_openapi::api::core::v1::ServiceAccount;
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (
            uid.clone(),
            sa.to_string(),
            audience.unwrap_or_default().to_string(),
            seconds,
        );
        {
            // Kubelet's rule: a new token once 80% of the old one's life
            // (or 24 hours) has passed.
            let mut tokens = self.tokens.lock().expect("token lock");
            tokens.retain(|_, (_, at, life)| at.elapsed() < *life);
            if let Some((token, at, life)) = tokens.get(&key)
                && at.elapsed() < (life.mul_f64(0.8)).min(Duration::from_secs(24 * 3600))
            {
                return Ok(token.clone());
            }
        }
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid},
            },
        });
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), ns);
        let answer: TokenRequest = api
            .create_subresource("token", sa, &kube::api::PostParams::default(), &body)
            .await
            .map_err(|e| {
                format!(
                    "cannot get a token of service account {ns}/{sa}: {}",
                    describe(&e)
                )
            })?;
        let token = answer
            .status
            .map(|s| s.token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token of service account {ns}/{sa} came back empty"))?;
        let life = Duration::from_secs(seconds.max(600).unsigned_abs());
        self.tokens
            .lock()
            .expect("token lock")
            .insert(key, (token.clone(), Instant::now(), life));
        Ok(token)
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, String> {
        if let Some(Cached::Secret(v)) = self.cached("secrets", ns, name) {
            return Ok(v);
        }
        let v = self.get(ns, name).await?;
        self.remember("secrets", ns, name, Cached::Secret(v.clone()));
        Ok(v)
    }
}
