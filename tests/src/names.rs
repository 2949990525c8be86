//! Names of the kernel objects the fixtures create, and removal of stale ones.
//!
//! Every network namespace is `mtcp-<pid>-<n>` and every interface `mt<pid hex>-<n hex><tag>`,
//! so [`cleanup_stale`] can tell which ones a dead test process (SIGKILLed, no destructors run)
//! left behind and remove exactly those; objects of live processes are never touched.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::command::ip;
use crate::Result;

/// Prefix of every network namespace this crate creates: `mtcp-<pid>-<n>`.
pub const NETNS_PREFIX: &str = "mtcp-";
/// Prefix of every interface name this crate creates: `mt<pid hex>-<n hex><tag>`.
pub const IFNAME_PREFIX: &str = "mt";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh interface name, unique per process and call: `mt<pid hex>-<counter hex><tag>`.
/// `tag` (at most 3 lowercase ASCII alphanumerics) tells the role, e.g. `"r"` root end, `"tap"`.
/// The result is at most 15 bytes (IFNAMSIZ - 1).
pub fn unique_ifname(tag: &str) -> String {
    assert!(
        tag.len() <= 3
            && tag
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()),
        "interface tag {tag:?} must be at most 3 lowercase ASCII alphanumerics"
    );
    let name = format!(
        "{IFNAME_PREFIX}{:x}-{:x}{tag}",
        std::process::id(),
        next_id() & 0xfff
    );
    debug_assert!(name.len() <= 15, "{name} too long");
    name
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and root-namespace interfaces named by this crate whose creating
/// process no longer exists (left behind by a SIGKILLed test run). Returns what it removed.
/// Objects of live processes are never touched.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let list = ip(&["netns", "list"])?;
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        // Exactly `mtcp-<decimal pid>-<decimal counter>`; anything else is not ours.
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| {
            let (pid, n) = rest.split_once('-')?;
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (digits(pid) && digits(n)).then(|| pid.parse::<u32>().ok())?
        }) else {
            continue;
        };
        if !pid_alive(pid) && ip(&["netns", "delete", name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(IFNAME_PREFIX) else {
                continue;
            };
            // Exactly `mt<1-6 hex pid>-<counter hex + tag, 1-6 lowercase alphanumerics>`.
            let Some((pid_hex, tail)) = rest.split_once('-') else {
                continue;
            };
            let hex = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            let tail_ok = (1..=6).contains(&tail.len())
                && tail
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
            if !(1..=6).contains(&pid_hex.len()) || !hex(pid_hex) || !tail_ok {
                continue;
            }
            let Ok(pid) = u32::from_str_radix(pid_hex, 16) else {
                continue;
            };
            if !pid_alive(pid) && ip(&["link", "delete", &name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    Ok(removed)
}
