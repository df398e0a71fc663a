//! `GET /containerLogs/{ns}/{pod}/{container}`: a container's log as
//! kubelet serves it (`follow`, `tailLines`, `sinceSeconds`, `sinceTime`,
//! `limitBytes`, `previous`, `timestamps`), with memory bounded whatever
//! the file's size: where to start is found by reading backwards from the
//! end ([`logfile`]), and the text is streamed in 64 KiB chunks. Following
//! goes on across a rotation (the file renamed and a new one begun) until
//! the container's run ends or the client leaves.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::server::{Shared, authorized, find, status, truthy};
use crate::runtime::logfile;

/// Most bytes of an unfinished line held while streaming (records are at
/// most 16 KiB; a file written by something else may have longer lines).
const MAX_PENDING: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct LogQuery {
    #[serde(default)]
    follow: Option<String>,
    #[serde(default)]
    tail_lines: Option<i64>,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    timestamps: Option<String>,
    #[serde(default)]
    since_seconds: Option<i64>,
    #[serde(default)]
    since_time: Option<String>,
    #[serde(default)]
    limit_bytes: Option<i64>,
}

fn bad(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

pub(super) async fn logs(
    State(s): State<Arc<Shared>>,
    Path((ns, pod, container)): Path<(String, String, String)>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let (rec, id) = match authorized(&s, &headers).and_then(|()| find(&s, &ns, &pod, &container)) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // kube-apiserver's checks of PodLogOptions.
    let since = match (q.since_seconds, q.since_time.as_deref()) {
        (Some(_), Some(_)) => {
            return bad("at most one of sinceTime or sinceSeconds may be specified");
        }
        (Some(n), None) if n < 1 => return bad("sinceSeconds: must be greater than 0"),
        (Some(n), None) => Some(
            std::time::SystemTime::now()
                .checked_sub(Duration::from_secs(n.unsigned_abs()))
                .unwrap_or(std::time::UNIX_EPOCH),
        ),
        (None, Some(t)) => match humantime::parse_rfc3339_weak(t) {
            Ok(t) => Some(t),
            Err(_) => return bad(&format!("sinceTime: {t:?} is not an RFC 3339 time")),
        },
        (None, None) => None,
    };
    if q.tail_lines.is_some_and(|n| n < 0) {
        return bad("tailLines: must be greater than or equal to 0");
    }
    if q.limit_bytes.is_some_and(|n| n < 1) {
        return bad("limitBytes: must be greater than 0");
    }
    let run = rec.restarts.get(&container).copied().unwrap_or(0);
    let (run, previous) = if truthy(q.previous.as_ref()) {
        if run == 0 {
            return bad(&format!(
                "previous terminated container \"{container}\" in pod \"{pod}\" not found"
            ));
        }
        (run - 1, true)
    } else {
        (run, false)
    };
    let path = s.node.sandbox.log_path(&rec.uid, &container, run);
    let tail = q.tail_lines.map(i64::unsigned_abs);
    let p2 = path.clone();
    // Which files, from where to where: read backwards, in blocks.
    let plan = tokio::task::spawn_blocking(move || logfile::plan(&p2, tail, since)).await;
    let mut segments = match plan {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &format!("read the log of {container}: {e}"),
            );
        }
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &e.to_string(),
            );
        }
    };
    // The plan ends with the current file (when there is one).
    let current = segments.pop();
    let follow = truthy(q.follow.as_ref()) && !previous;
    let runtime = s.node.sandbox.runtime().clone();
    let running = move || {
        let rt = runtime.clone();
        let id = id.clone();
        async move {
            tokio::task::spawn_blocking(move || rt.state(&id))
                .await
                .ok()
                .and_then(Result::ok)
                .is_some_and(|st| st.status == crate::runtime::Status::Running)
        }
    };
    let stream = stream_log(
        Reading {
            path,
            older: segments,
            current,
            follow,
            limit: q.limit_bytes.map(i64::unsigned_abs),
            timestamps: truthy(q.timestamps.as_ref()),
        },
        running,
    );
    (
        [(header::CONTENT_TYPE, "text/plain")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The file written after the one of inode `ours`, once the log rotated:
/// the rotated file just newer than ours (`0.log.k-1` when ours is now
/// `0.log.k`), or the log itself.
async fn next_file(path: &std::path::Path, ours: Option<u64>) -> PathBuf {
    for k in 1..=32u32 {
        let p = logfile::rotated(path, k);
        match tokio::fs::metadata(&p).await {
            Ok(m) if Some(m.ino()) == ours => {
                return if k == 1 {
                    path.to_path_buf()
                } else {
                    logfile::rotated(path, k - 1)
                };
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    path.to_path_buf()
}

/// One CRI log line (`<time> <stream> <P|F> <text>`) as users see it.
fn render(line: &[u8], timestamps: bool, out: &mut Vec<u8>) {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let (time, _stream, tag, text) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if timestamps {
        out.extend_from_slice(time);
        out.push(b' ');
    }
    out.extend_from_slice(text);
    // A partial line (P) continues in the next record.
    if tag != b"P" {
        out.push(b'\n');
    }
}

/// What to stream of a log.
struct Reading {
    /// The log (followed through rotations).
    path: PathBuf,
    /// Parts of rotated files to send first, oldest first.
    older: Vec<logfile::Segment>,
    /// The current file, from its `start` (`None`: there is none yet).
    current: Option<logfile::Segment>,
    /// Go on past the current file's `end`, as the container writes.
    follow: bool,
    /// Most bytes to send.
    limit: Option<u64>,
    timestamps: bool,
}

/// Sends what `text` holds of complete lines, rendered, within `limit`;
/// false when the stream is over (the limit reached or the client gone).
async fn send_lines(
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    pending: &mut Vec<u8>,
    timestamps: bool,
    limit: Option<u64>,
    sent: &mut u64,
) -> bool {
    let cut = match pending.iter().rposition(|b| *b == b'\n') {
        Some(p) => p + 1,
        // A line longer than any record: shown as it is so far.
        None if pending.len() > MAX_PENDING => pending.len(),
        None => return true,
    };
    let mut text = Vec::with_capacity(cut);
    for line in pending[..cut]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        render(line, timestamps, &mut text);
    }
    pending.drain(..cut);
    if let Some(limit) = limit {
        let left = limit.saturating_sub(*sent);
        if text.len() as u64 >= left {
            text.truncate(left as usize);
            let _ = tx.send(Ok(text)).await;
            return false;
        }
    }
    *sent += text.len() as u64;
    tx.send(Ok(text)).await.is_ok()
}

fn stream_log<F, Fut>(
    r: Reading,
    running: F,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let (ts, limit) = (r.timestamps, r.limit);
        // The rotated files' parts, whole.
        for seg in r.older {
            let mut f = tokio::fs::File::from_std(seg.file);
            if f.seek(std::io::SeekFrom::Start(seg.start)).await.is_err() {
                return;
            }
            let mut left = seg.end.saturating_sub(seg.start);
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = f.read(&mut buf[..want]).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                left -= n as u64;
                pending.extend_from_slice(&buf[..n]);
                if !send_lines(&tx, &mut pending, ts, limit, &mut sent).await {
                    return;
                }
            }
        }
        // The current file: to its end, or followed.
        let open = |p: PathBuf| async move { tokio::fs::File::open(p).await.ok() };
        let (mut file, mut offset, end) = match r.current {
            Some(seg) => {
                let mut f = tokio::fs::File::from_std(seg.file);
                if f.seek(std::io::SeekFrom::Start(seg.start)).await.is_err() {
                    return;
                }
                (Some(f), seg.start, seg.end)
            }
            None => (None, 0, 0),
        };
        let mut drained = false;
        loop {
            let want = if r.follow {
                buf.len() as u64
            } else {
                end.saturating_sub(offset).min(buf.len() as u64)
            };
            let n = match &mut file {
                Some(f) if want > 0 => f.read(&mut buf[..want as usize]).await.unwrap_or(0),
                _ => 0,
            };
            if n == 0 {
                if !r.follow {
                    return;
                }
                // Rotated: the path names a new file. What was written to
                // ours before the rename is read first (one more pass to
                // its end), then the file that came after it: the newest
                // rotated one that is not ours, or the path itself.
                let ino_now = tokio::fs::metadata(&r.path).await.ok().map(|m| m.ino());
                let ino_ours = match &file {
                    Some(f) => f.metadata().await.ok().map(|m| m.ino()),
                    None => None,
                };
                if ino_now.is_some() && ino_now != ino_ours {
                    if !drained {
                        drained = true;
                        continue;
                    }
                    drained = false;
                    file = open(next_file(&r.path, ino_ours).await).await;
                    offset = 0;
                    continue;
                }
                if !running().await {
                    // One last look for what the container wrote last.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let more = match &file {
                        Some(f) => f.metadata().await.map(|m| m.len()).unwrap_or(0) > offset,
                        None => false,
                    };
                    if !more {
                        return;
                    }
                    continue;
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            offset += n as u64;
            pending.extend_from_slice(&buf[..n]);
            if !send_lines(&tx, &mut pending, ts, limit, &mut sent).await {
                return;
            }
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    async fn collect(r: Reading) -> String {
        let chunks: Vec<_> = stream_log(r, || async { false }).collect().await;
        String::from_utf8(chunks.into_iter().flat_map(Result::unwrap).collect()).unwrap()
    }

    #[tokio::test]
    async fn streams_a_range_with_limits_and_renders_partial_records() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        std::fs::write(
            &p,
            "2026-01-01T00:00:00Z stdout F one\n2026-01-01T00:00:01Z stdout P tw\n2026-01-01T00:00:01Z stdout F o\n2026-01-01T00:00:02Z stderr F three\n",
        )
        .unwrap();
        let len = std::fs::metadata(&p).unwrap().len();
        let r = |start, limit, timestamps| Reading {
            path: p.clone(),
            older: Vec::new(),
            current: Some(logfile::Segment {
                file: std::fs::File::open(&p).unwrap(),
                start,
                end: len,
            }),
            follow: false,
            limit,
            timestamps,
        };
        assert_eq!(collect(r(0, None, false)).await, "one\ntwo\nthree\n");
        assert_eq!(collect(r(0, Some(6), false)).await, "one\ntw");
        assert_eq!(
            collect(r(34, None, true)).await,
            "2026-01-01T00:00:01Z tw2026-01-01T00:00:01Z o\n2026-01-01T00:00:02Z three\n"
        );
    }

    #[tokio::test]
    async fn following_goes_on_across_a_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut log = logfile::RotatingLog::open(&p, 200, 3).unwrap();
        let write = |log: &mut logfile::RotatingLog, text: &str| {
            let mut partial = Vec::new();
            logfile::records("stdout", text.as_bytes(), &mut partial, |rec| {
                log.write_record(rec)
            })
            .unwrap();
        };
        write(&mut log, "first\n");
        let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let r2 = running.clone();
        let mut s = Box::pin(stream_log(
            Reading {
                path: p.clone(),
                older: Vec::new(),
                current: Some(logfile::Segment {
                    file: std::fs::File::open(&p).unwrap(),
                    start: 0,
                    end: 0,
                }),
                follow: true,
                limit: None,
                timestamps: false,
            },
            move || {
                let r = r2.clone();
                async move { r.load(std::sync::atomic::Ordering::Relaxed) }
            },
        ));
        let mut got = String::new();
        let mut next = async |got: &mut String| {
            let chunk = tokio::time::timeout(Duration::from_secs(5), s.next())
                .await
                .expect("a chunk in time")
                .expect("the stream goes on")
                .unwrap();
            got.push_str(&String::from_utf8(chunk).unwrap());
        };
        next(&mut got).await;
        // Enough to rotate twice while the reader follows.
        for i in 0..12 {
            write(&mut log, &format!("line {i} of the run\n"));
            // Now and then quicker than the reader polls (200 ms): two
            // rotations between two of its looks.
            let pause = if i % 4 == 3 { 20 } else { 150 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        assert!(logfile::rotated(&p, 1).exists(), "the log rotated");
        while !got.contains("line 11 ") {
            next(&mut got).await;
        }
        let want: String = std::iter::once("first\n".to_string())
            .chain((0..12).map(|i| format!("line {i} of the run\n")))
            .collect();
        assert_eq!(got, want);
        running.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}
