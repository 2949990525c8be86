//! Connections handed between processes sharing the device: on Linux the processes that
//! inherit a listening socket (nginx's master and workers, a pre-fork server's children) share
//! its one accept queue, and a worker that closes its copy (an old worker after `nginx -s
//! reload`) leaves the connections in it to the others. Here each process's stack has a
//! listener of its own, so when one stops listening, the connections its listener held and
//! the application never accepted are offered to the others (`FlowRegistry::hand_over`: the
//! connection's few numbers, `tcp::Carry`, and the request bytes it held) instead of reset.
//!
//! The offering stack forgets the connection at once but stays silent about its segments (they
//! are neither answered nor reset) until the offer settles: a process that listens on the
//! port and takes the flow's new connections takes it over (`settle_handovers`), registers it
//! as its own, acknowledges what was received and queues it for accept; the client's
//! retransmissions fill in whatever was lost meanwhile. An offer nobody takes within
//! `HANDOVER_WAIT_US` is withdrawn and its connection reset, as Linux resets what a listening
//! socket held when its last holder closes it. An offer withdrawn while the offering stack
//! listens on its port and takes its flow's SYNs again (a worker whose application accepts
//! again before another took what it offered) goes back into that stack's own accept queue,
//! from the numbers and bytes it kept.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::time::Instant;

use super::conn::Open;
use super::Stack;
use crate::link::Link;
use crate::net::Micros;
use crate::steer::Handed;
use crate::tcp::Carry;

/// A connection this stack offered (`Stack::hand_over`), with what it needs to take it back.
pub(super) struct Handing {
    /// Its demux key.
    pub key: u64,
    /// When the offer is withdrawn.
    until: Micros,
    carry: Carry,
    /// The peer's bytes it held.
    data: Vec<u8>,
}

/// The bucket of the flow of demux key `key` (peer address, peer port, local port).
pub(super) fn bucket_of(key: u64) -> u32 {
    crate::steer::flow_bucket(
        Ipv4Addr::from((key >> 32) as u32),
        (key >> 16) as u16,
        key as u16,
    )
}

/// How long an offer waits to be taken. The others take offers in their rounds (every 10-50
/// ms), once the flow's bucket is theirs.
const HANDOVER_WAIT_US: Micros = 2_000_000;

impl<L: Link> Stack<L> {
    /// Offers connection `idx` (a passive open never accepted, whose listener is gone) to the
    /// other processes. True if offered: it is freed here, without a word to its peer.
    pub(super) fn hand_over(&mut self, now: Instant, idx: u32) -> bool {
        let Some(flows) = self.flows.as_mut() else {
            return false;
        };
        let Some(c) = self.slots[idx as usize].conn.as_ref() else {
            return false;
        };
        let us = now.total_micros() as Micros;
        let Some(carry) = c.tcb.carry(us) else {
            return false;
        };
        let key = c.key;
        let received = c.tcb.received();
        if !flows.hand_over(key, &carry, received) {
            return false;
        }
        let data = [received.0, received.1].concat();
        // Out of the demux first: `free_conn` then leaves its registration, which stays this
        // process's until the taker registers its own.
        self.demux.remove(&key);
        self.demux_changes += 1;
        self.free_conn(idx);
        self.handed.push(Handing {
            key,
            until: us + HANDOVER_WAIT_US,
            carry,
            data,
        });
        self.net.stats_mut().conns_handed_over += 1;
        true
    }

    /// Settles this stack's offers (taken: the taker's from now on; withdrawn: back in its
    /// listener's queue if this stack takes the flow's SYNs again, else reset) and
    /// takes the other processes' offers it can carry on: those for a port it listens on whose
    /// flow is one it takes new connections of. For the embedder's periodic round (the shim's
    /// steering), after `set_steering`.
    pub fn settle_handovers(&mut self, now: Instant) {
        let Some(flows) = self.flows.as_mut() else {
            return;
        };
        let us = now.total_micros() as Micros;
        // An offer whose flow this process still takes new connections of (it still listens,
        // on another port: a process closes its listeners one by one, and this runs after the
        // last) is withdrawn: nobody else sees its segments, so nobody could take it. One
        // whose flow went to another process (this one stopped listening, or its
        // application stopped accepting: `hand_over_waiting`) waits for that one to claim it.
        let listening = !self.listeners.is_empty();
        let steering = self.steering;
        let mut back = Vec::new();
        for h in std::mem::take(&mut self.handed) {
            let ours = listening && steering.takes_syn(bucket_of(h.key));
            match flows.handed(h.key, h.until <= us || ours) {
                Handed::Waiting => self.handed.push(h),
                Handed::Taken => flows.closed(h.key),
                // (Still registered: see below.)
                Handed::Back => back.push((h, ours)),
            }
        }
        let (listeners, steering, demux) = (&self.listeners, self.steering, &self.demux);
        let mut wants = |key: u64, len: usize| {
            let peer = Ipv4Addr::from((key >> 32) as u32);
            let port = key as u16;
            listeners.get(&port).is_some_and(|l| len <= l.opts.rcvbuf)
                && steering.takes_syn(crate::steer::flow_bucket(peer, (key >> 16) as u16, port))
                && !demux.contains_key(&key)
        };
        let mut data = Vec::new();
        let mut claimed = Vec::new();
        while let Some((key, carry)) = flows.take_offer(&mut wants, &mut data) {
            claimed.push((key, carry, std::mem::take(&mut data)));
        }
        for (h, ours) in back {
            // A connection of this stack has the flow already (its SYN came again meanwhile):
            // it stays, and only the offer's registration goes.
            let anew = self.demux.contains_key(&h.key);
            // Else, if this stack sees the flow's segments again and takes its SYNs, nobody
            // else could take the connection, and its listener (if it still has one) carries
            // it on: registered anew before the offer's registration goes, so that no moment
            // finds the flow nobody's (another process that sees the bucket's frames would
            // answer them with a reset).
            let taken = !anew && ours && self.take_over(now, h.key, &h.carry, &h.data);
            if let Some(f) = self.flows.as_mut() {
                f.closed(h.key);
            }
            if anew || taken {
                continue;
            }
            // Its peer learns as a dead process's do (its answer to the probe is reset by
            // whichever process sees it: nobody has the connection any more).
            self.net.stats_mut().handover_resets += 1;
            self.provoke_reset(now, h.key);
        }
        for (key, carry, data) in claimed {
            let taken = self.take_over(now, key, &carry, &data);
            if let Some(f) = self.flows.as_mut() {
                f.took(key, taken);
            }
        }
    }

    /// Carries on another process's connection: registered, acknowledged (or its SYN-ACK sent
    /// again) and, past the handshake, queued for accept. False if its listener is gone.
    fn take_over(
        &mut self,
        now: Instant,
        key: u64,
        carry: &crate::tcp::Carry,
        data: &[u8],
    ) -> bool {
        let peer = SocketAddrV4::new(Ipv4Addr::from((key >> 32) as u32), (key >> 16) as u16);
        let taken = self.open_passive(now, key, peer, key as u16, Open::Carried(carry, data));
        if taken {
            self.time_wait.remove(&key);
            self.net.stats_mut().conns_taken_over += 1;
        }
        taken
    }

    /// Offers of this stack not settled yet.
    pub fn handovers_pending(&self) -> usize {
        self.handed.len()
    }
}
