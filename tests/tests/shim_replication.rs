//! Redis replication with no kernel TCP on either side: a replica under the shim syncs from a
//! master under the shim, each redis-server in a namespace of its own with a stack on its end
//! of a veth pair (the replica's connect() to the master goes through its stack). Kernel
//! clients in the other namespace check both: every key's value (DEBUG DIGEST) the same on
//! both after the full sync, after the stream of writes that follows, and after the link is cut
//! and the replica resumes with a partial resync; when the master exits, the replica's link is
//! down at once.

use std::process::Output;
use std::time::{Duration, Instant};

use mtcp_tests::redis::{redis_in, TempDir};
use mtcp_tests::{Netns, ServerProcess, Subnet, VethPair};

/// Keys and value size of the data set the full sync carries (`MTCP_TEST_SYNC_MB` sets its
/// size in MB; 1,024 by default).
fn data_set() -> (u64, u64) {
    let mb: u64 = std::env::var("MTCP_TEST_SYNC_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = 1024;
    (mb * 1024, size)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One Redis server and the namespace its kernel clients run in.
struct Node<'a> {
    name: &'static str,
    server: ServerProcess,
    /// Its stack's address and port.
    addr: String,
    port: String,
    /// A namespace whose kernel reaches that address over the veth.
    clients: &'a Netns,
}

impl Node<'_> {
    fn cli(&mut self, args: &[&str]) -> String {
        let out = self
            .clients
            .exec(
                "redis-cli",
                ["-h", self.addr.as_str(), "-p", self.port.as_str()]
                    .into_iter()
                    .chain(args.iter().copied()),
            )
            .expect("redis-cli runs");
        let t = text(&out);
        assert!(
            out.status.success() && !t.starts_with("ERR") && !t.contains("Could not connect"),
            "{}: redis-cli {args:?}: {t}\n{}",
            self.name,
            self.server.diagnostics()
        );
        t.trim().to_string()
    }

    /// A field of INFO `section`.
    fn info(&mut self, section: &str, field: &str) -> String {
        let info = self.cli(&["INFO", section]);
        info.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{}: no {field} in {info}", self.name))
    }

    fn info_n(&mut self, section: &str, field: &str) -> u64 {
        let v = self.info(section, field);
        v.parse()
            .unwrap_or_else(|_| panic!("{}: {field}:{v} is not a number", self.name))
    }
}

