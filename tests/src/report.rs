//! Reading what the load clients report: the `key=value` summary line every `mtcp-client`
//! subcommand prints last; and the summary `strace -c` writes.

use std::collections::HashMap;

use crate::{anyhow, Result};

/// Parses `key=value` tokens of a summary line (tokens without `=` are ignored).
pub fn parse_kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The key=value pairs of the last stdout line that starts with `mode=` (the summary line
/// every `mtcp-client` subcommand prints).
pub fn parse_summary(stdout: &[u8]) -> Result<HashMap<String, String>> {
    let s = String::from_utf8_lossy(stdout);
    let line = s
        .lines()
        .rev()
        .find(|l| l.starts_with("mode="))
        .ok_or_else(|| anyhow!("no summary line (mode=...) in output: {s:?}"))?;
    Ok(parse_kv(line))
}

/// Fetches and parses `key` from a parsed summary.
pub fn kv_get<T: std::str::FromStr>(kv: &HashMap<String, String>, key: &str) -> Result<T> {
    let v = kv
        .get(key)
        .ok_or_else(|| anyhow!("summary has no {key}=: {kv:?}"))?;
    v.parse()
        .map_err(|_| anyhow!("summary value {key}={v} does not parse"))
}

/// How many calls of system call `name` a `strace -c` summary counts (0 if it has no line for
/// it: never made; strace writes nothing at all when none of the calls it traced was made).
/// Panics if `summary` is something else (text without a `total` line).
pub fn strace_calls(summary: &str, name: &str) -> u64 {
    assert!(
        summary.trim().is_empty() || summary.lines().any(|l| l.trim_end().ends_with("total")),
        "not a strace summary:\n{summary}"
    );
    // "<% time>  <seconds>  <usecs/call>  <calls>  [<errors>]  <name>"
    summary
        .lines()
        .find(|l| l.split_whitespace().last() == Some(name))
        .and_then(|l| l.split_whitespace().nth(3))
        .map_or(0, |c| c.parse().expect("a count"))
}
