//! The stack's side of the live statistics (`mtcp_common::statshm`): what it publishes, and when.
//!
//! Per poll this costs one comparison (`Shm::due`) and one branch (`Shm::after_rx`); a
//! publication, at most every [`INTERVAL`], copies the counters, the link's counters (mempool
//! use), the connection counts by TCP state and the listeners' queues into the mapped file. The
//! counts by state are kept up to date where a connection changes state (`StateCounts`), so a
//! publication never walks the connections; the listener table walks the listeners (a handful).
//! A poll that found no work publishes only if work since the last publication is not shown yet
//! or the last publication is [`IDLE_INTERVAL`] old:
//! an idle loop on a device without a wake-up fd (memif) polls after every nap, ~500 times a
//! second, and publishing each time (the device's counters, the mempool's use) was a quarter of
//! its CPU. While a loop sleeps nothing is published: the shim's keeper thread polls an idle
//! stack every 10 ms, and `examples/echo` wakes at least once a second, so the file is never
//! older than that.

use std::time::Duration;

use mtcp_common::statshm::{ListenerStat, Writer, MAX_LISTENERS};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use super::Stack;
use crate::config::Config;
use crate::link::Link;
use crate::net::Micros;
use crate::stats::Stats;

/// The shortest time between two publications.
pub const INTERVAL: Duration = Duration::from_millis(1);
/// The shortest time between two publications by polls that found no work.
pub const IDLE_INTERVAL: Duration = Duration::from_millis(10);
const IDLE_INTERVAL_US: Micros = IDLE_INTERVAL.as_micros() as Micros;

/// TCP states in the order of [`STATE_NAMES`].
const STATES: usize = 11;

/// `tcp.<state>` names, in smoltcp's order of states.
pub const STATE_NAMES: [&str; STATES] = [
    "closed",
    "listen",
    "syn_sent",
    "syn_received",
    "established",
    "fin_wait_1",
    "fin_wait_2",
    "close_wait",
    "closing",
    "last_ack",
    "time_wait",
];

fn state_index(s: tcp::State) -> usize {
    match s {
        tcp::State::Closed => 0,
        tcp::State::Listen => 1,
        tcp::State::SynSent => 2,
        tcp::State::SynReceived => 3,
        tcp::State::Established => 4,
        tcp::State::FinWait1 => 5,
        tcp::State::FinWait2 => 6,
        tcp::State::CloseWait => 7,
        tcp::State::Closing => 8,
        tcp::State::LastAck => 9,
        tcp::State::TimeWait => 10,
    }
}

/// Connections by the TCP state the stack last saw them in (`Conn::last_state`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateCounts([u64; STATES]);

impl StateCounts {
    pub(super) fn add(&mut self, s: tcp::State) {
        self.0[state_index(s)] += 1;
    }

    pub(super) fn remove(&mut self, s: tcp::State) {
        let c = &mut self.0[state_index(s)];
        *c = c.saturating_sub(1);
    }

    pub(super) fn moved(&mut self, from: tcp::State, to: tcp::State) {
        self.remove(from);
        self.add(to);
    }

    /// `(state name, connections)` in smoltcp's order of states.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STATE_NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

/// Groups after the stack's counters: link, mempool, connections, then the TCP states.
const EXTRA: [&str; 7] = [
    "link.rx_missed",
    "mempool.in_use",
    "mempool.avail",
    "mempool.size",
    "mempool.tx_backlog",
    "conns.live",
    "conns.listeners",
];
const VALUES: usize = Stats::COUNT + EXTRA.len() + STATES;

#[derive(Default)]
pub(super) struct Shm {
    writer: Option<Writer>,
    pub(super) states: StateCounts,
    /// The loop went to sleep since the last poll (for `Stats::wakeups`).
    slept: bool,
    /// When the last publication was.
    last_us: Micros,
    /// A poll found work the file does not show yet (it came within [`INTERVAL`] of the last
    /// publication): the next poll publishes once the interval is over, work or not.
    unpublished: bool,
    /// Values of the layer above, published after the stack's (`Config::extra_stats`).
    pub(super) extra: Vec<u64>,
    /// The values of one publication (kept to reuse its allocation).
    values: Vec<u64>,
}

impl Shm {
    /// Whether to publish now after a poll that did (`work`) or did not find work: one
    /// comparison, false when not publishing. Work that is not published at once is published
    /// by the first poll after [`INTERVAL`], so the file trails the stack by at most the time
    /// to the next poll (an idle stack is polled at least every 10 ms).
    #[inline]
    pub(super) fn due(&mut self, now_us: Micros, work: bool) -> bool {
        let allowed = self.writer.as_ref().is_some_and(|w| w.due(now_us));
        if !allowed {
            self.unpublished |= work;
            return false;
        }
        work || self.unpublished || now_us >= self.last_us + IDLE_INTERVAL_US
    }

    /// A publication at `now_us`: what `due` compares with from now on.
    fn published(&mut self, now_us: Micros) {
        self.last_us = now_us;
        self.unpublished = false;
    }

