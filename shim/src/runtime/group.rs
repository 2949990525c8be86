//! Worker processes: the processes forked after listen() (nginx's workers, a pre-fork
//! server's children) each run a stack of their own on the one device, and split the flows
//! between them (userstack's `steer`: 32 buckets by the peer's address and port).
//!
//! The split lives in a page of memory the processes share: made by the process that listens
//! (before it forks: every child inherits it), one word per bucket for the process that owns
//! it (takes its new connections) and one for the process that owned it before (still serves
//! the connections it has there). Every member runs [`steer`] when its stack starts and then
//! from its keeper every few tens of milliseconds, under a lock in the same page:
//!
//! - the buckets of processes that exited (`kill(pid, 0)` says ESRCH) are nobody's; a bucket
//!   nobody owns goes to the member with the fewest;
//! - a member with fewer than its share (32 / members) takes buckets from the one with the
//!   most, which keeps serving its connections there ("before") and gives the bucket up for
//!   good once it has none left there: a new worker (a respawned one, or the new generation of
//!   `nginx -s reload`) disturbs no connection of another. The taker takes the bucket's SYNs
//!   only once the giver's stack stopped taking them (its next round): a SYN is never answered
//!   by two processes (the loser would reset the connection the client made with the winner);
//! - a member with no listener left (an old worker finishing its connections) gives its
//!   buckets to the others the same way.
//!
//! A member's stack then takes SYNs in the buckets it owns, and its device delivers it only
//! the frames of the buckets it owns or owned before (a classic BPF filter on the packet sockets; ARP to every member, ICMP to
//! the owner of bucket 0). A segment no connection of its stack wants is reset only if no
//! other live member has that connection: every member registers its connections in a second
//! shared table (key: peer address, peer port, local port), so a process that died leaves
//! connections its buckets' new owner resets (its client learns at its next send), and in a
//! bucket being handed over neither side resets the other's. A process alone in its group owns
//! everything and filters nothing.
//!
//! A member that closes its listener offers the connections its stack's listener held and the
//! application never accepted to the members that still listen (userstack's handover.rs), in
//! a third shared area: per offer a header (state, offering pid, key, the connection's numbers)
//! and the peer's bytes it held. The offering member fills a free slot and marks it ready; a
//! taker (its round: the port is one it listens on, the flow one it takes new connections of)
//! claims it, copies it out and marks it taken; the offering member frees the slot when it
//! sees it taken, or withdraws a ready one after a while.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use userstack::link::Link;
use userstack::steer::{FlowRegistry, Handed, Steering, ALL, BUCKETS};
use userstack::tcp::{Carry, CARRY_WORDS};
use userstack::Stack;

const N: usize = BUCKETS as usize;

/// The shared page.
#[repr(C)]
struct Page {
    /// The pid holding the lock, 0 if free.
    lock: AtomicU32,
    /// The process that made the page (listened, then forked the others).
    creator: AtomicU32,
    /// The parent of the last member that is not the creator: the process that forks the
    /// workers when it is not the one that listened (nginx as a daemon listens, then forks
    /// its master and exits).
    forker: AtomicU32,
    /// Per bucket: the pid that takes its new connections (0: nobody).
    owner: [AtomicU32; N],
    /// Per bucket: the pid that still serves its own connections there (0: none).
    before: [AtomicU32; N],
    /// Per bucket: the pid it was taken from, until that process stopped taking its SYNs
    /// (the taker takes none before: a SYN is never answered by two processes).
    handing: [AtomicU32; N],
    /// Members that listen but whose application does not accept (`Sockets::steer`): no
    /// bucket is given to them. (0: a free slot; a member past the last slot counts as
    /// accepting.)
    idle: [AtomicU32; IDLE_SLOTS],
}

/// How many members the page can name as not accepting at once.
const IDLE_SLOTS: usize = 64;

static PAGE: OnceLock<Option<&'static Page>> = OnceLock::new();

/// Slots of the shared connection table (a power of two): the connections of every member,
/// so that a segment no stack wants is reset only if no live member has its connection.
const FLOW_SLOTS: usize = 1 << 17;
/// A lookup or insert looks at this many slots at most.
const PROBES: usize = 64;
/// A slot that held a connection (lookups go past it; inserts may reuse it).
const GONE: u64 = u64::MAX;

/// One slot of the shared connection table: a demux key (0: never used; GONE: freed) and the
/// pid that has the connection.
#[repr(C)]
struct FlowSlot {
    key: AtomicU64,
    pid: AtomicU32,
}

static FLOWS: OnceLock<Option<&'static [FlowSlot]>> = OnceLock::new();

