//! Anti-spoofing on the host side of every pod veth: a frame a pod sends
//! must carry the pod's own source MAC; an IPv4 packet its own source
//! address; an ARP message the pod's own MAC and address as its sender (or
//! no address, a probe). Anything else (IPv6 and its neighbour discovery,
//! VLAN-tagged frames, other EtherTypes) is dropped: pods have IPv4 only.
//! Drops are counted per veth and by what was forged.
//!
//! A veth the agent has not registered in `WEFT_POD_ADDRS` is not judged
//! (the agent registers every pod's before attaching the programs).

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
    programs::TcContext,
};
use weft_common::{
    DnsBucket, DnsLimit, IF_COUNTERS_MAX, POD_ADDRS_MAX, PROTO_UDP, PodAddr, SpoofCounters,
};

#[map(name = "WEFT_POD_ADDRS")]
static POD_ADDRS: HashMap<u32, PodAddr> = HashMap::with_max_entries(POD_ADDRS_MAX, 0);

#[map(name = "WEFT_SPOOFED")]
static SPOOFED: PerCpuHashMap<u32, SpoofCounters> =
    PerCpuHashMap::with_max_entries(IF_COUNTERS_MAX, 0);

#[map(name = "WEFT_DNS_BUCKETS")]
static DNS_BUCKETS: HashMap<u32, DnsBucket> = HashMap::with_max_entries(IF_COUNTERS_MAX, 0);

#[map(name = "WEFT_DNS_LIMIT")]
static DNS_LIMIT: Array<DnsLimit> = Array::with_max_entries(1, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;

#[derive(Clone, Copy)]
enum Forged {
    Mac,
    Ip,
    Arp,
    Other,
}

#[inline(always)]
fn drop(ifindex: u32, what: Forged) -> bool {
    let bump = |c: &mut SpoofCounters| match what {
        Forged::Mac => c.mac += 1,
        Forged::Ip => c.ip += 1,
        Forged::Arp => c.arp += 1,
        Forged::Other => c.other += 1,
    };
    if let Some(c) = SPOOFED.get_ptr_mut(&ifindex) {
        // SAFETY: per-CPU value, only this CPU writes it during this call.
        bump(unsafe { &mut *c });
    } else {
        let mut c = SpoofCounters::default();
        bump(&mut c);
        let _ = SPOOFED.insert(&ifindex, &c, 0);
    }
    false
}

/// Whether the frame the pod sent carries its own addresses.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> bool {
    // SAFETY: `skb` points at the kernel's __sk_buff for this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(own) = (unsafe { POD_ADDRS.get(&ifindex) }).copied() else {
        return true;
    };
    let Ok(src_mac) = ctx.load::<[u8; 6]>(6) else {
        return drop(ifindex, Forged::Other);
    };
    if src_mac != own.mac {
        return drop(ifindex, Forged::Mac);
    }
    let Ok(proto) = ctx.load::<u16>(12) else {
        return drop(ifindex, Forged::Other);
    };
    match u16::from_be(proto) {
        ETH_P_IP => match ctx.load::<u32>(ETH_HLEN + 12) {
            Ok(saddr) if saddr == own.ip => dns_within_rate(ctx, ifindex),
            _ => drop(ifindex, Forged::Ip),
        },
        ETH_P_ARP => {
            // htype 2, ptype 2, hlen 1, plen 1, oper 2, sha 6, spa 4, tha 6, tpa 4.
            let ptype = ctx.load::<u16>(ETH_HLEN + 2).map(u16::from_be);
            let lens = ctx.load::<u16>(ETH_HLEN + 4).map(u16::from_be);
            let sha = ctx.load::<[u8; 6]>(ETH_HLEN + 8);
            let spa = ctx.load::<u32>(ETH_HLEN + 14);
            match (ptype, lens, sha, spa) {
                (Ok(ETH_P_IP), Ok(0x0604), Ok(sha), Ok(spa))
                    if sha == own.mac && (spa == own.ip || spa == 0) =>
                {
                    true
                }
                _ => drop(ifindex, Forged::Arp),
            }
        }
        _ => drop(ifindex, Forged::Other),
    }
}

/// Whether a DNS query (UDP to port 53) from the pod of `ifindex` fits its
/// token bucket; anything else passes. One pod flooding DNS is held to the
/// limit at its own veth, before the node's server reads a byte of it, so
/// the other pods' queries find the server as free as before.
#[inline(always)]
fn dns_within_rate(ctx: &TcContext, ifindex: u32) -> bool {
    let Some(limit) = DNS_LIMIT.get(0).copied() else {
        return true;
    };
    if limit.rate == 0 {
        return true;
    }
    let (Ok(vihl), Ok(proto), Ok(frag)) = (
        ctx.load::<u8>(ETH_HLEN),
        ctx.load::<u8>(ETH_HLEN + 9),
        ctx.load::<u16>(ETH_HLEN + 6),
    ) else {
        return true;
    };
    // Later fragments carry no port: their first fragment was judged.
    if proto != PROTO_UDP || u16::from_be(frag) & 0x1fff != 0 {
        return true;
    }
    let l4 = ETH_HLEN + usize::from(vihl & 0x0f) * 4;
    match ctx.load::<u16>(l4 + 2) {
        Ok(p) if u16::from_be(p) == 53 => {}
        _ => return true,
    }
    // SAFETY: monotonic clock read.
    let now = unsafe { bpf_ktime_get_ns() };
    let full = u64::from(limit.burst.max(1)) * 1000;
    let Some(b) = DNS_BUCKETS.get_ptr_mut(&ifindex) else {
        // A pod's first query: a full bucket, less this one.
        let b = DnsBucket {
            milli_tokens: full - 1000,
            last_ns: now,
            dropped: 0,
        };
        let _ = DNS_BUCKETS.insert(&ifindex, &b, 0);
        return true;
    };
    // SAFETY: a map value; concurrent updates from other CPUs may lose a
    // token's worth, which only makes the limit approximate.
    let b = unsafe { &mut *b };
    // At most 10 s of refill: no overflow, and the bucket is full by then.
    let elapsed = now.saturating_sub(b.last_ns).min(10_000_000_000);
    let refill = elapsed * u64::from(limit.rate) / 1_000_000;
    b.milli_tokens = (b.milli_tokens + refill).min(full);
    b.last_ns = now;
    if b.milli_tokens >= 1000 {
        b.milli_tokens -= 1000;
        true
    } else {
        b.dropped += 1;
        false
    }
}
