//! The DPDK port as a [`Link`]: EAL start-up from a [`Config`], one rx and one tx queue,
//! received mbufs lent to the stack without a copy, transmitted frames written into fresh
//! mbufs and sent in one burst per poll.
//!
//! All of the stack's unsafe code is in this file.

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk_sys as sys;

use crate::config::{Config, DevSpec, Hugepages};
use crate::link::{Link, LinkCounters, RxFrame, TxFrame};

const TX_BATCH: usize = 64;
/// A transmit backlog the device took nothing of for this long is dropped (while frames wait
/// the loop polls without sleeping; a memif peer that went away would keep it polling).
const BACKLOG_GIVE_UP: std::time::Duration = std::time::Duration::from_millis(500);
const RING_SIZE: u16 = 1024;
const MBUF_CACHE: u32 = 256;
/// Frames the tap's kernel side may queue for us (its txqueuelen).
const TAP_QUEUE_LEN: i32 = 8192;

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

/// Why the device could not be started. `Display` is the message for users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail<T>(msg: impl Into<String>) -> Result<T, StartError> {
    Err(StartError(msg.into()))
}

fn rte_err(code: i32) -> String {
    let code = code.abs();
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string.
    let s = unsafe { CStr::from_ptr(sys::rte_strerror(code)) };
    format!("{} (errno {code})", s.to_string_lossy())
}

/// What the EAL was started with, for logs.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub eal_args: Vec<String>,
    pub hugepages: bool,
    pub port_name: String,
}

fn free_hugepages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// 2 MB pages the mbuf pool (and net_tap's GSO pool of the same size) need, plus EAL overhead.
fn hugepages_needed(cfg: &Config) -> u64 {
    let pool = u64::from(cfg.mbufs) * (u64::from(sys::RTE_MBUF_DEFAULT_BUF_SIZE) + 192);
    let tap_gso = if matches!(cfg.dev, DevSpec::Tap { .. }) {
        pool
    } else {
        0
    };
    (pool + tap_gso + (12 << 20)).div_ceil(2 << 20)
}

/// The current thread's CPUs, as an EAL cpuset: the EAL pins the calling thread to lcore 0's
/// set, so lcore 0 gets exactly the CPUs the application already had.
fn current_cpus() -> String {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size.
    let cpus: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return "0".into();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    };
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn dpdk_log_level(filter: &str) -> &'static str {
    // DPDK's own messages: as verbose as the most verbose level named in MTCP_LOG.
    if filter.contains("trace") || filter.contains("debug") {
        "7"
    } else if filter.contains("info") {
        "6"
    } else if filter.contains("warn") {
        "5"
    } else {
        "4"
    }
}

/// The `--vdev`/`-a` arguments and the port name DPDK will give the device.
fn device_args(dev: &DevSpec) -> (Vec<String>, String) {
    match dev {
        DevSpec::Tap { iface } => (
            vec!["--vdev".into(), format!("net_tap0,iface={iface}")],
            "net_tap0".into(),
        ),
        // 8192 frames per ring (16 MB each way) instead of the PMD's 512: the kernel drops
        // what does not fit, silently for us, and a dropped request costs its client a 200 ms+
        // retransmission. 512 was too few for 10,000 redis-benchmark clients (p99 1.7 s, half
        // the throughput); 8192 keeps p99 under 300 ms there.
        DevSpec::AfPacket { iface } => (
            vec![
                "--vdev".into(),
                format!("net_af_packet0,iface={iface},qpairs=1,framecnt=8192"),
            ],
            "net_af_packet0".into(),
        ),
        DevSpec::AfXdp { iface } => (
            vec![
                "--vdev".into(),
                format!("net_af_xdp0,iface={iface},start_queue=0,queue_count=1"),
            ],
            "net_af_xdp0".into(),
        ),
        // 2^13 slots per ring instead of the PMD's 2^10 (the client side's value is used):
        // a burst of large replies (redis-benchmark's LRANGE_600, ~100 frames each, 50 at a
        // time) overflowed 1024 slots while the peer drained them, and every frame dropped
        // there costs a retransmission. 16 MB of shared memory per ring.
        DevSpec::Memif { socket, server } => (
            vec![
                "--vdev".into(),
                format!(
                    "net_memif0,role={},socket={socket},id=0,rsize=13",
                    if *server { "server" } else { "client" }
                ),
            ],
            "net_memif0".into(),
        ),
        DevSpec::Pci { addr } => (vec!["-a".into(), addr.clone()], addr.clone()),
        DevSpec::Vdev { raw } => (
            vec!["--vdev".into(), raw.clone()],
            raw.split(',').next().unwrap_or(raw).to_string(),
        ),
    }
}

