//! Live statistics in shared memory: `/dev/shm/mtcpshim.<pid>`.
//!
//! The stack ([`Writer`]) publishes its counters into a small mapped file with plain memory
//! stores, so the poll path makes no system call for it; `mtcprun stats PID` ([`read`]) maps the
//! same file read-only. The file describes itself: a header, the name of every value, the values,
//! then a table of listeners. A seqlock word makes a reader's copy consistent: the writer makes
//! it odd before it stores and even again after; a reader retries until it saw the same even
//! number before and after its copy.
//!
//! Layout (all words are native-endian u64, offsets in bytes):
//!
//! | offset | word |
//! | --- | --- |
//! | 0 | magic `MTCPSTAT` |
//! | 8 | layout version ([`VERSION`]) |
//! | 16 | number of values N |
//! | 24 | capacity of the listener table L |
//! | 32 | pid of the writer |
//! | 40 | CLOCK_MONOTONIC in ns at the writer's clock zero (`age = mono_now - (this + now_us * 1000)`) |
//! | 48 | wall clock (ms since 1970) when the file was created |
//! | 56 | seqlock: odd while the writer stores |
//! | 64 | the writer's clock (µs) at the last publication |
//! | 72 | listeners in use |
//! | 80 | the writer's start time (`/proc/PID/stat` field 22, clock ticks since boot; 0 if unknown) |
//! | 88..128 | reserved (0) |
//! | 128 | N names, [`NAME_LEN`] bytes each, NUL-padded, `group.name` |
//! | 128 + 40 N | N values |
//! | then | L listeners: port, backlog, SYN-received, accept queue |
//!
//! Names in the groups of [`GAUGE_GROUPS`] are levels (connections by state, mempool use);
//! every other value is a counter that only grows.
//!
//! The file is created when the stack starts and removed when the process exits (an `atexit`
//! handler, or dropping the writer); never by a forked child, which shares the mapping but
//! never writes to it. A process killed by a signal leaves its file behind: [`read`] reports a
//! file whose process is gone, also when its pid names another process by now (the start time
//! in the header is not that process's), and the next writer to start removes such files.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

pub const MAGIC: [u8; 8] = *b"MTCPSTAT";
pub const VERSION: u64 = 1;
/// Bytes per name, NUL-padded.
pub const NAME_LEN: usize = 40;
/// Listeners the table has room for (more are not shown).
pub const MAX_LISTENERS: usize = 64;
/// Groups whose values are levels, not counters.
pub const GAUGE_GROUPS: &[&str] = &["tcp", "conns", "mempool", "cachemem"];

const HEADER: usize = 128;
const W_MAGIC: usize = 0;
const W_VERSION: usize = 1;
const W_NVALUES: usize = 2;
const W_MAXLISTEN: usize = 3;
const W_PID: usize = 4;
const W_BASE_MONO_NS: usize = 5;
const W_CREATED_UNIX_MS: usize = 6;
const W_SEQ: usize = 7;
const W_NOW_US: usize = 8;
const W_NLISTEN: usize = 9;
const W_START: usize = 10;

/// The directory the files live in.
pub const DIR: &str = "/dev/shm";

/// `/dev/shm/mtcpshim.<pid>`.
pub fn path_for(pid: u32) -> PathBuf {
    Path::new(DIR).join(format!("mtcpshim.{pid}"))
}

/// When process `pid` started (`/proc/PID/stat` field 22, clock ticks since boot): with the pid,
/// what names one process (pids are reused). `None` if there is no such process.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields 3.. follow its last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// Whether the writer of a file with pid `pid` and start time `start` (0: unknown) still runs.
fn writer_alive(pid: u32, start: u64) -> bool {
    match process_start(pid) {
        None => false,
        Some(now) => start == 0 || now == start,
    }
}

