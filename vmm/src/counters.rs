//! Named counters a device or vCPU increments lock-free on its hot path and the VMM reads
//! without taking any device lock (`vm.counters`, `GET /metrics`).
//!
//! ```
//! use vmm::counters::Counters;
//! const READ_BYTES: usize = 0;
//! const REQUESTS: usize = 1;
//! let c = Counters::new(&["read_bytes", "requests"]);
//! c.add(READ_BYTES, 4096);
//! c.inc(REQUESTS);
//! assert_eq!(c.snapshot(), vec![("read_bytes", 4096), ("requests", 1)]);
//! ```

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A fixed set of named `u64` counters. Indices are the positions in the name list, which a
/// device declares as constants next to it.
#[derive(Debug)]
pub struct Counters {
    names: &'static [&'static str],
    values: Box<[AtomicU64]>,
}

impl Counters {
    /// Counters named `names`, all zero.
    pub fn new(names: &'static [&'static str]) -> Arc<Counters> {
        Arc::new(Counters {
            names,
            values: names.iter().map(|_| AtomicU64::new(0)).collect(),
        })
    }

    /// Adds `n` to counter `index` (ignored if there is no such counter).
    pub fn add(&self, index: usize, n: u64) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds one to counter `index`.
    pub fn inc(&self, index: usize) {
        self.add(index, 1);
    }

    /// The value of counter `index` (0 if there is no such counter).
    pub fn get(&self, index: usize) -> u64 {
        self.values
            .get(index)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Every counter's name and value, in declaration order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(n, v)| (*n, v.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_counters_add_from_threads_and_snapshot() {
        let c = Counters::new(&["a", "b"]);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || (0..1000).for_each(|_| c.inc(1)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().expect("join"));

        c.add(0, 5);
        c.add(7, 5);

        assert_eq!(c.snapshot(), vec![("a", 5), ("b", 4000)]);
        assert_eq!(c.get(7), 0);
    }
}
