//! Storage: PersistentVolumes, PersistentVolumeClaims and StorageClasses,
//! validated as kube-apiserver validates them, for what Weft's agents can
//! mount: `hostPath` and `local` volumes, and the volumes of Weft's own
//! local provisioner (CSI driver [`LOCAL_DRIVER`]: a directory under the
//! agent's state directory on the node the volume belongs to). A claim
//! without a class gets the default one (kube's DefaultStorageClass
//! admission). Binding, provisioning and reclaiming are the volume
//! controller's (`controllers::volumes`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimStatus, PersistentVolumeSpec, PersistentVolumeStatus,
};
use k8s_openapi::api::storage::v1::StorageClass;
use weft_api::error::{ApiError, Cause};

use super::kind::{Kind, kind_fields};
use super::{Registry, decode_typed, store_error};

pub use weft_api::volumes::LOCAL_DRIVER;
/// The annotation that makes a StorageClass the default.
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The annotation the scheduler puts on a WaitForFirstConsumer claim: the
/// node its volume is to be made on.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

fn check_access_modes(out: &mut Vec<Cause>, field: &str, modes: Option<&Vec<String>>) {
    match modes {
        None => out.push(Cause::required(field)),
        Some(m) if m.is_empty() => out.push(Cause::required(field)),
        Some(m) => {
            for a in m {
                if !ACCESS_MODES.contains(&a.as_str()) {
                    out.push(Cause::not_supported(field, a, &ACCESS_MODES));
                }
            }
        }
    }
}

fn storage_of(
    m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
) -> Option<i128> {
    weft_api::quantity::units(&m?.get("storage")?.0)
}

/// The bytes a claim asks for.
#[must_use]
pub fn claim_request(pvc: &PersistentVolumeClaim) -> Option<i128> {
    storage_of(pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref())
}

/// The bytes a volume offers.
#[must_use]
pub fn volume_capacity(pv: &PersistentVolume) -> Option<i128> {
    storage_of(pv.spec.as_ref()?.capacity.as_ref())
}

#[async_trait]
impl Kind for StorageClass {
    kind_fields!();

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        if self.provisioner.is_empty() {
            out.push(Cause::required("provisioner"));
        }
        if let Some(m) = self.volume_binding_mode.as_deref()
            && !["Immediate", "WaitForFirstConsumer"].contains(&m)
        {
            out.push(Cause::not_supported(
                "volumeBindingMode",
                m,
                &["Immediate", "WaitForFirstConsumer"],
            ));
        }
        if let Some(p) = self.reclaim_policy.as_deref()
            && !["Delete", "Retain"].contains(&p)
        {
            out.push(Cause::not_supported(
                "reclaimPolicy",
                p,
                &["Delete", "Retain"],
            ));
        }
        if self.allow_volume_expansion == Some(true) {
            out.push(Cause::forbidden(
                "allowVolumeExpansion",
                "Weft's volumes are directories without a size to expand",
            ));
        }
        out
    }

    fn default_fields(&mut self) {
        self.reclaim_policy.get_or_insert_with(|| "Delete".into());
        self.volume_binding_mode
            .get_or_insert_with(|| "Immediate".into());
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let mut out = Vec::new();
        for (field, same) in [
            ("provisioner", self.provisioner == old.provisioner),
            ("parameters", self.parameters == old.parameters),
            ("reclaimPolicy", self.reclaim_policy == old.reclaim_policy),
            (
                "volumeBindingMode",
                self.volume_binding_mode == old.volume_binding_mode,
            ),
        ] {
            if !same {
                out.push(Cause::forbidden(
                    field,
                    format!("updates to {field} are forbidden."),
                ));
            }
        }
        out
    }
}

#[async_trait]
impl Kind for PersistentVolume {
    kind_fields!(spec: PersistentVolumeSpec, status: PersistentVolumeStatus);

