//! The `config` target: each line of the input is one variable (its first byte picks which of
//! [`VARIABLES`], the rest is the value) through [`Config::from_pairs`] and the `MTCP_PORTS`
//! parsers. Errors are fine; panics are not. Of an accepted configuration it checks what the
//! rest of the product relies on: the device's arguments to DPDK carry exactly the keys the
//! stack writes (a value cannot smuggle in `,key=value` of its own), the address prints and
//! parses back to itself, and `MTCP_PORTS` reads as a plain reading of the list would.

use userstack::config::{check_ports, parse_cidr, parse_ports, Config, DevSpec, VARIABLES};
use userstack::dpdk::device_args;

/// One input through the `config` target.
pub fn config(data: &[u8]) {
    let mut pairs = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        let Some((&pick, value)) = line.split_first() else {
            continue;
        };
        let name = VARIABLES[usize::from(pick) % VARIABLES.len()];
        let value = String::from_utf8_lossy(value).into_owned();
        if name == "MTCP_PORTS" {
            ports_agree(&value);
        }
        pairs.push((name.to_string(), value));
    }
    let Ok(cfg) = Config::from_pairs(pairs) else {
        return;
    };
    let printed = format!("{}/{}", cfg.addr.addr, cfg.addr.prefix);
    let back = parse_cidr("MTCP_ADDR", &printed).expect("the address parses back");
    assert_eq!((back.addr, back.prefix), (cfg.addr.addr, cfg.addr.prefix));
    let _ = cfg.dev.describe();
    let (args, port) = device_args(&cfg.dev);
    let expected: &[&str] = match &cfg.dev {
        DevSpec::Tap { .. } => &["iface"],
        DevSpec::AfPacket { .. } => &["iface", "qpairs", "framecnt"],
        DevSpec::AfXdp { .. } => &["iface", "start_queue", "queue_count"],
        DevSpec::Memif { .. } => &["role", "socket", "id", "rsize"],
        // The user's own EAL arguments, passed as they are.
        DevSpec::Pci { .. } | DevSpec::Vdev { .. } => return,
    };
    assert_eq!(args.len(), 2, "{args:?}");
    let mut items = args[1].split(',');
    assert_eq!(items.next(), Some(port.as_str()), "{args:?}");
    let keys: Vec<&str> = items
        .map(|kv| kv.split_once('=').map_or(kv, |(k, _)| k))
        .collect();
    assert_eq!(keys, expected, "{args:?} from {:?}", cfg.dev);
}

/// The shim's allocation-free `MTCP_PORTS` parser agrees with a plain reading: items
/// separated by commas, blanks around them ignored, each all digits and a port 1-65535.
fn ports_agree(value: &str) {
    let mut seen = Vec::new();
    let parsed = parse_ports(value.as_bytes(), |p| seen.push(p));
    let plain: Option<Vec<u16>> = value
        .split(',')
        .map(|item| {
            let item = item.trim_matches(|c: char| c.is_ascii_whitespace());
            let digits = !item.is_empty() && item.bytes().all(|b| b.is_ascii_digit());
            item.parse::<u16>().ok().filter(|&p| digits && p != 0)
        })
        .collect();
    match plain {
        Some(ports) => assert_eq!(parsed, Ok(ports.len()), "{value:?}"),
        None => assert!(parsed.is_err(), "{value:?}: taken as {seen:?}"),
    }
    if parsed.is_ok() {
        assert_eq!(check_ports(value).ok(), Some(seen), "{value:?}");
    }
}
