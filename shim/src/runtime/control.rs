//! The kernel side of the data-path cache's own connection to the application (see
//! `crate::cache`): a TCP socket of the library's to 127.0.0.1, and finding the application's
//! end of it.

use libc::c_int;

use super::{fds, Proc};
use crate::cache::ControlIo;

/// The local and peer address of TCP socket `fd`, if it is an IPv4 one.
fn ends(fd: c_int) -> Option<(libc::sockaddr_in, libc::sockaddr_in)> {
    let get = |peer: bool| {
        // SAFETY: sockaddr_in is plain data; the kernel writes at most `len` bytes.
        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let p = (&mut a as *mut libc::sockaddr_in).cast();
        // SAFETY: as above.
        let r = unsafe {
            if peer {
                libc::getpeername(fd, p, &mut len)
            } else {
                libc::getsockname(fd, p, &mut len)
            }
        };
        (r == 0 && a.sin_family == libc::AF_INET as libc::sa_family_t).then_some(a)
    };
    Some((get(false)?, get(true)?))
}

/// An IPv4 or IPv6 address as the kernel wrote it.
pub(super) fn socket_addr(ss: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET) into the storage.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )
                .into(),
            )
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6) into the storage.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(
                SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    u32::from_be(a.sin6_flowinfo),
                    a.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

fn same(a: &libc::sockaddr_in, b: &libc::sockaddr_in) -> bool {
    a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port
}

/// The fd of this process whose socket is the other end of the local connection `fd`.
pub(super) fn peer_end(fd: c_int) -> Option<c_int> {
    let (local, peer) = ends(fd)?;
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<c_int>().ok())
        .filter(|&n| n != fd)
        .find(|&n| ends(n).is_some_and(|(l, p)| same(&l, &peer) && same(&p, &local)))
}

impl ControlIo for Proc {
    fn connect(&mut self, port: u16) -> Result<i32, i32> {
        // SAFETY: a new socket of the library's, connected to 127.0.0.1:port.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return Err(crate::errno::get());
            }
            let fd = fds::lift(fd);
            let one: c_int = 1;
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const c_int).cast(),
                std::mem::size_of::<c_int>() as libc::socklen_t,
            );
            let a = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let r = libc::connect(
                fd,
                (&a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let e = crate::errno::get();
            if r < 0 && e != libc::EINPROGRESS {
                libc::close(fd);
                return Err(e);
            }
            Ok(fd)
        }
    }

    fn send(&mut self, fd: i32, bytes: &[u8]) -> Result<usize, i32> {
        // SAFETY: the library's own socket and a valid buffer.
        let n = unsafe {
            libc::send(
                fd,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = crate::errno::get();
            // A connection still being made takes nothing yet.
            return Err(if e == libc::ENOTCONN { libc::EAGAIN } else { e });
        }
        Ok(n as usize)
    }

    fn recv(&mut self, fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
        // SAFETY: the library's own socket and a valid buffer.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(crate::errno::get());
        }
        Ok(n as usize)
    }

    fn close(&mut self, fd: i32) {
        // SAFETY: the library's own socket.
        unsafe { libc::close(fd) };
    }

    fn say(&mut self, msg: &str) {
        crate::shim_log!("{msg}");
    }
}
