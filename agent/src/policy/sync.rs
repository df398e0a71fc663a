//! Keeps the [`Engine`] and its maps in step with the API: watches
//! NetworkPolicies, Pods and Namespaces, and applies whatever arrived
//! together as one batch.

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
use kube::{
    Resource, ResourceExt as _,
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};

use super::{Change, Engine, Policy, maps::PolicyMaps, model};

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

enum Kind {
    Pod,
    Namespace,
    Policy,
}

/// One watch event, reduced to a change.
enum Item {
    Change(Change),
    Init(usize),
    Seen(usize, String),
    Done(usize),
    Failed(&'static str, String),
}

fn items<K, F>(
    ev: Result<Event<K>, watcher::Error>,
    which: usize,
    what: &'static str,
    change: F,
) -> Vec<Item>
where
    K: Resource,
    F: Fn(&K) -> Change,
{
    match ev {
        Ok(Event::Apply(o)) => vec![Item::Change(change(&o))],
        Ok(Event::Delete(o)) => vec![Item::Change(gone(which, weft_api::meta::key_of(&o)))],
        Ok(Event::Init) => vec![Item::Init(which)],
        Ok(Event::InitApply(o)) => vec![
            Item::Seen(which, weft_api::meta::key_of(&o)),
            Item::Change(change(&o)),
        ],
        Ok(Event::InitDone) => vec![Item::Done(which)],
        Err(e) => vec![Item::Failed(what, e.to_string())],
    }
}

fn gone(which: usize, key: String) -> Change {
    match which {
        0 => Change::Pod(key, None),
        1 => Change::Namespace(key, None),
        _ => Change::Policy(key, None),
    }
}

/// Follows the API into `state`'s maps. Never returns; watch errors are
/// retried with back-off. `problems` gets what cannot be enforced.
pub async fn run(
    client: kube::Client,
    node: String,
    state: Arc<Mutex<PolicyState>>,
    problems: tokio::sync::watch::Sender<BTreeMap<String, String>>,
) {
    let cfg = watcher::Config::default;
    let pods = watcher::watcher(kube::Api::<Pod>::all(client.clone()), cfg())
        .default_backoff()
        .map(move |ev| {
            items(ev, Kind::Pod as usize, "pods", |p: &Pod| {
                Change::Pod(weft_api::meta::key_of(p), model::pod_info(p, &node))
            })
        })
        .boxed();
    let namespaces = watcher::watcher(kube::Api::<Namespace>::all(client.clone()), cfg())
        .default_backoff()
        .map(|ev| {
            items(
                ev,
                Kind::Namespace as usize,
                "namespaces",
                |n: &Namespace| Change::Namespace(n.name_any(), Some(n.labels().clone())),
            )
        })
        .boxed();
    let policies = watcher::watcher(kube::Api::<NetworkPolicy>::all(client), cfg())
        .default_backoff()
        .map(|ev| {
            items(
                ev,
                Kind::Policy as usize,
                "network policies",
                |p: &NetworkPolicy| {
                    Change::Policy(weft_api::meta::key_of(p), Some(Policy::from_k8s(p)))
                },
            )
        })
        .boxed();
    let mut events = stream::select_all([pods, namespaces, policies]);
    // Per kind: synced once, the keys known, and those seen in a relist.
    let mut synced = [false; 3];
    let mut known: [HashSet<String>; 3] = Default::default();
    let mut relisted: [Option<HashSet<String>>; 3] = Default::default();
    while let Some(first) = events.next().await {
        let mut batch = first;
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.extend(more);
        }
        let mut changes = Vec::new();
        for item in batch {
            match item {
                Item::Change(c) => {
                    let (which, k, present) = match &c {
                        Change::Pod(k, _) => (0, k, true),
                        Change::Namespace(k, l) => (1, k, l.is_some()),
                        Change::Policy(k, p) => (2, k, p.is_some()),
                    };
                    if present {
                        known[which].insert(k.clone());
                    } else {
                        known[which].remove(k);
                    }
                    changes.push(c);
                }
                Item::Init(w) => relisted[w] = Some(HashSet::new()),
                Item::Seen(w, k) => {
                    if let Some(s) = &mut relisted[w] {
                        s.insert(k);
                    }
                }
                Item::Done(w) => {
                    if let Some(seen) = relisted[w].take() {
                        let stale: Vec<String> = known[w].difference(&seen).cloned().collect();
                        for k in stale {
                            known[w].remove(&k);
                            changes.push(gone(w, k));
                        }
                    }
                    synced[w] = true;
                }
                Item::Failed(what, e) => {
                    tracing::warn!(error = %e, "watching {what} for network policy failed; retrying");
                }
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
