//! Per-mnemonic counts of emulated instructions, for the VM's exit summary.

use std::collections::BTreeMap;

use iced_x86::Mnemonic;

/// How many instructions of each mnemonic the fallback emulator ran (successfully or by
/// delivering the software interrupt they raise). Touched only on emulation exits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulationStats {
    counts: BTreeMap<&'static str, u64>,
}

impl EmulationStats {
    /// Counts one emulated `mnemonic`.
    pub fn record(&mut self, mnemonic: &'static str) {
        *self.counts.entry(mnemonic).or_insert(0) += 1;
    }

    /// Count for `mnemonic` (0 if never emulated).
    pub fn count(&self, mnemonic: &str) -> u64 {
        self.counts.get(mnemonic).copied().unwrap_or(0)
    }

    /// Total number of emulated instructions.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds `other`'s counts to these (to sum over vCPUs).
    pub fn merge(&mut self, other: &EmulationStats) {
        for (name, count) in &other.counts {
            *self.counts.entry(name).or_insert(0) += count;
        }
    }

    /// (mnemonic, count) pairs in alphabetical order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().map(|(name, count)| (*name, *count))
    }
}

impl std::fmt::Display for EmulationStats {
    /// One line: `emulated: total N (fninit 1, popcnt 12, ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "emulated: total {}", self.total())?;
        let mut sep = " (";
        for (name, count) in self.iter() {
            write!(f, "{sep}{name} {count}")?;
            sep = ", ";
        }
        if self.total() > 0 {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Static lower-case name of a mnemonic the emulator handles.
pub(crate) fn mnemonic_name(m: Mnemonic) -> Option<&'static str> {
    use Mnemonic as Mn;
    Some(match m {
        Mn::Wait => "fwait",
        Mn::Fninit => "fninit",
        Mn::Finit => "finit",
        Mn::Fnclex => "fnclex",
        Mn::Fclex => "fclex",
        Mn::Fnstsw => "fnstsw",
        Mn::Fstsw => "fstsw",
        Mn::Fnstcw => "fnstcw",
        Mn::Fstcw => "fstcw",
        Mn::Fldcw => "fldcw",
        Mn::Fld1 => "fld1",
        Mn::Fldz => "fldz",
        Mn::Fld => "fld",
        Mn::Fst => "fst",
        Mn::Fstp => "fstp",
        Mn::Fxch => "fxch",
        Mn::Fchs => "fchs",
        Mn::Fdivp => "fdivp",
        Mn::Fdivrp => "fdivrp",
        Mn::Fucomip => "fucomip",
        Mn::Fnsetpm => "fnsetpm",
        Mn::Fadd => "fadd",
        Mn::Faddp => "faddp",
        Mn::Fiadd => "fiadd",
        Mn::Fmul => "fmul",
        Mn::Fmulp => "fmulp",
        Mn::Fimul => "fimul",
        Mn::Fsub => "fsub",
        Mn::Fsubp => "fsubp",
        Mn::Fisub => "fisub",
        Mn::Fsubr => "fsubr",
        Mn::Fsubrp => "fsubrp",
        Mn::Fisubr => "fisubr",
        Mn::Fdiv => "fdiv",
        Mn::Fidiv => "fidiv",
        Mn::Fdivr => "fdivr",
        Mn::Fidivr => "fidivr",
        Mn::Fcom => "fcom",
        Mn::Fcomp => "fcomp",
        Mn::Fcompp => "fcompp",
        Mn::Fucom => "fucom",
        Mn::Fucomp => "fucomp",
        Mn::Fucompp => "fucompp",
        Mn::Ficom => "ficom",
        Mn::Ficomp => "ficomp",
        Mn::Fcomi => "fcomi",
        Mn::Fcomip => "fcomip",
        Mn::Fucomi => "fucomi",
        Mn::Fcmovb => "fcmovb",
        Mn::Fcmove => "fcmove",
        Mn::Fcmovbe => "fcmovbe",
        Mn::Fcmovu => "fcmovu",
        Mn::Fcmovnb => "fcmovnb",
        Mn::Fcmovne => "fcmovne",
        Mn::Fcmovnbe => "fcmovnbe",
        Mn::Fcmovnu => "fcmovnu",
        Mn::Fild => "fild",
        Mn::Fist => "fist",
        Mn::Fistp => "fistp",
        Mn::Fisttp => "fisttp",
        Mn::Fbld => "fbld",
        Mn::Fbstp => "fbstp",
        Mn::Ffree => "ffree",
        Mn::Ffreep => "ffreep",
        Mn::Fabs => "fabs",
        Mn::Ftst => "ftst",
        Mn::Fxam => "fxam",
        Mn::Fldl2t => "fldl2t",
        Mn::Fldl2e => "fldl2e",
        Mn::Fldpi => "fldpi",
        Mn::Fldlg2 => "fldlg2",
        Mn::Fldln2 => "fldln2",
        Mn::F2xm1 => "f2xm1",
        Mn::Fyl2x => "fyl2x",
        Mn::Fptan => "fptan",
        Mn::Fpatan => "fpatan",
        Mn::Fxtract => "fxtract",
        Mn::Fprem1 => "fprem1",
        Mn::Fdecstp => "fdecstp",
        Mn::Fincstp => "fincstp",
        Mn::Fprem => "fprem",
        Mn::Fyl2xp1 => "fyl2xp1",
        Mn::Fsqrt => "fsqrt",
        Mn::Fsincos => "fsincos",
        Mn::Frndint => "frndint",
        Mn::Fscale => "fscale",
        Mn::Fsin => "fsin",
        Mn::Fcos => "fcos",
        Mn::Fnop => "fnop",
        Mn::Movd => "movd",
        Mn::Movq => "movq",
        Mn::Movss => "movss",
        Mn::Movsd => "movsd",
        Mn::Movaps => "movaps",
        Mn::Movapd => "movapd",
        Mn::Movups => "movups",
        Mn::Movupd => "movupd",
        Mn::Movdqa => "movdqa",
        Mn::Movdqu => "movdqu",
        Mn::Pxor => "pxor",
        Mn::Por => "por",
        Mn::Pand => "pand",
        Mn::Pandn => "pandn",
        Mn::Xorps => "xorps",
        Mn::Xorpd => "xorpd",
        Mn::Andps => "andps",
        Mn::Andnps => "andnps",
        Mn::Orps => "orps",
        Mn::Pcmpeqb => "pcmpeqb",
        Mn::Pmovmskb => "pmovmskb",
        Mn::Ldmxcsr => "ldmxcsr",
        Mn::Stmxcsr => "stmxcsr",
        Mn::Fxsave => "fxsave",
        Mn::Fxsave64 => "fxsave64",
        Mn::Fxrstor => "fxrstor",
        Mn::Fxrstor64 => "fxrstor64",
        Mn::Int3 => "int3",
        Mn::Int => "int",
        Mn::Into => "into",
        Mn::Iret => "iret",
        Mn::Iretd => "iretd",
        Mn::Iretq => "iretq",
        Mn::Clac => "clac",
        Mn::Stac => "stac",
        Mn::Popcnt => "popcnt",
        Mn::Lzcnt => "lzcnt",
        Mn::Tzcnt => "tzcnt",
        Mn::Cmpxchg8b => "cmpxchg8b",
        Mn::Cmpxchg16b => "cmpxchg16b",
        Mn::Endbr64 => "endbr64",
        Mn::Endbr32 => "endbr32",
        Mn::Rdsspd => "rdsspd",
        Mn::Rdsspq => "rdsspq",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stats_record_counts_per_mnemonic() {
        // Arrange
        let mut stats = EmulationStats::default();
        // Act
        stats.record("popcnt");
        stats.record("popcnt");
        stats.record("int3");
        // Assert
        assert_eq!(stats.count("popcnt"), 2);
        assert_eq!(stats.count("int3"), 1);
        assert_eq!(stats.count("clac"), 0);
        assert_eq!(stats.to_string(), "emulated: total 3 (int3 1, popcnt 2)");
    }

    #[test]
    fn test_stats_merge_adds_counts() {
        let mut a = EmulationStats::default();
        let mut b = EmulationStats::default();
        a.record("pxor");
        b.record("pxor");
        b.record("fninit");
        a.merge(&b);
        assert_eq!(a.count("pxor"), 2);
        assert_eq!(a.total(), 3);
    }
}
