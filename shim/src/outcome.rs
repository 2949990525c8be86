//! What an op tells its hook: the bottom floor every other module of the shim may use.

use libc::c_int;

/// The result of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Not the library's business after all: libc's function runs with the same arguments.
    Bypass(Bypass),
    /// Handled: the hook returns this value (errno untouched).
    Done(T),
    /// Handled, failed: the hook sets errno to this value and returns -1.
    Error(c_int),
}

/// Why a call went to libc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// The call is not about one of the library's sockets.
    NotOurs,
}

/// An answer of the socket layer: `None` hands the call to the kernel, `Some(Err(errno))`
/// fails it.
pub type Answer<T> = Option<Result<T, c_int>>;

impl<T> Outcome<T> {
    /// The hook's outcome for a socket layer's answer.
    #[inline]
    pub fn from_answer(a: Answer<T>) -> Outcome<T> {
        match a {
            None => Outcome::Bypass(Bypass::NotOurs),
            Some(Ok(v)) => Outcome::Done(v),
            Some(Err(e)) => Outcome::Error(e),
        }
    }
}
