//! Wake-ups between two stacks joined by net_memif.
//!
//! DPDK 22.11's memif driver polls: it masks the interrupts of the rings it receives on, so a
//! stack that sleeps learns of a frame only when its nap ends (`idle::Backoff`, 2 ms at most:
//! ~500 wake-ups a second while idle, each one costing the CPU of a timer wake-up). When the
//! peer is a stack of ours too (an application under the shim, `mtcp-faultbridge`), each side
//! tells the other when it sleeps, and is woken by one datagram:
//! - `SOCKET.wake`, a shared page beside the memif socket: one flag per role, "asleep on my
//!   wake socket" (the file stays: a side that starts again maps the page its peer still has);
//! - each side's unix datagram socket, the fd it blocks on, in the abstract namespace (named
//!   after the page's inode and the role; nothing to clean up, gone with the process). A peer
//!   in another network namespace cannot be reached there, and is napped for as today.
//!
//! A side that put frames on the ring and finds the peer's flag set clears it and sends one
//! datagram: one system call per wake-up of the peer, none while the peer is awake. The order
//! that loses no frame: the sleeper sets its flag, then looks at the ring once more
//! (`Stack::arm_wake`); the sender fills the ring, then reads the flag; a full fence between
//! the write and the read on both sides, so at least one of them sees the other's write.
//!
//! A waiter that watches the socket edge-triggered (the shim's epoll instances,
//! [`MemifWake::set_edge`]) leaves the datagrams unread: each one still makes an edge, and a
//! queued one no longer ends every later block. They are read, one system call for several,
//! before they could fill the socket's queue (`net.unix.max_dgram_qlen`, 10 by default, past
//! which the peer's send fails and its wake-up is lost): the side counts the clearings of its
//! flag it sees (each the peer's one datagram at most) and reads at half the queue.
//!
//! A peer that takes no part (another memif implementation) must never be waited for: the wake
//! fd is given out only while a live process has the peer's socket bound (a connect() to it
//! succeeds; asked at most once a second, ten times a second while the answer is no), and a
//! loop blocked on it still wakes every [`WAKE_CAP`].

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The longest a loop blocks on the wake socket: a wake-up lost to something unforeseen
/// costs at most this long.
pub const WAKE_CAP: Duration = Duration::from_millis(100);
/// How long an answer to "is the peer taking part" is kept: yes, and no (a peer that has just
/// connected may bind its socket a moment later).
const PRESENT_TTL: Duration = Duration::from_secs(1);
const ABSENT_TTL: Duration = Duration::from_millis(100);
const PAGE: usize = 4096;
/// The flags' places in the page: a cache line each.
const SLOT: [usize; 2] = [0, 64];

pub(super) struct MemifWake {
    page: *mut u8,
    me: usize,
    peer: usize,
    sock: OwnedFd,
    peer_addr: libc::sockaddr_un,
    /// Whether the peer takes part, and when that was asked.
    present: std::cell::Cell<Option<(bool, Instant)>>,
    armed: bool,
    /// A block returned for the socket since the last `arm`, and read it (edge-triggered:
    /// spent its edge): `disarm` need not read for a flag the peer cleared.
    drained: bool,
    /// Waiters watch the socket edge-triggered: datagrams are read only by the count below.
    edge: bool,
    /// Our flag holds the 1 we wrote last (not yet seen cleared).
    flag_set: bool,
    /// Datagrams that may wait in the socket: clearings of our flag seen since the last read.
    pending: u32,
    /// Edge-triggered, the socket is read once `pending` reaches this.
    read_at: u32,
    /// Reads of the socket (system calls), for the tests.
    reads: u64,
    /// Wake-ups of the peer whose datagram could not be sent (its queue full, or it went
    /// away), for the tests.
    lost: std::cell::Cell<u64>,
    /// Reads the socket's datagrams.
    drain: Box<super::wake::Drain<DRAIN_BATCH>>,
}

// SAFETY: `page` is a shared mapping owned by this value; it is only reached through atomics.
unsafe impl Send for MemifWake {}

/// The abstract-namespace address `name` (a leading NUL, then the name; the rest stays zero
/// and is part of the address: every user passes the whole struct's size).
fn abstract_addr(name: &str) -> libc::sockaddr_un {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, &s) in a.sun_path[1..].iter_mut().zip(name.as_bytes()) {
        *d = s as libc::c_char;
    }
    a
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

fn last_err<T>() -> std::io::Result<T> {
    Err(std::io::Error::last_os_error())
}

