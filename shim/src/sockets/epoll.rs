//! epoll instances that watch our fds: epoll_ctl, and one pass of epoll_wait over our fds.

use libc::c_int;
use userstack::link::Link;

use super::{Answer, Entry, Host, Obj, Sockets};

/// What an epoll_ctl of ours leaves to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctl {
    /// The fd is a dual listener: the same call must go to the kernel's epoll too, for the
    /// listener's kernel side.
    pub kernel_side: bool,
    /// The call made the epoll instance ours (it held none of our fds before).
    pub created: bool,
}

impl<L: Link, H: Host<L>> Sockets<'_, L, H> {
    /// epoll_ctl when `fd` is ours (`event`: the caller's events and data, `None` if it
    /// passed none). `None`: `fd` is a kernel fd, for the kernel's set alone. The epoll
    /// instance becomes ours the first time one of our fds joins it.
    pub fn epoll_ctl(
        &mut self,
        epfd: c_int,
        op: c_int,
        fd: c_int,
        event: Option<(u32, u64)>,
    ) -> Answer<Ctl> {
        let kernel_side = match self.obj(fd) {
            Some(Obj::Listener { kernel, .. }) => *kernel,
            Some(Obj::Conn { .. }) => false,
            Some(Obj::Epoll { .. }) if op == libc::EPOLL_CTL_ADD => {
                self.nest(epfd, fd);
                return None;
            }
            _ => return None,
        };
        let created = self.obj(epfd).is_none();
        if created {
            // Linux's order: the event (copied first), the epoll fd, the operation, then
            // whether the fd is in the set (ours never is in a kernel one).
            if op != libc::EPOLL_CTL_DEL && event.is_none() {
                return Some(Err(libc::EFAULT));
            }
            if let Err(e) = self.host.check_epoll(epfd) {
                return Some(Err(e));
            }
            let exclusive = event.is_some_and(|(ev, _)| ev & libc::EPOLLEXCLUSIVE as u32 != 0);
            if op == libc::EPOLL_CTL_MOD && exclusive {
                return Some(Err(libc::EINVAL));
            }
            if op == libc::EPOLL_CTL_MOD || op == libc::EPOLL_CTL_DEL {
                return Some(Err(libc::ENOENT));
            }
            if op != libc::EPOLL_CTL_ADD {
                return Some(Err(libc::EINVAL));
            }
            let set = self.new_epoll();
            if let Err(e) = self.insert(epfd, set) {
                return Some(Err(e));
            }
        }
        let (events, data) = event.unwrap_or((0, 0));
        if op != libc::EPOLL_CTL_DEL && event.is_none() {
            return Some(Err(libc::EFAULT));
        }
        let now = self.readiness(fd).unwrap_or_default();
        let is_listener = matches!(self.obj_ref(fd), Some(Obj::Listener { .. }));
        let Some(Obj::Epoll { set, listens, .. }) = self.obj(epfd) else {
            return Some(Err(libc::EINVAL));
        };
        *listens |= is_listener && op == libc::EPOLL_CTL_ADD;
        let r = match op {
            libc::EPOLL_CTL_ADD => set.add(fd, events, data, now),
            libc::EPOLL_CTL_MOD => set.modify(fd, events, data, now),
            libc::EPOLL_CTL_DEL => set.delete(fd),
            _ => return Some(Err(libc::EINVAL)),
        };
        if let Err(e) = r {
            return Some(Err(e.errno()));
        }
        if kernel_side && op == libc::EPOLL_CTL_ADD {
            // Reported by the kernel's set too, for its kernel side: a wait folds the two.
            set.pair(fd);
        }
        // An fd added (or re-armed) while ready: a thread blocked on this set must look, as
        // Linux wakes it (an acceptor thread handing connections to workers' sets, a worker
        // re-arming an EPOLLONESHOT entry).
        if set.maybe_ready() {
            if let Some(i) = self.index_of(epfd) {
                self.touched.push(i);
            }
            self.wake_touched();
            if !self.nested.is_empty() {
                self.ring_nested();
            }
        }
        match op {
            libc::EPOLL_CTL_ADD => self.watchers.push(fd, epfd),
            libc::EPOLL_CTL_DEL => {
                if let Some(v) = self.watchers.get_mut(&fd) {
                    v.retain(|&e| e != epfd);
                }
            }
            _ => {}
        }
        Some(Ok(Ctl {
            kernel_side,
            created,
        }))
    }

    /// Whether `epfd` is an epoll instance of ours.
    pub fn is_epoll(&mut self, epfd: c_int) -> bool {
        matches!(self.obj(epfd), Some(Obj::Epoll { .. }))
    }

    /// One pass of epoll_wait over our fds in `epfd`'s set: polls the stack, then writes up
    /// to `room` ready entries (at most `out.len()`) to `out`. `None`: `epfd` is not an epoll
    /// of ours.
    ///
    /// `answering`: the application waits between two iterations of its event loop (an
    /// epoll_wait with a timeout other than zero), and the data-path cache may answer requests
    /// in this poll (see `cache`). `poll`: false to report what the last poll left without
    /// polling again (its events are delivered: `Sockets::deliver`).
    pub fn epoll_pass(
        &mut self,
        epfd: c_int,
        room: usize,
        out: &mut [std::mem::MaybeUninit<libc::epoll_event>],
        answering: bool,
        poll: bool,
    ) -> Option<Pass> {
        // (The set's entry, found once: nothing in the pass closes an fd.)
        let i = self.index_of(epfd)? as usize;
        let listens = match self.objs.get(i) {
            Some(Some(Entry {
                obj: Obj::Epoll { listens, .. },
                ..
            })) => *listens,
            _ => return None,
        };
        // The event loop of the served listeners: the cache counts its iterations, and answers
        // only there (another thread's epoll, a module's, waits while that loop may be
        // executing a command).
        let served = self.cache.is_some() && listens;
        if served {
            self.cache_loop_turn();
        }
        let answering = answering && served;
        if answering {
            self.cache_upkeep();
        }
        // The poll's events and the cache's settling reach the set from here to its wait, and
        // nothing else changes its sockets in between: the wait takes their readiness as told.
        if let Some(Some(Entry {
            obj: Obj::Epoll { set, .. },
            ..
        })) = self.objs.get_mut(i)
        {
            set.start_pass();
        }
        let work = if poll {
            self.pump_with(answering.then_some(epfd))
        } else {
            self.deliver(false)
        };
        let received = poll && self.stack.as_ref().is_some_and(|st| st.received());
        if answering {
            // Every connection with requests is queued in the set now, also those whose data
            // came in polls the cache could not answer in (the application's own reads poll
            // the stack): the cache answers what it can before the set reports them.
            self.cache_answer_queued(epfd);
        }
        if !self.nested.is_empty() {
            self.check_nested();
        }
        let mut ready = std::mem::take(&mut self.scratch);
        // The set is taken out of its slot while it reads the other objects' readiness.
        let mut set = match self.objs.get_mut(i) {
            Some(Some(Entry {
                obj: Obj::Epoll { set, .. },
                ..
            })) => std::mem::take(set),
            _ => return None,
        };
        set.wait(&mut ready, room, |fd| self.readiness(fd));
        let (call, paired) = (set.last_wait(), set.has_paired());
        let mut unring = -1;
        if let Some(Some(Entry {
            obj:
                Obj::Epoll {
                    set: slot,
                    bell,
                    rung,
                    ..
                },
            ..
        })) = self.objs.get_mut(i)
        {
            *slot = set;
            // A nested set drained: the outer set stops reporting it.
            if *rung && !slot.maybe_ready() {
                *rung = false;
                unring = *bell;
            }
        }
        if unring >= 0 {
            self.host.ring(unring, false);
        }
        let n = write_events(out, &ready);
        self.scratch = ready;
        if answering {
            if n == 0 {
                self.cache_idle();
            }
            self.cache_publish(n == 0);
        }
        Some(Pass {
            work,
            received,
            n,
            call,
            paired,
            nested: !self.nested.is_empty(),
        })
    }

    /// One epoll_wait's events: ours at `out[..ours]` and `out[more..]`, the kernel's set's
    /// at `out[ours..more]`. A dual listener's two sides, each ready, are one socket to the
    /// application, reported once as on Linux: the kernel's event for it (the same data as
    /// ours, from the pair `epoll_ctl` made, while its kernel side is readable: not another
    /// fd's event with the same data) joins ours. Returns how many events are left (the
    /// kernel's after the fold close the gap).
    pub fn epoll_fold_paired(
        &mut self,
        epfd: c_int,
        call: u32,
        out: &mut [libc::epoll_event],
        ours: usize,
        more: usize,
    ) -> usize {
        let Some(Obj::Epoll { set, .. }) = self.obj_ref(epfd) else {
            return out.len();
        };
        let pairs: Vec<(c_int, u64)> = set.paired_reported(call).collect();
        let mut len = out.len();
        let mut kernel_end = more;
        for (fd, data) in pairs {
            let is_ours = |i: &usize| *i < ours || *i >= kernel_end;
            if !(ours..kernel_end).any(|i| out[i].u64 == data) || !self.host.kernel_readable(fd) {
                continue;
            }
            let Some(mine) = (0..len).filter(is_ours).find(|&i| out[i].u64 == data) else {
                continue;
            };
            let Some(k) = (ours..kernel_end).find(|&i| out[i].u64 == data) else {
                continue;
            };
            out[mine].events |= out[k].events;
            out.copy_within(k + 1..len, k);
            len -= 1;
            kernel_end -= 1;
        }
        len
    }

    /// More of `epfd`'s ready entries, after a pass that filled the room it had (the kernel's
    /// fds left room over): up to `out.len()`, without polling the stack again. How many.
    pub fn epoll_more(
        &mut self,
        epfd: c_int,
        call: u32,
        out: &mut [std::mem::MaybeUninit<libc::epoll_event>],
    ) -> usize {
        let mut ready = std::mem::take(&mut self.scratch);
        let mut set = match self.obj(epfd) {
            Some(Obj::Epoll { set, .. }) => std::mem::take(set),
            _ => return 0,
        };
        set.wait_more(call, &mut ready, out.len(), |fd| self.readiness(fd));
        if let Some(Obj::Epoll { set: slot, .. }) = self.obj(epfd) {
            *slot = set;
        }
        let n = write_events(out, &ready);
        self.scratch = ready;
        n
    }

    /// The rung bells of nested sets, checked against their sets' readiness now (the outer
    /// set's wait is about to read them): a set whose entries are no longer ready (read by the
    /// application since) stops making the outer one readable.
    fn check_nested(&mut self) {
        for k in 0..self.nested.len() {
            let ep = self.nested[k];
            let mut set = match self.obj(ep) {
                Some(Obj::Epoll {
                    set, rung: true, ..
                }) => std::mem::take(set),
                _ => continue,
            };
            let ready = set.ready_now(|fd| self.readiness(fd));
            let mut unring = -1;
            if let Some(Obj::Epoll {
                set: slot,
                bell,
                rung,
                ..
            }) = self.obj(ep)
            {
                *slot = set;
                if !ready {
                    *rung = false;
                    unring = *bell;
                }
            }
            if unring >= 0 {
                self.host.ring(unring, false);
            }
        }
    }

    /// Our epoll set `inner` joins epoll set `outer` (the kernel adds it there): `inner` gets a
    /// bell, rung while it has ready entries, so that `outer` reports it as Linux does; and
    /// `outer` becomes ours (if it is not), so that its waits poll the stack.
    fn nest(&mut self, outer: c_int, inner: c_int) {
        let has_bell = matches!(self.obj(inner), Some(Obj::Epoll { bell, .. }) if *bell >= 0);
        if !has_bell {
            let b = self.host.bell(inner);
            if b >= 0 {
                if let Some(Obj::Epoll { bell, .. }) = self.obj(inner) {
                    *bell = b;
                }
                self.nested.push(inner);
                self.ring_nested();
            }
        }
        if self.obj(outer).is_none() && self.host.check_epoll(outer).is_ok() {
            let set = self.new_epoll();
            let _ = self.insert(outer, set);
        }
    }
}

/// What one [`Sockets::epoll_pass`] did.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// The stack's poll found work.
    pub work: bool,
    /// The pass polled and received frames.
    pub received: bool,
    /// Events written.
    pub n: usize,
    /// The set's wait that wrote them ([`Sockets::epoll_more`] continues it).
    pub call: u32,
    /// The set has paired entries: dual listeners the kernel's set reports too
    /// ([`Sockets::epoll_fold_paired`]).
    pub paired: bool,
    /// Some epoll set of ours is in another set: its events reach that one's kernel instance
    /// only (its bell), so a wait there must look at the kernel's fds.
    pub nested: bool,
}

/// The set's events into the caller's array, as many as fit. How many.
#[inline]
fn write_events(
    out: &mut [std::mem::MaybeUninit<libc::epoll_event>],
    ready: &[userstack::epoll::EpollEvent],
) -> usize {
    let mut n = 0;
    for (slot, e) in out.iter_mut().zip(ready) {
        slot.write(libc::epoll_event {
            events: e.events,
            u64: e.data,
        });
        n += 1;
    }
    n
}
