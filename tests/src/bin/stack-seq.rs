//! `stack-seq`: the same sequence of socket calls on *accepted* TCP connections, printed one line
//! per call (`name ret errno [what came back]`), for comparing the kernel with mtcpshim's stack.
//! The calls are grouped into steps, each under a header line `step: NAME` that names the Linux
//! behaviour they check (`docs/linux-semantics.md` lists them), so a difference names the
//! behaviour that broke.
//!
//! `stack-seq server PORT` listens on 0.0.0.0:PORT, prints `ready`, and runs the sequence on two
//! connections from `stack-seq client ADDR PORT` (a kernel client, in another namespace). The two
//! sides move in lock step over the connection itself, so every call sees the same state on
//! every run: the server never races the client. `tests/tests/shim_semantics.rs` runs the server
//! with and without `LD_PRELOAD=libmtcpshim.so MTCP_PORTS=PORT` and compares the outputs.
//!
//! `stack-seq server6 PORT` listens on `::` (IPV6_V6ONLY off, as Linux's default) instead, and
//! runs the calls whose answers depend on the family (accept's address, getsockname,
//! getpeername, short buffers, SO_DOMAIN) on two connections from `stack-seq client6 ADDR PORT`,
//! an IPv4 client: Linux shows it as a v4-mapped IPv6 address (`::ffff:a.b.c.d`).
//!
//! Printed values are those a program could depend on and that do not vary between runs: fd
//! numbers only where the caller chose them (dup2), addresses by their last octet (both setups
//! use .1 for the client and .2 for the server), peer ports as "ephemeral".
//!
//! Client protocol (lines from the server): `A` -> send `0123456789`; `B` -> send `xyz`;
//! `R` -> send `rrrrr\n`; `say:TEXT` -> answer `ok:TEXT`; `sink:N` -> read N bytes, answer
//! `ok:sunk N`; `burst:N` -> send N chunks of 4,000 bytes, 20 ms apart (no answer); end of
//! stream -> answer `eof` and close.
//! Second connection: send `abc`; on `connect` open one more connection (kept); on `data` send
//! `xyz`; on `rstq` open one more and reset it at once, then send `reset\n`; on `late` open one
//! more, wait for its end of stream, send `xyz` on it, read again (2 s at most), then send what
//! that read gave; on `go` reset (SO_LINGER 0).
//! client6: first connection as the first above; at its end of stream, a second one, which
//! waits for the server's end of stream.

use std::ffi::c_int;
use std::io::{BufRead, BufReader, Write};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, TcpStream};
use std::ptr::null_mut;
use std::time::{Duration, Instant};

use libc::{c_void, iovec, mmsghdr, pollfd, sockaddr_in, socklen_t};
use mtcp_tests::tcpinfo::tcp_info_of;

const SENTINEL: c_int = 7777;

fn errno() -> c_int {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: c_int) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v }
}

/// Starts a step: a header line `step: NAME` naming the Linux behaviour the calls after it
/// check, up to the next header. The comparing test names the first step whose lines differ.
fn step(name: &str) {
    println!("{}{name}", mtcp_tests::steps::STEP_PREFIX);
}

/// Runs one call with errno set to the sentinel, prints `name ret errno extra`.
fn call<T: Copy + std::fmt::Display>(name: &str, f: impl FnOnce() -> T) -> T {
    set_errno(SENTINEL);
    let r = f();
    let e = errno();
    println!("{name} {r} {e}");
    r
}

/// As `call`, for calls that return a new fd: only whether they did (the shim's own fds shift
/// the numbers the kernel hands out).
fn call_fd(name: &str, f: impl FnOnce() -> c_int) -> c_int {
    set_errno(SENTINEL);
    let r = f();
    let e = errno();
    let shown = if r >= 0 {
        "fd".to_string()
    } else {
        r.to_string()
    };
    println!("{name} {shown} {e}");
    r
}

/// A new epoll set (epoll_create1) with each of `fds` added for EPOLLIN with its data: the
/// calls printed.
fn epoll_reading(fds: &[(c_int, u64)]) -> c_int {
    // SAFETY: plain calls on the caller's fds and a local event.
    unsafe {
        let ep = call_fd("epoll_create1", || libc::epoll_create1(libc::EPOLL_CLOEXEC));
        for &(fd, data) in fds {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: data,
            };
            call("epoll_ctl(ADD IN)", || {
                libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev)
            });
        }
        ep
    }
}

/// As `call`, with a note after the errno (what the call wrote back).
fn note(what: impl std::fmt::Display) {
    println!("  -> {what}");
}

fn last_octet(sin: &sockaddr_in) -> u8 {
    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).octets()[3]
}

fn sockaddr_note(sin: &sockaddr_in, len: socklen_t, port: Option<u16>) {
    let p = u16::from_be(sin.sin_port);
    let shown = match port {
        Some(want) if p == want => "listening".to_string(),
        _ if p >= 1024 => "ephemeral".to_string(),
        _ => p.to_string(),
    };
    note(format!(
        "family={} addr=.{} port={shown} len={len}",
        sin.sin_family,
        last_octet(sin)
    ));
}

/// Waits (not printed) until `fd` has something to read or a condition, 10 s at most.
fn wait_in(fd: c_int) -> i16 {
    let mut p = pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd.
    unsafe { libc::poll(&mut p, 1, 10_000) };
    p.revents
}

/// Reads one line (not printed call by call), waiting for it.
fn read_line(fd: c_int) -> String {
    let mut line = Vec::new();
    loop {
        wait_in(fd);
        let mut b = 0u8;
        // SAFETY: one byte into a local.
        let r = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if r <= 0 || b == b'\n' {
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(b);
    }
}

/// On a connection that was reset: its poll bits, then two reads (the error, then EOF).
fn after_reset(fd: c_int, what: &str) {
    let ev = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP;
    poll_one(fd, ev, 0, &format!("poll({what})"));
    let mut b = [0u8; 16];
    // SAFETY: reads into a local buffer.
    call(&format!("read({what})"), || unsafe {
        libc::read(fd, b.as_mut_ptr().cast(), 16)
    });
    // SAFETY: as above.
    call(&format!("read({what}, again)"), || unsafe {
        libc::read(fd, b.as_mut_ptr().cast(), 16)
    });
}

fn send_line(fd: c_int, s: &str) {
    let data = format!("{s}\n");
    let mut done = 0;
    while done < data.len() {
        // SAFETY: our buffer, from `done` on.
        let r = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        // A write that blocks (the peer is still draining a sink) may be interrupted by the
        // signals of `signal_interrupts`, whichever thread writes: it goes on.
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        assert!(r > 0, "write of a control line: {r}, errno {}", errno());
        done += r as usize;
    }
}

fn getsockopt_int(fd: c_int, level: c_int, name: c_int, label: &str) {
    let mut v: c_int = -1;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int and its size.
    call(label, || unsafe {
        libc::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len)
    });
    note(format!("value={v} len={len}"));
}

/// getsockopt(TCP_INFO) and TCP_MAXSEG of `fd`: the return values, the lengths written, the
/// state, and whether the RTT and the MSS are plausible (their values differ between the
/// kernel and the stack).
fn tcp_info_note(fd: c_int) {
    let size = size_of::<libc::tcp_info>() as socklen_t;
    let (mut info, mut len) = (None, 0);
    call("getsockopt(TCP_INFO)", || {
        let (r, i, l) = tcp_info_of(fd);
        (info, len) = (Some(i), l);
        r
    });
    let info = info.expect("getsockopt ran");
    let mss = info.tcpi_snd_mss;
    note(format!(
        "len_is_sizeof={} state={} rtt_set={} snd_mss_plausible={}",
        len == size,
        info.tcpi_state,
        info.tcpi_rtt > 0,
        (500..=65535).contains(&mss)
    ));
    let mut v: c_int = -1;
    let mut len = size_of::<c_int>() as socklen_t;
    // SAFETY: an int and its size.
    call("getsockopt(TCP_MAXSEG)", || unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            (&mut v as *mut c_int).cast(),
            &mut len,
        )
    });
    note(format!(
        "len={len} plausible={} equals_snd_mss={}",
        (500..=65535).contains(&v),
        v as u32 == mss
    ));
}

fn setsockopt_int(fd: c_int, level: c_int, name: c_int, v: c_int, label: &str) {
    // SAFETY: an int and its size.
    call(label, || unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const c_int).cast(),
            size_of::<c_int>() as socklen_t,
        )
    });
}

/// setsockopt of a struct (`T`: a timeval, a linger), then getsockopt of it back, printed as
/// two numbers.
fn set_get_pair<T: Copy>(fd: c_int, name: c_int, v: T, label: &str, show: impl Fn(&T) -> String) {
    // SAFETY: a `T` and its size.
    call(&format!("setsockopt({label})"), || unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&v as *const T).cast(),
            size_of::<T>() as socklen_t,
        )
    });
    let mut back = v;
    let mut len = size_of::<T>() as socklen_t;
    // SAFETY: as above.
    call(&format!("getsockopt({label})"), || unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut back as *mut T).cast(),
            &mut len,
        )
    });
    note(format!("{} len={len}", show(&back)));
}

fn timeval_ms(ms: i64) -> libc::timeval {
    libc::timeval {
        tv_sec: ms / 1000,
        tv_usec: (ms % 1000) * 1000,
    }
}

fn show_timeval(t: &libc::timeval) -> String {
    format!("tv={}.{:06}", t.tv_sec, t.tv_usec)
}

/// A blocking receive that should time out: its result, and whether it waited about `ms`.
fn timed_recv(fd: c_int, len: usize, flags: c_int, ms: u64, label: &str) {
    let start = std::time::Instant::now();
    recv_note(fd, len, flags, label);
    let waited = start.elapsed();
    let ok = waited >= std::time::Duration::from_millis(ms * 9 / 10)
        && waited < std::time::Duration::from_millis(ms * 5 + 500);
    note(format!("waited about {ms} ms: {ok}"));
}

fn poll_one(fd: c_int, events: i16, timeout: c_int, label: &str) {
    let mut p = pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one pollfd.
    call(label, || unsafe { libc::poll(&mut p, 1, timeout) });
    note(format!("revents={:#x}", p.revents));
}

fn select_one(fd: c_int, read: bool, timeout_us: i64, label: &str) {
    select_tv(fd, read, 0, timeout_us, label);
}

