//! Configuration from `MTCP_*` environment variables, parsed once.
//!
//! Every error names the variable, repeats the value and says what a good value looks like, so a
//! user who typed it wrong can fix it from the message alone. `docs/configuration.md` holds the
//! same table for people; `ConfigError`'s messages are pinned by tests.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Which DPDK device carries the stack's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevSpec {
    /// `net_tap`: a kernel tap netdev named `iface` is created by the PMD.
    Tap { iface: String },
    /// `net_af_packet` on an existing kernel interface (e.g. one end of a veth pair).
    AfPacket { iface: String },
    /// `net_af_xdp` on an existing kernel interface, queue 0.
    AfXdp { iface: String },
    /// `net_memif` over a unix socket; `server` chooses the role; `ring`: 2^ring slots per
    /// ring (`None`: [`MEMIF_RING_LOG2`]). (The client's value is the pair's.)
    Memif {
        socket: String,
        server: bool,
        ring: Option<u8>,
    },
    /// A PCI NIC bound to a DPDK-compatible driver (needs the `pci` feature of dpdk-sys).
    Pci { addr: String },
    /// Any `--vdev` string, passed to the EAL as is.
    Vdev { raw: String },
}

impl DevSpec {
    /// A short name for logs: `tap:mtcp0`, `af_packet:veth1`, ...
    pub fn describe(&self) -> String {
        match self {
            DevSpec::Tap { iface } => format!("tap:{iface}"),
            DevSpec::AfPacket { iface } => format!("af_packet:{iface}"),
            DevSpec::AfXdp { iface } => format!("af_xdp:{iface}"),
            DevSpec::Memif {
                socket,
                server,
                ring,
            } => {
                let role = if *server { "server" } else { "client" };
                match ring {
                    Some(r) => format!("memif:{socket},{role},ring={r}"),
                    None => format!("memif:{socket},{role}"),
                }
            }
            DevSpec::Pci { addr } => format!("pci:{addr}"),
            DevSpec::Vdev { raw } => format!("vdev:{raw}"),
        }
    }

    /// Whether processes forked after listen() can each run a stack of their own on this
    /// device (net_af_packet: every process opens its own packet socket on the interface). The
    /// stack then starts at the first call that serves a listener, not at listen(), so a
    /// master that listens and forks workers never starts one itself.
    pub fn shared_by_processes(&self) -> bool {
        matches!(self, DevSpec::AfPacket { .. })
    }

    /// The kernel interface this device needs to exist before start, if any.
    pub fn kernel_iface(&self) -> Option<&str> {
        match self {
            DevSpec::AfPacket { iface } | DevSpec::AfXdp { iface } => Some(iface),
            _ => None,
        }
    }
}

/// Hugepage policy (`MTCP_HUGEPAGES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hugepages {
    /// Use reserved 2 MB hugepages if enough are free, else run without; the log says which.
    Auto,
    /// Require hugepages; fail if none are free.
    Yes,
    /// Never use hugepages (`--no-huge`).
    No,
}

/// TCP congestion control (`MTCP_CC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CongestionControl {
    None,
    Reno,
    Cubic,
}

/// Which outgoing TCP connections (connect()) go through the stack (`MTCP_CONNECT`).
/// Loopback destinations are always the kernel's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectRule {
    /// Every connect() is the kernel's.
    Off,
    /// Destinations inside MTCP_ADDR's subnet (the default).
    Subnet,
    /// Those, and every other destination through MTCP_GW (which must then be set).
    All,
}

impl ConnectRule {
    /// Whether a connect() to `ip` goes through a stack with address `addr` under this rule.
    /// Never loopback, the unspecified or a multicast address, nor the stack's own address.
    pub fn takes(self, addr: &Cidr, gateway: Option<Ipv4Addr>, ip: Ipv4Addr) -> bool {
        if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip == addr.addr {
            return false;
        }
        match self {
            ConnectRule::Off => false,
            ConnectRule::Subnet => addr.contains(ip),
            ConnectRule::All => addr.contains(ip) || gateway.is_some(),
        }
    }
}

/// Fault injection (`MTCP_FAULTS`), in percent per frame and direction.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Faults {
    pub loss: f64,
    pub dup: f64,
    pub reorder: f64,
    pub seed: u64,
}

impl Faults {
    pub fn active(&self) -> bool {
        self.loss > 0.0 || self.dup > 0.0 || self.reorder > 0.0
    }
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(self.netmask());
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        let mask = u32::from(self.netmask());
        Ipv4Addr::from(u32::from(self.addr) | !mask)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The whole configuration of one stack.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dev: DevSpec,
    pub addr: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
    pub hugepages: Hugepages,
    pub eal_args: Vec<String>,
    pub log: String,
    /// MTCP_LOG was set: DPDK's own messages are printed (at its level), not only when the
    /// start fails.
    pub log_given: bool,
    pub tap_peer: Option<Cidr>,
    pub pcap: Option<String>,
    pub pcap_max_bytes: u64,
    pub faults: Faults,
    pub mbufs: u32,
    pub mem_mb: u32,
    pub rcvbuf: usize,
    pub sndbuf: usize,
    pub ack_delay: Option<Duration>,
    pub cc: CongestionControl,
    /// The longest a polling loop keeps polling after its last work (`MTCP_SPIN_US`).
    pub spin: Duration,
    /// The spin adapts to what it finds (`MTCP_SPIN_ADAPT`): each thread spins only as long as
    /// work has been coming within it, up to `spin`.
    pub spin_adapt: bool,
    pub idle_sleep: Duration,
    pub rto_min: Duration,
    /// Publish live statistics in `/dev/shm/mtcpshim.<pid>` (`MTCP_STATS`).
    pub stats: bool,
    /// Writes inside an event-loop iteration leave together at its end (`MTCP_TX_DEFER`).
    pub tx_defer: bool,
    /// Which connect()s go through the stack (`MTCP_CONNECT`).
    pub connect: ConnectRule,
    /// Bytes the Redis GET cache may hold (`MTCP_REDIS_CACHE`; 0: no cache).
    pub redis_cache: u64,
    /// `MTCP_REDIS_CACHE_FAULT=late`: the cache applies Redis's invalidations one reply late,
    /// for tests that must show they catch a stale reply. Never for production.
    pub cache_fault_late: bool,
    /// Names of values a layer above the stack publishes after the stack's own (set by that
    /// layer before the stack starts; see `Stack::extra_stats_mut`).
    pub extra_stats: Vec<&'static str>,
    /// The local ports connect() picks from (the system's `ip_local_port_range` and
    /// `ip_local_reserved_ports`, read by [`Config::from_env`]; Linux's defaults otherwise).
    pub local_ports: LocalPorts,
}