/// The EAL command line for `cfg`, and whether it uses hugepages.
pub fn eal_args(cfg: &Config) -> Result<(Vec<String>, bool), StartError> {
    let mut args: Vec<String> = vec!["mtcpshim".into()];
    let free = free_hugepages();
    let need = hugepages_needed(cfg);
    let huge = match cfg.hugepages {
        Hugepages::No => false,
        Hugepages::Auto => free >= need,
        Hugepages::Yes if free >= need => true,
        Hugepages::Yes => {
            return fail(format!(
                "MTCP_HUGEPAGES=yes: {free} free 2 MB hugepages, {need} needed \
                 (echo {need} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)"
            ))
        }
    };
    if huge {
        args.push("--in-memory".into());
    } else {
        args.extend([
            "--no-huge".into(),
            "-m".into(),
            cfg.mem_mb.to_string(),
            "--no-shconf".into(),
        ]);
    }
    if !matches!(cfg.dev, DevSpec::Pci { .. }) {
        args.push("--no-pci".into());
    }
    args.extend([
        "--no-telemetry".into(),
        "--lcores".into(),
        format!("0@({})", current_cpus()),
        format!("--log-level={}", dpdk_log_level(&cfg.log)),
    ]);
    let (dev_args, _) = device_args(&cfg.dev);
    args.extend(dev_args);
    args.extend(cfg.eal_args.iter().cloned());
    Ok((args, huge))
}

fn start_eal(args: &[String]) -> Result<(), StartError> {
    if EAL_STARTED.swap(true, Ordering::SeqCst) {
        return fail("the DPDK EAL was already started in this process (one stack per process)");
    }
    // The EAL keeps pointers into argv: the strings live for the rest of the process.
    let mut argv: Vec<*mut libc::c_char> = Vec::with_capacity(args.len() + 1);
    for a in args {
        let c = CString::new(a.as_str())
            .map_err(|_| StartError(format!("EAL argument {a:?} contains a NUL byte")))?;
        argv.push(c.into_raw());
    }
    argv.push(std::ptr::null_mut());
    let argv = Box::leak(argv.into_boxed_slice());
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the process.
    let rc = unsafe { sys::rte_eal_init(args.len() as i32, argv.as_mut_ptr()) };
    if rc < 0 {
        return fail(format!(
            "DPDK EAL initialisation failed: {} (DPDK's own messages above say why; EAL arguments: {})",
            rte_err(sys::rte_errno()),
            args.join(" ")
        ));
    }
    Ok(())
}

/// A received mbuf, lent to the stack; freed on drop.
pub struct Mbuf(NonNull<sys::rte_mbuf>);

// SAFETY: an Mbuf is the only owner of its mbuf. Moving it to another thread and freeing it
// there is allowed by DPDK: the pool is a multi-producer/multi-consumer ring, and threads that
// are not EAL lcores (rte_lcore_id() == LCORE_ID_ANY) bypass the per-lcore cache.
unsafe impl Send for Mbuf {}

impl RxFrame for Mbuf {
    fn data(&self) -> &[u8] {
        // SAFETY: the mbuf is a valid single-segment mbuf we own; mtod points at data_len bytes.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts(
                sys::rte_pktmbuf_mtod(m) as *const u8,
                usize::from(sys::rte_pktmbuf_data_len(m)),
            )
        }
    }
}