fn select_tv(fd: c_int, read: bool, sec: libc::time_t, us: libc::suseconds_t, label: &str) {
    // SAFETY: zeroed fd_sets are empty.
    let mut set: libc::fd_set = unsafe { zeroed() };
    // SAFETY: fd < FD_SETSIZE in these tests.
    unsafe { libc::FD_SET(fd, &mut set) };
    let mut tv = libc::timeval {
        tv_sec: sec,
        tv_usec: us,
    };
    let (r, w) = if read {
        (&mut set as *mut libc::fd_set, null_mut())
    } else {
        (null_mut(), &mut set as *mut libc::fd_set)
    };
    // SAFETY: valid sets and timeout.
    call(label, || unsafe {
        libc::select(fd + 1, r, w, null_mut(), &mut tv)
    });
    // SAFETY: as above.
    note(format!("isset={}", unsafe { libc::FD_ISSET(fd, &set) }));
}

fn recv_note(fd: c_int, len: usize, flags: c_int, label: &str) {
    let mut buf = vec![0u8; len];
    // SAFETY: our buffer.
    let r = call(label, || unsafe {
        libc::recv(fd, buf.as_mut_ptr().cast(), len, flags)
    });
    if r > 0 {
        note(format!(
            "data={:?}",
            String::from_utf8_lossy(&buf[..r as usize])
        ));
    }
}

/// What a blocking call in another thread did: its return value and errno, when it started
/// and when it returned.
struct Timed {
    ret: isize,
    errno: c_int,
    start: Instant,
    end: Instant,
}

impl Timed {
    /// Runs `f` (a blocking call) with errno set to the sentinel, timing it.
    fn run(f: impl FnOnce() -> isize) -> Timed {
        set_errno(SENTINEL);
        let start = Instant::now();
        let ret = f();
        let errno = errno();
        Timed {
            ret,
            errno,
            start,
            end: Instant::now(),
        }
    }

    /// Whether one of `arrivals` came while the call blocked.
    fn saw(&self, arrivals: &[Instant]) -> bool {
        arrivals.iter().any(|&t| t > self.start && t < self.end)
    }
}

/// Chunks of the client's burst (`burst:N`): N of [`BURST_CHUNK`] bytes, 20 ms apart (400 ms,
/// longer than the 300 ms the sleep and the pipe's read block).
const BURST_CHUNKS: usize = 20;
const BURST_CHUNK: usize = 4000;

/// The byte at `i` of the client's burst.
fn burst_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

/// On the blocking connection `fd`: the client sends a burst of data, paced over 400 ms; while
/// it arrives through the stack (this thread receives it with blocking recvs), one thread sleeps
/// 300 ms (nanosleep) and another blocks in read() on a pipe that a third writes 300 ms later.
/// Neither call is interrupted (0, and the pipe's 5 bytes, no EINTR), each lasts until its end
/// (the 300 ms, the write), and frames arrived while each blocked.
fn sleep_and_pipe_read_during_a_burst(fd: c_int) {
    let mut p = [-1 as c_int; 2];
    // SAFETY: room for the pipe's two fds.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0, "pipe");
    let (rd, wr) = (p[0], p[1]);
    send_line(fd, &format!("burst:{BURST_CHUNKS}"));
    let sleeper = std::thread::spawn(|| {
        Timed::run(|| {
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 300_000_000,
            };
            // SAFETY: a timespec; no remainder wanted.
            unsafe { libc::nanosleep(&ts, null_mut()) as isize }
        })
    });
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 16];
        // SAFETY: reads into a local buffer.
        let t = Timed::run(|| unsafe { libc::read(rd, buf.as_mut_ptr().cast(), buf.len()) });
        let data = String::from_utf8_lossy(&buf[..t.ret.max(0) as usize]).into_owned();
        (t, data)
    });
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let written = Instant::now();
        // SAFETY: five bytes of a constant.
        let r = unsafe { libc::write(wr, b"pipe!".as_ptr().cast(), 5) };
        assert_eq!(r, 5, "write to the pipe");
        written
    });
    // The burst, through the stack, with blocking recvs; when each part came.
    let total = BURST_CHUNKS * BURST_CHUNK;
    let mut got = Vec::with_capacity(total);
    let mut arrivals = Vec::new();
    let mut buf = vec![0u8; 65536];
    set_errno(SENTINEL);
    let mut last = 0;
    while got.len() < total {
        // A burst that does not come within 10 s: what this side knows of the connection, on
        // stderr (was the control line sent, acknowledged, held?), then wait on.
        let mut p = pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        if unsafe { libc::poll(&mut p, 1, 10_000) } == 0 {
            eprintln!(
                "server: no burst data for 10 s after {} bytes; {}",
                got.len(),
                mtcp_tests::tcpinfo::describe(fd)
            );
        }
        // SAFETY: our buffer.
        last = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len().min(total - got.len()),
                0,
            )
        };
        if last <= 0 {
            break;
        }
        arrivals.push(Instant::now());
        got.extend_from_slice(&buf[..last as usize]);
    }
    let recv_errno = errno();
    let slept = sleeper.join().expect("the sleeping thread");
    let (read, data) = reader.join().expect("the reading thread");
    let written = writer.join().expect("the writing thread");
    // SAFETY: the pipe's fds, closed once.
    unsafe {
        libc::close(rd);
        libc::close(wr);
    }
    println!("nanosleep(300 ms) {} {}", slept.ret, slept.errno);
    note(format!(
        "lasted 300 ms: {}; frames arrived meanwhile: {}",
        slept.end - slept.start >= Duration::from_millis(300),
        slept.saw(&arrivals)
    ));
    println!(
        "read(pipe, written 300 ms later) {} {}",
        read.ret, read.errno
    );
    note(format!(
        "data={data:?}; returned after the write: {}; frames arrived meanwhile: {}",
        read.end >= written,
        read.saw(&arrivals)
    ));
    let in_order = got.iter().enumerate().all(|(i, &b)| b == burst_byte(i));
    println!(
        "recv(blocking, until the burst's {total} bytes) {} {recv_errno}",
        if last > 0 { got.len() as isize } else { last }
    );
    note(format!("received={} in order: {in_order}", got.len()));
}

/// setsockopt of a string option (TCP_CONGESTION), `v` as given (its length is optlen).
fn set_name(fd: c_int, level: c_int, name: c_int, v: &[u8], label: &str) {
    // SAFETY: the bytes and their length.
    call(label, || unsafe {
        libc::setsockopt(fd, level, name, v.as_ptr().cast(), v.len() as socklen_t)
    });
}

/// getsockopt of a string option: the name up to its NUL, and the length written.
fn get_name(fd: c_int, level: c_int, name: c_int, label: &str) {
    let mut b = [0u8; 16];
    let mut len = b.len() as socklen_t;
    // SAFETY: a local buffer and its size.
    call(label, || unsafe {
        libc::getsockopt(fd, level, name, b.as_mut_ptr().cast(), &mut len)
    });
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    note(format!(
        "name={:?} len={len}",
        String::from_utf8_lossy(&b[..end])
    ));
}

/// TCP_INFO's count of bytes queued and not yet sent.
fn notsent_bytes(fd: c_int) -> u32 {
    tcp_info_of(fd).1.tcpi_notsent_bytes
}

/// setsockopt(SO_LINGER on, `secs`).
fn set_linger(fd: c_int, secs: c_int, label: &str) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: secs,
    };
    // SAFETY: a linger struct and its size.
    call(label, || unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            size_of::<libc::linger>() as socklen_t,
        )
    });
}

extern "C" fn on_usr1(_: c_int) {}

/// Installs `on_usr1` for SIGUSR1, with SA_RESTART or without.
fn usr1_handler(restart: bool) {
    // SAFETY: a handler that does nothing; all-zero is a valid sigaction to fill.
    unsafe {
        let mut sa: libc::sigaction = zeroed();
        sa.sa_sigaction = on_usr1 as extern "C" fn(c_int) as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigaction(libc::SIGUSR1, &sa, null_mut());
    }
}

/// Runs `f` (a blocking call on this thread) while another thread sends this thread SIGUSR1
/// every 100 ms until `f` returns (the first one may come before `f` blocks). Returns what `f`
/// returned, with errno.
fn with_signals(f: impl FnOnce() -> isize) -> (isize, c_int) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // SAFETY: this thread's id.
    let me = unsafe { libc::pthread_self() };
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let signaller = std::thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            if !d.load(Ordering::SeqCst) {
                // SAFETY: the calling thread, alive until `done` is set and this one joined.
                unsafe { libc::pthread_kill(me, libc::SIGUSR1) };
            }
        }
    });
    set_errno(SENTINEL);
    let r = f();
    let e = errno();
    done.store(true, Ordering::SeqCst);
    signaller.join().expect("the signalling thread");
    (r, e)
}

/// A blocking recv with nothing to read and a SIGUSR1 handler without SA_RESTART: -1 EINTR.
/// With SA_RESTART: the recv goes on through the signals and returns the peer's `xyz`
/// (asked for 300 ms later). An epoll_wait is interrupted either way (Linux never restarts it).
fn signal_interrupts(fd: c_int) {
    let mut b = [0u8; 16];
    usr1_handler(false);
    // SAFETY: our buffer.
    let (r, e) = with_signals(|| unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 16, 0) });
    println!("recv(blocking, SIGUSR1 without SA_RESTART) {r} {e}");
    usr1_handler(true);
    let asker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        send_line(fd, "B");
    });
    // SAFETY: as above.
    let (r, e) = with_signals(|| unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 16, 0) });
    asker.join().expect("the asking thread");
    println!("recv(blocking, SIGUSR1 with SA_RESTART) {r} {e}");
    note(format!(
        "data={:?}",
        String::from_utf8_lossy(&b[..r.max(0) as usize])
    ));
    // SAFETY: a fresh epoll instance holding the idle connection.
    let ep = unsafe { libc::epoll_create1(0) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: a valid epoll fd and event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: room for 4 events.
    let (r, e) =
        with_signals(|| unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 5000) } as isize);
    println!("epoll_wait(5 s, SIGUSR1 with SA_RESTART) {r} {e}");
    // SAFETY: the epoll fd made above; SIGUSR1 back to its default.
    unsafe {
        libc::close(ep);
        libc::signal(libc::SIGUSR1, libc::SIG_DFL);
    }
}

