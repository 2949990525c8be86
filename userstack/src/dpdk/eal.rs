//! The EAL: its command line from the configuration (memory, hugepages, lcores, log level, the
//! device's `--vdev`/`-a` arguments), starting it once per process, and its lcores.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};

use dpdk_sys as sys;

use super::{fail, rte_err, StartError};
use crate::config::{Config, DevSpec, Hugepages};

static EAL_STARTED: AtomicBool = AtomicBool::new(false);

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
pub fn device_args(dev: &DevSpec) -> (Vec<String>, String) {
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
        // 2^13 slots per ring by default instead of the PMD's 2^10 (the client side's value
        // is used): a burst of large replies (redis-benchmark's LRANGE_600, ~100 frames each,
        // 50 at a time) to a slow peer fills 1024 slots, and what the ring cannot take waits
        // in the link's backlog (or is dropped once that is full). 16 MB of shared memory per
        // ring, whose slots the driver uses in turn: 2^10 keeps them within the TLB's reach
        // (`ring=N`).
        DevSpec::Memif {
            socket,
            server,
            ring,
        } => (
            vec![
                "--vdev".into(),
                format!(
                    "net_memif0,role={},socket={socket},id=0,rsize={}",
                    if *server { "server" } else { "client" },
                    ring.unwrap_or(crate::config::MEMIF_RING_LOG2)
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

pub(super) fn start_eal(args: &[String]) -> Result<(), StartError> {
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

/// The lcore ids the EAL enabled (one, 0, unless MTCP_EAL_ARGS adds others).
pub(super) fn eal_lcores() -> Vec<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memif_ring_size_given_reaches_the_driver() {
        let memif = |ring| DevSpec::Memif {
            socket: "/run/m.sock".into(),
            server: false,
            ring,
        };
        let (args, port) = device_args(&memif(Some(10)));
        assert_eq!(port, "net_memif0");
        assert_eq!(
            args,
            [
                "--vdev",
                "net_memif0,role=client,socket=/run/m.sock,id=0,rsize=10"
            ]
        );
        let (args, _) = device_args(&memif(None));
        assert!(args[1].ends_with(&format!(",rsize={}", crate::config::MEMIF_RING_LOG2)));
    }
}
