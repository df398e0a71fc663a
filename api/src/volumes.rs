//! Pod volumes: what the API accepts and the agent mounts. `hostPath` (a
//! bind mount of a node path, checked against its `type`), `emptyDir`,
//! `configMap`, `secret`, `downwardAPI` and `projected` are honoured; every
//! other source is refused with a 422 naming it until it is implemented,
//! never accepted and left unmounted. The controller's
//! validation and the agent's bundle both go by this module.

use k8s_openapi::api::core::v1::{PodSpec, Volume};

use crate::{error::Cause, meta::dns_label_error, pod::containers_with_paths};

/// The `hostPath.type` values, as Kubernetes spells them ("" checks
/// nothing).
pub const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// The provisioner and CSI driver of Weft's local persistent volumes: a
/// directory under the agent's state directory on the volume's node.
pub const LOCAL_DRIVER: &str = "weft.dev/local-path";

/// The sources Weft mounts.
pub const SUPPORTED_SOURCES: [&str; 7] = [
    "configMap",
    "downwardAPI",
    "emptyDir",
    "hostPath",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// The pod fields a downwardAPI volume item's `fieldRef` may name (besides
/// `metadata.labels['k']` and `metadata.annotations['k']`).
pub const VOLUME_FIELD_PATHS: [&str; 5] = [
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
];

/// What is wrong with a path inside a volume (kube's
/// `validateLocalDescendingPath`).
#[must_use]
pub fn local_path_error(p: &str) -> Option<&'static str> {
    if p.is_empty() {
        Some("must not be empty")
    } else if p.starts_with('/') {
        Some("must be a relative path")
    } else if p.split('/').any(|c| c == "..") {
        Some("must not contain '..'")
    } else if p.starts_with("..") {
        Some("must not start with '..'")
    } else {
        None
    }
}

fn check_mode(out: &mut Vec<Cause>, field: String, mode: Option<i32>) {
    if let Some(m) = mode
        && !(0..=0o777).contains(&m)
    {
        out.push(Cause::invalid(
            field,
            m,
            "must be a number between 0 and 0777 (octal), both inclusive",
        ));
    }
}

fn check_item_path(
    out: &mut Vec<Cause>,
    field: String,
    p: &str,
    seen: &mut std::collections::HashSet<String>,
) {
    if let Some(e) = local_path_error(p) {
        out.push(Cause::invalid(field, p, e));
    } else if !seen.insert(p.to_string()) {
        out.push(Cause::invalid(field, p, "conflicting duplicate paths"));
    }
}

fn check_key_items(
    out: &mut Vec<Cause>,
    at: &str,
    items: Option<&Vec<k8s_openapi::api::core::v1::KeyToPath>>,
    seen: &mut std::collections::HashSet<String>,
) {
    for (i, it) in items.into_iter().flatten().enumerate() {
        let f = format!("{at}.items[{i}]");
        if it.key.is_empty() {
            out.push(Cause::required(format!("{f}.key")));
        }
        check_item_path(out, format!("{f}.path"), &it.path, seen);
        check_mode(out, format!("{f}.mode"), it.mode);
    }
}

fn check_downward_items(
    out: &mut Vec<Cause>,
    at: &str,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    spec: &PodSpec,
    seen: &mut std::collections::HashSet<String>,
) {
    for (i, it) in items.iter().enumerate() {
        let f = format!("{at}.items[{i}]");
        check_item_path(out, format!("{f}.path"), &it.path, seen);
        check_mode(out, format!("{f}.mode"), it.mode);
        match (&it.field_ref, &it.resource_field_ref) {
            (Some(r), None) => {
                let p = r.field_path.as_str();
                if !VOLUME_FIELD_PATHS.contains(&p) && !crate::workload::is_subscripted_field(p) {
                    out.push(Cause::not_supported(
                        format!("{f}.fieldRef.fieldPath"),
                        p,
                        &VOLUME_FIELD_PATHS,
                    ));
                }
            }
            (None, Some(r)) => {
                let name = r.container_name.as_deref().unwrap_or_default();
                if name.is_empty() {
                    out.push(Cause::required(format!(
                        "{f}.resourceFieldRef.containerName"
                    )));
                } else if !spec.containers.iter().any(|c| c.name == name) {
                    out.push(Cause::invalid(
                        format!("{f}.resourceFieldRef.containerName"),
                        name,
                        "must be the name of a container of the pod",
                    ));
                }
                if !crate::workload::RESOURCE_FIELDS.contains(&r.resource.as_str()) {
                    out.push(Cause::not_supported(
                        format!("{f}.resourceFieldRef.resource"),
                        &r.resource,
                        &crate::workload::RESOURCE_FIELDS,
                    ));
                }
            }
            (None, None) => out.push(Cause::required(format!(
                "{f}: one of fieldRef and resourceFieldRef"
            ))),
            (Some(_), Some(_)) => out.push(Cause::invalid(
                f,
                "",
                "fieldRef and resourceFieldRef can not be specified simultaneously",
            )),
        }
    }
}

