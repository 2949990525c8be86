//! Wake-up fds for drivers that have none: af_packet gets an AF_PACKET socket of our own whose
//! filter is switched on only while the stack sleeps; af_xdp's own socket is found among the
//! process's fds.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicU32, Ordering};

const AF_XDP: libc::c_int = 44;

/// The process's AF_XDP sockets (net_af_xdp does not export its socket's fd).
pub(super) fn xdp_socket_fds() -> Vec<RawFd> {
    socket_fds(AF_XDP)
}

/// The process's AF_PACKET sockets (net_af_packet does not export its sockets' fds).
pub(super) fn packet_socket_fds() -> Vec<RawFd> {
    socket_fds(libc::AF_PACKET)
}

/// Attaches the classic BPF program `filter` to socket `fd`.
pub(super) fn attach_filter(fd: RawFd, filter: &[crate::steer::SockFilter]) -> std::io::Result<()> {
    let mut insns: Vec<libc::sock_filter> = filter
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: prog points at `insns`, alive for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The process's sockets of address family `family`.
fn socket_fds(family: libc::c_int) -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            let mut domain: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_DOMAIN writes one int into a valid buffer; on a closed fd or one that
            // is not a socket it fails and leaves the buffer alone.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_DOMAIN,
                    (&mut domain as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            rc == 0 && domain == family
        })
        .collect()
}

/// A wake-up fd for af_packet, whose PMD has none: our own AF_PACKET socket
/// on the same kernel interface, whose filter drops every frame while the stack
/// runs, and keeps one byte of each while the stack sleeps, so `poll` on it wakes the loop when a
/// frame arrives. Nothing per packet while busy beyond the kernel running a filter of a few
/// instructions. Arming and disarming is a store into a BPF array map the filter reads
/// (`flag`), or, where the kernel gives none, a setsockopt each that swaps the filter. Among
/// worker processes sharing the interface the map also says which buckets are this one's
/// (`steer`): a frame wakes the worker it is for.
pub(super) struct PacketWake {
    pub(super) fd: RawFd,
    armed: bool,
    /// The attached filter, returning a word of memory this process writes (bytes to keep: 1
    /// armed, 0 not).
    flag: Option<FlagFilter>,
    /// Two loaded eBPF socket filters, [drop, keep 1 byte]: switching is attaching an already
    /// verified and compiled program (SO_ATTACH_BPF), where a classic filter is checked and
    /// JIT-compiled again on every SO_ATTACH_FILTER (with cross-CPU calls to install the
    /// code: a third of idle Redis's CPU under the shim went there). `None` if the kernel
    /// refuses bpf(): the classic filter then.
    progs: Option<[RawFd; 2]>,
    /// Where the frames it keeps land ([`WakeRing`]); `None` where the kernel gives no ring:
    /// they queue on the socket then, and `drain` reads them.
    ring: Option<WakeRing>,
    /// Drains the frames queued before a block (`arm`) without a ring.
    drain: Box<Drain<64>>,
}

/// The wake-up socket's receive ring (PACKET_RX_RING, TPACKET_V2), mapped: each frame the
/// filter keeps lands in the next free slot, which the kernel marks as ours, and the socket is
/// readable while the slot before the kernel's next one is ours. [`WakeRing::release`] hands
/// the filled slots back by writing their status words: a thread's block empties the socket
/// without a system call (a `recvmmsg` otherwise, which at light load found nothing more than
/// half the time). A full ring keeps the socket readable (the slot before the kernel's next is
/// ours): frames it drops then cannot leave a thread asleep.
struct WakeRing {
    map: *mut u8,
    /// The next slot the kernel fills, as far as `release` knows.
    next: usize,
}

// SAFETY: `map` is a mapping this value owns until it drops; its slots' status words are only
// reached through atomics.
unsafe impl Send for WakeRing {}

/// A slot: the TPACKET_V2 header, the address after it, the frame's one kept byte.
const RING_SLOT: usize = 128;
/// Slots: 64 KiB. Frames that arrive while a thread sleeps queue here until its next block
/// releases them: one or two at light load, at most a burst. (The kernel takes the memory in
/// blocks of whole pages, each a whole number of slots: slot `i` starts `i * RING_SLOT` bytes
/// in.)
const RING_SLOTS: usize = 512;
const RING_BYTES: usize = RING_SLOT * RING_SLOTS;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const TPACKET_V2: libc::c_int = 1;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_KERNEL: u32 = 0;

