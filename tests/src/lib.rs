//! Fixtures for mtcpshim integration tests and benchmark drivers.
//!
//! Everything here creates kernel objects (network namespaces, veth pairs, processes) and
//! removes them again in `Drop`, so a failing or panicking test leaves nothing behind.
//! Hygiene rules the fixtures enforce:
//! * addresses come from 198.18.0.0/15 ([`Subnet`]), one /24 per test, unique across
//!   concurrently running test processes;
//! * every namespace and interface name contains the creating pid and a counter
//!   ([`unique_ifname`], [`Netns::new`]); leftovers of processes that died without running
//!   their destructors (SIGKILL) are removed by [`cleanup_stale`], which runs once per process
//!   before the first namespace is created;
//! * [`ServerProcess`] only ever signals the pid it spawned itself.
//!
//! Declare guards in creation order (`Netns` first, then `VethPair`, then `ServerProcess`):
//! Rust drops locals in reverse order, so the server stops before its namespace disappears.
//!
//! Modules, by fixture:
//! * [`names`] — the names of the objects created, [`cleanup_stale`];
//! * [`command`] — [`run_checked`] for helper programs, [`built_artifact`] for built ones;
//! * [`subnet`] — [`Subnet`];
//! * [`netns`] — [`Netns`];
//! * [`links`] — [`VethPair`], [`LinkGuard`];
//! * [`server`] — [`ServerProcess`], [`ServerBuilder`], [`wait_stdout_contains`];
//! * [`report`] — the load clients' summary lines ([`parse_summary`]);
//! * [`strace`] — [`strace::traced`], the system calls of running processes;
//! * [`steps`] — the comparison programs' step-headed output and its comparison;
//! * [`stackdev`] — [`stackdev::StackDevice`], the device under any server run with the shim;
//! * [`redis`] — Redis test beds; [`workload`] — the load clients' request streams.

pub use anyhow::{anyhow, bail, Context, Error, Result};

pub mod command;
pub mod links;
pub mod names;
pub mod netns;
pub mod redis;
pub mod report;
pub mod server;
pub mod sides;
pub mod stackdev;
pub mod steps;
pub mod strace;
pub mod subnet;
pub mod tcpinfo;
pub mod workload;

pub use command::{built_artifact, run_checked};
pub use links::{Bridge, LinkGuard, VethPair};
pub use names::{cleanup_stale, unique_ifname, IFNAME_PREFIX, NETNS_PREFIX};
pub use netns::{run_in_netns, Netns};
pub use report::{kv_get, parse_kv, parse_summary, strace_calls};
pub use server::{cpu_ns, wait_stdout_contains, ServerBuilder, ServerProcess};
pub use sides::Side;
pub use subnet::Subnet;
