//! The bin-pack routing decision, as a pure function over a snapshot of one
//! function's instances (so it can be tested exhaustively).
//!
//! Rules (Function Compute's bin-packing):
//! 1. among ready instances with a free slot, the one with the most
//!    invocations in flight; ties go to the oldest (lowest index);
//! 2. else a starting instance with a free slot: wait for it rather than
//!    start another;
//! 3. else start a new instance.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    /// Finishing its in-flight work; takes no new invocations.
    Draining,
    Gone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Use(usize),
    Wait(usize),
    Start,
}

/// `instances` is in creation order: (phase, in flight).
pub fn pick(instances: impl IntoIterator<Item = (Phase, u32)>, concurrency: u32) -> Choice {
    let mut best_ready: Option<(usize, u32)> = None;
    let mut starting: Option<usize> = None;
    for (i, (phase, in_flight)) in instances.into_iter().enumerate() {
        if in_flight >= concurrency {
            continue;
        }
        match phase {
            Phase::Ready => {
                if best_ready.is_none_or(|(_, n)| in_flight > n) {
                    best_ready = Some((i, in_flight));
                }
            }
            Phase::Starting => {
                starting.get_or_insert(i);
            }
            Phase::Draining | Phase::Gone => {}
        }
    }
    match (best_ready, starting) {
        (Some((i, _)), _) => Choice::Use(i),
        (None, Some(i)) => Choice::Wait(i),
        (None, None) => Choice::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    /// (snapshot, concurrency, expected choice)
    type Case = (&'static [(Phase, u32)], u32, Choice);

    #[test]
    fn table() {
        let cases: &[Case] = &[
            (&[], 10, Choice::Start),
            (&[(Ready, 0)], 10, Choice::Use(0)),
            (&[(Ready, 10)], 10, Choice::Start),
            (&[(Ready, 3), (Ready, 7)], 10, Choice::Use(1)),
            (&[(Ready, 7), (Ready, 7)], 10, Choice::Use(0)),
            (&[(Ready, 0), (Ready, 0), (Ready, 0)], 10, Choice::Use(0)),
            (&[(Ready, 10), (Starting, 4)], 10, Choice::Wait(1)),
            (&[(Starting, 10), (Starting, 2)], 10, Choice::Wait(1)),
            (&[(Ready, 1), (Starting, 0)], 10, Choice::Use(0)),
            (&[(Draining, 0)], 10, Choice::Start),
            (&[(Gone, 0), (Ready, 9)], 10, Choice::Use(1)),
            (&[(Ready, 1)], 1, Choice::Start),
        ];
        for (snapshot, conc, want) in cases {
            assert_eq!(pick(snapshot.iter().copied(), *conc), *want, "{snapshot:?}");
        }
    }

    /// Simulates arrivals one at a time (each keeps its slot): the number of
    /// instances is always ceil(n / concurrency), the minimum possible.
    #[test]
    fn arrivals_pack_into_the_fewest_instances() {
        for conc in [1u32, 2, 3, 10, 200] {
            let mut inst: Vec<(Phase, u32)> = Vec::new();
            for n in 1..=450u32 {
                match pick(inst.iter().copied(), conc) {
                    Choice::Use(i) | Choice::Wait(i) => inst[i].1 += 1,
                    Choice::Start => inst.push((Starting, 1)),
                }
                assert_eq!(inst.len() as u32, n.div_ceil(conc), "conc {conc} n {n}");
                // Every instance but the newest is full.
                assert!(inst[..inst.len() - 1].iter().all(|i| i.1 == conc));
            }
        }
    }
}
