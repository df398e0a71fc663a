//! The volumes the agent makes for a pod (every type but hostPath, which
//! is the node's own): each a directory under the pod's directory,
//! `volumes/<name>`, that the container's bundle bind-mounts.
//!
//! - `emptyDir`: an empty directory (mode 0777, as kubelet makes it), or a
//!   tmpfs for `medium: Memory`, sized by `sizeLimit` (the node's memory
//!   otherwise). A disk emptyDir's `sizeLimit` is enforced by eviction
//!   ([`usage`] measures it; the pod worker evicts).
//! - `configMap`, `secret`, `downwardAPI`, `projected`: files written as
//!   kubelet's atomic writer does: the content in a hidden timestamped
//!   directory, `..data` a symlink to it, and each visible entry a symlink
//!   through `..data`; an update writes a new directory and swaps `..data`
//!   with one rename, so a reader sees the old files or the new, never a
//!   mix. Secrets (and projected volumes holding them) live on a tmpfs, never
//!   on the node's disk. [`refresh`] rewrites them when their sources change.
//!
//! File modes follow `defaultMode` and `items[].mode` (0644 by default);
//! with the pod's `fsGroup`, files and directories belong to that group and
//! are group-readable, as kubelet sets them.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, PodSpec, Secret, Volume};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::env::{ObjectSource, PodFacts, field_value, resource_value};

/// Where the agent keeps the data of Weft's local persistent volumes (under
/// the sandbox's state directory), one directory per volume handle.
pub const PERSISTENT_DIR: &str = "persistent";
/// The file of a pod's directory that records where its claims resolved.
const CLAIMS_FILE: &str = "claims.json";

/// A claim resolved to a node path: (path, hostPath type, read-only).
type Claimed = BTreeMap<String, (String, String, bool)>;

/// Resolves the pod's persistentVolumeClaim volumes to node paths, making
/// the directory of a local volume (0777, as local-path provisioners make
/// them; with the pod's fsGroup as its group), and records them in the
/// pod's directory for its containers' starts. Err in kubelet's words for a
/// claim that is missing, not bound yet, or whose volume is elsewhere.
///
/// # Errors
/// See above; I/O errors with the path.
pub async fn prepare_claims(
    pod_dir: &Path,
    persistent_root: &Path,
    pod: &Pod,
    objects: &dyn ObjectSource,
) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let node = spec.node_name.clone().unwrap_or_default();
    let mut claimed = Claimed::new();
    for v in spec.volumes.iter().flatten() {
        let Some(src) = &v.persistent_volume_claim else {
            continue;
        };
        let name = &src.claim_name;
        let claim = objects
            .claim(ns, name)
            .await?
            .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" not found"))?;
        let vol_name = claim
            .spec
            .as_ref()
            .and_then(|s| s.volume_name.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("persistentvolumeclaim \"{name}\" is not bound yet"))?;
        let pv = objects
            .volume(&vol_name)
            .await?
            .ok_or_else(|| format!("persistentvolume \"{vol_name}\" not found"))?;
        let pv_spec = pv.spec.clone().unwrap_or_default();
        if pv_spec.claim_ref.as_ref().and_then(|r| r.uid.as_ref()) != claim.metadata.uid.as_ref() {
            return Err(format!(
                "persistentvolume \"{vol_name}\" is not bound to claim \"{name}\""
            ));
        }
        let (path, ty) = if let Some(csi) = &pv_spec.csi {
            if csi.driver != weft_api::volumes::LOCAL_DRIVER {
                return Err(format!(
                    "volume {vol_name}: driver {} is not Weft's",
                    csi.driver
                ));
            }
            let handle = &csi.volume_handle;
            if handle.is_empty() || handle.contains('/') || handle.starts_with('.') {
                return Err(format!("volume {vol_name}: bad handle {handle:?}"));
            }
            let terms = pv_spec
                .node_affinity
                .as_ref()
                .and_then(|a| a.required.as_ref())
                .map(|r| r.node_selector_terms.clone())
                .unwrap_or_default();
            let here = terms.iter().any(|t| {
                t.match_fields.iter().flatten().any(|f| {
                    f.key == "metadata.name"
                        && f.operator == "In"
                        && f.values.iter().flatten().any(|n| *n == node)
                })
            });
            if !here {
                return Err(format!("volume {vol_name} does not live on node {node}"));
            }
            let dir = persistent_root.join(handle);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o777)
                .create(&dir)
                .map_err(|e| io("create", &dir, e))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                .map_err(|e| io("chmod", &dir, e))?;
            if let Some(g) = fs_group(spec) {
                chown_group(&dir, g, true)?;
            }
            (dir.display().to_string(), "Directory".to_string())
        } else if let Some(hp) = &pv_spec.host_path {
            (hp.path.clone(), hp.type_.clone().unwrap_or_default())
        } else if let Some(local) = &pv_spec.local {
            (local.path.clone(), "Directory".to_string())
        } else {
            return Err(format!("volume {vol_name}: no source Weft mounts"));
        };
        claimed.insert(v.name.clone(), (path, ty, src.read_only == Some(true)));
    }
    if claimed.is_empty() {
        return Ok(());
    }
    let file = pod_dir.join(CLAIMS_FILE);
    fs::write(
        &file,
        serde_json::to_vec(&claimed).expect("a map serializes"),
    )
    .map_err(|e| io("write", &file, e))
}