    fn prepare_for_create(&mut self) {
        self.status = Some(PersistentVolumeStatus {
            phase: Some("Available".into()),
            ..Default::default()
        });
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.persistent_volume_reclaim_policy
            .get_or_insert_with(|| "Retain".into());
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = PersistentVolumeSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        check_access_modes(&mut out, "spec.accessModes", spec.access_modes.as_ref());
        match storage_of(spec.capacity.as_ref()) {
            None => out.push(Cause::required("spec.capacity[storage]")),
            Some(n) if n <= 0 => out.push(Cause::invalid(
                "spec.capacity[storage]",
                n,
                "must be greater than zero",
            )),
            Some(_) => {}
        }
        if let Some(p) = spec.persistent_volume_reclaim_policy.as_deref()
            && !["Retain", "Delete"].contains(&p)
        {
            out.push(Cause::not_supported(
                "spec.persistentVolumeReclaimPolicy",
                p,
                &["Retain", "Delete"],
            ));
        }
        if spec.volume_mode.as_deref() == Some("Block") {
            out.push(Cause::forbidden(
                "spec.volumeMode",
                "block volumes are not supported by Weft",
            ));
        }
        let sources = [
            ("hostPath", spec.host_path.is_some()),
            ("local", spec.local.is_some()),
            ("csi", spec.csi.is_some()),
            ("nfs", spec.nfs.is_some()),
            ("iscsi", spec.iscsi.is_some()),
            ("fc", spec.fc.is_some()),
            ("rbd", spec.rbd.is_some()),
            ("cephfs", spec.cephfs.is_some()),
            ("glusterfs", spec.glusterfs.is_some()),
            (
                "awsElasticBlockStore",
                spec.aws_elastic_block_store.is_some(),
            ),
            ("gcePersistentDisk", spec.gce_persistent_disk.is_some()),
            ("azureDisk", spec.azure_disk.is_some()),
            ("azureFile", spec.azure_file.is_some()),
        ];
        let set: Vec<&str> = sources
            .iter()
            .filter(|(_, on)| *on)
            .map(|(n, _)| *n)
            .collect();
        match set.as_slice() {
            [] => out.push(Cause::required("spec: must specify a volume type")),
            ["hostPath"] => {
                let p = &spec.host_path.as_ref().expect("set").path;
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    out.push(Cause::invalid(
                        "spec.hostPath.path",
                        p,
                        "must be an absolute path without '..'",
                    ));
                }
            }
            ["local"] => {
                let p = &spec.local.as_ref().expect("set").path;
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    out.push(Cause::invalid(
                        "spec.local.path",
                        p,
                        "must be an absolute path without '..'",
                    ));
                }
                if spec
                    .node_affinity
                    .as_ref()
                    .and_then(|a| a.required.as_ref())
                    .is_none()
                {
                    out.push(Cause::required(
                        "spec.nodeAffinity: a local volume needs one",
                    ));
                }
            }
            ["csi"] => {
                let csi = spec.csi.as_ref().expect("set");
                if csi.driver != LOCAL_DRIVER {
                    out.push(Cause::not_supported(
                        "spec.csi.driver",
                        &csi.driver,
                        &[LOCAL_DRIVER],
                    ));
                }
                if csi.volume_handle.is_empty()
                    || csi.volume_handle.contains('/')
                    || csi.volume_handle.starts_with('.')
                {
                    out.push(Cause::invalid(
                        "spec.csi.volumeHandle",
                        &csi.volume_handle,
                        "must be a file name (no '/', not starting with '.')",
                    ));
                }
            }
            [one] => out.push(Cause::not_supported(
                format!("spec.{one}"),
                *one,
                &["hostPath", "local", "csi"],
            )),
            [_, second, ..] => out.push(Cause::forbidden(
                format!("spec.{second}"),
                "may not specify more than 1 volume type",
            )),
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        let mut out = Vec::new();
        let (new, old) = (
            self.spec.clone().unwrap_or_default(),
            old.spec.clone().unwrap_or_default(),
        );
        let source =
            |s: &PersistentVolumeSpec| (s.host_path.clone(), s.local.clone(), s.csi.clone());
        if source(&new) != source(&old) {
            out.push(Cause::forbidden("spec", "the volume's source is immutable"));
        }
        if new.node_affinity != old.node_affinity && old.node_affinity.is_some() {
            out.push(Cause::forbidden(
                "spec.nodeAffinity",
                "field is immutable once set",
            ));
        }
        out
    }
}

