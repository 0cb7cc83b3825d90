//! The CMOS real-time clock and NVRAM at ports 0x70 (index, bit 7 = NMI disable) and 0x71
//! (data), modelled on Firecracker's and crosvm's `cmos.rs`.
//!
//! - Registers 0x00-0x09 and 0x32 read the host's current UTC time: BCD unless register B
//!   bit 2 selects binary, 24-hour unless register B bit 1 is clear (then 12-hour with bit 7
//!   marking PM). Writes to them are ignored: the guest cannot move the host clock.
//! - Status A reads 0x26 (32.768 kHz divider, 1024 Hz rate) with update-in-progress always
//!   clear; B defaults to 0x02 (24-hour, BCD); C reads 0 (no interrupts); D reads 0x80 (valid).
//! - The memory-size registers are set from the RAM layout given at construction, as QEMU's
//!   `pc_cmos_init` does (SeaBIOS and qboot read them): 0x15/0x16 base memory (640 KiB),
//!   0x17/0x18 and 0x30/0x31 memory above 1 MiB in KiB (at most 65535), 0x34/0x35 memory
//!   above 16 MiB in 64 KiB units (at most 65535), 0x5b-0x5d memory above 4 GiB in 64 KiB units.
//! - Everything else is plain 128-byte NVRAM.

use std::time::{SystemTime, UNIX_EPOCH};

use super::PortDevice;
use crate::vm_events::VmEvent;

/// The index port.
pub const RTC_BASE: u16 = 0x70;
/// Ports claimed (index and data).
pub const RTC_LEN: u16 = 2;

const NVRAM_SIZE: usize = 128;
const REG_SECONDS: u8 = 0x00;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const STATUS_A_DEFAULT: u8 = 0x26;
const STATUS_A_UIP: u8 = 0x80;
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
const STATUS_D_VALID: u8 = 0x80;

const MIB: u64 = 1 << 20;

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// Full year, e.g. 2026.
    pub year: u32,
    /// 1-12.
    pub month: u8,
    /// 1-31.
    pub day: u8,
    /// 1 (Sunday) - 7 (Saturday), the RTC's convention.
    pub weekday: u8,
    /// 0-23.
    pub hour: u8,
    /// 0-59.
    pub minute: u8,
    /// 0-59.
    pub second: u8,
}

impl DateTime {
    /// Breaks down seconds since the Unix epoch (UTC).
    pub fn from_unix(secs: u64) -> DateTime {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Howard Hinnant's civil_from_days, for days >= 0.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z % 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        DateTime {
            year: u32::try_from(year).unwrap_or(u32::MAX),
            month: month as u8,
            day: day as u8,
            // 1970-01-01 was a Thursday (5 in 1 = Sunday numbering).
            weekday: ((days + 4) % 7 + 1) as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
        }
    }

    /// The host's current UTC time.
    pub fn now() -> DateTime {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        DateTime::from_unix(secs)
    }
}

/// Where the current time comes from (replaceable for tests).
pub type Clock = Box<dyn Fn() -> DateTime + Send>;

/// The CMOS RTC/NVRAM.
pub struct Rtc {
    index: u8,
    nmi_disabled: bool,
    nvram: [u8; NVRAM_SIZE],
    clock: Clock,
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

impl Rtc {
    /// An RTC on the host clock; `ram_below_4g` and `ram_above_4g` are the guest's RAM in
    /// bytes below the 32-bit hole and above 4 GiB.
    pub fn new(ram_below_4g: u64, ram_above_4g: u64) -> Rtc {
        Rtc::with_clock(ram_below_4g, ram_above_4g, Box::new(DateTime::now))
    }

    /// The same with a given clock.
    pub fn with_clock(ram_below_4g: u64, ram_above_4g: u64, clock: Clock) -> Rtc {
        let mut nvram = [0u8; NVRAM_SIZE];
        nvram[usize::from(REG_STATUS_A)] = STATUS_A_DEFAULT;
        nvram[usize::from(REG_STATUS_B)] = STATUS_B_24H;
        nvram[usize::from(REG_STATUS_D)] = STATUS_D_VALID;
        set_memory_registers(&mut nvram, ram_below_4g, ram_above_4g);
        Rtc {
            index: 0,
            nmi_disabled: false,
            nvram,
            clock,
        }
    }

