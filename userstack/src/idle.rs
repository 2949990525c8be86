//! What a polling loop does when there is no work: spin a little, then block.
//!
//! After the last work the loop keeps polling for `MTCP_SPIN_US` (a request that arrives within
//! that window is served without a wake-up). Then it blocks until the next stack timer:
//! - on devices with a wake-up fd, in `ppoll` on that fd: idle CPU is zero and the first frame
//!   wakes the loop at once. net_tap's is its rx interrupt fd (the tap fd, level-triggered).
//!   net_af_xdp's is its AF_XDP socket (readable while its receive ring holds frames; DPDK
//!   22.11 does not export it, the link finds it among the process's fds). net_af_packet has
//!   none, so the link opens its own AF_PACKET socket on the interface, with a filter that
//!   keeps frames only while the loop is blocked (`Stack::arm_wake` / `disarm_wake`, see
//!   dpdk/wake.rs);
//! - on devices without one (net_memif: shared memory, no kernel to wake us), in a sleep that
//!   starts at 20 µs and doubles while nothing happens,
//!   up to `MTCP_IDLE_SLEEP_US` (2 ms by default): a long idle period costs ~500 wake-ups a
//!   second (1.5-2% of a core on this VM, where a bare 2 ms sleep loop alone costs 0.9%), and
//!   the first frame after it waits up to that cap. When the memif peer is a stack of ours
//!   (dpdk/memif_wake.rs) the link has a wake-up fd the peer writes to, used once the naps have
//!   grown to their cap (`Link::wake_cap` bounds each block). While the device says its link is down
//!   (memif: no peer connected yet, or it went away) nothing can arrive and the naps grow to
//!   [`LINK_DOWN_NAP`] (20 a second): the first frame after a peer connects waits up to that.
//!
//! Both count in the stack's `sleeps`; `wakeups` counts the sleeps that frames ended.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::link::Link;
use crate::stack::Stack;

const FIRST_SLEEP: Duration = Duration::from_micros(20);
/// The longest nap while the device's link is down (see the module's text).
pub const LINK_DOWN_NAP: Duration = Duration::from_millis(50);
/// Upper bound of one block, so a loop notices signals and configuration changes.
const MAX_BLOCK: Duration = Duration::from_secs(1);

pub struct Idler {
    spin: Duration,
    sleep: Backoff,
    last_work: Instant,
    tx_wait: TxWait,
}

/// The sleeps of a loop on a device without a wake-up fd: 20 µs, doubling while nothing
/// happens, up to `MTCP_IDLE_SLEEP_US`. The shim's blocking calls use it too.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(cfg: &Config) -> Backoff {
        Backoff::with_max(cfg.idle_sleep)
    }

    pub fn with_max(max: Duration) -> Backoff {
        Backoff {
            next: FIRST_SLEEP,
            max: max.max(FIRST_SLEEP),
        }
    }

    /// Work was done: the next sleep is the shortest again.
    pub fn reset(&mut self) {
        self.next = FIRST_SLEEP;
    }

    /// The next sleep, at most `limit`; the one after it is twice as long (up to
    /// `LINK_DOWN_NAP` instead of the configured cap while the device's link is down).
    pub fn take(&mut self, limit: Duration, link_down: bool) -> Duration {
        let max = if link_down {
            self.max.max(LINK_DOWN_NAP)
        } else {
            self.max
        };
        let d = self.next.min(limit).min(max);
        self.next = (self.next * 2).min(max);
        d
    }
}

/// How a loop waits while frames wait for room in the device's transmit ring (the link's
/// backlog, `Link::tx_pending`): for the first 50 µs it only yields the CPU (a peer sharing it,
/// a memif process, may be what drains the ring, and a NIC's ring drains in microseconds);
/// then it naps 20 µs, doubling to 1 ms while the device takes nothing. Any frame the device
/// takes (`Link::tx_taken` moved: a bulk sender keeps the backlog as long while the device
/// drains it) starts over. A device that stays slow (a stopped or starved memif peer) then costs a few percent
/// of a core instead of all of it, and the frames wait at most a millisecond longer.
#[derive(Debug, Clone, Copy)]
pub struct TxWait {
    start: Instant,
    last: Instant,
    taken: u64,
    nap: Duration,
}

const TX_YIELD_FOR: Duration = Duration::from_micros(50);
const TX_NAP_MAX: Duration = Duration::from_millis(1);

impl TxWait {
    pub fn new() -> TxWait {
        let now = Instant::now();
        TxWait {
            start: now,
            last: now,
            taken: 0,
            nap: FIRST_SLEEP,
        }
    }

