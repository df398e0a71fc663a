//! A stand-in for the internet's DNS inside a namespace: a small hickory
//! server answering `example.org` and friends, counting every query it
//! gets, so that tests can check what Weft forwards and caches.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Result;
use hickory_proto::{
    op::{Header, HeaderCounts, MessageType, Metadata, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME, SOA},
    },
};
use hickory_server::{
    Server,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use weft_agent::netlink::netns;

/// The address `example.org` has upstream: loopback, so that a client's
/// connection to a closed port of it is refused at once, wherever it runs.
pub const EXAMPLE_ORG: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// How long `slow.example.org` takes to answer (less than the forwarder's
/// 1 s per try).
pub const SLOW: Duration = Duration::from_millis(600);

/// Queries received, by `name TYPE` (name lowercase, fully qualified).
pub type Counts = Arc<Mutex<BTreeMap<String, u32>>>;

#[derive(Clone)]
struct Handler {
    counts: Counts,
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("valid name")
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut handle: R,
    ) -> ResponseInfo {
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let resp = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return handle.send_response(resp).await.unwrap_or_else(|_| {
                ResponseInfo::from(Header {
                    metadata: Metadata::new(0, MessageType::Response, request.metadata.op_code),
                    counts: HeaderCounts::default(),
                })
            });
        };
        let qname: Name = info.query.name().into();
        let qtype = info.query.query_type();
        let lname = qname.to_lowercase().to_ascii();
        *self
            .counts
            .lock()
            .expect("counts")
            .entry(format!("{lname} {qtype}"))
            .or_default() += 1;
        let org = name("example.org.");
        let mut answers = Vec::new();
        let mut code = ResponseCode::NoError;
        match lname.as_str() {
            "slow.example.org." => {
                // An upstream that takes its time.
                tokio::time::sleep(SLOW).await;
                if qtype == RecordType::A {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        60,
                        RData::A(A(EXAMPLE_ORG)),
                    ));
                }
            }
            "example.org." => {
                if qtype == RecordType::A {
                    answers.push(Record::from_rdata(
                        qname.clone(),
                        60,
                        RData::A(A(EXAMPLE_ORG)),
                    ));
                }
            }
            "www.example.org." => {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    60,
                    RData::CNAME(CNAME(org.clone())),
                ));
                if qtype == RecordType::A {
                    answers.push(Record::from_rdata(
                        org.clone(),
                        60,
                        RData::A(A(EXAMPLE_ORG)),
                    ));
                }
            }
            _ => code = ResponseCode::NXDomain,
        }
        let soa = Record::from_rdata(
            org.clone(),
            30,
            RData::SOA(SOA::new(
                name("ns.example.org."),
                name("hostmaster.example.org."),
                1,
                3600,
                600,
                86_400,
                30,
            )),
        );
        let negative = if answers.is_empty() {
            vec![soa]
        } else {
            vec![]
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.response_code = code;
        meta.authoritative = true;
        let none: Vec<Record> = Vec::new();
        let resp = builder.build(
            meta,
            answers.iter(),
            none.iter(),
            negative.iter(),
            none.iter(),
        );
        handle.send_response(resp).await.unwrap_or_else(|_| {
            ResponseInfo::from(Header {
                metadata: Metadata::new(0, MessageType::Response, request.metadata.op_code),
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// Starts the upstream on `addr` (UDP and TCP) inside namespace `ns`, on
/// the current tokio runtime. It stops with the runtime.
///
/// # Errors
/// When the address cannot be bound there.
pub fn start(ns: &str, addr: SocketAddrV4) -> Result<Counts> {
    let (udp, tcp) = netns::run_in(Some(ns), move || -> std::io::Result<_> {
        let u = std::net::UdpSocket::bind(addr)?;
        u.set_nonblocking(true)?;
        let t = std::net::TcpListener::bind(addr)?;
        t.set_nonblocking(true)?;
        Ok((u, t))
    })??;
    let counts = Counts::default();
    let handler = Handler {
        counts: counts.clone(),
    };
    tokio::spawn(async move {
        let mut server = Server::new(handler);
        match tokio::net::UdpSocket::from_std(udp) {
            Ok(u) => server.register_socket(u),
            Err(e) => tracing::error!(error = %e, "upstream UDP socket"),
        }
        match tokio::net::TcpListener::from_std(tcp) {
            Ok(t) => server.register_listener(t, Duration::from_secs(5), 65_535),
            Err(e) => tracing::error!(error = %e, "upstream TCP listener"),
        }
        let _ = server.block_until_done().await;
    });
    Ok(counts)
}

/// How many queries for `name` (any case, with or without the final
/// dot) of type `qtype` (e.g. "A") the upstream got.
#[must_use]
pub fn count(counts: &Counts, name: &str, qtype: &str) -> u32 {
    let mut n = name.to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    counts
        .lock()
        .expect("counts")
        .get(&format!("{n} {qtype}"))
        .copied()
        .unwrap_or(0)
}

/// Queries for names under `suffix` it got, of any type.
#[must_use]
pub fn count_under(counts: &Counts, suffix: &str) -> u32 {
    let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
    counts
        .lock()
        .expect("counts")
        .iter()
        .filter(|(k, _)| {
            let name = k.split(' ').next().unwrap_or("").trim_end_matches('.');
            name == suffix || name.ends_with(&format!(".{suffix}"))
        })
        .map(|(_, v)| *v)
        .sum()
}