/// The text of sysctl `net.ipv4.NAME`, in one read: the kernel answers only a read that
/// starts at the file's beginning, so a second read (which `read_to_string` makes after a
/// first one of 32 bytes, /proc files having no size) would end the text early. The largest
/// text, a reserved-ports list of every other port, is ~190 KB.
fn read_sysctl(name: &str) -> Option<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(format!("/proc/sys/net/ipv4/{name}")).ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let n = f.read(&mut buf).ok()?;
    buf.truncate(n);
    String::from_utf8(buf).ok()
}

/// The ports an outgoing connection may take when the application bound none: Linux's
/// `net.ipv4.ip_local_port_range` (`low..=high`) less `net.ipv4.ip_local_reserved_ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPorts {
    pub low: u16,
    pub high: u16,
    /// Inclusive ranges never picked.
    pub reserved: Vec<(u16, u16)>,
}

impl Default for LocalPorts {
    /// Linux's defaults: 32768-60999, nothing reserved.
    fn default() -> Self {
        LocalPorts {
            low: 32768,
            high: 60999,
            reserved: Vec::new(),
        }
    }
}

impl LocalPorts {
    /// The system's, as this process's network namespace has them (the defaults where
    /// /proc cannot be read).
    pub fn system() -> LocalPorts {
        let (Some(range), reserved) = (
            read_sysctl("ip_local_port_range"),
            read_sysctl("ip_local_reserved_ports"),
        ) else {
            return LocalPorts::default();
        };
        // (A reserved list that cannot be read keeps the range.)
        match LocalPorts::parse(&range, reserved.as_deref().unwrap_or("")) {
            Ok(p) => p,
            Err(_) => LocalPorts::parse(&range, "").unwrap_or_default(),
        }
    }

    /// From the two sysctls' text: `range` as "LOW HIGH", `reserved` as a comma-separated
    /// list of ports and ranges ("8080,9000-9010", or empty).
    pub fn parse(range: &str, reserved: &str) -> Result<LocalPorts, String> {
        let mut it = range.split_whitespace().map(str::parse::<u16>);
        let (low, high) = match (it.next(), it.next(), it.next()) {
            (Some(Ok(l)), Some(Ok(h)), None) if l >= 1 && l <= h => (l, h),
            _ => return Err(format!("not a port range: {range:?}")),
        };
        let mut list = Vec::new();
        for item in reserved
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
        {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) if a <= b => list.push((a, b)),
                _ => return Err(format!("not a port or port range: {item:?}")),
            }
        }
        Ok(LocalPorts {
            low,
            high,
            reserved: list,
        })
    }

    /// How many ports the range holds.
    pub fn span(&self) -> u32 {
        u32::from(self.high) - u32::from(self.low) + 1
    }

    /// Whether `port` is reserved.
    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved.iter().any(|&(a, b)| (a..=b).contains(&port))
    }
}

/// A configuration value that cannot be used. `Display` is the message users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.var, self.value, self.problem)
    }
}

impl std::error::Error for ConfigError {}

pub const DEFAULT_ADDR: &str = "198.18.0.2/24";
pub const DEFAULT_TAP_IFACE: &str = "mtcp0";
/// net_memif's rings: 2^13 slots each unless `ring=N` says otherwise (the client's value is
/// the pair's). Deep enough for bursts of large replies to a slow peer; a ring of 2^10 slots
/// or fewer keeps its buffers (2 KB a slot) within the CPU's TLB and cache reach and is
/// cheaper per frame (docs/configuration.md).
pub const MEMIF_RING_LOG2: u8 = 13;
/// The ring sizes DPDK's memif driver takes (log2 of the slots).
pub const MEMIF_RING_MIN: u8 = 1;
pub const MEMIF_RING_MAX: u8 = 14;

fn err(var: &'static str, value: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        value: value.to_string(),
        problem: problem.into(),
    }
}

/// Parses `A.B.C.D/N`.
pub fn parse_cidr(var: &'static str, s: &str) -> Result<Cidr, ConfigError> {
    let bad = || {
        err(
            var,
            s,
            "expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24",
        )
    };
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&prefix) {
        return Err(err(var, s, "the prefix length must be between 1 and 32"));
    }
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
        return Err(err(
            var,
            s,
            "the address must be a unicast, non-loopback IPv4 address",
        ));
    }
    Ok(Cidr { addr, prefix })
}

fn parse_mac(var: &'static str, s: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || err(var, s, "expected a MAC address like 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        mac[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 == 1 {
        return Err(err(
            var,
            s,
            "a multicast MAC address cannot be an interface address",
        ));
    }
    if mac == [0; 6] {
        return Err(err(
            var,
            s,
            "the all-zero MAC address cannot be an interface address",
        ));
    }
    Ok(mac)
}

/// Linux interface names: 1..=15 bytes, no '/', no whitespace, no ':' or ','.
fn check_ifname(var: &'static str, value: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 15 {
        return Err(err(
            var,
            value,
            "an interface name must be 1 to 15 characters long",
        ));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ',' || c == ':' || c == '=' || c.is_whitespace())
    {
        return Err(err(
            var,
            value,
            "an interface name cannot contain '/', ',', ':', '=' or spaces",
        ));
    }
    Ok(())
}