    /// Frames wait for the device, which has taken `taken` so far. `None`: yield the CPU and
    /// poll again; `Some(d)`: sleep `d` first. A call more than 2 ms after the previous one
    /// starts a new wait.
    pub fn step(&mut self, taken: u64, now: Instant) -> Option<Duration> {
        if taken != self.taken || now.duration_since(self.last) > 2 * TX_NAP_MAX {
            self.start = now;
            self.nap = FIRST_SLEEP;
        }
        self.taken = taken;
        self.last = now;
        if now.duration_since(self.start) < TX_YIELD_FOR {
            return None;
        }
        let d = self.nap;
        self.nap = (self.nap * 2).min(TX_NAP_MAX);
        Some(d)
    }

    /// Yields or sleeps as `step` says.
    pub fn wait(&mut self, taken: u64) {
        match self.step(taken, Instant::now()) {
            None => std::thread::yield_now(),
            Some(d) => std::thread::sleep(d),
        }
    }
}

impl Default for TxWait {
    fn default() -> Self {
        TxWait::new()
    }
}

impl Idler {
    pub fn new(cfg: &Config) -> Idler {
        Idler {
            spin: cfg.spin,
            sleep: Backoff::new(cfg),
            last_work: Instant::now(),
            tx_wait: TxWait::new(),
        }
    }

    /// The loop did something: stay hot.
    pub fn work(&mut self) {
        self.last_work = Instant::now();
        self.sleep.reset();
    }

    /// The loop found nothing to do. Returns at once while spinning; otherwise blocks on the
    /// stack's wake-up fd (or sleeps) until a frame arrives or the next timer is due.
    pub fn idle<L: Link>(&mut self, stack: &mut Stack<L>) {
        if self.last_work.elapsed() < self.spin {
            return;
        }
        if stack.link().tx_pending() > 0 {
            // Frames wait for room in the device: poll again soon (without growing the idle
            // sleep), letting a peer that shares this CPU drain the ring.
            self.tx_wait.wait(stack.link().tx_taken());
            return;
        }
        let until_timer = stack.next_deadline().map(crate::clock::until);
        let peer_cap = stack.link().wake_cap();
        let cap = peer_cap.unwrap_or(MAX_BLOCK).min(MAX_BLOCK);
        let limit = until_timer.unwrap_or(cap).min(cap);
        // Blocked on the device's wake-up fd at once where it has one (a memif peer that
        // takes part too: napping to spare it a system call cost more than it saved).
        let wake = stack.wake_fd();
        match wake {
            Some(fd) => {
                if !stack.arm_wake(crate::clock::now(), false) {
                    self.work();
                    return;
                }
                let ts = crate::clock::timespec(limit);
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                ppoll(&mut pfd, &ts);
                if pfd.revents != 0 {
                    stack.wake_seen(false, false);
                }
                stack.disarm_wake();
            }
            None => {
                stack.note_sleep();
                let down = stack.link().link_down();
                std::thread::sleep(self.sleep.take(limit, down));
            }
        }
    }
}

#[allow(unsafe_code)]
fn ppoll(pfd: &mut libc::pollfd, ts: &libc::timespec) -> i32 {
    // SAFETY: one valid pollfd and a valid timespec; no signal mask change.
    unsafe { libc::ppoll(pfd, 1, ts, std::ptr::null()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naps_double_to_the_cap_and_further_while_the_link_is_down() {
        let mut b = Backoff::with_max(Duration::from_millis(2));
        let hour = Duration::from_secs(3600);
        let naps: Vec<u128> = (0..9).map(|_| b.take(hour, false).as_micros()).collect();
        assert_eq!(naps, [20, 40, 80, 160, 320, 640, 1280, 2000, 2000]);
        // No peer: the naps keep doubling, to LINK_DOWN_NAP.
        let down: Vec<u128> = (0..7).map(|_| b.take(hour, true).as_micros()).collect();
        assert_eq!(down, [2000, 4000, 8000, 16000, 32000, 50000, 50000]);
        // The link came up: back under the configured cap at once, and a timer still bounds.
        assert_eq!(b.take(hour, false), Duration::from_millis(2));
        assert_eq!(b.take(Duration::from_micros(300), true).as_micros(), 300);
        b.reset();
        assert_eq!(b.take(hour, true).as_micros(), 20);
    }

    #[test]
    fn a_device_that_stays_full_gets_naps_growing_to_a_millisecond() {
        let mut w = TxWait::new();
        let t0 = Instant::now() + Duration::from_secs(1);
        let us = |n: u64| t0 + Duration::from_micros(n);
        assert_eq!(w.step(100, us(0)), None);
        assert_eq!(w.step(100, us(30)), None, "yields during the first 50 µs");
        let mut t = 60;
        let mut naps = Vec::new();
        for _ in 0..8 {
            let d = w.step(100, us(t)).expect("a nap after 50 µs");
            naps.push(d.as_micros());
            t += d.as_micros() as u64;
        }
        assert_eq!(naps, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        // The device took frames: yield again, then the shortest nap.
        assert_eq!(w.step(101, us(t)), None);
        assert_eq!(w.step(101, us(t + 60)), Some(FIRST_SLEEP));
        // A new wait long after the last one starts over.
        assert_eq!(w.step(101, us(t + 5_000)), None);
    }
}
