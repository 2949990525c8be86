//! Build script of `dpdk-sys`.
//!
//! 1. Finds DPDK (>= 22.11) with pkg-config.
//! 2. Generates Rust bindings for an allowlist of DPDK items with bindgen.
//! 3. Compiles `src/wrapper.c` (out-of-line copies of DPDK's static inline
//!    functions) with `cc`.
//! 4. Links DPDK statically: the few PMDs we use whole-archived (their ELF
//!    constructors register the drivers), every other `librte_*.a` plainly,
//!    in the dependency order given by DPDK's own `libdpdk.pc`.
//!
//! All link directives are `cargo:rustc-link-lib` with `-bundle`, so they
//! are recorded in the rlib's metadata and replayed by rustc in every final
//! link that depends on this crate: binaries, tests, cdylibs.

use std::collections::HashSet;
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// PMDs/buses always linked, whole-archived.
const DRIVERS: &[&str] = &[
    "rte_net_tap",
    "rte_net_af_packet",
    "rte_net_af_xdp",
    "rte_net_memif",
    "rte_net_ring",
    "rte_mempool_ring",
    "rte_bus_vdev",
];

/// Extra PMDs for the `pci` feature, whole-archived when present.
const PCI_DRIVERS: &[&str] = &[
    "rte_bus_pci",
    "rte_common_iavf",
    "rte_net_i40e",
    "rte_net_iavf",
    "rte_net_ice",
    "rte_net_ixgbe",
    "rte_net_e1000",
    "rte_net_virtio",
    "rte_net_vmxnet3",
];

/// Shared system libraries needed by the static DPDK objects that end up in
/// the link (checked with `nm -u`): libnuma (EAL), libbsd (strlcpy, glibc
/// 2.36 has none), libxdp + libbpf (af_xdp PMD), libdl, libm, libpthread.
/// libelf/libz are only needed by a *static* libbpf, which we do not use.
const SYSTEM_LIBS: &[&str] = &["xdp", "bpf", "numa", "bsd", "dl", "m", "pthread"];

const MISSING: &str = "DPDK (>= 22.11) not found by pkg-config (`pkg-config libdpdk`). \
    Install it: `apt-get install libdpdk-dev pkg-config` (Debian/Ubuntu), \
    or set PKG_CONFIG_PATH to the directory holding libdpdk.pc";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/wrapper.c");
    println!("cargo:rerun-if-changed=src/wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");

    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));

    // --- 1. pkg-config -------------------------------------------------
    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .statik(true)
        .cargo_metadata(false)
        .probe("libdpdk")
        .unwrap_or_else(|e| panic!("{MISSING}\n\npkg-config said: {e}"));
    let cflags = dpdk_cflags();

    // --- 2. bindgen ----------------------------------------------------
    generate_bindings(&cflags, &out);

    // --- 3. C wrappers around static inline functions ------------------
    let mut build = cc::Build::new();
    build.file("src/wrapper.c").include("src").warnings(true);
    for f in &cflags {
        build.flag(f);
    }
    // DPDK's rte_memcpy.h uses SSSE3 intrinsics (_mm_alignr_epi8) in inline
    // code; this is the minimum that compiles. DPDK itself is built for
    // -march=corei7 (SSE4.2) and refuses to start on CPUs without it, so
    // this does not narrow the set of machines we run on.
    build.flag("-mssse3");
    // Emits its own rustc-link-lib for the (bundled) wrapper archive first,
    // so it precedes the DPDK archives on the link line.
    build.compile("dpdk_sys_wrapper");

    // --- 4. static link of DPDK ---------------------------------------
    let mut link_dirs = lib.link_paths.clone();
    if link_dirs.is_empty() {
        if let Ok(dir) = pkg_config::get_variable("libdpdk", "libdir") {
            link_dirs.push(PathBuf::from(dir));
        }
    }
    let mut uniq = HashSet::new();
    link_dirs.retain(|d| uniq.insert(d.clone()));
    for d in &link_dirs {
        println!("cargo:rustc-link-search=native={}", d.display());
    }
    let find = |name: &str| -> Option<PathBuf> {
        link_dirs
            .iter()
            .map(|d| d.join(format!("lib{name}.a")))
            .find(|p| p.is_file())
    };

    let mut drivers: Vec<&str> = DRIVERS.to_vec();
    for d in DRIVERS {
        if find(d).is_none() {
            panic!(
                "lib{d}.a not found in {link_dirs:?}: dpdk-sys needs DPDK's static \
                 libraries (Debian: libdpdk-dev ships them)"
            );
        }
    }
    if env::var_os("CARGO_FEATURE_PCI").is_some() {
        for d in PCI_DRIVERS {
            if find(d).is_some() {
                drivers.push(d);
            } else {
                println!("cargo:warning=feature `pci`: lib{d}.a not found, skipped");
            }
        }
    }
    let driver_set: HashSet<&str> = drivers.iter().copied().collect();

    // Drivers first, whole-archived so their RTE_INIT constructors (driver,
    // bus and mempool-ops registration) are kept although nothing calls them.
    for d in &drivers {
        println!("cargo:rustc-link-lib=static:+whole-archive,-bundle,+verbatim=lib{d}.a");
    }

    // Then the DPDK libraries, not whole-archived: `pkg-config --static
    // --libs libdpdk` lists them as `-lrte_*` in reverse dependency order
    // (dependents first, rte_eal/rte_telemetry/rte_kvargs last). There is no
    // cycle between the archives (checked with nm), so one pass resolves;
    // unused archives cost nothing. Drivers appear there as
    // `-l:librte_*.a` (all whole-archived): those we skip.
    let mut seen = HashSet::new();
    let mut nlibs = 0;
    for l in &lib.libs {
        if !l.starts_with("rte_") || driver_set.contains(l.as_str()) || !seen.insert(l.clone()) {
            continue;
        }
        if find(l).is_none() {
            continue;
        }
        println!("cargo:rustc-link-lib=static:-bundle,+verbatim=lib{l}.a");
        nlibs += 1;
    }
    assert!(
        seen.contains("rte_eal") && seen.contains("rte_ethdev") && nlibs > 0,
        "pkg-config --static --libs libdpdk listed no rte_eal/rte_ethdev: {:?}",
        lib.libs
    );

    for s in SYSTEM_LIBS {
        println!("cargo:rustc-link-lib=dylib={s}");
    }

    // Metadata for dependents' build scripts (DEP_DPDK_INCLUDE, DEP_DPDK_CFLAGS).
    let inc: Vec<String> = lib
        .include_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    println!("cargo:include={}", inc.join(":"));
    println!("cargo:cflags={}", cflags.join(" "));
}

