//! userstack: a user-space TCP/IPv4 stack over DPDK, usable on its own (no LD_PRELOAD).
//!
//! Layers, bottom up:
//! - [`link`]: Ethernet frames in and out of a device without copies ([`dpdk`] for real ports).
//! - [`net`]: Ethernet and ARP for the whole stack; routing to the gateway; pcap and faults.
//! - [`tcp`]: the TCP engine of one connection, without I/O (SACK recovery, Linux's timers).
//! - [`stack`]: demux, one engine per connection, timers, backlog, socket calls.
//! - [`config`]: every `MTCP_*` variable, parsed once (from `mtcp-common`, shared with mtcprun).
//! - [`mtcp_common::statshm`]: live statistics in `/dev/shm/mtcpshim.<pid>`, published by `poll`.
//!
//! See `docs/architecture.md` for why the stack is shaped this way.
#![deny(unsafe_code)]

pub mod clock;
mod csum;
pub use mtcp_common::config;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod epoll;
pub mod faults;
pub mod idle;
pub mod link;
pub mod net;
pub mod pcap;
#[allow(unsafe_code)]
mod prefetch;
pub mod seq;
pub mod stack;
pub mod stats;
pub mod steer;
pub mod tcp;

pub use config::Config;
pub use stack::{
    ConnId, Event, Keepalive, Readiness, Respond, SockError, Stack, TcpInfo, TcpOptions,
};
pub use stats::Stats;

/// The hash map for the per-packet and per-call lookups (connections, fds, epoll entries):
/// seeded foldhash, about a third of std's SipHash per lookup.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
