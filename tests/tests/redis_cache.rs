//! The Redis GET cache (`MTCP_REDIS_CACHE`): Debian's redis-server under the shim with the cache
//! on, clients through the stack (in the bed's namespace) and through the kernel side
//! (127.0.0.1) at once. What a user checks: hot GETs are answered by the cache (its counters in
//! `mtcprun stats`), and no read ever returns what Redis would not have returned then: a
//! history of concurrent reads and writes through both sides is checked read by read
//! (`tests/py/cache_history.py`), and the same checker catches a cache that applies
//! invalidations one reply late (`MTCP_REDIS_CACHE_FAULT=late`).

use std::process::{Command, Stdio};
use std::time::Duration;

use mtcp_tests::redis::{py_file, BedOptions, RedisBed};

fn cache_bed(extra_env: &[(&str, &str)]) -> RedisBed {
    let mut env = vec![("MTCP_REDIS_CACHE".to_string(), "16M".to_string())];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    RedisBed::new(BedOptions {
        env,
        ..Default::default()
    })
}

/// `cache_history.py relay` in the bed's namespace, against the stack, as an argv.
fn relay_argv(bed: &RedisBed) -> Vec<String> {
    vec![
        "ip".into(),
        "netns".into(),
        "exec".into(),
        bed.ns.name().into(),
        "python3".into(),
        py_file("cache_history.py"),
        "relay".into(),
        bed.addr(),
        bed.port.to_string(),
    ]
}

/// `cache_history.py causal` on the host (writes through 127.0.0.1, reads through the stack):
/// its status and output.
fn causal(bed: &RedisBed, rounds: u32) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(py_file("cache_history.py"))
        .args([
            "causal",
            "127.0.0.1",
            &bed.port.to_string(),
            &rounds.to_string(),
        ])
        .args(relay_argv(bed))
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn counter(bed: &RedisBed, name: &str) -> u64 {
    bed.stack_counter(name)
}

/// A GET that starts after a write through the kernel side was acknowledged returns the new
/// value, every time, while the cache answers the GETs around it.
#[test]
fn a_write_through_the_kernel_side_is_seen_by_the_next_get_through_the_stack() {
    let mut bed = cache_bed(&[]);
    let (ok, text) = causal(&bed, 300);
    assert!(ok, "{text}\n{}", bed.diagnostics());
    let hits = counter(&bed, "hits");
    eprintln!("{text}: {hits} cache hits");
    assert!(
        hits >= 300,
        "the cache answered {hits} of the 900 GETs\n{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
}

/// The same with the cache's invalidations applied one reply late: the check catches it.
#[test]
fn a_cache_that_invalidates_one_reply_late_is_caught() {
    let bed = cache_bed(&[("MTCP_REDIS_CACHE_FAULT", "late")]);
    let (ok, text) = causal(&bed, 300);
    eprintln!("{text}");
    assert!(!ok, "a late cache passed: {text}");
    assert!(text.contains("STALE"), "{text}");
}

/// Hot GETs through the stack are answered by the cache, and what it answers is Redis's value.
#[test]
fn hot_gets_are_answered_by_the_cache() {
    let mut bed = cache_bed(&[]);
    bed.cli_ok(&["set", "hot", "value"]);
    for _ in 0..3 {
        let out = bed.cli_ok(&["-r", "200", "get", "hot"]);
        assert!(out.lines().all(|l| l == "value"), "{out}");
    }
    let hits = counter(&bed, "hits");
    assert!(
        hits > 0,
        "{}",
        mtcp_tests::redis::stats_text(bed.server.pid())
    );
    let _ = Duration::ZERO;
}
