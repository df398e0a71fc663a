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
    rr::{DNSClass, Name, RData, Record, RecordType, rdata::CNAME},
    serialize::binary::{BinDecodable as _, BinDecoder},
};
use hickory_server::{
    Server,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::{MessageResponseBuilder, Queries},
};

use crate::{
    forward::{Forwarded, Forwarder},
    records::{Answer, Zone},
};

/// Counters of what the server did, for `/dns/stats` and tests.
#[derive(Debug, Default, serde::Serialize)]
pub struct Stats {
    /// The server has its sockets.
    pub serving: std::sync::atomic::AtomicBool,
    /// What is wrong, if anything (no sockets, no upstream).
    pub problem: std::sync::Mutex<String>,
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
    /// Refused (outside the zone with no upstream, another class, a zone
    /// transfer).
    pub refused: AtomicU64,
    /// Not implemented (not a standard query, a meta type).
    pub notimp: AtomicU64,
    /// Malformed (FORMERR) or of an EDNS version above 0 (BADVERS).
    pub formerr: AtomicU64,
    /// Forwarded lookups turned away because too many were in flight.
    pub overload: AtomicU64,
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
                    let got = self.forward(f, qname, qtype).await;
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

    /// Asks the upstream through `f`; SERVFAIL when too many lookups are
    /// in flight.
    async fn forward(&self, f: &Forwarder, name: &Name, qtype: RecordType) -> Forwarded {
        bump(&self.stats.forwarded);
        f.lookup(name, qtype).await.unwrap_or_else(|| {
            bump(&self.stats.overload);
            Forwarded {
                code: ResponseCode::ServFail,
                answers: Vec::new(),
                authority: Vec::new(),
            }
        })
    }