/// Removes the files in `dir` whose writer has exited (killed by a signal, it could not remove
/// its own), and their half-made `.new` copies. Files of other names are left alone.
pub fn remove_stale_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("mtcpshim.")) else {
            continue;
        };
        let (pid, half_made) = match rest.strip_suffix(".new") {
            Some(p) => (p, true),
            None => (rest, false),
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let path = e.path();
        let (start, inode) = if half_made {
            (0, None)
        } else {
            header_start(&path)
        };
        // (The inode: a writer that renamed its new file onto the name since keeps it.)
        let same = || {
            use std::os::unix::fs::MetadataExt;
            inode.is_none_or(|i| std::fs::symlink_metadata(&path).is_ok_and(|m| m.ino() == i))
        };
        if !writer_alive(pid, start) && same() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The start-time word of a statistics file (0 if unreadable or not one) and its inode.
fn header_start(path: &Path) -> (u64, Option<u64>) {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let Ok(mut f) = File::open(path) else {
        return (0, None);
    };
    let inode = f.metadata().ok().map(|m| m.ino());
    let mut head = [0u8; (W_START + 1) * 8];
    if f.read_exact(&mut head).is_err() || head[..8] != MAGIC {
        return (0, inode);
    }
    let at = W_START * 8;
    let start = u64::from_ne_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    (start, inode)
}

/// Whether a value of this name is a level (gauge) rather than a counter.
pub fn is_gauge(name: &str) -> bool {
    let group = name.split_once('.').map_or("", |(g, _)| g);
    GAUGE_GROUPS.contains(&group)
}

/// One listening port: its backlog, connections still in the handshake, and established
/// connections waiting for accept().
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerStat {
    pub port: u16,
    pub backlog: u64,
    pub syn_received: u64,
    pub accept_queue: u64,
}

fn file_size(n_values: usize, max_listeners: usize) -> usize {
    HEADER + n_values * NAME_LEN + n_values * 8 + max_listeners * 4 * 8
}

fn values_offset(n_values: usize) -> usize {
    HEADER + n_values * NAME_LEN
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-parameter (vDSO, no system call).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A shared mapping of a whole statistics file, viewed as u64 words.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; all access to it goes through
// atomics (words) or happens before it is published (names), so moving it between threads is fine.
unsafe impl Send for Mapping {}

impl Mapping {
    fn map(file: &File, len: usize, writable: bool) -> io::Result<Mapping> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping `len` bytes of a file we hold open; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: NonNull::new(p.cast()).expect("mmap does not return NULL on success"),
            len,
        })
    }

    /// Word `i` (byte offset `8 * i`).
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!((i + 1) * 8 <= self.len, "word {i} outside the mapping");
        // SAFETY: in bounds (checked), 8-aligned (mmap returns page-aligned memory), and only
        // ever accessed as AtomicU64 by every process that maps the file.
        unsafe { &*self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }

    /// Words `i..i + n`.
    fn words(&self, i: usize, n: usize) -> &[AtomicU64] {
        assert!(
            (i + n) * 8 <= self.len,
            "words {i}..{} outside the mapping",
            i + n
        );
        // SAFETY: in bounds (checked), 8-aligned, accessed only as AtomicU64 (see `word`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(i * 8).cast::<AtomicU64>(), n) }
    }

    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds; names are written once before the file is visible under its name.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Only one writer per process (the file name is the pid).
static WRITER_ACTIVE: AtomicBool = AtomicBool::new(false);
/// The path the `atexit` handler removes, and the pid that may remove it.
static CLEANUP: OnceLock<(CString, u32)> = OnceLock::new();

extern "C" fn remove_at_exit() {
    if let Some((path, pid)) = CLEANUP.get() {
        // A forked child that calls exit() must not remove its parent's file.
        // SAFETY: getpid and unlink of a NUL-terminated path have no preconditions.
        unsafe {
            if libc::getpid() as u32 == *pid {
                libc::unlink(path.as_ptr());
            }
        }
    }
}

/// The writer side, owned by the stack.
pub struct Writer {
    map: Mapping,
    path: PathBuf,
    pid: u32,
    n_values: usize,
    /// The writer's clock (µs) of the next publication that `due` allows.
    next_us: u64,
    interval_us: u64,
}

impl Writer {
    /// Creates `/dev/shm/mtcpshim.<pid>` for this process with these value names (see the
    /// module doc for the naming), publishing at most every `interval`. `now_us` is the writer's
    /// clock now (the stack's clock, in µs), used to relate later publications to
    /// CLOCK_MONOTONIC. Fails if this process already has a writer.
    pub fn create(names: &[String], interval: Duration, now_us: u64) -> io::Result<Writer> {
        let pid = std::process::id();
        remove_stale_in(Path::new(DIR));
        Self::create_at(&path_for(pid), names, interval, now_us)
    }

