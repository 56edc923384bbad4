//! Captured output of one service: a bounded in-memory ring for fast tails
//! and followers, and a size-rotated file under the state dir.
//!
//! An idle service costs almost nothing: the ring grows only with what the
//! service writes, and is bounded both in lines and in bytes. Followers read
//! the ring from their own position; writers never wait on them, and one
//! that falls behind the ring loses lines (and is told how many).

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde::Serialize;
use tokio::sync::{Notify, watch};

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

/// Lines read together, in the form the log file takes (`TS STREAM LINE\n` each, one time
/// stamp for all): written to the file in one call, then kept in the ring as they are, the
/// lines found by their offsets. One allocation a read, not one a line.
pub struct Batch {
    ts: jiff::Timestamp,
    stream: Stream,
    /// The length of `TS STREAM ` before every line.
    prefix_len: usize,
    bytes: Vec<u8>,
    /// Where each line's prefix starts in `bytes`.
    starts: Vec<u32>,
    /// Bytes of line text (less prefixes and newlines).
    text_bytes: usize,
}

impl Batch {
    /// An empty batch stamped now, with room for about `capacity` bytes of lines.
    pub fn new(stream: Stream, capacity: usize) -> Batch {
        Batch::stamped(jiff::Timestamp::now(), stream, capacity)
    }

    /// The prefix is formatted once, here: it is the first line's, and copied for the others.
    fn stamped(ts: jiff::Timestamp, stream: Stream, capacity: usize) -> Batch {
        let mut bytes = Vec::with_capacity(capacity + 64);
        let _ = write!(bytes, "{ts} {:<6} ", stream.as_str());
        let prefix_len = bytes.len();
        Batch { ts, stream, prefix_len, bytes, starts: Vec::new(), text_bytes: 0 }
    }

    /// Add a line; bytes that are not UTF-8 are replaced.
    pub fn line(&mut self, raw: &[u8]) {
        match std::str::from_utf8(raw) {
            Ok(text) => self.text(text),
            Err(_) => self.text(&String::from_utf8_lossy(raw)),
        }
    }

    /// Add the lines `chunk` completes (see [`LineSplitter::split_with`]). The chunk's UTF-8
    /// is checked once, not line by line: a line inside its valid part is taken as it is.
    pub fn lines_of(&mut self, chunk: &[u8], splitter: &mut LineSplitter) {
        let valid = match simdutf8::compat::from_utf8(chunk) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(&chunk[..e.valid_up_to()]).unwrap_or_default(),
        };
        // Room for every line the chunk completes, prefixed, so the batch grows once.
        let lines = memchr::memchr_iter(b'\n', chunk).count();
        self.starts.reserve(lines);
        self.bytes.reserve(chunk.len() + lines * (self.prefix_len + 1));
        let within = chunk.as_ptr_range();
        splitter.split_with(chunk, |line| {
            // A line that is a slice of the chunk (not one carried over from the chunk before,
            // nor a cut one) starts and ends at a newline or `\r`: a character boundary, so
            // inside the valid part it slices `valid` as it is.
            let at = within.contains(&line.as_ptr()).then(|| line.as_ptr() as usize - within.start as usize);
            match at.and_then(|at| valid.get(at..at + line.len())) {
                Some(text) => self.text(text),
                None => self.line(line),
            }
        });
    }

    pub fn text(&mut self, text: &str) {
        // The first line's prefix is already there; the others copy it.
        let start = if self.starts.is_empty() { 0 } else { self.bytes.len() };
        self.starts.push(u32::try_from(start).unwrap_or(u32::MAX));
        if start > 0 {
            self.bytes.extend_from_within(..self.prefix_len);
        }
        self.bytes.extend_from_slice(text.as_bytes());
        self.bytes.push(b'\n');
        self.text_bytes += text.len();
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    fn len(&self) -> usize {
        self.starts.len()
    }

    /// Where line `i` (its prefix) starts in `bytes`; the end, for `i == len`.
    fn offset(&self, i: usize) -> usize {
        self.starts.get(i).map_or(self.bytes.len(), |&at| at as usize)
    }

    /// Bytes of text in the `n` lines from line `from`.
    fn text_len(&self, from: usize, n: usize) -> usize {
        self.offset(from + n) - self.offset(from) - n * (self.prefix_len + 1)
    }

    /// The fewest lines from line `from` that hold at least `bytes` of text (all the rest, if
    /// they hold less).
    fn lines_holding(&self, from: usize, bytes: usize) -> usize {
        let (mut lo, mut hi) = (0, self.len() - from);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.text_len(from, mid) >= bytes { hi = mid } else { lo = mid + 1 }
        }
        lo
    }

    /// Line `i`'s text.
    fn get(&self, i: usize) -> &str {
        let (start, end) = (self.offset(i) + self.prefix_len, self.offset(i + 1) - 1);
        // Only whole `&str`s were ever appended, so every line is UTF-8.
        std::str::from_utf8(&self.bytes[start..end]).unwrap_or_default()
    }

    fn log_line(&self, i: usize) -> LogLine {
        LogLine { ts: self.ts, stream: self.stream, line: self.get(i).to_string() }
    }
}