    /// An ExternalName's CNAME: add what the target resolves to (from the
    /// zone or upstream), as CoreDNS does, so clients need no second trip.
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
        // A target inside the zone is answered from it (one step: a CNAME
        // there is not followed again).
        let inside = {
            let z = self.zone.read().expect("zone lock");
            z.origin()
                .zone_of(&target.to_lowercase())
                .then(|| z.resolve(target, qtype))
        };
        if let Some(answer) = inside {
            match answer {
                Answer::Records(rs) => reply.answers.extend(rs),
                Answer::NxDomain => reply.code = ResponseCode::NXDomain,
                _ => {}
            }
            return;
        }
        let Some(f) = &self.opts.forwarder else {
            return;
        };
        let got = self.forward(f, target, qtype).await;
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
                    // The name does not exist: on down the search list.
                    Answer::NxDomain if i < last => {}
                    // It exists without this type: that is the answer, as
                    // it is for autopath (the first reply not NXDOMAIN).
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
            let got = self.forward(f, name, qtype).await;
            match got.code {
                ResponseCode::NoError => {
                    return Some(Reply {
                        code: ResponseCode::NoError,
                        authoritative: false,
                        answers: std::iter::once(cname).chain(got.answers).collect(),
                        authority: got.authority,
                    });
                }
                ResponseCode::NXDomain if i < last => {}
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
        // EDNS: a version 0 OPT with the client's payload size (512 to
        // 4096), so that UDP answers are truncated to what it takes.
        let resp_edns = request.edns.as_ref().map(|e| {
            let mut r = Edns::new();
            r.set_max_payload(e.max_payload().clamp(512, 4096));
            r.set_version(0);
            r
        });
        let meta = &request.metadata;
        let no_question = || Queries::read(&mut BinDecoder::new(&[]), 0);
        let code = if points_into_header(request.queries.as_bytes()) {
            // The question is echoed as received; a compression pointer
            // into the header would point at other bytes in the answer, so
            // such a question gets FORMERR without it.
            Some((ResponseCode::FormErr, false))
        } else if meta.message_type != MessageType::Query || meta.op_code != OpCode::Query {
            Some((ResponseCode::NotImp, true))
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some((ResponseCode::BADVERS, true))
        } else {
            match request.request_info() {
                Err(_) => Some((ResponseCode::FormErr, true)),
                Ok(info) => match (info.query.query_class(), info.query.query_type()) {
                    (c, _) if c != DNSClass::IN => Some((ResponseCode::Refused, true)),
                    // No zone transfers; meta types are not questions.
                    (_, RecordType::AXFR | RecordType::IXFR) => Some((ResponseCode::Refused, true)),
                    (
                        _,
                        RecordType::OPT
                        | RecordType::TSIG
                        | RecordType::SIG
                        | RecordType::Unknown(249 | 253 | 254),
                    ) => Some((ResponseCode::NotImp, true)),
                    _ => None,
                },
            }
        };
        if let Some((code, echo)) = code {
            match code {
                ResponseCode::Refused => bump(&self.stats.refused),
                ResponseCode::NotImp => bump(&self.stats.notimp),
                ResponseCode::FormErr | ResponseCode::BADVERS => bump(&self.stats.formerr),
                _ => {}
            }
            let none = no_question();
            let queries = if echo {
                Ok(&request.queries)
            } else {
                none.as_ref()
            };
            let Ok(queries) = queries else {
                return failed(request);
            };
            let mut b = MessageResponseBuilder::new(queries, None);
            if let Some(e) = &resp_edns {
                b.edns(e);
            }
            return match response_handle.send_response(b.error_msg(meta, code)).await {
                Ok(i) => i,
                Err(_) => failed(request),
            };
        }
        // The question as sent (hickory hands it over lowercased): answers
        // carry the name in the client's case, which 0x20 resolvers check.
        let Ok(query) =
            hickory_proto::op::Query::read(&mut BinDecoder::new(request.queries.as_bytes()))
        else {
            return failed(request);
        };
        let src = request.src().ip();
        let meta = *meta;
        // hickory-server answers one TCP connection's queries one after the
        // other; a query that may wait on the upstream is answered from a
        // task of its own, so that it does not hold up the ones behind it.
        if request.protocol() != hickory_server::net::xfer::Protocol::Udp
            && self.opts.forwarder.is_some()
        {
            let raw = request.queries.as_bytes().to_vec();
            let count = request.queries.len();
            let me = self.clone();
            tokio::spawn(async move {
                let reply = me.answer(src, query.name(), query.query_type()).await;
                let Ok(queries) = Queries::read(&mut BinDecoder::new(&raw), count) else {
                    return;
                };
                let _ = me
                    .respond(meta, &queries, resp_edns.as_ref(), reply, response_handle)
                    .await;
            });
            let mut m = Metadata::response_from_request(&meta);
            m.response_code = ResponseCode::NoError;
            return ResponseInfo::from(Header {
                metadata: m,
                counts: HeaderCounts::default(),
            });
        }
        let reply = self.answer(src, query.name(), query.query_type()).await;
        self.respond(
            meta,
            &request.queries,
            resp_edns.as_ref(),
            reply,
            response_handle,
        )
        .await
        .unwrap_or_else(|_| failed(request))
    }
}

impl Handler {
    /// Sends `reply` to the query `meta`/`queries`.
    async fn respond<R: ResponseHandler>(
        &self,
        meta: Metadata,
        queries: &Queries,
        edns: Option<&Edns>,
        reply: Reply,
        mut handle: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(e) = edns {
            builder.edns(e);
        }
        let mut m = Metadata::response_from_request(&meta);
        m.recursion_available = self.opts.forwarder.is_some();
        m.authoritative = reply.authoritative;
        m.response_code = reply.code;
        let empty: Vec<Record> = Vec::new();
        let resp = builder.build(
            m,
            reply.answers.iter(),
            empty.iter(),
            reply.authority.iter(),
            empty.iter(),
        );
        handle.send_response(resp).await
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

/// Serves `handler` on already bound UDP sockets (several sharing a port
/// with SO_REUSEPORT, each read by its own task) and a TCP listener until
/// the task is dropped.
///
/// # Errors
/// When the server stops with an error.
pub async fn serve(
    handler: Handler,
    udp: Vec<tokio::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    let mut server = Server::new(handler);
    for s in udp {
        server.register_socket(s);
    }
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