/// The pod's volumes with each persistentVolumeClaim as the hostPath its
/// claim resolved to (see [`prepare_claims`]), and the names of those that
/// are read-only.
#[must_use]
pub fn with_claims(pod_dir: &Path, volumes: &[Volume]) -> (Vec<Volume>, Vec<String>) {
    let claimed: Claimed = fs::read(pod_dir.join(CLAIMS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut read_only = Vec::new();
    let out = volumes
        .iter()
        .map(
            |v| match (&v.persistent_volume_claim, claimed.get(&v.name)) {
                (Some(_), Some((path, ty, ro))) => {
                    if *ro {
                        read_only.push(v.name.clone());
                    }
                    Volume {
                        name: v.name.clone(),
                        host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                            path: path.clone(),
                            type_: Some(ty.clone()),
                        }),
                        ..Volume::default()
                    }
                }
                _ => v.clone(),
            },
        )
        .collect();
    (out, read_only)
}

/// The node paths the pod in `pod_dir` mounts through its claims.
#[must_use]
pub fn claimed_paths(pod_dir: &Path) -> Vec<String> {
    let claimed: Claimed = fs::read(pod_dir.join(CLAIMS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    claimed.into_values().map(|(p, _, _)| p).collect()
}

/// The local volume directories under `persistent_root` that none of
/// `live` (the handles of the volumes that exist) names: what a deleted
/// volume left.
#[must_use]
pub fn orphaned_volumes(
    persistent_root: &Path,
    live: &std::collections::HashSet<String>,
) -> Vec<PathBuf> {
    fs::read_dir(persistent_root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| !live.contains(&e.file_name().to_string_lossy().into_owned()))
        .map(|e| e.path())
        .collect()
}

/// Where a pod's volumes live under its directory.
pub const VOLUMES_DIR: &str = "volumes";
/// Where the containers' `subPath` mounts are staged, under the pod's
/// directory: `<container>/<volume mount index>`.
pub const SUBPATHS_DIR: &str = "subpaths";
/// The pod's `/dev/shm`, under its directory: a tmpfs its containers share.
pub const SHM_DIR: &str = "shm";
/// Its size: containerd's default for a pod sandbox's /dev/shm.
const SHM_SIZE: &str = "size=65536k";

/// Mounts the pod's `/dev/shm` (a 64 MiB tmpfs, mode 1777) unless it is
/// mounted, and returns its path.
///
/// # Errors
/// When the directory cannot be made or the tmpfs mounted.
pub fn mount_shm(pod_dir: &Path) -> Result<PathBuf, String> {
    let dir = pod_dir.join(SHM_DIR);
    if mounted_at(&dir) {
        return Ok(dir);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    mount(
        Some("shm"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,{SHM_SIZE}").as_str()),
    )
    .map_err(|e| format!("mount the pod's /dev/shm at {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Whether `p` is a mount point.
fn mounted_at(p: &Path) -> bool {
    let wanted = p.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo").is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| m == wanted)
    })
}
/// The symlink to the current content of an atomically written volume.
const DATA_LINK: &str = "..data";
/// kube's default file mode of configMap, secret, downwardAPI and
/// projected volumes.
const DEFAULT_MODE: u32 = 0o644;

/// One file of a volume: its bytes and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Its content.
    pub data: Vec<u8>,
    /// Its permission bits.
    pub mode: u32,
}

/// A volume's files by relative path.
pub type Payload = BTreeMap<String, File>;

/// Whether the agent makes this volume (not a hostPath).
#[must_use]
pub fn is_made(v: &Volume) -> bool {
    v.empty_dir.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
}

pub use weft_api::volumes::is_projected;
/// Whether the volume holds Secret data (kept on a tmpfs).
fn holds_secrets(v: &Volume) -> bool {
    v.secret.is_some()
        || v.projected.as_ref().is_some_and(|p| {
            p.sources
                .iter()
                .flatten()
                .any(|s| s.secret.is_some() || s.service_account_token.is_some())
        })
}

/// The node directory of each volume the agent makes, by name.
#[must_use]
pub fn dirs(pod_dir: &Path, spec: &PodSpec) -> BTreeMap<String, PathBuf> {
    spec.volumes
        .iter()
        .flatten()
        .filter(|v| is_made(v))
        .map(|v| (v.name.clone(), pod_dir.join(VOLUMES_DIR).join(&v.name)))
        .collect()
}

/// Whether `p` is a path a volume file may have: relative, no `..`
/// component, not starting with `..` (kube's rule; the API checks it too).
fn safe_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.starts_with("..")
        && p.split('/').all(|c| !c.is_empty() && c != "..")
}

fn mode_of(item: Option<i32>, default: Option<i32>) -> u32 {
    item.or(default)
        .and_then(|m| u32::try_from(m).ok())
        .map_or(DEFAULT_MODE, |m| m & 0o777)
}

/// Files from a map of keys (a ConfigMap's or Secret's), all of them or
/// only `items`.
fn keyed(
    out: &mut Payload,
    keys: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    missing_key: impl Fn(&str) -> String,
) -> Result<(), String> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match keys.get(&it.key) {
                    Some(v) => {
                        out.insert(
                            it.path.clone(),
                            File {
                                data: v.clone(),
                                mode: mode_of(it.mode, default_mode),
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(missing_key(&it.key)),
                }
            }
        }
        _ => {
            for (k, v) in keys {
                out.insert(
                    k.clone(),
                    File {
                        data: v.clone(),
                        mode: mode_of(None, default_mode),
                    },
                );
            }
        }
    }
    Ok(())
}

fn config_map_keys(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut keys: BTreeMap<String, Vec<u8>> = cm
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    for (k, v) in cm.binary_data.iter().flatten() {
        keys.insert(k.clone(), v.0.clone());
    }
    keys
}

fn secret_keys(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// The downward API items' files.
fn downward(
    out: &mut Payload,
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    default_mode: Option<i32>,
    pod: &Pod,
    facts: &PodFacts,
) -> Result<(), String> {
    let spec = pod.spec.as_ref();
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            field_value(f, pod, facts)?
        } else if let Some(r) = &it.resource_field_ref {
            let name = r.container_name.as_deref().unwrap_or_default();
            let c = spec
                .into_iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| c.name == name)
                .ok_or_else(|| {
                    format!(
                        "downwardAPI item {:?}: no container named {name:?}",
                        it.path
                    )
                })?;
            resource_value(r, c, facts)?
        } else {
            return Err(format!("downwardAPI item {:?}: no source", it.path));
        };
        out.insert(
            it.path.clone(),
            File {
                data: value.into_bytes(),
                mode: mode_of(it.mode, default_mode),
            },
        );
    }
    Ok(())
}

