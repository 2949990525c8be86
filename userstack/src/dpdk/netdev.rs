//! Interface ioctls on the kernel side of a port (net_tap's netdev): its address and its
//! transmit queue length, without depending on iproute2.

/// Frames the tap's kernel side may queue for us (its txqueuelen).
pub(super) const TAP_QUEUE_LEN: i32 = 8192;

/// Runs `f` with a datagram socket and an `ifreq` naming `iface`, for interface ioctls
/// (without depending on iproute2). The socket is closed on every path.
fn with_ifreq(
    iface: &str,
    f: impl FnOnce(libc::c_int, &mut libc::ifreq) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // SAFETY: plain socket creation; ifreq is plain data.
    let (fd, mut req) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        (fd, std::mem::zeroed::<libc::ifreq>())
    };
    for (i, b) in iface.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    let result = f(fd, &mut req);
    // SAFETY: our own socket.
    unsafe { libc::close(fd) };
    result
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Gives a kernel interface an IPv4 address and brings it up (SIOCSIFADDR, SIOCSIFNETMASK,
/// SIOCSIFFLAGS).
pub(super) fn set_kernel_addr(iface: &str, cidr: crate::config::Cidr) -> std::io::Result<()> {
    fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux; plain data.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }
    with_ifreq(iface, |fd, req| {
        // SAFETY: interface ioctls with a valid ifreq on our socket.
        unsafe {
            req.ifr_ifru.ifru_addr = sockaddr(cidr.addr);
            check(libc::ioctl(fd, libc::SIOCSIFADDR, &*req))?;
            req.ifr_ifru.ifru_netmask = sockaddr(cidr.netmask());
            check(libc::ioctl(fd, libc::SIOCSIFNETMASK, &*req))?;
            check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut *req))?;
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &*req))
        }
    })
}

/// Sets a kernel interface's transmit queue length (SIOCSIFTXQLEN).
pub(super) fn set_tx_queue_len(iface: &str, len: i32) -> std::io::Result<()> {
    with_ifreq(iface, |fd, req| {
        // SAFETY: an interface ioctl with a valid ifreq on our socket; ifr_qlen is the int
        // member of the union.
        unsafe {
            req.ifr_ifru.ifru_ifindex = len;
            check(libc::ioctl(fd, libc::SIOCSIFTXQLEN, &*req))
        }
    })
}
