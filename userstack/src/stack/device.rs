//! The smoltcp `Device` of the control interface, which answers what no connection takes (a
//! reset for a segment no connection wants, ICMP echo): a received packet is handed in as is,
//! and what smoltcp sends goes straight into an Ethernet frame of the link (`Net::send_ip`).

use smoltcp::phy::{Device, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::link::Link;
use crate::net::{Micros, Net};

/// The link as the control interface sees it.
pub(super) struct IpDev<'a, L: Link> {
    pub(super) rx: Option<&'a [u8]>,
    pub(super) net: &'a mut Net<L>,
    pub(super) now: Micros,
    pub(super) caps: &'a DeviceCapabilities,
}

pub(super) struct IpRx<'a>(&'a [u8]);

pub(super) struct IpTx<'a, L: Link> {
    net: &'a mut Net<L>,
    now: Micros,
}

impl smoltcp::phy::RxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<L: Link> smoltcp::phy::TxToken for IpTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.net.send_ip(self.now, len, None, f)
    }
}

impl<L: Link> Device for IpDev<'_, L> {
    type RxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = IpTx<'b, L>
    where
        Self: 'b;

    fn receive(&mut self, _ts: Instant) -> Option<(IpRx<'_>, IpTx<'_, L>)> {
        let data = self.rx.take()?;
        Some((
            IpRx(data),
            IpTx {
                net: self.net,
                now: self.now,
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<IpTx<'_, L>> {
        Some(IpTx {
            net: self.net,
            now: self.now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// Only used to hand capabilities to `Interface::new`.
pub(super) struct CapsDev(pub(super) DeviceCapabilities);

impl Device for CapsDev {
    type RxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = IpRx<'b>
    where
        Self: 'b;
    fn receive(&mut self, _: Instant) -> Option<(IpRx<'_>, IpRx<'_>)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<IpRx<'_>> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        self.0.clone()
    }
}

impl smoltcp::phy::TxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _len: usize, _f: F) -> R {
        unreachable!("CapsDev never hands out tokens")
    }
}
