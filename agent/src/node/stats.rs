//! CPU and memory of the node and of each pod, read from their cgroups (v2,
//! or the v1 `cpuacct` and `memory` controllers of a hybrid host). CPU is a
//! rate, so a sampler reads the counters every few seconds and keeps the
//! last rate of each cgroup, as kubelet's cadvisor does.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use weft_api::debug::stats::{CpuStats, MemoryStats, NodeStats, PodReference, PodStats, Summary};

use super::api::weft_now;
use crate::sandbox::{PodRecord, Sandbox};

/// How often CPU counters are sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// Counters of one cgroup at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub(crate) cpu_ns: u64,
    /// Memory charged to it, in bytes.
    pub(crate) memory: u64,
    /// Memory less inactive file cache (what the OOM killer weighs).
    pub(crate) working_set: u64,
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn stat_field(p: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(p).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Reads the counters of cgroup `rel` (e.g. `weft/n1/abc`).
pub(crate) fn usage(rel: &str) -> Option<Usage> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.procs").exists() {
        // Pure cgroup v2.
        let d = base.join(rel);
        let cpu_ns = stat_field(&d.join("cpu.stat"), "usage_usec")? * 1000;
        let memory = read_u64(&d.join("memory.current")).unwrap_or(0);
        let inactive = stat_field(&d.join("memory.stat"), "inactive_file").unwrap_or(0);
        return Some(Usage {
            cpu_ns,
            memory,
            working_set: memory.saturating_sub(inactive),
        });
    }
    // Hybrid or v1: the controllers' own hierarchies.
    let cpu_ns = ["cpuacct", "cpu,cpuacct"]
        .iter()
        .find_map(|c| read_u64(&base.join(c).join(rel).join("cpuacct.usage")))?;
    let mem = base.join("memory").join(rel);
    let memory = read_u64(&mem.join("memory.usage_in_bytes")).unwrap_or(0);
    let inactive = stat_field(&mem.join("memory.stat"), "total_inactive_file").unwrap_or(0);
    Some(Usage {
        cpu_ns,
        memory,
        working_set: memory.saturating_sub(inactive),
    })
}

/// One cgroup's last sample: when, its counters, and the CPU rate since
/// the sample before (nanocores).
type Sample = (Instant, Usage, Option<u64>);

/// The sampler's state: per cgroup, its last sample.
#[derive(Default)]
pub(crate) struct Stats {
    last: Mutex<HashMap<String, Sample>>,
}

impl Stats {
    /// Samples every cgroup of `sandbox` (the node's and each pod's) now.
    pub(crate) fn sample(&self, sandbox: &Sandbox) {
        let mut groups = vec![sandbox.node_cgroup()];
        groups.extend(
            sandbox
                .records()
                .unwrap_or_default()
                .iter()
                .map(|r| sandbox.pod_cgroup(&r.uid)),
        );
        let now = Instant::now();
        let mut last = self.last.lock().expect("stats lock");
        let mut seen = HashMap::new();
        for g in groups {
            let Some(u) = usage(&g) else { continue };
            let rate = last.get(&g).and_then(|(t, prev, _)| {
                let dt = now.duration_since(*t).as_nanos();
                (dt > 0 && u.cpu_ns >= prev.cpu_ns).then(|| {
                    u64::try_from(u128::from(u.cpu_ns - prev.cpu_ns) * 1_000_000_000 / dt)
                        .unwrap_or(u64::MAX)
                })
            });
            seen.insert(g, (now, u, rate));
        }
        *last = seen;
    }

    /// Runs [`Stats::sample`] every [`SAMPLE_EVERY`].
    pub(crate) async fn run(self: Arc<Self>, node: Arc<super::Node>) {
        loop {
            let (s, n) = (self.clone(), node.clone());
            let _ = tokio::task::spawn_blocking(move || s.sample(&n.sandbox)).await;
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    }

    /// The CPU and memory of cgroup `group`: memory read now, CPU from
    /// the sampler's last rate. None when the cgroup cannot be read.
    fn entry(&self, group: &str) -> (Option<CpuStats>, Option<MemoryStats>) {
        let last = self.last.lock().expect("stats lock");
        let Some(u) = usage(group) else {
            return (None, None);
        };
        let rate = last.get(group).and_then(|(_, _, r)| *r);
        let time = weft_now();
        (
            Some(CpuStats {
                time: time.clone(),
                usage_nano_cores: rate,
                usage_core_nano_seconds: u.cpu_ns,
            }),
            Some(MemoryStats {
                time,
                usage_bytes: u.memory,
                working_set_bytes: u.working_set,
            }),
        )
    }

    /// kubelet's `/stats/summary`, with the node's and each pod's CPU and
    /// memory (the node's: everything under its cgroup, agent included).
    pub(crate) fn summary(&self, node: &str, sandbox: &Sandbox, records: &[PodRecord]) -> Summary {
        let (cpu, memory) = self.entry(&sandbox.node_cgroup());
        let pods = records
            .iter()
            .map(|r| {
                let (cpu, memory) = self.entry(&sandbox.pod_cgroup(&r.uid));
                PodStats {
                    pod_ref: PodReference {
                        name: r.name.clone(),
                        namespace: r.namespace.clone(),
                        uid: r.uid.clone(),
                    },
                    cpu,
                    memory,
                }
            })
            .collect();
        Summary {
            node: NodeStats {
                node_name: node.to_string(),
                cpu,
                memory,
            },
            pods,
        }
    }
}
