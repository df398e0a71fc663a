//! Attaching to a running container's own streams (`kubectl attach`,
//! `kubectl run -it`): its shim serves a Unix socket in the bundle
//! (`attach.sock`, the bundle's and so root's only) over which whoever
//! connects gets what the container writes from then on and may type on
//! its stdin (a container with `stdin: true`) or terminal (`tty: true`)
//! and resize it.
//!
//! Frames both ways are `[channel: u8][length: u32 big-endian][data]`,
//! with Kubernetes' channel numbers: 0 stdin, 1 stdout, 2 stderr, 4 resize
//! (`{"Width": w, "Height": h}`), 255 "stdin closed". The shim closes the
//! connection when the container exits.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The socket's name in the bundle.
pub const SOCKET: &str = "attach.sock";
/// The console socket runc hands a terminal's master over (in the bundle).
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The largest frame read: more than any read of the container's output
/// and than any client writes at once; a larger length ends the connection.
pub const MAX_FRAME: usize = 256 * 1024;
/// Clients attached to one container at once, at most.
pub const MAX_CLIENTS: usize = 16;

/// Channel: what is typed.
pub const STDIN: u8 = 0;
/// Channel: the container's stdout (or terminal).
pub const STDOUT: u8 = 1;
/// Channel: the container's stderr.
pub const STDERR: u8 = 2;
/// Channel: a terminal's new size.
pub const RESIZE: u8 = 4;
/// Channel: the client's stdin ended.
pub const CLOSE_STDIN: u8 = 255;

/// Writes one frame.
///
/// # Errors
/// When the peer is gone or too slow (a write timeout).
pub fn write_frame(w: &mut impl Write, chan: u8, data: &[u8]) -> io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.push(chan);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(data);
    w.write_all(&frame)
}

/// Reads one frame; `None` at the end of the stream.
///
/// # Errors
/// A frame longer than [`MAX_FRAME`], or a read error.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    Ok(Some((head[0], data)))
}

/// A path to `name` in `dir` short enough for a socket address (108
/// bytes), however long `dir`'s is: through an open descriptor of `dir`,
/// which the caller keeps open while it uses the path.
fn short_path(dir: &std::fs::File, name: &str) -> String {
    format!("/proc/self/fd/{}/{name}", dir.as_raw_fd())
}

/// Connects to the attach socket of the container whose bundle is `bundle`.
///
/// # Errors
/// No shim serving it (the container is not running).
pub fn connect(bundle: &Path) -> io::Result<UnixStream> {
    let dir = std::fs::File::open(bundle)?;
    UnixStream::connect(short_path(&dir, SOCKET))
}

/// Binds a socket `name` in `bundle`, replacing a stale one.
///
/// # Errors
/// When it cannot be made.
pub fn bind(bundle: &Path, name: &str) -> io::Result<UnixListener> {
    let dir = std::fs::File::open(bundle)?;
    let _ = std::fs::remove_file(bundle.join(name));
    UnixListener::bind(short_path(&dir, name))
}

/// Receives a terminal's master that runc sends over the console socket.
///
/// # Errors
/// When the connection carries no descriptor.
pub fn receive_fd(stream: &UnixStream) -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd as _;
    let mut buf = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just gave us this descriptor.
            return Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::other("runc sent no terminal"))
}

/// A terminal's size, from a resize message (channel 4:
/// `{"Width": 120, "Height": 40}`).
#[must_use]
pub fn window_size(msg: &[u8]) -> Option<libc::winsize> {
    let v: serde_json::Value = serde_json::from_slice(msg).ok()?;
    let dim = |k: &str| v[k].as_u64().and_then(|n| u16::try_from(n).ok());
    Some(libc::winsize {
        ws_row: dim("Height")?,
        ws_col: dim("Width")?,
        ws_xpixel: 0,
        ws_ypixel: 0,
    })
}

/// Where typed input goes: the container's stdin pipe or its terminal.
pub enum Input {
    /// The writing end of the container's stdin.
    Pipe(std::fs::File),
    /// The terminal's master.
    Terminal(Arc<std::fs::File>),
}