impl TxFrame for Mbuf {
    fn data_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference to this mbuf.
        unsafe {
            let m = self.0.as_ptr();
            std::slice::from_raw_parts_mut(
                sys::rte_pktmbuf_mtod(m),
                usize::from(sys::rte_pktmbuf_data_len(m)),
            )
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and nobody else frees it.
        unsafe { sys::rte_pktmbuf_free(self.0.as_ptr()) }
    }
}

const AF_XDP: libc::c_int = 44;

/// The process's AF_XDP sockets (net_af_xdp does not export its socket's fd).
fn xdp_socket_fds() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            let mut domain: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_DOMAIN writes one int into a valid buffer; on a closed fd or one that
            // is not a socket it fails and leaves the buffer alone.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_DOMAIN,
                    (&mut domain as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            rc == 0 && domain == AF_XDP
        })
        .collect()
}

/// A wake-up fd for af_packet, whose PMD has none: our own AF_PACKET socket
/// on the same kernel interface, whose classic-BPF filter drops every frame while the stack
/// runs, and keeps one byte of each while the stack sleeps, so `poll` on it wakes the loop when a
/// frame arrives. Two setsockopt calls per sleep; nothing per packet while busy beyond the
/// kernel running a one-instruction filter.
struct PacketWake {
    fd: RawFd,
    armed: bool,
    /// Two loaded eBPF socket filters, [drop, keep 1 byte]: switching is attaching an already
    /// verified and compiled program (SO_ATTACH_BPF), where a classic filter is checked and
    /// JIT-compiled again on every SO_ATTACH_FILTER (with cross-CPU calls to install the
    /// code: a third of idle Redis's CPU under the shim went there). `None` if the kernel
    /// refuses bpf(): the classic filter then.
    progs: Option<[RawFd; 2]>,
}

const SO_ATTACH_FILTER: libc::c_int = 26;
const SO_ATTACH_BPF: libc::c_int = 50;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

const SOL_PACKET: libc::c_int = 263;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// The start of `union bpf_attr` for BPF_PROG_LOAD (the kernel accepts a shorter attr).
#[repr(C)]
struct BpfProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// Loads `r0 = keep; exit` as a socket filter: the bytes of each frame to queue (0 drops it).
fn load_socket_filter(keep: i32) -> Option<RawFd> {
    // struct bpf_insn: code, dst/src registers, offset, immediate.
    let insns: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm = keep
        0xb7 | (u64::from(keep as u32) << 32),
        // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = b"GPL\0";
    let attr = BpfProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: bpf(BPF_PROG_LOAD) reads attr and the instructions it points at, both alive
    // for the call; it returns a new fd (close-on-exec) or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const BpfProgLoad,
            std::mem::size_of::<BpfProgLoad>(),
        )
    };
    (fd >= 0).then_some(fd as RawFd)
}

impl PacketWake {
    fn open(iface: &str) -> std::io::Result<PacketWake> {
        let name = CString::new(iface)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: plain socket calls with valid arguments; the fd is closed on error paths.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(std::io::Error::last_os_error());
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let progs = match (load_socket_filter(0), load_socket_filter(1)) {
                (Some(d), Some(k)) => Some([d, k]),
                (d, k) => {
                    for f in [d, k].into_iter().flatten() {
                        libc::close(f);
                    }
                    None
                }
            };
            let w = PacketWake {
                fd,
                armed: true,
                progs,
            };
            w.set_filter(false)?;
            let one: libc::c_int = 1;
            // Frames the stack itself sends must not wake it (Linux >= 4.20; ignored if older).
            libc::setsockopt(
                fd,
                SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&one as *const libc::c_int).cast(),
                4,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            ) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let mut w = w;
            w.armed = false;
            Ok(w)
        }
    }

    fn set_filter(&self, accept: bool) -> std::io::Result<()> {
        if let Some(progs) = self.progs {
            let prog = progs[usize::from(accept)];
            // SAFETY: an int option value on our own socket.
            let rc = unsafe {
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    SO_ATTACH_BPF,
                    (&prog as *const RawFd).cast(),
                    4,
                )
            };
            if rc == 0 {
                return Ok(());
            }
        }
        // One instruction: BPF_RET | BPF_K with the number of bytes to keep (0 drops the frame).
        let mut insn = libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::from(accept),
        };
        let prog = libc::sock_fprog {
            len: 1,
            filter: &mut insn,
        };
        // SAFETY: prog points at one valid instruction for the duration of the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn arm(&mut self) {
        if !self.armed && self.set_filter(true).is_ok() {
            self.armed = true;
        }
        // Drop what was queued before: readiness from now on means a new frame.
        let mut b = [0u8; 1];
        // SAFETY: reading at most one byte into a valid buffer, non-blocking.
        while unsafe {
            libc::recv(
                self.fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        } >= 0
        {}
    }

    fn disarm(&mut self) {
        if self.armed && self.set_filter(false).is_ok() {
            self.armed = false;
        }
    }
}

