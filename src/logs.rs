//! Captured output of one service: a bounded in-memory ring for fast tails
//! and followers, and a size-rotated file under the state dir.
//!
//! An idle service costs almost nothing: the ring grows only with what the
//! service writes, and is bounded both in lines and in bytes. Followers read
//! the ring from their own position; writers never wait on them, and one
//! that falls behind the ring loses lines (and is told how many).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;
use tokio::sync::watch;

/// Lines kept in memory per service (also the largest `tail` accepted).
pub const RING_LINES: usize = 10_000;
/// Bytes of line text kept in memory per service.
pub const RING_BYTES: usize = 4 * 1024 * 1024;
/// A log file is rotated when it grows past this size...
const ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// ...keeping this many older files (`NAME.log.1` … `NAME.log.N`).
const ROTATE_KEEP: u32 = 3;
/// Longer lines are cut, so one runaway line cannot exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// The most lines a follower takes from the ring at a time.
const FOLLOW_BATCH: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines the daemon itself writes about the service (spawned, exited, …).
    Nanny,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogLine {
    #[schema(value_type = String, format = DateTime)]
    pub ts: jiff::Timestamp,
    pub stream: Stream,
    pub line: String,
}

impl LogLine {
    /// `TS STREAM LINE`, as written to the log file.
    pub fn render(&self) -> String {
        self.to_string()
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

impl std::fmt::Display for LogLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:<6} {}", self.ts, self.stream.as_str(), self.line)
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
    /// Bytes of line text in `ring`.
    ring_bytes: usize,
    /// The number of lines written before `ring[0]`: its position in the
    /// service's output, which followers count in.
    dropped: u64,
    /// Written once per batch of lines (no buffer kept per service).
    file: Option<File>,
    file_bytes: u64,
}

pub struct LogStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// How many lines were ever written; followers wait on its changes.
    written: watch::Sender<u64>,
}

/// What a follower reads next.
#[derive(Debug)]
pub enum Followed {
    /// The next lines, in order (at most `FOLLOW_BATCH`).
    Lines(Vec<LogLine>),
    /// This many lines left the ring before the follower read them.
    Lost(u64),
}

/// A reader of every line written after it started, at its own pace.
pub struct Follower {
    store: Weak<LogStore>,
    written: watch::Receiver<u64>,
    /// The position of the next line to read.
    next: u64,
}

impl Follower {
    /// Waits for lines after those already read; `None` once the service's
    /// log store is gone (the service was removed).
    pub async fn next(&mut self) -> Option<Followed> {
        loop {
            if *self.written.borrow_and_update() > self.next {
                return Some(self.store.upgrade()?.read_from(&mut self.next));
            }
            self.written.changed().await.ok()?;
        }
    }
}

impl LogStore {
    /// A store writing to `path`, appending to what a previous daemon
    /// wrote; the end of that is read back, so a tail spans the restart.
    pub fn new(path: PathBuf) -> Self {
        let file_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let mut inner = Inner { ring: VecDeque::new(), ring_bytes: 0, dropped: 0, file: None, file_bytes };
        for line in read_back(&path) {
            inner.keep(line);
        }
        let written = watch::Sender::new(inner.end());
        LogStore { inner: Mutex::new(inner), path, written }
    }

    pub fn push(&self, stream: Stream, text: &str) {
        self.push_many(stream, std::iter::once(text.to_string()));
    }

    /// Record lines read together; the file is flushed once per batch.
    pub fn push_many(&self, stream: Stream, lines: impl IntoIterator<Item = String>) {
        let mut inner = self.lock();
        let mut out = Vec::new();
        // Lines read together were written together: one time stamp, formatted once.
        let ts = jiff::Timestamp::now();
        let prefix = format!("{ts} {:<6} ", stream.as_str());
        for text in lines {
            inner.write_file(&self.path, &prefix, &text, &mut out);
            inner.keep(LogLine { ts, stream, line: text });
        }
        inner.flush_file(&mut out);
        // Under the lock, so the count never goes back.
        self.written.send_replace(inner.end());
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> Vec<LogLine> {
        self.lock().tail(n)
    }

    /// The last `n` lines and a follower of every line after them, with no gap.
    pub fn follow(self: &Arc<Self>, n: usize) -> (Vec<LogLine>, Follower) {
        let inner = self.lock();
        let follower = Follower { store: Arc::downgrade(self), written: self.written.subscribe(), next: inner.end() };
        (inner.tail(n), follower)
    }

    /// The lines from position `next` on (advancing it), or how many of
    /// them are no longer in the ring.
    fn read_from(&self, next: &mut u64) -> Followed {
        let inner = self.lock();
        if *next < inner.dropped {
            let lost = inner.dropped - *next;
            *next = inner.dropped;
            return Followed::Lost(lost);
        }
        let skip = usize::try_from(*next - inner.dropped).unwrap_or(usize::MAX);
        let lines: Vec<LogLine> = inner.ring.iter().skip(skip).take(FOLLOW_BATCH).cloned().collect();
        *next += lines.len() as u64;
        Followed::Lines(lines)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Add a line to the ring, dropping the oldest beyond its bounds.
    fn keep(&mut self, line: LogLine) {
        self.ring_bytes += line.line.len();
        self.ring.push_back(line);
        while self.ring.len() > RING_LINES || self.ring_bytes > RING_BYTES {
            let Some(old) = self.ring.pop_front() else { break };
            self.ring_bytes -= old.line.len();
            self.dropped += 1;
        }
    }

    /// The position after the newest line.
    fn end(&self) -> u64 {
        self.dropped + self.ring.len() as u64
    }

    fn tail(&self, n: usize) -> Vec<LogLine> {
        self.ring.iter().skip(self.ring.len().saturating_sub(n)).cloned().collect()
    }

    /// Add a line (`prefix`: its rendered time stamp and stream, as
    /// [`LogLine`]'s `Display` writes them) to `out`, the batch for the file,
    /// rotating first if the file is full.
    fn write_file(&mut self, path: &PathBuf, prefix: &str, text: &str, out: &mut Vec<u8>) {
        if self.file_bytes >= ROTATE_BYTES {
            self.flush_file(out);
            self.file = None;
            rotate(path);
            self.file_bytes = 0;
        }
        if self.file.is_none() {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => self.file = Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot open log file: {e}");
                    return;
                }
            }
        }
        if self.file.is_some() {
            let before = out.len();
            out.extend_from_slice(prefix.as_bytes());
            out.extend_from_slice(text.as_bytes());
            out.push(b'\n');
            self.file_bytes += (out.len() - before) as u64;
        }
    }