pub fn parse_dev(s: &str) -> Result<DevSpec, ConfigError> {
    const V: &str = "MTCP_DEV";
    let (kind, arg) = match s.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (s, None),
    };
    let need = |what: &str| -> Result<&str, ConfigError> {
        match arg {
            Some(a) if !a.is_empty() => Ok(a),
            _ => Err(err(
                V,
                s,
                format!("{kind} needs {what}, e.g. {kind}:{}", example(kind)),
            )),
        }
    };
    fn example(kind: &str) -> &'static str {
        match kind {
            "af_packet" | "af_xdp" => "veth0",
            "memif" => "/run/mtcp-memif.sock,server",
            "pci" => "0000:03:00.0",
            _ => "net_ring0",
        }
    }
    match kind {
        "tap" => {
            let iface = arg.unwrap_or(DEFAULT_TAP_IFACE).to_string();
            check_ifname(V, s, &iface)?;
            Ok(DevSpec::Tap { iface })
        }
        "af_packet" | "af_xdp" => {
            let iface = need("an interface name")?.to_string();
            check_ifname(V, s, &iface)?;
            Ok(if kind == "af_packet" {
                DevSpec::AfPacket { iface }
            } else {
                DevSpec::AfXdp { iface }
            })
        }
        "memif" => {
            let a = need("a socket path")?;
            let mut parts = a.split(',');
            let socket = parts.next().unwrap_or_default();
            let (mut server, mut ring) = (true, None);
            for p in parts {
                match p.split_once('=') {
                    None if p == "server" || p == "client" => server = p == "server",
                    Some(("ring", n)) => match n.parse::<u8>() {
                        Ok(n) if (MEMIF_RING_MIN..=MEMIF_RING_MAX).contains(&n) => ring = Some(n),
                        _ => {
                            return Err(err(
                                V,
                                s,
                                format!(
                                    "the memif ring is a power of two: ring=N takes N from \
                                     {MEMIF_RING_MIN} to {MEMIF_RING_MAX} (2^N slots)"
                                ),
                            ))
                        }
                    },
                    _ => {
                        return Err(err(
                            V,
                            s,
                            "after the memif socket: 'server' or 'client', and ring=N",
                        ))
                    }
                }
            }
            if !socket.starts_with('/') {
                return Err(err(V, s, "the memif socket must be an absolute path"));
            }
            // (A ',' ends the path: what follows is parsed above.)
            if socket.contains('=') {
                return Err(err(V, s, "the memif socket path cannot contain ',' or '='"));
            }
            Ok(DevSpec::Memif {
                socket: socket.to_string(),
                server,
                ring,
            })
        }
        "pci" => {
            let addr = need("a PCI address")?;
            let ok = addr.len() >= 7
                && addr
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.');
            if !ok {
                return Err(err(V, s, "expected a PCI address like 0000:03:00.0"));
            }
            Ok(DevSpec::Pci {
                addr: addr.to_string(),
            })
        }
        "vdev" => Ok(DevSpec::Vdev {
            raw: need("a DPDK --vdev string")?.to_string(),
        }),
        _ => Err(err(
            V,
            s,
            "unknown device kind; expected tap[:IFNAME], af_packet:IFACE, af_xdp:IFACE, \
             memif:SOCKET[,server|client][,ring=N], pci:ADDR or vdev:RAW",
        )),
    }
}

fn parse_faults(s: &str) -> Result<Faults, ConfigError> {
    const V: &str = "MTCP_FAULTS";
    let mut f = Faults::default();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            err(
                V,
                s,
                format!("{item:?} is not key=value (keys: loss, dup, reorder, seed)"),
            )
        })?;
        if k == "seed" {
            f.seed = v
                .parse()
                .map_err(|_| err(V, s, "seed must be an unsigned integer"))?;
            continue;
        }
        let pct: f64 = v
            .parse()
            .ok()
            .filter(|p: &f64| (0.0..=100.0).contains(p))
            .ok_or_else(|| err(V, s, format!("{k} must be a percentage between 0 and 100")))?;
        match k {
            "loss" => f.loss = pct,
            "dup" => f.dup = pct,
            "reorder" => f.reorder = pct,
            _ => {
                return Err(err(
                    V,
                    s,
                    format!("unknown fault {k:?} (keys: loss, dup, reorder, seed)"),
                ))
            }
        }
    }
    Ok(f)
}

fn parse_num<T: std::str::FromStr + PartialOrd + fmt::Display + Copy>(
    var: &'static str,
    s: &str,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v: T = s.parse().map_err(|_| {
        err(
            var,
            s,
            format!("expected a whole number between {min} and {max}"),
        )
    })?;
    if v < min || v > max {
        return Err(err(var, s, format!("must be between {min} and {max}")));
    }
    Ok(v)
}

/// Parses a size with an optional K/M/G suffix (powers of two).
fn parse_size(var: &'static str, s: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let (digits, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let bad = || {
        err(
            var,
            s,
            format!("expected a size between {min} and {max} bytes (suffixes K, M, G)"),
        )
    };
    let v = digits
        .parse::<u64>()
        .map_err(|_| bad())?
        .checked_mul(mult)
        .ok_or_else(bad)?;
    if v < min || v > max {
        return Err(bad());
    }
    Ok(v)
}

