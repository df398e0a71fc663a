//! The NetworkPolicy maps, seen from the agent: typed handles, what an
//! earlier agent left in them, and the engine's writes.

use std::net::Ipv4Addr;

use aya::maps::{
    HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use ipnetwork::Ipv4Network;
use weft_common as common;
use weft_common::{PolicyCounters, PolicyEndpoint, PolicyUse, RuleKey, RuleValue};

use super::{Installed, RuleEntry, Sink};
use crate::bpf::{BpfError, Datapath};

/// Typed handles on the policy maps.
pub struct PolicyMaps {
    endpoints: HashMap<MapData, u32, PolicyEndpoint>,
    identities: HashMap<MapData, u32, u32>,
    cidrs: LpmTrie<MapData, u32, u32>,
    rules: LpmTrie<MapData, RuleKey, RuleValue>,
    counters: PerCpuArray<MapData, PolicyCounters>,
    allowed: PerCpuHashMap<MapData, PolicyUse, u64>,
}

impl std::fmt::Debug for PolicyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyMaps").finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> BpfError {
    move |source| BpfError::Map { name, source }
}

fn take(dp: &mut Datapath, name: &'static str) -> Result<Map, BpfError> {
    dp.take_map(name).ok_or(BpfError::Missing(name))
}

/// Addresses as the programs read them from packets.
fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn text(name: &str) -> impl Fn(MapError) -> String + '_ {
    move |e| format!("{name}: {e}")
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded datapath.
    ///
    /// # Errors
    /// When a map is missing or of the wrong type.
    pub fn take(dp: &mut Datapath) -> Result<Self, BpfError> {
        Ok(Self {
            endpoints: HashMap::try_from(take(dp, common::POL_ENDPOINTS_MAP)?)
                .map_err(map_err(common::POL_ENDPOINTS_MAP))?,
            identities: HashMap::try_from(take(dp, common::POL_IDENTITIES_MAP)?)
                .map_err(map_err(common::POL_IDENTITIES_MAP))?,
            cidrs: LpmTrie::try_from(take(dp, common::POL_CIDRS_MAP)?)
                .map_err(map_err(common::POL_CIDRS_MAP))?,
            rules: LpmTrie::try_from(take(dp, common::POL_RULES_MAP)?)
                .map_err(map_err(common::POL_RULES_MAP))?,
            counters: PerCpuArray::try_from(take(dp, common::POL_COUNTERS_MAP)?)
                .map_err(map_err(common::POL_COUNTERS_MAP))?,
            allowed: PerCpuHashMap::try_from(take(dp, common::POL_ALLOWED_MAP)?)
                .map_err(map_err(common::POL_ALLOWED_MAP))?,
        })
    }

    /// What the maps hold (an earlier agent's entries, when pinned).
    ///
    /// # Errors
    /// When a map cannot be read.
    pub fn installed(&self) -> Result<Installed, BpfError> {
        let mut out = Installed::default();
        for item in self.endpoints.iter() {
            let (k, v) = item.map_err(map_err(common::POL_ENDPOINTS_MAP))?;
            out.endpoints.insert(ip(k), v);
        }
        for item in self.identities.iter() {
            let (k, v) = item.map_err(map_err(common::POL_IDENTITIES_MAP))?;
            out.identities.insert(ip(k), v);
        }
        for item in self.cidrs.iter() {
            let (k, v) = item.map_err(map_err(common::POL_CIDRS_MAP))?;
            let prefix = u8::try_from(k.prefix_len()).unwrap_or(32);
            if let Ok(n) = Ipv4Network::new(ip(k.data()), prefix) {
                out.cidrs.insert(n, v);
            }
        }
        for item in self.rules.iter() {
            let (k, v) = item.map_err(map_err(common::POL_RULES_MAP))?;
            out.rules.insert(
                RuleEntry {
                    key: k.data(),
                    bits: k.prefix_len(),
                },
                v.policy,
            );
        }
        Ok(out)
    }

    /// The counters of endpoint `id`, summed over CPUs.
    ///
    /// # Errors
    /// When the map cannot be read.
    pub fn counters(&self, id: u32) -> Result<PolicyCounters, BpfError> {
        let per_cpu = self
            .counters
            .get(&id, 0)
            .map_err(map_err(common::POL_COUNTERS_MAP))?;
        Ok(per_cpu
            .iter()
            .fold(PolicyCounters::default(), |mut acc, c| {
                acc.ingress_denied += c.ingress_denied;
                acc.egress_denied += c.egress_denied;
                acc.ingress_allowed += c.ingress_allowed;
                acc.egress_allowed += c.egress_allowed;
                acc
            }))
    }

    /// New flows `policy`'s rules let through for endpoint `id`.
    #[must_use]
    pub fn allowed_by(&self, id: u32, policy: u32) -> u64 {
        self.allowed
            .get(
                &PolicyUse {
                    endpoint: id,
                    policy,
                },
                0,
            )
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Whether the rules trie allows `peer` for endpoint `id`, as the
    /// programs look it up (for `weft policy trace`).
    #[must_use]
    pub fn lookup_rule(&self, key: RuleKey) -> Option<u32> {
        self.rules
            .get(&Key::new(common::RULE_BITS_PORT, key), 0)
            .ok()
            .map(|v| v.policy)
    }

    /// The ipBlock prefix identity of `a`, as the programs look it up.
    #[must_use]
    pub fn lookup_cidr(&self, a: Ipv4Addr) -> Option<u32> {
        self.cidrs.get(&Key::new(32, addr(a)), 0).ok()
    }

    /// The identity of address `a` in the map.
    #[must_use]
    pub fn lookup_identity(&self, a: Ipv4Addr) -> Option<u32> {
        self.identities.get(&addr(a), 0).ok()
    }
}