    /// [`Writer::create`] at another path (tests).
    pub fn create_at(
        path: &Path,
        names: &[String],
        interval: Duration,
        now_us: u64,
    ) -> io::Result<Writer> {
        if WRITER_ACTIVE.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "this process already publishes statistics (one stack per process)",
            ));
        }
        let w = Self::create_inner(path, names, interval, now_us);
        if w.is_err() {
            WRITER_ACTIVE.store(false, Ordering::Release);
        }
        w
    }

    fn create_inner(
        path: &Path,
        names: &[String],
        interval: Duration,
        now_us: u64,
    ) -> io::Result<Writer> {
        let pid = std::process::id();
        for n in names {
            if n.len() >= NAME_LEN || !n.contains('.') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("statistics name {n:?}: must be group.name, under {NAME_LEN} bytes"),
                ));
            }
        }
        let len = file_size(names.len(), MAX_LISTENERS);
        // Filled under a temporary name, then renamed: a reader never sees a half-made file.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".new");
        let tmp = PathBuf::from(tmp);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        let made = (|| {
            file.set_len(len as u64)?;
            let map = Mapping::map(&file, len, true)?;
            for (i, n) in names.iter().enumerate() {
                // SAFETY: in bounds (the file was sized for every name); nobody else maps the
                // temporary file yet.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        n.as_ptr(),
                        map.ptr.as_ptr().add(HEADER + i * NAME_LEN),
                        n.len(),
                    )
                };
            }
            let base = mono_ns().saturating_sub(now_us * 1000);
            let created = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let words = [
                (W_MAGIC, u64::from_ne_bytes(MAGIC)),
                (W_VERSION, VERSION),
                (W_NVALUES, names.len() as u64),
                (W_MAXLISTEN, MAX_LISTENERS as u64),
                (W_PID, u64::from(pid)),
                (W_BASE_MONO_NS, base),
                (W_CREATED_UNIX_MS, created),
                (W_NOW_US, now_us),
                (W_START, process_start(pid).unwrap_or(0)),
            ];
            for (i, v) in words {
                map.word(i).store(v, Ordering::Relaxed);
            }
            std::fs::rename(&tmp, path)?;
            Ok(map)
        })();
        let map = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            if CLEANUP.set((c, pid)).is_ok() {
                // SAFETY: registering a handler that only calls getpid and unlink.
                unsafe { libc::atexit(remove_at_exit) };
            }
        }
        Ok(Writer {
            map,
            path: path.to_path_buf(),
            pid,
            n_values: names.len(),
            next_us: 0,
            interval_us: interval.as_micros() as u64,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a publication at `now_us` is allowed (one comparison: call it every poll).
    #[inline]
    pub fn due(&self, now_us: u64) -> bool {
        now_us >= self.next_us
    }

    /// Publishes `values` (in the order of the names given to `create`; extra ones are ignored,
    /// missing ones keep their last value) and the listener table. Plain stores only.
    pub fn publish(&mut self, now_us: u64, values: &[u64], listeners: &[ListenerStat]) {
        self.next_us = now_us + self.interval_us;
        let m = &self.map;
        let seq = m.word(W_SEQ);
        let s = seq.load(Ordering::Relaxed);
        seq.store(s.wrapping_add(1) | 1, Ordering::Relaxed);
        // The odd sequence number is visible before any of the stores below.
        fence(Ordering::Release);
        m.word(W_NOW_US).store(now_us, Ordering::Relaxed);
        let base = values_offset(self.n_values) / 8;
        for (w, v) in m.words(base, self.n_values).iter().zip(values) {
            w.store(*v, Ordering::Relaxed);
        }
        let n = listeners.len().min(MAX_LISTENERS);
        let table = m.words(base + self.n_values, 4 * n);
        for (w, l) in table.chunks_exact(4).zip(listeners) {
            w[0].store(u64::from(l.port), Ordering::Relaxed);
            w[1].store(l.backlog, Ordering::Relaxed);
            w[2].store(l.syn_received, Ordering::Relaxed);
            w[3].store(l.accept_queue, Ordering::Relaxed);
        }
        m.word(W_NLISTEN).store(n as u64, Ordering::Relaxed);
        seq.store((s | 1).wrapping_add(1), Ordering::Release);
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            let _ = std::fs::remove_file(&self.path);
        }
        WRITER_ACTIVE.store(false, Ordering::Release);
    }
}

