//! epoll semantics for user-space sockets, as Linux has them, independent of any fd table.
//!
//! An [`EpollSet`] is one epoll instance's interest list for the sockets the stack owns (the
//! application's kernel fds stay in a real kernel epoll set beside it). The owner tells it when
//! a socket's readiness may have changed ([`EpollSet::notify`]) and asks for events
//! ([`EpollSet::wait`]), giving a function that reads a socket's current readiness. Semantics
//! (as epoll(7) specifies them; pinned by the tests below, to be compared call for call with the
//! kernel by the shim's with/without tests):
//! - level-triggered entries are reported on every wait while any requested condition holds;
//! - `EPOLLET` entries are reported once per notification that found them ready (new data, a
//!   state change), not again until the next notification;
//! - `EPOLLONESHOT` entries are disabled after one report until `EPOLL_CTL_MOD` re-arms them;
//! - `EPOLLERR` and `EPOLLHUP` are reported whether asked for or not;
//! - an entry added (or modified) while already ready is reported by the next wait;
//! - the application's 64-bit `data` comes back untouched;
//! - entries that keep being ready are reported round-robin, so `maxevents` smaller than the
//!   ready count starves nobody.

use std::collections::VecDeque;

use crate::stack::Readiness;

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
pub const EPOLLPRI: u32 = libc::EPOLLPRI as u32;
pub const EPOLLET: u32 = libc::EPOLLET as u32;
pub const EPOLLONESHOT: u32 = libc::EPOLLONESHOT as u32;
pub const EPOLLEXCLUSIVE: u32 = libc::EPOLLEXCLUSIVE as u32;
pub const EPOLLWAKEUP: u32 = libc::EPOLLWAKEUP as u32;

/// The input flags that select behaviour rather than conditions.
const FLAGS: u32 = EPOLLET | EPOLLONESHOT | EPOLLEXCLUSIVE | EPOLLWAKEUP;

