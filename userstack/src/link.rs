//! The link layer below the stack: Ethernet frames in and out, without copies.
//!
//! [`crate::dpdk::DpdkLink`] is the real implementation (received mbufs are lent to the stack
//! and freed on drop; transmitted frames are written into fresh mbufs and sent in one burst per
//! poll). [`MemLink`] joins two stacks back to back in memory, for the stack's unit tests.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// A received frame. Dropping it returns its buffer to the device.
pub trait RxFrame {
    fn data(&self) -> &[u8];
}

/// A frame being built for transmission, `len` bytes long as asked for in `Link::tx_alloc`.
pub trait TxFrame {
    fn data_mut(&mut self) -> &mut [u8];
}

/// Drop counters that only the link can see.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkCounters {
    /// Frames not sent because the device's transmit ring stayed full.
    pub tx_ring_full: u64,
    /// Frames held back while the ring was full (then sent, or dropped if it stayed full).
    pub tx_delayed: u64,
    /// Frames the device itself reported as missed/dropped on receive (e.g. rx ring overflow).
    pub rx_missed: u64,
    /// Mbufs in use / total in the pool, where the link has a pool.
    pub pool_in_use: u64,
    pub pool_size: u64,
}

pub trait Link {
    type Rx: RxFrame;
    type Tx: TxFrame;

    /// Appends up to `max` received frames to `out`.
    fn rx_burst(&mut self, out: &mut Vec<Self::Rx>, max: usize);
    /// Gives back the received frames of `done` (all of them, leaving it empty): at once where
    /// the device frees a burst cheaper than frame by frame.
    fn rx_release(&mut self, done: &mut Vec<Self::Rx>) {
        done.clear();
    }
    /// A buffer for one frame of `len` bytes, or `None` when the buffer pool is empty.
    fn tx_alloc(&mut self, len: usize) -> Option<Self::Tx>;
    /// Queues a finished frame; it leaves at the latest on the next `tx_flush`.
    fn tx_push(&mut self, frame: Self::Tx);
    /// Sends every queued frame (one burst). Frames the device has no room for now may stay
    /// queued in the link (`tx_pending`) and go first on the next flush.
    fn tx_flush(&mut self);
    /// Frames waiting for room in the device; the owner must flush again soon (not block).
    fn tx_pending(&self) -> usize {
        0
    }
    /// Frames the device has taken so far (a count that moves while a backlog drains, even
    /// if new frames keep it as long).
    fn tx_taken(&self) -> u64 {
        0
    }
    /// The port's own MAC address.
    fn mac(&self) -> [u8; 6];
    /// The largest IP packet the link carries (1500 on Ethernet).
    fn ip_mtu(&self) -> usize;
    /// The device says its link is down (no carrier; net_memif: no peer connected): nothing
    /// can arrive, so a loop without a wake-up fd may nap longer (`idle::LINK_DOWN_NAP`).
    fn link_down(&self) -> bool {
        false
    }
    /// A file descriptor that becomes readable when frames arrive, if the device has one.
    fn wake_fd(&self) -> Option<RawFd>;
    /// The longest the caller may block on the wake-up fd (`None`: until its next timer), where
    /// a wake-up depends on a peer's goodwill (net_memif).
    fn wake_cap(&self) -> Option<std::time::Duration> {
        None
    }
    /// Arms the wake-up fd before the caller blocks on it (a no-op where it is always armed).
    fn arm_wake(&mut self) {}
    /// Disarms it after the caller woke up.
    fn disarm_wake(&mut self) {}
    /// A block returned with the wake-up fd readable (the caller may not be the last one
    /// blocked on it, and does not disarm then): what made it readable is consumed, where a
    /// later block would otherwise return at once. `others_blocked`: other threads stay
    /// blocked on it, and must be woken by the next frames (the woken thread may go back to
    /// the application for long). `edge_block`: the block watched the fd edge-triggered
    /// ([`Link::wake_edge`]), and what made it readable may stay.
    fn wake_seen(&mut self, others_blocked: bool, edge_block: bool) {
        let _ = (others_blocked, edge_block);
    }
    /// Asks that the wake-up fd be watched edge-triggered (EPOLLET) from now on, by every
    /// waiter of this link: what wakes a waiter is then consumed only where it could otherwise
    /// fill, not after every wake-up. Returns whether the link does that; a waiter that gets
    /// false watches the fd level-triggered, as one that never asked.
    fn wake_edge(&mut self) -> bool {
        false
    }
    fn counters(&self) -> LinkCounters;
    /// Receives (and is woken by) from now on only the frames of the buckets in `see`, other
    /// IPv4 if `other_ip`, and everything that is not IPv4 (`steer::frame_filter`), where other
    /// processes share the device. Devices that cannot be shared say why.
    fn steer(&mut self, see: u32, other_ip: bool) -> Result<(), String> {
        let _ = (see, other_ip);
        Err("this device cannot be shared by processes".into())
    }
}

