//! strace attached to running processes for the span of a closure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `strace ARGS -f` wrote of every thread of the processes `pids` while `during` ran: the
/// trace goes to the file `out`, which is read back. Attached before `during` starts (every
/// thread names strace as its tracer), stopped by SIGINT after it returns.
pub fn traced<R>(
    pids: &[u32],
    args: &[&str],
    out: &Path,
    during: impl FnOnce() -> R,
) -> (String, R) {
    let mut strace = Command::new("strace");
    strace.args(args).args(["-f", "-o"]).arg(out);
    for pid in pids {
        let tasks =
            std::fs::read_dir(format!("/proc/{pid}/task")).expect("the threads of a process");
        for t in tasks {
            strace.arg("-p").arg(t.expect("a thread").file_name());
        }
    }
    let mut tracer = strace
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs (apt-get install strace)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&p| all_traced(p, tracer.id())) {
        assert!(Instant::now() < deadline, "strace never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = during();
    // SAFETY: a signal to the strace started here, by its pid.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    tracer.wait().expect("strace ends");
    (std::fs::read_to_string(out).unwrap_or_default(), r)
}

/// Whether every thread of process `pid` is traced by process `tracer`.
fn all_traced(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let want = tracer.to_string();
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.split_whitespace().eq(["TracerPid:", want.as_str()]))
        })
    })
}
