//! What userstack, the shim and `mtcprun` share, without DPDK (so the launcher stays small and
//! links nothing of it):
//! - [`config`]: every `MTCP_*` variable, parsed and validated with messages that name it;
//! - [`statshm`]: the live-statistics file `/dev/shm/mtcpshim.<pid>`, writer and reader.
//!
//! userstack re-exports [`config`] as `userstack::config`.
#![deny(unsafe_code)]

pub mod config;
#[allow(unsafe_code)]
pub mod statshm;

pub use config::Config;