/// The source fields a volume sets, by their JSON names.
#[must_use]
pub fn sources(v: &Volume) -> Vec<&'static str> {
    let set = [
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("cinder", v.cinder.is_some()),
        ("configMap", v.config_map.is_some()),
        ("csi", v.csi.is_some()),
        ("downwardAPI", v.downward_api.is_some()),
        ("emptyDir", v.empty_dir.is_some()),
        ("ephemeral", v.ephemeral.is_some()),
        ("fc", v.fc.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
        ("flocker", v.flocker.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("gitRepo", v.git_repo.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("hostPath", v.host_path.is_some()),
        ("image", v.image.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("nfs", v.nfs.is_some()),
        ("persistentVolumeClaim", v.persistent_volume_claim.is_some()),
        ("photonPersistentDisk", v.photon_persistent_disk.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("projected", v.projected.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("rbd", v.rbd.is_some()),
        ("scaleIO", v.scale_io.is_some()),
        ("secret", v.secret.is_some()),
        ("storageos", v.storageos.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
    ];
    set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
}

/// Whether a volume's content comes from other objects (configMap, secret,
/// downwardAPI, projected): kubelet mounts these read-only and rewrites
/// them when their sources change.
#[must_use]
pub fn is_projected(v: &Volume) -> bool {
    v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

/// Whether `p` is a relative path that stays below where it is joined:
/// no `..` component, not absolute (kube's subPath rule).
#[must_use]
pub fn is_contained_relative(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

/// Checks the pod's volumes and its containers' mounts of them.
pub fn check(out: &mut Vec<Cause>, spec: &PodSpec, path: &str) {
    let mut names = std::collections::HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("{path}.volumes[{i}]");
        match dns_label_error(&v.name) {
            Some(e) => out.push(Cause::invalid(format!("{at}.name"), &v.name, e)),
            None if !names.insert(v.name.as_str()) => {
                out.push(Cause::duplicate(format!("{at}.name"), &v.name));
            }
            None => {}
        }
        match sources(v).as_slice() {
            [] => out.push(Cause::required(format!("{at}: must specify a volume type"))),
            ["hostPath"] => {
                let hp = v.host_path.as_ref().expect("set");
                if !hp.path.starts_with('/') {
                    out.push(Cause::invalid(
                        format!("{at}.hostPath.path"),
                        &hp.path,
                        "must be an absolute path",
                    ));
                } else if hp.path.split('/').any(|c| c == "..") {
                    out.push(Cause::invalid(
                        format!("{at}.hostPath.path"),
                        &hp.path,
                        "must not contain '..'",
                    ));
                }
                let t = hp.type_.as_deref().unwrap_or_default();
                if !HOST_PATH_TYPES.contains(&t) {
                    out.push(Cause::not_supported(
                        format!("{at}.hostPath.type"),
                        t,
                        &HOST_PATH_TYPES[1..],
                    ));
                }
            }
            ["emptyDir"] => {
                let ed = v.empty_dir.as_ref().expect("set");
                let medium = ed.medium.as_deref().unwrap_or_default();
                if !["", "Memory"].contains(&medium) {
                    out.push(Cause::not_supported(
                        format!("{at}.emptyDir.medium"),
                        medium,
                        &["", "Memory"],
                    ));
                }
                if let Some(q) = &ed.size_limit {
                    match crate::quantity::parse(&q.0) {
                        None => out.push(Cause::invalid(
                            format!("{at}.emptyDir.sizeLimit"),
                            &q.0,
                            "must be a quantity such as 64Mi",
                        )),
                        Some(n) if n <= 0 => out.push(Cause::invalid(
                            format!("{at}.emptyDir.sizeLimit"),
                            &q.0,
                            "must be greater than zero",
                        )),
                        Some(_) => {}
                    }
                }
            }
            ["persistentVolumeClaim"] => {
                let c = v.persistent_volume_claim.as_ref().expect("set");
                if c.claim_name.is_empty() {
                    out.push(Cause::required(format!(
                        "{at}.persistentVolumeClaim.claimName"
                    )));
                }
            }
            ["configMap"] => {
                let cm = v.config_map.as_ref().expect("set");
                let f = format!("{at}.configMap");
                if cm.name.is_empty() {
                    out.push(Cause::required(format!("{f}.name")));
                }
                check_mode(out, format!("{f}.defaultMode"), cm.default_mode);
                check_key_items(out, &f, cm.items.as_ref(), &mut Default::default());
            }
            ["secret"] => {
                let sv = v.secret.as_ref().expect("set");
                let f = format!("{at}.secret");
                if sv.secret_name.as_deref().is_none_or(str::is_empty) {
                    out.push(Cause::required(format!("{f}.secretName")));
                }
                check_mode(out, format!("{f}.defaultMode"), sv.default_mode);
                check_key_items(out, &f, sv.items.as_ref(), &mut Default::default());
            }
            ["downwardAPI"] => {
                let d = v.downward_api.as_ref().expect("set");
                let f = format!("{at}.downwardAPI");
                check_mode(out, format!("{f}.defaultMode"), d.default_mode);
                check_downward_items(
                    out,
                    &f,
                    d.items.as_deref().unwrap_or_default(),
                    spec,
                    &mut Default::default(),
                );
            }
            ["projected"] => {
                let p = v.projected.as_ref().expect("set");
                let f = format!("{at}.projected");
                check_mode(out, format!("{f}.defaultMode"), p.default_mode);
                let mut seen = std::collections::HashSet::new();
                for (i, src) in p.sources.iter().flatten().enumerate() {
                    let sf = format!("{f}.sources[{i}]");
                    let set = [
                        ("configMap", src.config_map.is_some()),
                        ("secret", src.secret.is_some()),
                        ("downwardAPI", src.downward_api.is_some()),
                        ("serviceAccountToken", src.service_account_token.is_some()),
                        ("clusterTrustBundle", src.cluster_trust_bundle.is_some()),
                    ];
                    let named: Vec<&str> =
                        set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect();
                    match named.as_slice() {
                        [] => out.push(Cause::required(format!("{sf}: one source"))),
                        [_, second, ..] => out.push(Cause::forbidden(
                            format!("{sf}.{second}"),
                            "may not specify more than 1 volume type per source",
                        )),
                        ["clusterTrustBundle"] => out.push(Cause::forbidden(
                            format!("{sf}.clusterTrustBundle"),
                            "Weft does not serve ClusterTrustBundles",
                        )),
                        _ => {}
                    }
                    if let Some(cm) = &src.config_map {
                        if cm.name.is_empty() {
                            out.push(Cause::required(format!("{sf}.configMap.name")));
                        }
                        check_key_items(
                            out,
                            &format!("{sf}.configMap"),
                            cm.items.as_ref(),
                            &mut seen,
                        );
                    }
                    if let Some(s) = &src.secret {
                        if s.name.is_empty() {
                            out.push(Cause::required(format!("{sf}.secret.name")));
                        }
                        check_key_items(out, &format!("{sf}.secret"), s.items.as_ref(), &mut seen);
                    }
                    if let Some(t) = &src.service_account_token {
                        let tf = format!("{sf}.serviceAccountToken");
                        // As kube: at least 10 minutes, at most 2^32 s.
                        if let Some(secs) = t.expiration_seconds
                            && !(600..=1 << 32).contains(&secs)
                        {
                            let why = if secs < 600 {
                                "may not specify a duration less than 10 minutes"
                            } else {
                                "may not specify a duration larger than 2^32 seconds"
                            };
                            out.push(Cause::invalid(format!("{tf}.expirationSeconds"), secs, why));
                        }
                        if t.path.is_empty() {
                            out.push(Cause::required(format!("{tf}.path")));
                        } else {
                            check_item_path(out, format!("{tf}.path"), &t.path, &mut seen);
                        }
                    }
                    if let Some(d) = &src.downward_api {
                        check_downward_items(
                            out,
                            &format!("{sf}.downwardAPI"),
                            d.items.as_deref().unwrap_or_default(),
                            spec,
                            &mut seen,
                        );
                    }
                }
            }
            [one] => out.push(Cause::not_supported(
                format!("{at}.{one}"),
                one,
                &SUPPORTED_SOURCES,
            )),
            [_, ..] => out.push(Cause::forbidden(
                format!("{at}.{}", sources(v)[1]),
                "may not specify more than 1 volume type",
            )),
        }
    }
    for (at, c) in containers_with_paths(spec) {
        let base = format!("{path}.{at}");
        let mut paths = std::collections::HashSet::new();
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            let mat = format!("{base}.volumeMounts[{j}]");
            if !names.contains(m.name.as_str()) {
                out.push(Cause::not_found(format!("{mat}.name"), &m.name));
            }
            if m.mount_path.is_empty() {
                out.push(Cause::required(format!("{mat}.mountPath")));
            } else if !m.mount_path.starts_with('/') {
                out.push(Cause::invalid(
                    format!("{mat}.mountPath"),
                    &m.mount_path,
                    "must be an absolute path",
                ));
            } else if !paths.insert(m.mount_path.trim_end_matches('/')) {
                out.push(Cause::invalid(
                    format!("{mat}.mountPath"),
                    &m.mount_path,
                    "must be unique",
                ));
            }
            if let Some(sp) = m.sub_path.as_deref().filter(|s| !s.is_empty())
                && !is_contained_relative(sp)
            {
                out.push(Cause::invalid(
                    format!("{mat}.subPath"),
                    sp,
                    "must be a relative path without '..'",
                ));
            }
            if m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
                out.push(Cause::forbidden(
                    format!("{mat}.subPathExpr"),
                    "is not supported by Weft yet",
                ));
            }
            if let Some(p) = m.mount_propagation.as_deref()
                && p != "None"
            {
                out.push(Cause::not_supported(
                    format!("{mat}.mountPropagation"),
                    p,
                    &["None"],
                ));
            }
            if let Some(r) = m.recursive_read_only.as_deref()
                && r != "Disabled"
            {
                out.push(Cause::not_supported(
                    format!("{mat}.recursiveReadOnly"),
                    r,
                    &["Disabled"],
                ));
            }
        }
        if c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
            out.push(Cause::forbidden(
                format!("{base}.volumeDevices"),
                "block volumes are not supported by Weft",
            ));
        }
    }
}
