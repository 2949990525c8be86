//! The machinery every hook shares: the `intercept!` macro that expands the table, the lazy
//! resolution of the originals, the mode word, the slow path and `MTCP_SHIM_TRACE`.
//!
//! Every hook has one shape:
//!
//! 1. Load the cached original (an `AtomicUsize` per call). Zero the first time: resolve it
//!    with `dlsym(RTLD_NEXT, name)` (after reading the environment, once per process), or
//!    abort with one line on stderr if libc has no such symbol. A hook entered again *while this
//!    thread is inside dlsym* cannot wait for it and makes the raw syscall instead.
//! 2. Load the mode word. None of the bits this call's gate depends on is set (always so with
//!    `MTCP_PORTS` and `MTCP_SHIM_TRACE` unset; for fd calls, also while no fd was ever ours):
//!    tail-call the original with the caller's arguments. errno is never touched on this path.
//! 3. Otherwise the slow path ([`slow`]). The call is counted if tracing (unless the library
//!    made it itself). If the call's gate says it may be ours (the fd is in the fd table;
//!    `MTCP_PORTS` is set, for socket/bind/listen/epoll_create; some fd is ours, for
//!    poll/select) and the thread is not inside the library already (guard; else the original
//!    runs), the hook enters the library (guard),
//!    saves errno, runs the op under `catch_unwind`, leaves, and acts on its [`Outcome`]:
//!    `Bypass` restores errno and calls the original *outside* the library (a blocking call
//!    stays interruptible and signal handlers see normal hooks), `Done(v)` restores errno and
//!    returns `v`, `Error(e)` sets errno to `e` and returns -1.
//!    A panic prints one line and aborts.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use libc::{c_int, ssize_t};

use crate::mode::{MODE, MODE_TRACE};
use crate::outcome::Outcome;

/// What a failed call returns: -1 for both `int` and `ssize_t` calls.
pub trait CRet: Copy {
    const FAIL: Self;
}

impl CRet for c_int {
    const FAIL: Self = -1;
}

impl CRet for ssize_t {
    const FAIL: Self = -1;
}

impl CRet for libc::c_long {
    const FAIL: Self = -1;
}

/// The C type of an original: `orig_type!((a, b, c) ; ret)` or, for variadic calls,
/// `orig_type!((a, b) ; vararg ; ret)`.
macro_rules! orig_type {
    (($($t:ty),*) ; $($vt:ty),+ ; $ret:ty) => { unsafe extern "C" fn($($t,)* ...) -> $ret };
    (($($t:ty),*) ; $ret:ty) => { unsafe extern "C" fn($($t),*) -> $ret };
}