/// Every variable [`Config`] reads, and `MTCP_PORTS` (read by the shim, checked by
/// [`check_ports`]). A launcher can warn about `MTCP_*` names that are not here (typos).
pub const VARIABLES: &[&str] = &[
    "MTCP_DEV",
    "MTCP_ADDR",
    "MTCP_GW",
    "MTCP_MAC",
    "MTCP_TAP_PEER",
    "MTCP_HUGEPAGES",
    "MTCP_MEM_MB",
    "MTCP_MBUFS",
    "MTCP_EAL_ARGS",
    "MTCP_LOG",
    "MTCP_PCAP",
    "MTCP_PCAP_MAX",
    "MTCP_FAULTS",
    "MTCP_RCVBUF",
    "MTCP_SNDBUF",
    "MTCP_ACK_DELAY_US",
    "MTCP_CC",
    "MTCP_RTO_MIN_MS",
    "MTCP_SPIN_US",
    "MTCP_SPIN_ADAPT",
    "MTCP_IDLE_SLEEP_US",
    "MTCP_STATS",
    "MTCP_TX_DEFER",
    "MTCP_CONNECT",
    "MTCP_REDIS_CACHE",
    "MTCP_REDIS_CACHE_FAULT",
    "MTCP_PORTS",
    "MTCP_SHIM_TRACE",
    "MTCP_WATCH",
];

/// Why a value of `MTCP_PORTS` is not a list of ports: the first bad item and what is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortsError<'a> {
    pub item: &'a [u8],
    pub why: &'static str,
}

/// Parses a `MTCP_PORTS` value, calling `add` for every valid port. Items are separated by
/// commas and may be surrounded by blanks. All items are looked at; the result is the number of
/// valid items, or the first bad one. Allocates nothing (the shim calls it before its hooks are
/// ready).
pub fn parse_ports(value: &[u8], mut add: impl FnMut(u16)) -> Result<usize, PortsError<'_>> {
    let mut first_err = None;
    let mut n = 0;
    for raw in value.split(|&b| b == b',') {
        let item = raw.trim_ascii();
        match parse_port(item) {
            Ok(p) => {
                add(p);
                n += 1;
            }
            Err(why) => {
                first_err.get_or_insert(PortsError { item, why });
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

fn parse_port(item: &[u8]) -> Result<u16, &'static str> {
    if item.is_empty() {
        return Err("is an empty item");
    }
    if !item.iter().all(u8::is_ascii_digit) {
        return Err("is not a port number");
    }
    // At most 5 significant digits fit; longer runs (other than leading zeros) are too big.
    let digits = {
        let nz = item.iter().position(|&b| b != b'0').unwrap_or(item.len());
        &item[nz..]
    };
    if digits.len() > 5 {
        return Err("is out of range");
    }
    let v = digits
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    if v == 0 || v > 65535 {
        return Err("is out of range");
    }
    Ok(v as u16)
}

/// `MTCP_LOG`: comma-separated directives, each a level, a target, or `target=level` (a target
/// is a Rust module path). tracing-subscriber's filters also take span and field filters
/// (`target[span{field=value}]=level`); those are refused: its parser panics on some
/// non-ASCII values and takes minutes on some field patterns (both found by fuzzing), and a
/// variable must not stop a program's start.
fn check_log(log: &str) -> Result<(), &'static str> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s));
    let is_target = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-'))
    };
    for d in log.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match d.split_once('=') {
            Some((target, level)) => is_target(target) && is_level(level),
            None => is_level(d) || is_target(d),
        };
        if !ok {
            return Err("levels, targets and target=level only");
        }
    }
    Ok(())
}

/// What a good `MTCP_PORTS` looks like (the shim's message ends the same way).
pub const PORTS_EXPECTED: &str =
    "expected a comma-separated list of TCP ports 1-65535, e.g. 6379,6380";

/// Checks a `MTCP_PORTS` value as the shim will read it; the ports, in the order given.
pub fn check_ports(value: &str) -> Result<Vec<u16>, ConfigError> {
    let mut ports = Vec::new();
    parse_ports(value.as_bytes(), |p| ports.push(p))
        .map(|_| ports)
        .map_err(|e| {
            err(
                "MTCP_PORTS",
                value,
                format!(
                    "\"{}\" {}; {PORTS_EXPECTED}",
                    String::from_utf8_lossy(e.item),
                    e.why
                ),
            )
        })
}

