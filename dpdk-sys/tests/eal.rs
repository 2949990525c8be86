//! Proves the static link works: EAL starts without loading any DPDK shared
//! object, the whole-archived vdev drivers registered themselves, and the
//! C wrappers of the inline fast-path functions move a packet through a
//! net_ring port (whose Tx queue N feeds its own Rx queue N).
//!
//! `rte_eal_init` can run only once per process, so everything is in one
//! test. Needs root (net_tap creates a kernel tap device).

use dpdk_sys::*;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::ptr;

fn port_by_name(name: &str) -> u16 {
    let c = CString::new(name).unwrap();
    let mut port = u16::MAX;
    // SAFETY: `c` is a valid C string and `port` a valid out pointer.
    let rc = unsafe { rte_eth_dev_get_port_by_name(c.as_ptr(), &mut port) };
    assert_eq!(rc, 0, "no port named {name}");
    port
}

#[test]
fn eal_init_static_drivers_and_ring_loopback() {
    let tap_if = format!("dsys{}", std::process::id());
    let args = [
        "dpdk-sys-test",
        "--no-huge",
        "-m",
        "128",
        "--no-shconf",
        "--no-pci",
        "--no-telemetry",
        "--lcores",
        "0@(0-1)",
        "--log-level",
        "lib.eal:error",
        "--vdev",
        "net_ring0",
        "--vdev",
        &format!("net_tap0,iface={tap_if}"),
    ];
    let cargs: Vec<CString> = args.iter().map(|a| CString::new(*a).unwrap()).collect();
    // EAL's getopt may permute this array: give it its own copy of the
    // pointers; the strings stay alive in `cargs` for the whole process.
    let mut argv: Vec<*mut c_char> = cargs.iter().map(|a| a.as_ptr() as *mut c_char).collect();
    argv.push(ptr::null_mut());

    // SAFETY: argv is a NULL-terminated array of `args.len()` valid C
    // strings that outlive the call; this is the only rte_eal_init here.
    let rc = unsafe { rte_eal_init(args.len() as i32, argv.as_mut_ptr()) };
    assert!(
        rc >= 0,
        "rte_eal_init failed: {} ({})",
        rte_errno(),
        strerror(rte_errno())
    );
    assert_eq!(rc as usize, args.len() - 1, "all EAL args consumed");

    // A statically linked EAL never scans the shared PMD directory.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let dpdk_so: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("librte_") || l.contains("pmds-"))
        .collect();
    assert!(
        dpdk_so.is_empty(),
        "DPDK shared objects mapped: {dpdk_so:#?}"
    );

    // SAFETY: EAL is initialised.
    let nports = unsafe { rte_eth_dev_count_avail() };
    assert_eq!(nports, 2, "net_ring0 and net_tap0 registered");
    let ring = port_by_name("net_ring0");
    let tap = port_by_name("net_tap0");

    // SAFETY: plain EAL getters after init.
    let socket = unsafe { rte_socket_id() } as i32;
    assert_eq!(rte_lcore_id(), 0, "the initialising thread is lcore 0");

    let pool_name = CString::new("dsys_test_pool").unwrap();
    // SAFETY: valid name; sizes within the 128 MB of --no-huge memory.
    let pool = unsafe {
        rte_pktmbuf_pool_create(
            pool_name.as_ptr(),
            1024,
            32,
            0,
            RTE_MBUF_DEFAULT_BUF_SIZE as u16,
            socket,
        )
    };
    assert!(!pool.is_null(), "pool: {}", strerror(rte_errno()));

    // --- tap port: driver info only -----------------------------------
    let mut info = rte_eth_dev_info::default();
    // SAFETY: `tap` is a valid port id; `info` a valid out struct.
    let rc = unsafe { rte_eth_dev_info_get(tap, &mut info) };
    assert_eq!(rc, 0);
    // SAFETY: driver_name points to the PMD's static NUL-terminated name.
    let drv = unsafe { CStr::from_ptr(info.driver_name) }
        .to_str()
        .unwrap();
    assert_eq!(drv, "net_tap");
    assert!(info.max_rx_queues >= 1);

    // --- ring port: configure, start, loop one packet ----------------
    let conf = rte_eth_conf::default();
    // SAFETY: valid port, queue counts, conf and pool; done before start.
    unsafe {
        assert_eq!(rte_eth_dev_configure(ring, 1, 1, &conf), 0);
        assert_eq!(
            rte_eth_rx_queue_setup(ring, 0, 128, socket as u32, ptr::null(), pool),
            0
        );
        assert_eq!(
            rte_eth_tx_queue_setup(ring, 0, 128, socket as u32, ptr::null()),
            0
        );
        assert_eq!(rte_eth_dev_start(ring), 0);
    }

    // SAFETY: `pool` is a live pktmbuf pool; the mbuf is ours until tx.
    let m = unsafe { rte_pktmbuf_alloc(pool) };
    assert!(!m.is_null());
    // SAFETY: `m` is a fresh, owned mbuf.
    unsafe {
        assert_eq!(rte_pktmbuf_data_len(m), 0);
        assert_eq!(rte_mbuf_refcnt_read(m), 1);
        assert_eq!(rte_pktmbuf_headroom(m) as u32, RTE_PKTMBUF_HEADROOM);
        let p = rte_pktmbuf_append(m, 64);
        assert!(!p.is_null());
        assert_eq!(p, rte_pktmbuf_mtod(m), "append on empty mbuf == mtod");
        for i in 0..64u8 {
            *p.add(i as usize) = i ^ 0x5a;
        }
        assert_eq!(rte_pktmbuf_data_len(m), 64);
        assert_eq!(rte_pktmbuf_pkt_len(m), 64);
        // Raw field access through the generated struct agrees.
        assert_eq!((*m).data_len, 64);
        assert_eq!((*m).pkt_len, 64);
        // Past the tailroom: null, and the mbuf unchanged (as DPDK's own function).
        let room = rte_pktmbuf_tailroom(m);
        assert!(rte_pktmbuf_append(m, room + 1).is_null());
        assert_eq!(rte_pktmbuf_data_len(m), 64);
        assert_eq!(rte_pktmbuf_pkt_len(m), 64);
        let q = rte_pktmbuf_append(m, 2);
        assert_eq!(q, p.add(64));
        assert_eq!(rte_pktmbuf_tailroom(m), room - 2);
        assert!(rte_pktmbuf_trim(m, 2) == 0);
    }

    let mut tx = [m];
    // SAFETY: the port is started; `tx` holds one valid mbuf, which the
    // driver owns once sent.
    let sent = unsafe { rte_eth_tx_burst(ring, 0, tx.as_mut_ptr(), 1) };
    assert_eq!(sent, 1);

    let mut rx = [ptr::null_mut::<rte_mbuf>(); 8];
    // SAFETY: the port is started; `rx` has room for 8 pointers.
    let got = unsafe { rte_eth_rx_burst(ring, 0, rx.as_mut_ptr(), rx.len() as u16) };
    assert_eq!(got, 1, "net_ring loops its Tx queue back to its Rx queue");
    // SAFETY: rx[0] is a received mbuf we now own.
    unsafe {
        let r = rx[0];
        assert_eq!(rte_pktmbuf_pkt_len(r), 64);
        let data = std::slice::from_raw_parts(rte_pktmbuf_mtod(r), 64);
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, (i as u8) ^ 0x5a);
        }
        assert!(!rte_pktmbuf_adj(r, 14).is_null());
        assert_eq!(rte_pktmbuf_data_len(r), 50);
        assert_eq!(rte_pktmbuf_trim(r, 10), 0);
        assert_eq!(rte_pktmbuf_pkt_len(r), 40);
        assert!(!rte_pktmbuf_prepend(r, 14).is_null());
        assert_eq!(rte_pktmbuf_pkt_len(r), 54);
        rte_pktmbuf_refcnt_update(r, 1);
        assert_eq!(rte_mbuf_refcnt_read(r), 2);
        rte_pktmbuf_free(r); // refcnt 2 -> 1
        rte_pktmbuf_free(r); // back to the pool
    }

    // Bulk allocation and the pool accounting.
    let mut bulk = [ptr::null_mut::<rte_mbuf>(); 16];
    // SAFETY: live pool; `bulk` has room for 16 pointers.
    unsafe {
        assert_eq!(rte_pktmbuf_alloc_bulk(pool, bulk.as_mut_ptr(), 16), 0);
        assert!(bulk.iter().all(|m| !m.is_null()));
        for m in bulk {
            rte_pktmbuf_free(m);
        }
        assert_eq!(rte_mempool_avail_count(pool), 1024, "no mbuf leaked");
    }

    // rte_errno is readable and rte_strerror maps it.
    assert!(!strerror(libc::EINVAL).is_empty());

    // SAFETY: valid ports; nothing uses them afterwards; pool is idle.
    unsafe {
        assert_eq!(rte_eth_dev_stop(ring), 0);
        assert_eq!(rte_eth_dev_close(ring), 0);
        assert_eq!(rte_eth_dev_close(tap), 0);
        rte_mempool_free(pool);
        assert_eq!(rte_eal_cleanup(), 0);
    }
}
