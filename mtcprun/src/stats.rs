//! `mtcprun stats PID [--watch [SECS]] [--count N] [--json]`: a running stack's live statistics.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use mtcp_common::statshm::{self, ReadError, Sample};
use serde_json::{json, Map, Value};

use crate::fail;

const USAGE: &str = "usage: mtcprun stats PID [--watch [SECS]] [--count N] [--json]";

#[derive(Debug, PartialEq)]
pub struct StatsArgs {
    pub pid: u32,
    /// Repeat every this long (with rates per second).
    pub watch: Option<Duration>,
    /// Stop after this many samples (with --watch).
    pub count: Option<u64>,
    pub json: bool,
}

pub fn parse_args(args: &[String]) -> Result<StatsArgs, String> {
    let mut pid = None;
    let mut watch = None;
    let mut count = None;
    let mut json = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--json" => json = true,
            "--watch" => {
                let secs = args.get(i + 1).and_then(|s| s.parse::<f64>().ok());
                let secs = match secs {
                    Some(s) => {
                        i += 1;
                        s
                    }
                    None => 1.0,
                };
                if !(0.01..=3600.0).contains(&secs) {
                    return Err(format!(
                        "--watch {secs}: expected seconds between 0.01 and 3600"
                    ));
                }
                watch = Some(Duration::from_secs_f64(secs));
            }
            "--count" => {
                i += 1;
                count = Some(
                    args.get(i)
                        .and_then(|s| s.parse::<u64>().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--count needs a number of samples, e.g. --count 10")?,
                );
            }
            _ if a.starts_with('-') => return Err(format!("unknown option {a}\n{USAGE}")),
            _ if pid.is_none() => {
                pid = Some(
                    a.parse::<u32>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| format!("{a:?} is not a process id\n{USAGE}"))?,
                )
            }
            _ => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
        }
        i += 1;
    }
    let pid = pid.ok_or_else(|| format!("which process?\n{USAGE}"))?;
    if count.is_some() && watch.is_none() {
        return Err("--count goes with --watch".into());
    }
    Ok(StatsArgs {
        pid,
        watch,
        count,
        json,
    })
}

fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Why there are no statistics for `pid`, in words a user can act on.
fn explain(pid: u32, e: &ReadError) -> String {
    match e {
        ReadError::Missing(p) => match command_name(pid) {
            None => format!("no statistics for pid {pid}: no such process"),
            Some(comm) => format!(
                "no statistics for pid {pid} ({comm}): {} does not exist. The process does not \
                 run the user-space stack (start it with mtcprun), its stack has not started yet \
                 (it starts at the first listen() on a port in MTCP_PORTS; on af_packet when that \
                 listener is first served), or MTCP_STATS=off",
                p.display()
            ),
        },
        other => format!("no statistics for pid {pid}: {other}"),
    }
}

/// Rates per second of every counter between two samples of the same stack.
fn rates(prev: &Sample, cur: &Sample) -> Vec<(String, f64)> {
    let dt = cur.now_us.saturating_sub(prev.now_us) as f64 / 1e6;
    cur.values
        .iter()
        .filter(|(n, _)| !statshm::is_gauge(n))
        .map(|(n, v)| {
            let before = prev.get(n).unwrap_or(*v);
            let r = if dt > 0.0 {
                v.saturating_sub(before) as f64 / dt
            } else {
                0.0
            };
            (n.clone(), r)
        })
        .collect()
}

fn uptime(s: &Sample) -> Duration {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Duration::from_millis(now_ms.saturating_sub(s.created_unix_ms))
}

