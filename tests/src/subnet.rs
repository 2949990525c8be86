//! Address allocation: one /24 of 198.18.0.0/15 per test ([`Subnet`]), unique across
//! concurrently running test processes.

use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};

use crate::names::next_id;
use crate::{bail, Context, Result};

/// One /24 out of 198.18.0.0/15 (512 of them), reserved for the lifetime of this value.
///
/// The reservation is a bound abstract unix socket `@mtcp-tests-subnet-<i>`: the kernel makes
/// it unique machine-wide (per network namespace, and all test processes live in the root
/// one) and releases it when the process dies, so parallel test processes never share a
/// subnet and nothing needs cleaning up. The first candidate is derived from pid + counter.
#[derive(Debug)]
pub struct Subnet {
    index: u16,
    _lock: UnixListener,
}

impl Subnet {
    /// Number of /24 subnets in 198.18.0.0/15.
    pub const COUNT: u16 = 512;

    pub fn allocate() -> Result<Subnet> {
        let start = std::process::id()
            .wrapping_mul(97)
            .wrapping_add(next_id().wrapping_mul(13)) as usize;
        for k in 0..Self::COUNT as usize {
            let index = ((start + k) % Self::COUNT as usize) as u16;
            let addr = UnixAddr::from_abstract_name(format!("mtcp-tests-subnet-{index}"))
                .context("abstract socket address")?;
            if let Ok(l) = UnixListener::bind_addr(&addr) {
                return Ok(Subnet { index, _lock: l });
            }
        }
        bail!(
            "all {} /24 subnets of 198.18.0.0/15 are in use",
            Self::COUNT
        )
    }

    /// Index 0..512 of this /24 inside 198.18.0.0/15.
    pub fn index(&self) -> u16 {
        self.index
    }

    /// `198.18.X.host` (or `198.19.X.host`).
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(
            198,
            18 + (self.index / 256) as u8,
            (self.index % 256) as u8,
            host,
        )
    }

    /// `"198.18.X.host/24"`, ready for `ip addr add`.
    pub fn cidr(&self, host: u8) -> String {
        format!("{}/24", self.addr(host))
    }

    /// `"198.18.X.0/24"`.
    pub fn network(&self) -> String {
        self.cidr(0)
    }
}