struct Inner {
    /// The newest batches; the first `skip` lines of the first have left the ring.
    ring: VecDeque<Arc<Batch>>,
    skip: usize,
    /// Lines in the ring (less `skip`), and their bytes of text.
    ring_lines: usize,
    ring_bytes: usize,
    /// The number of lines written before the oldest in the ring: its position in the
    /// service's output, which followers count in.
    dropped: u64,
}

/// A service's log file, written by the writer thread only.
struct Sink {
    path: PathBuf,
    /// Open while written to; a batch is one write.
    file: Option<File>,
    bytes: u64,
    /// Whether the file was ever there: until then, only the daemon's own lines about a
    /// service that has written nothing yet wait in `waiting` (shared with the ring), so that
    /// starting a thousand quiet services creates no files. The file is created once the
    /// service writes, once they outgrow `WAITING_BYTES`, or at a [`flush`].
    created: bool,
    waiting: Vec<Arc<Batch>>,
}

/// The most bytes of the daemon's lines that wait for a service's first output.
const WAITING_BYTES: usize = 64 * 1024;

pub struct LogStore {
    sink: Arc<Mutex<Sink>>,
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
        // What an earlier store of this file still has on its way is read back too.
        if WRITER.get().is_some_and(|w| w.shared.backlog.load(Ordering::Acquire) > 0) {
            flush();
        }
        let file_bytes = fs::metadata(&path).map(|m| m.len()).ok();
        let mut inner = Inner { ring: VecDeque::new(), skip: 0, ring_lines: 0, ring_bytes: 0, dropped: 0 };
        for line in read_back(&path) {
            let mut batch = Batch::stamped(line.ts, line.stream, line.line.len());
            batch.text(&line.line);
            inner.keep(Arc::new(batch));
        }
        let written = watch::Sender::new(inner.end());
        let sink = Sink {
            path,
            file: None,
            bytes: file_bytes.unwrap_or(0),
            created: file_bytes.is_some(),
            waiting: Vec::new(),
        };
        let sink = Arc::new(Mutex::new(sink));
        LogStore { inner: Mutex::new(inner), sink, written }
    }

    pub fn push(&self, stream: Stream, text: &str) {
        let mut batch = Batch::new(stream, text.len());
        batch.text(text);
        self.push_batch(batch);
    }

    /// Record lines read together.
    pub fn push_many(&self, stream: Stream, lines: impl IntoIterator<Item = String>) {
        let mut batch = Batch::new(stream, 0);
        for line in lines {
            batch.text(&line);
        }
        self.push_batch(batch);
    }

    /// Record a batch: one write to the file, then into the ring as it is.
    pub fn push_batch(&self, batch: Batch) {
        if batch.is_empty() {
            return;
        }
        let batch = Arc::new(batch);
        let mut inner = self.lock();
        // Under the lock, so the file has the lines in the ring's order.
        writer().write(&self.sink, &batch);
        inner.keep(batch);
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
        let after = usize::try_from(inner.end() - *next).unwrap_or(usize::MAX);
        let lines: Vec<LogLine> = inner.newest(after).take(FOLLOW_BATCH).collect();
        *next += lines.len() as u64;
        Followed::Lines(lines)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for LogStore {
    /// The daemon's lines that wait for the service's first output are written now: the
    /// service is gone (and a new store of the same file reads them back).
    fn drop(&mut self) {
        let bytes = lock(&self.sink).waiting_bytes();
        if bytes > 0 {
            let writer = writer();
            writer.shared.backlog.fetch_add(bytes, Ordering::AcqRel);
            if writer.jobs.send(Job::Release(self.sink.clone(), bytes)).is_err() {
                writer.shared.backlog.fetch_sub(bytes, Ordering::AcqRel);
            }
        }
    }
}

impl Inner {
    /// Add a batch to the ring, dropping the oldest lines beyond its bounds: whole batches
    /// while that leaves enough, then as many lines of the oldest as the bounds ask for.
    fn keep(&mut self, batch: Arc<Batch>) {
        self.ring_lines += batch.len();
        self.ring_bytes += batch.text_bytes;
        self.ring.push_back(batch);
        while self.ring_lines > RING_LINES || self.ring_bytes > RING_BYTES {
            let Some(oldest) = self.ring.front() else { break };
            let live = oldest.len() - self.skip;
            // The fewest lines that bring both bounds back; all of them, if that is the batch.
            let by_bytes = oldest.lines_holding(self.skip, self.ring_bytes.saturating_sub(RING_BYTES));
            let lines = (self.ring_lines.saturating_sub(RING_LINES)).max(by_bytes).clamp(1, live);
            let bytes = oldest.text_len(self.skip, lines);
            self.drop_front(lines, bytes);
        }
    }

    /// `lines` lines (`bytes` of text) leave the front of the ring.
    fn drop_front(&mut self, lines: usize, bytes: usize) {
        self.ring_lines -= lines;
        self.ring_bytes -= bytes;
        self.dropped += lines as u64;
        self.skip += lines;
        if self.ring.front().is_some_and(|oldest| self.skip == oldest.len()) {
            self.ring.pop_front();
            self.skip = 0;
        }
    }

    /// The position after the newest line.
    fn end(&self) -> u64 {
        self.dropped + self.ring_lines as u64
    }

    /// The newest `n` lines (all, if fewer), oldest first.
    fn newest(&self, n: usize) -> impl Iterator<Item = LogLine> + '_ {
        // Walk back from the newest batch to the one holding the first line wanted.
        let mut first = self.ring.len();
        let mut from = 0;
        let mut wanted = n.min(self.ring_lines);
        while wanted > 0 {
            first -= 1;
            let batch = &self.ring[first];
            let live = if first == 0 { batch.len() - self.skip } else { batch.len() };
            if wanted <= live {
                from = batch.len() - wanted;
                break;
            }
            wanted -= live;
        }
        self.ring
            .range(first..)
            .enumerate()
            .flat_map(move |(k, batch)| (if k == 0 { from } else { 0 }..batch.len()).map(move |i| batch.log_line(i)))
    }

    fn tail(&self, n: usize) -> Vec<LogLine> {
        self.newest(n).collect()
    }
}