impl Drop for PacketWake {
    fn drop(&mut self) {
        // SAFETY: our own fds, closed once.
        unsafe {
            libc::close(self.fd);
            for f in self.progs.into_iter().flatten() {
                libc::close(f);
            }
        }
    }
}

/// A started DPDK port.
pub struct DpdkLink {
    packet_wake: Option<PacketWake>,
    port: u16,
    pool: NonNull<sys::rte_mempool>,
    mac: [u8; 6],
    mtu: usize,
    wake_fd: Option<RawFd>,
    rx_burst: [*mut sys::rte_mbuf; 64],
    tx: [*mut sys::rte_mbuf; TX_BATCH],
    ntx: usize,
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
        // SAFETY: valid arguments; DPDK returns NULL and sets rte_errno on failure.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                cfg.mbufs,
                MBUF_CACHE,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                sys::rte_socket_id() as i32,
            )
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
            info,
            packet_wake: None,
        };
        link.configure(is_tap, cfg)?;
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
        } else if let Some(iface) = cfg.dev.kernel_iface() {
            match PacketWake::open(iface) {
                Ok(w) => {
                    link.wake_fd = Some(w.fd);
                    link.packet_wake = Some(w);
                }
                Err(e) => {
                    tracing::warn!("no wake-up fd on {iface} ({e}): idle loops will sleep and poll")
                }
            }
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
}

/// Runs `f` with a datagram socket and an `ifreq` naming `iface`, for interface ioctls
/// (without depending on iproute2). The socket is closed on every path.
fn with_ifreq(
    iface: &str,
    f: impl FnOnce(libc::c_int, &mut libc::ifreq) -> std::io::Result<()>,
) -> std::io::Result<()> {
    // SAFETY: plain socket creation; ifreq is plain data.
    let (fd, mut req) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        (fd, std::mem::zeroed::<libc::ifreq>())
    };
    for (i, b) in iface.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        req.ifr_name[i] = b as libc::c_char;
    }
    let result = f(fd, &mut req);
    // SAFETY: our own socket.
    unsafe { libc::close(fd) };
    result
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Gives a kernel interface an IPv4 address and brings it up (SIOCSIFADDR, SIOCSIFNETMASK,
/// SIOCSIFFLAGS).
fn set_kernel_addr(iface: &str, cidr: crate::config::Cidr) -> std::io::Result<()> {
    fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sockaddr_in and sockaddr have the same size on Linux; plain data.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    }
    with_ifreq(iface, |fd, req| {
        // SAFETY: interface ioctls with a valid ifreq on our socket.
        unsafe {
            req.ifr_ifru.ifru_addr = sockaddr(cidr.addr);
            check(libc::ioctl(fd, libc::SIOCSIFADDR, &*req))?;
            req.ifr_ifru.ifru_netmask = sockaddr(cidr.netmask());
            check(libc::ioctl(fd, libc::SIOCSIFNETMASK, &*req))?;
            check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut *req))?;
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &*req))
        }
    })
}

