//! Redis 7.0.15's own test suite (its quick subset) against Debian's redis-server under
//! `LD_PRELOAD=libmtcpshim.so`, the flagged port served by the stack over net_af_packet on one end
//! of a veth pair, the suite's client in a namespace at the other end. The kernel gives
//! "1684 passed, 0 failed" on this machine (shared/redis-suite); under the shim it must fail
//! nothing either.
//!
//! The suite lives in the project's shared folder (`../shared/redis-suite` beside the repository,
//! as CI has it) or at `$MTCP_REDIS_SUITE`. Without it this test says so and checks nothing.

use std::path::PathBuf;

use mtcp_tests::{Netns, Subnet, VethPair};

fn suite_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MTCP_REDIS_SUITE") {
        return Some(PathBuf::from(p));
    }
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/redis-suite/redis-suite.sh");
    p.exists().then_some(p)
}

fn shim_lib() -> PathBuf {
    mtcp_tests::built_artifact("libmtcpshim.so", "MTCP_SHIM_LIB")
}

#[test]
fn redis_own_quick_suite_passes_through_the_shim() {
    run_suite(&[], &[]);
}

/// The same with the GET cache on (MTCP_REDIS_CACHE): the suite's GETs through the stack are
/// answered by the cache where it can, and Redis's results must not change (INFO's figures
/// included: "Tracking info is correct" counts the server's tracking clients, where the
/// cache's own connection is one that INFO through the stack leaves out).
#[test]
fn redis_own_quick_suite_passes_with_the_get_cache_on() {
    run_suite(&[("MTCP_REDIS_CACHE", "64M")], &[]);
}

/// Runs the suite against Redis under the shim with `env` added to the server's environment
/// and `runtest_args` passed to Redis's runtest.
fn run_suite(env: &[(&str, &str)], runtest_args: &[&str]) {
    let Some(script) = suite_script() else {
        eprintln!(
            "SKIPPED: Redis's test suite not found (../shared/redis-suite or $MTCP_REDIS_SUITE)"
        );
        return;
    };
    let subnet = Subnet::allocate().expect("subnet");
    let ns = Netns::new().expect("netns");
    let veth = VethPair::new(&ns, &subnet.cidr(1)).expect("veth");
    let port = 17000 + subnet.index();
    let dir = std::env::temp_dir().join(format!("mtcp-suite-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let args = [
        "--port",
        &port.to_string(),
        "--bind",
        "0.0.0.0",
        "--daemonize",
        "no",
        "--save",
        "",
        "--protected-mode",
        "no",
        "--enable-protected-configs",
        "yes",
        "--enable-debug-command",
        "yes",
        "--enable-module-command",
        "yes",
        "--dir",
        dir.to_str().unwrap(),
    ];
    let mut cmd = std::process::Command::new("redis-server");
    cmd.args(args)
        .env("LD_PRELOAD", shim_lib())
        .env("MTCP_PORTS", port.to_string())
        .env("MTCP_DEV", format!("af_packet:{}", veth.root_if()))
        .env("MTCP_ADDR", subnet.cidr(2))
        .envs(env.iter().copied());
    let mut server = mtcp_tests::redis::start_redis(cmd);
    let log = dir.with_extension("log");
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(&script);
    // MTCP_REDIS_SUITE_UNITS="integration/redis-cli unit/info": only these units (to chase one).
    if let Some(units) = std::env::var_os("MTCP_REDIS_SUITE_UNITS") {
        cmd.arg("--units").arg(units);
    }
    let out = cmd
        .arg("--log")
        .arg(&log)
        .args([
            // MTCP_REDIS_SUITE_FULL=1: the whole suite (~4 min) instead of the quick subset.
            if std::env::var_os("MTCP_REDIS_SUITE_FULL").is_some() {
                "--full"
            } else {
                "--quick"
            },
            "--netns",
            ns.name(),
            &subnet.addr(2).to_string(),
            &port.to_string(),
        ])
        .args(runtest_args)
        .output()
        .expect("redis-suite.sh runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{text}");
    let details = failure_details(&std::fs::read_to_string(&log).unwrap_or_default());
    let _ = std::fs::remove_file(&log);
    let last = text
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed"))
        .unwrap_or("");
    let (passed, failed) = last
        .split_once(" passed, ")
        .and_then(|(p, f)| {
            Some((
                p.trim().parse::<u32>().ok()?,
                f.trim_end_matches(" failed").parse::<u32>().ok()?,
            ))
        })
        .unwrap_or_else(|| {
            panic!(
                "no summary line in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        out.status.success() && failed == 0 && passed > 0,
        "{last}\n{text}\nwhat runtest said about the failures:\n{details}\n{}",
        server.diagnostics()
    );
    drop(server);
    drop(veth);
}

/// The lines of runtest's log around each `[err]` and exception: what a failed test asserted and
/// what it got, so that a failure in CI can be understood without rerunning it.
fn failure_details(log: &str) -> String {
    let log = strip_colours(log);
    let lines: Vec<&str> = log.lines().collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("[err]") || l.contains("[exception]") || l.contains("Killing") {
            for l in &lines[i.saturating_sub(3)..(i + 12).min(lines.len())] {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("...\n");
        }
    }
    out
}

/// runtest colours its `[ok]`/`[err]` tags with ANSI escapes (`ESC [ ... m`).
fn strip_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
