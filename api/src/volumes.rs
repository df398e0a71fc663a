//! Pod volumes: what the API accepts and the agent mounts. `hostPath` is
//! honoured (a bind mount of a node path, checked against its `type`);
//! every other source is refused with a 422 naming it until it is
//! implemented, never accepted and left unmounted. The controller's
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

/// The sources Weft mounts.
pub const SUPPORTED_SOURCES: [&str; 1] = ["hostPath"];

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