/// How many datagrams may wait in the socket before it is read, for edge-triggered waiters:
/// half the queue a unix datagram socket may hold (`net.unix.max_dgram_qlen`, read in this
/// network namespace; if it cannot be, 1: read after every wake-up), at most the `drain`'s
/// batch.
fn read_at() -> u32 {
    std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(1, |qlen| (qlen / 2).clamp(1, DRAIN_BATCH as u32))
}

/// Datagrams one `drain` reads at most.
const DRAIN_BATCH: usize = 8;

fn dgram_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return last_err();
    }
    // SAFETY: a new fd of ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl MemifWake {
    /// Takes part for the memif port on unix socket `socket`, as its `server` or client.
    pub(super) fn open(socket: &str, server: bool) -> std::io::Result<MemifWake> {
        let (me, peer) = if server { (0, 1) } else { (1, 0) };
        let role = ["server", "client"];
        let page_path = CString::new(format!("{socket}.wake"))
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: open, size and map a file of ours; every result is checked.
        let (page, id) = unsafe {
            let fd = libc::open(
                page_path.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            );
            if fd < 0 {
                return last_err();
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) < 0 {
                return last_err();
            }
            if (st.st_size as usize) < PAGE && libc::ftruncate(fd.as_raw_fd(), PAGE as i64) < 0 {
                return last_err();
            }
            let p = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            if p == libc::MAP_FAILED {
                return last_err();
            }
            (p.cast::<u8>(), format!("{:x}:{:x}", st.st_dev, st.st_ino))
        };
        let name = |r: usize| format!("mtcp-memif-wake/{id}/{}", role[r]);
        let w = MemifWake {
            page,
            me,
            peer,
            sock: dgram_socket()?,
            peer_addr: abstract_addr(&name(peer)),
            present: std::cell::Cell::new(None),
            armed: false,
            drained: false,
            edge: false,
            flag_set: false,
            pending: 0,
            read_at: read_at(),
            reads: 0,
            lost: std::cell::Cell::new(0),
            drain: super::wake::Drain::new(),
        };
        w.flag(me).store(0, Ordering::SeqCst);
        let a = abstract_addr(&name(me));
        // SAFETY: binding a socket of ours to a valid address.
        if unsafe {
            libc::bind(
                w.sock.as_raw_fd(),
                (&a as *const libc::sockaddr_un).cast(),
                ADDR_LEN,
            )
        } < 0
        {
            return last_err();
        }
        Ok(w)
    }

    fn flag(&self, who: usize) -> &AtomicU32 {
        // SAFETY: the page is mapped for our lifetime, 4096 bytes, and the slot is aligned.
        unsafe { &*self.page.add(SLOT[who]).cast::<AtomicU32>() }
    }

    /// The fd to block on, while the peer takes part.
    pub(super) fn wake_fd(&self) -> Option<RawFd> {
        let now = Instant::now();
        let present = match self.present.get() {
            Some((p, at)) if now.duration_since(at) < if p { PRESENT_TTL } else { ABSENT_TTL } => p,
            _ => {
                // SAFETY: connect() a new, unbound datagram socket of ours to the peer's path:
                // it succeeds only if a live socket is bound there.
                let p = dgram_socket().is_ok_and(|probe| unsafe {
                    libc::connect(
                        probe.as_raw_fd(),
                        (&self.peer_addr as *const libc::sockaddr_un).cast(),
                        ADDR_LEN,
                    ) == 0
                });
                self.present.set(Some((p, now)));
                p
            }
        };
        present.then(|| self.sock.as_raw_fd())
    }

    /// Waiters watch the wake fd edge-triggered (EPOLLET) from now on: what wakes them is
    /// left unread until it could fill the socket's queue.
    pub(super) fn set_edge(&mut self) {
        self.edge = true;
    }

    /// Writes our flag (`v`: 1 asleep, 0 awake), and counts a clearing by the peer since we
    /// last set it: its datagram, sent or on the way.
    fn write_flag(&mut self, v: u32) -> bool {
        let cleared = self.flag(self.me).swap(v, Ordering::SeqCst) == 0 && self.flag_set;
        self.flag_set = v != 0;
        if cleared {
            self.pending = self.pending.saturating_add(1);
        }
        cleared
    }

    /// Edge-triggered: reads the datagrams that may wait once they are `read_at`.
    fn read_if_many(&mut self) {
        if self.edge && self.pending >= self.read_at {
            self.drain();
        }
    }

    /// About to block on the wake fd (the caller then looks at the ring once more).
    pub(super) fn arm(&mut self) {
        self.write_flag(1);
        self.armed = true;
        self.drained = false;
        fence(Ordering::SeqCst);
        self.read_if_many();
    }

    /// Awake again: the flag is cleared, and the datagram read if the peer sent one. (A flag
    /// still set says it did not: the peer clears it before it sends. Most arms end without a
    /// wake-up, the look after arming finding frames: no system call for them.) A datagram
    /// not there yet, or one sent for a flag another thread set again, is left for the block
    /// it ends ([`MemifWake::woken`]): nothing is owed, so a peer that dies between clearing
    /// the flag and sending costs nothing later. (Edge-triggered too: a datagram that ended no
    /// block would end the next one, for nothing.)
    pub(super) fn disarm(&mut self) {
        if !std::mem::replace(&mut self.armed, false) {
            return;
        }
        let sent = self.write_flag(0);
        if sent && !self.drained {
            self.drain();
        } else {
            self.read_if_many();
        }
    }

    /// A block returned with the wake fd readable (the caller may not be the last thread
    /// blocked on it): its datagrams are read, or the fd would end every later block at once
    /// (a block that watched it edge-triggered, `edge_block`: only once they are many). With
    /// `others_blocked`, the flag is set again: the peer cleared it to send, and the threads
    /// still blocked would sleep through the next frames while this one works in the
    /// application (until the keeper's poll, tens of milliseconds).
    pub(super) fn woken(&mut self, others_blocked: bool, edge_block: bool) {
        if self.edge && edge_block {
            self.read_if_many();
        } else {
            self.drain();
        }
        if others_blocked && self.armed {
            self.write_flag(1);
            self.drained = false;
            fence(Ordering::SeqCst);
        } else {
            self.drained = true;
        }
    }

    /// Reads every datagram waiting (one system call: they are a byte each, one per flag the
    /// peer cleared, so rarely more than one; edge-triggered, at most `read_at`; a full batch
    /// may leave one the count had not seen yet, sent by a peer between its clearing of the
    /// flag and this read).
    fn drain(&mut self) {
        self.pending = 0;
        self.reads += self.drain.run(self.sock.as_raw_fd());
    }

    /// Frames were put on the ring: wake the peer if it sleeps.
    pub(super) fn notify(&self) {
        fence(Ordering::SeqCst);
        let f = self.flag(self.peer);
        if f.load(Ordering::Relaxed) != 0 && f.swap(0, Ordering::SeqCst) != 0 {
            self.send_wake();
        }
    }

    /// One byte to the peer's socket; a failure (the peer went away) is harmless.
    fn send_wake(&self) {
        // SAFETY: a one-byte buffer of ours and the peer's address.
        let r = unsafe {
            libc::sendto(
                self.sock.as_raw_fd(),
                [1u8].as_ptr().cast(),
                1,
                libc::MSG_DONTWAIT,
                (&self.peer_addr as *const libc::sockaddr_un).cast(),
                ADDR_LEN,
            )
        };
        if r < 0 {
            self.lost.set(self.lost.get() + 1);
        }
    }
}

