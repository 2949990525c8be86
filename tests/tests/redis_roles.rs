//! Redis's roles with no kernel TCP between the servers, every redis-server under the shim with
//! a stack of its own over net_af_packet, their connect()s to each other through their stacks:
//!
//! - replication: a replica syncs from a master, each in a namespace of its own on its end of a
//!   veth pair; kernel clients in the other namespace check both: every key's value (DEBUG
//!   DIGEST) the same on both after the full sync and the stream of writes that follows, and
//!   after the link is cut and the replica resumes with a partial resync; when the master
//!   exits, the replica's link is down at once;
//! - Cluster: three masters on a bridge (cluster bus and MIGRATE between their stacks), created
//!   with `redis-cli --cluster create` and resharded while a cluster client writes, every value
//!   read back as last written.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mtcp_tests::redis::{py_file, redis_in, start_redis, under_shim, wait_stack, TempDir};
use mtcp_tests::{Bridge, Netns, ServerProcess, Subnet, VethPair};

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

/// Three masters under the shim, each with a stack on its own port of a bridge whose namespace
/// holds the clients: `redis-cli --cluster create` joins them (cluster bus connections between
/// the stacks), then 2,000 slots move from the first to the second (`--cluster reshard`: MIGRATE
/// from one stack to another) while tests/py/cluster_load.py writes 5,000 keys round after
/// round through redis-py's cluster client; `--cluster check` finds every slot covered and
/// nothing open, and every key holds the value last written to it.
#[test]
fn a_cluster_of_three_masters_under_the_shim_reshards_while_clients_write() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let bridge = Bridge::new(&ns, &subnet.cidr(1)).expect("bridge");
    let port = 20000 + subnet.index();
    let p = port.to_string();
    let bus = port + 10000;
    let mut members: Vec<Member> = (0..3u8)
        .map(|i| {
            Member::start(&bridge, &ns, &subnet, 11 + i, &[port, bus], |dir| {
                vec![
                    "--port".into(),
                    p.clone(),
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--dir".into(),
                    dir.into(),
                ]
            })
        })
        .collect();
    let mut nodes: Vec<(String, &mut ServerProcess)> = members
        .iter_mut()
        .map(|m| (m.ip.clone(), &mut m.server))
        .collect();
    let cli = |args: &[&str]| -> String {
        let out = ns.exec("redis-cli", args).expect("redis-cli runs");
        let t = text(&out);
        assert!(out.status.success(), "redis-cli {args:?}: {t}");
        t
    };
    let addrs: Vec<String> = nodes.iter().map(|(ip, _)| format!("{ip}:{p}")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.push("--cluster-yes");
    let out = cli(&create);
    assert!(out.contains("All 16384 slots covered"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ip, server) in nodes.iter_mut() {
        while !cli(&["-h", ip, "-p", &p, "CLUSTER", "INFO"]).contains("cluster_state:ok") {
            assert!(
                Instant::now() < deadline,
                "{ip}: the cluster is not ok after 60 s\n{}",
                server.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let check = cli(&["--cluster", "check", &addrs[0]]);
    let before: Vec<u64> = addrs.iter().map(|a| slots_of(&check, a)).collect();
    let ids: Vec<String> = nodes
        .iter()
        .map(|(ip, _)| {
            cli(&["-h", ip, "-p", &p, "CLUSTER", "MYID"])
                .trim()
                .to_string()
        })
        .collect();

    // Clients write while slots move.
    let stop = TempDir::new("cluster-stop");
    let stop_file = stop.path().join("stop");
    let mut writer = ns
        .command("/usr/bin/python3")
        .args([py_file("cluster_load.py").as_str(), &nodes[0].0, &p, "5000"])
        .arg(&stop_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the writer starts");
    let mut lines = BufReader::new(writer.stdout.take().expect("stdout")).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(first, "round 1", "the writer did not write its first round");
    let out = cli(&[
        "--cluster",
        "reshard",
        &addrs[0],
        "--cluster-from",
        &ids[0],
        "--cluster-to",
        &ids[1],
        "--cluster-slots",
        "2000",
        "--cluster-yes",
    ]);
    assert!(out.contains("Moving slot"), "{out}");
    std::fs::write(&stop_file, b"").expect("the stop file");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = writer.wait().expect("the writer exits");
    let mut err = String::new();
    if let Some(mut e) = writer.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        status.success() && rest.last().is_some_and(|l| l.starts_with("ok ")),
        "the writer: {status}\n{}\n{err}",
        rest.join("\n")
    );
    eprintln!("cluster writer: {}", rest.last().expect("a summary"));

    let out = cli(&["--cluster", "check", &addrs[0]]);
    assert!(
        out.contains("[OK] All 16384 slots covered")
            && !out.contains("[ERR]")
            && !out.contains("[WARNING]"),
        "{out}"
    );
    // 2,000 slots moved from the first to the second.
    let after: Vec<u64> = addrs.iter().map(|a| slots_of(&out, a)).collect();
    assert_eq!(
        (after[0] + 2000, after[1], after[2]),
        (before[0], before[1] + 2000, before[2]),
        "{out}"
    );
}

/// The slots `redis-cli --cluster check` says master `addr` holds ("ADDR (ID) -> K keys | S slots
/// | R slaves.").
fn slots_of(check: &str, addr: &str) -> u64 {
    check
        .lines()
        .find(|l| l.starts_with(addr))
        .and_then(|l| l.split('|').nth(1))
        .and_then(|s| s.trim().strip_suffix(" slots"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no slot count for {addr} in {check}"))
}

/// A Redis process under the shim with a stack on its own port of a bridge: `redis-server`
/// bound to the stack's address (its listeners are the stack's alone), serving `ports`.
struct Member {
    ip: String,
    server: ServerProcess,
    _dir: TempDir,
    _veth: VethPair,
}

impl Member {
    /// Starts `redis-server ARGS` (`args` gets the member's directory) with the stack's
    /// address `host` of `subnet`, and waits until it is ready and its stack runs. Sentinel
    /// (`--sentinel` among the arguments) is ready once it monitors its master.
    fn start(
        bridge: &Bridge,
        ns: &Netns,
        subnet: &Subnet,
        host: u8,
        ports: &[u16],
        args: impl FnOnce(&str) -> Vec<String>,
    ) -> Member {
        let veth = bridge.port(ns).expect("a bridge port");
        let ip = subnet.addr(host).to_string();
        let dir = TempDir::new("role");
        let args = args(&dir.path().display().to_string());
        let sentinel = args.iter().any(|a| a == "--sentinel");
        let mut cmd = Command::new("redis-server");
        cmd.args(&args)
            .args(["--bind", &ip, "--save", "", "--protected-mode", "no"]);
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        under_shim(
            &mut cmd,
            &format!("af_packet:{}", veth.root_if()),
            &subnet.cidr(host),
            Some(&ports.join(",")),
        );
        let mut server = if sentinel {
            let mut s = ServerProcess::builder_for(cmd)
                .ready_prefix("")
                .spawn()
                .expect("redis-server --sentinel starts");
            mtcp_tests::wait_stdout_contains(&mut s, "+monitor master", Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{e:#}\n{}", s.diagnostics()));
            s
        } else {
            start_redis(cmd)
        };
        wait_stack(&mut server);
        Member {
            ip,
            server,
            _dir: dir,
            _veth: veth,
        }
    }
}

/// Three Sentinels under the shim watch a master and its replica, all under the shim on one
/// bridge (the Sentinels' connections to the servers and to each other through their stacks):
/// the master exits, and the Sentinels agree and promote the replica, which then holds what
/// the master had acknowledged and takes writes.
#[test]
fn three_sentinels_under_the_shim_fail_a_master_over_to_its_replica() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let bridge = Bridge::new(&ns, &subnet.cidr(1)).expect("bridge");
    let port = 21000 + subnet.index();
    let sport = 26000 + subnet.index();
    let (p, sp) = (port.to_string(), sport.to_string());
    let server_args = |replica_of: Option<String>| {
        let p = p.clone();
        move |dir: &str| {
            let mut a = vec!["--port".to_string(), p.clone(), "--dir".into(), dir.into()];
            if let Some(m) = replica_of {
                a.extend(["--replicaof".to_string(), m, p]);
            }
            a
        }
    };
    let master = Member::start(&bridge, &ns, &subnet, 11, &[port], server_args(None));
    let m_ip = master.ip.clone();
    let replica = Member::start(
        &bridge,
        &ns,
        &subnet,
        12,
        &[port],
        server_args(Some(m_ip.clone())),
    );
    let mut sentinels: Vec<Member> = (0..3u8)
        .map(|i| {
            Member::start(&bridge, &ns, &subnet, 21 + i, &[sport], |dir| {
                let conf = format!("{dir}/sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {sport}\n\
                         sentinel monitor mymaster {m_ip} {port} 2\n\
                         sentinel down-after-milliseconds mymaster 1000\n\
                         sentinel failover-timeout mymaster 10000\n"
                    ),
                )
                .expect("sentinel.conf");
                vec![conf, "--sentinel".into(), "--dir".into(), dir.into()]
            })
        })
        .collect();
    let cli = |ip: &str, port: &str, args: &[&str]| -> String {
        let out = ns
            .exec(
                "redis-cli",
                ["-h", ip, "-p", port].iter().chain(args.iter()).copied(),
            )
            .expect("redis-cli runs");
        let t = text(&out);
        assert!(out.status.success(), "redis-cli -h {ip} {args:?}: {t}");
        t.trim().to_string()
    };
    let field = |reply: &str, name: &str| -> Option<String> {
        // SENTINEL MASTER answers name and value on alternate lines.
        let lines: Vec<&str> = reply.lines().collect();
        lines
            .iter()
            .position(|l| *l == name)
            .and_then(|i| lines.get(i + 1))
            .map(|v| v.to_string())
    };
    let wait = |what: &str, limit: Duration, mut done: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let r_ip = replica.ip.clone();
    wait(
        "the replica syncs",
        Duration::from_secs(30),
        Box::new(|| cli(&r_ip, &p, &["INFO", "replication"]).contains("master_link_status:up")),
    );
    // Each Sentinel knows the replica and the two others (they find each other through the
    // master's hello channel, then connect to each other).
    for s in &sentinels {
        let ip = s.ip.clone();
        wait(
            "a Sentinel knows its peers and the replica",
            Duration::from_secs(60),
            Box::new(|| {
                let m = cli(&ip, &sp, &["SENTINEL", "MASTER", "mymaster"]);
                field(&m, "num-other-sentinels").as_deref() == Some("2")
                    && field(&m, "num-slaves").as_deref() == Some("1")
            }),
        );
    }
    // The master sees each Sentinel from its stack's address.
    let clients = cli(&m_ip, &p, &["CLIENT", "LIST"]);
    for s in &sentinels {
        assert!(clients.contains(&format!("addr={}:", s.ip)), "{clients}");
    }
    assert_eq!(cli(&m_ip, &p, &["SET", "before", "failover"]), "OK");
    assert_eq!(cli(&m_ip, &p, &["WAIT", "1", "10000"]), "1");

    // The master goes; the Sentinels promote its replica.
    let status = master.server.stop().expect("the master stops");
    assert!(status.success(), "the master exited with {status}");
    for s in &mut sentinels {
        let ip = s.ip.clone();
        let r = r_ip.clone();
        wait(
            "the Sentinels name the replica as the master",
            Duration::from_secs(60),
            Box::new(|| {
                cli(
                    &ip,
                    &sp,
                    &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
                )
                .starts_with(&r)
            }),
        );
    }
    wait(
        "the replica becomes a master",
        Duration::from_secs(30),
        Box::new(|| cli(&r_ip, &p, &["ROLE"]).starts_with("master")),
    );
    assert_eq!(cli(&r_ip, &p, &["GET", "before"]), "failover");
    assert_eq!(cli(&r_ip, &p, &["SET", "after", "failover"]), "OK");
    drop(replica);
}
