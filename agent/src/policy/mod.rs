//! NetworkPolicy: from NetworkPolicies, Pods and Namespaces to the maps the
//! pod programs judge packets with.
//!
//! The [`Engine`] gives every (namespace, labels, named ports) of the
//! cluster's pods a numeric identity, every prefix of the ipBlocks in use
//! another, and computes for each local pod that a policy selects its
//! isolation and its rules: (peer identity, direction, protocol, port
//! prefix) entries of one LPM trie, under the pod's endpoint number. A
//! change recomputes only the local pods it can touch and writes only the
//! entries that differ, in an order that never lets a packet through that
//! neither the old nor the new state allows: new rules first, then
//! identities and isolation, then what is gone.
//!
//! A restarted agent reads what the pinned maps hold and keeps the numbers
//! found there, so once it has seen the API's state it writes nothing
//! unless something changed meanwhile: a restart changes no verdict.

pub mod maps;
pub mod model;
pub mod sync;
pub mod view;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use serde::Serialize;
use weft_common as common;
use weft_common::{PolicyEndpoint, RuleKey};

pub use model::{IdentityKey, Labels, Peer, PodInfo, Policy, PortSpec, Rule};

use crate::bpf::PolicySizes;

/// A rule as a trie entry: the key and how many of its leading bits count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleEntry {
    /// The key.
    pub key: RuleKey,
    /// Prefix length in bits ([`common::RULE_BITS_ANY_PROTO`] and up).
    pub bits: u32,
}

/// Writes the engine's decisions into the maps (the kernel's, or a test's).
pub trait Sink {
    /// Adds or replaces a rule.
    ///
    /// # Errors
    /// When the map refuses (full).
    fn set_rule(&mut self, e: &RuleEntry, policy: u32) -> Result<(), String>;
    /// Removes a rule.
    ///
    /// # Errors
    /// When the map refuses.
    fn del_rule(&mut self, e: &RuleEntry) -> Result<(), String>;
    /// Sets the identity of an address.
    ///
    /// # Errors
    /// When the map refuses (full).
    fn set_identity(&mut self, ip: Ipv4Addr, id: u32) -> Result<(), String>;
    /// Removes an address's identity.
    ///
    /// # Errors
    /// When the map refuses.
    fn del_identity(&mut self, ip: Ipv4Addr) -> Result<(), String>;
    /// Sets the identity of an ipBlock prefix.
    ///
    /// # Errors
    /// When the map refuses (full).
    fn set_cidr(&mut self, net: Ipv4Network, id: u32) -> Result<(), String>;
    /// Removes a prefix.
    ///
    /// # Errors
    /// When the map refuses.
    fn del_cidr(&mut self, net: Ipv4Network) -> Result<(), String>;
    /// Puts a local pod under policy (or changes its flags).
    ///
    /// # Errors
    /// When the map refuses (full).
    fn set_endpoint(&mut self, ip: Ipv4Addr, ep: PolicyEndpoint) -> Result<(), String>;
    /// Takes a local pod out of policy.
    ///
    /// # Errors
    /// When the map refuses.
    fn del_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), String>;
    /// Zeroes the counters of an endpoint number about to be given out.
    ///
    /// # Errors
    /// When the map refuses.
    fn reset_counters(&mut self, id: u32) -> Result<(), String>;
}

/// What the maps held when the engine started (an earlier agent's work).
#[derive(Clone, Debug, Default)]
pub struct Installed {
    /// Address → identity.
    pub identities: HashMap<Ipv4Addr, u32>,
    /// Prefix → identity.
    pub cidrs: HashMap<Ipv4Network, u32>,
    /// Local pod address → endpoint.
    pub endpoints: HashMap<Ipv4Addr, PolicyEndpoint>,
    /// Rules → policy number.
    pub rules: HashMap<RuleEntry, u32>,
}

/// One change from the API.
#[derive(Clone, Debug)]
pub enum Change {
    /// A pod (`namespace/name`) and what the engine keeps of it (`None`:
    /// gone, or without an address).
    Pod(String, Option<PodInfo>),
    /// A namespace and its labels (`None`: gone).
    Namespace(String, Option<Labels>),
    /// A policy (`namespace/name`) parsed (`None`: gone; `Err`: cannot be
    /// applied, reported).
    Policy(String, Option<Result<Policy, String>>),
}

/// Numbers handed out from `next` up to `end`, reused a batch after release.
#[derive(Debug)]
struct Numbers {
    next: u32,
    end: u32,
    free: Vec<u32>,
    /// Released in this batch: reused from the next one, once no map
    /// entry refers to them any more.
    released: Vec<u32>,
    taken: HashSet<u32>,
}

impl Numbers {
    fn new(first: u32, end: u32) -> Self {
        Self {
            next: first,
            end,
            free: Vec::new(),
            released: Vec::new(),
            taken: HashSet::new(),
        }
    }

    /// Takes `n` if it is free (an earlier agent's number, adopted).
    fn claim(&mut self, n: u32) -> bool {
        if n >= self.end || self.taken.contains(&n) {
            return false;
        }
        if n >= self.next {
            // The numbers skipped become free.
            self.free.extend(self.next..n);
            self.next = n + 1;
        } else if let Some(i) = self.free.iter().position(|&f| f == n) {
            self.free.swap_remove(i);
        } else {
            // Released in this batch: not yet free again.
            return false;
        }
        self.taken.insert(n);
        true
    }

