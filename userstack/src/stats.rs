//! Counters: every frame the stack drops is counted under a reason.

use std::fmt;

macro_rules! counters {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident,)* }) => {
        $(#[$m])*
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: u64,)* }

        impl $name {
            /// How many counters there are.
            pub const COUNT: usize = [$(stringify!($field)),*].len();
            /// Every counter's name, in declaration order.
            pub const NAMES: [&'static str; Self::COUNT] = [$(stringify!($field)),*];

            /// Every counter's value, in declaration order (no allocation).
            pub fn values(&self) -> [u64; Self::COUNT] {
                [$(self.$field),*]
            }

            /// `(name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($field), self.$field),)*]
            }
        }
    };
}

counters! {
    /// Stack counters. `drop_*` are frames thrown away, by reason.
    pub struct Stats {
        rx_frames,
        rx_bytes,
        tx_frames,
        tx_bytes,
        /// Too short, bad Ethernet/IP/TCP header or length, bad IP header checksum.
        drop_malformed,
        /// TCP or ICMP checksum wrong.
        drop_bad_checksum,
        /// Not addressed to our MAC (promiscuous devices) or IP.
        drop_not_ours,
        /// EtherTypes and IP protocols the stack does not speak (IPv6, UDP answered by ICMP).
        drop_unsupported,
        /// IPv4 fragments (the stack does not reassemble; peers use path MTU discovery).
        drop_fragment,
        /// The mbuf pool was empty when a frame had to be built.
        drop_mempool_empty,
        /// The device's transmit ring stayed full: past the link's backlog (a quarter of the mbuf
        /// pool), or the device took nothing for half a second.
        drop_tx_ring_full,
        /// Frames the device's transmit ring had no room for at first: held back, in order, and
        /// sent as it drained (those dropped later, see drop_tx_ring_full, count here too).
        tx_delayed,
        /// Packets for a peer whose MAC address never resolved (ARP gave no answer).
        drop_arp_unresolved,
        /// Packets to a destination outside the subnet with no gateway configured.
        drop_no_route,
        /// SYNs dropped (not reset) because the listener's backlog was full; the peer retries.
        drop_syn_backlog,
        /// Segments left to another process sharing the device (worker processes): SYNs of
        /// flows another process takes, segments of connections another process may own.
        steered_away,
        /// Buckets (of 32) whose new connections this stack takes, where worker processes
        /// share the device (32 alone). A level, not a count.
        steer_buckets,
        /// Connections this stack's listener held, never accepted, when the application
        /// closed it among worker processes: handed to a process that still listens (as
        /// Linux's shared listening socket keeps them), and those taken over here (other
        /// processes', or this one's own back when its flows came back before anyone took
        /// them). `handover_resets`: handed, taken by nobody in time, reset.
        conns_handed_over,
        conns_taken_over,
        handover_resets,
        /// Frames dropped, duplicated or reordered on purpose by MTCP_FAULTS.
        fault_dropped,
        fault_duplicated,
        fault_reordered,
        arp_requests_sent,
        arp_replies_sent,
        /// TCP resets sent for segments no connection wanted.
        tcp_rst_sent,
        /// SYN-ACKs resent at once for a retransmitted SYN (the first SYN-ACK was lost or late).
        tcp_dup_syn_answered,
        /// Half-open connections dropped (silently, as Linux) after their SYN-ACK went
        /// unanswered through 5 retransmissions.
        syn_recv_expired,
        /// Connections opened (passive and active) and freed.
        conns_opened,
        conns_freed,
        /// Segments retransmitted.
        tcp_retransmits,
        /// Loss recoveries entered on SACK or duplicate ACKs (fast retransmit, RFC 6675).
        tcp_fast_recoveries,
        /// Retransmission timeouts.
        tcp_rto_timeouts,
        /// Tail-loss probes: the last segment sent again when a flight's ACKs stopped coming
        /// for 2 SRTT + max(10 ms, 4 RTTVAR), before the retransmission timeout.
        tcp_loss_probes,
        /// Retransmissions found lost themselves and sent again.
        tcp_lost_retransmits,
        /// Connections given up on, as Linux does: data unacknowledged and nothing heard from
        /// the peer for ~15 min (an orphan: 60 s), a connect unanswered for 127 s, an orphan
        /// in FIN-WAIT-2 for 60 s. The application (if it still has the socket) gets ETIMEDOUT.
        tcp_timeouts,
        /// Calls to `Stack::poll` and those that found no work.
        polls,
        polls_idle,
        /// Times a polling loop went to sleep: blocked on the device's wake-up fd
        /// (`Stack::arm_wake`), or slept on a device without one (`Stack::note_sleep`).
        sleeps,
        /// Sleeps ended by the network: the first poll after the sleep received frames.
        wakeups,
        /// pcap records written and skipped (file size limit).
        pcap_written,
        pcap_truncated,
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in self.fields() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}
