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
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// More fragments follow (this is a datagram's first fragment).
    pub more_frags: bool,
    /// The IP identification field, host order.
    pub ip_id: u16,
    /// Bytes after the L4 header, as the IP header's length says (a GSO
    /// segment's whole length).
    pub payload: u16,
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

/// The Ethernet header and an IPv4 header without options: what every
/// program reads of a packet first, in one helper call (a call per field
/// was most of the programs' cost per packet). Fails for frames shorter
/// than that, which are neither IPv4 nor ARP.
pub const HDR_LEN: usize = ETH_HLEN + 20;

/// Reads the first [`HDR_LEN`] bytes of the packet.
#[inline(always)]
pub fn headers(ctx: &TcContext) -> Result<[u8; HDR_LEN], ()> {
    ctx.load::<[u8; HDR_LEN]>(0).map_err(|_| ())
}

/// A big-endian u16 of the header bytes at `off`, in host order.
#[inline(always)]
pub fn be16(h: &[u8; HDR_LEN], off: usize) -> u16 {
    u16::from_be_bytes([h[off], h[off + 1]])
}

/// Four header bytes at `off` as they are in the packet (network order),
/// as `ctx.load::<u32>` reads them.
#[inline(always)]
pub fn raw32(h: &[u8; HDR_LEN], off: usize) -> u32 {
    u32::from_ne_bytes([h[off], h[off + 1], h[off + 2], h[off + 3]])
}

/// The ports (network order), TCP flags and header length of the L4
/// header at `l4`: one read of 14 bytes for TCP (whose header has at
/// least 20), of 4 for the others (header length 8). `Err` when not even
/// the ports are there.
#[inline(always)]
pub fn ports(ctx: &TcContext, l4: usize, proto: u8) -> Result<(u16, u16, u8, u16), ()> {
    if proto == PROTO_TCP
        && let Ok(t) = ctx.load::<[u8; 14]>(l4)
    {
        Ok((
            u16::from_ne_bytes([t[0], t[1]]),
            u16::from_ne_bytes([t[2], t[3]]),
            t[13],
            u16::from(t[12] >> 4) * 4,
        ))
    } else {
        // UDP, SCTP, or a TCP header cut short (a tiny first fragment):
        // its ports if it has them, no flags.
        let u: [u8; 4] = ctx.load(l4).map_err(|_| ())?;
        Ok((
            u16::from_ne_bytes([u[0], u[1]]),
            u16::from_ne_bytes([u[2], u[3]]),
            0,
            8,
        ))
    }
}

/// Parses an IPv4 TCP or UDP packet that carries its L4 header (not a
/// later fragment). `Err` for anything else.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Flow, ()> {
    parse_headers(ctx, &headers(ctx)?)
}

/// [`parse`], the headers already read.
#[inline(always)]
pub fn parse_headers(ctx: &TcContext, h: &[u8; HDR_LEN]) -> Result<Flow, ()> {
    let h = *h;
    if be16(&h, 12) != ETH_P_IP {
        return Err(());
    }
    let vihl = h[ETH_HLEN];
    if vihl >> 4 != 4 {
        return Err(());
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 {
        return Err(());
    }
    let frag = be16(&h, ETH_HLEN + 6);
    if frag & 0x1fff != 0 {
        return Err(());
    }
    let proto = h[ETH_HLEN + 9];
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(());
    }
    let l4 = ETH_HLEN + ihl;
    let (sport, dport, flags, l4_len) = ports(ctx, l4, proto)?;
    let total = be16(&h, ETH_HLEN + 2);
    Ok(Flow {
        saddr: raw32(&h, IP_SRC),
        daddr: raw32(&h, IP_DST),
        sport,
        dport,
        proto,
        l4,
        flags,
        more_frags: frag & 0x2000 != 0,
        ip_id: be16(&h, ETH_HLEN + 4),
        payload: total.saturating_sub(ihl as u16 + l4_len),
    })
}

/// Whether the packet is a TCP SYN without ACK: the first of a connection.
#[inline(always)]
pub fn is_syn(f: &Flow) -> bool {
    f.proto == PROTO_TCP && f.flags & 0x12 == 0x02
}

/// Whether the packet is a TCP FIN or RST: its connection is ending.
#[inline(always)]
pub fn is_closing(f: &Flow) -> bool {
    f.proto == PROTO_TCP && f.flags & 0x05 != 0
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
