//! Running helper programs (`ip`, `ethtool`, ...) with their failures explained, and finding
//! the programs the workspace build produced (`target/<profile>/NAME`).

use std::process::{Command, Output, Stdio};

use crate::{bail, Context, Result};

pub(crate) fn command_line(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion and fails (with the command line, status and stderr in the
/// error) unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let line = command_line(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

pub(crate) fn ip(args: &[&str]) -> Result<Output> {
    run_checked(Command::new("ip").args(args))
}

/// A file the workspace build put beside this test's executable (`target/<profile>/NAME`:
/// the echo example, libmtcpshim.so), or the path in `$env_var`. `ci/test.sh` builds the whole
/// workspace before the tests, so these exist.
pub fn built_artifact(name: &str, env_var: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return std::path::PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --release, see ci/test.sh), or set {env_var}",
        p.display()
    );
    p
}
