//! The kernel side of socket options: identity sockets and what they inherit from listeners.

use std::sync::OnceLock;

use libc::{c_int, socklen_t};

use crate::sockets::{Family, SockOpt};

/// The options a socket accepted on Linux inherits from its listener (the child socket is a
/// copy of the listener's), as far as a program can read them back.
const INHERITED: [(c_int, c_int); 22] = [
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    (libc::SOL_SOCKET, libc::SO_RCVBUF),
    (libc::SOL_SOCKET, libc::SO_SNDBUF),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_DEBUG),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    // (Linux clones the listener's Nagle flags: a corked listener's sockets start corked.)
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_TTL),
];

/// getsockopt into a small buffer: the value's bytes.
fn get(fd: c_int, level: c_int, name: c_int) -> Option<Vec<u8>> {
    let mut buf = [0u8; 32];
    let mut len = buf.len() as socklen_t;
    // SAFETY: getsockopt into our own buffer of `len` bytes.
    let r = unsafe { libc::getsockopt(fd, level, name, buf.as_mut_ptr().cast(), &mut len) };
    (r == 0).then(|| buf[..(len as usize).min(buf.len())].to_vec())
}

/// setsockopt of raw bytes.
pub(super) fn set(fd: c_int, level: c_int, name: c_int, value: &[u8]) -> Result<(), c_int> {
    // SAFETY: setsockopt from a slice of its own length.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as socklen_t,
        )
    };
    if r < 0 {
        return Err(crate::errno::get());
    }
    Ok(())
}

/// A fresh TCP socket of `family`.
fn socket(family: Family, flags: c_int) -> Result<c_int, c_int> {
    // SAFETY: plain socket creation.
    let fd = unsafe {
        libc::socket(
            family.domain(),
            libc::SOCK_STREAM | flags,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(crate::errno::get());
    }
    Ok(fd)
}

/// A fresh socket's values of the inherited options, read once per family.
fn defaults(family: Family) -> &'static [Option<Vec<u8>>] {
    static INET: OnceLock<Vec<Option<Vec<u8>>>> = OnceLock::new();
    static INET6: OnceLock<Vec<Option<Vec<u8>>>> = OnceLock::new();
    let cell = match family {
        Family::Inet => &INET,
        Family::Inet6 => &INET6,
    };
    cell.get_or_init(|| {
        let Ok(fd) = socket(family, libc::SOCK_CLOEXEC) else {
            return vec![None; INHERITED.len()];
        };
        let v = INHERITED.iter().map(|&(l, n)| get(fd, l, n)).collect();
        // SAFETY: the socket just made.
        unsafe { libc::close(fd) };
        v
    })
}

/// The inherited options of listener `fd` that are not at their default.
pub(super) fn listener_options(fd: c_int, family: Family) -> Vec<SockOpt> {
    let defaults = defaults(family);
    INHERITED
        .iter()
        .zip(defaults)
        .filter_map(|(&(level, name), default)| {
            let value = get(fd, level, name)?;
            (Some(&value) != default.as_ref()).then_some(SockOpt { level, name, value })
        })
        .collect()
}

/// The options a connection connect() makes of kernel socket `fd` takes (see
/// `Host::connect_options`): those the application set (`set`), read back, or else the ones
/// an accepted socket would inherit that are not at their default, and TCP_SYNCNT.
pub(super) fn connect_options(
    fd: c_int,
    family: Family,
    set: Option<&[(c_int, c_int)]>,
) -> Vec<SockOpt> {
    let read = |&(level, name): &(c_int, c_int)| {
        get(fd, level, name).map(|value| SockOpt { level, name, value })
    };
    match set {
        Some(set) => set.iter().filter_map(read).collect(),
        None => {
            let mut v = listener_options(fd, family);
            v.extend(read(&(libc::IPPROTO_TCP, libc::TCP_SYNCNT)));
            // The options a connection takes that a listener's accepted sockets do not.
            for o in [libc::TCP_NOTSENT_LOWAT, libc::TCP_WINDOW_CLAMP] {
                v.extend(read(&(libc::IPPROTO_TCP, o)).filter(|o| o.value.iter().any(|&b| b != 0)));
            }
            v
        }
    }
}

/// Int option (`level`, `name`) of a fresh TCP socket of `family`: the system's default.
/// TCP_SYNCNT (net.ipv4.tcp_syn_retries) and IPV6_V6ONLY (net.ipv6.bindv6only) are read once.
pub(super) fn default_int(family: Family, level: c_int, name: c_int) -> Option<c_int> {
    static SYNCNT: [OnceLock<c_int>; 2] = [OnceLock::new(), OnceLock::new()];
    static V6ONLY: OnceLock<c_int> = OnceLock::new();
    let cell = match (level, name) {
        (libc::IPPROTO_TCP, libc::TCP_SYNCNT) => &SYNCNT[usize::from(family == Family::Inet6)],
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) if family == Family::Inet6 => &V6ONLY,
        _ => return get_int(checker(family), level, name),
    };
    // (Not remembered while it cannot be read: no socket to read it from, EMFILE.)
    match cell.get() {
        Some(v) => Some(*v),
        None => {
            let v = get_int(checker(family), level, name)?;
            Some(*cell.get_or_init(|| v))
        }
    }
}

/// A connection's identity: a TCP socket that is never connected, with the listener's
/// inherited options.
pub(super) fn identity_socket(
    flags: c_int,
    family: Family,
    inherit: &[SockOpt],
) -> Result<c_int, c_int> {
    let fd = socket(family, flags)?;
    for o in inherit {
        let mut value = o.value.clone();
        if o.level == libc::SOL_SOCKET && matches!(o.name, libc::SO_RCVBUF | libc::SO_SNDBUF) {
            // getsockopt reports twice what setsockopt was given (the kernel's bookkeeping).
            if let Ok(b) = <[u8; 4]>::try_from(&value[..value.len().min(4)]) {
                value = (c_int::from_ne_bytes(b) / 2).to_ne_bytes().to_vec();
            }
        }
        // An option the listener holds is one this socket takes.
        let _ = set(fd, o.level, o.name, &value);
    }
    Ok(fd)
}

/// Whether the kernel takes setsockopt(`level`, `name`, `value`) on a TCP socket of `family`:
/// tried on a socket of our own, one per family, that nobody else uses.
pub(super) fn check(family: Family, level: c_int, name: c_int, value: &[u8]) -> Result<(), c_int> {
    let fd = checker(family);
    if fd < 0 {
        // No socket to try on (EMFILE): the option is not one the stack honours anyway.
        return Ok(());
    }
    set(fd, level, name, value)
}

/// The socket of `family` options are tried on (`check`) and defaults read from
/// (`default_int`), made once, above the application's fds; -1 if it could not be.
fn checker(family: Family) -> c_int {
    static INET: OnceLock<c_int> = OnceLock::new();
    static INET6: OnceLock<c_int> = OnceLock::new();
    let cell = match family {
        Family::Inet => &INET,
        Family::Inet6 => &INET6,
    };
    *cell.get_or_init(|| socket(family, libc::SOCK_CLOEXEC).map_or(-1, super::fds::lift))
}

/// getsockopt of an int option.
pub(super) fn get_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let v = get(fd, level, name)?;
    Some(c_int::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}