    /// Write the batch to the file in one call.
    fn flush_file(&mut self, out: &mut Vec<u8>) {
        if let Some(f) = self.file.as_mut()
            && !out.is_empty()
        {
            let _ = f.write_all(out);
        }
        out.clear();
    }
}

/// The last lines of a log file (at most `READ_BACK_BYTES` of it).
fn read_back(path: &PathBuf) -> Vec<LogLine> {
    const READ_BACK_BYTES: u64 = 1024 * 1024;
    let Ok(mut file) = File::open(path) else { return Vec::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut bytes = Vec::new();
    use std::io::{Read, Seek, SeekFrom};
    if file.seek(SeekFrom::Start(len.saturating_sub(READ_BACK_BYTES))).is_err() || file.read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    // The first line may be cut by the seek; a line that does not parse is skipped.
    String::from_utf8_lossy(&bytes).lines().filter_map(LogLine::parse).collect()
}

/// `x.log` → `x.log.1` → … → `x.log.KEEP` (the oldest is dropped).
fn rotate(path: &PathBuf) {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..ROTATE_KEEP).rev() {
        let _ = fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = fs::rename(path, numbered(1));
}

/// Splits a byte stream into lines, carrying an unfinished line to the next
/// chunk. A line longer than its bound is cut there, with a visible marker,
/// and the rest of it, up to the next newline, is dropped.
pub struct LineSplitter {
    partial: Vec<u8>,
    max: usize,
    /// Dropping the rest of a line that was cut.
    cutting: bool,
}

impl Default for LineSplitter {
    /// For a service's output: lines cut at `MAX_LINE_BYTES`.
    fn default() -> Self {
        LineSplitter { partial: Vec::new(), max: MAX_LINE_BYTES, cutting: false }
    }
}

impl LineSplitter {
    /// For framing the daemon's own answers (NDJSON, SSE), which are never cut.
    pub fn unbounded() -> Self {
        LineSplitter { max: usize::MAX, ..LineSplitter::default() }
    }

    /// The lines `chunk` completes.
    pub fn split(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        // Every piece but the last ended with a newline.
        let ends = memchr::memchr_iter(b'\n', chunk).map(|at| (at, true)).chain(std::iter::once((chunk.len(), false)));
        let mut start = 0;
        for (end, newline) in ends {
            let piece = &chunk[start..end];
            start = end + 1;
            if !self.cutting {
                let room = self.max - self.partial.len();
                if piece.len() > room {
                    self.partial.extend_from_slice(&piece[..room]);
                    lines.push(self.cut());
                    self.cutting = true;
                } else {
                    self.partial.extend_from_slice(piece);
                }
            }
            if newline && !std::mem::take(&mut self.cutting) {
                lines.push(self.take(true));
            }
        }
        lines
    }

    /// The unfinished last line, once the stream has ended.
    pub fn finish(&mut self) -> Option<String> {
        let cut = std::mem::take(&mut self.cutting);
        (!cut && !self.partial.is_empty()).then(|| self.take(true))
    }

    /// The line so far, without a trailing `\r` if `whole`.
    fn take(&mut self, whole: bool) -> String {
        let bytes = if whole { self.partial.strip_suffix(b"\r").unwrap_or(&self.partial) } else { &self.partial };
        // Checking the whole line first is much faster than the lossy path, which is only
        // for the rare line that is not UTF-8.
        let line = match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(bytes).into_owned(),
        };
        self.partial.clear();
        line
    }

    /// The first `max` bytes of an over-long line (less a character cut in
    /// two), and the marker.
    fn cut(&mut self) -> String {
        if let Err(e) = std::str::from_utf8(&self.partial)
            && e.error_len().is_none()
        {
            self.partial.truncate(e.valid_up_to());
        }
        format!("{}… [line cut at {} bytes]", self.take(false), self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_bytes_that_are_not_utf8_replaced() {
        let mut lines = LineSplitter::default();
        assert_eq!(lines.split(b"ok\r\n\xff bad\npart"), vec!["ok", "\u{FFFD} bad"]);
        assert_eq!(lines.split(b"ial\n\n"), vec!["partial", ""]);
        assert_eq!(lines.split(b"tail"), Vec::<String>::new());
        assert_eq!(lines.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn splits_across_chunks_and_cuts_long_lines() {
        let mut lines = LineSplitter::default();
        assert_eq!(lines.split(b"a\nb"), vec!["a"]);
        assert_eq!(lines.split(b"c\r\n\n"), vec!["bc", ""]);
        let marker = format!("… [line cut at {MAX_LINE_BYTES} bytes]");
        // Cut once, in the chunk that overflows; the rest of the line, over
        // several chunks, is dropped up to its newline.
        assert!(lines.split(&vec![b'x'; MAX_LINE_BYTES]).is_empty());
        let cut = lines.split(b"yy");
        assert_eq!(cut, vec![format!("{}{marker}", "x".repeat(MAX_LINE_BYTES))]);
        assert!(lines.split(&vec![b'z'; 3 * MAX_LINE_BYTES]).is_empty());
        assert_eq!(lines.split(b"zz\nnext\nlast"), vec!["next"]);
        assert_eq!(lines.finish().as_deref(), Some("last"));
        assert_eq!(lines.finish(), None);
        // A line of exactly the bound is whole.
        let exact = vec![b'e'; MAX_LINE_BYTES];
        assert_eq!(lines.split(&[&exact[..], b"\n"].concat()), vec!["e".repeat(MAX_LINE_BYTES)]);
        // A character is never cut in two; a cut line that never ends yields nothing more.
        let mut wide = vec![b'a'; MAX_LINE_BYTES - 1];
        wide.extend("é and more".as_bytes());
        assert_eq!(lines.split(&wide), vec![format!("{}{marker}", "a".repeat(MAX_LINE_BYTES - 1))]);
        assert_eq!(lines.finish(), None);
        // The daemon's own frames are never cut.
        let mut frames = LineSplitter::unbounded();
        assert_eq!(frames.split(&[&vec![b'f'; 3 * MAX_LINE_BYTES][..], b"\n"].concat())[0].len(), 3 * MAX_LINE_BYTES);
    }

    #[test]
    fn the_ring_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path().join("s.log"));
        let mut lines = LineSplitter::default();
        let flood = [&vec![b'x'; 2 * MAX_LINE_BYTES][..], b"\n"].concat().repeat(300);
        store.push_many(Stream::Stdout, lines.split(&flood));
        let kept = store.tail(RING_LINES);
        let bytes: usize = kept.iter().map(|l| l.line.len()).sum();
        assert!(bytes <= RING_BYTES, "{bytes} bytes kept");
        assert!(bytes > RING_BYTES - 2 * MAX_LINE_BYTES, "the ring is filled up to its bound: {bytes}");
        assert!(kept.iter().all(|l| l.line.len() <= MAX_LINE_BYTES + 40 && l.line.ends_with("bytes]")));
        assert_eq!(store.lock().ring_bytes, bytes);
        // Short lines push the long ones out, down to the line bound.
        for _ in 0..RING_LINES {
            store.push(Stream::Stdout, "short");
        }
        assert_eq!(store.lock().ring_bytes, 5 * RING_LINES);
    }

    #[tokio::test]
    async fn followers_get_every_line_after_their_tail() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::new(dir.path().join("s.log")));
        store.push(Stream::Stdout, "before");
        let (tail, mut follower) = store.follow(5);
        assert_eq!(tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["before"]);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..1000 {
                    store.push(Stream::Stdout, &n.to_string());
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < 1000 {
            match follower.next().await {
                Some(Followed::Lines(lines)) => got.extend(lines.into_iter().map(|l| l.line)),
                other => panic!("{other:?} after {} lines", got.len()),
            }
        }
        writer.await.unwrap();
        assert_eq!(got, (0..1000).map(|n| n.to_string()).collect::<Vec<_>>(), "no gap, no repeat");
        drop(store);
        assert!(follower.next().await.is_none(), "the follow ends with the store");
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_the_ring_is_told_how_many_lines_it_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::new(dir.path().join("s.log")));
        let (_, mut follower) = store.follow(0);
        for n in 0..RING_LINES + 50 {
            store.push(Stream::Stdout, &n.to_string());
        }
        assert!(matches!(follower.next().await, Some(Followed::Lost(50))));
        let Some(Followed::Lines(lines)) = follower.next().await else { panic!("lines after the loss") };
        assert_eq!(lines.len(), FOLLOW_BATCH);
        assert_eq!(lines[0].line, "50", "it resumes at the oldest line kept");
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
        assert_eq!(store.tail(usize::MAX).len(), RING_BYTES / big.len(), "bounded in bytes");
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