/// Readiness as epoll condition bits.
#[inline]
pub fn bits(r: Readiness) -> u32 {
    r.bits()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlError {
    /// EEXIST: ADD of an fd already in the set.
    Exists,
    /// ENOENT: MOD or DEL of an fd not in the set.
    NotFound,
    /// EINVAL: EPOLLEXCLUSIVE with MOD, or other invalid flags.
    Invalid,
}

impl CtlError {
    pub fn errno(self) -> i32 {
        match self {
            CtlError::Exists => libc::EEXIST,
            CtlError::NotFound => libc::ENOENT,
            CtlError::Invalid => libc::EINVAL,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Requested conditions and flags, as given to epoll_ctl.
    events: u32,
    data: u64,
    /// ONESHOT entry already reported and not re-armed.
    disabled: bool,
    /// In `ready` (at most once).
    queued: bool,
    /// Which ADD made this entry: a key left in `ready` by a deleted entry (DEL, or close and
    /// the fd number reused by the next accept) must not be taken for the new one's.
    gen: u32,
    /// The readiness last told (notify, settle), and the pass it was told in: within the
    /// pass it is the socket's readiness still (`EpollSet::start_pass`).
    told: u32,
    told_pass: u64,
    /// The wait (`EpollSet::call`) that last reported it.
    reported: u32,
}

/// The entries of a set, indexed by key: keys are file descriptors, small and dense, and a
/// request's path looks an entry up three or four times (a hash lookup each cost ~20
/// instructions more).
#[derive(Debug, Default)]
struct Entries {
    by_key: Vec<Option<Entry>>,
    len: usize,
}

impl Entries {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn get(&self, key: &i32) -> Option<&Entry> {
        self.by_key.get(usize::try_from(*key).ok()?)?.as_ref()
    }

    #[inline]
    fn get_mut(&mut self, key: &i32) -> Option<&mut Entry> {
        self.by_key.get_mut(usize::try_from(*key).ok()?)?.as_mut()
    }

    fn contains_key(&self, key: &i32) -> bool {
        self.get(key).is_some()
    }

    /// Inserts the entry of `key` (not present; non-negative).
    fn insert(&mut self, key: i32, e: Entry) {
        let k = usize::try_from(key).expect("epoll keys are file descriptors");
        if self.by_key.len() <= k {
            self.by_key.resize_with(k + 1, || None);
        }
        debug_assert!(self.by_key[k].is_none());
        self.by_key[k] = Some(e);
        self.len += 1;
    }

    fn remove(&mut self, key: &i32) -> Option<Entry> {
        let e = self.by_key.get_mut(usize::try_from(*key).ok()?)?.take()?;
        self.len -= 1;
        Some(e)
    }

    fn keys(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_key
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_some())
            .map(|(k, _)| k as i32)
    }
}

/// One epoll instance's user-space sockets, keyed by the socket's key (the shim uses the fd).
#[derive(Debug, Default)]
pub struct EpollSet {
    entries: Entries,
    /// Keys (with their entry's `gen`) that may have something to report, in report order.
    ready: VecDeque<(i32, u32)>,
    /// The next entry's `gen`.
    next_gen: u32,
    /// The current pass (`start_pass`); 0: none started since the last wait.
    pass: u64,
    /// The pass the next `start_pass` starts.
    next_pass: u64,
    /// Which wait this is (`wait_more` continues it).
    call: u32,
    /// Keys whose socket another set reports too ([`EpollSet::pair`]).
    paired: Vec<i32>,
}

/// One reported event, as `struct epoll_event` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpollEvent {
    pub events: u32,
    pub data: u64,
}

impl EpollSet {
    pub fn new() -> EpollSet {
        EpollSet::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: i32) -> bool {
        self.entries.contains_key(&key)
    }

    /// The events `key`'s entry asks for (as given to epoll_ctl).
    pub fn interest(&self, key: i32) -> Option<u32> {
        self.entries.get(&key).map(|e| e.events)
    }

    /// The events `key`'s entry asks for, if it may report anything now (not a ONESHOT entry
    /// reported and not re-armed).
    #[inline]
    pub fn armed_interest(&self, key: i32) -> Option<u32> {
        self.entries
            .get(&key)
            .filter(|e| !e.disabled)
            .map(|e| e.events)
    }

    /// `key`'s entry: the events it asks for, its data, and whether it is disarmed (a
    /// ONESHOT entry reported and not re-armed).
    pub fn entry(&self, key: i32) -> Option<(u32, u64, bool)> {
        self.entries
            .get(&key)
            .map(|e| (e.events, e.data, e.disabled))
    }

    /// The keys of the entries, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = i32> + '_ {
        self.entries.keys()
    }

    /// Whether a wait could report something now (cheap; may be a false positive).
    pub fn maybe_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// EPOLL_CTL_ADD. `now` is the socket's current readiness: if it matches, the next wait
    /// reports it (an fd added while data is already waiting is not missed).
    pub fn add(
        &mut self,
        key: i32,
        events: u32,
        data: u64,
        now: Readiness,
    ) -> Result<(), CtlError> {
        if key < 0 {
            return Err(CtlError::Invalid);
        }
        // EPOLLEXCLUSIVE takes only these with it (Linux's EPOLLEXCLUSIVE_OK_BITS).
        let exclusive_ok = EPOLLIN
            | EPOLLOUT
            | EPOLLERR
            | EPOLLHUP
            | libc::EPOLLWAKEUP as u32
            | EPOLLET
            | EPOLLEXCLUSIVE;
        if events & EPOLLEXCLUSIVE != 0 && events & !exclusive_ok != 0 {
            return Err(CtlError::Invalid);
        }
        if self.entries.contains_key(&key) {
            return Err(CtlError::Exists);
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        self.entries.insert(
            key,
            Entry {
                events,
                data,
                disabled: false,
                queued: false,
                gen: self.next_gen,
                told: 0,
                told_pass: 0,
                reported: self.call.wrapping_sub(1),
            },
        );
        self.consider(key, bits(now));
        Ok(())
    }

    /// EPOLL_CTL_MOD: new conditions and data; re-arms a ONESHOT entry.
    pub fn modify(
        &mut self,
        key: i32,
        events: u32,
        data: u64,
        now: Readiness,
    ) -> Result<(), CtlError> {
        if events & EPOLLEXCLUSIVE != 0 {
            return Err(CtlError::Invalid);
        }
        let e = self.entries.get_mut(&key).ok_or(CtlError::NotFound)?;
        if e.events & EPOLLEXCLUSIVE != 0 {
            return Err(CtlError::Invalid);
        }
        e.events = events;
        e.data = data;
        e.disabled = false;
        self.consider(key, bits(now));
        Ok(())
    }

    /// EPOLL_CTL_DEL.
    pub fn delete(&mut self, key: i32) -> Result<(), CtlError> {
        if !self.paired.is_empty() {
            self.paired.retain(|&k| k != key);
        }
        self.entries
            .remove(&key)
            .map(|_| ())
            .ok_or(CtlError::NotFound)
        // A key left in `ready` is skipped by `wait` (no entry, or one of another `gen`).
    }

    /// Marks `key`'s entry as paired: the owner has its socket in another set as well (a
    /// socket served in two places, each reporting its own readiness), and folds the two
    /// reports of one call into one ([`EpollSet::paired_reported`]). Until DEL.
    pub fn pair(&mut self, key: i32) {
        if self.entries.contains_key(&key) && !self.paired.contains(&key) {
            self.paired.push(key);
        }
    }

    /// Whether any entry is paired ([`EpollSet::pair`]).
    #[inline]
    pub fn has_paired(&self) -> bool {
        !self.paired.is_empty()
    }

    /// The keys and `data` of the paired entries that wait number `call` reported (its `wait`
    /// and `wait_more`).
    pub fn paired_reported(&self, call: u32) -> impl Iterator<Item = (i32, u64)> + '_ {
        self.paired.iter().filter_map(move |&k| {
            self.entries
                .get(&k)
                .filter(|e| e.reported == call)
                .map(|e| (k, e.data))
        })
    }

    /// The socket's readiness may have changed (data arrived, buffer space freed, state
    /// changed). For EPOLLET entries this is the edge that allows one more report. Returns
    /// whether the entry was queued as ready by this call (a waiter on the set must look).
    pub fn notify(&mut self, key: i32, now: Readiness) -> bool {
        self.consider(key, bits(now))
    }

    /// `notify`, for an event whose edge is `edge` (`Event::Conn`'s), but an EPOLLEXCLUSIVE
    /// entry is left alone when `skip_exclusive` (another set's exclusive entry took this
    /// wake-up). Returns whether the entry was queued, and
    /// whether it is an EPOLLEXCLUSIVE one (one lookup for both).
    #[inline]
    pub fn notify_unless_exclusive(
        &mut self,
        key: i32,
        now: Readiness,
        edge: u32,
        skip_exclusive: bool,
    ) -> (bool, bool) {
        let Some(e) = self.entries.get_mut(&key) else {
            return (false, false);
        };
        (e.told, e.told_pass) = (bits(now), self.pass);
        let exclusive = e.events & EPOLLEXCLUSIVE != 0;
        if (exclusive && skip_exclusive) || e.disabled || e.queued || !wanted(e.events, bits(now)) {
            return (false, exclusive);
        }
        // An edge-triggered entry wakes only for an edge of a condition it watches (Linux's
        // wake-up carries the event's conditions; EPOLLERR and EPOLLHUP are always watched).
        if e.events & EPOLLET != 0 && edge & (e.events | EPOLLERR | EPOLLHUP) == 0 {
            return (false, exclusive);
        }
        e.queued = true;
        self.ready.push_back((key, e.gen));
        (true, exclusive)
    }

    #[inline]
    fn consider(&mut self, key: i32, now: u32) -> bool {
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        (e.told, e.told_pass) = (now, self.pass);
        if e.disabled || e.queued || !wanted(e.events, now) {
            return false;
        }
        e.queued = true;
        self.ready.push_back((key, e.gen));
        true
    }

    /// The entries queued as ready (maybe stale), in report order: their keys and the events
    /// they ask for.
    pub fn queued(&self) -> impl Iterator<Item = (i32, u32)> + '_ {
        self.ready
            .iter()
            .filter_map(|&(k, _)| Some((k, self.entries.get(&k)?.events)))
    }

    /// The socket of `key` is now `r`, and nothing changes that before the next wait: if its
    /// entry wants none of it, the entry leaves the ready list (its queued place goes stale),
    /// so the wait need not ask. (What the wait would find: it drops such an entry too.)
    pub fn settle(&mut self, key: i32, r: Readiness) {
        let Some(e) = self.entries.get_mut(&key) else {
            return;
        };
        (e.told, e.told_pass) = (bits(r), self.pass);
        if e.queued && !wanted(e.events, bits(r)) {
            e.queued = false;
            self.next_gen = self.next_gen.wrapping_add(1);
            e.gen = self.next_gen;
        }
    }

    /// The socket of `key` changed in a way the set was not told: the next wait asks for its
    /// readiness.
    pub fn untell(&mut self, key: i32) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.told_pass = 0;
        }
    }

    /// Starts a pass: from now until the next `wait`, the owner tells the set every change of
    /// its sockets' readiness (`notify`, `settle`), so that the wait takes what it was told in
    /// the pass instead of asking (a poll's events and the wait that reports them, under one
    /// lock). A wait without a pass asks for every candidate's readiness.
    pub fn start_pass(&mut self) {
        self.next_pass += 1;
        self.pass = self.next_pass;
    }

    /// Whether entries are queued as ready (maybe stale: a wait looks at each again).
    pub fn has_queued(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether a wait would report something now, reading each candidate's current readiness
    /// through `readiness`, without reporting or consuming anything (an epoll set inside
    /// another one: what the outer set's wait asks of it, as Linux's ep_eventpoll_poll does).
    /// Entries found no longer ready leave the ready list.
    pub fn ready_now(&mut self, mut readiness: impl FnMut(i32) -> Option<Readiness>) -> bool {
        let mut kept = VecDeque::with_capacity(self.ready.len());
        while let Some((key, gen)) = self.ready.pop_front() {
            let Some(e) = self.entries.get_mut(&key).filter(|e| e.gen == gen) else {
                continue;
            };
            let now = readiness(key).map_or(0, bits);
            if !e.disabled && wanted(e.events, now) {
                kept.push_back((key, gen));
            } else {
                e.queued = false;
            }
        }
        self.ready = kept;
        !self.ready.is_empty()
    }

    /// Fills `out` (up to its capacity, at least 1) with events, reading each candidate's
    /// current readiness through `readiness` (`None`: the socket is gone; its entry stays until
    /// DEL, as a closed fd's entry would on Linux, but reports nothing). Returns how many.
    // (Out of line, with `report` and the caller's readiness inlined: its loop's own calls,
    // the queue's, stay inlined too.)
    #[inline(never)]
    pub fn wait(
        &mut self,
        out: &mut Vec<EpollEvent>,
        max: usize,
        readiness: impl FnMut(i32) -> Option<Readiness>,
    ) -> usize {
        self.call = self.call.wrapping_add(1);
        self.report(out, max, false, readiness)
    }

    /// Which `wait` ran last ([`EpollSet::wait_more`] continues it).
    pub fn last_wait(&self) -> u32 {
        self.call
    }

    /// More events for the same epoll_wait call as `wait` number `call` (which filled the
    /// room it was given; the caller has more): never an entry that wait reported. Nothing if
    /// another wait ran since (another thread's, on the same set): what it reported cannot
    /// be told from this call's.
    pub fn wait_more(
        &mut self,
        call: u32,
        out: &mut Vec<EpollEvent>,
        max: usize,
        readiness: impl FnMut(i32) -> Option<Readiness>,
    ) -> usize {
        if call != self.call {
            out.clear();
            return 0;
        }
        self.report(out, max, true, readiness)
    }

    #[inline(always)]
    fn report(
        &mut self,
        out: &mut Vec<EpollEvent>,
        max: usize,
        more: bool,
        mut readiness: impl FnMut(i32) -> Option<Readiness>,
    ) -> usize {
        out.clear();
        let max = max.max(1);
        // Each queued key is looked at once per call; level-triggered ones that are still
        // ready go to the back, behind the others (round-robin): the budget ends the call
        // before it reaches them again.
        let mut budget = self.ready.len();
        while budget > 0 && out.len() < max {
            budget -= 1;
            let Some((key, gen)) = self.ready.pop_front() else {
                break;
            };
            let Some(e) = self.entries.get_mut(&key).filter(|e| e.gen == gen) else {
                continue;
            };
            if more && e.reported == self.call {
                // Reported by this call already: stays queued for the next.
                self.ready.push_back((key, gen));
                continue;
            }
            e.queued = false;
            if e.disabled {
                continue;
            }
            let now = if self.pass != 0 && e.told_pass == self.pass {
                e.told
            } else {
                let Some(r) = readiness(key) else { continue };
                bits(r)
            };
            let got = report_bits(e.events, now);
            if got == 0 {
                continue;
            }
            out.push(EpollEvent {
                events: got,
                data: e.data,
            });
            e.reported = self.call;
            if e.events & EPOLLONESHOT != 0 {
                e.disabled = true;
            } else if e.events & EPOLLET == 0 {
                e.queued = true;
                self.ready.push_back((key, gen));
            }
        }
        // What was told in the pass may not hold once the application acts on the events.
        self.pass = 0;
        out.len()
    }
}