/// The clients attached to one container, and its input.
pub struct Hub {
    clients: Mutex<Vec<(u64, UnixStream)>>,
    input: Mutex<Option<Input>>,
    /// The terminal, for resizing.
    terminal: Option<Arc<std::fs::File>>,
    stdin_once: bool,
    next: std::sync::atomic::AtomicU64,
}

impl Hub {
    /// A hub typing into `input`, resizing `terminal`.
    #[must_use]
    pub fn new(
        input: Option<Input>,
        terminal: Option<Arc<std::fs::File>>,
        stdin_once: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(Vec::new()),
            input: Mutex::new(input),
            terminal,
            stdin_once,
            next: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Sends what the container wrote to every client; one that cannot
    /// take it within a second is dropped, so the container never waits on
    /// a client.
    pub fn broadcast(&self, chan: u8, data: &[u8]) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        clients.retain_mut(|(_, s)| write_frame(s, chan, data).is_ok());
    }

    /// Closes every connection (the container exited).
    pub fn close_all(&self) {
        if let Ok(mut clients) = self.clients.lock() {
            for (_, s) in clients.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    fn close_input(&self) {
        if let Ok(mut input) = self.input.lock() {
            match input.take() {
                // A terminal has no end of its input: an end of file typed.
                Some(Input::Terminal(t)) => {
                    let _ = (&*t).write_all(&[4]);
                }
                Some(Input::Pipe(_)) | None => {}
            }
        }
    }

    fn type_in(&self, data: &[u8]) {
        let Ok(mut input) = self.input.lock() else {
            return;
        };
        let ok = match input.as_mut() {
            Some(Input::Pipe(p)) => p.write_all(data).is_ok(),
            Some(Input::Terminal(t)) => (&**t).write_all(data).is_ok(),
            None => true,
        };
        if !ok {
            *input = None;
        }
    }

    fn resize(&self, msg: &[u8]) {
        let Some(t) = &self.terminal else {
            return;
        };
        if let Some(ws) = window_size(msg) {
            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
            unsafe {
                libc::ioctl(t.as_raw_fd(), libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Serves `listener` until the process ends: each client gets the
    /// output from now on, and what it sends is typed in.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) {
        let hub = self.clone();
        let _ = std::thread::Builder::new()
            .name("attach".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let Ok(writer) = stream.try_clone() else {
                        continue;
                    };
                    let id = hub.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    {
                        let Ok(mut clients) = hub.clients.lock() else {
                            continue;
                        };
                        if clients.len() >= MAX_CLIENTS {
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                            continue;
                        }
                        clients.push((id, writer));
                    }
                    let hub = hub.clone();
                    let _ = std::thread::Builder::new()
                        .name("attach-in".into())
                        .spawn(move || hub.read_client(id, stream));
                }
            });
    }

    fn read_client(&self, id: u64, mut stream: UnixStream) {
        while let Ok(Some((chan, data))) = read_frame(&mut stream) {
            match chan {
                STDIN => self.type_in(&data),
                RESIZE => self.resize(&data),
                CLOSE_STDIN => self.close_input(),
                _ => {}
            }
        }
        if let Ok(mut clients) = self.clients.lock() {
            clients.retain(|(c, _)| *c != id);
        }
        // stdinOnce: the container's stdin closes when its first client
        // leaves, as kubelet's runtimes do.
        if self.stdin_once {
            self.close_input();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, STDOUT, b"hello").unwrap();
        write_frame(&mut buf, RESIZE, b"{}").unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some((STDOUT, b"hello".to_vec()))
        );
        assert_eq!(read_frame(&mut r).unwrap(), Some((RESIZE, b"{}".to_vec())));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut huge = vec![STDIN];
        huge.extend_from_slice(&(u32::MAX).to_be_bytes());
        assert!(read_frame(&mut &huge[..]).is_err());
    }

    #[test]
    fn a_long_bundle_path_still_binds_and_connects() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x".repeat(100)).join("y".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let listener = bind(&deep, SOCKET).unwrap();
        let mut c = connect(&deep).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        write_frame(&mut c, STDIN, b"x").unwrap();
        assert_eq!(read_frame(&mut s).unwrap(), Some((STDIN, b"x".to_vec())));
    }
}
