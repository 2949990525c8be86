//! The started port: [`DpdkLink`] starts and configures it, and is the stack's
//! [`Link`]: receive bursts, mbufs to transmit, one transmit burst per poll and the backlog of
//! what the device's ring had no room for.

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::ptr::NonNull;

use dpdk_sys as sys;

use super::eal::{device_args, eal_args, eal_lcores, start_eal, StartInfo};
use super::log::{self, QuietRtSignals};
use super::mbuf::Mbuf;
use super::memif_wake::{MemifWake, WAKE_CAP};
use super::netdev::{set_kernel_addr, set_tx_queue_len, TAP_QUEUE_LEN};
use super::signals::{signals_on, RtSignalsTaken};
use super::wake::{attach_filter, packet_socket_fds, xdp_socket_fds, PacketWake};
use super::{fail, rte_err, StartError};
use crate::config::{Config, DevSpec};
use crate::link::{Link, LinkCounters};

const TX_BATCH: usize = 64;
/// Received mbufs freed per call of `rte_pktmbuf_free_bulk`.
const RX_RELEASE_MAX: usize = 64;
/// Mbufs taken from the pool in one call for frames to send (`tx_alloc`).
const TX_SPARE: usize = 16;
/// At most this many spare mbufs are kept (received frames' mbufs, `rx_release`).
const SPARE_MAX: usize = 64;
/// A transmit backlog the device took nothing of for this long is dropped (while frames wait
/// the loop polls without sleeping; a memif peer that went away would keep it polling).
const BACKLOG_GIVE_UP: std::time::Duration = std::time::Duration::from_millis(500);
const RING_SIZE: u16 = 1024;
const MBUF_CACHE: u32 = 256;

/// A started DPDK port.
pub struct DpdkLink {
    packet_wake: Option<PacketWake>,
    /// net_memif with a stack of ours at the other end: wake-ups each side gives the other.
    memif_wake: Option<MemifWake>,
    port: u16,
    pool: NonNull<sys::rte_mempool>,
    mac: [u8; 6],
    mtu: usize,
    wake_fd: Option<RawFd>,
    rx_burst: [*mut sys::rte_mbuf; 64],
    tx: [*mut sys::rte_mbuf; TX_BATCH],
    ntx: usize,
    /// Reset mbufs, handed out from the end, one per frame to send: received frames' mbufs
    /// once the stack is done with them (`rx_release`), else TX_SPARE at a time from the
    /// pool. A request's mbuf carries its reply: a free and an allocation less per request
    /// (each ~40-65 instructions, most of it finding the pool's per-lcore cache).
    spare: [*mut sys::rte_mbuf; SPARE_MAX],
    nspare: usize,
    /// Frames the device's transmit ring had no room for, oldest first (see `tx_flush`).
    backlog: VecDeque<*mut sys::rte_mbuf>,
    /// At most this many (a quarter of the mbuf pool: receiving needs mbufs too).
    backlog_cap: usize,
    /// Since when the backlog has waited without the device taking a frame of it.
    backlog_since: Option<std::time::Instant>,
    /// The device took nothing for BACKLOG_GIVE_UP: no backlog (frames it refuses are dropped
    /// at once, as before) until it takes a frame again.
    stalled: bool,
    tx_delayed: u64,
    /// Frames the device's ring took (`Link::tx_taken`).
    tx_taken: u64,
    tx_ring_full: u64,
    rx_multiseg: u64,
    /// The EAL's lcores: the only mempool caches that can hold mbufs (`pool_in_use`).
    lcores: Vec<u32>,
    /// net_memif: its link word says whether a peer is connected (`Link::link_down`). Other
    /// drivers are not asked: a PCI NIC's link_update reads registers, and net_tap says down
    /// when its netdev is in another namespace while frames flow.
    link_is_peer: bool,
    /// Bursts take the interrupt thread's fence (`fence::needs_fence`).
    fenced: bool,
    /// net_af_packet: the PMD's packet sockets (found by what the port's start opened), where
    /// `steer` attaches its filter.
    rx_sockets: Vec<RawFd>,
    pub info: StartInfo,
}

