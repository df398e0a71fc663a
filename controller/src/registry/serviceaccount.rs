//! kube-apiserver's ServiceAccount admission, on every pod created: the
//! pod runs as `serviceAccountName` (`default` when unset), which must
//! exist, and unless it or its account opts out
//! (`automountServiceAccountToken: false`) it gets the account's token
//! where in-cluster clients look for it: a projected volume
//! `kube-api-access-*` (a token bound to the pod, the cluster CA, the
//! namespace) mounted read-only at [`TOKEN_MOUNT`] in every container.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile, KeyToPath,
    ObjectFieldSelector, Pod, ProjectedVolumeSource, ServiceAccount, ServiceAccountTokenProjection,
    Volume, VolumeMount, VolumeProjection,
};
use weft_api::error::ApiError;

use super::Registry;

/// Where a pod's token, CA and namespace are.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA in every namespace.
pub const ROOT_CA: &str = "kube-root-ca.crt";
/// A projected token's life, as kube-apiserver's admission asks it.
const TOKEN_SECONDS: i64 = 3607;

/// A suffix of five of the letters kube's names use.
fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    uuid::Uuid::new_v4().as_bytes()[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Makes `default` and the CA ConfigMap of `ns` when missing: the
/// controller makes them too, but a pod created just after its namespace
/// must not wait for it.
async fn ensure_namespace_basics(reg: &Registry, ns: &str, account: &str) -> Result<(), ApiError> {
    let cache = reg.namespaces.as_ref();
    if account == "default"
        && cache.is_none_or(|c| c.service_account(ns, "default").is_none())
        && reg
            .find::<ServiceAccount>(Some(ns), "default")
            .await?
            .is_none()
    {
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("default".into());
        sa.metadata.namespace = Some(ns.into());
        match reg.create(Some(ns), sa).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(ca) = &reg.root_ca
        && cache.is_none_or(|c| !c.has_config_map(ns, ROOT_CA))
        && reg.find::<ConfigMap>(Some(ns), ROOT_CA).await?.is_none()
    {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(ROOT_CA.into());
        cm.metadata.namespace = Some(ns.into());
        cm.data = Some(BTreeMap::from([("ca.crt".to_string(), ca.to_string())]));
        match reg.create(Some(ns), cm).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The admission of `pod` (mutating): its account, and its token volume.
pub async fn admit_pod(reg: &Registry, pod: &mut Pod) -> Result<(), ApiError> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(());
    };
    let account = spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| spec.service_account.clone().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "default".into());
    spec.service_account_name = Some(account.clone());
    spec.service_account = Some(account.clone());
    // A namespace that does not exist is the create's to refuse (404).
    // The controllers' cache first: the store only for what it lacks.
    let cache = reg.namespaces.as_ref();
    if cache.is_none_or(|c| c.namespace(&ns).is_none())
        && reg
            .find::<k8s_openapi::api::core::v1::Namespace>(None, &ns)
            .await?
            .is_none()
    {
        return Ok(());
    }
    if !reg.dry_run {
        ensure_namespace_basics(reg, &ns, &account).await?;
    }
    let sa = match cache.and_then(|c| c.service_account(&ns, &account)) {
        Some(sa) => Some((*sa).clone()),
        None => reg
            .find::<ServiceAccount>(Some(&ns), &account)
            .await?
            .map(|(sa, _)| sa),
    };
    let Some(sa) = sa else {
        return Err(ApiError::forbidden(format!(
            "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{account}: serviceaccount \"{account}\" not found"
        ))
        .about("", "serviceaccounts", &account));
    };
    // The account's registry logins, for a pod that names none (kube's
    // ServiceAccount admission does the same).
    if spec.image_pull_secrets.as_ref().is_none_or(Vec::is_empty)
        && sa
            .image_pull_secrets
            .as_ref()
            .is_some_and(|s| !s.is_empty())
    {
        spec.image_pull_secrets = sa.image_pull_secrets.clone();
    }
    let automount = spec
        .automount_service_account_token
        .or(sa.automount_service_account_token)
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path.trim_end_matches('/') == TOKEN_MOUNT)
    };
    let all_mounted =
        spec.containers.iter().all(mounted) && spec.init_containers.iter().flatten().all(mounted);
    if all_mounted {
        return Ok(()); // the pod brings its own
    }
    let name = format!("kube-api-access-{}", suffix());
    spec.volumes.get_or_insert_with(Vec::new).push(Volume {
        name: name.clone(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o644),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: ROOT_CA.into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    });
    let mount = VolumeMount {
        name,
        mount_path: TOKEN_MOUNT.into(),
        read_only: Some(true),
        ..Default::default()
    };
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if !mounted(c) {
            c.volume_mounts
                .get_or_insert_with(Vec::new)
                .push(mount.clone());
        }
    }
    Ok(())
}