fn server(port: u16) {
    // SAFETY: plain socket calls on fds this program owns; every pointer is to a local.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(s >= 0);
        let one: c_int = 1;
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const c_int).cast(),
            4,
        );
        let mut sin: sockaddr_in = zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        let slen = size_of::<sockaddr_in>() as socklen_t;
        step("bind and listen on the port");
        call("bind", || {
            libc::bind(s, (&sin as *const sockaddr_in).cast(), slen)
        });
        call("listen", || libc::listen(s, 16));
        println!("ready");
        let _ = std::io::stdout().flush();

        // --- connection 1 ----------------------------------------------------------------
        step("a listener with a connection queued polls POLLIN");
        poll_one(s, libc::POLLIN, 10_000, "poll(listener)");
        step("accept4(SOCK_CLOEXEC) gives the peer address and sets FD_CLOEXEC");
        let mut peer: sockaddr_in = zeroed();
        let mut plen = slen;
        let c = call_fd("accept4(CLOEXEC)", || {
            libc::accept4(
                s,
                (&mut peer as *mut sockaddr_in).cast(),
                &mut plen,
                libc::SOCK_CLOEXEC,
            )
        });
        sockaddr_note(&peer, plen, None);
        assert!(c >= 0, "accept failed");
        call("fcntl(F_GETFD)", || libc::fcntl(c, libc::F_GETFD));
        step("getsockname and getpeername give the connection addresses; a short buffer truncates and returns the full length");
        let mut a: sockaddr_in = zeroed();
        let mut alen = slen;
        call("getsockname", || {
            libc::getsockname(c, (&mut a as *mut sockaddr_in).cast(), &mut alen)
        });
        sockaddr_note(&a, alen, Some(port));
        let mut alen = slen;
        call("getpeername", || {
            libc::getpeername(c, (&mut a as *mut sockaddr_in).cast(), &mut alen)
        });
        sockaddr_note(&a, alen, None);
        let mut short = 4 as socklen_t;
        call("getpeername(short buffer)", || {
            libc::getpeername(c, (&mut a as *mut sockaddr_in).cast(), &mut short)
        });
        note(format!("len={short}"));
        step("getsockopt on a new connection: SO_TYPE, SO_ERROR, SO_KEEPALIVE");
        getsockopt_int(c, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)");
        getsockopt_int(c, libc::SOL_SOCKET, libc::SO_ERROR, "getsockopt(SO_ERROR)");
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            "getsockopt(SO_KEEPALIVE)",
        );
        step("setsockopt of TCP_NODELAY and keepalive options; TCP_KEEPIDLE 0 and a short optlen are EINVAL");
        setsockopt_int(
            c,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            1,
            "setsockopt(TCP_NODELAY)",
        );
        setsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            1,
            "setsockopt(SO_KEEPALIVE)",
        );
        setsockopt_int(
            c,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            0,
            "setsockopt(TCP_KEEPIDLE=0)",
        );
        setsockopt_int(
            c,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPIDLE,
            60,
            "setsockopt(TCP_KEEPIDLE)",
        );
        setsockopt_int(
            c,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            10,
            "setsockopt(TCP_KEEPINTVL)",
        );
        setsockopt_int(
            c,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            3,
            "setsockopt(TCP_KEEPCNT)",
        );
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            "getsockopt(SO_KEEPALIVE)",
        );
        call("setsockopt(short)", || {
            libc::setsockopt(
                c,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const c_int).cast(),
                2,
            )
        });
        step("getsockopt reads back what setsockopt set (TCP_USER_TIMEOUT too; -1 is EINVAL); unknown options are ENOPROTOOPT; the listener's SO_REUSEADDR is inherited");
        let tcp = libc::IPPROTO_TCP;
        getsockopt_int(c, tcp, libc::TCP_NODELAY, "getsockopt(TCP_NODELAY)");
        getsockopt_int(c, tcp, libc::TCP_KEEPIDLE, "getsockopt(TCP_KEEPIDLE)");
        getsockopt_int(c, tcp, libc::TCP_KEEPINTVL, "getsockopt(TCP_KEEPINTVL)");
        getsockopt_int(c, tcp, libc::TCP_KEEPCNT, "getsockopt(TCP_KEEPCNT)");
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            "getsockopt(SO_REUSEADDR)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_USER_TIMEOUT,
            5000,
            "setsockopt(TCP_USER_TIMEOUT)",
        );
        getsockopt_int(
            c,
            tcp,
            libc::TCP_USER_TIMEOUT,
            "getsockopt(TCP_USER_TIMEOUT)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_USER_TIMEOUT,
            -1,
            "setsockopt(TCP_USER_TIMEOUT=-1)",
        );
        setsockopt_int(c, libc::SOL_SOCKET, 9999, 1, "setsockopt(SOL_SOCKET, 9999)");
        getsockopt_int(c, libc::SOL_SOCKET, 9999, "getsockopt(SOL_SOCKET, 9999)");
        setsockopt_int(c, tcp, 9999, 1, "setsockopt(IPPROTO_TCP, 9999)");
        setsockopt_int(c, 555, 1, 1, "setsockopt(level 555)");
        let mut v: c_int = -1;
        let mut short = 2 as socklen_t;
        call("getsockopt(TCP_NODELAY, 2 bytes)", || {
            libc::getsockopt(
                c,
                tcp,
                libc::TCP_NODELAY,
                (&mut v as *mut c_int).cast(),
                &mut short,
            )
        });
        note(format!("len={short}"));
        step("SO_RCVBUF, SO_SNDBUF, TCP_QUICKACK, TCP_MAXSEG, IP_TTL and IP_TOS are taken on a connection; SO_RCVBUF, SO_SNDBUF, IP_TTL and IP_TOS read back as Linux reads them");
        let (ip, tcp) = (libc::IPPROTO_IP, libc::IPPROTO_TCP);
        // (The burst and the sinks further on then go through a window of this buffer.)
        let sol = libc::SOL_SOCKET;
        setsockopt_int(
            c,
            sol,
            libc::SO_RCVBUF,
            20000,
            "setsockopt(SO_RCVBUF 20000)",
        );
        getsockopt_int(c, sol, libc::SO_RCVBUF, "getsockopt(SO_RCVBUF)");
        setsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            20000,
            "setsockopt(SO_SNDBUF 20000)",
        );
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            "getsockopt(SO_SNDBUF)",
        );
        setsockopt_int(c, tcp, libc::TCP_QUICKACK, 1, "setsockopt(TCP_QUICKACK 1)");
        setsockopt_int(c, tcp, libc::TCP_QUICKACK, 0, "setsockopt(TCP_QUICKACK 0)");
        setsockopt_int(
            c,
            tcp,
            libc::TCP_MAXSEG,
            1200,
            "setsockopt(TCP_MAXSEG 1200)",
        );
        setsockopt_int(c, tcp, libc::TCP_MAXSEG, 20, "setsockopt(TCP_MAXSEG 20)");
        setsockopt_int(c, ip, libc::IP_TTL, 9, "setsockopt(IP_TTL 9)");
        getsockopt_int(c, ip, libc::IP_TTL, "getsockopt(IP_TTL)");
        setsockopt_int(c, ip, libc::IP_TTL, -1, "setsockopt(IP_TTL -1)");
        getsockopt_int(c, ip, libc::IP_TTL, "getsockopt(IP_TTL, the default)");
        setsockopt_int(c, ip, libc::IP_TTL, 256, "setsockopt(IP_TTL 256)");
        setsockopt_int(c, ip, libc::IP_TOS, 0x13, "setsockopt(IP_TOS 0x13)");
        getsockopt_int(c, ip, libc::IP_TOS, "getsockopt(IP_TOS)");
        setsockopt_int(c, ip, libc::IP_TOS, 0, "setsockopt(IP_TOS 0)");

        step("TCP_CONGESTION, TCP_WINDOW_CLAMP, TCP_NOTSENT_LOWAT, TCP_LINGER2, SO_PRIORITY and TCP_SYNCNT on a connection: taken and read back as Linux does, an unknown algorithm is ENOENT, a clamp of 0 EINVAL");
        set_name(
            c,
            tcp,
            libc::TCP_CONGESTION,
            b"reno",
            "setsockopt(TCP_CONGESTION reno)",
        );
        get_name(c, tcp, libc::TCP_CONGESTION, "getsockopt(TCP_CONGESTION)");
        set_name(
            c,
            tcp,
            libc::TCP_CONGESTION,
            b"no-such-cc",
            "setsockopt(TCP_CONGESTION no-such-cc)",
        );
        set_name(
            c,
            tcp,
            libc::TCP_CONGESTION,
            b"cubic\0",
            "setsockopt(TCP_CONGESTION cubic)",
        );
        get_name(
            c,
            tcp,
            libc::TCP_CONGESTION,
            "getsockopt(TCP_CONGESTION, again)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_WINDOW_CLAMP,
            0,
            "setsockopt(TCP_WINDOW_CLAMP 0)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_WINDOW_CLAMP,
            100,
            "setsockopt(TCP_WINDOW_CLAMP 100)",
        );
        getsockopt_int(
            c,
            tcp,
            libc::TCP_WINDOW_CLAMP,
            "getsockopt(TCP_WINDOW_CLAMP)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_WINDOW_CLAMP,
            30000,
            "setsockopt(TCP_WINDOW_CLAMP 30000)",
        );
        getsockopt_int(
            c,
            tcp,
            libc::TCP_WINDOW_CLAMP,
            "getsockopt(TCP_WINDOW_CLAMP, again)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_NOTSENT_LOWAT,
            16384,
            "setsockopt(TCP_NOTSENT_LOWAT 16384)",
        );
        getsockopt_int(
            c,
            tcp,
            libc::TCP_NOTSENT_LOWAT,
            "getsockopt(TCP_NOTSENT_LOWAT)",
        );
        setsockopt_int(
            c,
            tcp,
            libc::TCP_NOTSENT_LOWAT,
            -1,
            "setsockopt(TCP_NOTSENT_LOWAT -1)",
        );
        setsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            3,
            "setsockopt(SO_PRIORITY 3)",
        );
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_PRIORITY,
            "getsockopt(SO_PRIORITY)",
        );
        setsockopt_int(c, tcp, libc::TCP_SYNCNT, 3, "setsockopt(TCP_SYNCNT 3)");
        setsockopt_int(c, tcp, libc::TCP_LINGER2, 5, "setsockopt(TCP_LINGER2 5)");
        getsockopt_int(c, tcp, libc::TCP_LINGER2, "getsockopt(TCP_LINGER2)");
        setsockopt_int(c, tcp, libc::TCP_LINGER2, -1, "setsockopt(TCP_LINGER2 -1)");
        getsockopt_int(
            c,
            tcp,
            libc::TCP_LINGER2,
            "getsockopt(TCP_LINGER2, negative)",
        );
        setsockopt_int(c, tcp, libc::TCP_LINGER2, 0, "setsockopt(TCP_LINGER2 0)");

        step("TCP_CORK holds a partial segment back until uncorked: TCP_INFO counts it as not sent, and the peer answers once it is uncorked");
        setsockopt_int(c, tcp, libc::TCP_CORK, 1, "setsockopt(TCP_CORK 1)");
        getsockopt_int(c, tcp, libc::TCP_CORK, "getsockopt(TCP_CORK)");
        send_line(c, "say:corked");
        note(format!("not sent: {} bytes", notsent_bytes(c)));
        setsockopt_int(c, tcp, libc::TCP_CORK, 0, "setsockopt(TCP_CORK 0)");
        note(read_line(c));

        step("TCP_CORK and TCP_NODELAY read back 1 for any non-zero value and 0 for 0, through a dup too; a short value is EINVAL and changes nothing");
        let d = call_fd("dup", || libc::dup(c));
        for name in [libc::TCP_CORK, libc::TCP_NODELAY] {
            setsockopt_int(c, tcp, name, 7, "setsockopt(7)");
            getsockopt_int(c, tcp, name, "getsockopt");
            getsockopt_int(d, tcp, name, "getsockopt through the dup");
            call("setsockopt(2 bytes)", || {
                libc::setsockopt(c, tcp, name, (&0 as *const c_int).cast(), 2)
            });
            getsockopt_int(c, tcp, name, "getsockopt after the short value");
            setsockopt_int(d, tcp, name, 0, "setsockopt(0) through the dup");
            getsockopt_int(c, tcp, name, "getsockopt");
        }
        call("close(dup)", || libc::close(d));

        step("SO_LINGER, SO_RCVTIMEO and SO_SNDTIMEO read back as set (rounded to the kernel's tick)");
        let lin = |on, secs| libc::linger {
            l_onoff: on,
            l_linger: secs,
        };
        let show_lin = |l: &libc::linger| format!("onoff={} linger={}", l.l_onoff, l.l_linger);
        set_get_pair(c, libc::SO_LINGER, lin(1, 5), "SO_LINGER 1 5", show_lin);
        set_get_pair(c, libc::SO_LINGER, lin(0, 0), "SO_LINGER off", show_lin);
        set_get_pair(
            c,
            libc::SO_RCVTIMEO,
            timeval_ms(1500),
            "SO_RCVTIMEO 1.5 s",
            show_timeval,
        );
        let tick = libc::timeval {
            tv_sec: 0,
            tv_usec: 1,
        };
        set_get_pair(c, libc::SO_SNDTIMEO, tick, "SO_SNDTIMEO 1 us", show_timeval);
        set_get_pair(
            c,
            libc::SO_RCVTIMEO,
            timeval_ms(0),
            "SO_RCVTIMEO 0",
            show_timeval,
        );
        set_get_pair(
            c,
            libc::SO_SNDTIMEO,
            timeval_ms(0),
            "SO_SNDTIMEO 0",
            show_timeval,
        );

        step("fcntl(F_SETFL, O_NONBLOCK) shows in F_GETFL");
        // Non-blocking, nothing to read yet.
        let fl = call("fcntl(F_GETFL)", || libc::fcntl(c, libc::F_GETFL));
        call("fcntl(F_SETFL O_NONBLOCK)", || {
            libc::fcntl(c, libc::F_SETFL, fl | libc::O_NONBLOCK)
        });
        call("fcntl(F_GETFL)", || {
            libc::fcntl(c, libc::F_GETFL) & libc::O_NONBLOCK
        });
        step("non-blocking read with nothing buffered is EAGAIN, a zero-length read returns 0, FIONREAD 0");
        let mut b = [0u8; 16];
        call("read(empty)", || libc::read(c, b.as_mut_ptr().cast(), 16));
        call("recv(empty, MSG_DONTWAIT)", || {
            libc::recv(c, b.as_mut_ptr().cast(), 16, libc::MSG_DONTWAIT)
        });
        call("read(len 0)", || libc::read(c, b.as_mut_ptr().cast(), 0));
        let mut n: c_int = -1;
        call("ioctl(FIONREAD)", || libc::ioctl(c, libc::FIONREAD, &mut n));
        note(format!("value={n}"));
        step("zero bytes: readv returns 0 at once; recv and recvmsg wait for data like a read of one byte (EAGAIN when non-blocking)");
        let mut empty_iov = iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 0,
        };
        call("readv(len 0)", || libc::readv(c, &empty_iov, 1));
        call("recv(len 0)", || libc::recv(c, b.as_mut_ptr().cast(), 0, 0));
        call("recv(NULL, len 0)", || libc::recv(c, null_mut(), 0, 0));
        let mut mh: libc::msghdr = zeroed();
        mh.msg_iov = &mut empty_iov;
        mh.msg_iovlen = 1;
        call("recvmsg(len 0)", || libc::recvmsg(c, &mut mh, 0));
        step("recv(MSG_OOB) with no urgent data is EINVAL");
        call("recv(MSG_OOB)", || {
            libc::recv(c, b.as_mut_ptr().cast(), 16, libc::MSG_OOB)
        });
        step("an idle connection is writable, not readable: poll and select, also beside a kernel fd");
        poll_one(c, libc::POLLIN | libc::POLLOUT, 0, "poll(c, IN|OUT, 0)");
        select_one(c, true, 0, "select(read, 0)");
        select_one(c, false, 0, "select(write, 0)");
        // A kernel fd beside ours: a pipe with a byte in it.
        let mut pipe = [0 as c_int; 2];
        libc::pipe(pipe.as_mut_ptr());
        libc::write(pipe[1], b"p".as_ptr().cast(), 1);
        let mut two = [
            pollfd {
                fd: c,
                events: libc::POLLIN,
                revents: 0,
            },
            pollfd {
                fd: pipe[0],
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        call("poll(c + pipe, 0)", || libc::poll(two.as_mut_ptr(), 2, 0));
        note(format!(
            "revents={:#x},{:#x}",
            two[0].revents, two[1].revents
        ));
        step("select with sets larger than FD_SETSIZE (nfds 2048) sees the connection writable");
        // A program that sizes its sets for its nfds: 2048 bits, the connection's set.
        let mut big = [0 as libc::c_ulong; 2048 / 64];
        big[c as usize / 64] |= 1 << (c as usize % 64);
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        call("select(2048, write)", || {
            libc::select(
                2048,
                null_mut(),
                big.as_mut_ptr().cast(),
                null_mut(),
                &mut tv,
            )
        });
        note(format!(
            "isset={} others={}",
            big[c as usize / 64] >> (c as usize % 64) & 1,
            big.iter().map(|w| w.count_ones()).sum::<u32>() - 1
        ));

        step("arrived data makes the connection readable and FIONREAD counts it");
        // Data arrives.
        send_line(c, "A");
        poll_one(c, libc::POLLIN, 10_000, "poll(c, IN, 10s)");
        let mut n: c_int = -1;
        while n < 10 {
            wait_in(c);
            libc::ioctl(c, libc::FIONREAD, &mut n);
        }
        call("ioctl(FIONREAD)", || libc::ioctl(c, libc::FIONREAD, &mut n));
        note(format!("value={n}"));
        select_one(c, true, 1_000_000, "select(read, 1s)");
        // A timeout of centuries (beyond 2^64 ns): the kernel saturates its deadline.
        select_tv(c, true, 1 << 40, 0, "select(read, 2^40 s)");
        recv_note(c, 0, 0, "recv(len 0, data buffered)");
        step("epoll_wait with room for one event takes turns between a readable connection and a readable kernel fd (level-triggered)");
        let ep = epoll_reading(&[(c, 1), (pipe[0], 2)]);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut one = [libc::epoll_event { events: 0, u64: 0 }];
            call("epoll_wait(room 1, 0)", || {
                libc::epoll_wait(ep, one.as_mut_ptr(), 1, 0)
            });
            seen.push(one[0].u64);
        }
        seen.sort_unstable();
        seen.dedup();
        note(format!("reported={seen:?}"));
        libc::close(ep);
        step("a pipe that becomes readable beside a connection that stays readable is reported (level-triggered epoll_wait: no starvation)");
        let mut late = [0 as c_int; 2];
        libc::pipe(late.as_mut_ptr());
        let ep = epoll_reading(&[(c, 1), (late[0], 2)]);
        let wait8 = |timeout: c_int| {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 8];
            let n = libc::epoll_wait(ep, evs.as_mut_ptr(), 8, timeout);
            let mut got: Vec<u64> = evs[..n.max(0) as usize].iter().map(|e| e.u64).collect();
            got.sort_unstable();
            got
        };
        note(format!("before={:?}", wait8(0)));
        libc::write(late[1], b"p".as_ptr().cast(), 1);
        // Each call reports the connection at once; the pipe must follow within a few of
        // them (the shim looks at the kernel's fds at most every 100 µs while ours keep the
        // loop busy).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut with_pipe = Vec::new();
        while Instant::now() < deadline {
            let got = wait8(1000);
            if got.contains(&2) {
                with_pipe = got;
                break;
            }
        }
        note(format!("reported={with_pipe:?}"));
        libc::close(ep);
        libc::close(late[0]);
        libc::close(late[1]);
        step("MSG_PEEK leaves the data; recv and readv take it in order, then EAGAIN");
        recv_note(c, 4, libc::MSG_PEEK, "recv(MSG_PEEK)");
        recv_note(c, 4, 0, "recv");
        let (mut x, mut y) = ([0u8; 3], [0u8; 3]);
        let iov = [
            iovec {
                iov_base: x.as_mut_ptr().cast(),
                iov_len: 3,
            },
            iovec {
                iov_base: y.as_mut_ptr().cast(),
                iov_len: 3,
            },
        ];
        call("readv", || libc::readv(c, iov.as_ptr(), 2));
        note(format!(
            "data={:?}{:?}",
            String::from_utf8_lossy(&x),
            String::from_utf8_lossy(&y)
        ));
        call("read(drained)", || libc::read(c, b.as_mut_ptr().cast(), 16));

        step("EPOLLET reports new data once with the caller's data; a second EPOLL_CTL_ADD is EEXIST");
        // epoll, edge-triggered, with the application's data.
        let ep = call_fd("epoll_create1", || libc::epoll_create1(libc::EPOLL_CLOEXEC));
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0xabc,
        };
        call("epoll_ctl(ADD)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        call("epoll_ctl(ADD again)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
        call("epoll_wait(0)", || {
            libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0)
        });
        send_line(c, "B");
        let k = call("epoll_wait(10s)", || {
            libc::epoll_wait(ep, out.as_mut_ptr(), 4, 10_000)
        });
        if k > 0 {
            let (e, d) = (out[0].events, out[0].u64);
            note(format!("events={e:#x} data={d:#x}"));
        }
        call("epoll_wait(ET, again)", || {
            libc::epoll_wait(ep, out.as_mut_ptr(), 4, 0)
        });
        let mut n: c_int = -1;
        while n < 3 {
            wait_in(c);
            libc::ioctl(c, libc::FIONREAD, &mut n);
        }
        recv_note(c, 16, 0, "recv(xyz)");
        step("epoll_ctl errors with a connection: a NULL event is EFAULT, a pipe or closed fd as the epoll fd EINVAL or EBADF, MOD or DEL in a set without it ENOENT, an unknown op EINVAL, EPOLLEXCLUSIVE with ONESHOT or RDHUP or in a MOD EINVAL; EPOLLRDNORM/EPOLLWRNORM reported");
        let mut pipe = [0 as c_int; 2];
        libc::pipe(pipe.as_mut_ptr());
        let fresh = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        call("epoll_ctl(ADD, NULL event)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_ADD, c, null_mut())
        });
        call("epoll_ctl(pipe as epoll fd)", || {
            libc::epoll_ctl(pipe[0], libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        call("epoll_ctl(closed epoll fd)", || {
            libc::epoll_ctl(SENTINEL, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        call("epoll_ctl(MOD, not in the set)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_MOD, c, &mut ev)
        });
        call("epoll_ctl(DEL, not in the set)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_DEL, c, &mut ev)
        });
        call("epoll_ctl(op 9)", || libc::epoll_ctl(fresh, 9, c, &mut ev));
        ev.events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE | libc::EPOLLONESHOT) as u32;
        call("epoll_ctl(ADD, EXCLUSIVE|ONESHOT)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        ev.events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE | libc::EPOLLRDHUP) as u32;
        call("epoll_ctl(ADD, EXCLUSIVE|RDHUP)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        ev.events = (libc::EPOLLIN | libc::EPOLLEXCLUSIVE) as u32;
        call("epoll_ctl(ADD, EXCLUSIVE)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        call("epoll_ctl(MOD, EXCLUSIVE entry)", || {
            libc::epoll_ctl(fresh, libc::EPOLL_CTL_MOD, c, &mut ev)
        });
        libc::close(fresh);
        // EPOLLRDNORM and EPOLLWRNORM are reported as poll's are: an idle connection is
        // writable.
        let norm = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        ev.events = (libc::EPOLLRDNORM | libc::EPOLLWRNORM) as u32;
        libc::epoll_ctl(norm, libc::EPOLL_CTL_ADD, c, &mut ev);
        let mut got = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let k = call("epoll_wait(RDNORM|WRNORM)", || {
            libc::epoll_wait(norm, got.as_mut_ptr(), 2, 0)
        });
        if k > 0 {
            let e = got[0].events;
            note(format!("events={e:#x}"));
        }
        libc::close(norm);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
        step("epoll_wait with a null array: 0 with nothing to report, EFAULT with an event; maxevents 0 or past EP_MAX_EVENTS is EINVAL");
        let set = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        ev.events = libc::EPOLLIN as u32;
        libc::epoll_ctl(set, libc::EPOLL_CTL_ADD, c, &mut ev);
        call("epoll_wait(NULL, nothing readable)", || {
            libc::epoll_wait(set, null_mut(), 4, 0)
        });
        ev.events = libc::EPOLLOUT as u32;
        libc::epoll_ctl(set, libc::EPOLL_CTL_MOD, c, &mut ev);
        call("epoll_wait(NULL, writable)", || {
            libc::epoll_wait(set, null_mut(), 4, 0)
        });
        call("epoll_wait(maxevents 0)", || {
            libc::epoll_wait(set, got.as_mut_ptr(), 0, 0)
        });
        call("epoll_wait(maxevents 200,000,000)", || {
            libc::epoll_wait(set, got.as_mut_ptr(), 200_000_000, 0)
        });
        libc::close(set);
        step("a write is sent at once, with no further call (the answer is back within 300 ms)");
        // A write inside an event-loop iteration (the poll above returned), then no socket
        // call for 300 ms: the kernel sends it at once; the stack may keep it for the thread's
        // next wait, but must send it anyway when that wait does not come. By then the
        // client's answer is here.
        let msg = b"say:deferred\n";
        call("write(deferred)", || {
            libc::write(c, msg.as_ptr().cast(), msg.len())
        });
        libc::usleep(300_000);
        let mut n: c_int = -1;
        call("ioctl(FIONREAD, 300 ms later)", || {
            libc::ioctl(c, libc::FIONREAD, &mut n)
        });
        note(format!("FIONREAD={n}"));
        note(read_line(c));
        step("TCP_INFO of an established connection: its whole length, ESTABLISHED, an RTT once data was acknowledged, the send MSS; TCP_MAXSEG is that MSS");
        tcp_info_note(c);
        step("EPOLL_CTL_MOD to EPOLLOUT reports writable; a second EPOLL_CTL_DEL is ENOENT");
        ev.events = (libc::EPOLLOUT | libc::EPOLLRDHUP) as u32;
        call("epoll_ctl(MOD OUT)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, c, &mut ev)
        });
        let k = call("epoll_wait(OUT)", || {
            libc::epoll_wait(ep, out.as_mut_ptr(), 4, 1000)
        });
        if k > 0 {
            let (e, d) = (out[0].events, out[0].u64);
            note(format!("events={e:#x} data={d:#x}"));
        }
        call("epoll_ctl(DEL)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, c, null_mut())
        });
        call("epoll_ctl(DEL again)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, c, null_mut())
        });
        step("an EPOLLOUT|EPOLLET entry on a writable connection is reported once, and not again when data arrives");
        let et = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        ev.events = (libc::EPOLLOUT | libc::EPOLLET) as u32;
        libc::epoll_ctl(et, libc::EPOLL_CTL_ADD, c, &mut ev);
        call("epoll_wait(OUT|ET)", || {
            libc::epoll_wait(et, out.as_mut_ptr(), 4, 0)
        });
        call("epoll_wait(OUT|ET, again)", || {
            libc::epoll_wait(et, out.as_mut_ptr(), 4, 0)
        });
        send_line(c, "B");
        let mut n: c_int = -1;
        while n < 3 {
            wait_in(c);
            libc::ioctl(c, libc::FIONREAD, &mut n);
        }
        call("epoll_wait(OUT|ET, data arrived)", || {
            libc::epoll_wait(et, out.as_mut_ptr(), 4, 0)
        });
        recv_note(c, 16, 0, "recv(xyz)");
        libc::close(et);
        step("an epoll fd's dup keeps reporting after the original is closed");
        // The epoll fd dup'd and the original closed: the dup still reports what arrives.
        ev.events = libc::EPOLLIN as u32;
        call("epoll_ctl(ADD IN)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev)
        });
        let ep2 = libc::dup(ep);
        call("close(epoll, its dup left)", || libc::close(ep));
        send_line(c, "say:dup");
        let k = call("epoll_wait(the dup, a line arrives)", || {
            libc::epoll_wait(ep2, out.as_mut_ptr(), 4, 10_000)
        });
        if k > 0 {
            let (e, d) = (out[0].events, out[0].u64);
            note(format!("events={e:#x} data={d:#x}"));
        }
        note(read_line(c));
        call("close(the dup)", || libc::close(ep2));

        step("blocking write, writev and send(MSG_NOSIGNAL) deliver in order");
        // Blocking again; writes and their delivery.
        call("fcntl(F_SETFL 0)", || libc::fcntl(c, libc::F_SETFL, fl));
        let msg = b"say:write\n";
        call("write", || libc::write(c, msg.as_ptr().cast(), msg.len()));
        note(read_line(c));
        let parts: [&[u8]; 3] = [b"say:", b"write", b"v\n"];
        let iov: Vec<iovec> = parts
            .iter()
            .map(|p| iovec {
                iov_base: p.as_ptr() as *mut c_void,
                iov_len: p.len(),
            })
            .collect();
        call("writev", || libc::writev(c, iov.as_ptr(), 3));
        note(read_line(c));
        let msg = b"say:send\n";
        call("send(MSG_NOSIGNAL)", || {
            libc::send(c, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL)
        });
        note(read_line(c));

        step("a dup keeps the connection open after the original fd is closed");
        // dup and friends: the connection lives until its last fd is closed.
        let d = call_fd("dup", || libc::dup(c));
        call("close(original)", || libc::close(c));
        let msg = b"say:dup\n";
        call("write(dup)", || {
            libc::write(d, msg.as_ptr().cast(), msg.len())
        });
        note(read_line(d));
        step("F_DUPFD_CLOEXEC, dup2 and dup3 choose the fd number; dup3 to itself or with bad flags is EINVAL (also from a bad fd: the flags are checked first), dup2 of a bad fd EBADF");
        let f = libc::fcntl(d, libc::F_DUPFD_CLOEXEC, 50);
        call("fcntl(F_DUPFD_CLOEXEC, 50) >= 50", || (f >= 50) as c_int);
        call("close(F_DUPFD)", || libc::close(f));
        let d2 = call("dup2(d, 60)", || libc::dup2(d, 60));
        call("dup3(60, 60)", || libc::dup3(60, 60, 0));
        call("dup3(d, 61, bad flags)", || libc::dup3(d, 61, 0x4000_0000));
        call("dup2(bad, 62)", || libc::dup2(9999, 62));
        call("dup3(bad, 60, bad flags)", || {
            libc::dup3(9999, 60, 0x4000_0000)
        });
        call("close(d)", || libc::close(d));
        let mut a: sockaddr_in = zeroed();
        let mut alen = slen;
        call("getpeername(60)", || {
            libc::getpeername(d2, (&mut a as *mut sockaddr_in).cast(), &mut alen)
        });
        sockaddr_note(&a, alen, None);

        step("sendfile sends from an offset (and advances it) or from the file position (and moves it)");
        // sendfile from a file, at an offset and from the file position.
        let path = std::env::temp_dir().join(format!("stack-seq-{}", std::process::id()));
        std::fs::write(&path, b"XXXXXsay:sendfile\nsay:filepos\n").unwrap();
        let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let file = libc::open(cpath.as_ptr(), libc::O_RDONLY);
        let _ = std::fs::remove_file(&path);
        let mut off: libc::off_t = 5;
        call("sendfile(offset 5, 13)", || {
            libc::sendfile(d2, file, &mut off, 13)
        });
        note(format!("offset={off}"));
        note(read_line(d2));
        libc::lseek(file, 18, libc::SEEK_SET);
        call("sendfile(file position, 100)", || {
            libc::sendfile(d2, file, null_mut(), 100)
        });
        note(format!("position={}", libc::lseek(file, 0, libc::SEEK_CUR)));
        note(read_line(d2));
        libc::close(file);

        step("a blocking sendfile of 100,000 bytes and a blocking write of 1,000,000 return when all is queued");
        let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &big).unwrap();
        let file = libc::open(cpath.as_ptr(), libc::O_RDONLY);
        let _ = std::fs::remove_file(&path);
        send_line(d2, "sink:100000");
        call("sendfile(100000)", || {
            libc::sendfile(d2, file, null_mut(), 100_000)
        });
        note(read_line(d2));
        libc::close(file);
        let mega = vec![b'm'; 1_000_000];
        send_line(d2, "sink:1000000");
        call("write(1000000)", || {
            libc::write(d2, mega.as_ptr().cast(), mega.len())
        });
        note(read_line(d2));

        step("SO_RCVTIMEO: a blocking recv with nothing to read says EAGAIN after the timeout; MSG_WAITALL returns what came when it expires");
        let t = timeval_ms(200);
        let tlen = size_of::<libc::timeval>() as socklen_t;
        libc::setsockopt(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&t as *const libc::timeval).cast(),
            tlen,
        );
        timed_recv(d2, 16, 0, 200, "recv(SO_RCVTIMEO 200 ms, nothing sent)");
        timed_recv(
            d2,
            0,
            0,
            200,
            "recv(len 0, SO_RCVTIMEO 200 ms, nothing sent)",
        );
        send_line(d2, "A");
        timed_recv(
            d2,
            16,
            libc::MSG_WAITALL,
            200,
            "recv(16, MSG_WAITALL, 10 bytes sent)",
        );
        let t = timeval_ms(0);
        libc::setsockopt(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&t as *const libc::timeval).cast(),
            tlen,
        );

        step("SO_RCVLOWAT: not readable below the mark; a blocking recv waits for it");
        setsockopt_int(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            5,
            "setsockopt(SO_RCVLOWAT 5)",
        );
        getsockopt_int(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            "getsockopt(SO_RCVLOWAT)",
        );
        send_line(d2, "B");
        poll_one(d2, libc::POLLIN, 300, "poll(3 bytes buffered, mark 5)");
        send_line(d2, "B");
        poll_one(d2, libc::POLLIN, 10_000, "poll(6 bytes buffered, mark 5)");
        recv_note(d2, 16, 0, "recv(mark 5)");
        send_line(d2, "B");
        send_line(d2, "B");
        recv_note(d2, 16, 0, "recv(blocking, mark 5, 3 then 3 bytes sent)");
        setsockopt_int(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            0,
            "setsockopt(SO_RCVLOWAT 0)",
        );
        getsockopt_int(
            d2,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            "getsockopt(SO_RCVLOWAT)",
        );

        step("a sleep and a blocking read on a kernel fd are not interrupted while frames arrive through the stack");
        sleep_and_pipe_read_during_a_burst(d2);

        step("a handler of the program's own interrupts a blocking recv (EINTR) unless it has SA_RESTART, and always an epoll_wait");
        signal_interrupts(d2);

        step("sendmmsg and recvmmsg on a TCP connection");
        // sendmmsg / recvmmsg.
        let m1 = b"say:m1\n";
        let m2 = b"say:m2\n";
        let mut iovs = [
            iovec {
                iov_base: m1.as_ptr() as *mut c_void,
                iov_len: m1.len(),
            },
            iovec {
                iov_base: m2.as_ptr() as *mut c_void,
                iov_len: m2.len(),
            },
        ];
        let mut msgs: [mmsghdr; 2] = zeroed();
        for (m, v) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        call("sendmmsg", || libc::sendmmsg(d2, msgs.as_mut_ptr(), 2, 0));
        note(format!("lens={},{}", msgs[0].msg_len, msgs[1].msg_len));
        note(read_line(d2));
        note(read_line(d2));
        send_line(d2, "R");
        let mut n: c_int = -1;
        while n < 6 {
            wait_in(d2);
            libc::ioctl(d2, libc::FIONREAD, &mut n);
        }
        let (mut r1, mut r2) = ([0u8; 4], [0u8; 4]);
        let mut riov = [
            iovec {
                iov_base: r1.as_mut_ptr().cast(),
                iov_len: 4,
            },
            iovec {
                iov_base: r2.as_mut_ptr().cast(),
                iov_len: 4,
            },
        ];
        let mut rmsgs: [mmsghdr; 2] = zeroed();
        for (m, v) in rmsgs.iter_mut().zip(riov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        call("recvmmsg", || {
            libc::recvmmsg(d2, rmsgs.as_mut_ptr(), 2, 0, null_mut())
        });
        note(format!("lens={},{}", rmsgs[0].msg_len, rmsgs[1].msg_len));

        step("shutdown with a bad how is EINVAL; after shutdown(SHUT_WR) send is EPIPE");
        // Half-close: the peer sees EOF, answers, closes.
        call("shutdown(bad how)", || libc::shutdown(d2, 7));
        call("shutdown(SHUT_WR)", || libc::shutdown(d2, libc::SHUT_WR));
        let msg = b"late";
        call("send(after SHUT_WR, NOSIGNAL)", || {
            libc::send(d2, msg.as_ptr().cast(), 4, libc::MSG_NOSIGNAL)
        });
        call("send(len 0, after SHUT_WR, NOSIGNAL)", || {
            libc::send(d2, msg.as_ptr().cast(), 0, libc::MSG_NOSIGNAL)
        });
        // SIGPIPE is ignored in this program (Rust's runtime sets it so).
        call("write(len 0, after SHUT_WR)", || {
            libc::write(d2, msg.as_ptr().cast(), 0)
        });
        let zero = iovec {
            iov_base: msg.as_ptr() as *mut c_void,
            iov_len: 0,
        };
        call("writev(len 0, after SHUT_WR)", || {
            libc::writev(d2, &zero, 1)
        });
        step("POLLRDHUP as soon as the peer's FIN arrives, data still unread before it");
        // The peer answers `eof` and closes: its FIN arrives behind that line, still unread.
        // Linux reports POLLRDHUP at once (RCV_SHUTDOWN), not only once the line was read.
        let mut p = pollfd {
            fd: d2,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        for _ in 0..100 {
            if libc::poll(&mut p, 1, 100) > 0 && p.revents & libc::POLLRDHUP != 0 {
                break;
            }
        }
        poll_one(
            d2,
            libc::POLLIN | libc::POLLRDHUP,
            0,
            "poll(FIN behind unread data)",
        );
        step("recv after peer FIN returns the data, then 0");
        note(read_line(d2));
        call("read(EOF)", || libc::read(d2, b.as_mut_ptr().cast(), 16));
        step("after both FINs poll reports POLLIN|POLLOUT|POLLRDHUP|POLLHUP; close twice is EBADF");
        poll_one(
            d2,
            libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
            0,
            "poll(after both FINs)",
        );
        call("close(60)", || libc::close(d2));
        call("close(60 again)", || libc::close(d2));

        step("blocking accept of the next connection; its data");
        // --- connection 2: reset by the peer ---------------------------------------------
        let c = libc::accept(s, null_mut(), null_mut());
        assert!(c >= 0, "second accept");
        let mut n: c_int = -1;
        while n < 3 {
            wait_in(c);
            libc::ioctl(c, libc::FIONREAD, &mut n);
        }
        recv_note(c, 16, 0, "recv(abc)");
        step("EPOLLET listener reports each queued connection");
        // The listener under EPOLLET: every new connection is an edge, also while an earlier
        // one is still queued (Linux wakes the listener once per connection).
        let ep = libc::epoll_create1(0);
        let mut reg = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 1,
        };
        call("epoll_ctl(ADD listener, ET)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut reg)
        });
        let mut got = [libc::epoll_event { events: 0, u64: 0 }; 4];
        call("epoll_wait(ET listener, nothing queued)", || {
            libc::epoll_wait(ep, got.as_mut_ptr(), 4, 0)
        });
        // The connections from here on get the listener's receive buffer.
        setsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            32768,
            "setsockopt(listener SO_RCVBUF 32768)",
        );
        send_line(c, "connect");
        call("epoll_wait(ET listener, a connection)", || {
            libc::epoll_wait(ep, got.as_mut_ptr(), 4, 10_000)
        });
        call("epoll_wait(ET listener, nothing new)", || {
            libc::epoll_wait(ep, got.as_mut_ptr(), 4, 0)
        });
        send_line(c, "connect");
        call(
            "epoll_wait(ET listener, another, the first still queued)",
            || libc::epoll_wait(ep, got.as_mut_ptr(), 4, 10_000),
        );
        let mut queued = [-1; 2];
        for q in queued.iter_mut() {
            *q = libc::accept4(s, null_mut(), null_mut(), libc::SOCK_NONBLOCK);
            note(format!("accepted a queued connection: {}", *q >= 0));
            getsockopt_int(
                *q,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                "getsockopt(SO_RCVBUF, the listener's)",
            );
        }
        call("close(epoll)", || libc::close(ep));
        step("a listener with a connection from the client and one from 127.0.0.1 queued is one event of epoll_wait");
        // Under the shim the wildcard listener is served twice (the stack, the kernel for
        // loopback): still one socket, one event.
        send_line(c, "connect");
        poll_one(s, libc::POLLIN, 10_000, "poll(listener, a connection)");
        let lo = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let mut lo_addr = sin;
        lo_addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
        call("connect(127.0.0.1)", || {
            libc::connect(lo, (&lo_addr as *const sockaddr_in).cast(), slen)
        });
        let ep = libc::epoll_create1(0);
        let mut reg = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 9,
        };
        call("epoll_ctl(ADD listener)", || {
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut reg)
        });
        let k = call("epoll_wait(listener, two queued)", || {
            libc::epoll_wait(ep, got.as_mut_ptr(), 4, 10_000)
        });
        for e in &got[..k.max(0) as usize] {
            note(format!("event {:#x} data {}", { e.events }, { e.u64 }));
        }
        for _ in 0..2 {
            let q = libc::accept4(s, null_mut(), null_mut(), libc::SOCK_NONBLOCK);
            note(format!("accepted a queued connection: {}", q >= 0));
            libc::close(q);
        }
        call("epoll_wait(listener, none queued)", || {
            libc::epoll_wait(ep, got.as_mut_ptr(), 4, 0)
        });
        libc::close(lo);
        call("close(epoll)", || libc::close(ep));

        step("close with SO_LINGER waits until the peer acknowledges the FIN, at most the linger time, also on a non-blocking socket");
        // The first: its peer never reads; what it cannot take stays queued, so the FIN waits
        // behind it and close() lasts the whole second.
        let [full, idle] = queued;
        set_linger(full, 1, "setsockopt(SO_LINGER 1 s)");
        let chunk = vec![b'q'; 65536];
        let mut queued_bytes = 0usize;
        loop {
            let r = libc::send(full, chunk.as_ptr().cast(), chunk.len(), libc::MSG_NOSIGNAL);
            if r <= 0 {
                break;
            }
            queued_bytes += r as usize;
        }
        note(format!("filled: {}", queued_bytes > 0));
        let t = Instant::now();
        call("close(SO_LINGER 1 s, peer not reading)", || {
            libc::close(full)
        });
        let took = t.elapsed();
        note(format!(
            "lasted the linger time: {}",
            took >= Duration::from_millis(950) && took < Duration::from_secs(4)
        ));
        // The second: nothing queued; its peer's kernel acknowledges the FIN at once.
        set_linger(idle, 5, "setsockopt(SO_LINGER 5 s)");
        let t = Instant::now();
        call("close(SO_LINGER 5 s, nothing queued)", || libc::close(idle));
        note(format!(
            "returned well before the linger time: {}",
            t.elapsed() < Duration::from_secs(3)
        ));

        step(
            "a connection reset while queued for accept is accepted; its first read is ECONNRESET",
        );
        // A connection reset while it waits in the accept queue: the client resets it, then
        // says so on this connection (the reset reached us first: same path, in order).
        send_line(c, "rstq");
        note(read_line(c));
        poll_one(
            s,
            libc::POLLIN,
            0,
            "poll(listener, a reset connection queued)",
        );
        // (A non-blocking listener for this accept: a stack that lost the connection says
        // EAGAIN instead of blocking the sequence.)
        let fl = libc::fcntl(s, libc::F_GETFL);
        libc::fcntl(s, libc::F_SETFL, fl | libc::O_NONBLOCK);
        let q = libc::accept4(s, null_mut(), null_mut(), libc::SOCK_NONBLOCK);
        libc::fcntl(s, libc::F_SETFL, fl);
        note(format!("accepted the reset connection: {}", q >= 0));
        if q >= 0 {
            after_reset(q, "accepted after its reset");
            libc::close(q);
        }
        poll_one(s, libc::POLLIN, 0, "poll(listener, nothing left)");

        step("data arriving after shutdown(SHUT_RDWR) resets the connection: ECONNRESET, 0, EPIPE");
        // shutdown(SHUT_RDWR), then the peer sends: Linux resets (RFC 1122). The client opens
        // one more connection, waits for our FIN, sends, reads until the reset (or 2 s), then
        // says so on this connection.
        send_line(c, "late");
        let l = libc::accept(s, null_mut(), null_mut());
        assert!(l >= 0, "accept (late)");
        call("shutdown(SHUT_RDWR)", || libc::shutdown(l, libc::SHUT_RDWR));
        note(read_line(c));
        after_reset(l, "SHUT_RDWR, then the peer sent");
        call("send(SHUT_RDWR, then the peer sent, NOSIGNAL)", || {
            libc::send(l, msg.as_ptr().cast(), 4, libc::MSG_NOSIGNAL)
        });
        call("close(late)", || libc::close(l));

        step("shutdown(SHUT_RD) keeps buffered data readable, then 0 instead of EAGAIN");
        // shutdown(SHUT_RD) with data queued: readable with RDHUP at once, the data, then end
        // of stream instead of EAGAIN; data arriving afterwards is still delivered.
        let queued = |want: c_int| {
            let mut n: c_int = -1;
            for _ in 0..10_000 {
                libc::ioctl(c, libc::FIONREAD, &mut n);
                if n >= want {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        };
        send_line(c, "data");
        queued(3);
        call("shutdown(SHUT_RD)", || libc::shutdown(c, libc::SHUT_RD));
        poll_one(
            c,
            libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
            0,
            "poll(after SHUT_RD, data queued)",
        );
        recv_note(c, 16, 0, "recv(after SHUT_RD)");
        recv_note(
            c,
            16,
            libc::MSG_DONTWAIT,
            "recv(after SHUT_RD, nothing left)",
        );
        step("data arriving after shutdown(SHUT_RD) is still delivered");
        send_line(c, "data");
        queued(3);
        recv_note(c, 16, 0, "recv(after SHUT_RD, arrived since)");
        step("recv after peer RST returns ECONNRESET then 0; SO_ERROR is then 0, send EPIPE");
        send_line(c, "go");
        let ev = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP;
        // Wait (without POLLOUT, which is ready all along and would end every poll at once)
        // until the reset is fully seen: Linux sets the state (POLLHUP) and then the shutdown
        // bits (POLLIN|POLLRDHUP), and a lockless poll can fall between.
        let mut p = pollfd {
            fd: c,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // (After shutdown(SHUT_RD) POLLRDHUP holds from the start and poll returns at once.)
        let done = libc::POLLHUP | libc::POLLRDHUP;
        for _ in 0..1000 {
            libc::poll(&mut p, 1, 100);
            if p.revents & done == done {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        poll_one(c, ev, 0, "poll(after RST)");
        call("read(after RST)", || {
            libc::read(c, b.as_mut_ptr().cast(), 16)
        });
        call("read(after the error)", || {
            libc::read(c, b.as_mut_ptr().cast(), 16)
        });
        getsockopt_int(c, libc::SOL_SOCKET, libc::SO_ERROR, "getsockopt(SO_ERROR)");
        call("send(after RST, NOSIGNAL)", || {
            libc::send(c, msg.as_ptr().cast(), 4, libc::MSG_NOSIGNAL)
        });
        call("close", || libc::close(c));

        step("listener: non-blocking accept4 with nothing queued is EAGAIN, bad flags EINVAL; SO_ACCEPTCONN is 1");
        // The listener.
        let fl = libc::fcntl(s, libc::F_GETFL);
        libc::fcntl(s, libc::F_SETFL, fl | libc::O_NONBLOCK);
        call("accept4(nothing queued, nonblocking)", || {
            libc::accept4(s, null_mut(), null_mut(), libc::SOCK_NONBLOCK)
        });
        call("accept4(bad flags)", || {
            libc::accept4(s, null_mut(), null_mut(), 0x10)
        });
        let mut alen = slen;
        call("getsockname(listener)", || {
            libc::getsockname(s, (&mut a as *mut sockaddr_in).cast(), &mut alen)
        });
        note(format!(
            "listening port={}",
            u16::from_be(a.sin_port) == port
        ));
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN)",
        );

        step("shutdown of a listener: SHUT_WR is 0 and changes nothing; SHUT_RD stops it (a thread blocked in accept wakes with EINVAL, poll says POLLOUT|POLLHUP, accept is EINVAL, SO_ACCEPTCONN 0, shutdown again ENOTCONN and marks reads shut); listen() again listens on the same port");
        libc::fcntl(s, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        call("shutdown(listener, SHUT_WR)", || {
            libc::shutdown(s, libc::SHUT_WR)
        });
        poll_one(
            s,
            libc::POLLIN | libc::POLLOUT,
            0,
            "poll(listener after SHUT_WR)",
        );
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let acceptor = std::thread::spawn(move || {
            let _ = tid_tx.send(libc::gettid());
            set_errno(SENTINEL);
            let r = libc::accept(s, null_mut(), null_mut());
            (r, errno())
        });
        let tid = tid_rx.recv().expect("the acceptor's thread id");
        wait_until_sleeping(tid);
        call("shutdown(listener, SHUT_RD)", || {
            libc::shutdown(s, libc::SHUT_RD)
        });
        let (r, e) = acceptor.join().expect("the acceptor");
        println!("blocked accept {r} {e}");
        poll_one(s, libc::POLLIN | libc::POLLOUT, 0, "poll(shut listener)");
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN, shut)",
        );
        call("accept(shut listener)", || {
            libc::accept(s, null_mut(), null_mut())
        });
        call("shutdown(shut listener)", || {
            libc::shutdown(s, libc::SHUT_RDWR)
        });
        poll_one(
            s,
            libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP,
            0,
            "poll(shut twice)",
        );
        call("listen(again)", || libc::listen(s, 16));
        poll_one(s, libc::POLLIN | libc::POLLOUT, 0, "poll(listening again)");
        let mut alen = slen;
        libc::getsockname(s, (&mut a as *mut sockaddr_in).cast(), &mut alen);
        note(format!(
            "listening again port={}",
            u16::from_be(a.sin_port) == port
        ));
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN, again)",
        );
        step("connect(AF_UNSPEC) on a listener stops it as shutdown does (poll POLLOUT|POLLHUP, SO_ACCEPTCONN 0, accept EINVAL); again it is 0; listen() again listens");
        let unspec: sockaddr_in = zeroed();
        call("connect(listener, AF_UNSPEC)", || {
            libc::connect(s, (&unspec as *const sockaddr_in).cast(), slen)
        });
        poll_one(
            s,
            libc::POLLIN | libc::POLLOUT,
            0,
            "poll(disconnected listener)",
        );
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN, disconnected)",
        );
        call("accept(disconnected listener)", || {
            libc::accept(s, null_mut(), null_mut())
        });
        call("connect(listener, AF_UNSPEC, again)", || {
            libc::connect(s, (&unspec as *const sockaddr_in).cast(), slen)
        });
        call("listen(after AF_UNSPEC)", || libc::listen(s, 16));
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN, listening after AF_UNSPEC)",
        );
        call("close(listener)", || libc::close(s));
    }
    println!("done");
}