impl Drop for MemifWake {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.page.cast(), PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of ours.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    /// A directory of its own for `name`'s memif socket path, and the path.
    fn socket_path(name: &str) -> (std::path::PathBuf, String) {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("m.sock").to_str().unwrap().to_string();
        (dir, sock)
    }

    /// The client side for `server`'s socket, and the server's wake fd now that it takes part.
    fn client_of(server: &MemifWake, sock: &str) -> (MemifWake, RawFd) {
        let client = MemifWake::open(sock, false).unwrap();
        server.present.set(None);
        let fd = server.wake_fd().expect("the client takes part");
        (client, fd)
    }

    #[test]
    fn a_sleeping_side_is_woken_once_and_an_awake_one_not_at_all() {
        let (dir, sock) = socket_path("memif-wake");
        let mut server = MemifWake::open(&sock, true).unwrap();
        // Alone: the peer takes no part, no fd to block on.
        assert_eq!(server.wake_fd(), None);
        let (client, fd) = client_of(&server, &sock);
        // Awake: sending costs nothing and wakes nothing.
        client.notify();
        assert!(!readable(fd));
        // Asleep: the first frame wakes it, once.
        server.arm();
        client.notify();
        client.notify();
        assert!(readable(fd));
        server.disarm();
        assert!(!readable(fd), "drained");
        client.notify();
        assert!(!readable(fd), "awake again");
        // Armed, and awake again without a wake-up: nothing to read, none read.
        let reads = server.reads;
        server.arm();
        server.disarm();
        assert_eq!(server.reads, reads, "no system call");
        // Woken: the block's thread reads the datagram, and the disarm reads no more.
        server.arm();
        client.notify();
        assert!(readable(fd));
        server.woken(false, false);
        assert!(!readable(fd), "drained by the woken thread");
        let reads = server.reads;
        server.disarm();
        assert_eq!(server.reads, reads, "read already");
        // The peer cleared the flag but its datagram is not there yet: the disarm's read
        // finds nothing and owes nothing; the datagram, when it comes, ends the next block,
        // whose thread reads it.
        server.arm();
        client.flag(client.peer).store(0, Ordering::SeqCst);
        server.disarm();
        client.send_wake();
        assert!(readable(fd));
        server.arm();
        server.woken(false, false);
        server.disarm();
        assert!(!readable(fd), "the late datagram was read");
        // A peer that never sends it (it died after clearing the flag): later arms and
        // disarms make no system call for it.
        server.arm();
        client.flag(client.peer).store(0, Ordering::SeqCst);
        server.disarm();
        let reads = server.reads;
        for _ in 0..10 {
            server.arm();
            server.disarm();
        }
        assert_eq!(server.reads, reads, "nothing owed");
        // Armed again by another thread after the peer's wake-up, and the thread woken is
        // not the last one blocked (it does not disarm): it reads the datagram, so its next
        // block does not return at once.
        server.arm();
        client.notify();
        server.arm();
        assert!(readable(fd));
        server.woken(true, false);
        assert!(!readable(fd), "read by the woken thread");
        // Others stay blocked: the flag is set again, so the peer's next frames wake one of
        // them (the woken thread may be away in the application for long).
        client.notify();
        assert!(readable(fd), "the next frames wake the others");
        server.woken(true, false);
        server.disarm();
        assert!(!readable(fd));
        // The last thread out disarms: a datagram the peer sent for the flag set again is
        // read then.
        server.arm();
        client.notify();
        server.woken(true, false);
        client.notify();
        server.disarm();
        assert!(!readable(fd), "read at the disarm");
        drop(client);
        server.present.set(None);
        assert_eq!(server.wake_fd(), None, "the client went away");
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Events of `fd` in epoll instance `ep` right now.
    fn events(ep: RawFd) -> i32 {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        // SAFETY: our epoll instance and a local array of one event; no wait.
        unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 1, 0) }
    }

    #[test]
    fn edge_triggered_waiters_read_the_datagrams_only_before_they_could_fill_the_queue() {
        let (dir, sock) = socket_path("memif-wake-edge");
        let mut server = MemifWake::open(&sock, true).unwrap();
        let (client, fd) = client_of(&server, &sock);
        server.set_edge();
        // SAFETY: a new epoll instance of ours, the wake socket in it edge-triggered.
        let ep = unsafe { OwnedFd::from_raw_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC)) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: as above.
        let added = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(added, 0);
        // Each wake-up ends one block, and its datagram, left unread, ends no later one.
        let qlen: u32 = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .map_or(10, |s| s.trim().parse().unwrap());
        let cycles = 4 * qlen.max(4);
        let reads = server.reads;
        for i in 0..cycles {
            server.arm();
            client.notify();
            assert_eq!(events(ep.as_raw_fd()), 1, "wake-up {i} ends the block");
            assert_eq!(events(ep.as_raw_fd()), 0, "and no later one");
            server.woken(false, true);
            server.disarm();
        }
        // Read a few at a time, never letting the queue fill: no wake-up was lost.
        let read = server.reads - reads;
        assert!(
            read >= u64::from(cycles / server.read_at) && read <= u64::from(cycles / 2),
            "{read} reads for {cycles} wake-ups, reading at {}",
            server.read_at
        );
        assert_eq!(client.lost.get(), 0, "wake-ups lost to a full queue");
        // A datagram that ended no block (the look after arming found frames) would end the
        // next one for nothing: the disarm reads it.
        server.arm();
        client.notify();
        server.disarm();
        assert!(!readable(fd), "read at the disarm");
        assert_eq!(events(ep.as_raw_fd()), 0, "no block ends for it");
        // A block that watched the fd level-triggered (ppoll) reads what is there.
        server.arm();
        client.notify();
        assert!(readable(fd));
        server.woken(false, false);
        assert!(!readable(fd), "read for a level-triggered block");
        server.disarm();
        drop(client);
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