#[async_trait]
impl Kind for PersistentVolumeClaim {
    kind_fields!(spec: PersistentVolumeClaimSpec, status: PersistentVolumeClaimStatus);

    fn prepare_for_create(&mut self) {
        self.status = Some(PersistentVolumeClaimStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        });
    }

    fn default_fields(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.volume_mode.get_or_insert_with(|| "Filesystem".into());
    }

    async fn admit(&mut self, reg: &Registry) -> Result<(), ApiError> {
        // kube's DefaultStorageClass admission: a claim that names no class
        // gets the default one (an empty name asks for none).
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.storage_class_name.is_none()
            && let Some(class) = default_class(reg).await?
        {
            spec.storage_class_name = class.metadata.name;
        }
        super::quota::limit_claim(reg, self).await
    }

    fn validate(&self) -> Vec<Cause> {
        let mut out = Vec::new();
        let empty = PersistentVolumeClaimSpec::default();
        let spec = self.spec.as_ref().unwrap_or(&empty);
        check_access_modes(&mut out, "spec.accessModes", spec.access_modes.as_ref());
        match claim_request(self) {
            None => out.push(Cause::required("spec.resources[storage]")),
            Some(n) if n <= 0 => out.push(Cause::invalid(
                "spec.resources[storage]",
                n,
                "must be greater than zero",
            )),
            Some(_) => {}
        }
        if spec.volume_mode.as_deref() == Some("Block") {
            out.push(Cause::forbidden(
                "spec.volumeMode",
                "block volumes are not supported by Weft",
            ));
        }
        for (field, set) in [
            ("selector", spec.selector.is_some()),
            ("dataSource", spec.data_source.is_some()),
            ("dataSourceRef", spec.data_source_ref.is_some()),
            (
                "volumeAttributesClassName",
                spec.volume_attributes_class_name.is_some(),
            ),
        ] {
            if set {
                out.push(Cause::forbidden(
                    format!("spec.{field}"),
                    "Weft's volume controller does not act on this yet",
                ));
            }
        }
        out
    }

    fn validate_update(&self, old: &Self) -> Vec<Cause> {
        // As kube: the spec is immutable once made, but for the volume the
        // controller binds it to (and the class kube defaults).
        let strip = |c: &Self| {
            let mut s = c.spec.clone().unwrap_or_default();
            s.volume_name = None;
            s
        };
        let mut out = Vec::new();
        if strip(self) != strip(old) {
            out.push(Cause::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
        if old
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.as_deref())
            .is_some_and(|v| !v.is_empty())
            && self.spec.as_ref().and_then(|s| s.volume_name.as_ref())
                != old.spec.as_ref().and_then(|s| s.volume_name.as_ref())
        {
            out.push(Cause::forbidden(
                "spec.volumeName",
                "a bound claim keeps its volume",
            ));
        }
        out
    }
}

/// The default StorageClass, if one is marked so.
pub async fn default_class(reg: &Registry) -> Result<Option<StorageClass>, ApiError> {
    let (kvs, _) = reg
        .store
        .list(&StorageClass::resource().list_prefix(None))
        .await
        .map_err(store_error)?;
    let mut defaults: Vec<StorageClass> = Vec::new();
    for kv in &kvs {
        let c: StorageClass = decode_typed(kv)?;
        if c.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DEFAULT_CLASS))
            .is_some_and(|v| v == "true")
        {
            defaults.push(c);
        }
    }
    // Several defaults: the newest, as kube (1.26+) picks.
    defaults.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    Ok(defaults.pop())
}