/// Expands the table of intercepted calls (see `table.rs` for the syntax) into:
/// - `Id`, one variant per call, `COUNT` and `NAMES`;
/// - `ORIG`, the saved originals, and `C_NAMES` for dlsym;
/// - one exported `#[no_mangle] extern "C"` hook per call, which forwards to the original or
///   to `crate::ops::<name>` with the same arguments.
///
/// A variadic C call (`fcntl(int, int, ...)`) is written `fcntl(fd: c_int, cmd: c_int;
/// ... arg: c_ulong)`: the hook takes the optional arguments as pointer-sized integers (on
/// x86-64 and AArch64 Linux the first six integer arguments arrive in the same registers
/// whether a call is variadic or not, and whether or not the caller passed them; `syscall`
/// takes six this way) and calls the original as the variadic function it is.
macro_rules! intercept {
    ( $(
        $(#[doc = $doc:literal])*
        fn $name:ident ( $($a:ident : $t:ty),* $(; ... $($va:ident : $vt:ty),+)? ) -> $ret:ty
            where $gk:ident ( $($ga:expr),* ), raw $raw:expr ;
    )* ) => {
        /// One variant per intercepted call, in table order.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Id { $($name),* }

        /// Number of intercepted calls.
        pub const COUNT: usize = [$(Id::$name),*].len();

        /// Their C names, indexed by `Id`.
        pub static NAMES: [&str; COUNT] = [$(stringify!($name)),*];

        /// NUL-terminated names for dlsym.
        pub(crate) static C_NAMES: [&[u8]; COUNT] = [$(concat!(stringify!($name), "\0").as_bytes()),*];

        /// The originals (addresses from dlsym; 0 until the first call of any hook).
        pub(crate) static ORIG: [::std::sync::atomic::AtomicUsize; COUNT] =
            [const { ::std::sync::atomic::AtomicUsize::new(0) }; COUNT];

        /// Calls per hook, counted while `MTCP_SHIM_TRACE` is set.
        pub(crate) static TRACE_COUNTS: [::std::sync::atomic::AtomicU64; COUNT] =
            [const { ::std::sync::atomic::AtomicU64::new(0) }; COUNT];

        $(
            $(#[doc = $doc])*
            #[doc = ""]
            #[doc = "# Safety"]
            #[doc = ""]
            #[doc = concat!("The C contract of libc's `", stringify!($name), "`.")]
            #[no_mangle]
            pub unsafe extern "C" fn $name($($a: $t),* $($(, $va: $vt)+)?) -> $ret {
                type Orig = orig_type!(($($t),*) $(; $($vt),+)? ; $ret);

                /// Everything but the passthrough fast path, out of line so that the hook
                /// itself is two loads, a test and a jump (no argument spills).
                #[inline(never)]
                unsafe fn not_fast($($a: $t),* $($(, $va: $vt)+)?) -> $ret {
                    let p = ORIG[Id::$name as usize].load(::std::sync::atomic::Ordering::Acquire);
                    let p = if p != 0 {
                        p
                    } else {
                        match $crate::hook::resolve(Id::$name as usize, &ORIG, &C_NAMES, &NAMES) {
                            Some(p) => p,
                            // SAFETY: re-entered from inside dlsym on this thread: the raw
                            // syscall with the caller's own arguments.
                            None => return unsafe { $raw } as $ret,
                        }
                    };
                    // SAFETY: `p` is what dlsym returned for this very name in libc, whose C
                    // type is `Orig`.
                    let real = unsafe { ::std::mem::transmute::<usize, Orig>(p) };
                    if $crate::mode::MODE.load(::std::sync::atomic::Ordering::Relaxed) & gate::mask::$gk == 0 {
                        // SAFETY: forwarding the caller's arguments unchanged.
                        return unsafe { real($($a),* $($(, $va)+)?) };
                    }
                    $crate::hook::slow(
                        &TRACE_COUNTS[Id::$name as usize],
                        NAMES[Id::$name as usize],
                        move || gate::$gk($($ga),*),
                        // SAFETY: the op gets the caller's arguments, under the C contract.
                        move || unsafe { $crate::ops::$name($($a),* $($(, $va)+)?) },
                        // SAFETY: forwarding the caller's arguments unchanged.
                        move || unsafe { real($($a),* $($(, $va)+)?) },
                    )
                }

                let p = ORIG[Id::$name as usize].load(::std::sync::atomic::Ordering::Acquire);
                if p != 0
                    && $crate::mode::MODE.load(::std::sync::atomic::Ordering::Relaxed) & gate::mask::$gk == 0
                {
                    // SAFETY: `p` is what dlsym returned for this very name in libc, whose C
                    // type is `Orig`; the caller's arguments are forwarded unchanged.
                    return unsafe { ::std::mem::transmute::<usize, Orig>(p)($($a),* $($(, $va)+)?) };
                }
                // SAFETY: the caller's arguments, under the C contract.
                unsafe { not_fast($($a),* $($(, $va)+)?) }
            }
        )*
    };
}

thread_local! {
    /// Set while this thread is inside dlsym.
    static RESOLVING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Resolves the original of `id` (cold path). `None` when this thread is already inside dlsym
/// (the hook then makes the raw syscall).
///
/// The first resolution resolves every call of the table at once (about 50 dlsym calls, tens
/// of microseconds), so that a hook first called later, e.g. `write` from a signal handler,
/// finds its original without calling dlsym (which is not async-signal-safe). A name libc lacks
/// stays unresolved and is reported when, and only if, the program calls it. An address inside
/// this library itself (it would recurse forever) is never stored.
#[cold]
#[inline(never)]
pub(crate) fn resolve(
    id: usize,
    orig: &[AtomicUsize],
    c_names: &[&[u8]],
    names: &[&str],
) -> Option<usize> {
    crate::init::ensure();
    if RESOLVING.with(|r| r.replace(true)) {
        return None;
    }
    let saved = crate::errno::get();
    let own = object_base(resolve as *const libc::c_void);
    for (slot, name) in orig.iter().zip(c_names) {
        if slot.load(Ordering::Acquire) != 0 {
            continue;
        }
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) };
        if !p.is_null() && (own.is_none() || object_base(p) != own) {
            slot.store(p as usize, Ordering::Release);
        }
    }
    RESOLVING.with(|r| r.set(false));
    let p = orig[id].load(Ordering::Acquire);
    if p == 0 {
        unresolvable(names[id], c_names[id]);
    }
    crate::errno::set(saved);
    Some(p)
}

/// The base address of the loaded object that contains `addr`.
fn object_base(addr: *const libc::c_void) -> Option<usize> {
    // SAFETY: all-zero is a valid Dl_info; dladdr only writes it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr on any address is allowed; it fills `info` on success.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 {
        return None;
    }
    Some(info.dli_fbase as usize)
}

