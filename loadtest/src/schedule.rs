//! Open-loop timing: requests fall due at a constant rate whatever the
//! answers, and each latency is measured from when its request was **due**,
//! not from when a busy connection finally got to send it. A stalled server
//! therefore shows up in the latencies of every request it delayed, instead
//! of hiding as fewer, "fast" requests (coordinated omission).

use std::time::Duration;

/// When one connection's requests fall due: `start + phase + k * interval`.
#[derive(Debug, Clone)]
pub struct Schedule<T> {
    start: T,
    phase: Duration,
    interval: Duration,
    k: u32,
}

impl<T: Copy + std::ops::Add<Duration, Output = T>> Schedule<T> {
    /// `connections` connections share `rate` requests/s; connection `index`
    /// is offset so their sends interleave instead of bunching.
    pub fn new(start: T, rate: f64, connections: usize, index: usize) -> Self {
        let interval = Duration::from_secs_f64(connections as f64 / rate);
        let phase = interval.mul_f64(index as f64 / connections as f64);
        Schedule {
            start,
            phase,
            interval,
            k: 0,
        }
    }

    /// The next due time.
    pub fn next_due(&mut self) -> T {
        let due = self.start + self.phase + self.interval * self.k;
        self.k += 1;
        due
    }
}

/// The latency to record: from when the request was due to when it was answered.
pub fn latency<T: Copy + std::ops::Sub<T, Output = Duration>>(due: T, answered: T) -> Duration {
    answered - due
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated clock in microseconds, for exact arithmetic.
    #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
    struct T(u64);
    impl std::ops::Add<Duration> for T {
        type Output = T;
        fn add(self, d: Duration) -> T {
            T(self.0 + d.as_micros() as u64)
        }
    }
    impl std::ops::Sub for T {
        type Output = Duration;
        fn sub(self, o: T) -> Duration {
            Duration::from_micros(self.0 - o.0)
        }
    }

    #[test]
    fn due_times_interleave_across_connections() {
        // 1000 req/s over 4 connections: each every 4 ms, offset by 1 ms.
        let mut a = Schedule::new(T(0), 1000.0, 4, 0);
        let mut b = Schedule::new(T(0), 1000.0, 4, 1);
        assert_eq!(
            [a.next_due(), a.next_due(), a.next_due()],
            [T(0), T(4000), T(8000)]
        );
        assert_eq!([b.next_due(), b.next_due()], [T(1000), T(5000)]);
    }

    /// One connection at 100 req/s (due every 10 ms) against a server that
    /// answers in 1 ms but stalls for 100 ms on the first request. Measured
    /// from the due time, the ten requests stuck behind the stall show it;
    /// measured from the send time they would look fast.
    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed() {
        let mut s = Schedule::new(T(0), 100.0, 1, 0);
        let mut free_at = T(0);
        let (mut from_due, mut from_send) = (Vec::new(), Vec::new());
        for k in 0..20 {
            let due = s.next_due();
            let sent = if free_at > due { free_at } else { due };
            let service = if k == 0 { 100_000 } else { 1_000 };
            let answered = T(sent.0 + service);
            free_at = answered;
            from_due.push(latency(due, answered).as_micros());
            from_send.push((answered - sent).as_micros());
        }
        assert_eq!(from_due[0], 100_000);
        // Request 1 was due at 10 ms, sent at 100 ms, answered at 101 ms.
        assert_eq!(from_due[1], 91_000);
        // Request k in the backlog is answered at (100 + k) ms, due at 10k ms.
        assert_eq!(from_due[9], 19_000);
        assert_eq!(from_due[10], 10_000);
        // By request 11 (due 110 ms) the connection has caught up.
        assert_eq!(from_due[11], 1_000);
        // The naive measure hides the stall from all but the first request.
        assert_eq!(from_send.iter().filter(|l| **l > 1_000).count(), 1);
        assert_eq!(from_due.iter().filter(|l| **l > 1_000).count(), 11);
    }
}