impl Sink for PolicyMaps {
    fn set_rule(&mut self, e: &RuleEntry, policy: u32) -> Result<(), String> {
        self.rules
            .insert(&Key::new(e.bits, e.key), RuleValue { policy }, 0)
            .map_err(text(common::POL_RULES_MAP))
    }

    fn del_rule(&mut self, e: &RuleEntry) -> Result<(), String> {
        match self.rules.remove(&Key::new(e.bits, e.key)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(text(common::POL_RULES_MAP)(e)),
        }
    }

    fn set_identity(&mut self, ip: Ipv4Addr, id: u32) -> Result<(), String> {
        self.identities
            .insert(addr(ip), id, 0)
            .map_err(text(common::POL_IDENTITIES_MAP))
    }

    fn del_identity(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        match self.identities.remove(&addr(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(text(common::POL_IDENTITIES_MAP)(e)),
        }
    }

    fn set_cidr(&mut self, net: Ipv4Network, id: u32) -> Result<(), String> {
        self.cidrs
            .insert(
                &Key::new(u32::from(net.prefix()), addr(net.network())),
                id,
                0,
            )
            .map_err(text(common::POL_CIDRS_MAP))
    }

    fn del_cidr(&mut self, net: Ipv4Network) -> Result<(), String> {
        match self
            .cidrs
            .remove(&Key::new(u32::from(net.prefix()), addr(net.network())))
        {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(text(common::POL_CIDRS_MAP)(e)),
        }
    }

    fn set_endpoint(&mut self, ip: Ipv4Addr, ep: PolicyEndpoint) -> Result<(), String> {
        self.endpoints
            .insert(addr(ip), ep, 0)
            .map_err(text(common::POL_ENDPOINTS_MAP))
    }

    fn del_endpoint(&mut self, ip: Ipv4Addr) -> Result<(), String> {
        match self.endpoints.remove(&addr(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(text(common::POL_ENDPOINTS_MAP)(e)),
        }
    }

    fn reset_counters(&mut self, id: u32) -> Result<(), String> {
        // The per-policy counts of the endpoint number's earlier pod.
        let old: Vec<PolicyUse> = self
            .allowed
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.endpoint == id)
            .collect();
        for k in old {
            let _ = self.allowed.remove(&k);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e.to_string())?;
        let zero = PerCpuValues::try_from(vec![PolicyCounters::default(); cpus])
            .map_err(|e| e.to_string())?;
        self.counters
            .set(id, zero, 0)
            .map_err(text(common::POL_COUNTERS_MAP))
    }
}
