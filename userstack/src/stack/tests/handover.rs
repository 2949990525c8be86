//! Connections a listener held, never accepted, when its process stopped listening among
//! processes sharing the device (stack/handover.rs): they go on in the process that still
//! listens, or are reset if nobody takes them.

use std::sync::{Arc, Mutex};

use smoltcp::socket::tcp::State;
use smoltcp::time::Duration;

use super::{opts, stack_on, Pair};
use crate::link::MemLink;
use crate::stack::{SockError, Stack};
use crate::steer::{FlowRegistry, Handed, Steering};
use crate::tcp::Carry;

struct Offer {
    giver: u32,
    key: u64,
    carry: Carry,
    data: Vec<u8>,
    claimed: bool,
    taken: bool,
}

/// What the processes of a group share, in memory (the shim's is shared memory).
#[derive(Default)]
struct Group {
    flows: Vec<(u64, u32)>,
    offers: Vec<Offer>,
    /// Every registration's change, in order: opened (true) or closed, key, process.
    log: Vec<(bool, u64, u32)>,
}

struct Member {
    group: Arc<Mutex<Group>>,
    me: u32,
}

impl FlowRegistry for Member {
    fn opened(&mut self, key: u64) {
        let mut g = self.group.lock().unwrap();
        g.flows.push((key, self.me));
        g.log.push((true, key, self.me));
    }
    fn closed(&mut self, key: u64) {
        let me = self.me;
        let mut g = self.group.lock().unwrap();
        if let Some(i) = g.flows.iter().position(|&f| f == (key, me)) {
            g.flows.remove(i);
        }
        g.log.push((false, key, me));
    }
    fn elsewhere(&mut self, key: u64) -> bool {
        let me = self.me;
        self.group
            .lock()
            .unwrap()
            .flows
            .iter()
            .any(|&(k, p)| k == key && p != me)
    }
    fn hand_over(&mut self, key: u64, carry: &Carry, data: (&[u8], &[u8])) -> bool {
        self.group.lock().unwrap().offers.push(Offer {
            giver: self.me,
            key,
            carry: *carry,
            data: [data.0, data.1].concat(),
            claimed: false,
            taken: false,
        });
        true
    }
    fn handed(&mut self, key: u64, withdraw: bool) -> Handed {
        let mut g = self.group.lock().unwrap();
        let Some(i) = g
            .offers
            .iter()
            .position(|o| o.giver == self.me && o.key == key)
        else {
            return Handed::Back;
        };
        if g.offers[i].taken {
            g.offers.remove(i);
            Handed::Taken
        } else if withdraw && !g.offers[i].claimed {
            g.offers.remove(i);
            Handed::Back
        } else {
            Handed::Waiting
        }
    }
    fn take_offer(
        &mut self,
        wants: &mut dyn FnMut(u64, usize) -> bool,
        data: &mut Vec<u8>,
    ) -> Option<(u64, Carry)> {
        let mut g = self.group.lock().unwrap();
        let o = g
            .offers
            .iter_mut()
            .find(|o| o.giver != self.me && !o.taken && !o.claimed && wants(o.key, o.data.len()))?;
        o.claimed = true;
        data.clone_from(&o.data);
        Some((o.key, o.carry))
    }
    fn took(&mut self, key: u64, taken: bool) {
        let mut g = self.group.lock().unwrap();
        let me = self.me;
        // Registered before the offer shows taken.
        assert!(!taken || g.flows.contains(&(key, me)));
        if let Some(o) = g.offers.iter_mut().find(|o| o.key == key && o.claimed) {
            o.claimed = false;
            o.taken = taken;
        }
    }
}

/// A client, the process that held its connections (`p.server`) and the one that takes them
/// (`other`, a second stack on the same device and address, whose clock reads `SKEW` less:
/// each process's clock starts with the process).
struct Three {
    p: Pair,
    other: Stack<MemLink>,
    /// The TCP timestamps of the segments the client received, in order, with the client's
    /// port.
    ts_seen: Vec<(u16, u32)>,
}

const SKEW: Duration = Duration::from_secs(30);