impl Config {
    /// Reads the configuration from `(name, value)` pairs, e.g. the environment a launcher is
    /// about to give a program. A later pair overrides an earlier one of the same name.
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        Config::from_map(&vars)
    }

    /// Reads the configuration from the process environment (and the system's local port
    /// range, see [`LocalPorts::system`]).
    pub fn from_env() -> Result<Config, ConfigError> {
        let mut cfg = Config::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )?;
        cfg.local_ports = LocalPorts::system();
        Ok(cfg)
    }

    /// Reads the configuration from a map of variables (the environment, or a test's).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let dev = parse_dev(get("MTCP_DEV").unwrap_or("tap"))?;
        let addr = parse_cidr("MTCP_ADDR", get("MTCP_ADDR").unwrap_or(DEFAULT_ADDR))?;
        let gateway = match get("MTCP_GW") {
            None => None,
            Some(g) => {
                let ip: Ipv4Addr = g
                    .parse()
                    .map_err(|_| err("MTCP_GW", g, "expected an IPv4 address, e.g. 198.18.0.1"))?;
                if !addr.contains(ip) || ip == addr.addr {
                    return Err(err(
                        "MTCP_GW",
                        g,
                        format!(
                            "the gateway must be another address inside MTCP_ADDR's subnet {addr}"
                        ),
                    ));
                }
                Some(ip)
            }
        };
        let mac = get("MTCP_MAC")
            .map(|m| parse_mac("MTCP_MAC", m))
            .transpose()?;
        let hugepages = match get("MTCP_HUGEPAGES").unwrap_or("auto") {
            "auto" => Hugepages::Auto,
            "yes" | "1" | "on" | "true" => Hugepages::Yes,
            "no" | "0" | "off" | "false" => Hugepages::No,
            other => return Err(err("MTCP_HUGEPAGES", other, "expected auto, yes or no")),
        };
        let eal_args: Vec<String> = get("MTCP_EAL_ARGS")
            .map(|a| a.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let log_given = get("MTCP_LOG").is_some();
        let log = get("MTCP_LOG").unwrap_or("warn").to_string();
        check_log(&log).map_err(|why| {
            err(
                "MTCP_LOG",
                &log,
                format!("not a log filter ({why}); e.g. warn, info, userstack=debug"),
            )
        })?;
        tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| {
            err(
                "MTCP_LOG",
                &log,
                format!("not a log filter ({e}); e.g. warn, info, userstack=debug"),
            )
        })?;
        let tap_peer = match get("MTCP_TAP_PEER") {
            None => None,
            Some(p) => {
                if !matches!(dev, DevSpec::Tap { .. }) {
                    return Err(err("MTCP_TAP_PEER", p, "only applies to MTCP_DEV=tap"));
                }
                let c = parse_cidr("MTCP_TAP_PEER", p)?;
                if c.addr == addr.addr {
                    return Err(err(
                        "MTCP_TAP_PEER",
                        p,
                        "the tap's kernel side needs an address other than MTCP_ADDR's",
                    ));
                }
                if !c.contains(addr.addr) {
                    return Err(err(
                        "MTCP_TAP_PEER",
                        p,
                        format!("must be in the same subnet as MTCP_ADDR ({addr}) so the kernel can reach the stack"),
                    ));
                }
                Some(c)
            }
        };
        let pcap = get("MTCP_PCAP").map(String::from);
        let pcap_max_bytes = match get("MTCP_PCAP_MAX") {
            None => 256 << 20,
            Some(s) => parse_size("MTCP_PCAP_MAX", s, 4096, 1 << 40)?,
        };
        let faults = get("MTCP_FAULTS")
            .map(parse_faults)
            .transpose()?
            .unwrap_or_default();
        let mbufs = match get("MTCP_MBUFS") {
            None => 4095,
            Some(s) => parse_num("MTCP_MBUFS", s, 511u32, 1 << 20)?,
        };
        let mem_mb = match get("MTCP_MEM_MB") {
            None => 128,
            Some(s) => parse_num("MTCP_MEM_MB", s, 64u32, 1 << 16)?,
        };
        let rcvbuf = match get("MTCP_RCVBUF") {
            None => 64 << 10,
            Some(s) => parse_size("MTCP_RCVBUF", s, 2048, 64 << 20)? as usize,
        };
        let sndbuf = match get("MTCP_SNDBUF") {
            None => 64 << 10,
            Some(s) => parse_size("MTCP_SNDBUF", s, 2048, 64 << 20)? as usize,
        };
        let ack_delay = match get("MTCP_ACK_DELAY_US") {
            None => Some(Duration::from_micros(1000)),
            Some(s) => match parse_num("MTCP_ACK_DELAY_US", s, 0u64, 500_000)? {
                0 => None,
                us => Some(Duration::from_micros(us)),
            },
        };
        let cc = match get("MTCP_CC").unwrap_or("cubic") {
            "cubic" => CongestionControl::Cubic,
            "reno" => CongestionControl::Reno,
            "none" => CongestionControl::None,
            other => return Err(err("MTCP_CC", other, "expected cubic, reno or none")),
        };
        let spin = match get("MTCP_SPIN_US") {
            None => Duration::from_micros(50),
            Some(s) => Duration::from_micros(parse_num("MTCP_SPIN_US", s, 0u64, 10_000_000)?),
        };
        let idle_sleep = match get("MTCP_IDLE_SLEEP_US") {
            None => Duration::from_micros(2000),
            Some(s) => Duration::from_micros(parse_num("MTCP_IDLE_SLEEP_US", s, 1u64, 1_000_000)?),
        };
        let rto_min = match get("MTCP_RTO_MIN_MS") {
            None => Duration::from_millis(200),
            Some(s) => Duration::from_millis(parse_num("MTCP_RTO_MIN_MS", s, 1u64, 1000)?),
        };
        let on_off = |name: &'static str| match get(name).unwrap_or("on") {
            "on" | "yes" | "1" | "true" => Ok(true),
            "off" | "no" | "0" | "false" => Ok(false),
            other => Err(err(name, other, "expected on or off")),
        };
        let stats = on_off("MTCP_STATS")?;
        let tx_defer = on_off("MTCP_TX_DEFER")?;
        let spin_adapt = on_off("MTCP_SPIN_ADAPT")?;
        let redis_cache = match get("MTCP_REDIS_CACHE") {
            None | Some("0") => 0,
            Some(s) => parse_size("MTCP_REDIS_CACHE", s, 1 << 20, 1 << 40)?,
        };
        let cache_fault_late = match get("MTCP_REDIS_CACHE_FAULT") {
            None => false,
            Some("late") => true,
            Some(other) => return Err(err("MTCP_REDIS_CACHE_FAULT", other, "expected late")),
        };
        let connect = match get("MTCP_CONNECT").unwrap_or("subnet") {
            "subnet" => ConnectRule::Subnet,
            "off" => ConnectRule::Off,
            "all" if gateway.is_none() => {
                return Err(err(
                    "MTCP_CONNECT",
                    "all",
                    "destinations outside MTCP_ADDR's subnet need a gateway: set MTCP_GW",
                ))
            }
            "all" => ConnectRule::All,
            other => return Err(err("MTCP_CONNECT", other, "expected subnet, all or off")),
        };
        Ok(Config {
            dev,
            addr,
            gateway,
            mac,
            hugepages,
            eal_args,
            log,
            log_given,
            tap_peer,
            pcap,
            pcap_max_bytes,
            faults,
            mbufs,
            mem_mb,
            rcvbuf,
            sndbuf,
            ack_delay,
            cc,
            spin,
            spin_adapt,
            idle_sleep,
            rto_min,
            stats,
            tx_defer,
            connect,
            redis_cache,
            cache_fault_late,
            extra_stats: Vec::new(),
            local_ports: LocalPorts::default(),
        })
    }

    /// The stack's MAC address: `MTCP_MAC`, else for net_tap a locally administered address
    /// derived from MTCP_ADDR (the tap netdev itself gets the port's MAC, so the stack needs its
    /// own), else `None` (use the port's).
    pub fn stack_mac(&self) -> Option<[u8; 6]> {
        if let Some(m) = self.mac {
            return Some(m);
        }
        match self.dev {
            DevSpec::Tap { .. } => {
                let o = self.addr.addr.octets();
                Some([0x02, 0x6d, o[0], o[1], o[2], o[3]])
            }
            _ => None,
        }
    }
}