/// One JSON object: pid, command, ages, then one object per group (`stack`, `link`, `mempool`,
/// `conns`, `tcp`), the listeners, and with --watch the counters' rates per second.
pub fn to_json(s: &Sample, rates: Option<&[(String, f64)]>) -> Value {
    let mut root = Map::new();
    root.insert("pid".into(), json!(s.pid));
    root.insert("command".into(), json!(command_name(s.pid)));
    root.insert("uptime_s".into(), json!(uptime(s).as_millis() as f64 / 1e3));
    root.insert("age_ms".into(), json!(s.age.as_micros() as f64 / 1e3));
    for (name, v) in &s.values {
        let (group, key) = name.split_once('.').unwrap_or(("other", name));
        let g = root
            .entry(group.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = g {
            m.insert(key.to_string(), json!(v));
        }
    }
    let listeners: Vec<Value> = s
        .listeners
        .iter()
        .map(|l| {
            json!({
                "port": l.port,
                "backlog": l.backlog,
                "syn_received": l.syn_received,
                "accept_queue": l.accept_queue,
            })
        })
        .collect();
    root.insert("listeners".into(), Value::Array(listeners));
    if let Some(r) = rates {
        let m: Map<String, Value> = r
            .iter()
            .map(|(n, v)| (n.clone(), json!((v * 10.0).round() / 10.0)))
            .collect();
        root.insert("per_second".into(), Value::Object(m));
    }
    Value::Object(root)
}

/// The readable form: a title line, then the groups, one value a line (counters with their rate
/// per second under --watch), then the listeners.
pub fn to_text(s: &Sample, rates: Option<&[(String, f64)]>) -> String {
    let mut out = String::new();
    let comm = command_name(s.pid).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "pid {} ({comm}): stack up {:.1} s, published {:.1} ms ago",
        s.pid,
        uptime(s).as_secs_f64(),
        s.age.as_secs_f64() * 1e3
    );
    let mut group = "";
    for (name, v) in &s.values {
        let (g, key) = name.split_once('.').unwrap_or(("other", name));
        if g != group {
            let kind = if statshm::is_gauge(name) {
                ""
            } else {
                " (counters)"
            };
            let _ = writeln!(out, "{g}{kind}");
            group = g;
        }
        let rate = rates
            .and_then(|r| r.iter().find(|(n, _)| n == name))
            .map(|(_, r)| format!("  {r:>12.1}/s"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {key:<28} {v:>14}{rate}");
    }
    let _ = writeln!(out, "listeners");
    if s.listeners.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "  port {:<5}  backlog {:<5}  syn_received {:<5}  accept_queue {}",
            l.port, l.backlog, l.syn_received, l.accept_queue
        );
    }
    out
}

pub fn main(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => return fail(2, e),
    };
    let mut prev: Option<Sample> = None;
    let mut n = 0u64;
    loop {
        let s = match statshm::read(a.pid) {
            Ok(s) => s,
            Err(e) => {
                if prev.is_some() {
                    // Watching, and the process went away (its file is removed at exit).
                    eprintln!("mtcprun: pid {} exited", a.pid);
                    return 0;
                }
                return fail(1, explain(a.pid, &e));
            }
        };
        let r = prev.as_ref().map(|p| rates(p, &s));
        let text = if a.json {
            format!("{}\n", to_json(&s, r.as_deref()))
        } else if n > 0 {
            format!("\n{}", to_text(&s, r.as_deref()))
        } else {
            to_text(&s, r.as_deref())
        };
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return 0; // the reader went away (| head)
        }
        n += 1;
        let Some(every) = a.watch else { return 0 };
        if a.count.is_some_and(|c| n >= c) {
            return 0;
        }
        prev = Some(s);
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtcp_common::statshm::ListenerStat;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn sample(now_us: u64, rx: u64, est: u64) -> Sample {
        Sample {
            pid: 1,
            created_unix_ms: 0,
            start: 0,
            now_us,
            age: Duration::from_millis(2),
            values: vec![
                ("stack.rx_frames".into(), rx),
                ("tcp.established".into(), est),
            ],
            listeners: vec![ListenerStat {
                port: 6379,
                backlog: 511,
                syn_received: 0,
                accept_queue: 1,
            }],
        }
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&args("42 --watch --json")).unwrap(),
            StatsArgs {
                pid: 42,
                watch: Some(Duration::from_secs(1)),
                count: None,
                json: true
            }
        );
        let a = parse_args(&args("42 --watch 0.5 --count 3")).unwrap();
        assert_eq!(a.watch, Some(Duration::from_millis(500)));
        assert_eq!(a.count, Some(3));
        assert!(parse_args(&args("abc"))
            .unwrap_err()
            .starts_with("\"abc\" is not a process id"));
        assert!(parse_args(&args(""))
            .unwrap_err()
            .starts_with("which process?"));
        assert_eq!(
            parse_args(&args("1 --count 2")).unwrap_err(),
            "--count goes with --watch"
        );
    }

    #[test]
    fn rates_are_per_second_of_the_writers_clock_and_skip_gauges() {
        let r = rates(&sample(1_000_000, 100, 5), &sample(1_500_000, 600, 7));
        assert_eq!(r, vec![("stack.rx_frames".to_string(), 1000.0)]);
    }

    #[test]
    fn json_groups() {
        let s = sample(1, 100, 5);
        let v = to_json(&s, None);
        assert_eq!(v["stack"]["rx_frames"], 100);
        assert_eq!(v["tcp"]["established"], 5);
        assert_eq!(v["listeners"][0]["port"], 6379);
        assert!(v.get("per_second").is_none());
        let text = to_text(&s, None);
        assert!(text.contains("stack (counters)\n"), "{text}");
        assert!(text.contains("tcp\n"), "{text}");
        assert!(text.contains("port 6379"), "{text}");
    }
}