/// The files of ConfigMap `name` (all keys, or `items`), into `out`; a
/// missing one is an error in kubelet's words unless `optional`.
async fn config_map_files(
    out: &mut Payload,
    objects: &dyn ObjectSource,
    ns: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<(), String> {
    let optional = optional == Some(true);
    match objects.config_map(ns, name).await? {
        Some(cm) => keyed(
            out,
            &config_map_keys(&cm),
            items,
            default_mode,
            optional,
            |k| format!("configmap references non-existent config key: {k}"),
        ),
        None if optional => Ok(()),
        None => Err(format!("configmap \"{name}\" not found")),
    }
}

/// As [`config_map_files`], for Secret `name`.
async fn secret_files(
    out: &mut Payload,
    objects: &dyn ObjectSource,
    ns: &str,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<(), String> {
    let optional = optional == Some(true);
    match objects.secret(ns, name).await? {
        Some(s) => keyed(out, &secret_keys(&s), items, default_mode, optional, |k| {
            format!("references non-existent secret key: {k}")
        }),
        None if optional => Ok(()),
        None => Err(format!("secret \"{name}\" not found")),
    }
}

/// What the volume should hold now, from its sources; `None` for a volume
/// that is not projected. Err in kubelet's words (`configmap "x" not
/// found`), unless the source is optional.
pub async fn payload(
    v: &Volume,
    pod: &Pod,
    facts: &PodFacts,
    objects: &dyn ObjectSource,
) -> Result<Option<Payload>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Payload::new();
    if let Some(src) = &v.config_map {
        let items = src.items.as_ref();
        config_map_files(
            &mut out,
            objects,
            ns,
            &src.name,
            items,
            src.default_mode,
            src.optional,
        )
        .await?;
    } else if let Some(src) = &v.secret {
        let name = src.secret_name.clone().unwrap_or_default();
        let items = src.items.as_ref();
        secret_files(
            &mut out,
            objects,
            ns,
            &name,
            items,
            src.default_mode,
            src.optional,
        )
        .await?;
    } else if let Some(src) = &v.downward_api {
        downward(
            &mut out,
            src.items.as_deref().unwrap_or_default(),
            src.default_mode,
            pod,
            facts,
        )?;
    } else if let Some(p) = &v.projected {
        for s in p.sources.iter().flatten() {
            if let Some(src) = &s.config_map {
                let items = src.items.as_ref();
                config_map_files(
                    &mut out,
                    objects,
                    ns,
                    &src.name,
                    items,
                    p.default_mode,
                    src.optional,
                )
                .await?;
            } else if let Some(src) = &s.secret {
                let items = src.items.as_ref();
                secret_files(
                    &mut out,
                    objects,
                    ns,
                    &src.name,
                    items,
                    p.default_mode,
                    src.optional,
                )
                .await?;
            } else if let Some(src) = &s.downward_api {
                downward(
                    &mut out,
                    src.items.as_deref().unwrap_or_default(),
                    p.default_mode,
                    pod,
                    facts,
                )?;
            } else if let Some(src) = &s.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref())
                    .filter(|s| !s.is_empty())
                    .unwrap_or("default");
                let token = objects
                    .service_account_token(
                        pod,
                        sa,
                        src.audience.as_deref().filter(|a| !a.is_empty()),
                        src.expiration_seconds.unwrap_or(3600),
                    )
                    .await?;
                out.insert(
                    src.path.clone(),
                    File {
                        data: token.into_bytes(),
                        mode: mode_of(p.default_mode, None),
                    },
                );
            } else {
                return Err("a projected source Weft does not serve".into());
            }
        }
    } else {
        return Ok(None);
    }
    if let Some(bad) = out.keys().find(|p| !safe_path(p)) {
        return Err(format!(
            "volume {:?}: path {bad:?} is not a relative path inside the volume",
            v.name
        ));
    }
    Ok(Some(out))
}