// SAFETY: the port and pool are process-wide DPDK objects; a DpdkLink is used by one thread at a
// time (the owner of the stack, behind its lock).
unsafe impl Send for DpdkLink {}

impl DpdkLink {
    /// Starts the EAL and the configured port. Call once per process, after main() started.
    pub fn start(cfg: &Config) -> Result<DpdkLink, StartError> {
        crate::config::preflight(cfg).map_err(StartError)?;
        let (args, huge) = eal_args(cfg)?;
        let (_, port_name) = device_args(&cfg.dev);
        // DPDK's messages: printed if MTCP_LOG asks, else shown only if the start fails.
        log::capture(cfg.log_given);
        let link = Self::start_port(cfg, args, huge, port_name);
        log::start_over(link.is_err());
        link
    }

    fn start_port(
        cfg: &Config,
        args: Vec<String>,
        huge: bool,
        port_name: String,
    ) -> Result<DpdkLink, StartError> {
        // net_tap receives without a signal if it finds no free real-time signal while it opens
        // its fds (at probe, in the EAL's start, and at queue setup): signals.rs.
        let tap = port_name.starts_with("net_tap") || port_name.starts_with("net_tun");
        let no_signals = tap.then(|| (RtSignalsTaken::take(), QuietRtSignals::new()));
        let is_packet = matches!(cfg.dev, DevSpec::AfPacket { .. });
        // af_packet's wake-up socket is bound before the PMD's sockets: the kernel hands a
        // frame to an interface's packet sockets newest first, so the PMD's ring holds each
        // frame before the wake-up's filter reads whether the stack sleeps. Bound after them,
        // a frame could pass the filter while the stack ran its last poll and reach the ring
        // only after it (or be queued and drained just before that poll), and the stack slept
        // on it until its next timer (PacketWake::arm).
        let packet_wake = match cfg.dev.kernel_iface().filter(|_| is_packet) {
            Some(iface) => match PacketWake::open(iface) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(
                        "no wake-up fd on {iface} ({e}): idle loops will sleep and poll"
                    );
                    None
                }
            },
            None => None,
        };
        let packet_before = if is_packet {
            packet_socket_fds()
        } else {
            Vec::new()
        };
        start_eal(&args)?;
        let info = StartInfo {
            eal_args: args,
            hugepages: huge,
            port_name: port_name.clone(),
        };
        let name = CString::new(port_name.clone()).expect("no NUL in port names");
        let mut port = 0u16;
        // SAFETY: name is a valid C string, port a valid out pointer.
        if unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut port) } != 0 {
            return fail(format!(
                "MTCP_DEV={}: DPDK created no port named {port_name} (is the driver for it linked? see docs/troubleshooting.md)",
                cfg.dev.describe()
            ));
        }
        let pool_name = CString::new("mtcp_mbufs").expect("static");
        // net_af_xdp (22.11) registers the pool as its UMEM assuming the objects lie packed
        // from the pool's first page: populated_size * object size bytes. A default pool
        // skips to the next 2 MB page wherever an object would cross one (and may span
        // several chunks), so its last mbufs lie past that end: the kernel counts every frame
        // in them as an invalid TX descriptor and drops it silently (tx_invalid_descs), and
        // under load the stack's frames came mostly from there (transfers stalled on
        // retransmissions). For af_xdp the pool is packed (no IOVA-contiguous objects, which
        // af_xdp does not need) and must be one chunk.
        let packed = matches!(cfg.dev, DevSpec::AfXdp { .. });
        // SAFETY: valid arguments; DPDK returns NULL and sets rte_errno on failure.
        let pool = unsafe {
            if packed {
                packed_pool(&pool_name, cfg.mbufs)
            } else {
                sys::rte_pktmbuf_pool_create(
                    pool_name.as_ptr(),
                    cfg.mbufs,
                    MBUF_CACHE,
                    0,
                    sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                    sys::rte_socket_id() as i32,
                )
            }
        };
        let Some(pool) = NonNull::new(pool) else {
            return fail(format!(
                "cannot create a pool of {} mbufs: {} (lower MTCP_MBUFS or raise MTCP_MEM_MB / reserve hugepages)",
                cfg.mbufs,
                rte_err(sys::rte_errno())
            ));
        };
        let is_tap = matches!(cfg.dev, DevSpec::Tap { .. });
        let is_xdp = matches!(cfg.dev, DevSpec::AfXdp { .. });
        let xsk_before = if is_xdp { xdp_socket_fds() } else { Vec::new() };
        let mut link = DpdkLink {
            port,
            pool,
            mac: [0; 6],
            mtu: 1500,
            wake_fd: None,
            rx_burst: [std::ptr::null_mut(); 64],
            tx: [std::ptr::null_mut(); TX_BATCH],
            ntx: 0,
            spare: [std::ptr::null_mut(); SPARE_MAX],
            nspare: 0,
            backlog: VecDeque::new(),
            backlog_cap: cfg.mbufs as usize / 4,
            backlog_since: None,
            stalled: false,
            tx_delayed: 0,
            tx_taken: 0,
            tx_ring_full: 0,
            rx_multiseg: 0,
            lcores: eal_lcores(),
            link_is_peer: port_name.starts_with("net_memif"),
            fenced: super::fence::needs_fence(&port_name),
            info,
            packet_wake: None,
            memif_wake: None,
            rx_sockets: Vec::new(),
        };
        // Bound before the port starts: by the time a peer sees the link up, it can wake us.
        if let DevSpec::Memif { socket, server, .. } = &cfg.dev {
            match MemifWake::open(socket, *server) {
                Ok(w) => link.memif_wake = Some(w),
                Err(e) => tracing::warn!(
                    "no wake-up sockets beside {socket} ({e}): idle loops will sleep and poll"
                ),
            }
        }
        link.configure(is_tap, cfg)?;
        drop(no_signals);
        if is_packet {
            link.rx_sockets = packet_socket_fds()
                .into_iter()
                .filter(|fd| !packet_before.contains(fd))
                .collect();
        }
        if let Some(fd) = link.wake_fd.filter(|&fd| tap && signals_on(fd)) {
            tracing::warn!(fd, "net_tap's queue fd asks for signals (O_ASYNC)");
        }
        if is_xdp {
            // The PMD's AF_XDP socket: poll() on it reports POLLIN while its receive ring
            // holds frames (level-triggered), which is the wake-up we need. An AF_PACKET
            // socket would never see a frame: XDP redirects them before any packet tap.
            let new: Vec<RawFd> = xdp_socket_fds()
                .into_iter()
                .filter(|fd| !xsk_before.contains(fd))
                .collect();
            match new[..] {
                [fd] => link.wake_fd = Some(fd),
                _ => tracing::warn!(
                    sockets = new.len(),
                    "cannot tell net_af_xdp's socket: idle loops will sleep and poll"
                ),
            }
        } else if let Some(w) = packet_wake {
            link.wake_fd = Some(w.fd);
            link.packet_wake = Some(w);
        }
        Ok(link)
    }

    fn configure(&mut self, rx_intr: bool, cfg: &Config) -> Result<(), StartError> {
        let dev = cfg.dev.describe();
        let port = self.port;
        // SAFETY: plain-data structs filled in by DPDK; port id valid.
        unsafe {
            let mut info: sys::rte_eth_dev_info = std::mem::zeroed();
            let rc = sys::rte_eth_dev_info_get(port, &mut info);
            if rc != 0 {
                return fail(format!(
                    "MTCP_DEV={dev}: cannot query the port: {}",
                    rte_err(rc)
                ));
            }
            if info.max_mtu < 1500 {
                self.mtu = usize::from(info.max_mtu);
            }
            let mut conf: sys::rte_eth_conf = std::mem::zeroed();
            conf.rxmode.mtu = self.mtu as u32;
            // Checksums are computed and verified in software by the stack (once per
            // direction); virtual devices would compute them in software too. The one offload
            // taken when offered: freeing transmitted mbufs without refcount checks (all ours
            // come from one pool with refcount 1).
            let fast_free = sys::RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
            if info.tx_offload_capa & fast_free != 0 {
                conf.txmode.offloads |= fast_free;
            }
            if rx_intr {
                conf.intr_conf.set_rxq(1);
            }
            let rc = sys::rte_eth_dev_configure(port, 1, 1, &conf);
            if rc != 0 {
                return fail(format!(
                    "MTCP_DEV={dev}: cannot configure the port: {}",
                    rte_err(rc)
                ));
            }
            let (mut nrx, mut ntx) = (RING_SIZE, RING_SIZE);
            sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut nrx, &mut ntx);
            let socket = sys::rte_eth_dev_socket_id(port);
            let socket = if socket < 0 {
                sys::rte_socket_id() as i32
            } else {
                socket
            };
            let rc = sys::rte_eth_rx_queue_setup(
                port,
                0,
                nrx,
                socket as u32,
                std::ptr::null(),
                self.pool.as_ptr(),
            );
            if rc != 0 {
                return fail(format!(
                    "MTCP_DEV={dev}: cannot set up the receive queue: {}",
                    rte_err(rc)
                ));
            }
            let mut txconf = info.default_txconf;
            txconf.offloads = conf.txmode.offloads;
            let rc = sys::rte_eth_tx_queue_setup(port, 0, ntx, socket as u32, &txconf);
            if rc != 0 {
                return fail(format!(
                    "MTCP_DEV={dev}: cannot set up the transmit queue: {}",
                    rte_err(rc)
                ));
            }
            let rc = sys::rte_eth_dev_start(port);
            if rc != 0 {
                return fail(format!(
                    "MTCP_DEV={dev}: cannot start the port: {}",
                    rte_err(rc)
                ));
            }
            let mut mac: sys::rte_ether_addr = std::mem::zeroed();
            sys::rte_eth_macaddr_get(port, &mut mac);
            self.mac = mac.addr_bytes;
            // The stack may use a MAC of its own (always on net_tap, whose kernel side has the
            // port's MAC): receive everything, the stack filters by its own address.
            if cfg.stack_mac().is_some_and(|m| m != self.mac) {
                let rc = sys::rte_eth_promiscuous_enable(port);
                if rc != 0 {
                    return fail(format!(
                        "MTCP_DEV={dev}: MTCP_MAC differs from the port's MAC but promiscuous mode failed: {}",
                        rte_err(rc)
                    ));
                }
            }
            if rx_intr {
                // net_tap returns -ENOTSUP here but its fd works (level-triggered on the tap fd).
                let _ = sys::rte_eth_dev_rx_intr_enable(port, 0);
                let fd = sys::rte_eth_dev_rx_intr_ctl_q_get_fd(port, 0);
                if fd >= 0 {
                    self.wake_fd = Some(fd);
                }
            }
        }
        // The tap's kernel side queues frames for us in a ring of txqueuelen frames (1000 by
        // default) and drops the rest: too few for thousands of clients' requests arriving at
        // once (redis-benchmark -c 10000: p99 3 s of retransmission timeouts).
        if let DevSpec::Tap { iface } = &cfg.dev {
            if let Err(e) = set_tx_queue_len(iface, TAP_QUEUE_LEN) {
                tracing::warn!(%iface, error = %e, "cannot lengthen the tap's queue");
            }
        }
        if let (DevSpec::Tap { iface }, Some(peer)) = (&cfg.dev, cfg.tap_peer) {
            set_kernel_addr(iface, peer).map_err(|e| {
                StartError(format!(
                    "MTCP_TAP_PEER={peer}: cannot give {iface} that address: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// [`Link::rx_release`] of a burst of at least one frame.
    fn release_burst(&mut self, done: &mut Vec<Mbuf>) {
        // One call for the burst (the pool's cache is found once, where freeing one mbuf at a
        // time cost ~140 instructions each).
        let mut ptrs = [std::ptr::null_mut::<sys::rte_mbuf>(); RX_RELEASE_MAX];
        while !done.is_empty() {
            let n = done.len().min(RX_RELEASE_MAX);
            for (p, m) in ptrs.iter_mut().zip(done.drain(..n)) {
                *p = m.0.as_ptr();
                std::mem::forget(m);
            }
            // SAFETY: `n` mbufs we owned (their `Mbuf`s forgotten above), kept as spares or
            // freed, once; `spare` has room for SPARE_MAX - nspare more.
            let kept = unsafe {
                sys::pktmbuf_recycle(
                    self.pool.as_ptr(),
                    ptrs.as_mut_ptr(),
                    n as u32,
                    self.spare.as_mut_ptr().add(self.nspare),
                    (SPARE_MAX - self.nspare) as u32,
                )
            };
            self.nspare += kept as usize;
        }
    }

    /// [`Link::tx_flush`] with frames queued or waiting.
    fn flush_queued(&mut self) {
        let taken_before = self.tx_taken;
        if !self.backlog.is_empty() {
            self.drain_backlog();
        }
        let mut done = 0;
        if self.backlog.is_empty() {
            // A full ring is retried once at once (the device drains it meanwhile).
            for _ in 0..2 {
                if done == self.ntx {
                    break;
                }
                // SAFETY: tx[done..ntx] are valid mbufs we own.
                done += unsafe {
                    burst(
                        self.port,
                        self.fenced,
                        self.tx.as_mut_ptr().add(done),
                        self.ntx - done,
                    )
                };
            }
            self.tx_taken += done as u64;
            if done > 0 {
                self.stalled = false;
            }
        }
        // What the ring did not take waits, in order, behind what already waits (as a qdisc
        // holds frames for a full driver queue); past the backlog's bound it is counted and
        // freed, and TCP retransmits it.
        for &m in &self.tx[done..self.ntx] {
            if !self.stalled && self.backlog.len() < self.backlog_cap {
                self.backlog.push_back(m);
                self.tx_delayed += 1;
            } else {
                self.tx_ring_full += 1;
                // SAFETY: not sent, still ours.
                unsafe { sys::rte_pktmbuf_free(m) };
            }
        }
        if !self.backlog.is_empty() && self.backlog_since.is_none() {
            self.backlog_since = Some(std::time::Instant::now());
        }
        if self.tx_taken != taken_before {
            if let Some(w) = &self.memif_wake {
                w.notify();
            }
        }
        self.ntx = 0;
    }
}

impl Link for DpdkLink {
    type Rx = Mbuf;
    type Tx = Mbuf;

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) {
        let max = max.min(self.rx_burst.len());
        let fence = self.fenced.then(super::fence::burst);
        // SAFETY: rx_burst has room for max pointers; each returned mbuf is ours to free.
        let n =
            unsafe { sys::rte_eth_rx_burst(self.port, 0, self.rx_burst.as_mut_ptr(), max as u16) };
        drop(fence);
        for &m in &self.rx_burst[..usize::from(n)] {
            let m = Mbuf(NonNull::new(m).expect("rx_burst returns valid mbufs"));
            // SAFETY: valid mbuf.
            let single = unsafe { (*m.0.as_ptr()).nb_segs == 1 };
            if single {
                out.push(m);
            } else {
                // We configure no scatter; a chained frame is larger than our MTU anyway.
                self.rx_multiseg += 1;
            }
        }
    }

    #[inline]
    fn rx_release(&mut self, done: &mut Vec<Mbuf>) {
        // (An empty poll's: nothing, and no call.)
        if !done.is_empty() {
            self.release_burst(done);
        }
    }

    fn tx_alloc(&mut self, len: usize) -> Option<Mbuf> {
        if self.nspare == 0 {
            // SAFETY: the pool is valid and `spare` has room for TX_SPARE pointers, all ours
            // (reset) when the call succeeds; it takes none when it fails.
            let got = unsafe {
                sys::rte_pktmbuf_alloc_bulk(
                    self.pool.as_ptr(),
                    self.spare.as_mut_ptr(),
                    TX_SPARE as u32,
                )
            };
            if got == 0 {
                self.nspare = TX_SPARE;
            }
        }
        // SAFETY: pool is valid; a spare mbuf is a reset one we own; append returns NULL if the
        // tailroom is too small.
        unsafe {
            let m = if self.nspare > 0 {
                self.nspare -= 1;
                NonNull::new_unchecked(self.spare[self.nspare])
            } else {
                // (Fewer than TX_SPARE left in the pool: one at a time.)
                NonNull::new(sys::rte_pktmbuf_alloc(self.pool.as_ptr()))?
            };
            let m = Mbuf(m);
            if len > usize::from(u16::MAX)
                || sys::rte_pktmbuf_append(m.0.as_ptr(), len as u16).is_null()
            {
                return None;
            }
            Some(m)
        }
    }

    #[inline]
    fn tx_push(&mut self, frame: Mbuf) {
        self.tx[self.ntx] = frame.0.as_ptr();
        std::mem::forget(frame);
        self.ntx += 1;
        if self.ntx == TX_BATCH {
            self.tx_flush();
        }
    }

    #[inline]
    fn tx_flush(&mut self) {
        // (An empty poll's: nothing queued, nothing waiting; no call.)
        if self.ntx > 0 || !self.backlog.is_empty() {
            self.flush_queued();
        }
    }

    fn tx_pending(&self) -> usize {
        self.backlog.len()
    }

    fn tx_taken(&self) -> u64 {
        self.tx_taken
    }

    fn mac(&self) -> [u8; 6] {
        self.mac
    }

    fn ip_mtu(&self) -> usize {
        self.mtu
    }

    fn wake_fd(&self) -> Option<RawFd> {
        match &self.memif_wake {
            Some(w) if !self.link_down() => w.wake_fd(),
            _ => self.wake_fd,
        }
    }

    fn wake_cap(&self) -> Option<std::time::Duration> {
        self.memif_wake.as_ref().map(|_| WAKE_CAP)
    }

    fn link_down(&self) -> bool {
        if !self.link_is_peer {
            return false;
        }
        // SAFETY: a plain out-parameter; the port is started. (memif's link_update does
        // nothing in a primary process: this is a copy of the port's link word.)
        unsafe {
            let mut l: sys::rte_eth_link = std::mem::zeroed();
            sys::rte_eth_link_get_nowait(self.port, &mut l) == 0 && l.link_status() == 0
        }
    }

    fn arm_wake(&mut self) {
        if let Some(w) = self.packet_wake.as_mut() {
            w.arm();
        }
        if let Some(w) = self.memif_wake.as_mut() {
            w.arm();
        }
    }

    fn disarm_wake(&mut self) {
        if let Some(w) = self.packet_wake.as_mut() {
            w.disarm();
        }
        if let Some(w) = self.memif_wake.as_mut() {
            w.disarm();
        }
    }

    fn wake_seen(&mut self, others_blocked: bool, edge_block: bool) {
        // (The packet socket's frames are handed back when it is armed; the kernel wakes a
        // blocked thread for every frame. An error on it is taken here.)
        if let Some(w) = self.packet_wake.as_mut() {
            w.woken();
        }
        if let Some(w) = self.memif_wake.as_mut() {
            w.woken(others_blocked, edge_block);
        }
    }

    fn wake_edge(&mut self) -> bool {
        // (net_memif's datagrams; the packet socket's queue is emptied at each arm.)
        match self.memif_wake.as_mut() {
            Some(w) => {
                w.set_edge();
                true
            }
            None => false,
        }
    }

    fn steer(&mut self, see: u32, other_ip: bool) -> Result<(), String> {
        if self.rx_sockets.is_empty() {
            return Err(format!(
                "{} cannot be shared by processes (net_af_packet can)",
                self.info.port_name
            ));
        }
        if let Some(w) = self.packet_wake.as_ref() {
            w.widen(see, other_ip);
        }
        let filter = crate::steer::frame_filter(see, other_ip);
        for &fd in &self.rx_sockets {
            attach_filter(fd, &filter)
                .map_err(|e| format!("cannot filter {}'s frames: {e}", self.info.port_name))?;
        }
        if let Some(w) = self.packet_wake.as_ref() {
            w.steer(see, other_ip);
        }
        Ok(())
    }

    fn counters(&self) -> LinkCounters {
        // SAFETY: plain data out-param; pool valid.
        unsafe {
            let mut st: sys::rte_eth_stats = std::mem::zeroed();
            sys::rte_eth_stats_get(self.port, &mut st);
            let size = (*self.pool.as_ptr()).size;
            LinkCounters {
                tx_ring_full: self.tx_ring_full,
                tx_delayed: self.tx_delayed,
                rx_missed: st.imissed + st.ierrors + self.rx_multiseg,
                pool_in_use: self.pool_in_use(),
                pool_size: u64::from(size),
            }
        }
    }
}

impl DpdkLink {
    /// The pool's mbufs in use: its size less what its ring and the EAL lcores' caches hold.
    /// rte_mempool_in_use_count reads the caches of all RTE_MAX_LCORE (128) lcores, a cache
    /// miss each (~15 µs here, a quarter of an idle memif loop's CPU when it was published at
    /// every nap). Threads that are not lcores (the application's, unregistered) have no cache;
    /// this process registers none (`rte_thread_register`) and runs no service lcores, so the
    /// EAL's lcores, read once at start, are all the caches there are.
    fn pool_in_use(&self) -> u64 {
        let mp = self.pool.as_ptr();
        // SAFETY: the pool is valid for the process's life; local_cache has RTE_MAX_LCORE
        // entries when cache_size is non-zero, and the lcore ids came from the EAL.
        unsafe {
            let mut avail = u64::from(sys::rte_mempool_ops_get_count(mp));
            let cache = (*mp).local_cache;
            if (*mp).cache_size != 0 && !cache.is_null() {
                for &l in &self.lcores {
                    avail += u64::from((*cache.add(l as usize)).len);
                }
            }
            // (Spare mbufs are taken but free for the next frames.)
            u64::from((*mp).size).saturating_sub(avail + self.nspare as u64)
        }
    }
}

/// DPDK 22.11's `struct rte_pktmbuf_pool_private` (not in the bindings).
#[repr(C)]
struct PktmbufPoolPrivate {
    mbuf_data_room_size: u16,
    mbuf_priv_size: u16,
    flags: u32,
}

/// A pktmbuf pool whose objects are packed back to back in one virtually contiguous chunk
/// (`RTE_MEMPOOL_F_NO_IOVA_CONTIG`: no gaps at page boundaries), as net_af_xdp's UMEM
/// assumes; what `rte_pktmbuf_pool_create` does, with that flag. NULL (rte_errno set) on
/// failure, or if DPDK could not place it in one chunk.
///
/// # Safety
/// The EAL is initialised.
unsafe fn packed_pool(name: &CString, n: u32) -> *mut sys::rte_mempool {
    let room = sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16;
    let elt = std::mem::size_of::<sys::rte_mbuf>() as u32 + u32::from(room);
    // SAFETY: as the caller promises; each step checks DPDK's answer, the pool is freed on
    // failure.
    unsafe {
        let mp = sys::rte_mempool_create_empty(
            name.as_ptr(),
            n,
            elt,
            MBUF_CACHE,
            std::mem::size_of::<PktmbufPoolPrivate>() as u32,
            sys::rte_socket_id() as i32,
            sys::RTE_MEMPOOL_F_NO_IOVA_CONTIG,
        );
        if mp.is_null() {
            return mp;
        }
        let ops = CString::new("ring_mp_mc").expect("static");
        let mut private: PktmbufPoolPrivate = std::mem::zeroed();
        private.mbuf_data_room_size = room;
        private.mbuf_priv_size = 0;
        let ok = sys::rte_mempool_set_ops_byname(mp, ops.as_ptr(), std::ptr::null_mut()) == 0
            && {
                sys::rte_pktmbuf_pool_init(mp, (&mut private as *mut PktmbufPoolPrivate).cast());
                sys::rte_mempool_populate_default(mp) >= 0
            }
            && (*mp).nb_mem_chunks == 1;
        if !ok {
            sys::rte_mempool_free(mp);
            return std::ptr::null_mut();
        }
        sys::rte_mempool_obj_iter(mp, Some(sys::rte_pktmbuf_init), std::ptr::null_mut());
        mp
    }
}

/// Offers `n` frames to `port`'s transmit queue (behind the interrupt thread's fence if
/// `fenced`); returns how many it took (the first ones, now the device's).
///
/// # Safety
/// `frames` points at `n` valid mbufs owned by the caller.
unsafe fn burst(port: u16, fenced: bool, frames: *mut *mut sys::rte_mbuf, n: usize) -> usize {
    let n = n.min(usize::from(u16::MAX)) as u16;
    let _fence = fenced.then(super::fence::burst);
    // SAFETY: as the caller promises; tx_burst takes ownership of those it sends.
    usize::from(unsafe { sys::rte_eth_tx_burst(port, 0, frames, n) })
}

impl DpdkLink {
    /// Hands the device as much of the backlog as its ring takes now. A device that took
    /// nothing for `BACKLOG_GIVE_UP` (a memif peer that went away) gets the backlog dropped:
    /// the loop polls without sleeping while frames wait, and must not do so forever.
    fn drain_backlog(&mut self) {
        let (port, fenced) = (self.port, self.fenced);
        let waiting = self.backlog.make_contiguous();
        // SAFETY: valid mbufs we own.
        let n = unsafe { burst(port, fenced, waiting.as_mut_ptr(), waiting.len()) };
        self.backlog.drain(..n);
        self.tx_taken += n as u64;
        if self.backlog.is_empty() {
            self.backlog_since = None;
        } else if n > 0 {
            self.backlog_since = Some(std::time::Instant::now());
        } else if self
            .backlog_since
            .is_some_and(|t| t.elapsed() >= BACKLOG_GIVE_UP)
        {
            self.drop_backlog();
            self.stalled = true;
        }
    }

    fn drop_backlog(&mut self) {
        for m in self.backlog.drain(..) {
            self.tx_ring_full += 1;
            // SAFETY: not sent, still ours.
            unsafe { sys::rte_pktmbuf_free(m) };
        }
        self.backlog_since = None;
    }
}

impl Drop for DpdkLink {
    fn drop(&mut self) {
        self.tx_flush();
        self.drop_backlog();
        for &m in &self.spare[..self.nspare] {
            // SAFETY: spare mbufs are ours and handed out to nobody.
            unsafe { sys::rte_pktmbuf_free(m) };
        }
        self.nspare = 0;
        // Closing net_memif unmaps its rings as a disconnect does: not while a callback runs.
        let _fence = super::fence::burst();
        // SAFETY: the port was started by us; stopping and closing it removes net_tap's netdev.
        unsafe {
            sys::rte_eth_dev_stop(self.port);
            sys::rte_eth_dev_close(self.port);
        }
    }
}
