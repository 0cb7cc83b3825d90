//! The TSC's rate, measured against the CMOS real-time clock, so that a
//! benchmark can turn TSC cycles into seconds under any VMM (both Strata
//! and QEMU emulate the RTC from the host's clock; ring 3 reads the TSC
//! natively).

use crate::io::{inb, outb, rdtsc};

const RTC_INDEX: u16 = 0x70;
const RTC_DATA: u16 = 0x71;
const RTC_SECONDS: u8 = 0x00;

fn rtc_seconds() -> u8 {
    outb(RTC_INDEX, RTC_SECONDS);
    inb(RTC_DATA)
}

/// Gives up on an RTC whose seconds do not change within this many TSC
/// cycles (several seconds on any host).
const GIVE_UP_CYCLES: u64 = 1 << 35;

/// Waits for the RTC's seconds to change; returns the TSC right after, or
/// None if they do not change (no RTC).
fn next_second() -> Option<u64> {
    let now = rtc_seconds();
    let start = rdtsc();
    while rtc_seconds() == now {
        if rdtsc().wrapping_sub(start) > GIVE_UP_CYCLES {
            return None;
        }
        core::hint::spin_loop();
    }
    Some(rdtsc())
}

/// TSC cycles per second, measured over `seconds` (at least 1) whole RTC
/// seconds (exact to about one RTC read per second measured); None when
/// the machine has no RTC that ticks.
pub fn tsc_hz(seconds: u32) -> Option<u64> {
    let seconds = seconds.max(1);
    let start = next_second()?;
    let mut end = start;
    for _ in 0..seconds {
        end = next_second()?;
    }
    Some(end.wrapping_sub(start) / u64::from(seconds))
}