impl WakeRing {
    /// Gives packet socket `fd` a receive ring and maps it. Where the kernel refuses, the
    /// socket stays as it was.
    fn attach(fd: RawFd) -> std::io::Result<WakeRing> {
        let version = TPACKET_V2;
        // SAFETY: an int option on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                SOL_PACKET,
                PACKET_VERSION,
                (&version as *const libc::c_int).cast(),
                4,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let block = page.clamp(4096, RING_BYTES);
        let mut req = libc::tpacket_req {
            tp_block_size: block as u32,
            tp_block_nr: (RING_BYTES / block) as u32,
            tp_frame_size: RING_SLOT as u32,
            tp_frame_nr: RING_SLOTS as u32,
        };
        let set_ring = |req: &libc::tpacket_req| {
            // SAFETY: a tpacket_req option value on our own socket, alive for the call.
            unsafe {
                libc::setsockopt(
                    fd,
                    SOL_PACKET,
                    PACKET_RX_RING,
                    (req as *const libc::tpacket_req).cast(),
                    std::mem::size_of::<libc::tpacket_req>() as u32,
                )
            }
        };
        if set_ring(&req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let len = RING_BYTES;
        // SAFETY: maps the ring just set up on our socket, shared with the kernel.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // No ring after all: frames queue on the socket again (a request of no blocks
            // frees it).
            req = libc::tpacket_req {
                tp_block_size: 0,
                tp_block_nr: 0,
                tp_frame_size: 0,
                tp_frame_nr: 0,
            };
            set_ring(&req);
            return Err(e);
        }
        Ok(WakeRing {
            map: map.cast(),
            next: 0,
        })
    }

    /// Slot `i`'s status word (the first of its TPACKET_V2 header).
    fn status(&self, i: usize) -> &AtomicU32 {
        assert!(i < RING_SLOTS);
        // SAFETY: slot `i` lies inside the mapping (each block holds a whole number of slots,
        // so slot `i` starts `i * RING_SLOT` bytes in), which lives as long as `self`;
        // the word is aligned and shared with the kernel, so reached atomically.
        unsafe { &*self.map.add(i * RING_SLOT).cast::<AtomicU32>() }
    }

    /// Whether the kernel filled the next slot (a frame `release` has not handed back).
    fn holds_frame(&self) -> bool {
        self.status(self.next).load(Ordering::Acquire) & TP_STATUS_USER != 0
    }

    /// Hands every slot the kernel filled back to it, in the order it fills them. Returns how
    /// many.
    fn release(&mut self) -> usize {
        let mut n = 0;
        while n < RING_SLOTS {
            let s = self.status(self.next);
            if s.load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                break;
            }
            s.store(TP_STATUS_KERNEL, Ordering::Release);
            self.next = (self.next + 1) % RING_SLOTS;
            n += 1;
        }
        n
    }
}

impl Drop for WakeRing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once (the socket, closed after, frees the ring).
        unsafe { libc::munmap(self.map.cast(), RING_BYTES) };
    }
}

// SAFETY: `word` points into a mapping this value owns until it drops; it is only reached
// through an atomic.
unsafe impl Send for FlagFilter {}

const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_ATTACH_BPF: libc::c_int = 50;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
/// `src_reg` of a 64-bit immediate load whose immediate is a map fd and an offset into its
/// value: the instruction loads that address.
const BPF_PSEUDO_MAP_VALUE: u64 = 2;

const SOL_PACKET: libc::c_int = 263;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// The start of `union bpf_attr` for BPF_PROG_LOAD (the kernel accepts a shorter attr).
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The start of `union bpf_attr` for BPF_MAP_CREATE.
#[repr(C)]
struct BpfMapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Loads `r0 = keep; exit` as a socket filter: the bytes of each frame to queue (0 drops it).
fn load_socket_filter(keep: i32) -> Option<RawFd> {
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    load_program(&[
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = keep
        0xb7 | (u64::from(keep as u32) << 32),
        // BPF_JMP | BPF_EXIT
        0x95,
    ])
}

