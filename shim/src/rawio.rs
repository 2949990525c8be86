//! The library's own output: formatted into a buffer on the stack and written with a raw
//! `write(2)` syscall. Never through `write`/`std::io` (those are hooked names), never
//! allocating, errno left as it was.

use std::fmt::{self, Write as _};

use libc::c_int;

/// A fixed-size buffer on the stack that implements `fmt::Write`; text beyond its size is cut
/// and marked with "...".
pub struct StackBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
    truncated: bool,
}

impl<const N: usize> StackBuf<N> {
    pub const fn new() -> Self {
        StackBuf {
            buf: [0; N],
            len: 0,
            truncated: false,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Appends raw bytes (cut at the end of the buffer).
    pub fn push_bytes(&mut self, b: &[u8]) {
        let room = N - self.len;
        let n = b.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
        if n < b.len() {
            self.truncated = true;
        }
    }

    /// Ends the text with `...\n` if it was cut, else `\n` (overwriting the tail if full).
    fn finish_line(&mut self) {
        let tail: &[u8] = if self.truncated { b"...\n" } else { b"\n" };
        if N < tail.len() {
            return;
        }
        if self.len + tail.len() > N {
            self.len = N - tail.len();
        }
        self.buf[self.len..self.len + tail.len()].copy_from_slice(tail);
        self.len += tail.len();
    }
}

impl<const N: usize> Default for StackBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> fmt::Write for StackBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes());
        Ok(())
    }
}

/// Writes all of `bytes` to `fd` with the raw syscall, retrying on EINTR and short writes;
/// gives up silently on any other error. errno is preserved.
pub fn write_all(fd: c_int, mut bytes: &[u8]) {
    let saved = crate::errno::get();
    while !bytes.is_empty() {
        // SAFETY: write(2) on a valid buffer of `bytes.len()` bytes.
        let n = unsafe { libc::syscall(libc::SYS_write, fd, bytes.as_ptr(), bytes.len()) };
        if n < 0 {
            if crate::errno::get() == libc::EINTR {
                continue;
            }
            break;
        }
        bytes = &bytes[n as usize..];
    }
    crate::errno::set(saved);
}

/// One line on stderr: `mtcpshim: <message>`.
pub fn emit(args: fmt::Arguments<'_>) {
    let mut b = StackBuf::<1024>::new();
    b.push_bytes(b"mtcpshim: ");
    let _ = b.write_fmt(args);
    b.finish_line();
    write_all(2, b.as_bytes());
}

/// One line on stderr, then abort(3).
pub fn die(args: fmt::Arguments<'_>) -> ! {
    let mut b = StackBuf::<1024>::new();
    b.push_bytes(b"mtcpshim: fatal: ");
    let _ = b.write_fmt(args);
    b.finish_line();
    write_all(2, b.as_bytes());
    // SAFETY: abort never returns and is async-signal-safe.
    unsafe { libc::abort() }
}

/// `shim_log!("fmt", args..)`: one line on stderr through [`emit`].
#[macro_export]
macro_rules! shim_log {
    ($($t:tt)*) => { $crate::rawio::emit(format_args!($($t)*)) };
}

/// `shim_die!("fmt", args..)`: one line on stderr, then abort.
#[macro_export]
macro_rules! shim_die {
    ($($t:tt)*) => { $crate::rawio::die(format_args!($($t)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stackbuf_formats_and_truncates() {
        let mut b = StackBuf::<16>::new();
        write!(b, "port {}", 6379).unwrap();
        assert_eq!(b.as_bytes(), b"port 6379");
        assert!(!b.is_truncated());
        write!(b, " and a long tail").unwrap();
        assert!(b.is_truncated());
        b.finish_line();
        assert_eq!(b.as_bytes().len(), 16);
        assert!(b.as_bytes().ends_with(b"...\n"));
    }

    #[test]
    fn write_all_to_pipe_keeps_errno() {
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        crate::errno::set(libc::ENOTCONN);
        write_all(fds[1], b"hello\n");
        assert_eq!(crate::errno::get(), libc::ENOTCONN);
        let mut buf = [0u8; 16];
        // SAFETY: read into a 16-byte buffer.
        let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(&buf[..n as usize], b"hello\n");
        // SAFETY: closing fds this test opened.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        // Writing to a bad fd fails quietly and leaves errno alone.
        write_all(-1, b"x");
        assert_eq!(crate::errno::get(), libc::ENOTCONN);
    }
}