/// Waits until the replica's link to the master is up and synced, `limit` at most.
fn wait_synced(replica: &mut Node, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let info = replica.cli(&["INFO", "replication"]);
        if info.contains("master_link_status:up") && info.contains("master_sync_in_progress:0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not sync within {limit:?}:\n{info}\n{}",
            replica.server.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The master's writes so far have reached the replica (WAIT: the replica acknowledged the
/// master's replication offset).
fn wait_replicated(master: &mut Node) {
    let acked = master.cli(&["WAIT", "1", "60000"]);
    assert_eq!(
        acked, "1",
        "the replica did not acknowledge the master's writes"
    );
}

/// Both hold the same keys with the same values. (DEBUG DIGEST reads every value: seconds
/// for a gigabyte, so both run at once.)
fn same_data(master: &mut Node, replica: &mut Node, when: &str) {
    let (m, r) = std::thread::scope(|s| {
        let m = s.spawn(|| master.cli(&["DEBUG", "DIGEST"]));
        let r = replica.cli(&["DEBUG", "DIGEST"]);
        (m.join().expect("DEBUG DIGEST on the master"), r)
    });
    let (mk, rk) = (master.cli(&["DBSIZE"]), replica.cli(&["DBSIZE"]));
    assert_eq!(
        (&r, &rk),
        (&m, &mk),
        "{when}: the replica's data differs from the master's"
    );
}

/// `n` writes to the master from a kernel client (SETs over the keys of the data set, and
/// INCRs of one counter: the replica must apply them in order).
fn write_stream(master: &mut Node, n: u64) {
    let out = master
        .clients
        .exec(
            "redis-benchmark",
            [
                "-h",
                master.addr.as_str(),
                "-p",
                master.port.as_str(),
                "-n",
                &n.to_string(),
                "-c",
                "20",
                "-r",
                "1000000",
                "-d",
                "100",
                "-t",
                "set,incr",
                "-q",
            ],
        )
        .expect("redis-benchmark runs");
    let t = text(&out);
    assert!(
        out.status.success() && !t.contains("rror"),
        "writes to the master: {t}\n{}",
        master.server.diagnostics()
    );
}

/// A replica under the shim syncs from a master under the shim: a full sync of the data set
/// (1 GB by default), the writes that follow, and after the link is cut (the replica's side of
/// it killed, then the master's) a partial resync (PSYNC) each time, with no second full sync.
#[test]
fn a_replica_under_the_shim_syncs_from_a_master_under_the_shim() {
    let subnet = Subnet::allocate().expect("subnet");
    let (ns_m, ns_r) = (Netns::new().expect("netns"), Netns::new().expect("netns"));
    let veth = VethPair::between(&ns_m, &subnet.cidr(101), &ns_r, &subnet.cidr(102)).expect("veth");
    let port = 19000 + subnet.index();
    let p = port.to_string();
    let (dir_m, dir_r) = (TempDir::new("master"), TempDir::new("replica"));
    let opts = |dir: &TempDir| -> Vec<String> {
        [
            "--enable-debug-command",
            "yes",
            "--repl-diskless-sync",
            "yes",
            "--repl-diskless-sync-delay",
            "0",
            // The replica loads the master's stream straight from the socket.
            "--repl-diskless-load",
            "on-empty-db",
            "--repl-backlog-size",
            "64mb",
            "--dir",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().display().to_string()])
        .collect()
    };
    let (args_m, args_r) = (opts(&dir_m), opts(&dir_r));

    let any = std::net::Ipv4Addr::UNSPECIFIED;
    let master_stack = subnet.cidr(2);
    let replica_stack = subnet.cidr(3);
    // Each one's kernel clients run in the other's namespace: its stack owns its address on
    // its own end of the veth, which the kernel of that namespace does not reach.
    let mut master = Node {
        name: "master",
        server: redis_in(
            &ns_m,
            any,
            port,
            &strs(&args_m),
            Some((veth.root_if(), &master_stack)),
        ),
        addr: subnet.addr(2).to_string(),
        port: p.clone(),
        clients: &ns_r,
    };
    let mut replica = Node {
        name: "replica",
        server: redis_in(
            &ns_r,
            any,
            port,
            &strs(&args_r),
            Some((veth.ns_if(), &replica_stack)),
        ),
        addr: subnet.addr(3).to_string(),
        port: p.clone(),
        clients: &ns_m,
    };

    let (keys, size) = data_set();
    let started = Instant::now();
    assert_eq!(
        master.cli(&[
            "DEBUG",
            "POPULATE",
            &keys.to_string(),
            "key",
            &size.to_string()
        ]),
        "OK"
    );
    let populated = started.elapsed();
    let m_addr = master.addr.clone();
    assert_eq!(replica.cli(&["REPLICAOF", &m_addr, &p]), "OK");
    let sync_start = Instant::now();
    wait_synced(&mut replica, Duration::from_secs(300));
    eprintln!(
        "full sync of {keys} keys of {size} bytes: {:.1} s (populated in {:.1} s)",
        sync_start.elapsed().as_secs_f64(),
        populated.as_secs_f64()
    );
    assert_eq!(master.info_n("stats", "sync_full"), 1);
    // The stream after it.
    write_stream(&mut master, 200_000);
    wait_replicated(&mut master);
    same_data(
        &mut master,
        &mut replica,
        "after the full sync and the writes that followed",
    );

    // The link cut from either side, with writes while it is down: the replica resumes from
    // the master's backlog.
    for (cut, kill) in [("replica", "MASTER"), ("master", "REPLICA")] {
        let target = if cut == "replica" {
            &mut replica
        } else {
            &mut master
        };
        let killed: u64 = target
            .cli(&["CLIENT", "KILL", "TYPE", kill])
            .parse()
            .expect("a count");
        assert_eq!(killed, 1, "{cut}: CLIENT KILL TYPE {kill}");
        write_stream(&mut master, 20_000);
        wait_synced(&mut replica, Duration::from_secs(60));
        wait_replicated(&mut master);
    }
    same_data(
        &mut master,
        &mut replica,
        "after the link was cut on either side",
    );
    assert_eq!(
        master.info_n("stats", "sync_full"),
        1,
        "the replica synced in full again"
    );
    assert_eq!(master.info_n("stats", "sync_partial_ok"), 2);
    // No kernel TCP on either side: the replica's connection comes from its stack's address
    // (its namespace's kernel has another one), to the master's stack's.
    let slave = master.info("replication", "slave0");
    assert!(
        slave.starts_with(&format!("ip={},", subnet.addr(3))),
        "the master sees its replica as {slave}"
    );

    // The master exits: its stack closes the replica's connection as the kernel would, and the
    // replica sees its link down at once (not after repl-timeout, 60 s).
    let Node { server, .. } = master;
    let status = server.stop().expect("the master stops");
    assert!(status.success(), "the master exited with {status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while replica.info("replication", "master_link_status") != "down" {
        assert!(
            Instant::now() < deadline,
            "the replica still sees its master 10 s after it exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