impl Sink {
    /// Write batches (lines in the file's form), or keep them waiting (see `created`); true
    /// when they are the first to wait.
    fn write(&mut self, batches: &[Arc<Batch>]) -> bool {
        if !self.created && batches.iter().all(|b| b.stream == Stream::Nanny) {
            let waited = self.waiting_bytes();
            if waited + batches.iter().map(|b| b.bytes.len()).sum::<usize>() <= WAITING_BYTES {
                self.waiting.extend(batches.iter().cloned());
                return waited == 0;
            }
        }
        self.release();
        self.write_now(batches);
        false
    }

    /// Bytes of the lines that wait for the file.
    fn waiting_bytes(&self) -> usize {
        self.waiting.iter().map(|b| b.bytes.len()).sum()
    }

    /// Write the lines that wait, if any.
    fn release(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        self.write_now(&waiting);
    }

    /// As many batches as the file has room for in one call, rotating whenever it is full.
    fn write_now(&mut self, mut batches: &[Arc<Batch>]) {
        while !batches.is_empty() {
            if self.bytes >= ROTATE_BYTES {
                self.file = None;
                rotate(&self.path);
                self.bytes = 0;
            }
            // The batches that start before the file is full (the first always does).
            let mut at = self.bytes;
            let fit = batches
                .iter()
                .take_while(|b| {
                    let starts = at < ROTATE_BYTES;
                    at += b.bytes.len() as u64;
                    starts
                })
                .count();
            let (now, later) = batches.split_at(fit.max(1));
            let Some(file) = self.open() else { return };
            let mut slices: Vec<IoSlice> = now.iter().map(|b| IoSlice::new(&b.bytes)).collect();
            let _ = write_vectored_all(file, &mut slices);
            self.bytes += now.iter().map(|b| b.bytes.len() as u64).sum::<u64>();
            batches = later;
        }
    }

