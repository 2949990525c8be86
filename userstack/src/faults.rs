//! Fault injection for tests (`MTCP_FAULTS=loss=2,dup=1,reorder=1`): each frame, in each
//! direction, is independently dropped, duplicated or held back behind the next frame.

use crate::config::Faults;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    Pass,
    Drop,
    Duplicate,
    Reorder,
}

pub struct FaultInjector {
    cfg: Faults,
    state: u64,
}

impl FaultInjector {
    pub fn new(cfg: Faults) -> Self {
        // splitmix64 of the seed: a zero seed must not give a stuck xorshift state.
        let mut z = cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        FaultInjector {
            cfg,
            state: (z ^ (z >> 31)) | 1,
        }
    }

    /// A uniform number in [0, 100).
    fn percent(&mut self) -> f64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }

    pub fn decide(&mut self) -> FaultAction {
        let r = self.percent();
        if r < self.cfg.loss {
            FaultAction::Drop
        } else if r < self.cfg.loss + self.cfg.dup {
            FaultAction::Duplicate
        } else if r < self.cfg.loss + self.cfg.dup + self.cfg.reorder {
            FaultAction::Reorder
        } else {
            FaultAction::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_match_configuration() {
        let mut f = FaultInjector::new(Faults {
            loss: 2.0,
            dup: 1.0,
            reorder: 1.0,
            seed: 1,
        });
        let n = 200_000;
        let mut counts = [0u32; 4];
        for _ in 0..n {
            counts[f.decide() as usize] += 1;
        }
        let pct = |c: u32| f64::from(c) * 100.0 / f64::from(n);
        assert!(
            (pct(counts[1]) - 2.0).abs() < 0.2,
            "loss {}",
            pct(counts[1])
        );
        assert!(
            (pct(counts[2]) - 1.0).abs() < 0.15,
            "dup {}",
            pct(counts[2])
        );
        assert!(
            (pct(counts[3]) - 1.0).abs() < 0.15,
            "reorder {}",
            pct(counts[3])
        );
    }
}
