//! Anti-spoofing on the host side of every pod veth: a frame a pod sends
//! must carry the pod's own source MAC; an IPv4 packet its own source
//! address; an ARP message the pod's own MAC and address as its sender (or
//! no address, a probe). Anything else (IPv6 and its neighbour discovery,
//! VLAN-tagged frames, other EtherTypes) is dropped: pods have IPv4 only.
//! Drops are counted per veth and by what was forged.
//!
//! A veth the agent has not registered in `WEFT_POD_ADDRS` is not judged
//! (the agent registers every pod's before attaching the programs).

use crate::pkt;
use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, HashMap, PerCpuHashMap},
    programs::TcContext,
};
use weft_common::{
    DnsBucket, DnsLimit, IF_COUNTERS_MAX, POD_ADDRS_MAX, PROTO_TCP, PROTO_UDP, PodAddr,
    SpoofCounters,
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
/// TCP payload to port 53 that costs one more token: about two pipelined
/// queries' worth.
const TCP_BYTES_PER_QUERY: u64 = 64;
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
fn drop(ifindex: u32, what: Forged) -> Verdict {
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
    Verdict::Drop
}

/// What the anti-spoofing check says of a frame a pod sent.
pub enum Verdict {
    /// Forged: dropped (and counted).
    Drop,
    /// The pod's own addresses.
    Own,
    /// The veth's pod is not registered: not judged.
    Unguarded,
}

/// Whether the frame the pod sent carries its own addresses. `h` is the
/// frame's first [`pkt::HDR_LEN`] bytes, `None` for a shorter frame, which
/// is neither IPv4 nor ARP.
#[inline(always)]
pub fn from_pod(ctx: &TcContext, ifindex: u32, h: Option<&[u8; pkt::HDR_LEN]>) -> Verdict {
    // SAFETY: a plain lookup; the value is copied out at once.
    let Some(own) = (unsafe { POD_ADDRS.get(&ifindex) }).copied() else {
        return Verdict::Unguarded;
    };
    let Some(h) = h else {
        return drop(ifindex, Forged::Other);
    };
    let src_mac = [h[6], h[7], h[8], h[9], h[10], h[11]];
    if src_mac != own.mac {
        return drop(ifindex, Forged::Mac);
    }
    match pkt::be16(h, 12) {
        ETH_P_IP if pkt::raw32(h, ETH_HLEN + 12) == own.ip => Verdict::Own,
        ETH_P_IP => drop(ifindex, Forged::Ip),
        ETH_P_ARP => {
            // htype 2, ptype 2, hlen 1, plen 1, oper 2, sha 6, spa 4, tha 6, tpa 4.
            let ptype = pkt::be16(h, ETH_HLEN + 2);
            let lens = pkt::be16(h, ETH_HLEN + 4);
            let sha = [
                h[ETH_HLEN + 8],
                h[ETH_HLEN + 9],
                h[ETH_HLEN + 10],
                h[ETH_HLEN + 11],
                h[ETH_HLEN + 12],
                h[ETH_HLEN + 13],
            ];
            match ctx.load::<u32>(ETH_HLEN + 14) {
                Ok(spa)
                    if ptype == ETH_P_IP
                        && lens == 0x0604
                        && sha == own.mac
                        && (spa == own.ip || spa == 0) =>
                {
                    Verdict::Own
                }
                _ => drop(ifindex, Forged::Arp),
            }
        }
        _ => drop(ifindex, Forged::Other),
    }
}

/// Whether a DNS query from the pod of `ifindex` fits its token bucket;
/// anything else passes. A UDP datagram to port 53 costs one token; a TCP
/// segment to port 53 one, plus one per [`TCP_BYTES_PER_QUERY`] bytes of
/// payload, so that queries pipelined on a connection (a segment may carry
/// hundreds) are held to the same rate. One pod flooding DNS is held to the
/// limit at its own veth, before the node's server reads a byte of it, so
/// the other pods' queries find the server as free as before. `flow` is
/// the packet's TCP or UDP header, `None` when it has none that could be
/// read.
#[inline(always)]
pub fn dns_within_rate(ifindex: u32, h: &[u8; pkt::HDR_LEN], flow: Option<&pkt::Flow>) -> bool {
    let Some(limit) = DNS_LIMIT.get(0).copied() else {
        return true;
    };
    if limit.rate == 0 {
        return true;
    }
    let (proto, frag) = (h[ETH_HLEN + 9], pkt::be16(h, ETH_HLEN + 6));
    // Later fragments carry no port: their first fragment was judged.
    if pkt::be16(h, 12) != ETH_P_IP
        || (proto != PROTO_UDP && proto != PROTO_TCP)
        || frag & 0x1fff != 0
    {
        return true;
    }
    let cost = match flow {
        Some(f) if f.dport != 53u16.to_be() => return true,
        Some(f) if proto == PROTO_TCP => 1000 + u64::from(f.payload) * 1000 / TCP_BYTES_PER_QUERY,
        Some(_) => 1000,
        // A first fragment too short for its ports: charged as a query,
        // or fragmenting would be a way around the limit.
        None => 1000,
    };
    // SAFETY: monotonic clock read.
    let now = unsafe { bpf_ktime_get_ns() };
    let full = u64::from(limit.burst.max(1)) * 1000;
    let Some(b) = DNS_BUCKETS.get_ptr_mut(&ifindex) else {
        // A pod's first query: a full bucket, less this one.
        let fits = cost <= full;
        let b = DnsBucket {
            milli_tokens: if fits { full - cost } else { full },
            last_ns: now,
            dropped: u64::from(!fits),
        };
        let _ = DNS_BUCKETS.insert(&ifindex, &b, 0);
        return fits;
    };
    // SAFETY: a map value; concurrent updates from other CPUs may lose a
    // token's worth, which only makes the limit approximate.
    let b = unsafe { &mut *b };
    // At most 10 s of refill: no overflow, and the bucket is full by then.
    let elapsed = now.saturating_sub(b.last_ns).min(10_000_000_000);
    let refill = elapsed * u64::from(limit.rate) / 1_000_000;
    b.milli_tokens = (b.milli_tokens + refill).min(full);
    b.last_ns = now;
    if b.milli_tokens >= cost {
        b.milli_tokens -= cost;
        true
    } else {
        b.dropped += 1;
        false
    }
}
