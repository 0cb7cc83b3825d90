//! A bounded cache of L2 tables, keyed by the table's host offset, evicting the least
//! recently used table. Dirty tables are handed back to the caller, which must order their
//! write-back after the refcount updates they depend on.

use std::collections::HashMap;

/// One cached L2 table.
pub(crate) struct CachedTable {
    /// Decoded big-endian entries.
    pub entries: Vec<u64>,
    /// Modified since it was last written.
    pub dirty: bool,
    used: u64,
}

/// The cache.
pub(crate) struct L2Cache {
    capacity: usize,
    tick: u64,
    tables: HashMap<u64, CachedTable>,
}

impl L2Cache {
    /// A cache holding at most `capacity` tables (at least 2).
    pub fn new(capacity: usize) -> L2Cache {
        L2Cache {
            capacity: capacity.max(2),
            tick: 0,
            tables: HashMap::new(),
        }
    }

    /// Whether the table at `offset` is cached.
    pub fn contains(&self, offset: u64) -> bool {
        self.tables.contains_key(&offset)
    }

    /// The cached table at `offset`, marked as just used.
    pub fn get(&mut self, offset: u64) -> Option<&mut CachedTable> {
        self.tick += 1;
        let tick = self.tick;
        let t = self.tables.get_mut(&offset)?;
        t.used = tick;
        Some(t)
    }

    /// If the cache is full, the offset of the table to evict before inserting another.
    pub fn victim(&self) -> Option<u64> {
        if self.tables.len() < self.capacity {
            return None;
        }
        self.tables
            .iter()
            .min_by_key(|(_, t)| t.used)
            .map(|(&k, _)| k)
    }

    /// Removes a table, returning it.
    pub fn remove(&mut self, offset: u64) -> Option<CachedTable> {
        self.tables.remove(&offset)
    }

    /// Inserts a table (the caller has made room with [`L2Cache::victim`]).
    pub fn insert(&mut self, offset: u64, entries: Vec<u64>, dirty: bool) {
        self.tick += 1;
        self.tables.insert(
            offset,
            CachedTable {
                entries,
                dirty,
                used: self.tick,
            },
        );
    }

    /// Offsets of every dirty table, sorted.
    pub fn dirty_offsets(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .tables
            .iter()
            .filter(|(_, t)| t.dirty)
            .map(|(&k, _)| k)
            .collect();
        v.sort_unstable();
        v
    }
}

impl L2Cache {
    /// Drops every clean table (after snapshot operations, which free and reuse L2 tables).
    pub fn drop_clean(&mut self) {
        self.tables.retain(|_, t| t.dirty);
    }
}

/// Encodes a table to its on-disk big-endian form.
pub(crate) fn encode(entries: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 8);
    for e in entries {
        out.extend_from_slice(&e.to_be_bytes());
    }
    out
}

/// Decodes a table from its on-disk form.
pub(crate) fn decode(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            u64::from_be_bytes(a)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_l2cache_full_evicts_least_recently_used() {
        let mut c = L2Cache::new(2);
        c.insert(1, vec![0], false);
        c.insert(2, vec![0], false);
        let _ = c.get(1);
        assert_eq!(c.victim(), Some(2));
    }

    #[test]
    fn test_encode_decode_roundtrip_equal() {
        let v = vec![1u64, u64::MAX, 0x8000_0000_0001_0000];
        assert_eq!(decode(&encode(&v)), v);
    }
}
