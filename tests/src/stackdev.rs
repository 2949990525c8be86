//! The device under any server run with `LD_PRELOAD=libmtcpshim.so` ([`StackDevice`]): what
//! each [`Dev`] needs on the kernel's side, set up as [`crate::redis::RedisBed`] does for
//! redis-server, for programs that print their own ready line (`stack-seq`). The stack has
//! address .2 and its peer .1 of one subnet on every device: the peer's end is in the clients'
//! namespace (the veth's namespace end, or the tap itself once the server listens), so clients
//! see the same addresses whatever the device.

use std::path::PathBuf;

use crate::redis::{memif_spec, start_bridge, Dev, TempDir};
use crate::{unique_ifname, Netns, Result, ServerProcess, VethPair};

/// One device for one server. Create it before the server (whose environment takes
/// [`StackDevice::mtcp_dev`]), call [`StackDevice::attach`] once the server listens, and drop it
/// after the server (declare it first): the bridge stops, then the veth pair and the directory
/// go.
pub struct StackDevice {
    pub dev: Dev,
    /// `mtcp-faultbridge` of a [`Dev::Memif`] device, once attached.
    bridge: Option<ServerProcess>,
    veth: Option<VethPair>,
    /// The tap's name ([`Dev::Tap`]): the stack's PMD creates it in the root namespace.
    tap: Option<String>,
    dir: TempDir,
}

impl StackDevice {
    /// What `dev` needs before the server starts, its peer's end in `ns` with `peer_cidr` (the
    /// tap's end only once [`StackDevice::attach`] moves it there).
    pub fn new(dev: Dev, ns: &Netns, peer_cidr: &str) -> Result<StackDevice> {
        let (veth, tap) = match dev {
            Dev::Tap => (None, Some(unique_ifname("s"))),
            Dev::AfPacket | Dev::AfXdp | Dev::Memif => (Some(VethPair::new(ns, peer_cidr)?), None),
        };
        Ok(StackDevice {
            dev,
            bridge: None,
            veth,
            tap,
            dir: TempDir::new("stackdev"),
        })
    }

    fn memif_socket(&self) -> PathBuf {
        self.dir.path().join("memif.sock")
    }

    fn root_if(&self) -> &str {
        self.veth.as_ref().expect("a veth-backed device").root_if()
    }

    /// The kernel's interface of the device (the veth's root end, or the tap): for its counters.
    pub fn kernel_if(&self) -> &str {
        match &self.tap {
            Some(t) => t,
            None => self.root_if(),
        }
    }

    /// The server's `MTCP_DEV`.
    pub fn mtcp_dev(&self) -> String {
        match self.dev {
            Dev::Tap => format!("tap:{}", self.tap.as_deref().expect("a tap's name")),
            Dev::AfPacket => format!("af_packet:{}", self.root_if()),
            Dev::AfXdp => format!("af_xdp:{}", self.root_if()),
            Dev::Memif => memif_spec(&self.memif_socket(), "server", None),
        }
    }

    /// Once the server listens (its port has started): the tap moves into `ns` with `peer_cidr`;
    /// memif's bridge connects to the server's memif socket and forwards to the veth pair. The
    /// other devices need nothing.
    pub fn attach(
        &mut self,
        ns: &Netns,
        peer_cidr: &str,
        server: &mut ServerProcess,
    ) -> Result<()> {
        match self.dev {
            Dev::Tap => ns.adopt_link(self.tap.as_deref().expect("a tap's name"), peer_cidr)?,
            Dev::Memif => {
                let b = start_bridge(self.root_if(), &self.memif_socket(), None, server);
                self.bridge = Some(b);
            }
            Dev::AfPacket | Dev::AfXdp => {}
        }
        Ok(())
    }

    /// For assertion messages: the bridge's state and output, if there is one.
    pub fn diagnostics(&mut self) -> String {
        match &mut self.bridge {
            Some(b) => format!("--- bridge ---\n{}", b.diagnostics()),
            None => String::new(),
        }
    }
}