    /// The file, opened (for appending) if it is not.
    fn open(&mut self) -> Option<&mut File> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            match OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => (self.file, self.created) = (Some(f), true),
                Err(e) => tracing::warn!(path = %self.path.display(), "cannot open log file: {e}"),
            }
        }
        self.file.as_mut()
    }
}

/// `write_all` for several buffers (std's `write_all_vectored` is not stable yet).
fn write_vectored_all(file: &mut File, mut slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The thread that writes every service's log file, so that a service flooding its output is
/// read on one core while its file is written on another. It is handed each batch the ring
/// keeps (shared, not copied), in order; a pump waits ([`room`]) while more than
/// `BACKLOG_BYTES` are on their way, so the backlog stays bounded and a flooding service is
/// slowed to the disk's pace. What is on its way when the daemon is killed outright is lost
/// from the file (not from the ring); a daemon that stops [`flush`]es.
struct Writer {
    jobs: std::sync::mpsc::Sender<Job>,
    shared: Arc<WriterShared>,
}

struct WriterShared {
    /// Bytes handed to the writer and not yet written.
    backlog: AtomicUsize,
    drained: Notify,
}

enum Job {
    Write(Arc<Mutex<Sink>>, Arc<Batch>),
    /// The store is gone: write what waits (this many bytes).
    Release(Arc<Mutex<Sink>>, usize),
    Flush(std::sync::mpsc::Sender<()>),
}

/// The most bytes on their way to the log files before pumps wait.
const BACKLOG_BYTES: usize = 8 * 1024 * 1024;

static WRITER: OnceLock<Writer> = OnceLock::new();

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let shared = Arc::new(WriterShared { backlog: AtomicUsize::new(0), drained: Notify::new() });
        let theirs = shared.clone();
        let spawned = std::thread::Builder::new().name("nanny-logs".into()).spawn(move || {
            let (mut jobs, mut waiting) = (Vec::new(), Vec::new());
            while let Ok(first) = rx.recv() {
                // Woken by one batch, it gives the next ones a moment to arrive: a flooding
                // service's batches are written a few hundred at a time, not one per wake-up.
                if matches!(first, Job::Write(..)) {
                    std::thread::sleep(GATHER);
                }
                jobs.push(first);
                jobs.extend(rx.try_iter().take(GATHER_JOBS));
                let written = write_all(&mut jobs, &mut waiting);
                theirs.backlog.fetch_sub(written, Ordering::AcqRel);
                theirs.drained.notify_waiters();
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the log writer thread: {e}");
        }
        Writer { jobs, shared }
    })
}

/// How long the writer waits for more batches once one arrives...
const GATHER: std::time::Duration = std::time::Duration::from_millis(1);
/// ...and the most it takes at a time.
const GATHER_JOBS: usize = 1024;

/// Do `jobs` in order, draining it: each run of batches for one file in one call. `waiting`
/// holds the sinks whose lines wait for their file (see `Sink::created`). The bytes written
/// (or given up on).
fn write_all(jobs: &mut Vec<Job>, waiting: &mut Vec<Arc<Mutex<Sink>>>) -> usize {
    let mut written = 0;
    let mut jobs = jobs.drain(..).peekable();
    while let Some(job) = jobs.next() {
        match job {
            Job::Write(sink, batch) => {
                let mut run = vec![batch];
                while let Some(Job::Write(next, _)) = jobs.peek()
                    && Arc::ptr_eq(next, &sink)
                {
                    let Some(Job::Write(_, batch)) = jobs.next() else { break };
                    run.push(batch);
                }
                written += run.iter().map(|b| b.bytes.len()).sum::<usize>();
                if lock(&sink).write(&run) {
                    waiting.push(sink);
                }
            }
            Job::Release(sink, bytes) => {
                lock(&sink).release();
                waiting.retain(|w| !Arc::ptr_eq(w, &sink));
                written += bytes;
            }
            Job::Flush(done) => {
                for sink in waiting.drain(..) {
                    lock(&sink).release();
                }
                let _ = done.send(());
            }
        }
    }
    written
}

fn lock(sink: &Mutex<Sink>) -> std::sync::MutexGuard<'_, Sink> {
    sink.lock().unwrap_or_else(|p| p.into_inner())
}

