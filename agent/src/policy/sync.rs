//! Keeps the [`Engine`] and its maps in step with the API: follows
//! NetworkPolicies, Pods and Namespaces through the agent's informers, and
//! applies whatever arrived together as one batch.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::{FutureExt as _, StreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod},
    networking::v1::NetworkPolicy,
};
use kube::ResourceExt as _;

use super::{Change, Engine, Policy, maps::PolicyMaps, model};
use crate::informer::{Event, Informers};

/// The engine and its maps, shared with the agent's endpoint (show, trace).
pub struct PolicyState {
    /// The engine.
    pub engine: Engine,
    /// Its maps.
    pub maps: PolicyMaps,
}

impl std::fmt::Debug for PolicyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyState")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// One kind's events, reduced to the engine's changes.
struct Batch {
    which: usize,
    /// Every object of the kind, when this is a resync.
    resync: bool,
    changes: Vec<Change>,
}

fn gone(which: usize, key: String) -> Change {
    match which {
        0 => Change::Pod(key, None),
        1 => Change::Namespace(key, None),
        _ => Change::Policy(key, None),
    }
}

/// `events` of kind `which` as [`Batch`]es, with `change` giving what an
/// object means to the engine.
fn follow<K>(
    events: futures::stream::BoxStream<'static, Event<K>>,
    which: usize,
    change: impl Fn(&K) -> Change + Send + 'static,
) -> futures::stream::BoxStream<'static, Batch>
where
    K: kube::Resource + Send + Sync + 'static,
{
    events
        .map(move |ev| match ev {
            Event::Resync(all) => Batch {
                which,
                resync: true,
                changes: all.iter().map(|o| change(o)).collect(),
            },
            Event::Change { new: Some(o), .. } => Batch {
                which,
                resync: false,
                changes: vec![change(&o)],
            },
            Event::Change { old, new: None } => Batch {
                which,
                resync: false,
                changes: old
                    .map(|o| gone(which, weft_api::meta::key_of(&*o)))
                    .into_iter()
                    .collect(),
            },
        })
        .boxed()
}

/// Follows the API (through the agent's informers) into `state`'s maps.
/// Never returns. `problems` gets what cannot be enforced.
pub async fn run(
    informers: Informers,
    node: String,
    state: Arc<Mutex<PolicyState>>,
    problems: tokio::sync::watch::Sender<BTreeMap<String, String>>,
) {
    let pods = follow(informers.pods.subscribe(), 0, move |p: &Pod| {
        Change::Pod(weft_api::meta::key_of(p), model::pod_info(p, &node))
    });
    let namespaces = follow(informers.namespaces.subscribe(), 1, |n: &Namespace| {
        Change::Namespace(n.name_any(), Some(n.labels().clone()))
    });
    let policies = follow(informers.policies.subscribe(), 2, |p: &NetworkPolicy| {
        Change::Policy(weft_api::meta::key_of(p), Some(Policy::from_k8s(p)))
    });
    let mut events = stream::select_all([pods, namespaces, policies]);
    // Per kind: synced once, and the keys known.
    let mut synced = [false; 3];
    let mut known: [HashSet<String>; 3] = Default::default();
    while let Some(first) = events.next().await {
        let mut batches = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batches.push(more);
        }
        let mut changes = Vec::new();
        for batch in batches {
            let w = batch.which;
            let mut listed = HashSet::new();
            for c in batch.changes {
                let (k, present) = match &c {
                    Change::Pod(k, _) => (k, true),
                    Change::Namespace(k, l) => (k, l.is_some()),
                    Change::Policy(k, p) => (k, p.is_some()),
                };
                if present {
                    known[w].insert(k.clone());
                    if batch.resync {
                        listed.insert(k.clone());
                    }
                } else {
                    known[w].remove(k);
                }
                changes.push(c);
            }
            if batch.resync {
                // What the list lacks is gone.
                let stale: Vec<String> = known[w].difference(&listed).cloned().collect();
                for k in stale {
                    known[w].remove(&k);
                    changes.push(gone(w, k));
                }
                synced[w] = true;
            }
        }
        let all = synced.iter().all(|s| *s);
        let started = Instant::now();
        let mut guard = state.lock().expect("policy lock");
        let st = &mut *guard;
        let first = all && !st.engine.synced();
        let applied = st.engine.update(changes, all, &mut st.maps);
        let report = st.engine.problems().clone();
        drop(guard);
        if applied.writes > 0 || first {
            tracing::info!(
                recomputed = applied.recomputed,
                writes = applied.writes,
                took_ms = started.elapsed().as_secs_f64() * 1e3,
                "network policy applied"
            );
        }
        problems.send_if_modified(|p| {
            if *p == report {
                false
            } else {
                *p = report;
                true
            }
        });
    }
}