/// Returns once thread `tid` of this process sleeps (blocked in a call), as /proc shows it.
fn wait_until_sleeping(tid: libc::pid_t) {
    let path = format!("/proc/self/task/{tid}/stat");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stat = std::fs::read_to_string(&path).unwrap_or_default();
        // The state follows the command name's closing parenthesis.
        let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('S') {
            return;
        }
        std::thread::yield_now();
    }
    panic!("thread {tid} never blocked");
}

/// An address the kernel or the shim wrote into a 28-byte buffer (`room` of it offered): its
/// fields, as `sockaddr_note` prints them for IPv4, with a v4-mapped address as `::ffff:.N`;
/// `len` as returned; whether the bytes past the room were left alone. A truncated address
/// shows the bytes written (the port as `pp`).
fn sockaddr6_note(buf: &[u8; 64], room: usize, len: socklen_t, port: u16) {
    let untouched = buf[room..].iter().all(|&b| b == 0xee);
    if room < size_of::<libc::sockaddr_in6>() {
        let shown: Vec<String> = buf[..room]
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i == 2 || i == 3 {
                    "pp".into()
                } else {
                    format!("{b:02x}")
                }
            })
            .collect();
        note(format!(
            "len={len} written={} rest untouched={untouched}",
            shown.concat()
        ));
        return;
    }
    // SAFETY: 28 bytes of the buffer, read unaligned.
    let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
    let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
    let shown_ip = match ip.to_ipv4_mapped() {
        Some(v4) => format!("::ffff:.{}", v4.octets()[3]),
        None => ip.to_string(),
    };
    let p = u16::from_be(a.sin6_port);
    let shown_port = if p == port {
        "listening".to_string()
    } else if p >= 1024 {
        "ephemeral".to_string()
    } else {
        p.to_string()
    };
    note(format!(
        "family={} addr={shown_ip} port={shown_port} flowinfo={} scope_id={} len={len} rest untouched={untouched}",
        a.sin6_family, a.sin6_flowinfo, a.sin6_scope_id
    ));
}

