//! The pod records on disk and the claims that keep two pods from ever
//! sharing an address or a name: a record is written before anything of its
//! pod is created, and a claim is a file created with O_EXCL.

use std::{collections::HashSet, fs, net::Ipv4Addr, path::PathBuf};

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use super::{Sandbox, SandboxError, io_err, short_uid};

/// How far a pod's creation got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Being created: an interrupted creation is rolled back on recovery.
    Creating,
    /// Fully created.
    Ready,
    /// Being removed: an interrupted removal is finished on recovery.
    Removing,
}

/// What the node keeps on disk per pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod UID.
    pub uid: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth.
    pub host_veth: String,
    /// Its IP.
    pub ip: Ipv4Addr,
    /// Container (name, runtime id).
    pub containers: Vec<(String, String)>,
    /// Init containers, sidecars among them (name, runtime id), in order.
    #[serde(default)]
    pub init_containers: Vec<(String, String)>,
    /// Whether every init container has completed (and the containers
    /// were started): init containers never run again.
    #[serde(default = "initialized_by_default")]
    pub initialized: bool,
    /// Creation progress.
    pub phase: Phase,
    /// Restarts per container name (kept across agent restarts).
    #[serde(default)]
    pub restarts: std::collections::BTreeMap<String, i32>,
    /// On the node's own network: no namespace, veth or address of its
    /// own (`netns` and `host_veth` are empty, `ip` is the node's).
    #[serde(default)]
    pub host_network: bool,
    /// A finished pod whose sandbox was released
    /// ([`Sandbox::release_finished`]): its containers, network and
    /// address are gone; its logs stay.
    #[serde(default)]
    pub released: bool,
}

fn initialized_by_default() -> bool {
    true
}

impl PodRecord {
    /// Every container of the pod, init containers first: (name, runtime id).
    pub fn all_containers(&self) -> impl Iterator<Item = &(String, String)> {
        self.init_containers.iter().chain(&self.containers)
    }
}

/// Outcome of a failed claim.
pub(super) enum Claim {
    /// Another pod holds it: its UID.
    Taken(String),
    /// The claim could not be made.
    Failed(SandboxError),
}

/// The claim key of a pod name: `_` is in neither a namespace nor a name.
pub(super) fn name_key(namespace: &str, name: &str) -> String {
    format!("{namespace}_{name}")
}

impl Sandbox {
    pub(super) fn record_path(&self, uid: &str) -> PathBuf {
        self.cfg
            .state_dir
            .join("pods")
            .join(format!("{}.json", short_uid(uid)))
    }

    pub(super) fn pod_dir(&self, uid: &str) -> PathBuf {
        self.cfg.state_dir.join("pods").join(short_uid(uid))
    }

