//! The DNS server: hickory-server over UDP and TCP. The cluster zone is
//! answered from memory ([`Zone`]); other names go to the upstream
//! resolvers through a cache ([`Forwarder`]); a local pod's search-path
//! misses are resolved on its behalf (the search-path shortcut).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata::CNAME},
    serialize::binary::{BinDecodable as _, BinDecoder},
};
use hickory_server::{
    Server,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::MessageResponseBuilder,
};

use crate::{
    forward::Forwarder,
    records::{Answer, Zone},
};

/// Counters of what the server did, for `/dns/stats` and tests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    /// Queries received (answered or not).
    pub queries: AtomicU64,
    /// Answered from the cluster zone.
    pub zone: AtomicU64,
    /// Sent to the forwarder (the cache answers many of them).
    pub forwarded: AtomicU64,
    /// Search-path misses answered with the final result.
    pub shortcut: AtomicU64,
    /// Answered SERVFAIL.
    pub servfail: AtomicU64,
    /// Refused (outside the zone with no upstream, or not a query).
    pub refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the server answers: the header fields and sections it fills.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The response code.
    pub code: ResponseCode,
    /// Authoritative (the cluster zone's own answers).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section.
    pub authority: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Self {
        Self {
            code,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }
}

/// How the server behaves beyond the zone.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where other names go (`None`: refused).
    pub forwarder: Option<Forwarder>,
    /// Resolve local pods' search-path misses on their behalf.
    pub search_shortcut: bool,
}

/// Answers queries: the zone, the forwarder, the shortcut.
#[derive(Clone)]
pub struct Handler {
    zone: Arc<RwLock<Zone>>,
    opts: Options,
    stats: Arc<Stats>,
}