fn io(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

/// Mounts a tmpfs of `bytes` at `dir` (made if need be).
fn mount_tmpfs(dir: &Path, bytes: u64, mode: u32) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("create", dir, e))?;
    let data = format!("size={bytes},mode={mode:o}");
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| format!("mount a tmpfs on {}: {e}", dir.display()))
}

fn is_mountpoint(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| m == want)
}

/// The tmpfs size for a secret volume holding `bytes` of files: room for
/// the old content and the new during an update, and some slack.
fn secret_tmpfs_size(bytes: u64) -> u64 {
    (bytes * 2 + (1 << 20)).next_multiple_of(4096)
}

/// Makes every volume the agent makes for `pod` under `pod_dir`, filled.
/// `fs_group` is the pod's fsGroup.
///
/// # Errors
/// In kubelet's words for a missing source; an I/O error otherwise.
pub async fn prepare(
    pod_dir: &Path,
    pod: &Pod,
    facts: &PodFacts,
    objects: &dyn ObjectSource,
    node_memory: u64,
) -> Result<(), String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let fs_group = fs_group(spec);
    let root = pod_dir.join(VOLUMES_DIR);
    for v in spec.volumes.iter().flatten().filter(|v| is_made(v)) {
        let dir = root.join(&v.name);
        if let Some(ed) = &v.empty_dir {
            if ed.medium.as_deref() == Some("Memory") {
                let size = ed
                    .size_limit
                    .as_ref()
                    .and_then(|q| weft_api::quantity::units(&q.0))
                    .and_then(|b| u64::try_from(b).ok())
                    .unwrap_or(node_memory)
                    .max(4096);
                if !is_mountpoint(&dir) {
                    mount_tmpfs(&dir, size, 0o777)?;
                }
            } else {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o777)
                    .create(&dir)
                    .map_err(|e| io("create", &dir, e))?;
            }
            // The umask took some bits: set them.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
                .map_err(|e| io("chmod", &dir, e))?;
            if let Some(g) = fs_group {
                chown_group(&dir, g, true)?;
            }
            continue;
        }
        let files = payload(v, pod, facts, objects)
            .await
            .map_err(|e| format!("MountVolume.SetUp failed for volume \"{}\" : {e}", v.name))?
            .unwrap_or_default();
        if holds_secrets(v) && !is_mountpoint(&dir) {
            let bytes: u64 = files.values().map(|f| f.data.len() as u64).sum();
            mount_tmpfs(&dir, secret_tmpfs_size(bytes), 0o755)?;
        } else {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| io("create", &dir, e))?;
        }
        write_atomic(&dir, &files, fs_group)?;
    }
    Ok(())
}

