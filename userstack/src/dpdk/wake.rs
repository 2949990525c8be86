//! Wake-up fds for drivers that have none: af_packet gets an AF_PACKET socket of our own whose
//! filter is switched on only while the stack sleeps; af_xdp's own socket is found among the
//! process's fds.

use std::ffi::CString;
use std::os::fd::RawFd;

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
/// on the same kernel interface, whose classic-BPF filter drops every frame while the stack
/// runs, and keeps one byte of each while the stack sleeps, so `poll` on it wakes the loop when a
/// frame arrives. Two setsockopt calls per sleep; nothing per packet while busy beyond the
/// kernel running a one-instruction filter.
pub(super) struct PacketWake {
    pub(super) fd: RawFd,
    armed: bool,
    /// Two loaded eBPF socket filters, [drop, keep 1 byte]: switching is attaching an already
    /// verified and compiled program (SO_ATTACH_BPF), where a classic filter is checked and
    /// JIT-compiled again on every SO_ATTACH_FILTER (with cross-CPU calls to install the
    /// code: a third of idle Redis's CPU under the shim went there). `None` if the kernel
    /// refuses bpf(): the classic filter then.
    progs: Option<[RawFd; 2]>,
}

const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_ATTACH_BPF: libc::c_int = 50;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

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

/// Loads `r0 = keep; exit` as a socket filter: the bytes of each frame to queue (0 drops it).
fn load_socket_filter(keep: i32) -> Option<RawFd> {
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = keep
        0xb7 | (u64::from(keep as u32) << 32),
        // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = b"GPL\0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: bpf(BPF_PROG_LOAD) reads attr and the instructions it points at, both alive
    // for the call; it returns a new fd (close-on-exec) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    (fd >= 0).then_some(fd as RawFd)
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
            let w = PacketWake {
                fd,
                armed: true,
                progs,
            };
            w.set_filter(false)?;
            let one: libc::c_int = 1;
            // Frames the stack itself sends must not wake it (Linux >= 4.20; ignored if older).
            libc::setsockopt(
                fd,
                SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            );
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

    pub(super) fn arm(&mut self) {
        if !self.armed && self.set_filter(true).is_ok() {
            self.armed = true;
        }
        // Drop what was queued before: readiness from now on means a new frame. (Every frame
        // that arrives while it is armed is queued, and wakes one more of the threads
        // blocked on it: the frames of a burst that came before the poll disarmed it wait
        // here, ~66 per block of Redis at -c 50; a call takes up to AT_ONCE of them.)
        const AT_ONCE: usize = 64;
        let mut b = [0u8; AT_ONCE];
        loop {
            // SAFETY: all-zero iovecs and headers, pointed at below.
            let mut iov: [libc::iovec; AT_ONCE] = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut hdr: [libc::mmsghdr; AT_ONCE] = unsafe { std::mem::zeroed() };
            for (i, (v, h)) in iov.iter_mut().zip(hdr.iter_mut()).enumerate() {
                v.iov_base = b[i..].as_mut_ptr().cast();
                v.iov_len = 1;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: AT_ONCE headers, each with one iovec of one byte of `b`, all alive for
            // the call; non-blocking, no timeout. Frames longer than a byte are truncated.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd,
                    hdr.as_mut_ptr(),
                    AT_ONCE as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n < AT_ONCE as libc::c_int {
                break;
            }
        }
    }

    pub(super) fn disarm(&mut self) {
        if self.armed && self.set_filter(false).is_ok() {
            self.armed = false;
        }
    }
}

impl Drop for PacketWake {
    fn drop(&mut self) {
        // SAFETY: our own fds, closed once.
        unsafe {
            libc::close(self.fd);
            for f in self.progs.into_iter().flatten() {
                libc::close(f);
            }
        }
    }
}