    pub(super) fn save(&self, r: &PodRecord) -> Result<(), SandboxError> {
        let p = self.record_path(&r.uid);
        let tmp = p.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(r).map_err(|e| SandboxError::Io {
            op: "encode record",
            path: p.clone(),
            source: e.into(),
        })?;
        fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, &p).map_err(io_err("rename", &p))
    }

    /// All pod records on disk.
    ///
    /// # Errors
    /// When the state directory cannot be read.
    pub fn records(&self) -> Result<Vec<PodRecord>, SandboxError> {
        let d = self.cfg.state_dir.join("pods");
        let mut v = Vec::new();
        for e in fs::read_dir(&d).map_err(io_err("read", &d))? {
            let p = e.map_err(io_err("read", &d))?.path();
            if p.extension().is_some_and(|x| x == "json")
                && let Ok(data) = fs::read(&p)
                && let Ok(r) = serde_json::from_slice::<PodRecord>(&data)
            {
                v.push(r);
            }
        }
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(v)
    }

    /// The record of the pod of that UID, if it is on this node.
    #[must_use]
    pub fn record(&self, uid: &str) -> Option<PodRecord> {
        self.load_record(uid).ok()
    }

    /// The lowest free address of the block (skipping network, gateway and broadcast).
    ///
    /// # Errors
    /// [`SandboxError::AddressBlockExhausted`].
    pub fn free_ip(&self) -> Result<Ipv4Addr, SandboxError> {
        let used = self.claimed_ips()?;
        let b = self.cfg.block;
        (u32::from(b.network()) + 2..u32::from(b.broadcast()))
            .map(Ipv4Addr::from)
            .find(|ip| !used.contains(ip))
            .ok_or(SandboxError::AddressBlockExhausted {
                block: b,
                node: self.cfg.node.clone(),
            })
    }

    /// Addresses claimed on this node: one file per address under `ips/`,
    /// holding the pod's UID. Listing names is all it takes, however many
    /// pods there are.
    pub(super) fn claimed_ips(&self) -> Result<HashSet<Ipv4Addr>, SandboxError> {
        let d = self.cfg.state_dir.join("ips");
        Ok(fs::read_dir(&d)
            .map_err(io_err("read", &d))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }

    /// Claims `ip` for `uid`: the file is created with O_EXCL, so two
    /// concurrent creations can never both get it.
    pub(super) fn claim_ip(&self, ip: Ipv4Addr, uid: &str) -> Result<(), SandboxError> {
        self.check_ip_range(ip)?;
        self.claim("ips", &ip.to_string(), uid, "claim address")
            .map_err(|who| match who {
                Claim::Taken(uid) => SandboxError::BadAddress {
                    ip,
                    reason: format!("in use by pod {}", self.describe(&uid)),
                },
                Claim::Failed(e) => e,
            })
    }

    /// Claims `key` in the claims directory `kind` for `uid`: a file created
    /// with O_EXCL, so two concurrent creations can never both get it.
    pub(super) fn claim(
        &self,
        kind: &str,
        key: &str,
        uid: &str,
        op: &'static str,
    ) -> Result<(), Claim> {
        let p = self.cfg.state_dir.join(kind).join(key);
        match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(uid.as_bytes())
                    .map_err(|e| Claim::Failed(io_err("write", &p)(e)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let owner = fs::read_to_string(&p).unwrap_or_default();
                Err(Claim::Taken(owner.trim().to_string()))
            }
            Err(e) => Err(Claim::Failed(SandboxError::Io {
                op,
                path: p,
                source: e,
            })),
        }
    }

    /// Releases a claim, if it is still `uid`'s: after a crash another pod
    /// may hold it since.
    pub(super) fn release(&self, kind: &str, key: &str, uid: &str) {
        let p = self.cfg.state_dir.join(kind).join(key);
        if fs::read_to_string(&p).is_ok_and(|o| o.trim() == uid) {
            let _ = fs::remove_file(&p);
        }
    }

    /// Whether `ip` may hold a pod on this node at all.
    pub(super) fn check_ip_range(&self, ip: Ipv4Addr) -> Result<(), SandboxError> {
        let b = self.cfg.block;
        let bad = |reason: String| SandboxError::BadAddress { ip, reason };
        if !b.contains(ip) {
            return Err(bad(format!("outside the node's block {b}")));
        }
        if ip == b.network() || ip == b.broadcast() || ip == self.cfg.gateway() {
            return Err(bad(
                "the block's network, broadcast or gateway address".into()
            ));
        }
        Ok(())
    }

    /// `namespace/name (uid ...)` of a pod on this node, or its UID alone.
    pub(super) fn describe(&self, uid: &str) -> String {
        self.load_record(uid).map_or_else(
            |_| format!("uid {uid}"),
            |r| format!("{}/{} (uid {})", r.namespace, r.name, r.uid),
        )
    }

    pub(super) fn load_record(&self, uid: &str) -> Result<PodRecord, SandboxError> {
        let p = self.record_path(uid);
        let data = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&data).map_err(|e| SandboxError::Io {
            op: "decode record",
            path: p,
            source: e.into(),
        })
    }

    /// The log of a container's run number `restart` (0 for the first), as
    /// kubelet lays them out: `<pod dir>/logs/<container>/<restart>.log`.
    #[must_use]
    pub fn log_path(&self, uid: &str, container: &str, restart: i32) -> PathBuf {
        self.pod_dir(uid)
            .join("logs")
            .join(container)
            .join(format!("{restart}.log"))
    }

    /// Where run `restart` of a container writes its termination message
    /// (bind-mounted at its `terminationMessagePath`).
    pub(super) fn termination_path(&self, uid: &str, container: &str, restart: i32) -> PathBuf {
        self.pod_dir(uid)
            .join("termination")
            .join(format!("{container}.{restart}"))
    }

    pub(super) fn load_pod(&self, uid: &str) -> Result<(PodRecord, Pod), SandboxError> {
        let rec = self.load_record(uid)?;
        let pj = self.pod_dir(uid).join("pod.json");
        let data = fs::read(&pj).map_err(io_err("read", &pj))?;
        let pod: Pod = serde_json::from_slice(&data).map_err(|e| SandboxError::Io {
            op: "decode pod",
            path: pj.clone(),
            source: e.into(),
        })?;
        Ok((rec, pod))
    }
}
