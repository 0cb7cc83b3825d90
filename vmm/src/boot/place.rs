//! Where things go in guest RAM: the usable ranges of the memory map and module placement.

use super::{BootMachine, BOOT_DATA_END};
use crate::arch::x86_64::layout::{RegionKind, HIMEM_START, MMIO_HOLE_START};

/// Which end of free memory a module goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Direction {
    /// Highest fitting address (Linux initrd, PVH).
    TopDown,
    /// Lowest fitting address (multiboot modules, after the kernel as GRUB does).
    BottomUp,
}

/// Where a module may go: below `limit`, `align`ed, clear of the `used` ranges.
pub(super) struct Placement {
    pub used: Vec<(u64, u64)>,
    pub limit: u64,
    pub align: u64,
    pub direction: Direction,
}

impl Placement {
    pub(super) fn find(&self, machine: &BootMachine, size: u64) -> Option<u64> {
        let mut regions: Vec<(u64, u64)> = ram_regions(machine)
            .filter_map(|(s, e)| {
                let e = e.min(self.limit);
                (e > s).then_some((s, e))
            })
            .collect();
        if self.direction == Direction::TopDown {
            regions.reverse();
        }
        regions.into_iter().find_map(|r| self.find_in(r, size))
    }

    fn find_in(&self, (start, end): (u64, u64), size: u64) -> Option<u64> {
        let (mut lo, mut hi) = (start, end);
        loop {
            let cand = match self.direction {
                Direction::TopDown => align_down(hi.checked_sub(size)?, self.align),
                Direction::BottomUp => align_up(lo, self.align)?,
            };
            let cand_end = cand.checked_add(size)?;
            if cand < start || cand_end > end {
                return None;
            }
            match self
                .used
                .iter()
                .find(|&&(us, ue)| cand < ue && us < cand_end)
            {
                None => return Some(cand),
                Some(&(us, ue)) => match self.direction {
                    Direction::TopDown => hi = us,
                    Direction::BottomUp => lo = ue,
                },
            }
        }
    }
}

fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Usable RAM ranges `(start, end)` from the memory map, adjacent ones merged, with the
/// VMM's boot data (below [`BOOT_DATA_END`]) cut out.
pub(super) fn ram_regions(machine: &BootMachine) -> impl Iterator<Item = (u64, u64)> {
    let mut ram: Vec<(u64, u64)> = machine
        .memory_map
        .iter()
        .filter(|r| r.kind == RegionKind::Ram)
        .filter_map(|r| Some((r.base.0, r.base.0.checked_add(r.size)?)))
        .collect();
    ram.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ram {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged.into_iter().filter_map(|(s, e)| {
        let s = s.max(BOOT_DATA_END.0);
        (e > s).then_some((s, e))
    })
}

/// End of RAM below the 32-bit MMIO hole, the limit for anything a 32-bit kernel must reach.
pub(super) fn low_ram_limit() -> u64 {
    MMIO_HOLE_START.0
}

/// Multiboot `mem_lower` and `mem_upper` in KiB: the RAM at 0 and the RAM at 1 MiB.
pub(super) fn mem_lower_upper(machine: &BootMachine) -> (u32, u32) {
    let region_at = |base: u64| {
        machine
            .memory_map
            .iter()
            .find(|r| r.kind == RegionKind::Ram && r.base.0 == base)
            .map_or(0, |r| u32::try_from(r.size / 1024).unwrap_or(u32::MAX))
    };
    (region_at(0), region_at(HIMEM_START.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::memory_map;

    fn machine(ram: u64) -> BootMachine {
        BootMachine {
            memory_map: memory_map(ram),
            vcpus: 1,
            rsdp: None,
        }
    }

    #[test]
    fn test_ram_regions_cut_boot_data_and_reserved() {
        let m = machine(64 << 20);

        let r: Vec<_> = ram_regions(&m).collect();

        assert_eq!(r, vec![(0x3_0000, 0x9_fc00), (0x10_0000, 64 << 20)]);
    }

    #[test]
    fn test_placement_top_down_skips_used_range() {
        let m = machine(64 << 20);
        let p = Placement {
            used: vec![((64 << 20) - 0x1800, 64 << 20)],
            limit: u64::MAX,
            align: 0x1000,
            direction: Direction::TopDown,
        };

        assert_eq!(p.find(&m, 0x1000), Some((64 << 20) - 0x3000));
    }

    #[test]
    fn test_placement_bottom_up_after_used_range() {
        let m = machine(64 << 20);
        let p = Placement {
            used: vec![(0, 0x10_0010)],
            limit: MMIO_HOLE_START.0,
            align: 0x1000,
            direction: Direction::BottomUp,
        };

        assert_eq!(p.find(&m, 0x1000), Some(0x10_1000));
    }

    #[test]
    fn test_placement_respects_limit_and_reports_no_room() {
        let m = machine(64 << 20);
        let mut p = Placement {
            used: vec![],
            limit: 0x20_0000,
            align: 0x1000,
            direction: Direction::TopDown,
        };

        let below_limit = p.find(&m, 0x1000);
        p.used.push((0x10_0000, 0x20_0000));
        let low_only = p.find(&m, 0x6_0000);
        let none = p.find(&m, 0x7_0000);

        assert_eq!(below_limit, Some(0x1f_f000));
        assert_eq!(
            low_only,
            Some(0x3_f000),
            "below 640 KiB, above the boot data"
        );
        assert_eq!(none, None);
    }

    #[test]
    fn test_mem_lower_upper_in_kib() {
        assert_eq!(mem_lower_upper(&machine(64 << 20)), (639, 64 * 1024 - 1024));
    }
}