/// Whether any requested condition (or ERR/HUP, always requested) holds.
fn wanted(events: u32, now: u32) -> bool {
    report_bits(events, now) != 0
}

fn report_bits(events: u32, now: u32) -> u32 {
    // A readable TCP socket is EPOLLRDNORM too, a writable one EPOLLWRNORM (Linux's tcp_poll):
    // each is its plain bit moved up 6 places.
    const NORM: u32 = (EPOLLIN | EPOLLOUT) << 6;
    const _: () = assert!(NORM == (libc::EPOLLRDNORM | libc::EPOLLWRNORM) as u32);
    (now | (now & (EPOLLIN | EPOLLOUT)) << 6) & ((events & !FLAGS) | EPOLLERR | EPOLLHUP)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const R: Readiness = Readiness::READABLE;
    const W: Readiness = Readiness::WRITABLE;
    const RW: Readiness = Readiness::new(true, true, false, false, false);
    const NONE: Readiness = Readiness::NONE;

    fn wait_all(s: &mut EpollSet, state: &HashMap<i32, Readiness>) -> Vec<EpollEvent> {
        let mut out = Vec::new();
        s.wait(&mut out, 64, |k| state.get(&k).copied());
        out
    }

    /// A wait that filled its room, continued for the same call: the entries it did not
    /// reach, never one it reported (level-triggered ones are queued again at once).
    #[test]
    fn wait_more_reports_what_the_wait_left_and_nothing_twice() {
        let mut s = EpollSet::new();
        let state: HashMap<i32, Readiness> = (0..6).map(|k| (k, R)).collect();
        for k in 0..6 {
            s.add(k, EPOLLIN, k as u64, R).unwrap();
        }
        let mut out = Vec::new();
        s.wait(&mut out, 2, |k| state.get(&k).copied());
        let first: Vec<u64> = out.iter().map(|e| e.data).collect();
        assert_eq!(first, [0, 1]);
        let call = s.last_wait();
        s.wait_more(call, &mut out, 64, |k| state.get(&k).copied());
        let more: Vec<u64> = out.iter().map(|e| e.data).collect();
        assert_eq!(more, [2, 3, 4, 5]);
        // The next call: every entry again, once.
        let mut next: Vec<u64> = wait_all(&mut s, &state).iter().map(|e| e.data).collect();
        next.sort_unstable();
        assert_eq!(next, [0, 1, 2, 3, 4, 5]);
        // A wait continued after another (another thread's on the same set) adds nothing.
        s.wait(&mut out, 2, |k| state.get(&k).copied());
        let call = s.last_wait();
        wait_all(&mut s, &state);
        assert_eq!(
            s.wait_more(call, &mut out, 64, |k| state.get(&k).copied()),
            0
        );
    }

    /// An edge-triggered entry wakes for an edge of a condition it watches (EPOLLRDNORM is
    /// one with EPOLLIN, as Linux's data-ready wake-up carries both), not for another's.
    #[test]
    fn edge_triggered_entries_wake_for_their_own_conditions() {
        let mut s = EpollSet::new();
        let rdnorm = libc::EPOLLRDNORM as u32;
        s.add(1, EPOLLOUT | EPOLLET, 1, NONE).unwrap();
        s.add(2, rdnorm | EPOLLET, 2, NONE).unwrap();
        let rw = RW;
        let data_edge = EPOLLIN | rdnorm;
        assert_eq!(
            s.notify_unless_exclusive(1, rw, data_edge, false),
            (false, false)
        );
        assert_eq!(
            s.notify_unless_exclusive(2, rw, data_edge, false),
            (true, false)
        );
        assert_eq!(
            s.notify_unless_exclusive(1, rw, EPOLLOUT, false),
            (true, false)
        );
    }

    /// Within a pass the wait takes the readiness it was told; outside one, or for what was
    /// told before the pass began, or untold, it asks.
    #[test]
    fn a_pass_reports_what_it_was_told_and_asks_for_the_rest() {
        let mut s = EpollSet::new();
        s.add(5, EPOLLIN, 5, NONE).unwrap();
        s.add(6, EPOLLIN, 6, NONE).unwrap();
        s.add(7, EPOLLIN, 7, NONE).unwrap();
        // Told before the pass: asked (and found read meanwhile: not reported).
        s.notify(7, R);
        s.start_pass();
        s.notify(5, R);
        s.notify(6, R);
        s.untell(6);
        let mut asked = Vec::new();
        let mut out = Vec::new();
        s.wait(&mut out, 64, |k| {
            asked.push(k);
            Some(if k == 6 { R } else { NONE })
        });
        assert_eq!(asked, [7, 6]);
        assert_eq!(out.iter().map(|e| e.data).collect::<Vec<_>>(), [5, 6]);
        // The wait ended the pass: the level-triggered entries still queued are asked again.
        asked.clear();
        s.wait(&mut out, 64, |k| {
            asked.push(k);
            Some(NONE)
        });
        assert_eq!(asked, [5, 6]);
        assert!(out.is_empty());
        // A settle in the pass is what the wait takes.
        s.start_pass();
        s.notify(5, R);
        s.settle(5, NONE);
        s.wait(&mut out, 64, |_| panic!("nothing to ask"));
        assert!(out.is_empty());
    }

    #[test]
    fn ready_now_looks_without_consuming() {
        let mut s = EpollSet::new();
        let mut st = HashMap::from([(5, NONE), (6, NONE)]);
        s.add(5, EPOLLIN | EPOLLET, 5, NONE).unwrap();
        s.add(6, EPOLLIN, 6, NONE).unwrap();
        assert!(!s.ready_now(|k| st.get(&k).copied()));
        st.insert(5, R);
        s.notify(5, R);
        // An edge-triggered entry looked at is still reported by the next wait.
        assert!(s.ready_now(|k| st.get(&k).copied()));
        assert!(s.ready_now(|k| st.get(&k).copied()));
        assert_eq!(wait_all(&mut s, &st).len(), 1);
        assert!(!s.ready_now(|k| st.get(&k).copied()));
        // A level-triggered entry no longer ready leaves the list; a new notification brings
        // it back.
        st.insert(6, R);
        s.notify(6, R);
        st.insert(6, NONE);
        assert!(!s.ready_now(|k| st.get(&k).copied()));
        st.insert(6, R);
        s.notify(6, R);
        assert!(s.ready_now(|k| st.get(&k).copied()));
        assert_eq!(wait_all(&mut s, &st).len(), 1);
    }

    #[test]
    fn a_settled_entry_leaves_the_list_only_when_it_wants_nothing_of_its_readiness() {
        let mut s = EpollSet::new();
        let mut st = HashMap::from([(5, NONE), (6, NONE), (7, NONE)]);
        s.add(5, EPOLLIN, 5, NONE).unwrap();
        s.add(6, EPOLLIN | EPOLLET, 6, NONE).unwrap();
        s.add(7, EPOLLIN, 7, NONE).unwrap();
        for k in [5, 6, 7] {
            st.insert(k, R);
            s.notify(k, R);
        }
        // 5 and 6 were drained (only writable: not asked for); 7 still has data.
        for k in [5, 6] {
            st.insert(k, W);
            s.settle(k, W);
        }
        s.settle(7, R);
        assert_eq!(s.queued().count(), 3, "settled places stay, stale");
        let got = wait_all(&mut s, &st);
        assert_eq!(got.iter().map(|e| e.data).collect::<Vec<_>>(), [7]);
        // A settled entry comes back with the next notification, once.
        st.insert(5, R);
        s.notify(5, R);
        let got = wait_all(&mut s, &st);
        assert_eq!(got.iter().map(|e| e.data).collect::<Vec<_>>(), [7, 5]);
        assert_eq!(s.queued().count(), 2);
    }

    #[test]
    fn level_triggered_reports_while_ready() {
        let mut s = EpollSet::new();
        let mut st = HashMap::from([(5, NONE)]);
        s.add(5, EPOLLIN, 0xdead_beef_0000_0005, NONE).unwrap();
        assert!(wait_all(&mut s, &st).is_empty());
        st.insert(5, R);
        s.notify(5, R);
        let ev = wait_all(&mut s, &st);
        assert_eq!(
            ev,
            vec![EpollEvent {
                events: EPOLLIN,
                data: 0xdead_beef_0000_0005
            }]
        );
        // Still readable: reported again without a new notification.
        assert_eq!(wait_all(&mut s, &st).len(), 1);
        st.insert(5, NONE);
        assert!(wait_all(&mut s, &st).is_empty());
        assert!(wait_all(&mut s, &st).is_empty());
    }

    #[test]
    fn edge_triggered_reports_once_per_notification() {
        let mut s = EpollSet::new();
        let st = HashMap::from([(3, R)]);
        s.add(3, EPOLLIN | EPOLLET, 3, R).unwrap();
        assert_eq!(
            wait_all(&mut s, &st).len(),
            1,
            "ready at ADD counts as an edge"
        );
        assert!(wait_all(&mut s, &st).is_empty(), "no new edge, no report");
        s.notify(3, R); // more data arrived
        assert_eq!(wait_all(&mut s, &st).len(), 1);
        assert!(wait_all(&mut s, &st).is_empty());
    }

    #[test]
    fn oneshot_disables_until_mod() {
        let mut s = EpollSet::new();
        let st = HashMap::from([(7, R)]);
        s.add(7, EPOLLIN | EPOLLONESHOT, 1, R).unwrap();
        assert_eq!(wait_all(&mut s, &st).len(), 1);
        s.notify(7, R);
        assert!(
            wait_all(&mut s, &st).is_empty(),
            "disabled after one report"
        );
        s.modify(7, EPOLLIN | EPOLLONESHOT, 2, R).unwrap();
        assert_eq!(
            wait_all(&mut s, &st),
            vec![EpollEvent {
                events: EPOLLIN,
                data: 2
            }]
        );
    }

    #[test]
    fn err_and_hup_are_always_reported() {
        let mut s = EpollSet::new();
        let gone = Readiness::new(true, true, true, true, true);
        let st = HashMap::from([(9, gone)]);
        s.add(9, EPOLLOUT, 9, NONE).unwrap();
        s.notify(9, gone);
        let ev = wait_all(&mut s, &st);
        assert_eq!(
            ev[0].events,
            EPOLLOUT | EPOLLERR | EPOLLHUP,
            "RDHUP only when asked"
        );
        s.modify(9, EPOLLIN | EPOLLRDHUP, 9, gone).unwrap();
        let ev = wait_all(&mut s, &st);
        assert_eq!(ev[0].events, EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP);
    }

    #[test]
    fn ctl_errors_match_linux() {
        let mut s = EpollSet::new();
        s.add(1, EPOLLIN, 0, NONE).unwrap();
        assert_eq!(s.add(1, EPOLLIN, 0, NONE), Err(CtlError::Exists));
        assert_eq!(s.modify(2, EPOLLIN, 0, NONE), Err(CtlError::NotFound));
        assert_eq!(s.delete(2), Err(CtlError::NotFound));
        assert_eq!(
            s.modify(1, EPOLLIN | EPOLLEXCLUSIVE, 0, NONE),
            Err(CtlError::Invalid)
        );
        assert_eq!(CtlError::Exists.errno(), libc::EEXIST);
        s.delete(1).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn deleted_entries_are_not_reported() {
        let mut s = EpollSet::new();
        let st = HashMap::from([(4, R)]);
        s.add(4, EPOLLIN, 0, R).unwrap();
        s.delete(4).unwrap();
        assert!(wait_all(&mut s, &st).is_empty());
        // Re-added with other data: the new data comes back.
        s.add(4, EPOLLIN, 44, R).unwrap();
        assert_eq!(
            wait_all(&mut s, &st),
            vec![EpollEvent {
                events: EPOLLIN,
                data: 44
            }]
        );
    }

    #[test]
    fn maxevents_round_robin_starves_nobody() {
        let mut s = EpollSet::new();
        let st: HashMap<i32, Readiness> = (0..10).map(|k| (k, RW)).collect();
        for k in 0..10 {
            s.add(k, EPOLLIN | EPOLLOUT, k as u64, RW).unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for _ in 0..5 {
            assert_eq!(s.wait(&mut out, 2, |k| st.get(&k).copied()), 2);
            for e in &out {
                seen.insert(e.data);
            }
        }
        assert_eq!(
            seen.len(),
            10,
            "every ready entry reported within 5 waits of 2"
        );
    }

    #[test]
    fn write_readiness_and_condition_changes() {
        let mut s = EpollSet::new();
        let mut st = HashMap::from([(2, W)]);
        s.add(2, EPOLLOUT, 2, W).unwrap();
        assert_eq!(wait_all(&mut s, &st)[0].events, EPOLLOUT);
        // Interest changed to input only: writable no longer reported.
        s.modify(2, EPOLLIN, 2, W).unwrap();
        assert!(wait_all(&mut s, &st).is_empty());
        st.insert(2, RW);
        s.notify(2, RW);
        assert_eq!(wait_all(&mut s, &st)[0].events, EPOLLIN);
    }

    /// DEL (or close, and the next accept reusing the fd number) then ADD of the same key: the
    /// old entry's place in the ready list is not the new one's, which is reported once per
    /// wait (it was twice, in every wait while it stayed ready: Linux never reports one fd
    /// twice in a call, and an application freeing its `data` object on the first report
    /// would use it after free on the second).
    #[test]
    fn a_readded_fd_is_reported_once_per_wait() {
        let mut s = EpollSet::new();
        let mut out = Vec::new();
        s.add(5, EPOLLIN, 1, R).unwrap();
        assert_eq!(s.wait(&mut out, 64, |_| Some(R)), 1);
        s.delete(5).unwrap();
        s.add(5, EPOLLIN, 2, R).unwrap(); // ready at ADD
        s.wait(&mut out, 64, |_| Some(R));
        assert_eq!(
            out,
            [EpollEvent {
                events: EPOLLIN,
                data: 2
            }]
        );

        s.delete(5).unwrap();
        s.add(5, EPOLLIN, 3, NONE).unwrap(); // not ready at ADD; data comes before the wait
        s.notify(5, R);
        for round in 0..3 {
            s.wait(&mut out, 64, |_| Some(R));
            assert_eq!(
                out,
                [EpollEvent {
                    events: EPOLLIN,
                    data: 3
                }],
                "round {round}"
            );
        }
    }

    /// A paired entry (its socket reported by another set too) is named by the waits that
    /// reported it, by data, until it is deleted.
    #[test]
    fn paired_entries_reported_by_a_wait_are_named_by_their_data() {
        let mut s = EpollSet::new();
        let state: HashMap<i32, Readiness> = [(3, R), (4, R), (5, NONE)].into();
        for k in [3, 4, 5] {
            s.add(k, EPOLLIN, 100 + k as u64, state[&k]).unwrap();
        }
        s.pair(4);
        s.pair(5);
        s.pair(9); // not in the set: nothing
        s.pair(4); // once
        assert!(s.has_paired());
        assert_eq!(wait_all(&mut s, &state).len(), 2);
        let call = s.last_wait();
        assert_eq!(s.paired_reported(call).collect::<Vec<_>>(), [(4, 104)]);
        // The next wait's report is its own.
        let mut out = Vec::new();
        s.wait(&mut out, 1, |k| state.get(&k).copied());
        let call = s.last_wait();
        let by_it: Vec<(i32, u64)> = s.paired_reported(call).collect();
        assert_eq!(by_it == [(4, 104)], out[0].data == 104, "{out:?} {by_it:?}");
        s.delete(4).unwrap();
        s.delete(5).unwrap();
        assert!(!s.has_paired());
        s.add(4, EPOLLIN, 7, R).unwrap();
        assert!(!s.has_paired(), "a new entry of the key is not paired");
    }
}