/// Offers a process can have up at once (a listener's accept queue at the moment it closed).
const OFFERS: usize = 256;
/// The peer's bytes an offer carries at most: a request or two. A connection holding more is
/// reset, as a listener's last close resets it on Linux.
const OFFER_BYTES: usize = 8192;

// An offer's state word: its state (low 3 bits), how many offers and claims the slot has seen
// (29 bits: a compare-exchange on the word cannot mistake a later offer or claim for the one
// it read) and the process acting on it (high 32 bits: the giver, or the taker while TAKING),
// so that checking a process dead and acting on the slot is one compare-exchange.
const FREE: u64 = 0;
/// Its offering process writes it.
const FILLING: u64 = 1;
const READY: u64 = 2;
/// A taker carries it on (registers the connection), then marks it taken.
const TAKING: u64 = 3;
const TAKEN: u64 = 4;
const STATE_MASK: u64 = 0b111;
const COUNT_ONE: u64 = 1 << 3;
const COUNT_MASK: u64 = 0xffff_ffff & !STATE_MASK;

fn state_of(word: u64) -> u64 {
    word & STATE_MASK
}

fn pid_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// The word of the same offer (or claim) in state `st`, held by `pid`.
fn moved(word: u64, st: u64, pid: u32) -> u64 {
    u64::from(pid) << 32 | word & COUNT_MASK | st
}

/// The word of the slot's next offer or claim, in state `st`, held by `pid`.
fn next(word: u64, st: u64, pid: u32) -> u64 {
    u64::from(pid) << 32 | (word & COUNT_MASK).wrapping_add(COUNT_ONE) & COUNT_MASK | st
}

/// An offer's header. The state word's transitions are compare-exchanges (but the ones made by
/// the process holding the slot FILLING); the other words are written only by the process that
/// moved the state to FILLING, and read after the state word was loaded with Acquire (the
/// compare-exchange that acts on what was read checks the word unchanged).
#[repr(C)]
struct OfferHead {
    state: AtomicU64,
    giver: AtomicU32,
    key: AtomicU64,
    len: AtomicU32,
    words: [AtomicU32; CARRY_WORDS],
}

/// The offers: headers together (a round reads them all), bytes apart (touched only by an
/// offer).
#[repr(C)]
struct Offers {
    head: [OfferHead; OFFERS],
    data: [UnsafeCell<[u8; OFFER_BYTES]>; OFFERS],
}

// SAFETY: `data[i]` is written only by the process that moved `head[i].state` from FREE to
// FILLING, and read only by the one that moved it from READY to TAKING (module comment).
unsafe impl Sync for Offers {}

static OFFERED: OnceLock<Option<&'static Offers>> = OnceLock::new();

/// Whether another live member takes new connections (this one's last round saw one).
static OTHERS_SERVE: AtomicBool = AtomicBool::new(false);

/// Whether an offer may find a taker: another member takes new connections, or the process
/// that made the page (the one that listened and forked: nginx's master), or the one that
/// forked the members, lives on and is not this one, so new workers may come (on reload, the
/// old workers may close their listeners before the new ones ran their first round).
fn takers_may_come(page: Option<&Page>, me: u32) -> bool {
    let lives = |pid: u32| pid != 0 && pid != me && alive(pid);
    OTHERS_SERVE.load(Ordering::Relaxed)
        || page.is_some_and(|p| {
            lives(p.creator.load(Ordering::Relaxed)) || lives(p.forker.load(Ordering::Relaxed))
        })
}

/// A fresh shared anonymous mapping of `len` bytes (zero-filled), or None.
fn shared_mapping(len: usize) -> Option<*mut libc::c_void> {
    // SAFETY: a new mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    (p != libc::MAP_FAILED).then_some(p)
}

/// This process's view of the shared connection table and offers (userstack's
/// `FlowRegistry`).
struct SharedFlows {
    table: &'static [FlowSlot],
    offers: Option<&'static Offers>,
    page: Option<&'static Page>,
    /// Offers this process claimed (`take_offer`) and has not settled (`took`): key, slot and
    /// the state word it claimed.
    claimed: Vec<(u64, usize, u64)>,
    me: u32,
    /// Pids found dead (a dead process's connections are nobody's).
    dead: Vec<u32>,
}

impl SharedFlows {
    fn start(key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize & (FLOW_SLOTS - 1)
    }
}

impl FlowRegistry for SharedFlows {
    fn others_may_listen(&self) -> bool {
        takers_may_come(self.page, self.me)
    }

