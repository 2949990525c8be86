//! Wake-ups that come from another thread of the application, under the shim: a thread blocked
//! in our epoll_wait/poll must wake when another thread adds a ready fd to its set or shuts a
//! connection down, as on Linux (tests/py/threads_server.py, a Python server with threads, on
//! net_af_packet; its client in a namespace).

use std::time::Duration;

use mtcp_tests::redis::{py_file, shim_lib};
use mtcp_tests::{Netns, ServerProcess, Subnet, VethPair};

#[test]
fn another_threads_work_wakes_a_blocked_waiter() {
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let veth = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
    let port = (19000 + subnet.index()).to_string();
    let script = py_file("threads_server.py");
    let mut server = ServerProcess::builder("python3")
        .args([script.as_str(), &port])
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", &port)
        .env("MTCP_DEV", format!("af_packet:{}", veth.root_if()))
        .env("MTCP_ADDR", subnet.cidr(2))
        .ready_prefix("ready")
        .spawn()
        .expect("the server starts");
    let addr = subnet.addr(2).to_string();
    let client = ns
        .exec("python3", [script.as_str(), "client", &addr, &port])
        .expect("the client runs");
    let done = server.wait_stdout("done", Duration::from_secs(60)).ok();
    let out = server.stdout();
    assert!(
        client.status.success() && done.is_some(),
        "client: {}{}\nserver: {out}\n{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr),
        server.diagnostics()
    );
    for check in ["ctl", "shutdown", "poll"] {
        assert!(
            out.lines().any(|l| l == format!("ok {check}")),
            "{check}: {out}\n{}",
            server.diagnostics()
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
}