fn fs_group(spec: &PodSpec) -> Option<u32> {
    spec.security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

fn chown_group(p: &Path, gid: u32, setgid_dir: bool) -> Result<(), String> {
    std::os::unix::fs::lchown(p, None, Some(gid)).map_err(|e| io("chown", p, e))?;
    if setgid_dir {
        let mode = fs::metadata(p)
            .map_err(|e| io("stat", p, e))?
            .permissions()
            .mode();
        fs::set_permissions(p, fs::Permissions::from_mode((mode & 0o7777) | 0o2000))
            .map_err(|e| io("chmod", p, e))?;
    }
    Ok(())
}

/// Rewrites the projected volumes of `pod` whose sources changed (the
/// pod's labels and annotations for the downward API come from `pod`, the
/// API's current copy). Returns the names of the volumes rewritten.
///
/// # Errors
/// The first failure; other volumes are still tried.
pub async fn refresh(
    pod_dir: &Path,
    pod: &Pod,
    facts: &PodFacts,
    objects: &dyn ObjectSource,
) -> Result<Vec<String>, String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let fs_group = fs_group(spec);
    let mut done = Vec::new();
    let mut first_err = None;
    for v in spec.volumes.iter().flatten().filter(|v| is_projected(v)) {
        let dir = pod_dir.join(VOLUMES_DIR).join(&v.name);
        if !dir.exists() {
            continue;
        }
        let files = match payload(v, pod, facts, objects).await {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => {
                first_err.get_or_insert(format!("volume \"{}\": {e}", v.name));
                continue;
            }
        };
        if current(&dir).as_ref() == Some(&files) {
            continue;
        }
        if holds_secrets(v) && is_mountpoint(&dir) {
            // Room for the old content and the new.
            let bytes: u64 = files.values().map(|f| f.data.len() as u64).sum::<u64>()
                + current(&dir)
                    .map(|c| c.values().map(|f| f.data.len() as u64).sum())
                    .unwrap_or(0);
            let data = format!("size={}", secret_tmpfs_size(bytes));
            let _ = mount(
                None::<&str>,
                &dir,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some(data.as_str()),
            );
        }
        match write_atomic(&dir, &files, fs_group) {
            Ok(()) => done.push(v.name.clone()),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// What the volume at `dir` holds now (through `..data`).
fn current(dir: &Path) -> Option<Payload> {
    let data = fs::canonicalize(dir.join(DATA_LINK)).ok()?;
    let mut out = Payload::new();
    fn walk(base: &Path, at: &Path, out: &mut Payload) -> Option<()> {
        for e in fs::read_dir(at).ok()? {
            let e = e.ok()?;
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                walk(base, &p, out)?;
            } else if ft.is_file() {
                let rel = p.strip_prefix(base).ok()?.to_string_lossy().into_owned();
                let mode = e.metadata().ok()?.permissions().mode() & 0o777;
                out.insert(
                    rel,
                    File {
                        data: fs::read(&p).ok()?,
                        mode,
                    },
                );
            }
        }
        Some(())
    }
    walk(&data, &data, &mut out)?;
    Some(out)
}

/// Writes `files` into `dir` as kubelet's atomic writer does (see the
/// module docs).
///
/// # Errors
/// I/O errors, with the path.
pub fn write_atomic(dir: &Path, files: &Payload, fs_group: Option<u32>) -> Result<(), String> {
    let stamp = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("..{}_{:09}", now.as_secs(), now.subsec_nanos())
    };
    let new = dir.join(&stamp);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&new)
        .map_err(|e| io("create", &new, e))?;
    if let Err(e) = fill(&new, files, fs_group) {
        let _ = fs::remove_dir_all(&new);
        return Err(e);
    }
    // The swap: a new symlink renamed over `..data`.
    let old = fs::read_link(dir.join(DATA_LINK)).ok();
    let tmp = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(|e| io("symlink", &tmp, e))?;
    fs::rename(&tmp, dir.join(DATA_LINK)).map_err(|e| io("rename", &tmp, e))?;
    // Visible entries: one symlink per top-level name, through `..data`.
    let tops: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|k| k.split('/').next()).collect();
    for top in &tops {
        let link = dir.join(top);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(top), &link)
                .map_err(|e| io("symlink", &link, e))?;
        }
    }
    for e in fs::read_dir(dir).map_err(|e| io("read", dir, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            continue;
        }
        if !tops.contains(name.as_str()) {
            let _ = fs::remove_file(e.path());
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

/// Writes `files` into the new content directory `new`.
fn fill(new: &Path, files: &Payload, fs_group: Option<u32>) -> Result<(), String> {
    if let Some(g) = fs_group {
        chown_group(new, g, false)?;
    }
    for (rel, f) in files {
        if !safe_path(rel) {
            return Err(format!("refusing volume path {rel:?}"));
        }
        let p = new.join(rel);
        if let Some(parent) = p.parent()
            && parent != new
        {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| io("create", parent, e))?;
            if let Some(g) = fs_group {
                chown_group(parent, g, false)?;
            }
        }
        let mut mode = f.mode;
        if fs_group.is_some() {
            // kubelet: group-readable for the fsGroup.
            mode |= 0o040;
        }
        {
            use std::io::Write as _;
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&p)
                .map_err(|e| io("create", &p, e))?;
            out.write_all(&f.data).map_err(|e| io("write", &p, e))?;
        }
        if let Some(g) = fs_group {
            chown_group(&p, g, false)?;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| io("chmod", &p, e))?;
    }
    Ok(())
}

