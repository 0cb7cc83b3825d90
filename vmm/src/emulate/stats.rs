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

/// Lower-case name of `m` (iced's name, but `fwait` for `wait` as assemblers spell it).
pub(crate) fn name(m: Mnemonic) -> &'static str {
    if m == Mnemonic::Wait {
        return "fwait";
    }
    super::mnemonic_names::name(m)
}

/// Lower-case name of a mnemonic the emulator handles; None for the others.
pub(crate) fn mnemonic_name(m: Mnemonic) -> Option<&'static str> {
    use Mnemonic as Mn;
    matches!(
        m,
        Mn::Wait
            | Mn::Fninit
            | Mn::Finit
            | Mn::Fnclex
            | Mn::Fclex
            | Mn::Fnstsw
            | Mn::Fstsw
            | Mn::Fnstcw
            | Mn::Fstcw
            | Mn::Fldcw
            | Mn::Fld1
            | Mn::Fldz
            | Mn::Fld
            | Mn::Fst
            | Mn::Fstp
            | Mn::Fxch
            | Mn::Fchs
            | Mn::Fdivp
            | Mn::Fdivrp
            | Mn::Fucomip
            | Mn::Fnsetpm
            | Mn::Fadd
            | Mn::Faddp
            | Mn::Fiadd
            | Mn::Fmul
            | Mn::Fmulp
            | Mn::Fimul
            | Mn::Fsub
            | Mn::Fsubp
            | Mn::Fisub
            | Mn::Fsubr
            | Mn::Fsubrp
            | Mn::Fisubr
            | Mn::Fdiv
            | Mn::Fidiv
            | Mn::Fdivr
            | Mn::Fidivr
            | Mn::Fcom
            | Mn::Fcomp
            | Mn::Fcompp
            | Mn::Fucom
            | Mn::Fucomp
            | Mn::Fucompp
            | Mn::Ficom
            | Mn::Ficomp
            | Mn::Fcomi
            | Mn::Fcomip
            | Mn::Fucomi
            | Mn::Fcmovb
            | Mn::Fcmove
            | Mn::Fcmovbe
            | Mn::Fcmovu
            | Mn::Fcmovnb
            | Mn::Fcmovne
            | Mn::Fcmovnbe
            | Mn::Fcmovnu
            | Mn::Fild
            | Mn::Fist
            | Mn::Fistp
            | Mn::Fisttp
            | Mn::Fbld
            | Mn::Fbstp
            | Mn::Ffree
            | Mn::Ffreep
            | Mn::Fabs
            | Mn::Ftst
            | Mn::Fxam
            | Mn::Fldl2t
            | Mn::Fldl2e
            | Mn::Fldpi
            | Mn::Fldlg2
            | Mn::Fldln2
            | Mn::F2xm1
            | Mn::Fyl2x
            | Mn::Fptan
            | Mn::Fpatan
            | Mn::Fxtract
            | Mn::Fprem1
            | Mn::Fdecstp
            | Mn::Fincstp
            | Mn::Fprem
            | Mn::Fyl2xp1
            | Mn::Fsqrt
            | Mn::Fsincos
            | Mn::Frndint
            | Mn::Fscale
            | Mn::Fsin
            | Mn::Fcos
            | Mn::Fnop
            | Mn::Movd
            | Mn::Movq
            | Mn::Movss
            | Mn::Movsd
            | Mn::Movaps
            | Mn::Movapd
            | Mn::Movups
            | Mn::Movupd
            | Mn::Movdqa
            | Mn::Movdqu
            | Mn::Pxor
            | Mn::Por
            | Mn::Pand
            | Mn::Pandn
            | Mn::Xorps
            | Mn::Xorpd
            | Mn::Andps
            | Mn::Andnps
            | Mn::Orps
            | Mn::Pcmpeqb
            | Mn::Pmovmskb
            | Mn::Ldmxcsr
            | Mn::Stmxcsr
            | Mn::Fxsave
            | Mn::Fxsave64
            | Mn::Fxrstor
            | Mn::Fxrstor64
            | Mn::Int3
            | Mn::Int
            | Mn::Into
            | Mn::Iret
            | Mn::Iretd
            | Mn::Iretq
            | Mn::Clac
            | Mn::Stac
            | Mn::Popcnt
            | Mn::Lzcnt
            | Mn::Tzcnt
            | Mn::Cmpxchg8b
            | Mn::Cmpxchg16b
            | Mn::Endbr64
            | Mn::Endbr32
            | Mn::Rdsspd
            | Mn::Rdsspq
    )
    .then(|| name(m))
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
