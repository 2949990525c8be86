//! The smoltcp `Device` every connection's interface (and the control interface) receives and
//! sends through: a received packet is handed in as is, and what smoltcp sends goes straight
//! into an Ethernet frame of the link (`Net::send_ip`), with the TCP checksum filled in here.

use smoltcp::phy::{Device, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::link::Link;
use crate::net::{Micros, Net, TxTrack};

/// The part of the stack every connection's interface sends through.
pub(super) struct IpDev<'a, L: Link> {
    pub(super) rx: Option<&'a [u8]>,
    pub(super) net: &'a mut Net<L>,
    pub(super) now: Micros,
    pub(super) track: Option<&'a mut TxTrack>,
    pub(super) caps: &'a DeviceCapabilities,
    /// IP_TOS of what the connection sends (0: as smoltcp writes it, 0).
    pub(super) tos: u8,
}

pub(super) struct IpRx<'a>(&'a [u8]);

pub(super) struct IpTx<'a, L: Link> {
    net: &'a mut Net<L>,
    now: Micros,
    track: Option<&'a mut TxTrack>,
    /// smoltcp leaves the TCP checksum to the "device" (connection interfaces): compute it.
    fill_tcp_checksum: bool,
    tos: u8,
}

impl smoltcp::phy::RxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<L: Link> smoltcp::phy::TxToken for IpTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.tos != 0 {
            // IP_TOS: smoltcp writes 0 and its IPv4 checksum; the byte and the checksum anew.
            let fill_tcp = self.fill_tcp_checksum;
            let tos = self.tos;
            return self.net.send_ip(self.now, len, self.track, |ip| {
                let r = f(ip);
                if ip.len() >= 20 && ip[0] >> 4 == 4 {
                    ip[1] = tos;
                    let ihl = usize::from(ip[0] & 0xf) * 4;
                    crate::csum::fill_ipv4_header_checksum(&mut ip[..ihl.min(len)]);
                }
                if fill_tcp {
                    crate::csum::fill_tcp_checksum(ip);
                }
                r
            });
        }
        if self.fill_tcp_checksum {
            self.net.send_ip(self.now, len, self.track, |ip| {
                let r = f(ip);
                crate::csum::fill_tcp_checksum(ip);
                r
            })
        } else {
            self.net.send_ip(self.now, len, self.track, f)
        }
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
                track: self.track.as_deref_mut(),
                fill_tcp_checksum: !self.caps.checksum.tcp.tx(),
                tos: self.tos,
            },
        ))
    }

    fn transmit(&mut self, _ts: Instant) -> Option<IpTx<'_, L>> {
        Some(IpTx {
            net: self.net,
            now: self.now,
            track: self.track.as_deref_mut(),
            fill_tcp_checksum: !self.caps.checksum.tcp.tx(),
            tos: self.tos,
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