    fn alloc(&mut self) -> Option<u32> {
        let n = match self.free.pop() {
            Some(n) => n,
            None if self.next < self.end => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.taken.insert(n);
        Some(n)
    }

    fn release(&mut self, n: u32) {
        if self.taken.remove(&n) {
            self.released.push(n);
        }
    }

    fn end_batch(&mut self) {
        self.free.append(&mut self.released);
    }
}

#[derive(Debug)]
struct Identity {
    id: u32,
    pods: usize,
}

/// A local pod under policy.
#[derive(Clone, Debug, Default)]
struct Endpoint {
    ip: Option<Ipv4Addr>,
    id: u32,
    flags: u32,
    rules: BTreeMap<RuleEntry, u32>,
}

/// What a batch did, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Local pods whose rules were recomputed.
    pub recomputed: usize,
    /// Map entries written or removed.
    pub writes: usize,
}

/// The node's NetworkPolicy state.
pub struct Engine {
    caps: PolicySizes,
    host_addrs: Vec<Ipv4Addr>,
    synced: bool,
    namespaces: HashMap<String, Labels>,
    pods: HashMap<String, PodInfo>,
    /// Address → the pod holding it (the newest, while one is reused).
    owners: HashMap<Ipv4Addr, String>,
    policies: BTreeMap<String, Policy>,
    by_namespace: HashMap<String, BTreeSet<String>>,
    policy_numbers: HashMap<String, u32>,
    policy_keys: HashMap<u32, String>,
    next_policy: u32,
    identities: HashMap<IdentityKey, Identity>,
    identity_keys: HashMap<u32, IdentityKey>,
    pod_ids: Numbers,
    cidr_ids: Numbers,
    endpoint_ids: Numbers,
    /// Prefixes of every ipBlock in use (except parts included) → identity.
    cidrs: BTreeMap<Ipv4Network, u32>,
    /// The CIDR map could not take every prefix: pods with ipBlock rules
    /// fail closed.
    cidr_overflow: bool,
    endpoints: HashMap<String, Endpoint>,
    installed: Installed,
    /// Pods left out of the identity map for want of room.
    unidentified: BTreeSet<Ipv4Addr>,
    /// Addresses whose identity may have changed since the last write.
    dirty_ips: HashSet<Ipv4Addr>,
    problems: BTreeMap<String, String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("pods", &self.pods.len())
            .field("policies", &self.policies.len())
            .field("identities", &self.identities.len())
            .field("endpoints", &self.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine whose maps hold `installed`; `host_addrs` are the node's
    /// own addresses (always let in to its pods).
    #[must_use]
    pub fn new(caps: PolicySizes, host_addrs: Vec<Ipv4Addr>, installed: Installed) -> Self {
        Self {
            caps,
            host_addrs,
            synced: false,
            namespaces: HashMap::new(),
            pods: HashMap::new(),
            owners: HashMap::new(),
            policies: BTreeMap::new(),
            by_namespace: HashMap::new(),
            policy_numbers: HashMap::new(),
            policy_keys: HashMap::new(),
            next_policy: 1,
            identities: HashMap::new(),
            identity_keys: HashMap::new(),
            pod_ids: Numbers::new(common::ID_POD_MIN, common::ID_CIDR_MIN),
            cidr_ids: Numbers::new(common::ID_CIDR_MIN, u32::MAX),
            endpoint_ids: Numbers::new(0, caps.endpoints),
            cidrs: BTreeMap::new(),
            cidr_overflow: false,
            endpoints: HashMap::new(),
            installed,
            unidentified: BTreeSet::new(),
            dirty_ips: HashSet::new(),
            problems: BTreeMap::new(),
        }
    }

    /// Problems to report (map full, policy not applied), by subject.
    #[must_use]
    pub fn problems(&self) -> &BTreeMap<String, String> {
        &self.problems
    }

    /// The local pod `key`'s isolation flags (`POL_*`; 0: not under policy).
    #[must_use]
    pub fn flags(&self, key: &str) -> u32 {
        self.endpoints.get(key).map_or(0, |e| e.flags)
    }

    /// Whether the first complete state has been applied.
    #[must_use]
    pub fn synced(&self) -> bool {
        self.synced
    }

    fn ns_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespaces.get(ns).cloned().unwrap_or_default();
        l.insert(model::NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
        l
    }

    /// Takes in a batch of changes and, once synced, brings the maps in
    /// line. `synced`: the watches have delivered the complete state (the
    /// first time, everything is computed and compared with the maps).
    pub fn update(&mut self, changes: Vec<Change>, synced: bool, sink: &mut dyn Sink) -> Applied {
        let mut dirty: HashSet<String> = HashSet::new();
        let mut new_ids: Vec<IdentityKey> = Vec::new();
        let mut gone_ids: HashSet<u32> = HashSet::new();
        let mut ns_changed = false;
        let mut blocks_changed = false;
        for c in changes {
            match c {
                Change::Pod(key, info) => {
                    self.set_pod(&key, info, &mut dirty, &mut new_ids, &mut gone_ids);
                }
                Change::Namespace(name, labels) => {
                    let old = self.namespaces.get(&name);
                    if old != labels.as_ref() {
                        ns_changed = true;
                        match labels {
                            Some(l) => self.namespaces.insert(name, l),
                            None => self.namespaces.remove(&name),
                        };
                    }
                }
                Change::Policy(key, p) => {
                    blocks_changed |= self.set_policy(&key, p, &mut dirty);
                }
            }
        }
        // Pods whose rules name an identity now gone: its number may be
        // given to other pods.
        if !gone_ids.is_empty() {
            for (k, e) in &self.endpoints {
                if e.rules.keys().any(|r| gone_ids.contains(&r.key.peer)) {
                    dirty.insert(k.clone());
                }
            }
        }
        let mut full = false;
        if synced && !self.synced {
            full = true;
            self.synced = true;
            self.adopt();
            blocks_changed = true;
            dirty.extend(
                self.pods
                    .iter()
                    .filter(|(_, p)| p.local)
                    .map(|(k, _)| k.clone()),
            );
            dirty.extend(self.endpoints.keys().cloned());
        }
        if !self.synced {
            return Applied::default();
        }
        if blocks_changed {
            let before = self.cidrs.clone();
            self.rebuild_cidrs();
            if before != self.cidrs {
                // Every pod with an ipBlock rule: a new prefix splits a block.
                dirty.extend(self.local_selected(|p| p.blocks().next().is_some()));
            }
        }
        if !new_ids.is_empty() || ns_changed {
            let labels: HashMap<String, Labels> = new_ids
                .iter()
                .map(|k| (k.namespace.clone(), self.ns_labels(&k.namespace)))
                .collect();
            dirty.extend(self.local_selected(|p| {
                ns_changed
                    || new_ids
                        .iter()
                        .any(|k| p.may_select(k, &labels[&k.namespace]))
            }));
        }
        let applied = self.write(&dirty, full, sink);
        self.pod_ids.end_batch();
        self.cidr_ids.end_batch();
        self.endpoint_ids.end_batch();
        applied
    }

    /// Local pods that some policy `pred` holds for selects.
    fn local_selected(&self, pred: impl Fn(&Policy) -> bool) -> Vec<String> {
        let wanted: Vec<&Policy> = self.policies.values().filter(|p| pred(p)).collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        self.pods
            .iter()
            .filter(|(_, p)| p.local)
            .filter(|(_, p)| wanted.iter().any(|w| w.selects(&p.namespace, &p.labels)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn set_pod(
        &mut self,
        key: &str,
        info: Option<PodInfo>,
        dirty: &mut HashSet<String>,
        new_ids: &mut Vec<IdentityKey>,
        gone_ids: &mut HashSet<u32>,
    ) {
        let old = self.pods.get(key).cloned();
        if old == info {
            return;
        }
        if let Some(o) = &old {
            let k = o.identity_key();
            if let Some(i) = self.identities.get_mut(&k) {
                i.pods -= 1;
                if i.pods == 0 {
                    let id = i.id;
                    self.identities.remove(&k);
                    self.identity_keys.remove(&id);
                    self.pod_ids.release(id);
                    gone_ids.insert(id);
                }
            }
            if self.owners.get(&o.ip).is_some_and(|k| k == key) {
                self.owners.remove(&o.ip);
            }
            self.dirty_ips.insert(o.ip);
            if o.local {
                dirty.insert(key.to_string());
            }
        }
        match info {
            Some(n) => {
                let k = n.identity_key();
                match self.identities.get_mut(&k) {
                    Some(i) => i.pods += 1,
                    None => {
                        // Numbered when the maps are written (adoption
                        // first needs the complete state).
                        self.identities
                            .insert(k.clone(), Identity { id: 0, pods: 1 });
                        new_ids.push(k);
                    }
                }
                self.owners.insert(n.ip, key.to_string());
                self.dirty_ips.insert(n.ip);
                if n.local {
                    dirty.insert(key.to_string());
                }
                self.pods.insert(key.to_string(), n);
            }
            None => {
                self.pods.remove(key);
            }
        }
    }

    /// Returns whether the policy's ipBlocks changed.
    fn set_policy(
        &mut self,
        key: &str,
        p: Option<Result<Policy, String>>,
        dirty: &mut HashSet<String>,
    ) -> bool {
        let old = self.policies.remove(key);
        let problem = format!("policy {key}");
        self.problems.remove(&problem);
        let new = match p {
            Some(Ok(p)) => {
                if !p.warnings.is_empty() {
                    self.problems.insert(
                        problem.clone(),
                        format!("partly not understood: {}", p.warnings.join("; ")),
                    );
                }
                Some(p)
            }
            Some(Err(e)) => {
                self.problems.insert(problem, format!("not applied: {e}"));
                None
            }
            None => None,
        };
        let blocks = |p: &Option<Policy>| -> Vec<Ipv4Network> {
            p.as_ref().map(|p| p.blocks().collect()).unwrap_or_default()
        };
        let changed_blocks = blocks(&old) != blocks(&new);
        for p in old.iter().chain(new.iter()) {
            for (k, pod) in &self.pods {
                if pod.local && p.selects(&pod.namespace, &pod.labels) {
                    dirty.insert(k.clone());
                }
            }
        }
        if let Some(o) = &old
            && let Some(set) = self.by_namespace.get_mut(&o.namespace)
        {
            set.remove(key);
        }
        match new {
            Some(n) => {
                self.by_namespace
                    .entry(n.namespace.clone())
                    .or_default()
                    .insert(key.to_string());
                if !self.policy_numbers.contains_key(key) {
                    let num = self.next_policy;
                    self.next_policy += 1;
                    self.policy_numbers.insert(key.to_string(), num);
                    self.policy_keys.insert(num, key.to_string());
                }
                self.policies.insert(key.to_string(), n);
            }
            None => {
                if let Some(num) = self.policy_numbers.remove(key) {
                    self.policy_keys.remove(&num);
                }
            }
        }
        changed_blocks
    }

    /// Keeps the numbers the maps already hold: identities by the address
    /// of a pod that has them, prefixes and endpoints as they are.
    fn adopt(&mut self) {
        let mut by_key: BTreeMap<IdentityKey, u32> = BTreeMap::new();
        for (ip, id) in &self.installed.identities {
            if *id < common::ID_POD_MIN {
                continue;
            }
            if let Some(p) = self.owners.get(ip).and_then(|k| self.pods.get(k)) {
                by_key.entry(p.identity_key()).or_insert(*id);
            }
        }
        for (k, id) in by_key {
            if let Some(i) = self.identities.get_mut(&k)
                && i.id == 0
                && self.pod_ids.claim(id)
            {
                i.id = id;
                self.identity_keys.insert(id, k);
            }
        }
        for (net, id) in &self.installed.cidrs {
            if self.cidr_ids.claim(*id) {
                self.cidrs.insert(*net, *id);
            }
        }
        for (ip, ep) in &self.installed.endpoints {
            if let Some(key) = self.owners.get(ip).cloned()
                && self.pods.get(&key).is_some_and(|p| p.local)
                && self.endpoint_ids.claim(ep.id)
            {
                self.endpoints.insert(
                    key,
                    Endpoint {
                        ip: Some(*ip),
                        id: ep.id,
                        flags: ep.flags,
                        rules: BTreeMap::new(),
                    },
                );
            }
        }
        // Numbers the maps hold that no pod claimed wait a batch before
        // they are given out, as released ones do: their entries go first.
        let claimed: HashSet<u32> = self.endpoints.values().map(|e| e.id).collect();
        for ep in self.installed.endpoints.values() {
            if !claimed.contains(&ep.id) && self.endpoint_ids.claim(ep.id) {
                self.endpoint_ids.release(ep.id);
            }
        }
        let ids: Vec<u32> = self.installed.identities.values().copied().collect();
        for id in ids {
            if id >= common::ID_POD_MIN
                && !self.identity_keys.contains_key(&id)
                && self.pod_ids.claim(id)
            {
                self.pod_ids.release(id);
            }
        }
        // Rules stay as installed; each endpoint's are compared with what
        // it should have when it is recomputed.
        let mut by_endpoint: HashMap<u32, &String> = HashMap::new();
        for (k, e) in &self.endpoints {
            by_endpoint.insert(e.id, k);
        }
        let mut per: HashMap<String, BTreeMap<RuleEntry, u32>> = HashMap::new();
        for (r, pol) in &self.installed.rules {
            if let Some(k) = by_endpoint.get(&r.key.endpoint) {
                per.entry((*k).clone()).or_default().insert(*r, *pol);
            }
        }
        for (k, rules) in per {
            if let Some(e) = self.endpoints.get_mut(&k) {
                e.rules = rules;
            }
        }
        self.adopt_policy_numbers();
    }

    /// Gives the policies the numbers the installed rules carry (an
    /// earlier agent's), so that adopting rewrites no rule.
    fn adopt_policy_numbers(&mut self) {
        let mut found: BTreeMap<u32, u32> = BTreeMap::new();
        for (key, ep) in &self.endpoints {
            let (_, rules, _) = self.desired(key, ep.id);
            for (r, current) in rules {
                if let Some(installed) = ep.rules.get(&r) {
                    found.entry(current).or_insert(*installed);
                }
            }
        }
        if found.iter().all(|(c, i)| c == i) {
            return;
        }
        let mut taken: HashSet<u32> = HashSet::new();
        let mut numbers: HashMap<String, u32> = HashMap::new();
        for (current, installed) in &found {
            if let Some(key) = self.policy_keys.get(current)
                && taken.insert(*installed)
            {
                numbers.insert(key.clone(), *installed);
            }
        }
        let mut next = self
            .installed
            .rules
            .values()
            .chain(taken.iter())
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.next_policy)
            + 1;
        let mut keys: Vec<String> = self.policy_numbers.keys().cloned().collect();
        keys.sort();
        for key in keys {
            if let std::collections::hash_map::Entry::Vacant(e) = numbers.entry(key) {
                e.insert(next);
                next += 1;
            }
        }
        self.policy_keys = numbers.iter().map(|(k, n)| (*n, k.clone())).collect();
        self.policy_numbers = numbers;
        self.next_policy = next;
    }

    /// The prefix set: every ipBlock's network and exceptions.
    fn rebuild_cidrs(&mut self) {
        let want: BTreeSet<Ipv4Network> = self.policies.values().flat_map(Policy::blocks).collect();
        let gone: Vec<Ipv4Network> = self
            .cidrs
            .keys()
            .filter(|n| !want.contains(n))
            .copied()
            .collect();
        for n in gone {
            if let Some(id) = self.cidrs.remove(&n) {
                self.cidr_ids.release(id);
            }
        }
        self.cidr_overflow = false;
        for n in want {
            if self.cidrs.contains_key(&n) {
                continue;
            }
            if self.cidrs.len() >= self.caps.cidrs as usize {
                self.cidr_overflow = true;
                continue;
            }
            if let Some(id) = self.cidr_ids.alloc() {
                self.cidrs.insert(n, id);
            }
        }
        let p = "map WEFT_POL_CIDRS".to_string();
        if self.cidr_overflow {
            self.problems.insert(
                p,
                format!(
                    "full ({} prefixes): pods with ipBlock rules deny what only their rules would let in or out; raise --policy-cidrs",
                    self.caps.cidrs
                ),
            );
        } else {
            self.problems.remove(&p);
        }
    }

    /// Identities still unnumbered get a number.
    fn number_identities(&mut self) {
        let mut unnumbered: Vec<IdentityKey> = self
            .identities
            .iter()
            .filter(|(_, i)| i.id == 0)
            .map(|(k, _)| k.clone())
            .collect();
        unnumbered.sort();
        for k in unnumbered {
            if let Some(id) = self.pod_ids.alloc() {
                self.identities.get_mut(&k).expect("listed").id = id;
                self.identity_keys.insert(id, k);
            }
        }
    }

    /// The identities peer `p` of a policy in `ns` covers.
    fn peer_ids(&self, p: &Peer, ns: &str) -> Vec<u32> {
        match p {
            Peer::Block { cidr, except } => self
                .cidrs
                .iter()
                .filter(|(n, _)| {
                    model::contains(*cidr, **n) && !except.iter().any(|e| model::contains(*e, **n))
                })
                .map(|(_, id)| *id)
                .collect(),
            Peer::Nothing => Vec::new(),
            Peer::Pods { .. } => {
                let mut labels: HashMap<&str, Labels> = HashMap::new();
                self.identity_keys
                    .iter()
                    .filter(|(_, k)| {
                        let l = labels
                            .entry(k.namespace.as_str())
                            .or_insert_with(|| self.ns_labels(&k.namespace));
                        model::peer_selects(p, ns, k, l)
                    })
                    .map(|(id, _)| *id)
                    .collect()
            }
        }
    }

    /// Rule entries of one rule for the local pod `pod` (endpoint `ep`).
    fn expand(
        &self,
        (ep, num): (u32, u32),
        dir: u8,
        pod: &PodInfo,
        policy: &Policy,
        rule: &Rule,
        out: &mut BTreeMap<RuleEntry, u32>,
    ) {
        let peers: Vec<u32> = match &rule.peers {
            None => vec![common::ID_ANY],
            Some(ps) => ps
                .iter()
                .flat_map(|p| self.peer_ids(p, &policy.namespace))
                .collect(),
        };
        let mut add = |peer: u32, proto: u8, port: u16, bits: u32| {
            out.insert(
                RuleEntry {
                    key: RuleKey {
                        endpoint: ep,
                        peer,
                        dir,
                        proto,
                        port: port.to_be(),
                    },
                    bits,
                },
                num,
            );
        };
        let Some(ports) = &rule.ports else {
            for peer in peers {
                add(peer, 0, 0, common::RULE_BITS_ANY_PROTO);
            }
            return;
        };
        for spec in ports {
            match spec {
                PortSpec::All(proto) => {
                    for &peer in &peers {
                        add(peer, *proto, 0, common::RULE_BITS_ANY_PORT);
                    }
                }
                PortSpec::Range { proto, port, end } => {
                    for (base, bits) in model::port_prefixes(*port, *end) {
                        for &peer in &peers {
                            add(peer, *proto, base, common::RULE_BITS_ANY_PORT + bits);
                        }
                    }
                }
                PortSpec::Named { proto, name } => {
                    let named = |ports: &BTreeSet<model::NamedPort>| -> Vec<u16> {
                        ports
                            .iter()
                            .filter(|(n, p, _)| n == name && p == proto)
                            .map(|(_, _, port)| *port)
                            .collect()
                    };
                    if dir == common::DIR_INGRESS {
                        // The destination is this pod: its own ports.
                        for port in named(&pod.ports) {
                            for &peer in &peers {
                                add(peer, *proto, port, common::RULE_BITS_PORT);
                            }
                        }
                        continue;
                    }
                    // Egress: each destination pod's ports, per identity.
                    // Any peer: every pod naming the port; ipBlock peers
                    // are addresses, not pods, and name no port.
                    let targets: Vec<u32> = if rule.peers.is_none() {
                        self.identity_keys.keys().copied().collect()
                    } else {
                        peers
                            .iter()
                            .copied()
                            .filter(|id| *id < common::ID_CIDR_MIN)
                            .collect()
                    };
                    for id in targets {
                        if let Some(k) = self.identity_keys.get(&id) {
                            for port in named(&k.ports) {
                                add(id, *proto, port, common::RULE_BITS_PORT);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The policies that select `pod`, with their keys.
    fn selecting<'a>(&'a self, pod: &'a PodInfo) -> impl Iterator<Item = (&'a String, &'a Policy)> {
        self.by_namespace
            .get(&pod.namespace)
            .into_iter()
            .flatten()
            .filter_map(|pk| self.policies.get(pk).map(|p| (pk, p)))
            .filter(|(_, p)| p.selects(&pod.namespace, &pod.labels))
    }

    /// Isolation flags and rule entries the local pod `key` should have.
    fn desired(&self, key: &str, ep: u32) -> (u32, BTreeMap<RuleEntry, u32>, bool) {
        let mut flags = 0;
        let mut rules = BTreeMap::new();
        let mut blocks = false;
        let Some(pod) = self.pods.get(key).filter(|p| p.local) else {
            return (0, rules, false);
        };
        for (pk, p) in self.selecting(pod) {
            let num = self.policy_numbers.get(pk).copied().unwrap_or(0);
            blocks |= p.blocks().next().is_some();
            if p.ingress.is_some() {
                flags |= common::POL_INGRESS;
            }
            if p.egress.is_some() {
                flags |= common::POL_EGRESS;
            }
            for (dir, r) in p.rules() {
                self.expand((ep, num), dir, pod, p, r, &mut rules);
            }
        }
        (flags, rules, blocks)
    }

    /// Recomputes the `dirty` local pods and writes every difference, in
    /// an order that never lets a packet reach a missing entry: new rules,
    /// then identities and prefixes, then the pods' isolation, and last
    /// what is gone.
    fn write(&mut self, dirty: &HashSet<String>, full: bool, sink: &mut dyn Sink) -> Applied {
        self.number_identities();
        let mut applied = Applied::default();
        // Write errors are said again if they happen again.
        self.problems.retain(|k, _| !k.starts_with("writing "));
        let mut plans = self.plan(dirty, &mut applied);
        self.number_endpoints(&mut plans, sink);
        self.write_rules(&plans, sink, &mut applied);
        let id_deletes = self.write_identities(full, sink, &mut applied);
        self.write_cidrs(sink, &mut applied);
        self.write_endpoints(&plans, sink, &mut applied);
        self.retire(plans, id_deletes, full, sink, &mut applied);
        applied
    }

    /// What each dirty pod should be, with its rules fitted to the map or
    /// the pod marked as overflowing.
    fn plan(&mut self, dirty: &HashSet<String>, applied: &mut Applied) -> Vec<Plan> {
        let mut plans = Vec::new();
        let mut total: usize = self.endpoints.values().map(|e| e.rules.len()).sum();
        let mut keys: Vec<&String> = dirty.iter().collect();
        keys.sort();
        for key in keys {
            applied.recomputed += 1;
            let existing = self.endpoints.get(key);
            let id = existing.map(|e| e.id);
            let fresh = id.is_none();
            // A number is needed to compute keys; given for real below.
            let probe_id = id.unwrap_or(u32::MAX);
            let (mut flags, mut rules, blocks) = self.desired(key, probe_id);
            if flags == 0 {
                plans.push(Plan {
                    key: key.clone(),
                    ip: None,
                    id: probe_id,
                    fresh: false,
                    flags: 0,
                    rules: BTreeMap::new(),
                });
                continue;
            }
            let old = existing.map_or(0, |e| e.rules.len());
            let problem = format!("pod {key}");
            let overflow = if blocks && self.cidr_overflow {
                Some("its ipBlock prefixes did not all fit".to_string())
            } else if total - old + rules.len() > self.caps.rules as usize {
                Some(format!(
                    "its {} rule entries do not fit in WEFT_POL_RULES ({} entries, {} used); raise --policy-rules",
                    rules.len(),
                    self.caps.rules,
                    total - old
                ))
            } else {
                None
            };
            match overflow {
                Some(why) => {
                    self.problems.insert(
                        problem,
                        format!("{why}: it is isolated and denies all but replies"),
                    );
                    flags |= common::POL_OVERFLOW;
                    rules.clear();
                }
                None => {
                    self.problems.remove(&problem);
                }
            }
            total = total - old + rules.len();
            plans.push(Plan {
                key: key.clone(),
                ip: self.pods.get(key).map(|p| p.ip),
                id: probe_id,
                fresh,
                flags,
                rules,
            });
        }
        plans
    }

    /// Endpoint numbers for pods new to policy, their rule keys renumbered.
    fn number_endpoints(&mut self, plans: &mut [Plan], sink: &mut dyn Sink) {
        for plan in plans.iter_mut().filter(|p| p.flags != 0 && p.fresh) {
            match self.endpoint_ids.alloc() {
                Some(id) => {
                    plan.id = id;
                    plan.rules = std::mem::take(&mut plan.rules)
                        .into_iter()
                        .map(|(mut e, n)| {
                            e.key.endpoint = id;
                            (e, n)
                        })
                        .collect();
                    if let Err(e) = sink.reset_counters(id) {
                        fail(&mut self.problems, common::POL_COUNTERS_MAP, e);
                    }
                }
                None => {
                    self.problems.insert(
                        format!("pod {}", plan.key),
                        format!(
                            "WEFT_POL_ENDPOINTS is full ({} pods): its policies are NOT enforced; raise --policy-endpoints",
                            self.caps.endpoints
                        ),
                    );
                    plan.flags = 0;
                    plan.rules.clear();
                }
            }
        }
    }

    /// Step 1: new rules, before anything can lead a packet to them.
    fn write_rules(&mut self, plans: &[Plan], sink: &mut dyn Sink, applied: &mut Applied) {
        for plan in plans {
            let old = self.endpoints.get(&plan.key).map(|e| &e.rules);
            for (r, n) in &plan.rules {
                if old.and_then(|o| o.get(r)) == Some(n) && self.installed.rules.get(r) == Some(n) {
                    continue;
                }
                applied.writes += 1;
                match sink.set_rule(r, *n) {
                    Ok(()) => {
                        self.installed.rules.insert(*r, *n);
                    }
                    Err(e) => fail(&mut self.problems, common::POL_RULES_MAP, e),
                }
            }
        }
    }

    /// Step 2: identities of the addresses that changed (all of them on the
    /// first pass). Returns the addresses whose identity is to go, last.
    fn write_identities(
        &mut self,
        full: bool,
        sink: &mut dyn Sink,
        applied: &mut Applied,
    ) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = if full {
            self.owners
                .keys()
                .chain(self.installed.identities.keys())
                .copied()
                .collect()
        } else {
            self.dirty_ips.iter().copied().collect()
        };
        ips.extend(self.unidentified.iter().copied());
        ips.extend(self.host_addrs.iter().copied());
        ips.sort_unstable();
        ips.dedup();
        self.dirty_ips.clear();
        let mut id_deletes = Vec::new();
        for ip in ips {
            let want = if self.host_addrs.contains(&ip) {
                Some(common::ID_HOST)
            } else {
                self.owners
                    .get(&ip)
                    .and_then(|k| self.pods.get(k))
                    .and_then(|p| self.identities.get(&p.identity_key()))
                    .map(|i| i.id)
                    .filter(|id| *id != 0)
            };
            let have = self.installed.identities.get(&ip).copied();
            match want {
                None => {
                    self.unidentified.remove(&ip);
                    if have.is_some() {
                        id_deletes.push(ip);
                    }
                }
                Some(id) if have == Some(id) => {
                    self.unidentified.remove(&ip);
                }
                Some(id) => {
                    if have.is_none()
                        && self.installed.identities.len() >= self.caps.identities as usize
                    {
                        self.unidentified.insert(ip);
                        continue;
                    }
                    applied.writes += 1;
                    match sink.set_identity(ip, id) {
                        Ok(()) => {
                            self.unidentified.remove(&ip);
                            self.installed.identities.insert(ip, id);
                        }
                        Err(e) => {
                            self.unidentified.insert(ip);
                            fail(&mut self.problems, common::POL_IDENTITIES_MAP, e);
                        }
                    }
                }
            }
        }
        let p = "map WEFT_POL_IDENTITIES".to_string();
        if self.unidentified.is_empty() {
            self.problems.remove(&p);
        } else {
            self.problems.insert(
                p,
                format!(
                    "full ({} addresses): {} pods have no identity and match no pod selector; raise --policy-identities",
                    self.caps.identities,
                    self.unidentified.len()
                ),
            );
        }
        id_deletes
    }

    /// Step 2: the ipBlock prefixes that changed.
    fn write_cidrs(&mut self, sink: &mut dyn Sink, applied: &mut Applied) {
        let cidr_sets: Vec<(Ipv4Network, u32)> = self
            .cidrs
            .iter()
            .filter(|(n, id)| self.installed.cidrs.get(n) != Some(id))
            .map(|(n, id)| (*n, *id))
            .collect();
        for (n, id) in cidr_sets {
            applied.writes += 1;
            match sink.set_cidr(n, id) {
                Ok(()) => {
                    self.installed.cidrs.insert(n, id);
                }
                Err(e) => fail(&mut self.problems, common::POL_CIDRS_MAP, e),
            }
        }
    }

    /// Step 3: isolation of the pods recomputed.
    fn write_endpoints(&mut self, plans: &[Plan], sink: &mut dyn Sink, applied: &mut Applied) {
        for plan in plans {
            let (Some(ip), true) = (plan.ip, plan.flags != 0) else {
                continue;
            };
            let ep = PolicyEndpoint {
                id: plan.id,
                flags: plan.flags,
            };
            if self.installed.endpoints.get(&ip) == Some(&ep) {
                continue;
            }
            applied.writes += 1;
            match sink.set_endpoint(ip, ep) {
                Ok(()) => {
                    self.installed.endpoints.insert(ip, ep);
                }
                Err(e) => fail(&mut self.problems, common::POL_ENDPOINTS_MAP, e),
            }
        }
    }

    /// Step 4: what is gone: pods out of policy (or moved to another address),
    /// addresses, prefixes, then rules nothing leads to any more; and the
    /// plans become the endpoints.
    fn retire(
        &mut self,
        plans: Vec<Plan>,
        id_deletes: Vec<Ipv4Addr>,
        full: bool,
        sink: &mut dyn Sink,
        applied: &mut Applied,
    ) {
        let mut old_rules: Vec<RuleEntry> = Vec::new();
        // Addresses under policy after this batch: an address a pod gave up
        // may already be another's (reused in the same batch).
        let replanned: HashSet<&String> = plans.iter().map(|p| &p.key).collect();
        let taken: HashSet<Ipv4Addr> = plans
            .iter()
            .filter(|p| p.flags != 0)
            .filter_map(|p| p.ip)
            .chain(
                self.endpoints
                    .iter()
                    .filter(|(k, _)| !replanned.contains(k))
                    .filter_map(|(_, e)| e.ip),
            )
            .collect();
        for plan in plans {
            let old = self.endpoints.remove(&plan.key);
            if let Some(o) = &old {
                if let Some(ip) = o.ip.filter(|ip| !taken.contains(ip)) {
                    applied.writes += 1;
                    match sink.del_endpoint(ip) {
                        Ok(()) => {
                            self.installed.endpoints.remove(&ip);
                        }
                        Err(e) => fail(&mut self.problems, common::POL_ENDPOINTS_MAP, e),
                    }
                }
                old_rules.extend(o.rules.keys().filter(|r| !plan.rules.contains_key(r)));
                if plan.flags == 0 {
                    self.endpoint_ids.release(o.id);
                }
            }
            if plan.flags != 0 {
                self.endpoints.insert(
                    plan.key,
                    Endpoint {
                        ip: plan.ip,
                        id: plan.id,
                        flags: plan.flags,
                        rules: plan.rules,
                    },
                );
            }
        }
        // Installed entries no pod accounts for (an earlier agent's).
        let live: HashSet<Ipv4Addr> = self.endpoints.values().filter_map(|e| e.ip).collect();
        let stale_eps: Vec<Ipv4Addr> = self
            .installed
            .endpoints
            .keys()
            .filter(|ip| !live.contains(ip))
            .copied()
            .collect();
        for ip in stale_eps {
            applied.writes += 1;
            if sink.del_endpoint(ip).is_ok() {
                self.installed.endpoints.remove(&ip);
            }
        }
        for ip in id_deletes {
            applied.writes += 1;
            if sink.del_identity(ip).is_ok() {
                self.installed.identities.remove(&ip);
            }
        }
        let stale_cidrs: Vec<Ipv4Network> = self
            .installed
            .cidrs
            .keys()
            .filter(|n| !self.cidrs.contains_key(n))
            .copied()
            .collect();
        for n in stale_cidrs {
            applied.writes += 1;
            if sink.del_cidr(n).is_ok() {
                self.installed.cidrs.remove(&n);
            }
        }
        let wanted: HashSet<&RuleEntry> = self
            .endpoints
            .values()
            .flat_map(|e| e.rules.keys())
            .collect();
        let mut gone: BTreeSet<RuleEntry> = old_rules
            .into_iter()
            .filter(|r| !wanted.contains(r))
            .collect();
        if full {
            // The first pass: also what no endpoint accounts for.
            gone.extend(self.installed.rules.keys().filter(|r| !wanted.contains(r)));
        }
        for r in gone {
            applied.writes += 1;
            match sink.del_rule(&r) {
                Ok(()) => {
                    self.installed.rules.remove(&r);
                }
                Err(e) => fail(&mut self.problems, common::POL_RULES_MAP, e),
            }
        }
    }
}

/// Records that writing `what` failed (said again if it fails again).
fn fail(problems: &mut BTreeMap<String, String>, what: &str, e: String) {
    problems.insert(format!("writing {what}"), e);
}

/// What one dirty pod should be after a write.
struct Plan {
    key: String,
    ip: Option<Ipv4Addr>,
    id: u32,
    /// New to policy: it gets an endpoint number.
    fresh: bool,
    flags: u32,
    rules: BTreeMap<RuleEntry, u32>,
}

#[cfg(test)]
mod tests {
    //! The engine against the kernel's maps (root and BPF needed, as in CI).
    use super::*;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    fn pod(ns: &str, ip: [u8; 4], app: &str) -> PodInfo {
        PodInfo {
            namespace: ns.to_string(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: Ipv4Addr::from(ip),
            local: true,
            ports: BTreeSet::new(),
        }
    }

    fn policy(v: serde_json::Value) -> Change {
        let np: NetworkPolicy = serde_json::from_value(v).expect("a NetworkPolicy");
        let p = Policy::from_k8s(&np);
        Change::Policy(p.as_ref().map(Policy::key).unwrap_or_default(), Some(p))
    }

    fn kernel() -> (crate::bpf::Datapath, maps::PolicyMaps) {
        let mut dp = crate::bpf::Datapath::load(None).expect("load the eBPF object");
        let maps = maps::PolicyMaps::take(&mut dp).expect("policy maps");
        (dp, maps)
    }

    #[test]
    fn an_address_reused_in_one_batch_stays_under_policy() {
        let (_dp, mut maps) = kernel();
        let mut e = Engine::new(PolicySizes::default(), vec![], Installed::default());
        let ip = Ipv4Addr::new(10, 9, 0, 5);
        e.update(
            vec![
                policy(
                    serde_json::json!({"metadata": {"name": "deny", "namespace": "a"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
                ),
                Change::Pod("a/old".into(), Some(pod("a", ip.octets(), "x"))),
            ],
            true,
            &mut maps,
        );
        assert_eq!(
            maps.installed().unwrap().endpoints[&ip].flags,
            common::POL_INGRESS
        );
        // The old pod goes and a new one gets its address, in one batch.
        e.update(
            vec![
                Change::Pod("a/old".into(), None),
                Change::Pod("a/new".into(), Some(pod("a", ip.octets(), "y"))),
            ],
            true,
            &mut maps,
        );
        let ep = maps.installed().unwrap().endpoints.get(&ip).copied();
        assert_eq!(ep.map(|e| e.flags), Some(common::POL_INGRESS), "{ep:?}");
        assert_eq!(e.flags("a/new"), common::POL_INGRESS);
    }

    #[test]
    fn an_ipv6_block_isolates_and_lets_nothing_in() {
        let (_dp, mut maps) = kernel();
        let mut e = Engine::new(PolicySizes::default(), vec![], Installed::default());
        let ip = Ipv4Addr::new(10, 9, 0, 6);
        e.update(
            vec![
                policy(serde_json::json!({"metadata": {"name": "v6", "namespace": "c"},
                    "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64"}}]}]}})),
                Change::Pod("c/c1".into(), Some(pod("c", ip.octets(), "x"))),
            ],
            true,
            &mut maps,
        );
        let installed = maps.installed().unwrap();
        assert_eq!(installed.endpoints[&ip].flags, common::POL_INGRESS);
        assert!(installed.rules.is_empty(), "{:?}", installed.rules);
        assert!(e.problems().is_empty(), "{:?}", e.problems());
    }

    #[test]
    fn a_new_engine_over_the_same_maps_writes_nothing() {
        let (_dp, mut maps) = kernel();
        let changes = || {
            vec![
                policy(
                    serde_json::json!({"metadata": {"name": "web", "namespace": "a"},
                    "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                                   {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                                          "ports": [{"port": 80}, {"port": 9000, "endPort": 9100}]}]}}),
                ),
                Change::Pod("a/web".into(), Some(pod("a", [10, 9, 0, 7], "web"))),
                Change::Pod(
                    "a/client".into(),
                    Some(PodInfo {
                        local: false,
                        ..pod("a", [10, 9, 1, 7], "client")
                    }),
                ),
            ]
        };
        let mut first = Engine::new(PolicySizes::default(), vec![], Installed::default());
        let applied = first.update(changes(), true, &mut maps);
        assert!(applied.writes > 5, "{applied:?}");
        let mut second = Engine::new(PolicySizes::default(), vec![], maps.installed().unwrap());
        let applied = second.update(changes(), true, &mut maps);
        assert_eq!(applied.writes, 0, "a restart writes nothing");
    }
}