/// One end of an in-memory Ethernet cable, for unit tests of the stack logic.
pub struct MemLink {
    mac: [u8; 6],
    tx_queue: Vec<Vec<u8>>,
    inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
    peer_inbox: Arc<Mutex<VecDeque<Vec<u8>>>>,
    ip_mtu: usize,
}

impl MemLink {
    /// Two connected ends.
    pub fn pair(mac_a: [u8; 6], mac_b: [u8; 6]) -> (MemLink, MemLink) {
        let a_in = Arc::new(Mutex::new(VecDeque::new()));
        let b_in = Arc::new(Mutex::new(VecDeque::new()));
        let a = MemLink {
            mac: mac_a,
            tx_queue: Vec::new(),
            inbox: a_in.clone(),
            peer_inbox: b_in.clone(),
            ip_mtu: 1500,
        };
        let b = MemLink {
            mac: mac_b,
            tx_queue: Vec::new(),
            inbox: b_in,
            peer_inbox: a_in,
            ip_mtu: 1500,
        };
        (a, b)
    }

    /// Frames waiting to be received on this end.
    pub fn pending(&self) -> usize {
        self.inbox.lock().unwrap().len()
    }

    /// Sets the IP MTU this end reports (1500 unless set); a stack reads it when it starts.
    pub fn set_ip_mtu(&mut self, mtu: usize) {
        self.ip_mtu = mtu;
    }

    /// Copies of the frames waiting to be received on this end (what the peer sent).
    pub fn waiting(&self) -> Vec<Vec<u8>> {
        self.inbox.lock().unwrap().iter().cloned().collect()
    }

    /// Loses the frames waiting to be received on this end: how many there were.
    pub fn discard(&self) -> usize {
        let mut q = self.inbox.lock().unwrap();
        let n = q.len();
        q.clear();
        n
    }

    /// Puts a raw frame on this end's receive side, as if the peer sent it.
    pub fn inject(&self, frame: Vec<u8>) {
        self.inbox.lock().unwrap().push_back(frame);
    }

    /// Takes the frames waiting to be received on this end.
    pub fn take_waiting(&self) -> Vec<Vec<u8>> {
        self.inbox.lock().unwrap().drain(..).collect()
    }

    /// A second end beside this one (another process's stack on the same device): what it
    /// sends reaches this end's peer; it receives only what is injected into it.
    pub fn twin(&self) -> MemLink {
        MemLink {
            mac: self.mac,
            tx_queue: Vec::new(),
            inbox: Arc::new(Mutex::new(VecDeque::new())),
            peer_inbox: self.peer_inbox.clone(),
            ip_mtu: self.ip_mtu,
        }
    }
}

pub struct VecFrame(pub Vec<u8>);

impl RxFrame for VecFrame {
    fn data(&self) -> &[u8] {
        &self.0
    }
}

impl TxFrame for VecFrame {
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl Link for MemLink {
    type Rx = VecFrame;
    type Tx = VecFrame;

    fn rx_burst(&mut self, out: &mut Vec<VecFrame>, max: usize) {
        let mut q = self.inbox.lock().unwrap();
        for _ in 0..max {
            match q.pop_front() {
                Some(f) => out.push(VecFrame(f)),
                None => break,
            }
        }
    }
    fn tx_alloc(&mut self, len: usize) -> Option<VecFrame> {
        Some(VecFrame(vec![0; len]))
    }
    fn tx_push(&mut self, frame: VecFrame) {
        self.tx_queue.push(frame.0);
    }
    fn tx_flush(&mut self) {
        self.peer_inbox
            .lock()
            .unwrap()
            .extend(self.tx_queue.drain(..));
    }
    fn mac(&self) -> [u8; 6] {
        self.mac
    }
    fn ip_mtu(&self) -> usize {
        self.ip_mtu
    }
    fn wake_fd(&self) -> Option<RawFd> {
        None
    }
    fn counters(&self) -> LinkCounters {
        LinkCounters::default()
    }
}