impl Writer {
    fn write(&self, sink: &Arc<Mutex<Sink>>, batch: &Arc<Batch>) {
        self.shared.backlog.fetch_add(batch.bytes.len(), Ordering::AcqRel);
        if self.jobs.send(Job::Write(sink.clone(), batch.clone())).is_err() {
            self.shared.backlog.fetch_sub(batch.bytes.len(), Ordering::AcqRel);
        }
    }
}

/// Resolves once the log files' backlog is within its bound: a pump waits on it before it
/// reads more.
pub async fn room() {
    let shared = &writer().shared;
    loop {
        // Registered before the check, so a drain in between is not missed.
        let drained = shared.drained.notified();
        if !backlogged() {
            return;
        }
        drained.await;
    }
}

/// Whether the log files' backlog is beyond its bound (see [`room`]).
pub fn backlogged() -> bool {
    writer().shared.backlog.load(Ordering::Acquire) > BACKLOG_BYTES
}

/// Blocks until everything handed to the log writer so far is in the files.
pub fn flush() {
    let (done, wait) = std::sync::mpsc::channel();
    if writer().jobs.send(Job::Flush(done)).is_ok() {
        let _ = wait.recv();
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

/// `x.log` → `x.log.1` → … → `x.log.KEEP`. The oldest is deleted on a thread of its own
/// (`nanny-logs-rm`): freeing a file's cached pages takes long enough to slow the writer of a
/// flooding service. It waits as `x.log.deleting` meanwhile (deleted here, the slow way, if
/// the one before it is still there).
fn rotate(path: &PathBuf) {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    let doomed = PathBuf::from(format!("{}.deleting", path.display()));
    if !doomed.exists() && fs::rename(numbered(ROTATE_KEEP), &doomed).is_ok() {
        remover().send(doomed).ok();
    }
    for n in (1..ROTATE_KEEP).rev() {
        let _ = fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = fs::rename(path, numbered(1));
}

/// The thread that deletes rotated-out log files.
fn remover() -> &'static std::sync::mpsc::Sender<PathBuf> {
    static REMOVER: OnceLock<std::sync::mpsc::Sender<PathBuf>> = OnceLock::new();
    REMOVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let spawned = std::thread::Builder::new().name("nanny-logs-rm".into()).spawn(move || {
            for path in rx {
                let _ = fs::remove_file(path);
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the log remover thread: {e}");
        }
        tx
    })
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
        self.split_with(chunk, |line| lines.push(String::from_utf8_lossy(line).into_owned()));
        lines
    }

    /// Calls `line` with each line `chunk` completes, without its newline (nor a `\r` before
    /// it): a line wholly inside `chunk` is a slice of it, not a copy.
    pub fn split_with(&mut self, chunk: &[u8], mut line: impl FnMut(&[u8])) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', chunk) {
            self.piece(&chunk[start..end], true, &mut line);
            start = end + 1;
        }
        self.piece(&chunk[start..], false, &mut line);
    }

    /// A piece of a line, and whether a newline ended it.
    fn piece(&mut self, piece: &[u8], newline: bool, line: &mut impl FnMut(&[u8])) {
        if newline && self.partial.is_empty() && !self.cutting && piece.len() <= self.max {
            return line(strip_cr(piece));
        }
        if !self.cutting {
            let room = self.max - self.partial.len();
            if piece.len() > room {
                self.partial.extend_from_slice(&piece[..room]);
                line(self.cut().as_bytes());
                self.cutting = true;
            } else {
                self.partial.extend_from_slice(piece);
            }
        }
        if newline {
            if !std::mem::take(&mut self.cutting) {
                line(strip_cr(&self.partial));
            }
            self.partial.clear();
        }
    }

    /// The unfinished last line, once the stream has ended.
    pub fn finish(&mut self) -> Option<String> {
        let cut = std::mem::take(&mut self.cutting);
        let last =
            (!cut && !self.partial.is_empty()).then(|| String::from_utf8_lossy(strip_cr(&self.partial)).into_owned());
        self.partial.clear();
        last
    }

    /// The first `max` bytes of an over-long line (less a character cut in
    /// two), and the marker; the line so far is dropped.
    fn cut(&mut self) -> String {
        if let Err(e) = std::str::from_utf8(&self.partial)
            && e.error_len().is_none()
        {
            self.partial.truncate(e.valid_up_to());
        }
        let cut = format!("{}… [line cut at {} bytes]", String::from_utf8_lossy(&self.partial), self.max);
        self.partial.clear();
        cut
    }
}

