//! Profiles: named sets of `MTCP_*` settings for a goal. A profile only fills variables that are
//! not set otherwise: the environment and mtcprun's options override it.

#[derive(Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    /// What it is for and what it costs, for `--help` and the docs.
    pub trade: &'static str,
    pub settings: &'static [(&'static str, &'static str)],
}

pub const PROFILES: &[Profile] = &[
    Profile {
        name: "latency",
        trade: "keeps polling 1 ms after the last work and acknowledges every segment at once: \
                requests that follow each other closely are served without a wake-up and no \
                reply waits for a delayed ACK; costs CPU while traffic flows (none when idle) \
                and more ACK frames",
        settings: &[
            ("MTCP_SPIN_US", "1000"),
            ("MTCP_SPIN_ADAPT", "off"),
            ("MTCP_ACK_DELAY_US", "0"),
            ("MTCP_IDLE_SLEEP_US", "100"),
        ],
    },
    Profile {
        name: "throughput",
        trade: "1 MiB receive and send buffers per connection and twice the mbufs: larger TCP \
                windows and more frames in flight for bulk transfers; costs memory (up to 2 MiB \
                per busy connection, 2x the packet pool)",
        settings: &[
            ("MTCP_RCVBUF", "1M"),
            ("MTCP_SNDBUF", "1M"),
            ("MTCP_MBUFS", "8191"),
            ("MTCP_MEM_MB", "256"),
        ],
    },
    Profile {
        name: "low-cpu",
        trade: "blocks as soon as there is no work (no spinning) and, on devices without a \
                wake-up fd (memif), sleeps up to 10 ms when idle: least CPU; each request after \
                a pause pays a wake-up, up to 10 ms on memif",
        settings: &[("MTCP_SPIN_US", "0"), ("MTCP_IDLE_SLEEP_US", "10000")],
    },
];

pub fn find(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

pub fn names() -> String {
    PROFILES
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_is_a_valid_configuration() {
        for p in PROFILES {
            let c = mtcp_common::Config::from_pairs(p.settings.iter().copied());
            assert!(c.is_ok(), "profile {}: {:?}", p.name, c.err());
            for (var, _) in p.settings {
                assert!(mtcp_common::config::VARIABLES.contains(var), "{var}");
            }
        }
    }
}