    /// After the receive burst of a poll: a sleep that ended with frames is a wake-up.
    #[inline]
    pub(super) fn after_rx(&mut self, got_frames: bool, stats: &mut Stats) {
        if self.slept {
            self.slept = false;
            stats.wakeups += u64::from(got_frames);
        }
    }
}

/// Every published name, in the order of [`Stack::publish`]'s values (`extra`: the layer
/// above's, last).
pub fn value_names(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Stats::NAMES.iter().map(|n| format!("stack.{n}")).collect();
    v.extend(EXTRA.iter().map(|n| n.to_string()));
    v.extend(STATE_NAMES.iter().map(|n| format!("tcp.{n}")));
    debug_assert_eq!(v.len(), VALUES);
    v.extend(extra.iter().map(|n| n.to_string()));
    v
}

impl<L: Link> Stack<L> {
    /// Creates this process's statistics file (unless `MTCP_STATS=off`). A failure is logged and
    /// the stack runs without it.
    pub(super) fn start_publishing(&mut self, cfg: &Config, now: Instant) {
        if !cfg.stats {
            return;
        }
        let us = now.total_micros() as Micros;
        self.shm.extra = vec![0; cfg.extra_stats.len()];
        match Writer::create(&value_names(&cfg.extra_stats), INTERVAL, us) {
            Ok(w) => {
                tracing::info!("statistics in {}", w.path().display());
                self.shm.writer = Some(w);
                self.publish(us);
            }
            Err(e) => tracing::warn!("no live statistics (mtcprun stats): {e}"),
        }
    }

    /// The values of the layer above (`Config::extra_stats`, in that order), published with
    /// the stack's.
    pub fn extra_stats_mut(&mut self) -> &mut [u64] {
        &mut self.shm.extra
    }

    /// The loop is going to sleep (blocked on the wake-up fd, or a timed sleep on devices
    /// without one): counted in `sleeps`, and the next poll tells whether frames woke it.
    pub fn note_sleep(&mut self) {
        self.net.stats_mut().sleeps += 1;
        self.shm.slept = true;
    }

    /// Connections by TCP state.
    pub fn tcp_states(&self) -> StateCounts {
        let mut s = self.shm.states;
        // Closed connections waiting out TIME-WAIT as a record (conn.rs) are TIME-WAIT too.
        s.0[state_index(tcp::State::TimeWait)] += self.time_wait.len() as u64;
        s
    }

    /// Connections the application closed whose FIN the peer has not acknowledged yet (data
    /// still to send, or the FIN itself): FIN-WAIT-1, CLOSING and LAST-ACK.
    pub fn closing_unacked(&self) -> u64 {
        let s = &self.shm.states.0;
        [
            tcp::State::FinWait1,
            tcp::State::Closing,
            tcp::State::LastAck,
        ]
        .into_iter()
        .map(|st| s[state_index(st)])
        .sum()
    }

    /// Every listener's backlog and queues, by port.
    pub fn listener_stats(&self) -> Vec<ListenerStat> {
        let mut v: Vec<ListenerStat> = self.listeners_iter().collect();
        v.sort_by_key(|l| l.port);
        v
    }

    fn listeners_iter(&self) -> impl Iterator<Item = ListenerStat> + '_ {
        self.listeners.iter().map(|(&port, l)| ListenerStat {
            port,
            backlog: l.backlog as u64,
            syn_received: l.pending.saturating_sub(l.queue.len()) as u64,
            accept_queue: l.queue.len() as u64,
        })
    }

    /// Copies every value into the statistics file (no allocation, no system call).
    pub(super) fn publish(&mut self, now_us: Micros) {
        self.shm.published(now_us);
        let stats = self.stats();
        let link = self.net.link().counters();
        let mut values = std::mem::take(&mut self.shm.values);
        values.resize(VALUES + self.shm.extra.len(), 0);
        values[..Stats::COUNT].copy_from_slice(&stats.values());
        let extra = [
            link.rx_missed,
            link.pool_in_use,
            link.pool_size.saturating_sub(link.pool_in_use),
            link.pool_size,
            self.net.link().tx_pending() as u64,
            self.live as u64,
            self.listeners.len() as u64,
        ];
        values[Stats::COUNT..Stats::COUNT + EXTRA.len()].copy_from_slice(&extra);
        for (i, (_, n)) in self.tcp_states().iter().enumerate() {
            values[Stats::COUNT + EXTRA.len() + i] = n;
        }
        values[VALUES..].copy_from_slice(&self.shm.extra);
        let mut table = [ListenerStat::default(); MAX_LISTENERS];
        let mut n = 0;
        for (slot, l) in table.iter_mut().zip(self.listeners_iter()) {
            *slot = l;
            n += 1;
        }
        table[..n].sort_unstable_by_key(|l| l.port);
        if let Some(w) = self.shm.writer.as_mut() {
            w.publish(now_us, &values, &table[..n]);
        }
        self.shm.values = values;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Work that comes within [`INTERVAL`] of a publication is published by the first poll
    /// after it, also one that finds no work: `mtcprun stats` shows a connection the stack
    /// accepted while the application sleeps.
    #[test]
    fn work_within_the_interval_is_published_by_the_next_poll() {
        let path = std::env::temp_dir().join(format!("mtcpshim-due-{}", std::process::id()));
        let names = value_names(&[]);
        let writer = Writer::create_at(&path, &names, INTERVAL, 0).expect("writer");
        let mut shm = Shm {
            writer: Some(writer),
            ..Shm::default()
        };
        let interval = INTERVAL.as_micros() as Micros;
        let publish = |shm: &mut Shm, now: Micros| {
            shm.published(now);
            shm.writer.as_mut().unwrap().publish(now, &[], &[]);
        };
        publish(&mut shm, 1_000);
        // Work, too soon: not now, and an idle poll before the interval is over: not either.
        assert!(!shm.due(1_000 + interval / 2, true));
        assert!(!shm.due(1_000 + interval - 1, false));
        // The first poll after it publishes, though it found no work.
        assert!(shm.due(1_000 + interval, false));
        publish(&mut shm, 1_000 + interval);
        // Nothing new: idle polls wait for the idle interval.
        let t = 1_000 + interval;
        assert!(!shm.due(t + 2 * interval, false));
        assert!(shm.due(t + IDLE_INTERVAL_US, false));
        drop(shm);
        assert!(!path.exists() || std::fs::remove_file(&path).is_ok());
    }
}
