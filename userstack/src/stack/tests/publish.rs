//! The statistics file's TCP state counts (stack/publish.rs).

use smoltcp::time::Duration;

use super::{opts, Pair};
use crate::link::MemLink;
use crate::stack::Stack;

/// The connection counts by TCP state that the statistics file shows are kept incrementally;
/// they must match the connections' real states through a whole life, on both sides.
#[test]
fn tcp_state_counts_follow_connections() {
    let count = |s: &Stack<MemLink>, name: &str| {
        s.tcp_states()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .unwrap()
    };
    let total = |s: &Stack<MemLink>| s.tcp_states().iter().map(|(_, v)| v).sum::<u64>();
    let mut p = Pair::new();
    p.server.listen(7777, 16, opts()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            p.client
                .connect(p.now, p.server_addr(7777), opts())
                .unwrap(),
        );
    }
    assert_eq!(count(&p.client, "syn_sent"), 3);
    p.run();
    assert_eq!(count(&p.client, "established"), 3);
    assert_eq!(count(&p.server, "established"), 3);
    // Not accepted yet: the listener's accept queue holds them.
    let l = p.server.listener_stats();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (
            l[0].port,
            l[0].backlog,
            l[0].accept_queue,
            l[0].syn_received
        ),
        (7777, 16, 3, 0)
    );
    let (s0, _) = p.server.accept(7777).unwrap();
    assert_eq!(p.server.listener_stats()[0].accept_queue, 2);

    // The client closes one: FIN-WAIT-2 / CLOSE-WAIT, then the server closes: TIME-WAIT.
    p.client.close(clients[0]).unwrap();
    p.run();
    assert_eq!(count(&p.client, "fin_wait_2"), 1);
    assert_eq!(count(&p.server, "close_wait"), 1);
    p.server.close(s0).unwrap();
    p.run();
    assert_eq!(count(&p.client, "time_wait"), 1);
    assert_eq!(count(&p.client, "established"), 2);
    // The client closed its end: its TIME-WAIT is a record, no longer a connection.
    assert_eq!(total(&p.client), p.client.connections() as u64 + 1);
    assert_eq!(total(&p.server), p.server.connections() as u64);
    // TIME-WAIT ends (60 s, as on Linux): it leaves the counts.
    p.advance(Duration::from_secs(61), Duration::from_millis(100));
    assert_eq!(count(&p.client, "time_wait"), 0);
    assert_eq!(total(&p.client), 2);
    assert_eq!(total(&p.server), 2);
}