/// The words of the flag filter's map value (`flag_filter`), by index.
const FLAG: usize = 0;
/// Non-zero: only the frames of the buckets in `SEE` (and other IPv4 if `OTHER_IP`) wake.
const STEERED: usize = 1;
const SEE: usize = 2;
const OTHER_IP: usize = 3;
const WORDS: usize = 4;

/// One eBPF instruction (`struct bpf_insn`: opcode, destination and source registers, offset,
/// immediate), as the kernel reads it on little-endian machines.
const fn ebpf(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | (dst as u64) << 8
        | (src as u64) << 12
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// The wake-up's filter, given the map value's address in two instruction slots: 0 (drop) while
/// the stack runs (`FLAG` 0); while it sleeps, 1 (keep a byte: the socket becomes readable) for
/// every frame, or, once the stack is steered (`STEERED`, worker processes sharing the
/// interface), for what its packet sockets keep: TCP over IPv4 of the buckets in `SEE`
/// (`steer::flow_bucket`'s hash, as `steer::frame_filter` computes it), other IPv4 if
/// `OTHER_IP`, everything that is not IPv4, and every IPv4 fragment. So a frame wakes the
/// worker it is for, not all of them.
fn wake_program(value: [u64; 2]) -> Vec<u64> {
    const MOV_X: u8 = 0xbf; // r_dst = r_src
    const MOV_K: u8 = 0xb7; // r_dst = imm
    const LDX_W: u8 = 0x61; // r_dst = *(u32 *)(r_src + off)
    const STX_W: u8 = 0x63; // *(u32 *)(r_dst + off) = r_src
    const JEQ_K: u8 = 0x15;
    const JNE_K: u8 = 0x55;
    const ABS_B: u8 = 0x30; // r0 = the frame's byte at imm (these loads need r6 = the context)
    const ABS_H: u8 = 0x28; // r0 = the big-endian half-word at imm
    const ABS_W: u8 = 0x20;
    const IND_H: u8 = 0x48; // r0 = the half-word at r_src + imm
    const AND_K: u8 = 0x57;
    const LSH_K: u8 = 0x67;
    const RSH_K: u8 = 0x77;
    const RSH_X: u8 = 0x7f;
    const XOR_X: u8 = 0xaf;
    const EXIT: u8 = 0x95;
    let w = |i: usize| (i * 4) as i16;
    let mut p = vec![
        /* 0 */ ebpf(MOV_X, 6, 1, 0, 0),
        /* 1 */ value[0],
        /* 2 */ value[1], // r7 = the map value
        /* 3 */ ebpf(LDX_W, 0, 7, w(FLAG), 0),
        /* 4 */ ebpf(JEQ_K, 0, 0, 30, 0), // disarmed: return 0 (35)
        /* 5 */ ebpf(LDX_W, 8, 7, w(STEERED), 0),
        /* 6 */ ebpf(JEQ_K, 8, 0, 28, 0), // not steered: return the flag (35)
        /* 7 */ ebpf(ABS_H, 0, 0, 0, 12), // EtherType
        /* 8 */ ebpf(JNE_K, 0, 0, 25, 0x0800), // not IPv4: keep (34)
        /* 9 */ ebpf(ABS_B, 0, 0, 0, 23), // IP protocol
        /* 10 */ ebpf(JNE_K, 0, 0, 25, 6), // not TCP: other IPv4 (36)
        /* 11 */ ebpf(ABS_H, 0, 0, 0, 20), // flags, fragment offset
        /* 12 */ ebpf(AND_K, 0, 0, 0, 0x3fff),
        // A fragment (more to come, or a later one): the PMD's fanout group reassembles the
        // datagram (PACKET_FANOUT_FLAG_DEFRAG) before its filter sees the ports; this socket
        // sees the fragments, and the last one may be the worker's: keep (34).
        /* 13 */
        ebpf(JNE_K, 0, 0, 20, 0),
        /* 14 */ ebpf(ABS_B, 0, 0, 0, 14),
        /* 15 */ ebpf(AND_K, 0, 0, 0, 0xf),
        /* 16 */ ebpf(LSH_K, 0, 0, 0, 2),
        /* 17 */ ebpf(MOV_X, 8, 0, 0, 0), // r8 = the IP header's length
        /* 18 */ ebpf(IND_H, 0, 8, 0, 14), // source port
        /* 19 */ ebpf(STX_W, 10, 0, -4, 0), // (the loads clobber r1-r5)
        /* 20 */ ebpf(IND_H, 0, 8, 0, 16), // destination port
        /* 21 */ ebpf(LDX_W, 9, 10, -4, 0),
        /* 22 */ ebpf(XOR_X, 9, 0, 0, 0), // source port ^ destination port
        /* 23 */ ebpf(ABS_W, 0, 0, 0, 26), // source address
        /* 24 */ ebpf(XOR_X, 0, 9, 0, 0), // h = address ^ ports
        /* 25 */ ebpf(MOV_X, 9, 0, 0, 0),
        /* 26 */ ebpf(RSH_K, 9, 0, 0, 16),
        /* 27 */ ebpf(XOR_X, 0, 9, 0, 0), // h ^ (h >> 16)
        /* 28 */ ebpf(AND_K, 0, 0, 0, crate::steer::BUCKETS as i32 - 1), // the bucket
        /* 29 */ ebpf(LDX_W, 8, 7, w(SEE), 0),
        /* 30 */ ebpf(RSH_X, 8, 0, 0, 0),
        /* 31 */ ebpf(AND_K, 8, 0, 0, 1),
        /* 32 */ ebpf(MOV_K, 0, 0, 0, 0),
        /* 33 */ ebpf(JEQ_K, 8, 0, 1, 0), // not this worker's bucket: return 0 (35)
        /* 34 */ ebpf(MOV_K, 0, 0, 0, 1),
        /* 35 */ ebpf(EXIT, 0, 0, 0, 0),
        /* 36 */ ebpf(LDX_W, 0, 7, w(OTHER_IP), 0),
        /* 37 */ ebpf(EXIT, 0, 0, 0, 0),
    ];
    p.shrink_to_fit();
    p
}

/// A small array map, mapped into memory, and the wake-up's socket filter that reads it
/// (`wake_program`): the words, the map's fd and the program's. `None` if the kernel refuses
/// any of it (no BPF_F_MMAPABLE before Linux 5.5, no bpf() for the user).
fn flag_filter() -> Option<FlagFilter> {
    let attr = BpfMapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: (WORDS * 4) as u32,
        max_entries: 1,
        map_flags: BPF_F_MMAPABLE,
    };
    let map = bpf(BPF_MAP_CREATE, &attr)?;
    // SAFETY: mapping the map's one page of values, shared with the kernel; checked below.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map,
            0,
        )
    };
    if page == libc::MAP_FAILED {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(map) };
        return None;
    }
    let mut f = FlagFilter {
        words: page.cast::<AtomicU32>().cast_const(),
        map,
        prog: -1,
    };
    f.word(OTHER_IP).store(1, Ordering::SeqCst);
    f.prog = load_program(&wake_program([
        // BPF_LD | BPF_DW | BPF_IMM, dst r7, src BPF_PSEUDO_MAP_VALUE: r7 = &value[0] of the
        // map (the immediate's two halves: the map's fd, the offset 0)
        0x18 | (7 << 8) | (BPF_PSEUDO_MAP_VALUE << 12) | (u64::from(map as u32) << 32),
        0,
    ]))?;
    Some(f)
}