/// One call that writes an address (accept4, getsockname, getpeername) into a buffer of which
/// it is offered `room` bytes; its answer and what it wrote. Returns the call's result.
fn with_addr6(
    label: &str,
    room: usize,
    port: u16,
    f: impl FnOnce(*mut libc::sockaddr, *mut socklen_t) -> c_int,
    returns_fd: bool,
) -> c_int {
    let mut buf = [0xeeu8; 64];
    let mut len = room as socklen_t;
    let p = buf.as_mut_ptr().cast::<libc::sockaddr>();
    let r = if returns_fd {
        call_fd(label, || f(p, &mut len))
    } else {
        call(label, || f(p, &mut len))
    };
    if r >= 0 {
        sockaddr6_note(&buf, room, len, port);
    }
    r
}

fn server6(port: u16) {
    let full = size_of::<libc::sockaddr_in6>();
    // SAFETY: plain socket calls on fds this program owns; every pointer is to a local.
    unsafe {
        step("an AF_INET6 socket: IPV6_V6ONLY is off by default; bind to :: and listen");
        let s = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        assert!(s >= 0);
        let one: c_int = 1;
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const c_int).cast(),
            4,
        );
        getsockopt_int(
            s,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            "getsockopt(IPV6_V6ONLY)",
        );
        let mut sin6: libc::sockaddr_in6 = zeroed();
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        call("bind(::)", || {
            libc::bind(
                s,
                (&sin6 as *const libc::sockaddr_in6).cast(),
                full as socklen_t,
            )
        });
        call("listen", || libc::listen(s, 16));
        println!("ready");
        let _ = std::io::stdout().flush();

        step("accept4 on a :: listener gives an IPv4 client's address v4-mapped, AF_INET6, length 28");
        poll_one(s, libc::POLLIN, 10_000, "poll(listener)");
        let c = with_addr6(
            "accept4(CLOEXEC)",
            full,
            port,
            |a, l| libc::accept4(s, a, l, libc::SOCK_CLOEXEC),
            true,
        );
        assert!(c >= 0, "accept failed");
        step("getsockname and getpeername of an IPv4 client of a :: listener are v4-mapped sockaddr_in6");
        with_addr6(
            "getsockname",
            full,
            port,
            |a, l| libc::getsockname(c, a, l),
            false,
        );
        with_addr6(
            "getpeername",
            full,
            port,
            |a, l| libc::getpeername(c, a, l),
            false,
        );
        with_addr6(
            "getpeername(room 64)",
            64,
            port,
            |a, l| libc::getpeername(c, a, l),
            false,
        );
        step("a buffer shorter than a sockaddr_in6 gets what fits, and the length 28");
        for room in [16, 4, 0] {
            with_addr6(
                &format!("getpeername(room {room})"),
                room,
                port,
                |a, l| libc::getpeername(c, a, l),
                false,
            );
            with_addr6(
                &format!("getsockname(room {room})"),
                room,
                port,
                |a, l| libc::getsockname(c, a, l),
                false,
            );
        }
        step("SO_DOMAIN of an IPv4 client's connection on a :: listener is AF_INET6; SO_TYPE, SO_PROTOCOL");
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            "getsockopt(SO_DOMAIN)",
        );
        getsockopt_int(c, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt(SO_TYPE)");
        getsockopt_int(
            c,
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            "getsockopt(SO_PROTOCOL)",
        );
        step("data both ways on an IPv4 client's connection of a :: listener");
        send_line(c, "say:through ::");
        note(read_line(c));
        call("close", || libc::close(c));

        step("accept with room for a sockaddr_in only (16 bytes) on a :: listener: what fits, length 28");
        // The client opens its second connection once it sees the first one's end of stream.
        let c = with_addr6(
            "accept(room 16)",
            16,
            port,
            |a, l| libc::accept(s, a, l),
            true,
        );
        assert!(c >= 0, "second accept failed");
        with_addr6(
            "getpeername",
            full,
            port,
            |a, l| libc::getpeername(c, a, l),
            false,
        );
        call("close", || libc::close(c));

        step("the :: listener: its name, SO_DOMAIN, SO_ACCEPTCONN");
        with_addr6(
            "getsockname(listener)",
            full,
            port,
            |a, l| libc::getsockname(s, a, l),
            false,
        );
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            "getsockopt(listener SO_DOMAIN)",
        );
        getsockopt_int(
            s,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            "getsockopt(SO_ACCEPTCONN)",
        );
        call("close(listener)", || libc::close(s));
    }
    println!("done");
}