    fn opened(&mut self, key: u64) {
        let s = Self::start(key);
        for i in 0..PROBES {
            let slot = &self.table[(s + i) & (FLOW_SLOTS - 1)];
            let k = slot.key.load(Ordering::Acquire);
            if (k == 0 || k == GONE)
                && slot
                    .key
                    .compare_exchange(k, key, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                slot.pid.store(self.me, Ordering::Release);
                return;
            }
        }
        // Full around this key: the connection is not registered, and a member seeing its
        // frames during a handover may reset it (64 probes of 131,072 slots: not in practice).
    }

    fn closed(&mut self, key: u64) {
        let s = Self::start(key);
        for i in 0..PROBES {
            let slot = &self.table[(s + i) & (FLOW_SLOTS - 1)];
            match slot.key.load(Ordering::Acquire) {
                0 => return,
                k if k == key && slot.pid.load(Ordering::Acquire) == self.me => {
                    slot.pid.store(0, Ordering::Release);
                    slot.key.store(GONE, Ordering::Release);
                    return;
                }
                _ => {}
            }
        }
    }

    fn elsewhere(&mut self, key: u64) -> bool {
        let s = Self::start(key);
        for i in 0..PROBES {
            let slot = &self.table[(s + i) & (FLOW_SLOTS - 1)];
            match slot.key.load(Ordering::Acquire) {
                0 => return false,
                k if k == key => {
                    let pid = slot.pid.load(Ordering::Acquire);
                    if pid == self.me || self.dead.contains(&pid) {
                        continue;
                    }
                    // 0: being registered right now, by a live process.
                    if pid == 0 || alive(pid) {
                        return true;
                    }
                    self.dead.push(pid);
                }
                _ => {}
            }
        }
        false
    }

