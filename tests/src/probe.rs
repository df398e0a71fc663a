//! Reachability probes between namespaces: real TCP and UDP sockets opened
//! inside the namespaces (a socket stays in the namespace it was made in).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use weft_agent::netlink::netns;

/// Timeout for one probe.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// An echo server in a namespace: TCP and UDP on the same address.
/// It answers each message with `<tag>:<message>` and stops when dropped.
#[derive(Debug)]
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Starts the server inside `ns`, listening on `addr`.
    ///
    /// # Errors
    /// When the namespace or the address is unusable.
    pub fn start(ns: &str, addr: SocketAddr, tag: &str) -> Result<Self> {
        let (tcp, udp) = netns::run_in(Some(ns), move || -> std::io::Result<_> {
            Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?))
        })?
        .with_context(|| format!("bind {addr} in {ns}"))?;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        let (s1, t1) = (stop.clone(), tag.to_string());
        threads.push(std::thread::spawn(move || {
            while !s1.load(std::sync::atomic::Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(PROBE_TIMEOUT));
                        let mut buf = [0u8; 512];
                        if let Ok(n) = c.read(&mut buf) {
                            let mut reply = format!("{t1}:").into_bytes();
                            reply.extend_from_slice(&buf[..n]);
                            let _ = c.write_all(&reply);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let (s2, t2) = (stop.clone(), tag.to_string());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let mut reply = format!("{t2}:").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = udp.send_to(&reply, from);
                }
            }
        }));
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Sends `msg` over TCP from inside `ns` to `to` and returns the reply.
///
/// # Errors
/// When the connection fails or times out.
pub fn tcp_ask(ns: &str, to: SocketAddr, msg: &str) -> Result<String> {
    let msg = msg.to_string();
    netns::run_in(Some(ns), move || -> Result<String> {
        let mut s = TcpStream::connect_timeout(&to, PROBE_TIMEOUT)?;
        s.set_read_timeout(Some(PROBE_TIMEOUT))?;
        s.write_all(msg.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })?
    .with_context(|| format!("TCP from {ns} to {to}"))
}

/// Sends `msg` over UDP from inside `ns` to `to` and returns the reply
/// (three tries: UDP may lose the first packet while ARP resolves).
///
/// # Errors
/// When no reply comes.
pub fn udp_ask(ns: &str, to: SocketAddr, msg: &str) -> Result<String> {
    let msg = msg.to_string();
    netns::run_in(Some(ns), move || -> Result<String> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buf = [0u8; 512];
        for _ in 0..3 {
            s.send_to(msg.as_bytes(), to)?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        bail!("no UDP reply")
    })?
    .with_context(|| format!("UDP from {ns} to {to}"))
}

/// A DNS query for `name`, type A, class IN, with `id`.
#[must_use]
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Asks `server` for `name` over UDP every 20 ms for `secs` from namespace
/// `ns`, waiting up to 1 s for each answer (as a resolver would): (asked,
/// lost).
///
/// # Errors
/// When the namespace or the socket cannot be used.
pub fn dns_loss(ns: &str, server: SocketAddr, name: &str, secs: u64) -> Result<(u32, u32)> {
    netns::run_in(Some(ns), || -> Result<(u32, u32)> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(server)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        let (mut asked, mut lost) = (0u32, 0u32);
        let mut buf = [0u8; 512];
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            asked += 1;
            let id = asked as u16;
            s.send(&dns_query(id, name))?;
            let t = std::time::Instant::now();
            loop {
                match s.recv(&mut buf) {
                    Ok(n) if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id => break,
                    Ok(_) if t.elapsed() < Duration::from_secs(1) => {}
                    _ => {
                        lost += 1;
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((asked, lost))
    })?
}