/// A socket filter that reads words of memory shared with the kernel (`flag_filter`): the
/// words, the map that holds them, the program. Released when dropped.
struct FlagFilter {
    words: *const AtomicU32,
    map: RawFd,
    prog: RawFd,
}

impl FlagFilter {
    fn word(&self, i: usize) -> &AtomicU32 {
        assert!(i < WORDS);
        // SAFETY: WORDS words mapped for as long as `self` lives (unmapped in drop), aligned.
        unsafe { &*self.words.add(i) }
    }
}

impl Drop for FlagFilter {
    fn drop(&mut self) {
        // SAFETY: our own mapping and fds, released once.
        unsafe {
            libc::munmap(self.words.cast_mut().cast(), 4096);
            libc::close(self.map);
            if self.prog >= 0 {
                libc::close(self.prog);
            }
        }
    }
}

/// Loads `insns` as a socket filter program.
fn load_program(insns: &[u64]) -> Option<RawFd> {
    let license = b"GPL\0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // (It points at the instructions and the license, alive for the call.)
    bpf(BPF_PROG_LOAD, &attr)
}

/// bpf(`cmd`, `attr`): the fd it makes (close-on-exec), or `None`.
fn bpf<T>(cmd: libc::c_long, attr: &T) -> Option<RawFd> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of attr (and what they point at, alive
    // for the call: the callers' attrs point only at their own locals), returns an fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    (fd >= 0).then_some(fd as RawFd)
}