/// The destination port and timestamp value of a TCP segment in an Ethernet frame, if it has
/// a timestamp.
fn ts_val(f: &[u8]) -> Option<(u16, u32)> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return None;
    }
    let t = 14 + usize::from(f[14] & 0x0f) * 4;
    let end = t + usize::from(f.get(t + 12)? >> 4) * 4;
    let mut i = t + 20;
    while i < end.min(f.len()) {
        match f[i] {
            0 => return None,
            1 => i += 1,
            8 => {
                let port = u16::from_be_bytes([f[t + 2], f[t + 3]]);
                let ts = u32::from_be_bytes(f.get(i + 2..i + 6)?.try_into().ok()?);
                return Some((port, ts));
            }
            _ => i += usize::from(*f.get(i + 1)?).max(2),
        }
    }
    None
}

impl Three {
    fn new(group: &Arc<Mutex<Group>>) -> Three {
        let mut p = Pair::new();
        p.now += SKEW;
        let mut other = stack_on(p.server.link().twin(), "198.18.0.2/24", p.now - SKEW);
        for (s, me) in [(&mut p.server, 1), (&mut other, 2)] {
            s.set_flow_registry(Box::new(Member {
                group: group.clone(),
                me,
            }));
            s.listen(6379, 16, opts()).unwrap();
        }
        other.set_steering(Steering { syn: 0, rst: 0 }, p.now - SKEW);
        Three {
            p,
            other,
            ts_seen: Vec::new(),
        }
    }

    /// Polls the client, noting the timestamps of what it receives.
    fn poll_client(&mut self) {
        let frames = self.p.client.link().waiting();
        self.ts_seen.extend(frames.iter().filter_map(|f| ts_val(f)));
        self.p.client.poll(self.p.now);
    }

    /// The client and the first process, until neither has work.
    fn settle(&mut self) {
        for _ in 0..1000 {
            self.p.now += Duration::from_micros(10);
            self.poll_client();
            self.p.server.poll(self.p.now);
            if self.p.server.link().pending() == 0 && self.p.client.link().pending() == 0 {
                return;
            }
        }
        panic!("never settled");
    }

    /// A connection established, its request (`GET a`) received and acknowledged, never
    /// accepted: the client's end.
    fn held(&mut self) -> crate::stack::ConnId {
        let (now, to) = (self.p.now, self.p.server_addr(6379));
        let a = self.p.client.connect(now, to, opts()).unwrap();
        self.settle();
        self.p.client.send(a, b"GET a\r\n").unwrap();
        self.settle();
        a
    }

    /// The flows are the other process's from now on: the client's frames reach only it.
    fn move_flows(&mut self) {
        let now = self.p.now;
        self.p.server.set_steering(Steering { syn: 0, rst: 0 }, now);
        self.other.set_steering(Steering::ALONE, now - SKEW);
    }

    /// Runs all three for `ms` milliseconds, each process settling handovers every 10 ms (its
    /// rounds); the client's frames go to the other process.
    fn run(&mut self, ms: u64) {
        for i in 0..ms {
            self.p.now += Duration::from_millis(1);
            let now = self.p.now;
            self.poll_client();
            for f in self.p.server.link().take_waiting() {
                self.other.link().inject(f);
            }
            if i % 10 == 0 {
                self.p.server.settle_handovers(now);
                self.other.settle_handovers(now - SKEW);
            }
            self.other.poll(now - SKEW);
            self.p.server.poll(now);
        }
    }
}

