//! The arrival schedule of an open-loop run: the *intended* send time of
//! every request, fixed-interval or seeded Poisson. It owns no clock and
//! sends nothing: a sender asks it for the next intended time and measures
//! latency from that time, so a slow server (or a slow generator) cannot
//! hide its delay by delaying the sends (no coordinated omission).

/// How arrivals are spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arrivals {
    /// Exactly `1 / rate` apart.
    Fixed,
    /// Exponential gaps of mean `1 / rate` (a Poisson process), from a seed.
    Poisson,
}

/// A small, seeded generator (SplitMix64). Written here rather than taken
/// from `rand` so that a seed printed in a report gives the same schedule
/// whatever version of a crate is resolved later.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..bound` (`bound` > 0). The modulo bias is below 2^-40
    /// for the small bounds a workload uses.
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        self.next_u64() % bound
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        // 1 - U lies in (0, 1]: the logarithm is finite.
        -(1.0 - self.next_f64()).ln() * mean
    }
}

/// The intended send times of one sender, in nanoseconds from the start of
/// the run.
#[derive(Clone, Debug)]
pub struct Pacer {
    arrivals: Arrivals,
    interval_ns: f64,
    next_ns: f64,
    random: SplitMix64,
}

impl Pacer {
    /// `rate_per_second` > 0. `phase` in [0, 1) offsets a fixed schedule so
    /// that many senders at the same rate do not all fire at once.
    pub fn new(arrivals: Arrivals, rate_per_second: f64, seed: u64, phase: f64) -> Pacer {
        assert!(rate_per_second > 0.0, "a rate must be positive");
        let interval_ns = 1e9 / rate_per_second;
        let mut random = SplitMix64::new(seed);
        let next_ns = match arrivals {
            Arrivals::Fixed => phase * interval_ns,
            Arrivals::Poisson => random.exponential(interval_ns),
        };
        Pacer {
            arrivals,
            interval_ns,
            next_ns,
            random,
        }
    }

    /// The next intended send time; each call advances the schedule,
    /// whether or not the caller manages to send on time.
    pub fn next_intended_ns(&mut self) -> u64 {
        let now = self.next_ns;
        self.next_ns += match self.arrivals {
            Arrivals::Fixed => self.interval_ns,
            Arrivals::Poisson => self.random.exponential(self.interval_ns),
        };
        now as u64
    }

    /// The intended time of the next send, without advancing.
    pub fn peek_ns(&self) -> u64 {
        self.next_ns as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_schedule_is_evenly_spaced_from_its_phase() {
        let mut pacer = Pacer::new(Arrivals::Fixed, 1000.0, 1, 0.5);
        let times: Vec<u64> = (0..4).map(|_| pacer.next_intended_ns()).collect();
        assert_eq!(times, vec![500_000, 1_500_000, 2_500_000, 3_500_000]);
    }

    #[test]
    fn poisson_schedule_is_seeded_and_has_the_asked_mean_rate() {
        let mut first = Pacer::new(Arrivals::Poisson, 10_000.0, 42, 0.0);
        let mut second = Pacer::new(Arrivals::Poisson, 10_000.0, 42, 0.0);
        let mut other = Pacer::new(Arrivals::Poisson, 10_000.0, 43, 0.0);
        let a: Vec<u64> = (0..100_000).map(|_| first.next_intended_ns()).collect();
        let b: Vec<u64> = (0..100_000).map(|_| second.next_intended_ns()).collect();
        assert_eq!(a, b, "the same seed gives the same schedule");
        assert_ne!(
            a[..10],
            (0..10)
                .map(|_| other.next_intended_ns())
                .collect::<Vec<_>>()[..]
        );
        assert!(a.windows(2).all(|w| w[0] <= w[1]), "times never go back");
        // 100 000 arrivals at 10 000/s take 10 s, within 2 % (the standard
        // deviation of the sum is 10 s / sqrt(100 000), about 0.3 %).
        let span_s = *a.last().expect("times") as f64 / 1e9;
        assert!((span_s - 10.0).abs() < 0.2, "span {span_s}");
    }

    #[test]
    fn peek_does_not_advance() {
        let mut pacer = Pacer::new(Arrivals::Fixed, 2.0, 0, 0.0);
        assert_eq!(pacer.peek_ns(), 0);
        assert_eq!(pacer.next_intended_ns(), 0);
        assert_eq!(pacer.peek_ns(), 500_000_000);
    }
}
