//! The pods' ConfigMaps and Secrets, read from the API with the node's
//! token (which may read exactly what the node's pods reference, as kube's
//! node authorizer allows): the [`ObjectSource`] of the node's sandbox.
//! Values are never logged.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};

use super::api::{describe, is_not_found};
use crate::sandbox::env::ObjectSource;

/// Reads objects through the node's API client.
pub(crate) struct ApiObjects {
    client: kube::Client,
}

impl ApiObjects {
    pub(crate) fn new(client: kube::Client) -> Self {
        Self { client }
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
        self.get(ns, name).await
    }
    async fn secret(&self, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, String> {
        self.get(ns, name).await
    }
}