    /// Sets an NVRAM byte (e.g. 0x5f, SeaBIOS's "CPUs - 1" fallback when there is no fw_cfg).
    /// Indexes above 0x7f wrap; the clock and status registers are computed and ignore this.
    pub fn set_nvram(&mut self, index: u8, value: u8) {
        self.nvram[usize::from(index & 0x7f)] = value;
    }

    /// Whether the guest set the NMI-disable bit with its last index write.
    pub fn nmi_disabled(&self) -> bool {
        self.nmi_disabled
    }

    fn encode(&self, v: u8) -> u8 {
        if self.nvram[usize::from(REG_STATUS_B)] & STATUS_B_BINARY != 0 {
            v
        } else {
            to_bcd(v)
        }
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.nvram[usize::from(REG_STATUS_B)] & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let t = (self.clock)();
        match reg {
            REG_SECONDS => self.encode(t.second),
            0x02 => self.encode(t.minute),
            0x04 => self.encode_hour(t.hour),
            0x06 => self.encode(t.weekday),
            0x07 => self.encode(t.day),
            0x08 => self.encode(t.month),
            0x09 => self.encode((t.year % 100) as u8),
            REG_CENTURY => self.encode((t.year / 100 % 100) as u8),
            REG_STATUS_A => self.nvram[usize::from(reg)] & !STATUS_A_UIP,
            REG_STATUS_C => 0,
            REG_STATUS_D => STATUS_D_VALID,
            _ => self.nvram[usize::from(reg & 0x7f)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | 0x02 | 0x04 | 0x06..=0x09 | REG_CENTURY => {}
            REG_STATUS_A => self.nvram[usize::from(reg)] = value & !STATUS_A_UIP,
            REG_STATUS_C | REG_STATUS_D => {}
            _ => self.nvram[usize::from(reg & 0x7f)] = value,
        }
    }
}

/// Fills the memory-size registers the way QEMU's `pc_cmos_init` does.
fn set_memory_registers(nvram: &mut [u8; NVRAM_SIZE], below_4g: u64, above_4g: u64) {
    let mut set16 = |lo: usize, v: u64| {
        let v = v.min(0xffff) as u16;
        nvram[lo] = v as u8;
        nvram[lo + 1] = (v >> 8) as u8;
    };
    set16(0x15, 640);
    let ext_kib = below_4g.saturating_sub(MIB) / 1024;
    set16(0x17, ext_kib);
    set16(0x30, ext_kib);
    set16(0x34, below_4g.saturating_sub(16 * MIB) / 65_536);
    let high = (above_4g / 65_536).min(0x00ff_ffff);
    nvram[0x5b] = high as u8;
    nvram[0x5c] = (high >> 8) as u8;
    nvram[0x5d] = (high >> 16) as u8;
}

impl PortDevice for Rtc {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let value = match offset {
            // The index port is write-only; QEMU reads it as 0xff.
            0 => 0xff,
            _ => self.read_register(self.index),
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        let &value = data.first()?;
        match offset {
            0 => {
                self.index = value & 0x7f;
                self.nmi_disabled = value & 0x80 != 0;
            }
            _ => self.write_register(self.index, value),
        }
        None
    }
}

#[path = "rtc_persist.rs"]
pub mod persist;

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-21 15:04:09 UTC, a Saturday.
    const FIXED: u64 = 1_795_273_449;

    fn rtc(below: u64, above: u64) -> Rtc {
        Rtc::with_clock(below, above, Box::new(|| DateTime::from_unix(FIXED)))
    }

    fn cmos_read(rtc: &mut Rtc, reg: u8) -> u8 {
        rtc.write(0, &[reg]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    fn cmos_write(rtc: &mut Rtc, reg: u8, value: u8) {
        rtc.write(0, &[reg]);
        rtc.write(1, &[value]);
    }

    #[test]
    fn test_datetime_from_unix_known_dates() {
        let epoch = DateTime::from_unix(0);
        let leap = DateTime::from_unix(951_782_400); // 2000-02-29 00:00:00, a Tuesday

        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2000, 2, 29, 3)
        );
    }

