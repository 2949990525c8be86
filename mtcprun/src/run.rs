//! `mtcprun [OPTIONS] -- COMMAND ARGS...`: check, then exec under the shim.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use mtcp_common::config::{check_ports, preflight, ConfigError, VARIABLES};
use mtcp_common::Config;

use crate::fail;
use crate::profile;

/// Options that set one variable each: (option, variable, example value).
pub const OPTIONS: &[(&str, &str, &str)] = &[
    ("--dev", "MTCP_DEV", "tap:mtcp0"),
    ("--addr", "MTCP_ADDR", "198.18.0.2/24"),
    ("--gateway", "MTCP_GW", "198.18.0.1"),
    ("--ports", "MTCP_PORTS", "6379"),
    ("--pcap", "MTCP_PCAP", "/tmp/stack.pcap"),
    ("--tap-peer", "MTCP_TAP_PEER", "198.18.0.1/24"),
];

const LIB: &str = "libmtcpshim.so";

fn usage() -> String {
    let mut s = String::from(
        "usage: mtcprun [--dev DEV] [--addr A/N] [--gateway G] [--ports P[,P...]]\n\
         \x20              [--profile latency|throughput|low-cpu] [--pcap FILE] [--tap-peer A/N]\n\
         \x20              -- COMMAND [ARGS...]\n\
         \x20      mtcprun stats PID [--watch [SECS]] [--count N] [--json]\n\n\
         Runs COMMAND (exec: same pid) with LD_PRELOAD=libmtcpshim.so; its listening sockets on\n\
         the ports given are served by the user-space TCP/IP stack. Every option sets one MTCP_*\n\
         variable (the environment's own MTCP_* variables are used too; options win):\n",
    );
    for (opt, var, ex) in OPTIONS {
        s.push_str(&format!("  {opt:<11} {var:<14} e.g. {ex}\n"));
    }
    s.push_str("\nProfiles (fill only variables not set otherwise):\n");
    for p in profile::PROFILES {
        let set: Vec<String> = p.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!("  {:<11} {}\n", p.name, set.join(" ")));
    }
    s.push_str(
        "\nThe whole configuration is checked before COMMAND starts: a bad value is named and\n\
         mtcprun exits with status 2. See docs/configuration.md and docs/operating.md.",
    );
    s
}

/// What the command line asked for.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    /// Variables set by options, with the option that set each.
    pub set: BTreeMap<&'static str, (&'static str, String)>,
    pub profile: Option<&'static profile::Profile>,
    pub command: Vec<String>,
    pub help: bool,
    pub version: bool,
}

/// Parses the command line (without the program name).
pub fn parse_args(args: &[String]) -> Result<Request, String> {
    let mut r = Request::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            r.command = args[i + 1..].to_vec();
            break;
        }
        if !a.starts_with('-') || a == "-" {
            r.command = args[i..].to_vec();
            break;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        match name {
            "-h" | "--help" => r.help = true,
            "-V" | "--version" => r.version = true,
            _ => {
                let Some(&(opt, var, ex)) = OPTIONS
                    .iter()
                    .chain([&("--profile", "", "latency")])
                    .find(|(o, _, _)| *o == name)
                else {
                    return Err(format!("unknown option {name} (mtcprun --help lists them)"));
                };
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        match args.get(i) {
                            Some(v) if !v.starts_with("--") => v.clone(),
                            _ => return Err(format!("{opt} needs a value, e.g. {opt} {ex}")),
                        }
                    }
                };
                if value.trim().is_empty() {
                    return Err(format!("{opt} needs a value, e.g. {opt} {ex}"));
                }
                if opt == "--profile" {
                    r.profile = Some(profile::find(&value).ok_or_else(|| {
                        format!(
                            "--profile={value:?}: unknown profile; expected {}",
                            profile::names()
                        )
                    })?);
                } else {
                    r.set.insert(var, (opt, value));
                }
            }
        }
        i += 1;
    }
    Ok(r)
}

