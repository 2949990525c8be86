//! Network interfaces: veth pairs ([`VethPair`]) between the root namespace (where DPDK takes
//! an end) or a namespace and another namespace, and [`LinkGuard`] for an interface someone
//! else created (a net_tap). Both delete their interface on drop.

use std::path::Path;
use std::process::{Command, Output};

use crate::command::{ip, run_checked};
use crate::names::unique_ifname;
use crate::{Context, Netns, Result};

/// Deletes a root-namespace interface on drop (if it still exists there).
#[derive(Debug)]
pub struct LinkGuard {
    name: String,
}

impl LinkGuard {
    pub fn new(name: impl Into<String>) -> LinkGuard {
        LinkGuard { name: name.into() }
    }
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if Path::new(&format!("/sys/class/net/{}", self.name)).exists() {
            if let Err(e) = ip(&["link", "delete", "dev", &self.name]) {
                eprintln!("mtcp-tests: cannot delete link {}: {e:#}", self.name);
            }
        }
    }
}

/// A veth pair; deleted on drop (deleting either end removes both).
#[derive(Debug)]
pub struct VethPair {
    a: String,
    b: String,
    /// Namespace each end currently lives in (`None` = root namespace).
    a_ns: Option<String>,
    b_ns: Option<String>,
}

impl VethPair {
    /// Root end (no address, for a DPDK af_packet/af_xdp PMD) + an end inside `ns` with
    /// `ns_cidr`. Both ends up, TX checksum/TSO/GSO offloads off on both, IPv6 off.
    pub fn new(ns: &Netns, ns_cidr: &str) -> Result<VethPair> {
        let v = Self::for_dpdk(ns)?;
        ns.configure_end(&v.b.clone(), ns_cidr, true)?;
        Ok(v)
    }

    /// A pair with its root end ready for DPDK (up, no IPv6, offloads off) and its other end in
    /// `ns`, not configured.
    fn for_dpdk(ns: &Netns) -> Result<VethPair> {
        let mut v = Self::create()?;
        v.move_b(ns)?;
        let root = v.a.clone();
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{root}/disable_ipv6"), "1");
        run_checked(
            Command::new("ethtool").args(["-K", &root, "tx", "off", "tso", "off", "gso", "off"]),
        )
        .with_context(|| format!("disabling offloads on {root}"))?;
        ip(&["link", "set", "dev", &root, "up"])?;
        Ok(v)
    }

    /// Both ends in namespaces (kernel-to-kernel self-tests): end A in `a` with `a_cidr`,
    /// end B in `b` with `b_cidr`.
    pub fn between(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> Result<VethPair> {
        let mut v = Self::create()?;
        v.move_b(b)?;
        ip(&["link", "set", "dev", &v.a, "netns", a.name()])
            .with_context(|| format!("moving {} into {}", v.a, a.name()))?;
        v.a_ns = Some(a.name().to_string());
        a.configure_end(&v.a.clone(), a_cidr, true)?;
        b.configure_end(&v.b.clone(), b_cidr, true)?;
        Ok(v)
    }

    fn create() -> Result<VethPair> {
        let base = unique_ifname("");
        let (a, b) = (format!("{base}r"), format!("{base}n"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])
            .with_context(|| format!("creating veth pair {a}/{b}"))?;
        Ok(VethPair {
            a,
            b,
            a_ns: None,
            b_ns: None,
        })
    }

    fn move_b(&mut self, ns: &Netns) -> Result<()> {
        ip(&["link", "set", "dev", &self.b, "netns", ns.name()])
            .with_context(|| format!("moving {} into {}", self.b, ns.name()))?;
        self.b_ns = Some(ns.name().to_string());
        Ok(())
    }

    /// End A: in the root namespace for [`VethPair::new`] (give it to DPDK).
    pub fn root_if(&self) -> &str {
        &self.a
    }

    /// End B: the one inside the namespace passed to [`VethPair::new`].
    pub fn ns_if(&self) -> &str {
        &self.b
    }
}

fn delete_link_in(ns: &Option<String>, name: &str) -> Result<Output> {
    match ns {
        None => ip(&["link", "delete", "dev", name]),
        Some(n) => ip(&["-n", n, "link", "delete", "dev", name]),
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        // If the namespace holding an end was deleted first, the kernel already destroyed the
        // pair and both attempts fail harmlessly.
        if delete_link_in(&self.a_ns, &self.a).is_err() {
            let _ = delete_link_in(&self.b_ns, &self.b);
        }
    }
}

/// A bridge inside a namespace, with an address there: the namespace's kernel reaches every
/// device on it. [`Bridge::port`] adds a veth pair whose root end is for DPDK and whose other
/// end is a port of the bridge, so several stacks (one per root end) reach each other and the
/// namespace. Deleted on drop (its ports with their pairs' own drop).
#[derive(Debug)]
pub struct Bridge {
    ns: String,
    name: String,
}

impl Bridge {
    pub fn new(ns: &Netns, cidr: &str) -> Result<Bridge> {
        let name = unique_ifname("");
        ns.ip(&["link", "add", &name, "type", "bridge"])
            .with_context(|| format!("creating bridge {name} in {}", ns.name()))?;
        let b = Bridge {
            ns: ns.name().to_string(),
            name,
        };
        ns.configure_end(&b.name, cidr, false)?;
        Ok(b)
    }

    /// A new port: the pair's root end ([`VethPair::root_if`]) is for a DPDK PMD.
    pub fn port(&self, ns: &Netns) -> Result<VethPair> {
        let v = VethPair::for_dpdk(ns)?;
        let end = v.b.clone();
        let ctx = || format!("adding {end} to bridge {}", self.name);
        ns.exec_checked(
            "ethtool",
            ["-K", &end, "tx", "off", "tso", "off", "gso", "off"],
        )
        .with_context(ctx)?;
        ns.ip(&["link", "set", "dev", &end, "master", &self.name])
            .with_context(ctx)?;
        ns.ip(&["link", "set", "dev", &end, "up"])
            .with_context(ctx)?;
        Ok(v)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = delete_link_in(&Some(self.ns.clone()), &self.name);
    }
}
