//! Every input kept in fuzz/corpus/TARGET (what libFuzzer found covers new code, and each
//! crash once fixed) runs through its target: on stable, in every test run.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(
            r.is_ok(),
            "{} fails (run it: ci/fuzz.sh {target} {})",
            path.display(),
            path.display()
        );
        n += 1;
    }
    assert!(n > 0, "{} is empty", dir.display());
}

#[test]
fn frames_corpus_replays() {
    replay("frames", mtcp_fuzz::frames);
}

#[test]
fn resp_corpus_replays() {
    replay("resp", mtcp_fuzz::resp);
}

#[test]
fn tcp_corpus_replays() {
    replay("tcp", mtcp_fuzz::tcp);
}

#[test]
fn config_corpus_replays() {
    replay("config", mtcp_fuzz::config);
}