/// One consistent copy of a statistics file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub pid: u32,
    pub created_unix_ms: u64,
    /// The writer's start time ([`process_start`]; 0 if unknown).
    pub start: u64,
    /// The writer's clock at the publication (µs); differences between samples are exact.
    pub now_us: u64,
    /// How long before the read the values were published.
    pub age: Duration,
    pub values: Vec<(String, u64)>,
    pub listeners: Vec<ListenerStat>,
}

impl Sample {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
}

/// Why a statistics file could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// No file for this pid.
    Missing(PathBuf),
    /// A file exists but its process is gone (killed before it could remove it), maybe with
    /// its pid reused by another process.
    Stale(PathBuf),
    /// Not a statistics file of this layout, or the writer never finished a publication.
    Invalid(PathBuf, String),
    Io(PathBuf, io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing(p) => write!(f, "{} does not exist", p.display()),
            ReadError::Stale(p) => write!(
                f,
                "{} was left behind by a process that has exited",
                p.display()
            ),
            ReadError::Invalid(p, why) => write!(f, "{}: {why}", p.display()),
            ReadError::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads the statistics of process `pid`.
pub fn read(pid: u32) -> Result<Sample, ReadError> {
    read_of(&path_for(pid), pid)
}

/// Reads the file at `path` if it is process `pid`'s own.
fn read_of(path: &Path, pid: u32) -> Result<Sample, ReadError> {
    let s = read_at(path)?;
    if s.pid != pid || !writer_alive(pid, s.start) {
        return Err(ReadError::Stale(path.to_path_buf()));
    }
    Ok(s)
}

/// Reads a statistics file at any path.
pub fn read_at(path: &Path) -> Result<Sample, ReadError> {
    let p = || path.to_path_buf();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing(p())),
        Err(e) => return Err(ReadError::Io(p(), e)),
    };
    let len = file.metadata().map_err(|e| ReadError::Io(p(), e))?.len() as usize;
    if len < HEADER {
        return Err(ReadError::Invalid(p(), format!("{len} bytes, too short")));
    }
    let map = Mapping::map(&file, len, false).map_err(|e| ReadError::Io(p(), e))?;
    let w = |i: usize| map.word(i).load(Ordering::Relaxed);
    if w(W_MAGIC) != u64::from_ne_bytes(MAGIC) {
        return Err(ReadError::Invalid(p(), "not a statistics file".into()));
    }
    if w(W_VERSION) != VERSION {
        return Err(ReadError::Invalid(
            p(),
            format!(
                "layout version {} (this reader knows {VERSION}): use the mtcprun of the same release",
                w(W_VERSION)
            ),
        ));
    }
    let n = w(W_NVALUES) as usize;
    let maxl = w(W_MAXLISTEN) as usize;
    if n > 4096 || maxl > 4096 || file_size(n, maxl) > len {
        return Err(ReadError::Invalid(
            p(),
            "sizes do not match the file".into(),
        ));
    }
    let names: Vec<String> = (0..n)
        .map(|i| {
            let raw = map.bytes(HEADER + i * NAME_LEN, NAME_LEN);
            let end = raw.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .collect();
    let base = values_offset(n) / 8;
    let seq = map.word(W_SEQ);
    let mut values = vec![0u64; n];
    let mut table = vec![ListenerStat::default(); maxl];
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        let s1 = seq.load(Ordering::Acquire);
        if s1 & 1 == 0 {
            let now_us = w(W_NOW_US);
            for (i, v) in values.iter_mut().enumerate() {
                *v = w(base + i);
            }
            let nl = (w(W_NLISTEN) as usize).min(maxl);
            for (i, l) in table.iter_mut().take(nl).enumerate() {
                let b = base + n + i * 4;
                *l = ListenerStat {
                    port: w(b) as u16,
                    backlog: w(b + 1),
                    syn_received: w(b + 2),
                    accept_queue: w(b + 3),
                };
            }
            // The copies above happen before the second look at the sequence number.
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == s1 {
                let published = w(W_BASE_MONO_NS).saturating_add(now_us * 1000);
                table.truncate(nl);
                return Ok(Sample {
                    pid: w(W_PID) as u32,
                    created_unix_ms: w(W_CREATED_UNIX_MS),
                    start: w(W_START),
                    now_us,
                    age: Duration::from_nanos(mono_ns().saturating_sub(published)),
                    values: names.into_iter().zip(values).collect(),
                    listeners: table,
                });
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(ReadError::Invalid(
                p(),
                "the writer stopped in the middle of a publication".into(),
            ));
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["stack.rx_frames", "stack.tx_frames", "tcp.established"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn write_then_read_and_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("mtcpstat-test-{}", std::process::id()));
        let mut w = Writer::create_at(&path, &names(), Duration::from_millis(1), 5_000).unwrap();
        // Created with zeros, readable at once.
        let s = read_at(&path).unwrap();
        assert_eq!(s.pid, std::process::id());
        assert_eq!(s.get("stack.rx_frames"), Some(0));
        assert!(s.listeners.is_empty());
        assert!(w.due(5_000));
        let l = ListenerStat {
            port: 6379,
            backlog: 511,
            syn_received: 2,
            accept_queue: 1,
        };
        w.publish(6_000, &[10, 20, 3], &[l]);
        assert!(!w.due(6_999) && w.due(7_000));
        let s = read_at(&path).unwrap();
        assert_eq!(
            s.values,
            vec![
                ("stack.rx_frames".to_string(), 10),
                ("stack.tx_frames".to_string(), 20),
                ("tcp.established".to_string(), 3)
            ]
        );
        assert_eq!(s.listeners, vec![l]);
        assert_eq!(s.now_us, 6_000);
        // A second writer in the same process is refused.
        assert!(Writer::create_at(&path, &names(), Duration::from_millis(1), 0).is_err());
        // The file names its writer by pid and start time.
        let me = std::process::id();
        assert_eq!(s.start, process_start(me).unwrap());
        assert!(read_of(&path, me).is_ok());
        assert!(matches!(read_of(&path, me + 1), Err(ReadError::Stale(_))));
        // The same pid, another start: a process that had this pid before.
        set_start(&path, s.start + 1);
        assert!(matches!(read_of(&path, me), Err(ReadError::Stale(_))));
        drop(w);
        assert!(matches!(read_at(&path), Err(ReadError::Missing(_))));
    }

    /// Overwrites the start-time word of the file at `path`.
    fn set_start(path: &Path, start: u64) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start((W_START * 8) as u64)).unwrap();
        f.write_all(&start.to_ne_bytes()).unwrap();
    }

    /// A pid no process has now.
    fn unused_pid() -> u32 {
        (2..u32::MAX)
            .rev()
            .step_by(7919)
            .find(|p| process_start(*p).is_none())
            .unwrap()
    }

    #[test]
    fn files_of_exited_writers_are_removed() {
        let dir = std::env::temp_dir().join(format!("mtcpstat-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let me = std::process::id();
        let mine = process_start(me).unwrap();
        let header = |start: u64| {
            let mut h = vec![0u8; HEADER];
            h[..8].copy_from_slice(&MAGIC);
            h[W_START * 8..W_START * 8 + 8].copy_from_slice(&start.to_ne_bytes());
            h
        };
        let gone = unused_pid();
        let files = [
            // This process's own file: kept.
            (format!("mtcpshim.{me}"), header(mine), true),
            // Its pid, an earlier start (pid 1 started before any other process).
            ("mtcpshim.1".to_string(), header(u64::MAX), false),
            // A writer that has exited.
            (format!("mtcpshim.{gone}"), header(mine), false),
            (format!("mtcpshim.{gone}.new"), Vec::new(), false),
            // A half-made file of a running writer: kept.
            (format!("mtcpshim.{me}.new"), header(0), true),
            // Not ours.
            ("mtcpshim.notes".to_string(), Vec::new(), true),
        ];
        for (name, bytes, _) in &files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        remove_stale_in(&dir);
        for (name, _, kept) in &files {
            assert_eq!(dir.join(name).exists(), *kept, "{name}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn not_a_stats_file() {
        let path = std::env::temp_dir().join(format!("mtcpstat-bad-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 256]).unwrap();
        let e = read_at(&path).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(e.to_string().ends_with("not a statistics file"), "{e}");
    }

    #[test]
    fn gauges() {
        assert!(is_gauge("tcp.established"));
        assert!(is_gauge("mempool.in_use"));
        assert!(!is_gauge("stack.rx_frames"));
        assert_eq!(path_for(42), PathBuf::from("/dev/shm/mtcpshim.42"));
    }
}
