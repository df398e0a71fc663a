//! Reading and rewriting IPv4 TCP/UDP packets in a tc program.
//!
//! Everything goes through `bpf_skb_load_bytes`/`bpf_skb_store_bytes` and the
//! checksum helpers: no direct packet pointers, so the verifier has nothing
//! to prove about bounds, and the helpers keep checksum offload state right.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{
        bpf_csum_diff, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh,
        bpf_skb_change_tail,
    },
    programs::TcContext,
};
use weft_common::{PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;
const PROTO_ICMP: u8 = 1;

/// The parts of a packet the load-balancer looks at. Addresses and ports in
/// network order, as in the packet.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4: usize,
}

impl Flow {
    fn csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4 + 16
        } else {
            self.l4 + 6
        }
    }

    fn l4_flags(&self) -> u64 {
        // A UDP checksum of 0 means "none": keep it so, and never produce 0.
        if self.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }
}

/// Parses an IPv4 TCP or UDP packet that carries its L4 header (not a
/// later fragment). `Err` for anything else.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Flow, ()> {
    let proto_eth: u16 = ctx.load(12).map_err(|_| ())?;
    if u16::from_be(proto_eth) != ETH_P_IP {
        return Err(());
    }
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
    if vihl >> 4 != 4 {
        return Err(());
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).map_err(|_| ())?;
    if u16::from_be(frag) & 0x1fff != 0 {
        return Err(());
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(());
    }
    let l4 = ETH_HLEN + ihl;
    Ok(Flow {
        saddr: ctx.load(IP_SRC).map_err(|_| ())?,
        daddr: ctx.load(IP_DST).map_err(|_| ())?,
        sport: ctx.load(l4).map_err(|_| ())?,
        dport: ctx.load(l4 + 2).map_err(|_| ())?,
        proto,
        l4,
    })
}

/// Whether the packet is a TCP SYN without ACK: the first of a connection.
#[inline(always)]
pub fn is_syn(ctx: &TcContext, f: &Flow) -> bool {
    if f.proto != PROTO_TCP {
        return false;
    }
    let flags: u8 = ctx.load(f.l4 + 13).unwrap_or(0);
    flags & 0x12 == 0x02
}

/// Whether the packet is a TCP FIN or RST: its connection is ending.
#[inline(always)]
pub fn is_closing(ctx: &TcContext, f: &Flow) -> bool {
    if f.proto != PROTO_TCP {
        return false;
    }
    let flags: u8 = ctx.load(f.l4 + 13).unwrap_or(0);
    flags & 0x05 != 0
}

/// Rewrites the source (`src = true`) or destination address and port,
/// fixing the IP and L4 checksums.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, f: &Flow, src: bool, addr: u32, port: u16) -> Result<(), ()> {
    let (old_addr, old_port, addr_off, port_off) = if src {
        (f.saddr, f.sport, IP_SRC, f.l4)
    } else {
        (f.daddr, f.dport, IP_DST, f.l4 + 2)
    };
    let flags = f.l4_flags();
    if old_addr != addr {
        ctx.l4_csum_replace(
            f.csum_off(),
            u64::from(old_addr),
            u64::from(addr),
            u64::from(BPF_F_PSEUDO_HDR) | flags | 4,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(old_addr), u64::from(addr), 4)
            .map_err(|_| ())?;
        ctx.store(addr_off, &addr, 0).map_err(|_| ())?;
    }
    if old_port != port {
        ctx.l4_csum_replace(
            f.csum_off(),
            u64::from(old_port),
            u64::from(port),
            flags | 2,
        )
        .map_err(|_| ())?;
        ctx.store(port_off, &port, 0).map_err(|_| ())?;
    }
    Ok(())
}

/// Folds a 32-bit one's complement sum into the 16-bit Internet checksum.
#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
fn csum(buf: &mut [u8]) -> u16 {
    // SAFETY: `buf` is on this program's stack; its length is a multiple of 4.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            buf.as_mut_ptr().cast(),
            buf.len() as u32,
            0,
        )
    };
    fold(sum)
}

/// The reply a refused connection gets: ICMP destination unreachable, port
/// unreachable (RFC 792), from the address the client asked for, sent back
/// out of the interface the packet came in on. TCP reports it to connect()
/// as ECONNREFUSED at once; UDP to the next receive.
///
/// The packet is rewritten in place: Ethernet addresses swapped, a new IP
/// and ICMP header, then the original IP header and first 8 bytes of its
/// payload, as the RFC asks. IP options make it give up (`Err`).
#[inline(always)]
pub fn reject(ctx: &TcContext, f: &Flow) -> Result<i32, ()> {
    if f.l4 != ETH_HLEN + 20 {
        return Err(());
    }
    let macs: [u8; 12] = ctx.load(0).map_err(|_| ())?;
    // 8 bytes ICMP header + 20 bytes original IP header + 8 bytes of L4.
    let mut icmp = [0u8; 36];
    let orig: [u8; 28] = ctx.load(ETH_HLEN).map_err(|_| ())?;
    icmp[8..].copy_from_slice(&orig);
    icmp[0] = 3; // destination unreachable
    icmp[1] = 3; // port unreachable
    let c = csum(&mut icmp);
    icmp[2..4].copy_from_slice(&c.to_ne_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&56u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&f.daddr.to_ne_bytes());
    ip[16..20].copy_from_slice(&f.saddr.to_ne_bytes());
    let c = csum(&mut ip);
    ip[10..12].copy_from_slice(&c.to_ne_bytes());

    let mut eth = [0u8; 12];
    eth[..6].copy_from_slice(&macs[6..12]);
    eth[6..].copy_from_slice(&macs[..6]);

    // SAFETY: the skb of this invocation; 14 + 20 + 36 bytes.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, 70, 0) } != 0 {
        return Err(());
    }
    ctx.store(0, &eth, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(ETH_HLEN + 20, &icmp, 0).map_err(|_| ())?;
    // SAFETY: the skb of this invocation.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; 0 = the interface's egress.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Sends a rewritten packet out towards `daddr` by the route the node's
/// table gives, bypassing the stack: a packet that came in with this
/// node's own address now as its source would be dropped as a martian if
/// it went through forwarding.
#[inline(always)]
pub fn forward(ctx: &TcContext, saddr: u32, daddr: u32, proto: u8) -> Result<i32, ()> {
    const AF_INET: u8 = 2;
    const SUCCESS: i64 = 0;
    const NO_NEIGH: i64 = 7;
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = proto;
    p.__bindgen_anon_1.tot_len = (ctx.len() as u16).saturating_sub(ETH_HLEN as u16);
    p.__bindgen_anon_3.ipv4_src = saddr;
    p.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: the skb of this invocation.
    p.ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: helper call with a stack struct of the size given.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match ret {
        SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&p.dmac);
            macs[6..].copy_from_slice(&p.smac);
            ctx.store(0, &macs, 0).map_err(|_| ())?;
            // SAFETY: plain helper call.
            Ok(unsafe { bpf_redirect(p.ifindex, 0) } as i32)
        }
        // SAFETY: plain helper call; the kernel resolves the neighbour.
        NO_NEIGH => {
            Ok(unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut(), 0, 0) } as i32)
        }
        // No route or forwarding off: the caller decides.
        _ => Err(()),
    }
}