impl Handler {
    /// A handler reading `zone`.
    #[must_use]
    pub fn new(zone: Arc<RwLock<Zone>>, opts: Options) -> Self {
        Self {
            zone,
            opts,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The answer to `qname`/`qtype` asked by `src`.
    pub async fn answer(&self, src: IpAddr, qname: &Name, qtype: RecordType) -> Reply {
        let (answer, soa, search) = {
            let z = self.zone.read().expect("zone lock");
            let answer = z.resolve(qname, qtype);
            let search = match (&answer, src) {
                (Answer::NxDomain, IpAddr::V4(v4)) if self.opts.search_shortcut => {
                    z.search_path(v4, qname)
                }
                _ => None,
            };
            (answer, z.soa(), search)
        };
        match answer {
            Answer::Records(rs) => {
                bump(&self.stats.zone);
                let mut reply = Reply {
                    code: ResponseCode::NoError,
                    authoritative: true,
                    answers: rs,
                    authority: Vec::new(),
                };
                self.chase(&mut reply, qtype).await;
                reply
            }
            Answer::NxDomain if search.is_some() => {
                let names = search.unwrap_or_default();
                match self.shortcut(qname, qtype, &names).await {
                    Some(r) => {
                        bump(&self.stats.shortcut);
                        r
                    }
                    None => {
                        bump(&self.stats.zone);
                        negative(ResponseCode::NXDomain, soa)
                    }
                }
            }
            Answer::NoData => {
                bump(&self.stats.zone);
                negative(ResponseCode::NoError, soa)
            }
            Answer::NxDomain => {
                bump(&self.stats.zone);
                negative(ResponseCode::NXDomain, soa)
            }
            Answer::ServFail => {
                bump(&self.stats.servfail);
                Reply::code(ResponseCode::ServFail)
            }
            Answer::NotOurs => match &self.opts.forwarder {
                Some(f) => {
                    bump(&self.stats.forwarded);
                    let got = f.lookup(qname, qtype).await;
                    if got.code == ResponseCode::ServFail {
                        bump(&self.stats.servfail);
                    }
                    Reply {
                        code: got.code,
                        authoritative: false,
                        answers: got.answers,
                        authority: got.authority,
                    }
                }
                None => {
                    bump(&self.stats.refused);
                    Reply::code(ResponseCode::Refused)
                }
            },
        }
    }

    /// An ExternalName's CNAME points outside the zone: add what the
    /// target resolves to, as CoreDNS does, so clients need no second trip.
    async fn chase(&self, reply: &mut Reply, qtype: RecordType) {
        let [only] = &reply.answers[..] else {
            return;
        };
        let RData::CNAME(CNAME(target)) = &only.data else {
            return;
        };
        if qtype == RecordType::CNAME {
            return;
        }
        let Some(f) = &self.opts.forwarder else {
            return;
        };
        if self
            .zone
            .read()
            .expect("zone lock")
            .origin()
            .zone_of(target)
        {
            return;
        }
        bump(&self.stats.forwarded);
        let got = f.lookup(target, qtype).await;
        if got.code == ResponseCode::NXDomain {
            reply.code = ResponseCode::NXDomain;
        }
        reply.answers.extend(got.answers);
    }

    /// Tries the rest of the search path (`names`) for a local pod's miss
    /// on `qname`; the first name that has records (or, for the last one,
    /// exists) is answered as a CNAME from `qname` to it plus its records.
    /// `None`: no name in the path exists, so the miss stands.
    async fn shortcut(&self, qname: &Name, qtype: RecordType, names: &[Name]) -> Option<Reply> {
        let last = names.len().saturating_sub(1);
        for (i, name) in names.iter().enumerate() {
            let (in_zone, ttl) = {
                let z = self.zone.read().expect("zone lock");
                (z.origin().zone_of(&name.to_lowercase()), z.ttl())
            };
            let cname = Record::from_rdata(qname.clone(), ttl, RData::CNAME(CNAME(name.clone())));
            if in_zone {
                let answer = self.zone.read().expect("zone lock").resolve(name, qtype);
                match answer {
                    Answer::Records(rs) => {
                        let mut reply = Reply {
                            code: ResponseCode::NoError,
                            authoritative: false,
                            answers: std::iter::once(cname).chain(rs).collect(),
                            authority: Vec::new(),
                        };
                        // An ExternalName at the end of the path.
                        let mut tail = Reply {
                            answers: reply.answers.split_off(1),
                            ..reply.clone()
                        };
                        self.chase(&mut tail, qtype).await;
                        reply.code = tail.code;
                        reply.answers.extend(tail.answers);
                        return Some(reply);
                    }
                    // Empty non-terminals and other types: a resolver goes
                    // on down its search list, and so do we.
                    Answer::NoData | Answer::NxDomain if i < last => {}
                    Answer::NoData => {
                        let soa = self.zone.read().expect("zone lock").soa();
                        return Some(Reply {
                            code: ResponseCode::NoError,
                            authoritative: false,
                            answers: vec![cname],
                            authority: vec![soa],
                        });
                    }
                    _ => return None,
                }
                continue;
            }
            let f = self.opts.forwarder.as_ref()?;
            bump(&self.stats.forwarded);
            let got = f.lookup(name, qtype).await;
            match got.code {
                ResponseCode::NoError if !got.answers.is_empty() || i == last => {
                    return Some(Reply {
                        code: ResponseCode::NoError,
                        authoritative: false,
                        answers: std::iter::once(cname).chain(got.answers).collect(),
                        authority: got.authority,
                    });
                }
                ResponseCode::NoError | ResponseCode::NXDomain if i < last => {}
                // Nothing found (or the upstream failed): the client's own
                // search goes on as without the shortcut.
                _ => return None,
            }
        }
        None
    }
}

fn negative(code: ResponseCode, soa: Record) -> Reply {
    Reply {
        code,
        authoritative: true,
        answers: Vec::new(),
        authority: vec![soa],
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        bump(&self.stats.queries);
        // EDNS: echo a version 0 OPT with the client's payload size (at
        // least 512), so that UDP answers are truncated to what it takes.
        let resp_edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().max(512));
            r.set_version(0);
            r
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &resp_edns {
            builder.edns(e);
        }
        let meta = &request.metadata;
        // The question is echoed as received; a compression pointer into
        // the header would point at other bytes in the answer, so such a
        // question gets FORMERR without it.
        if points_into_header(request.queries.as_bytes()) {
            let Ok(none) =
                hickory_server::zone_handler::Queries::read(&mut BinDecoder::new(&[]), 0)
            else {
                return failed(request);
            };
            let mut b = MessageResponseBuilder::new(&none, None);
            if let Some(e) = &resp_edns {
                b.edns(e);
            }
            let resp = b.error_msg(meta, ResponseCode::FormErr);
            return match response_handle.send_response(resp).await {
                Ok(i) => i,
                Err(_) => failed(request),
            };
        }
        let unsupported = meta.message_type != MessageType::Query || meta.op_code != OpCode::Query;
        let info = match request.request_info() {
            Ok(i) if !unsupported => i,
            _ => {
                let code = if unsupported {
                    bump(&self.stats.refused);
                    ResponseCode::NotImp
                } else {
                    ResponseCode::FormErr
                };
                let resp = builder.error_msg(meta, code);
                return match response_handle.send_response(resp).await {
                    Ok(i) => i,
                    Err(_) => failed(request),
                };
            }
        };
        // The question as sent (hickory hands it over lowercased): answers
        // carry the name in the client's case, which 0x20 resolvers check.
        let qname: Name =
            hickory_proto::op::Query::read(&mut BinDecoder::new(request.queries.as_bytes()))
                .map(|q| q.name().clone())
                .unwrap_or_else(|_| info.query.name().into());
        let qtype = info.query.query_type();
        let reply = self.answer(request.src().ip(), &qname, qtype).await;
        let mut meta = Metadata::response_from_request(meta);
        meta.recursion_available = self.opts.forwarder.is_some();
        meta.authoritative = reply.authoritative;
        meta.response_code = reply.code;
        let empty: Vec<Record> = Vec::new();
        let resp = builder.build(
            meta,
            reply.answers.iter(),
            empty.iter(),
            reply.authority.iter(),
            empty.iter(),
        );
        response_handle
            .send_response(resp)
            .await
            .unwrap_or_else(|_| failed(request))
    }
}

/// Whether a name in the question section (as sent, starting at offset 12
/// of the message) holds a compression pointer into the 12-byte header.
fn points_into_header(question: &[u8]) -> bool {
    let mut i = 0;
    while i < question.len() {
        // One name: labels up to the root or a pointer.
        loop {
            let Some(&b) = question.get(i) else {
                return false;
            };
            match b & 0xc0 {
                0 if b == 0 => {
                    i += 1;
                    break;
                }
                0 => i += 1 + usize::from(b),
                0xc0 => {
                    let low = question.get(i + 1).copied().unwrap_or(0);
                    if (usize::from(b & 0x3f) << 8 | usize::from(low)) < 12 {
                        return true;
                    }
                    i += 2;
                    break;
                }
                // Reserved label types: the decoder refused them already.
                _ => return false,
            }
        }
        // Type and class.
        i += 4;
    }
    false
}

/// What to report when the answer could not be sent.
fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Serves `handler` on an already bound UDP socket and TCP listener until
/// the task is dropped.
///
/// # Errors
/// When the server stops with an error.
pub async fn serve(
    handler: Handler,
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut server = Server::new(handler);
    server.register_socket(udp);
    // Idle TCP connections are closed after 5 s, as CoreDNS does; several
    // queries may be in flight on one connection.
    server.register_listener(tcp, Duration::from_secs(5), 65_535);
    server.block_until_done().await?;
    Ok(())
}

impl Handler {
    /// Runs the request path on one raw message as the server would
    /// (decoding, answering, encoding, truncating for UDP) and returns the
    /// encoded response; `None` when the message is shorter than a header.
    /// For the fuzz target and tests, which have no socket.
    pub async fn handle_bytes(&self, raw: &[u8], src: SocketAddr, tcp: bool) -> Option<Vec<u8>> {
        let protocol = if tcp {
            hickory_server::net::xfer::Protocol::Tcp
        } else {
            hickory_server::net::xfer::Protocol::Udp
        };
        let request = match Request::from_bytes(raw.to_vec(), src, protocol) {
            Ok(r) => r,
            // As the server does: FORMERR when the header can be read.
            Err(_) => {
                let header = Header::read(&mut BinDecoder::new(raw)).ok()?;
                let mut metadata = Metadata::new(
                    header.metadata.id,
                    MessageType::Response,
                    header.metadata.op_code,
                );
                metadata.response_code = ResponseCode::FormErr;
                let reply = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                let mut out = Vec::new();
                hickory_proto::serialize::binary::BinEncodable::emit(
                    &reply,
                    &mut hickory_proto::serialize::binary::BinEncoder::new(&mut out),
                )
                .ok()?;
                return Some(out);
            }
        };
        let capture = Capture {
            out: Arc::default(),
            tcp,
        };
        self.handle_request::<_, hickory_server::net::runtime::TokioTime>(
            &request,
            capture.clone(),
        )
        .await;
        capture.out.lock().expect("capture lock").take()
    }
}

/// A response handler that keeps the encoded response.
#[derive(Clone)]
struct Capture {
    out: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    tcp: bool,
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: hickory_server::zone_handler::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut bytes = Vec::new();
        let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
        // The server's limits: 512 bytes (or the EDNS size) over UDP.
        let max = if self.tcp {
            u16::MAX
        } else {
            response.edns().map_or(512, Edns::max_payload)
        };
        encoder.set_max_size(max);
        let id = response.metadata().id;
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            // As the server does: what cannot be encoded is a SERVFAIL.
            Err(_) => {
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                let mut encoder = hickory_proto::serialize::binary::BinEncoder::new(&mut bytes);
                hickory_proto::serialize::binary::BinEncodable::emit(&header, &mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        *self.out.lock().expect("capture lock") = Some(bytes);
        Ok(info)
    }
}