    fn hand_over(&mut self, key: u64, carry: &Carry, data: (&[u8], &[u8])) -> bool {
        let Some(offers) = self.offers else {
            return false;
        };
        let len = data.0.len() + data.1.len();
        if len > OFFER_BYTES || !takers_may_come(self.page, self.me) {
            return false;
        }
        for (i, h) in offers.head.iter().enumerate() {
            let w = h.state.load(Ordering::Relaxed);
            let filling = next(w, FILLING, self.me);
            if state_of(w) != FREE
                || h.state
                    .compare_exchange(w, filling, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            h.giver.store(self.me, Ordering::Relaxed);
            h.key.store(key, Ordering::Relaxed);
            h.len.store(len as u32, Ordering::Relaxed);
            for (w, v) in h.words.iter().zip(carry.to_words()) {
                w.store(v, Ordering::Relaxed);
            }
            // SAFETY: this process moved the offer to FILLING: nobody else touches its bytes.
            let bytes = unsafe { &mut *offers.data[i].get() };
            bytes[..data.0.len()].copy_from_slice(data.0);
            bytes[data.0.len()..len].copy_from_slice(data.1);
            h.state
                .store(moved(filling, READY, self.me), Ordering::Release);
            return true;
        }
        false
    }

    fn handed(&mut self, key: u64, withdraw: bool) -> Handed {
        let Some(offers) = self.offers else {
            return Handed::Back;
        };
        let withdraw = withdraw || !takers_may_come(self.page, self.me);
        for h in &offers.head {
            let w = h.state.load(Ordering::Acquire);
            if state_of(w) < READY
                || h.giver.load(Ordering::Relaxed) != self.me
                || h.key.load(Ordering::Relaxed) != key
            {
                continue;
            }
            return match state_of(w) {
                TAKEN if settle(h, w, FREE, 0) => Handed::Taken,
                READY if withdraw && settle(h, w, FREE, 0) => Handed::Back,
                _ => Handed::Waiting,
            };
        }
        Handed::Back
    }

    fn take_offer(
        &mut self,
        wants: &mut dyn FnMut(u64, usize) -> bool,
        data: &mut Vec<u8>,
    ) -> Option<(u64, Carry)> {
        let offers = self.offers?;
        for (i, h) in offers.head.iter().enumerate() {
            let w = h.state.load(Ordering::Acquire);
            let st = state_of(w);
            let pid = pid_of(w);
            if st == FREE || pid == self.me {
                continue;
            }
            if !alive(pid) {
                match st {
                    // A taker that died carrying it on: the offer is up again.
                    TAKING => {
                        let giver = h.giver.load(Ordering::Relaxed);
                        let _ = settle_next(h, w, READY, giver);
                    }
                    // A giver that died: its connections are reset as a dead process's
                    // (`steer`); the slot is free.
                    _ => {
                        let _ = settle(h, w, FREE, 0);
                    }
                }
                continue;
            }
            if st != READY {
                continue;
            }
            let key = h.key.load(Ordering::Relaxed);
            let len = h.len.load(Ordering::Relaxed) as usize;
            if len > OFFER_BYTES || !wants(key, len) || !settle_next(h, w, TAKING, self.me) {
                continue;
            }
            let claim = next(w, TAKING, self.me);
            let words: [u32; CARRY_WORDS] =
                std::array::from_fn(|k| h.words[k].load(Ordering::Relaxed));
            let Some(carry) = Carry::from_words(&words) else {
                // Not a connection's numbers: its giver finds it gone and resets it.
                let _ = settle(h, claim, FREE, 0);
                continue;
            };
            // SAFETY: this process holds the offer TAKING: its giver wrote its bytes before
            // it was READY, and nobody writes them before it is FREE again.
            let bytes = unsafe { &*offers.data[i].get() };
            data.clear();
            data.extend_from_slice(&bytes[..len]);
            self.claimed.push((key, i, claim));
            return Some((key, carry));
        }
        None
    }

    fn took(&mut self, key: u64, taken: bool) {
        let Some(offers) = self.offers else {
            return;
        };
        let Some(at) = self.claimed.iter().position(|&(k, _, _)| k == key) else {
            return;
        };
        let (_, i, w) = self.claimed.swap_remove(at);
        let h = &offers.head[i];
        let giver = h.giver.load(Ordering::Relaxed);
        let _ = settle(h, w, if taken { TAKEN } else { READY }, giver);
    }
}

/// Moves the offer whose state word is `w`, if it still is, to state `st` held by `pid`.
fn settle(h: &OfferHead, w: u64, st: u64, pid: u32) -> bool {
    h.state
        .compare_exchange(w, moved(w, st, pid), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// The same as the slot's next claim (or offer up again).
fn settle_next(h: &OfferHead, w: u64, st: u64, pid: u32) -> bool {
    h.state
        .compare_exchange(w, next(w, st, pid), Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// What this process last applied: the buckets its device delivers, and whether it takes
/// other IPv4 (ICMP).
static SEEN: AtomicU32 = AtomicU32::new(ALL);
/// The pid whose stack uses the shared connection table (0: none yet).
static REGISTERED: AtomicU32 = AtomicU32::new(0);
static OTHER_IP: AtomicU32 = AtomicU32::new(1);

/// Makes the shared page (once per process; children inherit it). Called at a listen() whose
/// stack starts later, before the process may fork workers.
pub(super) fn ensure() {
    FLOWS.get_or_init(|| {
        let len = FLOW_SLOTS * std::mem::size_of::<FlowSlot>();
        // SAFETY: the mapping is big enough, zeroed (valid atomics, every slot unused), and
        // lives for the rest of the process.
        shared_mapping(len)
            .map(|p| unsafe { std::slice::from_raw_parts(p as *const FlowSlot, FLOW_SLOTS) })
    });
    OFFERED.get_or_init(|| {
        // SAFETY: the mapping is big enough, zeroed (every offer FREE), and lives for the rest
        // of the process.
        shared_mapping(std::mem::size_of::<Offers>()).map(|p| unsafe { &*(p as *const Offers) })
    });
    PAGE.get_or_init(|| {
        // SAFETY: a fresh shared anonymous mapping, zero-filled (every word free/nobody).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            crate::shim_log!(
                "cannot map the page worker processes share ({}): a process forked after \
                 listen() serves alone",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: the mapping is page-aligned, big enough, zeroed (valid atomics), and lives
        // for the rest of the process.
        let page = unsafe { &*(p as *const Page) };
        // SAFETY: getpid has no preconditions.
        page.creator
            .store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
        Some(page)
    });
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 || crate::errno::get() == libc::EPERM }
}

/// Holds the page's lock (taken from a holder that died).
struct Locked<'p>(&'p Page);

impl<'p> Locked<'p> {
    fn take(page: &'p Page, me: u32) -> Option<Locked<'p>> {
        for _ in 0..1000 {
            match page
                .lock
                .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return Some(Locked(page)),
                Err(holder) if holder != me && !alive(holder) => {
                    let _ =
                        page.lock
                            .compare_exchange(holder, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
                Err(_) => std::thread::yield_now(),
            }
        }
        None
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.0.lock.store(0, Ordering::Release);
    }
}

/// One round of the protocol (module comment) for this process, whose stack has `conns`
/// connections per bucket and which listens (`serving`) or not. Returns its steering, the
/// buckets its device delivers, and whether it takes other IPv4.
fn round(
    page: &Page,
    me: u32,
    serving: bool,
    conns: &[u32; N],
) -> Option<(Steering, u32, bool, Vec<u32>)> {
    let _lock = Locked::take(page, me)?;
    let mut owner: [u32; N] = std::array::from_fn(|b| page.owner[b].load(Ordering::Relaxed));
    let mut before: [u32; N] = std::array::from_fn(|b| page.before[b].load(Ordering::Relaxed));
    let mut handing: [u32; N] = std::array::from_fn(|b| page.handing[b].load(Ordering::Relaxed));
    // Who is alive (each pid asked once).
    let mut known: Vec<(u32, bool)> = vec![(me, true)];
    let mut is_alive = |pid: u32| -> bool {
        if pid == 0 {
            return false;
        }
        if let Some(&(_, a)) = known.iter().find(|(p, _)| *p == pid) {
            return a;
        }
        let a = alive(pid);
        known.push((pid, a));
        a
    };
    for b in 0..N {
        if !is_alive(owner[b]) {
            owner[b] = 0;
        }
        if !is_alive(before[b]) || (before[b] == me && conns[b] == 0) || before[b] == owner[b] {
            before[b] = 0;
        }
        // This process stops taking the SYNs of a bucket taken from it (its stack learns so
        // before it polls again), or the process it was taken from is gone.
        if handing[b] == me || !is_alive(handing[b]) || owner[b] == 0 {
            handing[b] = 0;
        }
    }
    // Who does not accept: this process (if so), and the others that said so and live.
    let mut idle: Vec<u32> = (0..IDLE_SLOTS)
        .map(|i| page.idle[i].load(Ordering::Relaxed))
        .filter(|&p| p != 0 && p != me && is_alive(p))
        .collect();
    // (Only an owner's not accepting matters: no more than N are listed.)
    if !serving && owner.contains(&me) {
        idle.push(me);
    }
    idle.truncate(IDLE_SLOTS);
    for i in 0..IDLE_SLOTS {
        page.idle[i].store(idle.get(i).copied().unwrap_or(0), Ordering::Relaxed);
    }
    // The members that take new connections: the owners whose application accepts.
    let mut members: Vec<u32> = Vec::new();
    for &o in owner.iter().filter(|&&o| o != 0 && o != me) {
        if !members.contains(&o) && !idle.contains(&o) {
            members.push(o);
        }
    }
    if serving {
        members.push(me);
    }
    let count = |owner: &[u32; N], pid: u32| owner.iter().filter(|&&o| o == pid).count();
    // A member that stopped listening, or whose application stopped accepting, hands its
    // buckets to the members that accept (none: it keeps them): to the process named in
    // `before` if that one accepts (its connections are there), else to the one with the
    // fewest. (Every process sees the frames of the buckets where it has connections, `see`
    // below, whoever `before` names.)
    if !serving && !members.is_empty() {
        for b in 0..N {
            if owner[b] != me {
                continue;
            }
            let other = before[b];
            if other != 0 && other != me && members.contains(&other) {
                owner[b] = other;
                before[b] = if conns[b] > 0 { me } else { 0 };
                continue;
            }
            let to = *members
                .iter()
                .min_by_key(|&&p| count(&owner, p))
                .expect("non-empty");
            owner[b] = to;
            if conns[b] > 0 {
                before[b] = me;
            }
        }
    }
    // Buckets nobody owns (their owner died) go to this process if it serves: it is the one
    // that sees them at once, and resets their dead connections' peers (`steer`); the others'
    // shares come back through handovers. Else to the member with the fewest.
    if !members.is_empty() {
        for b in 0..N {
            if owner[b] == 0 {
                owner[b] = if serving {
                    me
                } else {
                    *members
                        .iter()
                        .min_by_key(|&&p| count(&owner, p))
                        .expect("non-empty")
                };
            }
        }
    }
    // The buckets of owners that do not accept (they are not members: a member that just
    // started owns nothing yet, and nobody gives it any) are taken, as from a member; then
    // up to a fair share, taken from the member with the most (it keeps its connections).
    if serving {
        for b in 0..N {
            let o = owner[b];
            if o != 0 && o != me && idle.contains(&o) {
                owner[b] = me;
                before[b] = o;
                handing[b] = o;
            }
        }
        let share = N / members.len();
        while count(&owner, me) < share {
            let Some(&richest) = members
                .iter()
                .filter(|&&p| p != me)
                .max_by_key(|&&p| count(&owner, p))
            else {
                break;
            };
            if count(&owner, richest) <= share {
                break;
            }
            let Some(b) = (0..N).find(|&b| owner[b] == richest && before[b] == 0) else {
                break;
            };
            owner[b] = me;
            before[b] = richest;
            handing[b] = richest;
        }
    }
    for b in 0..N {
        page.owner[b].store(owner[b], Ordering::Relaxed);
        page.before[b].store(before[b], Ordering::Relaxed);
        page.handing[b].store(handing[b], Ordering::Relaxed);
    }
    let mask = |f: &dyn Fn(usize) -> bool| (0..N).filter(|&b| f(b)).fold(0u32, |m, b| m | 1 << b);
    let mine = mask(&|b| owner[b] == me);
    let syn = mine & mask(&|b| handing[b] == 0);
    let rst = mask(&|b| owner[b] == me && before[b] == 0);
    // The frames of this process's own connections (and offers) wherever they are, besides
    // its buckets'.
    let see = mine | mask(&|b| before[b] == me || conns[b] > 0);
    let died: Vec<u32> = known.iter().filter(|(_, a)| !a).map(|(p, _)| *p).collect();
    OTHERS_SERVE.store(owner.iter().any(|&o| o != 0 && o != me), Ordering::Relaxed);
    Some((Steering { syn, rst }, see, owner[0] == me, died))
}

/// This process's part in its group (module comment): called when its stack starts and then
/// periodically. Nothing to do for a process whose stack started at listen() (no page).
pub(super) fn steer<L: Link>(stack: &mut Stack<L>, serving: bool) {
    let Some(Some(page)) = PAGE.get() else {
        return;
    };
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as u32;
    let Some((steering, see, other_ip, died)) = round(page, me, serving, &stack.bucket_conns())
    else {
        return;
    };
    // The first round of this process's stack: its connections go in the shared table.
    if REGISTERED.swap(me, Ordering::Relaxed) != me {
        if page.creator.load(Ordering::Relaxed) != me {
            // SAFETY: getppid has no preconditions.
            page.forker
                .store(unsafe { libc::getppid() } as u32, Ordering::Relaxed);
        }
        if let Some(Some(table)) = FLOWS.get() {
            stack.set_flow_registry(Box::new(SharedFlows {
                table,
                offers: OFFERED.get().copied().flatten(),
                page: Some(page),
                claimed: Vec::new(),
                me,
                dead: Vec::new(),
            }));
        }
    }
    let now = userstack::clock::now();
    stack.set_steering(steering, now);
    let other = u32::from(other_ip);
    if SEEN.load(Ordering::Relaxed) != see || OTHER_IP.load(Ordering::Relaxed) != other {
        apply_filter(stack, see, other_ip);
    }
    // A member whose application does not accept gave its flows away: what its listeners
    // hold there goes to the members that took them.
    if !serving {
        stack.hand_over_waiting(now);
    }
    // Connections offered by members that stopped listening, and this one's own offers.
    stack.settle_handovers(now);
    // Workers that died (this round saw it first): their connections are nobody's. The kernel
    // resets a dead process's connections; their peers are made to here, so that a client
    // waiting for a reply to a request the dead worker had acknowledged learns at once.
    if !died.is_empty() {
        if let Some(Some(table)) = FLOWS.get() {
            for slot in table.iter() {
                let key = slot.key.load(Ordering::Acquire);
                if key == 0
                    || key == GONE
                    || !died.contains(&slot.pid.load(Ordering::Acquire))
                    || slot
                        .key
                        .compare_exchange(key, GONE, Ordering::AcqRel, Ordering::Relaxed)
                        .is_err()
                {
                    continue;
                }
                stack.provoke_reset(now, key);
            }
        }
    }
}

/// Attaches the filter for `see` (and other IPv4 if `other_ip`) to the device.
fn apply_filter<L: Link>(stack: &mut Stack<L>, see: u32, other_ip: bool) {
    let other = u32::from(other_ip);
    match stack.link_mut().steer(see, other_ip) {
        Ok(()) => {
            SEEN.store(see, Ordering::Relaxed);
            OTHER_IP.store(other, Ordering::Relaxed);
        }
        Err(e) => {
            // Each process then receives every frame and takes only its own flows: correct,
            // at the cost of parsing the others' frames. Said once.
            static SAID: AtomicU32 = AtomicU32::new(0);
            if SAID.swap(1, Ordering::Relaxed) == 0 {
                crate::shim_log!("{e}: every worker process receives every frame");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh page (nobody owns anything), this process's pid and its parent's: two live
    /// processes for `round`.
    fn page_of_two() -> (&'static Page, u32, u32) {
        let p = shared_mapping(std::mem::size_of::<Page>()).expect("a mapping");
        // SAFETY: zeroed (free lock, nobody owns anything), big enough, never unmapped.
        let page = unsafe { &*(p as *const Page) };
        // SAFETY: getpid and getppid have no preconditions.
        let (me, parent) = unsafe { (libc::getpid() as u32, libc::getppid() as u32) };
        (page, me, parent)
    }

    /// A member whose application stopped accepting gives its buckets to the members that
    /// accept (none: it keeps them); a bucket where both it and another process have
    /// connections goes to that one, this one still seeing its frames; accepting again, it
    /// is off the page's list and takes its share back.
    #[test]
    fn giving_buckets_away_keeps_another_process_s_connections_seen() {
        let (page, me, parent) = page_of_two();
        for b in 0..N {
            page.owner[b].store(if b < 2 { me } else { parent }, Ordering::Relaxed);
        }
        page.before[0].store(parent, Ordering::Relaxed);
        page.before[1].store(parent, Ordering::Relaxed);
        let mut conns = [0u32; N];
        conns[0] = 1;
        let idle = |pid: u32| (0..IDLE_SLOTS).any(|i| page.idle[i].load(Ordering::Relaxed) == pid);
        // The other process does not accept either: this one keeps its buckets.
        page.idle[0].store(parent, Ordering::Relaxed);
        let (steering, ..) = round(page, me, false, &conns).expect("the lock");
        assert_eq!(steering.syn, 0b11, "nobody to give them to");
        assert!(idle(parent) && idle(me), "both on the list");
        // It accepts: bucket 0, where both have connections, goes to it, this one still
        // seeing its frames; bucket 1 too.
        for i in 0..IDLE_SLOTS {
            if page.idle[i].load(Ordering::Relaxed) == parent {
                page.idle[i].store(0, Ordering::Relaxed);
            }
        }
        let (steering, see, ..) = round(page, me, false, &conns).expect("the lock");
        assert_eq!(page.owner[0].load(Ordering::Relaxed), parent);
        assert_eq!(
            page.before[0].load(Ordering::Relaxed),
            me,
            "its connections there"
        );
        assert_eq!(page.owner[1].load(Ordering::Relaxed), parent, "given away");
        assert_eq!((steering.syn, see), (0, 1), "seen, not taken");
        assert!(idle(me), "still not accepting");
        // Accepting again: off the list, and its share taken back (its SYNs once the other
        // process's round stopped taking them).
        round(page, me, true, &conns).expect("the lock");
        assert!(!idle(me));
        let mine = (0..N).filter(|&b| page.owner[b].load(Ordering::Relaxed) == me);
        assert_eq!(mine.count(), N / 2);
        round(page, parent, true, &[0; N]).expect("the lock");
        let (steering, ..) = round(page, me, true, &conns).expect("the lock");
        assert_eq!(steering.syn.count_ones() as usize, N / 2);
    }

    /// A member that starts serving while the owners do not accept (an old worker after
    /// `nginx -s reload`, a worker without the accept mutex) takes their buckets, their SYNs
    /// once their next round stopped taking them; they go on seeing their connections there.
    #[test]
    fn a_serving_member_takes_the_buckets_of_owners_that_do_not_accept() {
        let (page, me, parent) = page_of_two();
        for b in 0..N {
            page.owner[b].store(parent, Ordering::Relaxed);
        }
        page.idle[0].store(parent, Ordering::Relaxed);
        let (steering, ..) = round(page, me, true, &[0; N]).expect("the lock");
        assert!((0..N).all(|b| page.owner[b].load(Ordering::Relaxed) == me));
        assert!((0..N).all(|b| page.before[b].load(Ordering::Relaxed) == parent));
        assert_eq!(steering.syn, 0, "not before the other's round");
        let (theirs, _, _, _) = round(page, parent, false, &[1; N]).expect("the lock");
        assert_eq!(theirs.syn, 0, "it takes no SYNs any more");
        let (steering, ..) = round(page, me, true, &[0; N]).expect("the lock");
        assert_eq!(steering.syn, u32::MAX);
    }

    fn offers() -> &'static Offers {
        let p = shared_mapping(std::mem::size_of::<Offers>()).expect("a mapping");
        // SAFETY: zeroed (every offer FREE), big enough, never unmapped.
        unsafe { &*(p as *const Offers) }
    }

    fn member(offers: &'static Offers, me: u32) -> SharedFlows {
        static TABLE: OnceLock<&'static [FlowSlot]> = OnceLock::new();
        let table = *TABLE.get_or_init(|| {
            let len = FLOW_SLOTS * std::mem::size_of::<FlowSlot>();
            let p = shared_mapping(len).expect("a mapping");
            // SAFETY: zeroed, big enough, never unmapped.
            unsafe { std::slice::from_raw_parts(p as *const FlowSlot, FLOW_SLOTS) }
        });
        SharedFlows {
            table,
            offers: Some(offers),
            page: None,
            claimed: Vec::new(),
            me,
            dead: Vec::new(),
        }
    }

    /// A pid no process has any more.
    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = c.id();
        c.wait().expect("true ends");
        pid
    }

    fn carry(iss: u32) -> Carry {
        Carry {
            established: true,
            fin: false,
            iss,
            irs: 7,
            rcv_nxt: 15,
            snd_wnd: 65_535,
            snd_shift: 7,
            rcv_shift: 7,
            ws_on: true,
            sack_ok: true,
            ts_ok: true,
            ts_recent: 3,
            ts_val: 4,
            payload_max: 1448,
            srtt: Some(250),
            rttvar: 100,
        }
    }

    #[test]
    fn an_offer_is_taken_once_withdrawn_at_most_once_and_its_slot_used_again() {
        OTHERS_SERVE.store(true, Ordering::Relaxed);
        let offers = offers();
        // The giver is pid 1 (alive: init), the taker this process.
        let mut giver = member(offers, 1);
        let mut taker = member(offers, std::process::id());
        let mut data = Vec::new();
        assert!(giver.hand_over(11, &carry(100), (b"GET ", b"a\r\n")));
        // Not wanted: left alone.
        assert_eq!(taker.take_offer(&mut |_, _| false, &mut data), None);
        let got = taker.take_offer(&mut |k, n| k == 11 && n == 7, &mut data);
        assert_eq!(got, Some((11, carry(100))));
        assert_eq!(data, b"GET a\r\n");
        // Claimed: waiting, and no withdrawing it now.
        assert_eq!(giver.handed(11, true), Handed::Waiting);
        assert_eq!(
            taker.take_offer(&mut |_, _| true, &mut data),
            None,
            "taken once"
        );
        taker.took(11, true);
        assert_eq!(giver.handed(11, false), Handed::Taken);
        assert!(offers
            .head
            .iter()
            .all(|h| state_of(h.state.load(Ordering::Relaxed)) == FREE));
        // Withdrawn before anybody claimed it: nobody takes it after.
        assert!(giver.hand_over(12, &carry(200), (b"", b"")));
        assert_eq!(giver.handed(12, false), Handed::Waiting);
        assert_eq!(giver.handed(12, true), Handed::Back);
        assert_eq!(taker.take_offer(&mut |_, _| true, &mut data), None);
        // A claim given back is up again.
        assert!(giver.hand_over(13, &carry(300), (b"x", b"")));
        assert!(taker.take_offer(&mut |_, _| true, &mut data).is_some());
        taker.took(13, false);
        assert_eq!(giver.handed(13, false), Handed::Waiting);
        assert_eq!(
            taker.take_offer(&mut |_, _| true, &mut data),
            Some((13, carry(300)))
        );
        taker.took(13, true);
        assert_eq!(giver.handed(13, false), Handed::Taken);
    }

    #[test]
    fn offers_of_dead_processes_are_freed_and_a_dead_takers_claim_is_up_again() {
        OTHERS_SERVE.store(true, Ordering::Relaxed);
        let offers = offers();
        let dead = dead_pid();
        let mut data = Vec::new();
        // A dead giver's offer: freed by the next scan, taken by nobody.
        assert!(member(offers, dead).hand_over(21, &carry(1), (b"", b"")));
        let mut taker = member(offers, std::process::id());
        assert_eq!(taker.take_offer(&mut |_, _| true, &mut data), None);
        assert!(offers
            .head
            .iter()
            .all(|h| state_of(h.state.load(Ordering::Relaxed)) == FREE));
        // A taker that died holding a claim: the next scan puts the offer up again.
        let mut giver = member(offers, 1);
        assert!(giver.hand_over(22, &carry(2), (b"", b"")));
        let mut doomed = member(offers, dead);
        assert!(doomed.take_offer(&mut |_, _| true, &mut data).is_some());
        assert_eq!(giver.handed(22, true), Handed::Waiting);
        assert_eq!(taker.take_offer(&mut |_, _| false, &mut data), None);
        assert_eq!(
            taker.take_offer(&mut |_, _| true, &mut data),
            Some((22, carry(2)))
        );
        taker.took(22, true);
        assert_eq!(giver.handed(22, false), Handed::Taken);
    }
}