/// Bytes a disk emptyDir holds (what its files take on disk), for its
/// `sizeLimit`.
#[must_use]
pub fn usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                // Not across into another file system.
                if m.dev() == fs::metadata(dir).map(|r| r.dev()).unwrap_or(0) {
                    stack.push(e.path());
                }
            } else {
                total += m.blocks() * 512;
            }
        }
    }
    total
}

/// Whether anything is still mounted under the pod's directory (a volume
/// or a staged subPath that would not unmount): removing the directory
/// then would reach into what is mounted there, a claim's data among it.
#[must_use]
pub fn mounted_under(pod_dir: &Path) -> Option<String> {
    let prefix = format!("{}/", pod_dir.to_string_lossy());
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|m| m.starts_with(&prefix))
        .map(str::to_string)
}

/// Unmounts whatever is mounted under the pod's volumes (tmpfs) and its
/// staged subpaths, deepest first, so that the pod's directory can be
/// removed.
pub fn teardown(pod_dir: &Path) {
    let prefixes = [VOLUMES_DIR, SUBPATHS_DIR, SHM_DIR]
        .map(|d| format!("{}/", pod_dir.join(d).to_string_lossy()));
    let shm = pod_dir.join(SHM_DIR).to_string_lossy().into_owned();
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == shm || prefixes.iter().any(|p| m.starts_with(p.as_str())))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Err(e) = umount2(p, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = p, error = %e, "cannot unmount a pod volume");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> File {
        File {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn atomic_writes_swap_and_clean_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let mut files = Payload::new();
        files.insert("a".into(), file("1", 0o644));
        files.insert("sub/b".into(), file("2", 0o600));
        write_atomic(d, &files, None).expect("write");
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(d.join("sub/b")).unwrap(), "2");
        assert_eq!(current(d), Some(files.clone()));
        assert!(
            fs::symlink_metadata(d.join("a"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let mut next = Payload::new();
        next.insert("a".into(), file("3", 0o400));
        write_atomic(d, &next, None).expect("rewrite");
        assert_eq!(fs::read_to_string(d.join("a")).unwrap(), "3");
        assert!(!d.join("sub").exists(), "a key gone is gone");
        assert_eq!(current(d), Some(next));
        let hidden: Vec<_> = fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("..") && n != DATA_LINK)
            .collect();
        assert_eq!(hidden.len(), 1, "the old content is removed: {hidden:?}");
    }

    #[test]
    fn paths_stay_inside() {
        assert!(safe_path("a/b.txt"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data", "a//b"] {
            assert!(!safe_path(bad), "{bad}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut files = Payload::new();
        files.insert("../escape".into(), file("x", 0o644));
        assert!(write_atomic(dir.path(), &files, None).is_err());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
    }
}