fn capabilities_effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Checks what can be checked before the EAL starts, so a mistake leaves nothing half-started:
/// permissions, that an af_packet/af_xdp interface exists, that a tap name is free, that a memif
/// socket's directory exists. `mtcprun` runs the same checks before it starts a program.
pub fn preflight(cfg: &Config) -> Result<(), String> {
    let dev = cfg.dev.describe();
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_NET_RAW: u64 = 1 << 13;
    let caps = capabilities_effective();
    if caps & (CAP_NET_ADMIN | CAP_NET_RAW) != CAP_NET_ADMIN | CAP_NET_RAW {
        return Err(format!(
            "MTCP_DEV={dev}: no permission: DPDK devices need CAP_NET_ADMIN and CAP_NET_RAW (run as root)"
        ));
    }
    if let Some(iface) = cfg.dev.kernel_iface() {
        if !std::path::Path::new("/sys/class/net").join(iface).exists() {
            return Err(format!(
                "MTCP_DEV={dev}: no network interface named {iface:?}"
            ));
        }
    }
    if let DevSpec::Tap { iface } = &cfg.dev {
        if std::path::Path::new("/sys/class/net").join(iface).exists() {
            return Err(format!(
                "MTCP_DEV={dev}: an interface named {iface:?} already exists; name the tap with MTCP_DEV=tap:NAME"
            ));
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(format!(
                "MTCP_DEV={dev}: /dev/net/tun is missing (load the tun module)"
            ));
        }
    }
    if let DevSpec::Memif { socket, .. } = &cfg.dev {
        let dir = std::path::Path::new(socket)
            .parent()
            .unwrap_or(std::path::Path::new("/"));
        if !dir.is_dir() {
            return Err(format!(
                "MTCP_DEV={dev}: the directory {} does not exist",
                dir.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&m)
    }

    #[test]
    fn local_ports_read_as_the_sysctls_write_them() {
        let p = LocalPorts::parse("32768\t60999\n", "\n").unwrap();
        assert_eq!(p, LocalPorts::default());
        assert_eq!(p.span(), 28232);
        let p = LocalPorts::parse("1024 65535", "8080,9000-9010\n").unwrap();
        assert_eq!((p.low, p.high, p.span()), (1024, 65535, 64512));
        assert!(p.is_reserved(8080) && p.is_reserved(9005) && p.is_reserved(9010));
        assert!(!p.is_reserved(8081) && !p.is_reserved(9011));
        for (range, reserved) in [
            ("", ""),
            ("60999 32768", ""),
            ("0 100", ""),
            ("1 2 3", ""),
            ("1024 65536", ""),
            ("1024 2048", "9010-9000"),
            ("1024 2048", "x"),
        ] {
            assert!(
                LocalPorts::parse(range, reserved).is_err(),
                "{range:?} {reserved:?}"
            );
        }
        // This machine's own, whatever they are, read as a range.
        let sys = LocalPorts::system();
        assert!(sys.low >= 1 && sys.low <= sys.high, "{sys:?}");
    }

    fn msg(pairs: &[(&str, &str)]) -> String {
        cfg(pairs).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(
            c.dev,
            DevSpec::Tap {
                iface: "mtcp0".into()
            }
        );
        assert_eq!(c.addr.to_string(), "198.18.0.2/24");
        assert_eq!(c.hugepages, Hugepages::Auto);
        assert_eq!(c.stack_mac(), Some([0x02, 0x6d, 198, 18, 0, 2]));
        assert!(!c.faults.active());
    }

    #[test]
    fn devices() {
        assert_eq!(
            parse_dev("tap:t1").unwrap(),
            DevSpec::Tap { iface: "t1".into() }
        );
        assert_eq!(
            parse_dev("af_packet:veth1").unwrap(),
            DevSpec::AfPacket {
                iface: "veth1".into()
            }
        );
        assert_eq!(
            parse_dev("af_xdp:veth1").unwrap(),
            DevSpec::AfXdp {
                iface: "veth1".into()
            }
        );
        assert_eq!(
            parse_dev("memif:/tmp/m.sock,client").unwrap(),
            DevSpec::Memif {
                socket: "/tmp/m.sock".into(),
                server: false,
                ring: None
            }
        );
        assert_eq!(
            parse_dev("memif:/tmp/m.sock").unwrap(),
            DevSpec::Memif {
                socket: "/tmp/m.sock".into(),
                server: true,
                ring: None
            }
        );
        let small = parse_dev("memif:/tmp/m.sock,client,ring=10").unwrap();
        assert_eq!(
            small,
            DevSpec::Memif {
                socket: "/tmp/m.sock".into(),
                server: false,
                ring: Some(10)
            }
        );
        assert_eq!(small.describe(), "memif:/tmp/m.sock,client,ring=10");
        for bad in ["ring=15", "ring=0", "ring=x", "rings=10", "primary"] {
            let e = parse_dev(&format!("memif:/tmp/m.sock,{bad}")).unwrap_err();
            assert!(e.problem.contains("memif"), "{bad}: {e}");
        }
        assert_eq!(
            parse_dev("pci:0000:03:00.0").unwrap(),
            DevSpec::Pci {
                addr: "0000:03:00.0".into()
            }
        );
        assert_eq!(
            parse_dev("vdev:net_ring0").unwrap(),
            DevSpec::Vdev {
                raw: "net_ring0".into()
            }
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        assert_eq!(
            msg(&[("MTCP_DEV", "eth9")]),
            "MTCP_DEV=\"eth9\": unknown device kind; expected tap[:IFNAME], af_packet:IFACE, \
             af_xdp:IFACE, memif:SOCKET[,server|client][,ring=N], pci:ADDR or vdev:RAW"
        );
        assert_eq!(
            msg(&[("MTCP_DEV", "af_packet")]),
            "MTCP_DEV=\"af_packet\": af_packet needs an interface name, e.g. af_packet:veth0"
        );
        assert_eq!(
            msg(&[("MTCP_DEV", "tap:averyveryverylongname")]),
            "MTCP_DEV=\"tap:averyveryverylongname\": an interface name must be 1 to 15 characters long"
        );
        assert_eq!(
            msg(&[("MTCP_DEV", "memif:rel.sock")]),
            "MTCP_DEV=\"memif:rel.sock\": the memif socket must be an absolute path"
        );
        assert_eq!(
            msg(&[("MTCP_ADDR", "198.18.0.300/24")]),
            "MTCP_ADDR=\"198.18.0.300/24\": expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24"
        );
        assert_eq!(
            msg(&[("MTCP_ADDR", "198.18.0.2")]),
            "MTCP_ADDR=\"198.18.0.2\": expected an IPv4 address with a prefix length, e.g. 198.18.0.2/24"
        );
        assert_eq!(
            msg(&[("MTCP_ADDR", "198.18.0.2/33")]),
            "MTCP_ADDR=\"198.18.0.2/33\": the prefix length must be between 1 and 32"
        );
        assert_eq!(
            msg(&[("MTCP_GW", "10.0.0.1")]),
            "MTCP_GW=\"10.0.0.1\": the gateway must be another address inside MTCP_ADDR's subnet 198.18.0.2/24"
        );
        assert_eq!(msg(&[("MTCP_MAC", "01:00:5e:00:00:01")]), "MTCP_MAC=\"01:00:5e:00:00:01\": a multicast MAC address cannot be an interface address");
        assert_eq!(
            msg(&[("MTCP_MAC", "zz")]),
            "MTCP_MAC=\"zz\": expected a MAC address like 02:00:00:00:00:01"
        );
        assert_eq!(
            msg(&[("MTCP_HUGEPAGES", "maybe")]),
            "MTCP_HUGEPAGES=\"maybe\": expected auto, yes or no"
        );
        assert_eq!(
            msg(&[("MTCP_TAP_PEER", "198.19.0.1/24")]),
            "MTCP_TAP_PEER=\"198.19.0.1/24\": must be in the same subnet as MTCP_ADDR (198.18.0.2/24) so the kernel can reach the stack"
        );
        assert_eq!(
            msg(&[
                ("MTCP_DEV", "af_packet:v0"),
                ("MTCP_TAP_PEER", "198.18.0.1/24")
            ]),
            "MTCP_TAP_PEER=\"198.18.0.1/24\": only applies to MTCP_DEV=tap"
        );
        assert_eq!(
            msg(&[("MTCP_FAULTS", "loss=200")]),
            "MTCP_FAULTS=\"loss=200\": loss must be a percentage between 0 and 100"
        );
        assert_eq!(
            msg(&[("MTCP_FAULTS", "jitter=1")]),
            "MTCP_FAULTS=\"jitter=1\": unknown fault \"jitter\" (keys: loss, dup, reorder, seed)"
        );
        assert_eq!(
            msg(&[("MTCP_RCVBUF", "1")]),
            "MTCP_RCVBUF=\"1\": expected a size between 2048 and 67108864 bytes (suffixes K, M, G)"
        );
        assert_eq!(
            msg(&[("MTCP_CC", "bbr")]),
            "MTCP_CC=\"bbr\": expected cubic, reno or none"
        );
        assert!(msg(&[("MTCP_LOG", "a=b=c")]).starts_with("MTCP_LOG=\"a=b=c\": not a log filter"));
        // Found by fuzzing (fuzz/corpus/config/log-not-ascii): the filter parser panicked.
        assert!(msg(&[("MTCP_LOG", "MTC\u{fffd}=P_")]).contains("target=level only"));
        // Also found by fuzzing (log-field-pattern): a field filter whose parse took minutes.
        let slow = std::fs::read("../fuzz/corpus/config/log-field-pattern").unwrap();
        let slow = String::from_utf8_lossy(&slow[1..]).into_owned();
        assert!(msg(&[("MTCP_LOG", &slow)]).contains("target=level only"));
        for good in [
            "warn",
            "INFO",
            "userstack=debug,mtcpshim::sockets=trace",
            "userstack",
        ] {
            assert!(cfg(&[("MTCP_LOG", good)]).is_ok(), "{good}");
        }
        assert_eq!(
            msg(&[("MTCP_STATS", "maybe")]),
            "MTCP_STATS=\"maybe\": expected on or off"
        );
        assert_eq!(
            msg(&[("MTCP_TX_DEFER", "later")]),
            "MTCP_TX_DEFER=\"later\": expected on or off"
        );
    }

    #[test]
    fn pairs_later_wins_and_env_matches() {
        let c = Config::from_pairs([
            ("MTCP_SPIN_US", "5"),
            ("MTCP_SPIN_US", "7"),
            ("MTCP_STATS", "off"),
        ])
        .unwrap();
        assert_eq!(c.spin, Duration::from_micros(7));
        assert!(!c.stats);
        assert!(cfg(&[]).unwrap().stats);
        assert!(cfg(&[]).unwrap().tx_defer);
        assert_eq!(cfg(&[]).unwrap().redis_cache, 0);
        assert_eq!(cfg(&[("MTCP_REDIS_CACHE", "0")]).unwrap().redis_cache, 0);
        assert_eq!(
            cfg(&[("MTCP_REDIS_CACHE", "64M")]).unwrap().redis_cache,
            64 << 20
        );
        let e = cfg(&[("MTCP_REDIS_CACHE", "64X")]).unwrap_err();
        assert_eq!(e.var, "MTCP_REDIS_CACHE");
        assert!(cfg(&[("MTCP_REDIS_CACHE", "1K")]).is_err(), "below 1 MiB");
        assert!(
            cfg(&[("MTCP_REDIS_CACHE_FAULT", "late")])
                .unwrap()
                .cache_fault_late
        );
        assert!(cfg(&[("MTCP_REDIS_CACHE_FAULT", "early")]).is_err());
        assert!(!cfg(&[("MTCP_TX_DEFER", "off")]).unwrap().tx_defer);
        assert!(cfg(&[]).unwrap().spin_adapt);
        assert!(!cfg(&[("MTCP_SPIN_ADAPT", "off")]).unwrap().spin_adapt);
    }

    #[test]
    fn connect_rule_takes_the_subnet_and_with_all_the_gateways_destinations() {
        let c = cfg(&[("MTCP_ADDR", "198.18.5.2/24")]).unwrap();
        assert_eq!(c.connect, ConnectRule::Subnet);
        let takes = |c: &Config, ip: &str| c.connect.takes(&c.addr, c.gateway, ip.parse().unwrap());
        assert!(takes(&c, "198.18.5.1"));
        assert!(!takes(&c, "198.18.5.2"), "the stack's own address");
        assert!(!takes(&c, "198.18.6.1"));
        assert!(!takes(&c, "127.0.0.1"));
        let all = cfg(&[
            ("MTCP_ADDR", "198.18.5.2/24"),
            ("MTCP_GW", "198.18.5.1"),
            ("MTCP_CONNECT", "all"),
        ])
        .unwrap();
        assert!(takes(&all, "198.18.6.1") && !takes(&all, "127.0.0.53"));
        let off = cfg(&[("MTCP_ADDR", "198.18.5.2/24"), ("MTCP_CONNECT", "off")]).unwrap();
        assert!(!takes(&off, "198.18.5.1"));
        assert_eq!(
            msg(&[("MTCP_CONNECT", "all")]),
            "MTCP_CONNECT=\"all\": destinations outside MTCP_ADDR's subnet need a gateway: set MTCP_GW"
        );
        assert_eq!(
            msg(&[("MTCP_CONNECT", "some")]),
            "MTCP_CONNECT=\"some\": expected subnet, all or off"
        );
    }

    #[test]
    fn every_variable_read_is_listed() {
        // Each variable, set to a value this parser rejects, must be named in the error: it
        // is read. MTCP_PORTS, MTCP_SHIM_TRACE and MTCP_WATCH are the shim's.
        for v in VARIABLES {
            if matches!(
                *v,
                "MTCP_PORTS" | "MTCP_SHIM_TRACE" | "MTCP_WATCH" | "MTCP_EAL_ARGS" | "MTCP_PCAP"
            ) {
                continue;
            }
            let e = cfg(&[(v, "\u{1}bad")]).unwrap_err();
            assert_eq!(e.var, *v);
        }
    }

    #[test]
    fn ports() {
        assert_eq!(check_ports("6379, 6380").unwrap(), vec![6379, 6380]);
        assert_eq!(
            check_ports("6379,x").unwrap_err().to_string(),
            "MTCP_PORTS=\"6379,x\": \"x\" is not a port number; expected a comma-separated \
             list of TCP ports 1-65535, e.g. 6379,6380"
        );
    }

    fn parse(s: &str) -> Result<Vec<u16>, (String, &'static str)> {
        let mut v = Vec::new();
        match parse_ports(s.as_bytes(), |p| v.push(p)) {
            Ok(n) => {
                assert_eq!(n, v.len());
                Ok(v)
            }
            Err(e) => Err((String::from_utf8_lossy(e.item).into_owned(), e.why)),
        }
    }

    #[test]
    fn valid_port_lists() {
        assert_eq!(parse("6379"), Ok(vec![6379]));
        assert_eq!(parse("6379,6380"), Ok(vec![6379, 6380]));
        assert_eq!(parse(" 1 , 65535 "), Ok(vec![1, 65535]));
        assert_eq!(parse("080"), Ok(vec![80]));
        assert_eq!(parse("0000000000443"), Ok(vec![443]));
        assert_eq!(parse("7,7"), Ok(vec![7, 7]));
    }

    #[test]
    fn bad_port_items_are_named() {
        assert_eq!(parse("0"), Err(("0".into(), "is out of range")));
        assert_eq!(parse("65536"), Err(("65536".into(), "is out of range")));
        assert_eq!(
            parse("99999999999"),
            Err(("99999999999".into(), "is out of range"))
        );
        assert_eq!(parse("abc"), Err(("abc".into(), "is not a port number")));
        assert_eq!(parse("-1"), Err(("-1".into(), "is not a port number")));
        assert_eq!(
            parse("6379-6380"),
            Err(("6379-6380".into(), "is not a port number"))
        );
        assert_eq!(parse("6379,"), Err(("".into(), "is an empty item")));
        assert_eq!(parse("6379,,1"), Err(("".into(), "is an empty item")));
        assert_eq!(parse("+80"), Err(("+80".into(), "is not a port number")));
    }

    #[test]
    fn valid_items_of_a_bad_list_are_still_reported() {
        let mut v = Vec::new();
        let e = parse_ports(b"6379,x,6380", |p| v.push(p)).unwrap_err();
        assert_eq!(e.item, b"x");
        assert_eq!(v, vec![6379, 6380]);
    }

    #[test]
    fn faults_parse() {
        let f = cfg(&[("MTCP_FAULTS", "loss=2,dup=1,reorder=1,seed=7")])
            .unwrap()
            .faults;
        assert_eq!(
            f,
            Faults {
                loss: 2.0,
                dup: 1.0,
                reorder: 1.0,
                seed: 7
            }
        );
        assert!(f.active());
    }

    #[test]
    fn cidr_math() {
        let c = parse_cidr("X", "198.18.3.7/24").unwrap();
        assert!(c.contains("198.18.3.200".parse().unwrap()));
        assert!(!c.contains("198.18.4.1".parse().unwrap()));
        assert_eq!(c.broadcast(), "198.18.3.255".parse::<Ipv4Addr>().unwrap());
    }
}