    #[test]
    fn test_rtc_default_reads_bcd_24h() {
        let mut rtc = rtc(0, 0);

        let got: Vec<u8> = [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32]
            .iter()
            .map(|&r| cmos_read(&mut rtc, r))
            .collect();

        assert_eq!(got, [0x09, 0x04, 0x15, 0x07, 0x21, 0x11, 0x26, 0x20]);
    }

    #[test]
    fn test_rtc_binary_mode_reads_binary() {
        let mut rtc = rtc(0, 0);

        cmos_write(&mut rtc, REG_STATUS_B, STATUS_B_24H | STATUS_B_BINARY);

        assert_eq!(cmos_read(&mut rtc, 0x04), 15);
        assert_eq!(cmos_read(&mut rtc, 0x07), 21);
        assert_eq!(cmos_read(&mut rtc, 0x09), 26);
    }

    #[test]
    fn test_rtc_12h_mode_marks_pm() {
        let mut rtc = rtc(0, 0);

        cmos_write(&mut rtc, REG_STATUS_B, 0);

        assert_eq!(cmos_read(&mut rtc, 0x04), 0x80 | 0x03);
    }

    #[test]
    fn test_rtc_status_registers_defaults() {
        let mut rtc = rtc(0, 0);

        assert_eq!(cmos_read(&mut rtc, REG_STATUS_A), 0x26);
        assert_eq!(cmos_read(&mut rtc, REG_STATUS_B), 0x02);
        assert_eq!(cmos_read(&mut rtc, REG_STATUS_C), 0x00);
        assert_eq!(cmos_read(&mut rtc, REG_STATUS_D), 0x80);
    }

    #[test]
    fn test_rtc_time_write_ignored_nvram_write_kept() {
        let mut rtc = rtc(0, 0);

        cmos_write(&mut rtc, 0x00, 0x59);
        cmos_write(&mut rtc, 0x40, 0xab);

        assert_eq!(cmos_read(&mut rtc, 0x00), 0x09);
        assert_eq!(cmos_read(&mut rtc, 0x40), 0xab);
    }

    #[test]
    fn test_rtc_memory_registers_for_3g_plus_1g() {
        let mut rtc = rtc(3 << 30, 1 << 30);

        let base = u16::from_le_bytes([cmos_read(&mut rtc, 0x15), cmos_read(&mut rtc, 0x16)]);
        let ext = u16::from_le_bytes([cmos_read(&mut rtc, 0x17), cmos_read(&mut rtc, 0x18)]);
        let ext2 = u16::from_le_bytes([cmos_read(&mut rtc, 0x30), cmos_read(&mut rtc, 0x31)]);
        let above16 = u16::from_le_bytes([cmos_read(&mut rtc, 0x34), cmos_read(&mut rtc, 0x35)]);
        let above4g = [0x5b, 0x5c, 0x5d].map(|r| cmos_read(&mut rtc, r));

        assert_eq!(base, 640);
        assert_eq!(ext, 0xffff);
        assert_eq!(ext2, 0xffff);
        assert_eq!(above16, (3072 - 16) * 16);
        assert_eq!(above4g, [0x00, 0x40, 0x00]);
    }

    #[test]
    fn test_rtc_memory_registers_for_32m() {
        let mut rtc = rtc(32 << 20, 0);

        let ext = u16::from_le_bytes([cmos_read(&mut rtc, 0x17), cmos_read(&mut rtc, 0x18)]);
        let above16 = u16::from_le_bytes([cmos_read(&mut rtc, 0x34), cmos_read(&mut rtc, 0x35)]);

        assert_eq!(ext, 31 * 1024);
        assert_eq!(above16, 256);
    }

    #[test]
    fn test_rtc_set_nvram_visible_to_guest() {
        let mut rtc = rtc(0, 0);

        rtc.set_nvram(0x5f, 3);

        assert_eq!(cmos_read(&mut rtc, 0x5f), 3);
    }

    #[test]
    fn test_rtc_index_port_records_nmi_bit() {
        let mut rtc = rtc(0, 0);

        rtc.write(0, &[0x80 | 0x0d]);

        assert!(rtc.nmi_disabled());
        assert_eq!(cmos_read(&mut rtc, 0x0d), 0x80);
    }
}
