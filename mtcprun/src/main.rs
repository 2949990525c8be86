//! `mtcprun`: runs a program with its flagged ports served by the user-space stack.
//!
//!     mtcprun [--dev DEV] [--addr A/N] [--gateway G] [--ports P,...] [--profile NAME]
//!             [--pcap FILE] [--tap-peer A/N] -- COMMAND ARGS...
//!     mtcprun stats PID [--watch [SECS]] [--count N] [--json]
//!
//! The first form checks the whole configuration with the stack's own parser before anything
//! starts, then execs COMMAND (same pid) with `LD_PRELOAD=libmtcpshim.so` and the `MTCP_*`
//! variables set. The second reads a running stack's live statistics
//! (`/dev/shm/mtcpshim.<pid>`). See docs/operating.md.
//!
//! Exit codes: 2 for a bad option or configuration (nothing was started), 1 for other failures
//! before the exec (no libmtcpshim.so; `stats`: no statistics for that pid), 126/127 when the
//! command cannot be run (as a shell does).

mod profile;
mod run;
mod stats;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("stats") => stats::main(&args[1..]),
        _ => run::main(&args),
    };
    std::process::exit(code);
}

/// Prints `mtcprun: MESSAGE` on stderr and returns `code`.
fn fail(code: i32, msg: impl std::fmt::Display) -> i32 {
    eprintln!("mtcprun: {msg}");
    code
}
