//! Captured output of one service: a bounded in-memory ring for fast tails,
//! a size-rotated file under the state dir, and a broadcast for followers.
//!
//! Writers never wait on readers: followers that fall behind lose lines (and
//! are told how many) rather than slowing the service down.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

/// Lines kept in memory per service (also the largest `tail` accepted).
pub const RING_LINES: usize = 10_000;
/// A log file is rotated when it grows past this size...
const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// ...keeping this many older files (`NAME.log.1` … `NAME.log.N`).
const ROTATE_KEEP: u32 = 3;
/// Longer lines are cut, so one runaway line cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines the daemon itself writes about the service (spawned, exited, …).
    Nanny,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub ts: jiff::Timestamp,
    pub stream: Stream,
    pub line: String,
}

impl LogLine {
    /// `TS STREAM LINE`, as written to the log file.
    pub fn render(&self) -> String {
        format!("{} {:<6} {}", self.ts, self.stream.as_str(), self.line)
    }

    /// Read back a line written by [`LogLine::render`].
    fn parse(text: &str) -> Option<LogLine> {
        let (ts, rest) = text.split_once(' ')?;
        let (stream, line) = rest.split_at_checked(6)?;
        let stream = match stream.trim_end() {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            "nanny" => Stream::Nanny,
            _ => return None,
        };
        Some(LogLine { ts: ts.parse().ok()?, stream, line: line.strip_prefix(' ').unwrap_or(line).to_string() })
    }
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Nanny => "nanny",
        }
    }
}

struct Inner {
    ring: VecDeque<LogLine>,
    file: Option<BufWriter<File>>,
    file_bytes: u64,
}

pub struct LogStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    live: broadcast::Sender<LogLine>,
}

impl LogStore {
    /// A store writing to `path`, appending to what a previous daemon
    /// wrote; the end of that is read back, so a tail spans the restart.
    pub fn new(path: PathBuf) -> Self {
        let file_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogStore {
            inner: Mutex::new(Inner { ring: read_back(&path), file: None, file_bytes }),
            path,
            live: broadcast::channel(4096).0,
        }
    }

    pub fn push(&self, stream: Stream, text: &str) {
        self.push_many(stream, std::iter::once(text));
    }

    /// Record lines read together; the file is flushed once per batch.
    pub fn push_many<'a>(&self, stream: Stream, lines: impl IntoIterator<Item = &'a str>) {
        let mut inner = self.lock();
        for text in lines {
            let line = LogLine { ts: jiff::Timestamp::now(), stream, line: text.to_string() };
            inner.write_file(&self.path, &line);
            if inner.ring.len() == RING_LINES {
                inner.ring.pop_front();
            }
            let _ = self.live.send(line.clone());
            inner.ring.push_back(line);
        }
        if let Some(file) = inner.file.as_mut() {
            let _ = file.flush();
        }
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        let inner = self.lock();
        inner.ring.iter().skip(inner.ring.len().saturating_sub(n)).cloned().collect()
    }

    /// The last `n` lines and a receiver of every line after them, with no gap.
    pub fn follow(&self, n: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let inner = self.lock();
        let rx = self.live.subscribe();
        let tail = inner.ring.iter().skip(inner.ring.len().saturating_sub(n)).cloned().collect();
        (tail, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn write_file(&mut self, path: &PathBuf, line: &LogLine) {
        if self.file_bytes >= ROTATE_BYTES {
            self.file = None;
            rotate(path);
            self.file_bytes = 0;
        }
        if self.file.is_none() {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => self.file = Some(BufWriter::new(f)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot open log file: {e}");
                    return;
                }
            }
        }
        let rendered = line.render();
        if let Some(f) = self.file.as_mut()
            && writeln!(f, "{rendered}").is_ok()
        {
            self.file_bytes += rendered.len() as u64 + 1;
        }
    }
}

/// The last lines of a log file (at most `READ_BACK_BYTES` of it).
fn read_back(path: &PathBuf) -> VecDeque<LogLine> {
    const READ_BACK_BYTES: u64 = 1024 * 1024;
    let Ok(mut file) = File::open(path) else { return VecDeque::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    use std::io::{Read, Seek, SeekFrom};
    if file.seek(SeekFrom::Start(len.saturating_sub(READ_BACK_BYTES))).is_err() || file.read_to_end(&mut bytes).is_err()
    {
        return VecDeque::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // The first line may be cut by the seek; a line that does not parse is skipped.
    let lines: Vec<LogLine> = text.lines().filter_map(LogLine::parse).collect();
    lines.into_iter().rev().take(RING_LINES).rev().collect()
}

/// `x.log` → `x.log.1` → … → `x.log.KEEP` (the oldest is dropped).
fn rotate(path: &PathBuf) {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..ROTATE_KEEP).rev() {
        let _ = fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = fs::rename(path, numbered(1));
}

/// Split a chunk of output into lines, carrying an unfinished line in
/// `partial` to the next chunk. Over-long lines are cut at `MAX_LINE_BYTES`.
pub fn split_lines(partial: &mut Vec<u8>, chunk: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    for &b in chunk {
        if b == b'\n' {
            lines.push(take_line(partial));
        } else {
            partial.push(b);
            if partial.len() >= MAX_LINE_BYTES {
                lines.push(take_line(partial));
            }
        }
    }
    lines
}

pub fn take_line(partial: &mut Vec<u8>) -> String {
    let line = String::from_utf8_lossy(partial.strip_suffix(b"\r").unwrap_or(partial)).into_owned();
    partial.clear();
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_chunks_and_cuts_long_lines() {
        let mut partial = Vec::new();
        assert_eq!(split_lines(&mut partial, b"a\nb"), vec!["a"]);
        assert_eq!(split_lines(&mut partial, b"c\r\n\n"), vec!["bc", ""]);
        let long = vec![b'x'; MAX_LINE_BYTES + 5];
        let lines = split_lines(&mut partial, &long);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(partial.len(), 5);
    }

    #[test]
    fn ring_keeps_the_newest_and_rotates_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let store = LogStore::new(path.clone());
        let big = "y".repeat(1024);
        for _ in 0..(ROTATE_BYTES / 1024 + 10) {
            store.push(Stream::Stdout, &big);
        }
        store.push(Stream::Stderr, "last");
        let tail = store.tail(2);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].line, "last");
        assert_eq!(store.tail(usize::MAX).len(), RING_LINES);
        assert!(dir.path().join("s.log.1").exists(), "rotated");
        assert!(fs::metadata(&path).unwrap().len() < ROTATE_BYTES);
    }

    #[test]
    fn a_new_store_reads_back_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.log");
        let store = LogStore::new(path.clone());
        store.push(Stream::Stdout, "first  line");
        store.push(Stream::Nanny, "second");
        drop(store);
        let again = LogStore::new(path);
        let tail = again.tail(10);
        assert_eq!(
            tail.iter().map(|l| (l.stream, l.line.as_str())).collect::<Vec<_>>(),
            vec![(Stream::Stdout, "first  line"), (Stream::Nanny, "second")]
        );
    }
}
