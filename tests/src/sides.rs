//! A server on the kernel or under the shim, with its client in a namespace ([`Side`]): the
//! two runs of a side-by-side test. Kernel: the server in a namespace of its own, over a veth
//! pair to the client's namespace. Shim: the server in the root namespace under
//! `LD_PRELOAD=libmtcpshim.so` over net_af_packet on the veth's root end. The same addresses on
//! both (.2 server, .1 client). Everything goes when the `Side` is dropped.

use crate::redis::shim_lib;
use crate::{Netns, ServerBuilder, ServerProcess, Subnet, VethPair};

pub struct Side {
    /// The client's namespace.
    pub cns: Netns,
    /// The server's namespace (the kernel's side only).
    pub sns: Option<Netns>,
    pub veth: VethPair,
    pub subnet: Subnet,
    /// The server's port (`base` + the subnet's index: unique per test process).
    pub port: u16,
}

impl Side {
    /// The kernel's side (`shim` false) or the shim's, the server's port from `base`.
    pub fn new(shim: bool, base: u16) -> Side {
        let subnet = Subnet::allocate().expect("subnet");
        let cns = Netns::new().expect("netns");
        let sns = (!shim).then(|| Netns::new().expect("netns"));
        let veth = match &sns {
            Some(sns) => VethPair::between(sns, &subnet.cidr(2), &cns, &subnet.cidr(1)),
            None => VethPair::new(&cns, &subnet.cidr(1)),
        }
        .expect("veth");
        let port = base + subnet.index();
        Side {
            cns,
            sns,
            veth,
            subnet,
            port,
        }
    }

    /// "kernel" or "shim".
    pub fn name(&self) -> &'static str {
        if self.sns.is_some() {
            "kernel"
        } else {
            "shim"
        }
    }

    pub fn is_shim(&self) -> bool {
        self.sns.is_none()
    }

    /// The server's address.
    pub fn addr(&self) -> String {
        self.subnet.addr(2).to_string()
    }

    /// A server command (`argv`) on this side: under the shim with MTCP_PORTS = the port.
    pub fn server(&self, argv: &[String]) -> ServerBuilder {
        match &self.sns {
            Some(sns) => ServerProcess::builder_in(sns, &argv[0]),
            None => ServerProcess::builder(&argv[0])
                .env("LD_PRELOAD", shim_lib())
                .env("MTCP_PORTS", self.port.to_string())
                .env("MTCP_DEV", format!("af_packet:{}", self.veth.root_if()))
                .env("MTCP_ADDR", self.subnet.cidr(2)),
        }
        .args(&argv[1..])
    }

    /// Under the shim: waits until `server`'s stack runs (on af_packet it starts when the
    /// server first serves its listener). Nothing to wait for on the kernel's side.
    pub fn wait_stack(&self, server: &mut ServerProcess) {
        if self.is_shim() {
            crate::redis::wait_stack(server);
        }
    }
}
