//! Container log files in the CRI format (`<RFC 3339 time> <stream> <P|F>
//! <text>`), written by the shim and read by the agent, with bounds on
//! both sides whatever a container writes:
//!
//! - writing: a record holds at most [`MAX_LINE`] bytes of text (a longer
//!   line is split into partial `P` records, as containerd does), and the
//!   file rotates at a size, keeping a number of files (kubelet's
//!   `--container-log-max-size` and `--container-log-max-files`);
//! - reading: `tailLines` and `sinceSeconds` find where to start by reading
//!   backwards from the end in fixed blocks, and the text is then streamed
//!   in fixed chunks, so memory does not grow with the file.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::SystemTime,
};

/// Most bytes of a container's output in one record.
pub const MAX_LINE: usize = 16 * 1024;
/// Default size at which a container's log rotates (kubelet's: 10 MiB).
pub const DEFAULT_MAX_SIZE: u64 = 10 * 1024 * 1024;
/// Default number of files kept per container run, the current one
/// included (kubelet's: 5).
pub const DEFAULT_MAX_FILES: u32 = 5;
/// Bytes read at a time.
const BLOCK: usize = 64 * 1024;

/// The `k`-th rotated file of a log (`0.log.1` is the newest).
#[must_use]
pub fn rotated(path: &Path, k: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// A log file that rotates once it would pass `max_size`, keeping
/// `max_files` files in all.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens `path` for appending.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path, max_size: u64, max_files: u32) -> io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_size: max_size.max(1),
            max_files: max_files.max(1),
            file,
            size,
        })
    }

    /// Appends one record, rotating first if it would pass the size.
    ///
    /// # Errors
    /// When the write or the rotation fails.
    pub fn write_record(&mut self, record: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + record.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(record)?;
        self.size += record.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.max_files == 1 {
            self.file.set_len(0)?;
        } else {
            // Each rename replaces its target at once: the oldest file is
            // never missing while it is replaced (a reader, or a check that
            // two rotations happened, sees one or the other).
            for k in (1..self.max_files - 1).rev() {
                let _ = fs::rename(rotated(&self.path, k), rotated(&self.path, k + 1));
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

/// The CRI records of one chunk of a container's output: complete lines
/// as `F` records, a line longer than [`MAX_LINE`] as `P` records of
/// [`MAX_LINE`] bytes before its last part. `partial` carries an
/// unfinished line between chunks (never more than [`MAX_LINE`] bytes).
pub fn records(
    stream: &str,
    chunk: &[u8],
    partial: &mut Vec<u8>,
    mut emit: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let ts = || humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
    let mut record = |tag: &str, text: &[u8]| {
        let mut out = format!("{} {stream} {tag} ", ts()).into_bytes();
        out.extend_from_slice(text);
        out.push(b'\n');
        emit(&out)
    };
    let mut rest = chunk;
    while !rest.is_empty() {
        let room = MAX_LINE - partial.len();
        match rest.iter().take(room).position(|b| *b == b'\n') {
            Some(nl) => {
                partial.extend_from_slice(&rest[..nl]);
                record("F", partial)?;
                partial.clear();
                rest = &rest[nl + 1..];
            }
            None => {
                let take = rest.len().min(room);
                partial.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if partial.len() == MAX_LINE {
                    record("P", partial)?;
                    partial.clear();
                }
            }
        }
    }
    Ok(())
}

/// The time of a CRI record, if it has one.
fn record_time(line: &[u8]) -> Option<SystemTime> {
    let sp = line.iter().position(|b| *b == b' ')?;
    humantime::parse_rfc3339(std::str::from_utf8(&line[..sp]).ok()?).ok()
}

/// Where the complete lines of `f` end: just after its last newline
/// (a record being written is not shown yet).
///
/// # Errors
/// On I/O errors.
pub fn complete_end(f: &mut File) -> io::Result<u64> {
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; BLOCK];
    while end > 0 {
        let start = end.saturating_sub(BLOCK as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        if let Some(p) = buf[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + p as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// The starts of the lines before `end` (which ends a line), newest
/// first, found by reading backwards in blocks of [`BLOCK`]; `visit` gets
/// each and says whether to go on.
fn line_starts_back(
    f: &mut File,
    end: u64,
    mut visit: impl FnMut(&mut File, u64) -> io::Result<bool>,
) -> io::Result<()> {
    if end == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; BLOCK];
    // The newline at end - 1 ends the last line; the ones before start lines.
    let mut pos = end - 1;
    while pos > 0 {
        let start = pos.saturating_sub(BLOCK as u64);
        let n = (pos - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' && !visit(f, start + i as u64 + 1)? {
                return Ok(());
            }
        }
        pos = start;
    }
    visit(f, 0)?;
    Ok(())
}

/// Where the last `n` complete lines before `end` start, and how many
/// lines that is (fewer than `n` when the file has fewer).
///
/// # Errors
/// On I/O errors.
pub fn tail_offset(f: &mut File, end: u64, n: u64) -> io::Result<(u64, u64)> {
    let (mut seen, mut at) = (0u64, end);
    if n > 0 {
        line_starts_back(f, end, |_, start| {
            seen += 1;
            at = start;
            Ok(seen < n)
        })?;
    }
    Ok((at, seen))
}

/// One file's part of a read of a log.
#[derive(Debug)]
pub struct Segment {
    /// The file, open (a rotation renames it, the handle stays good).
    pub file: File,
    /// Where to start.
    pub start: u64,
    /// Where its complete lines end.
    pub end: u64,
}

/// What to read of the log `path` and its rotated files for its last
/// `tail` lines written at or after `since` (each optional): segments,
/// oldest first, the last one the current file. Older files are opened
/// only as far back as the lines asked for go; with neither bound, every
/// file kept is read.
///
/// # Errors
/// On I/O errors other than a missing file.
pub fn plan(path: &Path, tail: Option<u64>, since: Option<SystemTime>) -> io::Result<Vec<Segment>> {
    let mut out = Vec::new();
    let mut left = tail;
    let mut missing = 0;
    for k in 0..=64u32 {
        let p = if k == 0 {
            path.to_path_buf()
        } else {
            rotated(path, k)
        };
        let mut file = match File::open(&p) {
            Ok(f) => {
                missing = 0;
                f
            }
            // A rotation renames the files one by one: for a moment the
            // current file, or one in the middle, is not there. Two names
            // missing in a row are the end.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing += 1;
                if missing == 2 {
                    break;
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let end = complete_end(&mut file)?;
        let mut start = 0;
        let mut enough = false;
        if let Some(n) = left {
            let (at, found) = tail_offset(&mut file, end, n)?;
            start = at;
            enough |= found >= n;
            left = Some(n - found.min(n));
        }
        if let Some(t) = since {
            let at = since_offset(&mut file, end, t)?;
            start = start.max(at);
            enough |= at > 0;
        }
        out.push(Segment { file, start, end });
        if enough {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

/// Where the first line written at or after `since` starts (records are
/// appended in time order, each starting with its time).
///
/// # Errors
/// On I/O errors.
pub fn since_offset(f: &mut File, end: u64, since: SystemTime) -> io::Result<u64> {
    let mut first = end;
    let mut head = [0u8; 64];
    line_starts_back(f, end, |f, start| {
        f.seek(SeekFrom::Start(start))?;
        let n = f.read(&mut head)?;
        let newer = record_time(&head[..n]).is_none_or(|t| t >= since);
        if newer {
            first = start;
        }
        Ok(newer)
    })?;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize, t0: SystemTime) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..n {
            let t = t0 + std::time::Duration::from_secs(i as u64);
            out.extend_from_slice(
                format!(
                    "{} stdout F line {i} {}\n",
                    humantime::format_rfc3339_nanos(t),
                    "x".repeat(i % 300)
                )
                .as_bytes(),
            );
        }
        out
    }

    fn read_from(f: &mut File, at: u64, end: u64) -> String {
        let mut s = vec![0u8; (end - at) as usize];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut s).unwrap();
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn tail_and_since_find_their_lines_backwards() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let mut data = lines(5000, t0);
        data.extend_from_slice(b"2026-01-01T00:00:00Z stdout P unfinished");
        fs::write(&p, &data).unwrap();
        let mut f = File::open(&p).unwrap();
        let end = complete_end(&mut f).unwrap();
        assert_eq!(
            end as usize,
            data.len() - "2026-01-01T00:00:00Z stdout P unfinished".len()
        );
        for n in [1u64, 2, 3, 10, 999, 4999, 5000] {
            let (at, found) = tail_offset(&mut f, end, n).unwrap();
            assert_eq!(found, n);
            let text = read_from(&mut f, at, end);
            assert_eq!(text.lines().count() as u64, n, "tail {n}");
            assert!(
                text.lines()
                    .next()
                    .unwrap()
                    .contains(&format!("line {} ", 5000 - n)),
                "tail {n}"
            );
        }
        assert_eq!(tail_offset(&mut f, end, 0).unwrap(), (end, 0));
        assert_eq!(
            tail_offset(&mut f, end, 10_000).unwrap(),
            (0, 5000),
            "more than there are"
        );
        let at = since_offset(&mut f, end, t0 + std::time::Duration::from_secs(4990)).unwrap();
        let text = read_from(&mut f, at, end);
        assert_eq!(text.lines().count(), 10, "{text}");
        assert!(text.starts_with(
            &humantime::format_rfc3339_nanos(t0 + std::time::Duration::from_secs(4990)).to_string()
        ));
        assert_eq!(since_offset(&mut f, end, t0).unwrap(), 0);
        assert_eq!(
            since_offset(&mut f, end, t0 + std::time::Duration::from_secs(9999)).unwrap(),
            end
        );
        // An empty file.
        fs::write(&p, b"").unwrap();
        let mut f = File::open(&p).unwrap();
        assert_eq!(complete_end(&mut f).unwrap(), 0);
        assert_eq!(tail_offset(&mut f, 0, 5).unwrap(), (0, 0));
    }

    #[test]
    fn a_read_reaches_into_rotated_files_as_far_as_it_needs() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        // 300 lines over three files: 0.log.2 (0-99), 0.log.1 (100-199), 0.log (200-299).
        let all = lines(300, t0);
        let text = String::from_utf8(all).unwrap();
        let chunk = |a: usize, b: usize| -> String {
            text.lines()
                .skip(a)
                .take(b - a)
                .map(|l| format!("{l}\n"))
                .collect()
        };
        fs::write(rotated(&p, 2), chunk(0, 100)).unwrap();
        fs::write(rotated(&p, 1), chunk(100, 200)).unwrap();
        fs::write(&p, chunk(200, 300)).unwrap();
        let read = |segs: Vec<Segment>| -> Vec<String> {
            segs.into_iter()
                .flat_map(|mut s| {
                    let t = read_from(&mut s.file, s.start, s.end);
                    t.lines()
                        .map(|l| l.split(' ').nth(4).unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let nums = |a: usize, b: usize| -> Vec<String> { (a..b).map(|i| i.to_string()).collect() };
        assert_eq!(read(plan(&p, Some(10), None).unwrap()), nums(290, 300));
        assert_eq!(
            plan(&p, Some(10), None).unwrap().len(),
            1,
            "only the file it needs"
        );
        assert_eq!(read(plan(&p, Some(150), None).unwrap()), nums(150, 300));
        assert_eq!(read(plan(&p, Some(1000), None).unwrap()), nums(0, 300));
        assert_eq!(read(plan(&p, None, None).unwrap()), nums(0, 300));
        let since = t0 + std::time::Duration::from_secs(120);
        assert_eq!(read(plan(&p, None, Some(since)).unwrap()), nums(120, 300));
        assert_eq!(
            read(plan(&p, Some(5), Some(since)).unwrap()),
            nums(295, 300)
        );
        assert_eq!(
            read(plan(&p, Some(250), Some(since)).unwrap()),
            nums(120, 300)
        );
        // Just rotated: the current file is empty.
        fs::write(&p, "").unwrap();
        assert_eq!(read(plan(&p, Some(3), None).unwrap()), nums(197, 200));
        assert!(
            plan(&d.path().join("none.log"), Some(3), None)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn long_lines_are_split_and_files_rotate() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("0.log");
        let mut log = RotatingLog::open(&p, 100_000, 3).unwrap();
        let mut partial = Vec::new();
        // A 40 000-byte line in odd chunks, then two short ones.
        let mut data = vec![b'a'; 40_000];
        data.extend_from_slice(b"\nshort\nlast");
        for c in data.chunks(7_000) {
            records("stdout", c, &mut partial, |r| log.write_record(r)).unwrap();
        }
        assert_eq!(partial, b"last", "an unfinished line waits");
        let text = fs::read_to_string(&p).unwrap();
        let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
        assert_eq!(tags, ["P", "P", "F", "F"]);
        let sizes: Vec<usize> = text
            .lines()
            .map(|l| l.splitn(4, ' ').nth(3).unwrap().len())
            .collect();
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 40_000 - 2 * MAX_LINE, 5]);
        // Rotation: never more than max_files files, each under max_size.
        for _ in 0..200 {
            records("stdout", &[b'b'; 5000], &mut partial, |r| {
                log.write_record(r)
            })
            .unwrap();
            records("stdout", b"\n", &mut partial, |r| log.write_record(r)).unwrap();
        }
        let mut names: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["0.log", "0.log.1", "0.log.2"]);
        for n in &names {
            assert!(
                fs::metadata(d.path().join(n)).unwrap().len() <= 100_000,
                "{n}"
            );
        }
    }
}
