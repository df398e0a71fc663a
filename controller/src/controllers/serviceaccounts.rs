//! What every namespace has, as kube-controller-manager's serviceaccount
//! and root-ca-cert-publisher controllers make it: a ServiceAccount named
//! `default`, and a ConfigMap `kube-root-ca.crt` holding the cluster CA (what
//! a pod needs to trust the API server). Each is made again when deleted,
//! and the ConfigMap is put back when changed, while the namespace is
//! active.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};

use super::Ctx;

use crate::registry::serviceaccount::ROOT_CA;

async fn sync(ctx: &Ctx, ca: Option<&str>) {
    for ns in ctx.cache.store::<Namespace>().list(None) {
        if ns.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        if ctx
            .cache
            .store::<ServiceAccount>()
            .get(Some(&name), "default")
            .is_none()
        {
            let mut sa = ServiceAccount::default();
            sa.metadata.name = Some("default".into());
            sa.metadata.namespace = Some(name.clone());
            match ctx.reg.create(Some(&name), sa).await {
                Ok(_) => {}
                Err(e) if e.code == 409 => {}
                Err(e) => {
                    tracing::debug!(namespace = %name, error = %e, "cannot make its default service account")
                }
            }
        }
        let Some(ca) = ca else { continue };
        let want = BTreeMap::from([("ca.crt".to_string(), ca.to_string())]);
        match ctx.cache.store::<ConfigMap>().get(Some(&name), ROOT_CA) {
            Some(cm) if cm.data.as_ref() == Some(&want) => {}
            Some(_) => {
                let result = ctx
                    .reg
                    .modify::<ConfigMap>(
                        Some(&name),
                        ROOT_CA,
                        crate::registry::Write::Update,
                        |mut cm| {
                            cm.data = Some(want.clone());
                            cm.binary_data = None;
                            Ok(cm)
                        },
                    )
                    .await;
                if let Err(e) = result {
                    tracing::debug!(namespace = %name, error = %e, "cannot restore {ROOT_CA}");
                }
            }
            None => {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(ROOT_CA.into());
                cm.metadata.namespace = Some(name.clone());
                cm.data = Some(want.clone());
                match ctx.reg.create(Some(&name), cm).await {
                    Ok(_) => {}
                    Err(e) if e.code == 409 => {}
                    Err(e) => {
                        tracing::debug!(namespace = %name, error = %e, "cannot publish {ROOT_CA}")
                    }
                }
            }
        }
    }
}

pub fn start(ctx: &Ctx) {
    use tokio::sync::broadcast::error::RecvError;
    let ctx = ctx.clone();
    let mut namespaces = ctx.cache.store::<Namespace>().subscribe();
    let mut accounts = ctx.cache.store::<ServiceAccount>().subscribe();
    let mut maps = ctx.cache.store::<ConfigMap>().subscribe();
    tokio::spawn(async move {
        let ca = ctx.cfg.ca_pem.clone();
        loop {
            sync(&ctx, ca.as_deref()).await;
            // Until a change that matters: a namespace, a deleted default
            // account, a touched CA ConfigMap (or a missed change); a
            // minute at most, so a write that failed is tried again.
            let deadline = tokio::time::sleep(Duration::from_secs(60));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    c = namespaces.recv() => if !matches!(c, Err(RecvError::Closed)) { break },
                    c = accounts.recv() => match c {
                        Ok(c) if c.new.is_some() || !c.key.ends_with("/default") => {}
                        Err(RecvError::Closed) => {}
                        _ => break,
                    },
                    c = maps.recv() => match c {
                        Ok(c) if !c.key.ends_with(&format!("/{ROOT_CA}")) => {}
                        Err(RecvError::Closed) => {}
                        _ => break,
                    },
                    _ = &mut deadline => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