/// The client of `server6`: an IPv4 client, two connections one after the other.
fn client6(addr: &str, port: u16) {
    let target = format!("{addr}:{port}");
    let s = TcpStream::connect(&target).expect("connect 1");
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).expect("read") == 0 {
            break;
        }
        if let Some(t) = line.trim_end_matches('\n').strip_prefix("say:") {
            w.write_all(format!("ok:{t}\n").as_bytes()).unwrap();
        }
    }
    drop((w, r));
    let mut s = TcpStream::connect(&target).expect("connect 2");
    let mut buf = [0u8; 16];
    while !matches!(std::io::Read::read(&mut s, &mut buf), Ok(0) | Err(_)) {}
    println!("client done");
}

fn client(addr: &str, port: u16) {
    let target = format!("{addr}:{port}");
    let s = TcpStream::connect(&target).expect("connect 1");
    s.set_nodelay(true).unwrap();
    // A server that hangs (a blocking call that never returns) ends the client, and so the
    // comparison, with an error instead of a wait for ever.
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    // The control lines so far, with when each came: what a failed read reports.
    let start = Instant::now();
    let mut seen: Vec<(Duration, String)> = Vec::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => {
                w.write_all(b"ok:eof\n").unwrap();
                break;
            }
            Ok(_) => {}
            Err(e) => {
                client_stuck(&w, &e, start, &seen, &line, r.buffer());
                std::process::exit(1);
            }
        }
        if line.len() < 64 {
            seen.push((start.elapsed(), line.clone()));
        }
        let line = line.trim_end_matches('\n');
        match line {
            "A" => w.write_all(b"0123456789").unwrap(),
            "B" => w.write_all(b"xyz").unwrap(),
            "R" => w.write_all(b"rrrrr\n").unwrap(),
            _ => {
                if let Some(t) = line.strip_prefix("say:") {
                    w.write_all(format!("ok:{t}\n").as_bytes()).unwrap();
                } else if let Some(n) = line.strip_prefix("burst:") {
                    // N chunks of the burst, 20 ms apart; no answer.
                    let n: usize = n.parse().expect("burst chunks");
                    for c in 0..n {
                        let chunk: Vec<u8> = (c * BURST_CHUNK..(c + 1) * BURST_CHUNK)
                            .map(burst_byte)
                            .collect();
                        w.write_all(&chunk).unwrap();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                } else if let Some(n) = line.strip_prefix("sink:") {
                    // Reads exactly n bytes (after the line), says how many arrived.
                    let n: usize = n.parse().expect("sink length");
                    let mut buf = vec![0u8; n];
                    std::io::Read::read_exact(&mut r, &mut buf).expect("the sink's bytes");
                    w.write_all(format!("ok:sunk {n}\n").as_bytes()).unwrap();
                }
            }
        }
    }
    drop(w);
    drop(r);
    let mut s = TcpStream::connect(&target).expect("connect 2");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(b"abc").unwrap();
    // `connect` (the listener's EPOLLET part): one more connection, kept open; then `go`.
    let mut more = Vec::new();
    let mut r2 = BufReader::new(s.try_clone().unwrap());
    loop {
        let mut line = String::new();
        r2.read_line(&mut line).expect("read on connection 2");
        match line.as_str() {
            "connect\n" => more.push(TcpStream::connect(&target).expect("connect more")),
            "data\n" => s.write_all(b"xyz").unwrap(),
            "late\n" => {
                let mut l = TcpStream::connect(&target).expect("connect (late)");
                l.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 16];
                let eof = matches!(std::io::Read::read(&mut l, &mut buf), Ok(0));
                l.write_all(b"xyz").unwrap();
                let after = match std::io::Read::read(&mut l, &mut buf) {
                    Ok(n) => format!("read {n}"),
                    Err(e) => format!("{:?}", e.kind()),
                };
                s.write_all(format!("late: eof={eof} then {after}\n").as_bytes())
                    .unwrap();
            }
            "rstq\n" => {
                let q = TcpStream::connect(&target).expect("connect, to reset");
                reset(&q);
                drop(q);
                s.write_all(b"reset\n").unwrap();
            }
            "go\n" => break,
            other => panic!("unexpected line on connection 2: {other:?}"),
        }
    }
    reset(&s);
    drop(s);
    println!("client done");
}