/// The program called `id`, whose original cannot be found: say why, abort.
#[cold]
fn unresolvable(name: &str, c_name: &[u8]) -> ! {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, c_name.as_ptr().cast()) };
    if !p.is_null() {
        crate::shim_die!(
            "dlsym(RTLD_NEXT, \"{name}\") found mtcpshim itself: the library is loaded ahead of \
             itself; put it in LD_PRELOAD only once"
        );
    }
    // SAFETY: dlerror returns NULL or a NUL-terminated message.
    let err = unsafe { libc::dlerror() };
    let why = if err.is_null() {
        &b"no error message"[..]
    } else {
        // SAFETY: non-null dlerror result is a C string.
        unsafe { std::ffi::CStr::from_ptr(err) }.to_bytes()
    };
    crate::shim_die!(
        "the C library has no `{name}` (dlsym(RTLD_NEXT, \"{name}\"): {}); the program called \
         it through mtcpshim, which cannot forward it",
        why.escape_ascii()
    );
}

/// The slow path of a hook (see the module comment): `count` is the hook's trace counter and
/// `name` its C name. `gate` says whether the call may be the library's; `op` is the library's
/// version; `real` the original with the caller's arguments. (Inlined into each hook's
/// out-of-line part, which is the only caller of its instance: a call layer less per call.)
#[inline(always)]
pub(crate) fn slow<R: CRet>(
    count: &AtomicU64,
    name: &str,
    gate: impl FnOnce() -> bool,
    op: impl FnOnce() -> Outcome<R>,
    real: impl FnOnce() -> R,
) -> R {
    if MODE.load(Ordering::Relaxed) & MODE_TRACE != 0 && !crate::guard::active() {
        // Calls the library makes itself are not counted.
        count.fetch_add(1, Ordering::Relaxed);
    }
    // The gate first: it is a load or two, the guard is a TLS access. Inside the library
    // every call goes to libc, but two: the af_packet PMD's PACKET_FANOUT request while the
    // stack starts its port (runtime/fanout.rs), and the epoll wait of DPDK's interrupt thread
    // after its callbacks ran (guard.rs).
    if !gate() {
        return real();
    }
    let inside = match crate::guard::Entered::outermost() {
        Some(e) => e,
        None if crate::runtime::starting_dpdk() && name == "setsockopt" => {
            crate::guard::Entered::new()
        }
        // DPDK's interrupt thread, back from its callbacks (guard.rs): its next wait is ours.
        None if matches!(name, "epoll_wait" | "epoll_pwait" | "epoll_pwait2") => {
            match crate::guard::callbacks_end() {
                Some(e) => e,
                None => return real(),
            }
        }
        None => return real(),
    };
    let saved = crate::errno::get();
    let res = catch_unwind(AssertUnwindSafe(op));
    drop(inside);
    match res {
        Ok(Outcome::Bypass(_why)) => {
            crate::errno::set(saved);
            real()
        }
        Ok(Outcome::Done(v)) => {
            crate::errno::set(saved);
            v
        }
        Ok(Outcome::Error(e)) => {
            crate::errno::set(e);
            R::FAIL
        }
        Err(_) => crate::shim_die!(
            "panic inside the `{}` hook (message above); aborting: a panic must not unwind \
             into C and the socket layer's state can no longer be trusted",
            name
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// MTCP_SHIM_TRACE=1: count hook calls, print the counts at exit
// ---------------------------------------------------------------------------------------------

/// Writes `mtcpshim: trace pid=N: name=count ...` (calls with a non-zero count, table order)
/// to stderr with raw writes. Run at exit (`.fini_array`, in `table`) when tracing.
pub fn write_trace_line(counts: &[AtomicU64], names: &[&str]) {
    use std::fmt::Write as _;
    let mut b = crate::rawio::StackBuf::<4096>::new();
    // SAFETY: getpid has no preconditions.
    let _ = write!(b, "mtcpshim: trace pid={}:", unsafe { libc::getpid() });
    for (c, name) in counts.iter().zip(names) {
        let n = c.load(Ordering::Relaxed);
        if n != 0 {
            let _ = write!(b, " {name}={n}");
        }
    }
    b.push_bytes(b"\n");
    crate::rawio::write_all(2, b.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Bypass;
    use crate::table::{Id, COUNT, C_NAMES, NAMES, ORIG, TRACE_COUNTS};

    /// `slow` as hook `id` calls it.
    fn slow_as<R: CRet>(
        id: Id,
        gate: impl FnOnce() -> bool,
        op: impl FnOnce() -> Outcome<R>,
        real: impl FnOnce() -> R,
    ) -> R {
        slow(
            &TRACE_COUNTS[id as usize],
            NAMES[id as usize],
            gate,
            op,
            real,
        )
    }

    fn resolve_id(id: Id) -> Option<usize> {
        resolve(id as usize, &ORIG, &C_NAMES, &NAMES)
    }

    // `slow` is exercised directly: the mode word of the test process is whatever other tests
    // left (the hooks are live in this test binary too), which `slow` does not depend on.

    #[test]
    fn slow_path_outcomes_and_errno() {
        let id = Id::read;
        // Bypass: the original runs with the caller's errno.
        crate::errno::set(libc::ENOTCONN);
        let r: c_int = slow_as(
            id,
            || true,
            || {
                crate::errno::set(libc::EIO); // the op's own errno must not leak
                Outcome::Bypass(Bypass::NotOurs)
            },
            || {
                assert_eq!(crate::errno::get(), libc::ENOTCONN);
                7
            },
        );
        assert_eq!(r, 7);
        // Done: the value, errno untouched.
        crate::errno::set(libc::ENOTCONN);
        let r: ssize_t = slow_as(
            id,
            || true,
            || {
                crate::errno::set(libc::EIO);
                Outcome::Done(42)
            },
            || unreachable!(),
        );
        assert_eq!((r, crate::errno::get()), (42, libc::ENOTCONN));
        // Error: -1 and that errno.
        let r: c_int = slow_as(
            id,
            || true,
            || Outcome::Error(libc::EAGAIN),
            || unreachable!(),
        );
        assert_eq!((r, crate::errno::get()), (-1, libc::EAGAIN));
        // Gate closed: the op does not run.
        let r: c_int = slow_as(id, || false, || unreachable!(), || 3);
        assert_eq!(r, 3);
    }

    #[test]
    fn op_runs_inside_the_guard_and_nested_calls_bypass() {
        let r: c_int = slow_as(
            Id::close,
            || true,
            || {
                assert!(crate::guard::active());
                // A hook entered from inside the library goes straight to the original.
                let inner: c_int = slow_as(Id::close, || true, || unreachable!(), || 9);
                Outcome::Done(inner)
            },
            || unreachable!(),
        );
        assert_eq!(r, 9);
        assert!(!crate::guard::active());
    }

    #[test]
    fn resolve_inside_dlsym_falls_back() {
        RESOLVING.with(|r| r.set(true));
        assert_eq!(resolve_id(Id::epoll_pwait2), None);
        RESOLVING.with(|r| r.set(false));
        let p = resolve_id(Id::epoll_pwait2).expect("glibc 2.35+ has epoll_pwait2");
        assert_ne!(p, 0);
        assert_eq!(ORIG[Id::epoll_pwait2 as usize].load(Ordering::Relaxed), p);
        // Every call of the table got resolved on the way, none to this binary's own hooks.
        let own = object_base(resolve as *const libc::c_void);
        for (i, slot) in ORIG.iter().enumerate() {
            let p = slot.load(Ordering::Relaxed);
            assert_ne!(p, 0, "{} unresolved", NAMES[i]);
            assert_ne!(object_base(p as *const libc::c_void), own, "{}", NAMES[i]);
        }
    }

    #[test]
    fn hooks_forward_and_keep_errno() {
        // The exported hooks are live in this binary; call one directly.
        let mut b = [0u8; 4];
        crate::errno::set(0);
        // SAFETY: read(2) on an invalid fd into a valid buffer.
        let r = unsafe { crate::table::read(-1, b.as_mut_ptr().cast(), b.len()) };
        assert_eq!((r, crate::errno::get()), (-1, libc::EBADF));
        let mut fds = [0; 2];
        // SAFETY: pipe(2) into a 2-element array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        crate::errno::set(libc::EXDEV);
        // SAFETY: write/read/close on the pipe this test opened.
        unsafe {
            assert_eq!(crate::table::write(fds[1], b"ok".as_ptr().cast(), 2), 2);
            assert_eq!(
                crate::table::__read_chk(fds[0], b.as_mut_ptr().cast(), 2, 4),
                2
            );
            assert_eq!(
                crate::errno::get(),
                libc::EXDEV,
                "success leaves errno alone"
            );
            assert_eq!(crate::table::fcntl(fds[0], libc::F_GETFD, 0), 0);
            assert_eq!(crate::table::close(fds[0]), 0);
            assert_eq!(crate::table::close(fds[1]), 0);
        }
        assert_eq!(&b[..2], b"ok");
    }

    #[test]
    fn table_names_match_ids() {
        assert_eq!(NAMES.len(), COUNT);
        assert_eq!(NAMES[Id::socket as usize], "socket");
        assert_eq!(NAMES[Id::__ppoll_chk as usize], "__ppoll_chk");
        for (i, n) in C_NAMES.iter().enumerate() {
            assert_eq!(&n[..n.len() - 1], NAMES[i].as_bytes());
            assert_eq!(n.last(), Some(&0));
        }
    }
}