/// Sets a kernel interface's transmit queue length (SIOCSIFTXQLEN).
fn set_tx_queue_len(iface: &str, len: i32) -> std::io::Result<()> {
    with_ifreq(iface, |fd, req| {
        // SAFETY: an interface ioctl with a valid ifreq on our socket; ifr_qlen is the int
        // member of the union.
        unsafe {
            req.ifr_ifru.ifru_ifindex = len;
            check(libc::ioctl(fd, libc::SIOCSIFTXQLEN, &*req))
        }
    })
}

impl Link for DpdkLink {
    type Rx = Mbuf;
    type Tx = Mbuf;

    fn rx_burst(&mut self, out: &mut Vec<Mbuf>, max: usize) {
        let max = max.min(self.rx_burst.len());
        // SAFETY: rx_burst has room for max pointers; each returned mbuf is ours to free.
        let n =
            unsafe { sys::rte_eth_rx_burst(self.port, 0, self.rx_burst.as_mut_ptr(), max as u16) };
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

    fn tx_alloc(&mut self, len: usize) -> Option<Mbuf> {
        // SAFETY: pool is valid; append returns NULL if the tailroom is too small.
        unsafe {
            let m = NonNull::new(sys::rte_pktmbuf_alloc(self.pool.as_ptr()))?;
            let m = Mbuf(m);
            if len > usize::from(u16::MAX)
                || sys::rte_pktmbuf_append(m.0.as_ptr(), len as u16).is_null()
            {
                return None;
            }
            Some(m)
        }
    }

    fn tx_push(&mut self, frame: Mbuf) {
        self.tx[self.ntx] = frame.0.as_ptr();
        std::mem::forget(frame);
        self.ntx += 1;
        if self.ntx == TX_BATCH {
            self.tx_flush();
        }
    }

    fn tx_flush(&mut self) {
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
                done +=
                    unsafe { burst(self.port, self.tx.as_mut_ptr().add(done), self.ntx - done) };
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
        self.ntx = 0;
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
        self.wake_fd
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
    }

    fn disarm_wake(&mut self) {
        if let Some(w) = self.packet_wake.as_mut() {
            w.disarm();
        }
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
            u64::from((*mp).size).saturating_sub(avail)
        }
    }
}

/// The lcore ids the EAL enabled (one, 0, unless MTCP_EAL_ARGS adds others).
fn eal_lcores() -> Vec<u32> {
    // SAFETY: plain queries of the started EAL; ids past RTE_MAX_LCORE are "not enabled".
    unsafe {
        let want = sys::rte_lcore_count() as usize;
        let mut v = Vec::with_capacity(want);
        let mut id = 0u32;
        while v.len() < want && id < 4096 {
            if sys::rte_lcore_is_enabled(id) != 0 {
                v.push(id);
            }
            id += 1;
        }
        v
    }
}

/// Offers `n` frames to `port`'s transmit queue; returns how many it took (the first ones,
/// now the device's).
///
/// # Safety
/// `frames` points at `n` valid mbufs owned by the caller.
unsafe fn burst(port: u16, frames: *mut *mut sys::rte_mbuf, n: usize) -> usize {
    let n = n.min(usize::from(u16::MAX)) as u16;
    // SAFETY: as the caller promises; tx_burst takes ownership of those it sends.
    usize::from(unsafe { sys::rte_eth_tx_burst(port, 0, frames, n) })
}

impl DpdkLink {
    /// Hands the device as much of the backlog as its ring takes now. A device that took
    /// nothing for `BACKLOG_GIVE_UP` (a memif peer that went away) gets the backlog dropped:
    /// the loop polls without sleeping while frames wait, and must not do so forever.
    fn drain_backlog(&mut self) {
        let port = self.port;
        let waiting = self.backlog.make_contiguous();
        // SAFETY: valid mbufs we own.
        let n = unsafe { burst(port, waiting.as_mut_ptr(), waiting.len()) };
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
        // SAFETY: the port was started by us; stopping and closing it removes net_tap's netdev.
        unsafe {
            sys::rte_eth_dev_stop(self.port);
            sys::rte_eth_dev_close(self.port);
        }
    }
}
