//! The kernel command line: `key=value` tokens separated by spaces, the
//! `exit=N` convention, `op=` groups and Linux's
//! `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` announcements.
//!
//! Pure code (only `core`): the host crate compiles this file too and
//! unit-tests it.

/// A command line (or a part of one: an `op=` group's arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cmdline<'a> {
    text: &'a str,
}

/// One `op=NAME` token with the tokens after it, up to the next `op=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op<'a> {
    /// NAME.
    pub name: &'a str,
    /// The tokens that follow, as a command line of their own.
    pub args: Cmdline<'a>,
}

/// A `virtio_mmio.device=` announcement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Size of the register window in bytes.
    pub size: u64,
    /// Physical address of the register window.
    pub base: u64,
    /// Interrupt line (unused by the polling drivers; reported).
    pub irq: u32,
}

impl<'a> Cmdline<'a> {
    /// The command line `text`.
    pub const fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// The whole text.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The space-separated tokens.
    pub fn tokens(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.text.split_ascii_whitespace()
    }

    /// The values of every `key=value` token, in order.
    pub fn values(&self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.tokens()
            .filter_map(move |t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
    }

    /// The value of the last `key=value` token.
    pub fn get(&self, key: &'a str) -> Option<&'a str> {
        self.values(key).last()
    }

    /// The last `key=value` as a number (see [`parse_number`]); `Err`
    /// holds the text that is not one.
    pub fn number(&self, key: &'a str) -> Result<Option<u64>, &'a str> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse_number(v).map(Some).ok_or(v),
        }
    }

    /// The exit code: the leading decimal digits of the last `exit=N`
    /// token (0 without one), like the assembler guests.
    pub fn exit_code(&self) -> u32 {
        self.get("exit").map_or(0, |v| {
            v.bytes().take_while(u8::is_ascii_digit).fold(0u32, |n, d| {
                n.wrapping_mul(10).wrapping_add(u32::from(d - b'0'))
            })
        })
    }

    /// The `op=` groups in order.
    pub fn ops(&self) -> impl Iterator<Item = Op<'a>> + 'a {
        let text = self.text;
        let offset = move |t: &str| t.as_ptr() as usize - text.as_ptr() as usize;
        let mut starts = self.tokens().filter(|t| t.starts_with("op=")).peekable();
        core::iter::from_fn(move || {
            let tok = starts.next()?;
            let args_start = offset(tok) + tok.len();
            let args_end = starts.peek().map_or(text.len(), |next| offset(next));
            Some(Op {
                name: &tok[3..],
                args: Cmdline::new(&text[args_start..args_end]),
            })
        })
    }

    /// The `virtio_mmio.device=` announcements in order; `Err` holds a
    /// value that does not parse.
    pub fn mmio_devices(&self) -> impl Iterator<Item = Result<MmioDevice, &'a str>> + 'a {
        self.values("virtio_mmio.device")
            .map(|v| parse_mmio_device(v).ok_or(v))
    }
}

/// A number as Linux's `memparse` reads one: decimal, or hexadecimal
/// after `0x`, optionally followed by K, M or G (binary multiples).
pub fn parse_number(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    let value = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() => u64::from_str_radix(hex, 16).ok()?,
        Some(_) => return None,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().ok()?
        }
        None => return None,
    };
    value.checked_mul(1 << shift)
}

/// `<size>@<base>:<irq>[:<id>]` (Linux's virtio_mmio.device syntax).
pub fn parse_mmio_device(text: &str) -> Option<MmioDevice> {
    let (size, rest) = text.split_once('@')?;
    let (base, rest) = rest.split_once(':')?;
    let irq = rest.split_once(':').map_or(rest, |(irq, _id)| irq);
    Some(MmioDevice {
        size: parse_number(size)?,
        base: parse_number(base)?,
        irq: irq.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_get_repeated_key_last_wins() {
        // Arrange
        let c = Cmdline::new("a=1 b=2 a=3 ab=9");

        // Act
        let a = c.get("a");

        // Assert
        assert_eq!(a, Some("3"));
        assert_eq!(c.get("c"), None);
    }

    #[test]
    fn test_exit_code_digits_prefix_like_the_asm_guests() {
        assert_eq!(Cmdline::new("x exit=12 y").exit_code(), 12);
        assert_eq!(Cmdline::new("exit=3 exit=7x").exit_code(), 7);
        assert_eq!(Cmdline::new("noexit=5").exit_code(), 0);
        assert_eq!(Cmdline::new("").exit_code(), 0);
    }

    #[test]
    fn test_parse_number_hex_decimal_suffix_parse() {
        assert_eq!(parse_number("512"), Some(512));
        assert_eq!(parse_number("0xfeb00e00"), Some(0xfeb0_0e00));
        assert_eq!(parse_number("4K"), Some(4096));
        assert_eq!(parse_number("2m"), Some(2 << 20));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("0xffffffffffffffffG"), None);
    }

    #[test]
    fn test_mmio_devices_qemu_and_firecracker_forms_parse() {
        // Arrange: QEMU microvm's and Firecracker's spelling.
        let c = Cmdline::new(
            "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 virtio_mmio.device=4K@0xd0000000:5:3",
        );

        // Act
        let devs: Vec<_> = c.mmio_devices().collect();

        // Assert
        assert_eq!(
            devs,
            [
                Ok(MmioDevice {
                    size: 512,
                    base: 0xfeb0_0e00,
                    irq: 12
                }),
                Ok(MmioDevice {
                    size: 4096,
                    base: 0xd000_0000,
                    irq: 5
                }),
            ]
        );
    }

    #[test]
    fn test_mmio_devices_garbage_is_reported() {
        let c = Cmdline::new("virtio_mmio.device=512@nowhere");
        assert_eq!(c.mmio_devices().collect::<Vec<_>>(), [Err("512@nowhere")]);
    }

    #[test]
    fn test_ops_groups_split_at_op_tokens() {
        // Arrange
        let c = Cmdline::new("transport=pci op=blk-write disk=0 seed=7 op=rng bytes=64 op=console");

        // Act
        let ops: Vec<_> = c.ops().collect();

        // Assert
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].name, "blk-write");
        assert_eq!(ops[0].args.get("seed"), Some("7"));
        assert_eq!(ops[0].args.get("bytes"), None);
        assert_eq!(ops[1].name, "rng");
        assert_eq!(ops[1].args.number("bytes"), Ok(Some(64)));
        assert_eq!(ops[2].name, "console");
        assert_eq!(ops[2].args.tokens().count(), 0);
    }
}
