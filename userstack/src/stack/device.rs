//! The smoltcp `Device` every connection's interface (and the control interface) receives and
//! sends through: a received packet is handed in as is, and what smoltcp sends goes straight
//! into an Ethernet frame of the link (`Net::send_ip`), with the TCP checksum filled in here.

use smoltcp::phy::{Device, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::link::Link;
use crate::net::{Micros, Net, TxTrack};

/// SO_RCVBUF lowered on an established connection, or TCP_WINDOW_CLAMP: the window its
/// segments offer is at most what that buffer has room for, and at most the clamp (smoltcp's
/// own window comes from its larger buffer), never moving the right edge offered before back
/// (RFC 9293 3.8.6.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WinClamp {
    /// The buffer's size.
    pub(super) cap: u32,
    /// TCP_WINDOW_CLAMP: the most any window offers.
    pub(super) window: Option<u32>,
    /// Room in it now (`cap` less what waits to be read, at most `window`), set before each
    /// poll.
    pub(super) room: u32,
    /// The window scale our SYN-ACK announced.
    pub(super) shift: u8,
    /// Sequence number of the right edge last offered.
    pub(super) edge: Option<u32>,
    /// A read made room: the peer is to be told (`Conn::window_nudge`).
    pub(super) nudge: bool,
}

impl WinClamp {
    /// Lowers the window of the TCP segment in `ip` (an ACK, not a SYN or RST) to the room,
    /// and records the edge it offers. The TCP checksum is filled afterwards.
    fn apply(&mut self, ip: &mut [u8]) {
        let ihl = usize::from(ip[0] & 0xf) * 4;
        if ip.len() < ihl + 20 || ip[9] != 6 {
            return;
        }
        let t = &mut ip[ihl..];
        let flags = t[13];
        if flags & 0x10 == 0 || flags & 0x06 != 0 {
            return;
        }
        let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
        let field = u16::from_be_bytes([t[14], t[15]]);
        let unit = 1u32 << self.shift;
        let floor = self
            .edge
            .map_or(0, |e| (e.wrapping_sub(ack) as i32).max(0) as u32);
        let want = (u32::from(field) << self.shift).min(self.room).max(floor);
        let new = u16::try_from(want.div_ceil(unit))
            .unwrap_or(u16::MAX)
            .min(field);

        t[14..16].copy_from_slice(&new.to_be_bytes());
        self.edge = Some(ack.wrapping_add(u32::from(new) << self.shift));
    }
}

/// The part of the stack every connection's interface sends through.
pub(super) struct IpDev<'a, L: Link> {
    pub(super) rx: Option<&'a [u8]>,
    pub(super) net: &'a mut Net<L>,
    pub(super) now: Micros,
    pub(super) track: Option<&'a mut TxTrack>,
    pub(super) caps: &'a DeviceCapabilities,
    /// IP_TOS of what the connection sends (0: as smoltcp writes it, 0).
    pub(super) tos: u8,
    /// The connection's lowered receive buffer, if SO_RCVBUF lowered it.
    pub(super) win: Option<&'a mut WinClamp>,
}

pub(super) struct IpRx<'a>(&'a [u8]);

pub(super) struct IpTx<'a, L: Link> {
    net: &'a mut Net<L>,
    now: Micros,
    track: Option<&'a mut TxTrack>,
    /// smoltcp leaves the TCP checksum to the "device" (connection interfaces): compute it.
    fill_tcp_checksum: bool,
    tos: u8,
    win: Option<&'a mut WinClamp>,
}

impl smoltcp::phy::RxToken for IpRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl<L: Link> smoltcp::phy::TxToken for IpTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.tos != 0 || self.win.is_some() {
            // IP_TOS: smoltcp writes 0 and its IPv4 checksum; the byte and the checksum anew.
            // A lowered receive buffer: the window. The TCP checksum after both.
            let fill_tcp = self.fill_tcp_checksum;
            let tos = self.tos;
            let mut win = self.win;
            return self.net.send_ip(self.now, len, self.track, |ip| {
                let r = f(ip);
                if ip.len() >= 20 && ip[0] >> 4 == 4 {
                    if tos != 0 {
                        ip[1] = tos;
                        let ihl = usize::from(ip[0] & 0xf) * 4;
                        crate::csum::fill_ipv4_header_checksum(&mut ip[..ihl.min(len)]);
                    }
                    if let Some(w) = win.as_mut() {
                        w.apply(ip);
                    }
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
                win: self.win.as_deref_mut(),
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
            win: self.win.as_deref_mut(),
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