/// A line without the `\r` of a `\r\n` ending.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
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
    fn a_reads_lines_are_checked_once_and_carried_over_chunks() {
        let mut lines = LineSplitter::default();
        let mut batch = Batch::new(Stream::Stdout, 64);
        // A character cut in two by the read, a `\r\n`, bytes that are not UTF-8.
        batch.lines_of(b"one\ncaf\xc3", &mut lines);
        batch.lines_of(b"\xa9 ok\r\nbad \xff\n\nlast", &mut lines);
        let texts: Vec<&str> = (0..batch.len()).map(|i| batch.get(i)).collect();
        assert_eq!(texts, ["one", "café ok", "bad \u{FFFD}", ""]);
        assert_eq!(lines.finish().as_deref(), Some("last"));
        // The batch is the file's form, as it is written.
        let file = String::from_utf8(batch.bytes.clone()).unwrap();
        assert_eq!(file.lines().count(), 4);
        assert!(file.lines().all(|l| LogLine::parse(l).is_some_and(|p| p.stream == Stream::Stdout)), "{file}");
    }

    #[tokio::test]
    async fn batches_leave_the_ring_whole_or_line_by_line_and_positions_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::new(dir.path().join("s.log")));
        let (_, mut follower) = store.follow(0);
        let mut n = 0;
        for _ in 0..(3 * RING_LINES / 97) {
            let mut batch = Batch::new(Stream::Stdout, 97 * 6);
            for _ in 0..97 {
                batch.text(&n.to_string());
                n += 1;
            }
            store.push_batch(batch);
        }
        let kept = store.tail(usize::MAX);
        assert_eq!(kept.len(), RING_LINES, "exactly the bound, though batches hold 97 lines");
        assert_eq!(kept.last().unwrap().line, (n - 1).to_string());
        assert_eq!(kept[0].line, (n - RING_LINES).to_string());
        assert_eq!(
            store.tail(3).iter().map(|l| l.line.clone()).collect::<Vec<_>>(),
            [n - 3, n - 2, n - 1].map(|k| k.to_string())
        );
        let lost = (n - RING_LINES) as u64;
        assert!(matches!(follower.next().await, Some(Followed::Lost(l)) if l == lost));
        let Some(Followed::Lines(lines)) = follower.next().await else { panic!("lines after the loss") };
        assert_eq!(lines[0].line, (n - RING_LINES).to_string(), "it resumes at the oldest line kept");
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
        flush();
        let tail = store.tail(2);
        assert_eq!(tail.len(), 2);
        assert_eq!(tail[1].line, "last");
        assert_eq!(store.tail(usize::MAX).len(), RING_BYTES / big.len(), "bounded in bytes");
        // Batches written together are still rotated at the size: past it by less than one.
        let rotated = fs::metadata(dir.path().join("s.log.1")).unwrap().len();
        assert!((ROTATE_BYTES..ROTATE_BYTES + 1100).contains(&rotated), "rotated at {rotated} bytes");
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

    #[test]
    fn the_daemons_lines_wait_for_the_services_first_output_to_create_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let (quiet, talks) = (dir.path().join("quiet.log"), dir.path().join("talks.log"));
        let quiet_store = LogStore::new(quiet.clone());
        let talks_store = LogStore::new(talks.clone());
        quiet_store.push(Stream::Nanny, "started");
        talks_store.push(Stream::Nanny, "started");
        talks_store.push(Stream::Stdout, "hello");
        // Lines are written in order: once `hello` is, `quiet`'s line has been handled too.
        wait_until(|| fs::read_to_string(&talks).is_ok_and(|t| t.ends_with(" hello\n")));
        let file = fs::read_to_string(&talks).unwrap();
        let lines: Vec<&str> = file.lines().filter_map(|l| l.split_once(' ').map(|(_, rest)| rest)).collect();
        assert_eq!(lines, ["nanny  started", "stdout hello"], "the waiting line comes first");
        assert!(!quiet.exists(), "a service that wrote nothing has no file yet");
        flush();
        assert!(fs::read_to_string(&quiet).unwrap().ends_with(" nanny  started\n"), "written at a flush");
    }

    fn wait_until(mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
