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
//!   dpdk.rs);
//! - on devices without one (net_memif: shared memory, no kernel to wake us), in a sleep that
//!   starts at 20 µs and doubles while nothing happens,
//!   up to `MTCP_IDLE_SLEEP_US` (2 ms by default): a long idle period costs ~500 wake-ups a
//!   second (well under 1% of a core here), and the first frame after it waits up to that cap.
//!
//! Both count in the stack's `sleeps`; `wakeups` counts the sleeps that frames ended.

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::link::Link;
use crate::stack::Stack;

const FIRST_SLEEP: Duration = Duration::from_micros(20);
/// Upper bound of one block, so a loop notices signals and configuration changes.
const MAX_BLOCK: Duration = Duration::from_secs(1);

pub struct Idler {
    spin: Duration,
    sleep: Backoff,
    last_work: Instant,
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

    /// The next sleep, at most `limit`; the one after it is twice as long.
    pub fn take(&mut self, limit: Duration) -> Duration {
        let d = self.next.min(limit);
        self.next = (self.next * 2).min(self.max);
        d
    }
}

impl Idler {
    pub fn new(cfg: &Config) -> Idler {
        Idler {
            spin: cfg.spin,
            sleep: Backoff::new(cfg),
            last_work: Instant::now(),
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
            // Frames wait for room in the device: poll again without sleeping (and without
            // growing the sleep), but let a peer that shares this CPU drain the ring.
            std::thread::yield_now();
            return;
        }
        let until_timer = stack.next_deadline().map(crate::clock::until);
        let limit = until_timer.unwrap_or(MAX_BLOCK).min(MAX_BLOCK);
        match stack.wake_fd() {
            Some(fd) => {
                if !stack.arm_wake(crate::clock::now()) {
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
                stack.disarm_wake();
            }
            None => {
                stack.note_sleep();
                std::thread::sleep(self.sleep.take(limit));
            }
        }
    }
}

#[allow(unsafe_code)]
fn ppoll(pfd: &mut libc::pollfd, ts: &libc::timespec) -> i32 {
    // SAFETY: one valid pollfd and a valid timespec; no signal mask change.
    unsafe { libc::ppoll(pfd, 1, ts, std::ptr::null()) }
}