/// `pkg-config --cflags libdpdk`, minus any -march/-mtune/-mcpu (the Debian
/// .pc says -march=corei7; we must not force a CPU on Rust-side C code).
fn dpdk_cflags() -> Vec<String> {
    let pc = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
    let o = Command::new(&pc)
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("{MISSING}\n\nrunning {pc}: {e}"));
    if !o.status.success() {
        panic!("{MISSING}\n\n{}", String::from_utf8_lossy(&o.stderr));
    }
    let words: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter(|w| {
            !(w.starts_with("-march=") || w.starts_with("-mtune=") || w.starts_with("-mcpu="))
        })
        .map(str::to_owned)
        .collect();
    assert!(
        words
            .iter()
            .any(|w| w == "rte_config.h" || w == "-includerte_config.h"),
        "pkg-config --cflags libdpdk lacks `-include rte_config.h`: {words:?}"
    );
    words
}

fn generate_bindings(cflags: &[String], out: &Path) {
    let functions = [
        "rte_eal_.*",
        "rte_eth_.*",
        "rte_pktmbuf_.*",
        "rte_mempool_.*",
        "rte_mbuf_.*",
        "rte_ether_.*",
        "rte_strerror",
        "rte_socket_id",
        "rte_lcore_.*",
        "rte_vdev_.*",
        "rte_version",
        "rte_thread_is_intr",
        "rte_get_tsc_hz",
        "rte_log_set_global_level",
        "rte_log_set_level_pattern",
    ];
    let types = [
        "rte_eth_.*",
        "rte_mbuf.*",
        "rte_mempool.*",
        "rte_ether_.*",
        "rte_lcore_.*",
        "rte_proc_type_t",
    ];
    let vars = [
        "RTE_ETH_.*",
        "RTE_MBUF_.*",
        "RTE_PKTMBUF_.*",
        "RTE_MEMPOOL_.*",
        "RTE_ETHER_.*",
        "RTE_MAX_ETHPORTS",
        "RTE_MAX_LCORE",
        "RTE_MAX_QUEUES_PER_PORT",
        "RTE_VER_.*",
        "RTE_LOG_.*",
        "SOCKET_ID_ANY",
        "LCORE_ID_ANY",
        "E_RTE_.*",
    ];

    let mut b = bindgen::Builder::default()
        .header("src/wrapper.h")
        .clang_args(cflags)
        .rust_target(bindgen::RustTarget::stable(85, 0).expect("rust target"))
        .rust_edition(bindgen::RustEdition::Edition2021)
        .formatter(bindgen::Formatter::Prettyplease)
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(true)
        .generate_comments(true)
        .clang_macro_fallback()
        .clang_macro_fallback_build_dir(out)
        .parse_callbacks(Box::new(U64Flags))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in functions {
        b = b.allowlist_function(f);
    }
    for t in types {
        b = b.allowlist_type(t);
    }
    for v in vars {
        b = b.allowlist_var(v);
    }
    let bindings = b
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on DPDK headers: {e}"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}

/// Bindgen callbacks. Flag macros that DPDK defines with `RTE_BIT64()` (the fields they go in are
/// `uint64_t`): bindgen would otherwise type them by value (`u32`).
#[derive(Debug)]
struct U64Flags;

impl bindgen::callbacks::ParseCallbacks for U64Flags {
    fn int_macro(&self, name: &str, _value: i64) -> Option<bindgen::callbacks::IntKind> {
        const U64_PREFIXES: &[&str] = &[
            "RTE_ETH_RX_OFFLOAD_",
            "RTE_ETH_TX_OFFLOAD_",
            "RTE_ETH_RSS_",
            "RTE_MBUF_F_",
        ];
        U64_PREFIXES
            .iter()
            .any(|p| name.starts_with(p))
            .then_some(bindgen::callbacks::IntKind::U64)
    }

    /// DPDK's Doxygen comments contain indented blocks, which rustdoc would
    /// take for Rust code (and run as doctests): fence such comments as
    /// plain text.
    fn process_comment(&self, comment: &str) -> Option<String> {
        let indented = comment
            .lines()
            .skip(1)
            .any(|l| l.starts_with('\t') || l.starts_with("    "));
        indented.then(|| format!("```text\n{}\n```", comment.replace("```", "~~~")))
    }
}