#[test]
fn connections_a_closed_listener_held_go_on_in_a_process_that_still_listens() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    let a = t.held();
    let p = &mut t.p;
    // One in SYN-RECEIVED: the client's ACK of the SYN-ACK is lost.
    let b = p
        .client
        .connect(p.now, p.server_addr(6379), opts())
        .unwrap();
    p.now += Duration::from_micros(10);
    p.client.poll(p.now);
    p.server.poll(p.now);
    t.poll_client();
    let p = &mut t.p;
    assert_eq!(p.server.link().discard(), 1, "the ACK lost");
    assert_eq!(p.server.accept_queue_len(6379), 1);
    assert_eq!(p.client.state(b).unwrap(), State::Established);

    // The process stops listening: nothing is said to the client.
    p.server.unlisten(p.now, 6379);
    p.server.poll(p.now);
    assert_eq!(p.client.link().pending(), 0, "a word to the client");
    assert_eq!(p.server.stats().conns_handed_over, 2);
    t.move_flows();
    t.run(100);
    assert_eq!(t.other.stats().conns_taken_over, 2);
    assert_eq!(t.p.server.handovers_pending(), 0, "both taken");
    assert!(
        group.lock().unwrap().flows.iter().all(|&(_, pid)| pid == 2),
        "the connections are the other process's"
    );

    // Both are accepted there, the request read as sent, the replies reach the client.
    let mut got = Vec::new();
    while let Ok((id, _)) = t.other.accept(6379) {
        got.push(id);
    }
    assert_eq!(got.len(), 2);
    t.p.client.send(b, b"GET b\r\n").unwrap();
    t.run(50);
    let mut asked = Vec::new();
    for &id in &got {
        let mut buf = [0u8; 64];
        let n = t.other.recv(id, &mut buf).unwrap();
        asked.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        t.other.send(id, &buf[..n]).unwrap();
    }
    asked.sort();
    assert_eq!(asked, ["GET a\r\n", "GET b\r\n"]);
    t.run(50);
    for c in [a, b] {
        let mut buf = [0u8; 64];
        let n = t.p.client.recv(c, &mut buf).unwrap();
        assert!(buf[..n].starts_with(b"GET "), "{:?}", &buf[..n]);
    }
    for st in [t.p.server.stats(), t.other.stats()] {
        assert_eq!(st.tcp_rst_sent, 0, "{st}");
    }
    // The taker's timestamps go on from the first process's, although its clock reads less: a
    // peer discards a segment whose timestamp goes back (PAWS, RFC 7323).
    assert!(t.ts_seen.len() > 6, "{:?}", t.ts_seen);
    for (i, &(port, ts)) in t.ts_seen.iter().enumerate() {
        let before = t.ts_seen[..i].iter().filter(|&&(p, _)| p == port);
        assert!(
            before.clone().all(|&(_, b)| ts.wrapping_sub(b) as i32 >= 0),
            "{:?}",
            t.ts_seen
        );
    }
}

/// A process whose application stopped accepting, still listening, gives its flows away and
/// offers what its listener holds: the process that took the flows accepts the connection,
/// its request intact; the first one's listener stays, empty.
#[test]
fn what_a_listener_holds_goes_on_where_the_flows_went_while_its_process_does_not_accept() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    let a = t.held();
    assert_eq!(t.p.server.accept_queue_len(6379), 1);
    t.move_flows();
    assert_eq!(t.p.server.hand_over_waiting(t.p.now), 1);
    assert_eq!(
        t.p.server.accept_queue_len(6379),
        0,
        "nothing left to accept"
    );
    t.run(100);
    assert_eq!(t.other.stats().conns_taken_over, 1);
    assert_eq!(t.p.server.handovers_pending(), 0, "taken");
    let (id, _) = t.other.accept(6379).expect("accepted where the flows went");
    let mut buf = [0u8; 64];
    let n = t.other.recv(id, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"GET a\r\n");
    t.other.send(id, b"+OK\r\n").unwrap();
    t.run(50);
    let n = t.p.client.recv(a, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    assert_eq!(
        t.p.server.accept(6379),
        Err(SockError::WouldBlock),
        "still listening"
    );
    assert_eq!(t.p.server.stats().handover_resets, 0);
}

/// A process whose application stopped accepting offered what its listener held, and its
/// flows came back (its application accepts again) before another process took the offer:
/// the connection goes back into its own accept queue, its request intact, nobody resets it.
#[test]
fn an_offer_nobody_took_goes_back_to_its_listener_when_its_flows_come_back() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    let a = t.held();
    t.move_flows();
    assert_eq!(t.p.server.hand_over_waiting(t.p.now), 1);
    assert_eq!(t.p.server.accept_queue_len(6379), 0);
    // The flows come back before the other process's round.
    let now = t.p.now;
    t.other
        .set_steering(Steering { syn: 0, rst: 0 }, now - SKEW);
    t.p.server.set_steering(Steering::ALONE, now);
    t.p.server.settle_handovers(now);
    assert_eq!(t.p.server.handovers_pending(), 0, "withdrawn");
    assert!(group.lock().unwrap().offers.is_empty());
    assert_eq!(t.p.server.accept_queue_len(6379), 1, "back in its queue");
    t.settle();
    let (id, _) = t.p.server.accept(6379).expect("accepted where it was");
    let mut buf = [0u8; 64];
    let n = t.p.server.recv(id, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"GET a\r\n");
    t.p.server.send(id, b"+OK\r\n").unwrap();
    t.settle();
    let n = t.p.client.recv(a, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
    assert_eq!(t.other.stats().conns_taken_over, 0);
    for st in [t.p.server.stats(), t.other.stats()] {
        assert_eq!((st.handover_resets, st.tcp_rst_sent), (0, 0), "{st}");
    }
    // Registered as the first process's all along: never a moment when another process
    // seeing the flow's frames would find it nobody's.
    let g = group.lock().unwrap();
    assert_eq!(
        g.flows.iter().filter(|f| f.1 == 1).count(),
        1,
        "{:?}",
        g.flows
    );
    let mut held = 0i32;
    for (i, &(open, _, pid)) in g.log.iter().enumerate() {
        if pid == 1 {
            held += if open { 1 } else { -1 };
            assert!(held > 0, "nobody's after change {i}: {:?}", g.log);
        }
    }
}