/// Says on stderr why the client's read of a control line failed after `start`: the error, the
/// last control lines with when each came, the bytes read past them, and the connection's
/// TCP_INFO (what the kernel knows of the path when no line arrives).
fn client_stuck(
    s: &TcpStream,
    e: &std::io::Error,
    start: Instant,
    seen: &[(Duration, String)],
    partial: &str,
    buffered: &[u8],
) {
    use std::os::fd::AsRawFd;
    eprintln!(
        "client: reading a control line failed after {:?}: {e}",
        start.elapsed()
    );
    for (t, l) in seen.iter().rev().take(8).rev() {
        eprintln!("  line at {t:?}: {l:?}");
    }
    eprintln!(
        "  partial line {partial:?}, buffered {:?}",
        String::from_utf8_lossy(buffered)
    );
    eprintln!("  {}", mtcp_tests::tcpinfo::describe(s.as_raw_fd()));
}

/// Makes the close of `s` a reset: SO_LINGER with a zero timeout.
fn reset(s: &TcpStream) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: a linger struct and its size on our own socket.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&lin as *const libc::linger).cast(),
            size_of::<libc::linger>() as socklen_t,
        )
    };
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(args[2].parse().expect("port")),
        Some("client") => client(&args[2], args[3].parse().expect("port")),
        Some("server6") => server6(args[2].parse().expect("port")),
        Some("client6") => client6(&args[2], args[3].parse().expect("port")),
        _ => {
            eprintln!("usage: stack-seq server|server6 PORT | stack-seq client|client6 ADDR PORT");
            std::process::exit(2);
        }
    }
}