/// The `MTCP_*` variables the program will get: the profile's, overridden by the environment's
/// (non-empty) ones, overridden by the options. Also returns the option that set each variable.
pub fn environment(
    req: &Request,
    env: &[(String, String)],
) -> (BTreeMap<String, String>, BTreeMap<String, &'static str>) {
    let mut vars = BTreeMap::new();
    if let Some(p) = req.profile {
        for (k, v) in p.settings {
            vars.insert(k.to_string(), v.to_string());
        }
    }
    for (k, v) in env {
        if k.starts_with("MTCP_") && !v.trim().is_empty() {
            vars.insert(k.clone(), v.clone());
        }
    }
    let mut by_option = BTreeMap::new();
    for (var, (opt, value)) in &req.set {
        vars.insert(var.to_string(), value.clone());
        by_option.insert(var.to_string(), *opt);
    }
    (vars, by_option)
}

/// One line for a configuration error, naming the option if an option set the variable.
fn describe(e: &ConfigError, by_option: &BTreeMap<String, &'static str>) -> String {
    match by_option.get(e.var) {
        Some(opt) => format!("{opt}={:?}: {}", e.value, e.problem),
        None => e.to_string(),
    }
}

/// Checks the variables as the stack and the shim will read them. `Err` is the one line to print.
pub fn check(
    vars: &BTreeMap<String, String>,
    by_option: &BTreeMap<String, &'static str>,
) -> Result<Config, String> {
    let cfg = Config::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| describe(&e, by_option))?;
    match vars.get("MTCP_PORTS") {
        None => {
            return Err(
                "no port to serve: give --ports PORT[,PORT...] (or set MTCP_PORTS)".to_string(),
            )
        }
        Some(p) => {
            check_ports(p).map_err(|e| describe(&e, by_option))?;
        }
    }
    Ok(cfg)
}

/// Where libmtcpshim.so is, relative to this executable: beside it (the build tree's
/// target/release, or a copy), ../lib/mtcpshim/ (the Debian package), ../release/ (a debug
/// build of mtcprun in the build tree).
pub fn find_library(exe: &Path) -> Result<PathBuf, String> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join(LIB),
        dir.join("../lib/mtcpshim").join(LIB),
        dir.join("../release").join(LIB),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.canonicalize().unwrap_or_else(|_| c.clone()));
        }
    }
    let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(format!(
        "cannot find {LIB} (looked for {}); build it with `cargo build --release` or install the mtcpshim package",
        looked.join(", ")
    ))
}

/// `LD_PRELOAD` with the library first, keeping what was there (without a second copy of it).
pub fn preload_value(lib: &Path, existing: Option<&str>) -> OsString {
    let mut v = OsString::from(lib.as_os_str());
    for item in existing
        .unwrap_or("")
        .split([':', ' '])
        .filter(|s| !s.is_empty() && Path::new(s) != lib)
    {
        v.push(":");
        v.push(item);
    }
    v
}

