//! The agent's connection to the controller: a kube-rs client built from
//! the node's kubeconfig, and the few writes every part of the agent makes.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

/// A client of the API with the node's credentials.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) client: kube::Client,
    /// The API server's URL, for messages.
    pub(crate) server: String,
    /// The node's bearer token, which the controller presents when it
    /// calls the agent.
    pub(crate) token: Option<String>,
}

impl Api {
    /// Reads the kubeconfig. Reaching the server is not tried here: the
    /// agent retries that for as long as it takes.
    pub(crate) async fn connect(path: &Path) -> Result<Self> {
        let kc = kube::config::Kubeconfig::read_from(path)
            .with_context(|| format!("read the kubeconfig {}", path.display()))?;
        let token = current_token(&kc);
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("use the kubeconfig {}", path.display()))?;
        // A controller that is down should be reported in seconds, not
        // after the default 30 s.
        config.connect_timeout = Some(Duration::from_secs(3));
        // The agent's loops retry on their own terms.
        config.default_retry = false;
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).context("build the API client")?;
        Ok(Self {
            client,
            server,
            token,
        })
    }

    pub(crate) fn all<K>(&self) -> kube::Api<K>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        kube::Api::all(self.client.clone())
    }

    pub(crate) fn namespaced<K>(&self, ns: &str) -> kube::Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        kube::Api::namespaced(self.client.clone(), ns)
    }

    /// Records an Event about a pod, as kubelet does (best effort: an
    /// Event that cannot be written is logged, never fatal).
    pub(crate) async fn pod_event(
        &self,
        pod: &Pod,
        node: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let now = weft_now();
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {
                "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
                "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "weft-agent", "host": node},
            "reportingComponent": "weft-agent",
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        let api: kube::Api<k8s_openapi::api::core::v1::Event> = self.namespaced(ns);
        let Ok(event) = serde_json::from_value(event) else {
            return;
        };
        if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
            tracing::warn!(pod = %format!("{ns}/{name}"), %reason, error = %describe(&e), "cannot record event");
        }
    }
}

/// The bearer token of the kubeconfig's current user, if it has one.
fn current_token(kc: &kube::config::Kubeconfig) -> Option<String> {
    use secrecy::ExposeSecret as _;
    let ctx = kc.current_context.as_deref()?;
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx)?
        .context
        .as_ref()?
        .user
        .clone()?;
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| a.name == user)?
        .auth_info
        .as_ref()?;
    auth.token.as_ref().map(|t| t.expose_secret().to_string())
}

/// Now as `2006-01-02T15:04:05Z`.
pub(crate) fn weft_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Now as Kubernetes MicroTime (`2006-01-02T15:04:05.000000Z`).
pub(crate) fn micro_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_second(now.as_secs() as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        now.subsec_micros()
    )
}

/// An API error as an operator should read it.
pub(crate) fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 401 => format!(
            "the controller refused the node's token (401 Unauthorized); create one with `weft controller node-token NODE`: {}",
            s.message
        ),
        kube::Error::Api(s) if s.code == 403 => format!("forbidden (403): {}", s.message),
        kube::Error::Api(s) => format!("{} ({}): {}", s.reason, s.code, s.message),
        other => {
            // Transport errors hide the cause (connection refused, no
            // route) a few sources down.
            let mut msg = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                let t = s.to_string();
                if !msg.contains(&t) {
                    msg = format!("{msg}: {t}");
                }
                src = s.source();
            }
            msg
        }
    }
}

/// Whether the error is a 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Whether the error is a 409.
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