/// Reads and drops every message waiting on a non-blocking socket (a byte of each, the rest
/// truncated), `N` a system call. The headers are built once, with the value: a thread's
/// every block drains its wake-up socket, and zeroing and pointing 64 of them each time cost
/// ~4,400 instructions, more than the rest of a request's work at light load.
pub(super) struct Drain<const N: usize> {
    bytes: [u8; N],
    iov: [libc::iovec; N],
    hdr: [libc::mmsghdr; N],
}

// SAFETY: the raw pointers in `iov` and `hdr` point into the same boxed value, which moves
// with them (see `Drain::new`).
unsafe impl<const N: usize> Send for Drain<N> {}

impl<const N: usize> Drain<N> {
    /// Boxed, so that the headers' pointers into it stay valid wherever the box moves.
    pub(super) fn new() -> Box<Drain<N>> {
        // SAFETY: all-zero bytes, iovecs and headers are valid values.
        let mut d: Box<Drain<N>> = Box::new(unsafe { std::mem::zeroed() });
        let Drain { bytes, iov, hdr } = &mut *d;
        for (i, (v, h)) in iov.iter_mut().zip(hdr.iter_mut()).enumerate() {
            v.iov_base = bytes[i..].as_mut_ptr().cast();
            v.iov_len = 1;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
        }
        d
    }

    /// Drains `fd` (non-blocking), `N` messages a call until one returns fewer. Returns the
    /// calls made. (The kernel writes back only each header's `msg_len`, `msg_flags` and
    /// `msg_controllen`, 0 without control data: the headers stay fit for the next call.)
    pub(super) fn run(&mut self, fd: RawFd) -> u64 {
        let mut calls = 0;
        loop {
            calls += 1;
            // SAFETY: N headers, each with one iovec of one byte of `bytes`, all inside this
            // value (see `new`), alive for the call; non-blocking, no timeout.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.hdr.as_mut_ptr(),
                    N as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < N as libc::c_int {
                return calls;
            }
        }
    }
}