pub fn main(args: &[String]) -> i32 {
    let req = match parse_args(args) {
        Ok(r) => r,
        Err(e) => return fail(2, e),
    };
    if req.help {
        println!("{}", usage());
        return 0;
    }
    if req.version {
        println!("mtcprun {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    if req.command.is_empty() {
        eprintln!("mtcprun: no command to run\n{}", usage());
        return 2;
    }
    let env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    for (k, _) in &env {
        if k.starts_with("MTCP_") && !VARIABLES.contains(&k.as_str()) {
            eprintln!(
                "mtcprun: warning: {k} is not a variable mtcpshim reads (a typo?); see docs/configuration.md"
            );
        }
    }
    let (vars, by_option) = environment(&req, &env);
    let cfg = match check(&vars, &by_option) {
        Ok(c) => c,
        Err(e) => return fail(2, e),
    };
    if let Err(e) = preflight(&cfg) {
        return fail(2, e);
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(1, format!("cannot find my own executable: {e}")),
    };
    let lib = match find_library(&exe) {
        Ok(l) => l,
        Err(e) => return fail(1, e),
    };
    let preload = preload_value(&lib, std::env::var("LD_PRELOAD").ok().as_deref());
    let err = std::process::Command::new(&req.command[0])
        .args(&req.command[1..])
        .envs(&vars)
        .env("LD_PRELOAD", preload)
        .exec();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    fail(code, format!("cannot run {}: {err}", req.command[0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options_and_command() {
        let r = parse_args(&args(
            "--dev tap:t1 --addr=198.18.0.2/24 --ports 6379 -- redis-server --port 6379",
        ))
        .unwrap();
        assert_eq!(r.command, args("redis-server --port 6379"));
        assert_eq!(r.set["MTCP_DEV"], ("--dev", "tap:t1".to_string()));
        assert_eq!(r.set["MTCP_ADDR"], ("--addr", "198.18.0.2/24".to_string()));
        // Without "--", the first word that is not an option starts the command.
        let r = parse_args(&args("--ports 1 echo --dev x")).unwrap();
        assert_eq!(r.command, args("echo --dev x"));
        assert!(!r.set.contains_key("MTCP_DEV"));
    }

    #[test]
    fn bad_options() {
        assert_eq!(
            parse_args(&args("--devv tap -- x")).unwrap_err(),
            "unknown option --devv (mtcprun --help lists them)"
        );
        assert_eq!(
            parse_args(&args("--dev")).unwrap_err(),
            "--dev needs a value, e.g. --dev tap:mtcp0"
        );
        assert_eq!(
            parse_args(&args("--dev --ports 1")).unwrap_err(),
            "--dev needs a value, e.g. --dev tap:mtcp0"
        );
        assert_eq!(
            parse_args(&args("--profile fast -- x")).unwrap_err(),
            "--profile=\"fast\": unknown profile; expected latency, throughput, low-cpu"
        );
    }

    #[test]
    fn precedence_profile_then_env_then_options() {
        let r = parse_args(&args("--profile latency --ports 7 -- x")).unwrap();
        let env = vec![
            ("MTCP_SPIN_US".to_string(), "5".to_string()),
            ("MTCP_ACK_DELAY_US".to_string(), " ".to_string()),
            ("MTCP_PORTS".to_string(), "9".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let (vars, by_option) = environment(&r, &env);
        assert_eq!(vars["MTCP_SPIN_US"], "5"); // the environment beats the profile
        assert_eq!(vars["MTCP_ACK_DELAY_US"], "0"); // an empty variable counts as unset
        assert_eq!(vars["MTCP_PORTS"], "7"); // an option beats the environment
        assert!(!vars.contains_key("HOME"));
        assert_eq!(by_option["MTCP_PORTS"], "--ports");
    }

    #[test]
    fn errors_name_the_option_or_the_variable() {
        let check_line = |cmd: &str, env: &[(&str, &str)]| {
            let r = parse_args(&args(cmd)).unwrap();
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (vars, by_option) = environment(&r, &env);
            check(&vars, &by_option).unwrap_err()
        };
        assert_eq!(
            check_line("--addr 198.18.0.300/24 --ports 1 -- x", &[]),
            "--addr=\"198.18.0.300/24\": expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24"
        );
        assert_eq!(
            check_line("--ports 1 -- x", &[("MTCP_ADDR", "nope")]),
            "MTCP_ADDR=\"nope\": expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24"
        );
        assert_eq!(
            check_line("--ports 6379,x -- x", &[]),
            "--ports=\"6379,x\": \"x\" is not a port number; expected a comma-separated list of TCP ports 1-65535, e.g. 6379,6380"
        );
        assert_eq!(
            check_line("-- x", &[]),
            "no port to serve: give --ports PORT[,PORT...] (or set MTCP_PORTS)"
        );
    }

    #[test]
    fn library_places_and_preload() {
        let dir = std::env::temp_dir().join(format!("mtcprun-lib-{}", std::process::id()));
        let bin = dir.join("usr/bin");
        let libdir = dir.join("usr/lib/mtcpshim");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&libdir).unwrap();
        let exe = bin.join("mtcprun");
        assert!(find_library(&exe).is_err());
        std::fs::write(libdir.join(LIB), b"").unwrap();
        let found = find_library(&exe).unwrap();
        assert_eq!(found, libdir.join(LIB).canonicalize().unwrap());
        std::fs::write(bin.join(LIB), b"").unwrap();
        assert_eq!(
            find_library(&exe).unwrap(),
            bin.join(LIB).canonicalize().unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let lib = Path::new("/x/libmtcpshim.so");
        assert_eq!(preload_value(lib, None), "/x/libmtcpshim.so");
        assert_eq!(
            preload_value(lib, Some("/a.so /x/libmtcpshim.so:/b.so")),
            "/x/libmtcpshim.so:/a.so:/b.so"
        );
    }
}
