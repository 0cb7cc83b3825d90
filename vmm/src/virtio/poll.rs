//! Adaptive polling of a queue after a batch (QEMU's `aio_poll` idea, docs/decisions/0016).
//!
//! After a worker has served what woke it, it keeps looking at the available ring and its
//! engine's completions for a short *window* before it goes back to sleep on its eventfds: a
//! driver that posts its next request a few microseconds after the last completion then
//! finds the device awake (no notify exit, no thread wake-up). While it looks, the device
//! tells the driver not to notify.
//!
//! The window tunes itself from the sleeps that follow. A sleep shorter than the largest
//! window means a longer look would have caught what ended it: the window doubles (from
//! [`GROW_START`] up to the maximum). A sleep longer than the largest window, with nothing
//! in flight, means the driver went quiet: the window halves, and below [`GROW_START`] it is
//! zero. A long sleep while requests were in flight says only how slow the disk is, and
//! changes nothing. An idle device therefore never polls: the window is spent once after the
//! last request, halves at each sparse wake-up, and nothing runs while the worker sleeps.
//!
//! Besides the window, one polling phase never lasts longer than [`MAX_PHASE`], so that a
//! device kept busy without pause still returns to its event loop (stop commands, other
//! queues).

use std::time::{Duration, Instant};

/// The window's first non-zero value, and the value below which it drops to zero.
pub const GROW_START: Duration = Duration::from_micros(4);
/// The largest window by default (QEMU's iothread `poll-max-ns` is 32 us; the guests here
/// answer a completion within a few microseconds, a PVM host's wake-ups take tens).
pub const DEFAULT_MAX: Duration = Duration::from_micros(64);
/// Longest time one polling phase keeps the worker away from its event loop.
pub const MAX_PHASE: Duration = Duration::from_millis(1);

/// The self-tuning polling window of one queue (see the module documentation).
#[derive(Clone, Debug)]
pub struct AdaptivePoll {
    max: Duration,
    window: Duration,
    /// When the worker last went to sleep, and whether requests were in flight then.
    asleep: Option<(Instant, bool)>,
    /// Wake-ups that found the window grown, shrunk (for the device's counters).
    grew: u64,
    shrank: u64,
}

impl AdaptivePoll {
    /// A poller whose window grows up to `max` (zero: never poll).
    pub fn new(max: Duration) -> AdaptivePoll {
        AdaptivePoll {
            max,
            window: Duration::ZERO,
            asleep: None,
            grew: 0,
            shrank: 0,
        }
    }

    /// How long to keep polling after the last work found.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// How often the window grew and shrank so far.
    pub fn adjustments(&self) -> (u64, u64) {
        (self.grew, self.shrank)
    }

    /// The worker is about to sleep on its eventfds at `now`; `in_flight` says whether
    /// requests are still with the disk.
    pub fn sleeping(&mut self, now: Instant, in_flight: bool) {
        self.asleep = Some((now, in_flight));
    }

    /// The worker woke at `now`: tune the window from how long it slept.
    pub fn woke(&mut self, now: Instant) {
        let Some((since, in_flight)) = self.asleep.take() else {
            return;
        };
        if self.max.is_zero() {
            return;
        }
        let slept = now.saturating_duration_since(since);
        if slept <= self.max {
            let grown = (self.window * 2).clamp(GROW_START, self.max);
            if grown != self.window {
                self.window = grown;
                self.grew += 1;
            }
        } else if !in_flight && !self.window.is_zero() {
            let half = self.window / 2;
            self.window = if half < GROW_START {
                Duration::ZERO
            } else {
                half
            };
            self.shrank += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Sleeps `slept` (with requests in flight or not) starting at `*t`, and wakes.
    fn nap(p: &mut AdaptivePoll, t: &mut Instant, slept: Duration, in_flight: bool) {
        p.sleeping(*t, in_flight);
        *t += slept;
        p.woke(*t);
    }

    #[test]
    fn test_adaptive_poll_short_sleeps_grow_window_up_to_max() {
        let mut p = AdaptivePoll::new(us(64));
        let mut t = Instant::now();

        let mut seen = Vec::new();
        for _ in 0..6 {
            nap(&mut p, &mut t, us(3), false);
            seen.push(p.window().as_micros());
        }

        assert_eq!(seen, [4, 8, 16, 32, 64, 64]);
        assert_eq!(p.adjustments(), (5, 0));
    }

    #[test]
    fn test_adaptive_poll_idle_sleeps_shrink_window_to_zero() {
        let mut p = AdaptivePoll::new(us(64));
        let mut t = Instant::now();
        for _ in 0..5 {
            nap(&mut p, &mut t, us(1), false);
        }

        let mut seen = Vec::new();
        for _ in 0..6 {
            nap(&mut p, &mut t, Duration::from_millis(10), false);
            seen.push(p.window().as_micros());
        }

        assert_eq!(seen, [32, 16, 8, 4, 0, 0]);
    }

    #[test]
    fn test_adaptive_poll_long_sleep_with_requests_in_flight_keeps_window() {
        let mut p = AdaptivePoll::new(us(64));
        let mut t = Instant::now();
        nap(&mut p, &mut t, us(1), false);
        nap(&mut p, &mut t, us(1), false);

        nap(&mut p, &mut t, us(500), true);

        assert_eq!(p.window(), us(8));
    }

    #[test]
    fn test_adaptive_poll_zero_max_never_polls() {
        let mut p = AdaptivePoll::new(Duration::ZERO);
        let mut t = Instant::now();

        nap(&mut p, &mut t, us(1), false);
        p.woke(t + us(1));

        assert_eq!(p.window(), Duration::ZERO);
        assert_eq!(p.adjustments(), (0, 0));
    }
}