impl PacketWake {
    pub(super) fn open(iface: &str) -> std::io::Result<PacketWake> {
        let name = CString::new(iface)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket calls with valid arguments; the fd is closed on error paths.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let progs = match (load_socket_filter(0), load_socket_filter(1)) {
                (Some(d), Some(k)) => Some([d, k]),
                (d, k) => {
                    for f in [d, k].into_iter().flatten() {
                        libc::close(f);
                    }
                    None
                }
            };
            let mut w = PacketWake {
                fd,
                armed: true,
                flag: None,
                progs,
                ring: None,
                drain: Drain::new(),
            };
            w.set_filter(false)?;
            // The flag's filter in place of the two, where the kernel has what it needs.
            if let Some(f) = flag_filter() {
                f.word(FLAG).store(0, Ordering::SeqCst);
                if libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_ATTACH_BPF,
                    (&f.prog as *const RawFd).cast(),
                    4,
                ) == 0
                {
                    w.flag = Some(f);
                }
            }
            let one: libc::c_int = 1;
            // Frames the stack itself sends must not wake it (Linux >= 4.20; ignored if older).
            libc::setsockopt(
                fd,
                SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            );
            // Before bind, so that no frame is kept before the ring is there to take it.
            w.ring = WakeRing::attach(fd).ok();
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut w = w;
            w.armed = false;
            Ok(w)
        }
    }

    fn set_filter(&self, accept: bool) -> std::io::Result<()> {
        if let Some(progs) = self.progs {
            let prog = progs[usize::from(accept)];
            // SAFETY: an int option value on our own socket.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    SO_ATTACH_BPF,
                    (&prog as *const RawFd).cast(),
                    4,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        // One instruction: BPF_RET | BPF_K with the number of bytes to keep (0 drops the frame).
        let mut insn = libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::from(accept),
        };
        let prog = libc::sock_fprog {
            len: 1,
            filter: &mut insn,
        };
        // SAFETY: prog points at one valid instruction for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The flag's word.
    fn word(&self) -> Option<&AtomicU32> {
        self.flag.as_ref().map(|f| f.word(FLAG))
    }

    /// Arms the wake-up; the caller polls the device once more before it blocks. No frame is
    /// slept on because the socket is bound before the PMD's (`DpdkLink::start_port`): the
    /// kernel hands each frame to the PMD's ring before it runs our filter, with a full barrier
    /// between (the `smp_mb` of `sock_def_readable`, which `tpacket_rcv` calls after setting
    /// the frame's status; and the locked increment of the frame's reference count before the
    /// next socket's turn). Either the poll after this store sees the frame, or the filter sees
    /// the store.
    pub(super) fn arm(&mut self) {
        if let Some(w) = self.word() {
            // Before the poll that follows (the fence orders the store before its reads).
            w.store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            self.armed = true;
        } else if !self.armed && self.set_filter(true).is_ok() {
            self.armed = true;
        }
        // Drop what was queued before: readiness from now on means a new frame. (Every frame
        // that arrives while it is armed is queued, and wakes one more of the threads
        // blocked on it: the frames of a burst that came before the poll disarmed it wait
        // here, ~66 per block of Redis at -c 50: the ring's slots, or a `recvmmsg` of up to 64
        // of them without a ring.)
        match self.ring.as_mut() {
            Some(r) => {
                r.release();
            }
            None => {
                self.drain.run(self.fd);
            }
        }
    }

    /// A block returned with the socket readable. With a ring, a frame in it did that, or an
    /// error the kernel left on the socket: ENETDOWN when the interface goes down (also when
    /// it comes back up at once), which keeps the socket readable until someone reads it. With
    /// no frame there it is read (SO_ERROR clears it), or every block from now on would return
    /// at once. (Without a ring, the arm's `recvmmsg` takes the error.)
    pub(super) fn woken(&mut self) {
        if self.ring.as_ref().is_some_and(|r| !r.holds_frame()) {
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_ERROR writes one int into a valid buffer, on our own socket.
            unsafe {
                libc::getsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    libc::SO_ERROR,
                    (&mut err as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
        }
    }

    /// Worker processes share the interface, each keeping the frames of its own buckets: from
    /// now on only those of the buckets in `see` (and other IPv4 if `other_ip`, and whatever
    /// is not IPv4) wake this stack, as its packet sockets keep only those. Without the flag's
    /// filter every frame wakes it.
    pub(super) fn steer(&self, see: u32, other_ip: bool) {
        if let Some(f) = self.flag.as_ref() {
            f.word(SEE).store(see, Ordering::SeqCst);
            f.word(OTHER_IP)
                .store(u32::from(other_ip), Ordering::SeqCst);
            f.word(STEERED).store(1, Ordering::SeqCst);
        }
    }

    /// The frames of `see` (and other IPv4 if `other_ip`) wake this stack too, beside those
    /// that did: before the packet sockets take them, so that none reaches the ring unwoken.
    pub(super) fn widen(&self, see: u32, other_ip: bool) {
        if let Some(f) = self.flag.as_ref() {
            f.word(SEE).fetch_or(see, Ordering::SeqCst);
            f.word(OTHER_IP)
                .fetch_or(u32::from(other_ip), Ordering::SeqCst);
        }
    }

    pub(super) fn disarm(&mut self) {
        if let Some(w) = self.word() {
            w.store(0, Ordering::SeqCst);
            self.armed = false;
        } else if self.armed && self.set_filter(false).is_ok() {
            self.armed = false;
        }
    }
}

impl Drop for PacketWake {
    fn drop(&mut self) {
        // SAFETY: our own fds, closed once. (`flag` releases its own.)
        unsafe {
            libc::close(self.fd);
            for f in self.progs.into_iter().flatten() {
                libc::close(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steer::{flow_bucket, tcp_frame};
    use std::net::Ipv4Addr;

    const BPF_PROG_TEST_RUN: libc::c_long = 10;

    /// The start of `union bpf_attr` for BPF_PROG_TEST_RUN.
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
    }

    /// What the kernel's run of `prog` says of `frame`: the bytes to keep. (A socket filter's
    /// test run takes the frame's first 14 bytes as the link header and starts the packet
    /// after them, where a packet socket's filter sees the Ethernet header: a dummy header
    /// goes first.)
    fn run(prog: RawFd, frame: &[u8]) -> u32 {
        let mut data = vec![0u8; 14];
        data[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        data.extend_from_slice(frame);
        let mut attr = TestRun {
            prog_fd: prog as u32,
            data_size_in: data.len() as u32,
            data_in: data.as_ptr() as u64,
            repeat: 1,
            ..TestRun::default()
        };
        // SAFETY: bpf(2) reads and writes `attr` and reads `data`, both alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRun,
                std::mem::size_of::<TestRun>(),
            )
        };
        assert_eq!(rc, 0, "test run: {}", std::io::Error::last_os_error());
        attr.retval
    }

    /// The wake-up's filter, run by the kernel: nothing while disarmed; armed, every frame
    /// until steered, then a TCP frame only if its flow's bucket (`flow_bucket`, as the packet
    /// sockets' filter computes it) is among the worker's, other IPv4 as told, and ARP always.
    #[test]
    fn the_wake_up_filter_wakes_for_the_frames_of_the_workers_buckets() {
        let f = flag_filter().expect("bpf() with a mapped array map (Linux 5.5, root)");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let mut icmp = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 0, 0, 5, 0);
        icmp[23] = 1;
        let later_fragment = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 1, 2, 5, 0x0010);
        let first_fragment = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 1, 2, 5, 0x2000);
        let some = tcp_frame(Ipv4Addr::new(198, 18, 0, 1), 40000, 6379, 5, 0);
        assert_eq!(run(f.prog, &some), 0, "disarmed");
        f.word(FLAG).store(1, Ordering::SeqCst);
        assert_eq!(run(f.prog, &some), 1, "armed, not steered");
        assert_eq!(run(f.prog, &icmp), 1);
        for _ in 0..300 {
            let r = next();
            let see = r as u32;
            let other_ip = r & (1 << 40) != 0;
            let pf = &f;
            pf.word(SEE).store(see, Ordering::SeqCst);
            pf.word(OTHER_IP)
                .store(u32::from(other_ip), Ordering::SeqCst);
            pf.word(STEERED).store(1, Ordering::SeqCst);
            for _ in 0..10 {
                let r = next();
                let (ip, port, local) =
                    (Ipv4Addr::from(r as u32), (r >> 32) as u16, (r >> 48) as u16);
                let ihl = 5 + (r >> 60) as u8 % 3;
                let want = see >> flow_bucket(ip, port, local) & 1;
                assert_eq!(
                    run(f.prog, &tcp_frame(ip, port, local, ihl, 0x4000)),
                    want,
                    "{ip}:{port} -> {local} see {see:#x}"
                );
            }
            assert_eq!(run(f.prog, &arp), 1, "ARP wakes every worker");
            assert_eq!(run(f.prog, &icmp), u32::from(other_ip));
            // (The PMD's sockets get the datagram reassembled: any fragment may be the
            // worker's.)
            assert_eq!(run(f.prog, &later_fragment), 1);
            assert_eq!(run(f.prog, &first_fragment), 1);
            assert_eq!(run(f.prog, &some[..30]), 0, "a frame cut short is dropped");
        }
        f.word(FLAG).store(0, Ordering::SeqCst);
        assert_eq!(run(f.prog, &arp), 0, "disarmed");
    }

    /// A socket of ours on the loopback interface keeping one byte of each frame of the local
    /// experimental EtherType 0x88b5 (no other traffic), with a receive ring; and a socket
    /// that sends such frames there.
    fn ring_on_lo() -> (RawFd, WakeRing, RawFd, libc::sockaddr_ll) {
        let lo = CString::new("lo").unwrap();
        // SAFETY: plain socket calls with valid arguments.
        unsafe {
            let ifindex = libc::if_nametoindex(lo.as_ptr()) as i32;
            assert!(ifindex > 0);
            let all = (libc::ETH_P_ALL as u16).to_be();
            let rx = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(all),
            );
            assert!(
                rx >= 0,
                "AF_PACKET socket (root): {}",
                std::io::Error::last_os_error()
            );
            // ldh [12]; jeq #0x88b5, keep 1 byte, drop.
            let ins = |code, jt, jf, k| crate::steer::SockFilter { code, jt, jf, k };
            let only_ours = [
                ins(0x28, 0, 0, 12),
                ins(0x15, 0, 1, 0x88b5),
                ins(0x06, 0, 0, 1),
                ins(0x06, 0, 0, 0),
            ];
            attach_filter(rx, &only_ours).unwrap();
            let one: libc::c_int = 1;
            libc::setsockopt(
                rx,
                SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let ring = WakeRing::attach(rx).expect("a packet socket's receive ring");
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = ifindex;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            assert_eq!(
                libc::bind(rx, (&sll as *const libc::sockaddr_ll).cast(), len),
                0
            );
            let tx = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(tx >= 0);
            sll.sll_halen = 6;
            (rx, ring, tx, sll)
        }
    }

    /// Whether `fd` is readable within `ms` milliseconds.
    fn readable(fd: RawFd, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    }

    /// The frames the socket took (kept or dropped by a full ring) and those dropped, since
    /// the last call (PACKET_STATISTICS).
    fn taken(fd: RawFd) -> (u32, u32) {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: the option's struct, alive for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        (st.tp_packets, st.tp_drops)
    }

    /// Sends `n` frames on loopback and waits until the socket took all of them.
    fn send_frames(rx: RawFd, tx: RawFd, to: &libc::sockaddr_ll, n: u32) -> u32 {
        let mut frame = [0u8; 60];
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        for _ in 0..n {
            // SAFETY: a frame and an address alive for the call.
            let sent = unsafe {
                libc::sendto(
                    tx,
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (to as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(sent, 60, "{}", std::io::Error::last_os_error());
        }
        let (mut got, mut dropped) = (0, 0);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got < n {
            assert!(
                std::time::Instant::now() < until,
                "{got} of {n} frames arrived"
            );
            let (p, d) = taken(rx);
            (got, dropped) = (got + p, dropped + d);
            std::thread::yield_now();
        }
        assert_eq!(got, n, "frames of another test");
        dropped
    }

    /// The wake-up socket's ring: readable once a frame landed, not once `release` handed the
    /// slots back; and, when frames fill every slot and the kernel drops what comes next,
    /// readable still, so a thread about to sleep cannot miss them.
    #[test]
    fn the_wake_up_ring_is_readable_while_it_holds_frames_and_when_it_is_full() {
        // (Where a frame is expected, the poll waits: the kernel counts a frame in its
        // statistics before it marks its slot.)
        let (rx, mut ring, tx, to) = ring_on_lo();
        taken(rx);
        assert!(!readable(rx, 0), "readable before any frame");
        assert_eq!(send_frames(rx, tx, &to, 1), 0);
        assert!(readable(rx, 1000));
        assert_eq!(ring.release(), 1);
        assert!(!readable(rx, 0), "readable after the release");
        assert_eq!(ring.release(), 0);
        // Twice round the ring, slot by slot: it follows the kernel's position.
        for _ in 0..2 * RING_SLOTS / 100 {
            assert_eq!(send_frames(rx, tx, &to, 100), 0);
            assert!(readable(rx, 1000));
            assert_eq!(ring.release(), 100);
            assert!(!readable(rx, 0));
        }
        // Full: the last 10 dropped, readable.
        let extra = 10;
        assert_eq!(send_frames(rx, tx, &to, RING_SLOTS as u32 + extra), extra);
        assert!(readable(rx, 1000), "a full ring must stay readable");
        assert_eq!(ring.release(), RING_SLOTS);
        assert!(!readable(rx, 0));
        assert_eq!(send_frames(rx, tx, &to, 1), 0);
        assert!(readable(rx, 1000));
        assert_eq!(ring.release(), 1);
        drop(ring);
        // SAFETY: our own sockets.
        unsafe {
            libc::close(rx);
            libc::close(tx);
        }
    }
}