/// Only the connections of flows the stack no longer takes are offered, and an offer waits
/// for its taker while the stack still takes other flows' SYNs: of two connections in two
/// buckets, the one whose bucket stays is kept queued.
#[test]
fn only_what_a_listener_holds_of_flows_given_away_is_offered() {
    use crate::steer::flow_bucket;
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    let bucket = |t: &Three, c| {
        let from = t.p.client.local_addr(c).unwrap();
        flow_bucket(*from.ip(), from.port(), 6379)
    };
    let a = t.held();
    let mut b = t.held();
    for _ in 0..8 {
        if bucket(&t, b) != bucket(&t, a) {
            break;
        }
        b = t.held();
    }
    let (ka, kb) = (bucket(&t, a), bucket(&t, b));
    assert_ne!(ka, kb);
    let queued = t.p.server.accept_queue_len(6379);
    let now = t.p.now;
    t.p.server.set_steering(
        Steering {
            syn: 1 << ka,
            rst: 1 << ka,
        },
        now,
    );
    assert_eq!(t.p.server.hand_over_waiting(now), 1, "b's bucket only");
    assert_eq!(t.p.server.accept_queue_len(6379), queued - 1);
    t.p.server.settle_handovers(now);
    assert_eq!(
        t.p.server.handovers_pending(),
        1,
        "the offer waits for its taker"
    );
    assert_eq!(t.p.server.stats().handover_resets, 0);
}

#[test]
fn a_connection_nobody_takes_is_reset() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    let a = t.held();
    // The other process does not listen: nobody takes the offer.
    t.other.unlisten(t.p.now, 6379);
    t.p.server.unlisten(t.p.now, 6379);
    t.move_flows();
    t.run(1900);
    assert_eq!(t.p.client.state(a).unwrap(), State::Established);
    t.run(300);
    let st = t.p.server.stats();
    assert_eq!((st.conns_handed_over, st.handover_resets), (1, 1), "{st}");
    let mut buf = [0u8; 8];
    assert_eq!(t.p.client.recv(a, &mut buf), Err(SockError::Reset));
}

/// A process that still listens on another port keeps its share of the flows, so nobody else
/// sees the connection's segments: what its closed listener held is reset at its next round.
#[test]
fn a_process_that_still_listens_elsewhere_resets_what_its_closed_listener_held() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    t.p.server.listen(6380, 16, opts()).unwrap();
    let a = t.held();
    t.p.server.unlisten(t.p.now, 6379);
    t.p.server.settle_handovers(t.p.now);
    t.settle();
    let st = t.p.server.stats();
    assert_eq!((st.conns_handed_over, st.handover_resets), (1, 1), "{st}");
    assert!(group.lock().unwrap().offers.is_empty());
    let mut buf = [0u8; 8];
    assert_eq!(t.p.client.recv(a, &mut buf), Err(SockError::Reset));
}

/// A process closes its listeners one by one (nginx's workers, the shim at exit): what the
/// first one held is handed over too once the last is closed.
#[test]
fn listeners_closed_one_by_one_hand_over_what_each_held() {
    let group = Arc::new(Mutex::new(Group::default()));
    let mut t = Three::new(&group);
    t.p.server.listen(6380, 16, opts()).unwrap();
    let a = t.held();
    t.p.server.unlisten(t.p.now, 6379);
    t.p.server.unlisten(t.p.now, 6380);
    t.move_flows();
    t.run(100);
    assert_eq!(t.other.stats().conns_taken_over, 1);
    let (id, _) = t.other.accept(6379).expect("taken over");
    let mut buf = [0u8; 16];
    let n = t.other.recv(id, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"GET a\r\n");
    t.other.send(id, b"+OK\r\n").unwrap();
    t.run(50);
    let n = t.p.client.recv(a, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"+OK\r\n");
}
