//! The VGA text console: the 80x25 buffer at guest physical 0xb8000 rendered as host text.
//!
//! The text buffer is plain guest RAM that the VMM reads when it wants to show the screen (on
//! exit, on a timeout, on SIGUSR1): there is no display. The VGA ports 0x3c0-0x3df are claimed
//! by [`VgaPorts`] only so that text-mode drivers see sane values: registers read back what was
//! written, the CRTC cursor position (registers 0x0e/0x0f) is kept for the rendering, the input
//! status register toggles its retrace bits so wait loops end, and the misc output register says
//! "colour, I/O at 0x3dx".

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{Bytes, GuestAddress};

use super::{DeviceError, PortDevice};
use crate::vm_events::VmEvent;

/// First VGA port claimed.
pub const VGA_PORTS_BASE: u16 = 0x3c0;
/// Ports claimed (0x3c0-0x3df).
pub const VGA_PORTS_LEN: u16 = 0x20;
/// Guest physical address of the colour text buffer.
pub const VGA_TEXT_ADDR: u64 = 0xb8000;
/// Columns of the text mode.
pub const COLUMNS: usize = 80;
/// Rows of the text mode.
pub const ROWS: usize = 25;
/// Bytes of the text buffer: (character, attribute) per cell.
pub const TEXT_BYTES: usize = COLUMNS * ROWS * 2;

const MISC_OUTPUT_COLOUR: u8 = 0x67;
const CRTC_CURSOR_START: usize = 0x0a;
const CRTC_CURSOR_HIGH: usize = 0x0e;
const CRTC_CURSOR_LOW: usize = 0x0f;
const CURSOR_DISABLED: u8 = 0x20;

/// Code page 437 glyphs for bytes 0x00-0x1f (0x00 shows as a space).
const CP437_LOW: [char; 32] = [
    ' ', '☺', '☻', '♥', '♦', '♣', '♠', '•', '◘', '○', '◙', '♂', '♀', '♪', '♫', '☼', //
    '►', '◄', '↕', '‼', '¶', '§', '▬', '↨', '↑', '↓', '→', '←', '∟', '↔', '▲', '▼',
];

/// Code page 437 glyphs for bytes 0x80-0xff (0xff, a no-break space, shows as a space).
const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', ' ',
];

/// The Unicode character for a CP437 byte.
pub fn cp437_to_char(b: u8) -> char {
    match b {
        0x00..=0x1f => CP437_LOW[usize::from(b)],
        0x7f => '⌂',
        0x20..=0x7e => char::from(b),
        _ => CP437_HIGH[usize::from(b - 0x80)],
    }
}

/// Renders an 80x25 text buffer as 25 lines, each ending in `\n`, trailing blanks trimmed.
/// On the cursor's row (`(row, column)`), the line is kept up to the cursor so a prompt's
/// trailing space survives. Attributes (colours) are dropped.
pub fn render_text(buf: &[u8; TEXT_BYTES], cursor: Option<(usize, usize)>) -> String {
    let mut text = String::with_capacity(ROWS * (COLUMNS + 1));
    for (row, cells) in buf.chunks_exact(COLUMNS * 2).enumerate() {
        let line: Vec<char> = cells.chunks_exact(2).map(|c| cp437_to_char(c[0])).collect();
        let mut len = line.iter().rposition(|&c| c != ' ').map_or(0, |i| i + 1);
        if let Some((crow, ccol)) = cursor {
            if crow == row && ccol <= COLUMNS {
                len = len.max(ccol);
            }
        }
        text.extend(&line[..len]);
        text.push('\n');
    }
    text
}

/// Renders the buffer between a header naming the cursor position and a footer; a blank
/// screen is reported as such instead of 25 empty lines.
pub fn render_framed(buf: &[u8; TEXT_BYTES], cursor: Option<(usize, usize)>) -> String {
    let mut text = match cursor {
        Some((r, c)) => {
            format!("----- VGA text console (80x25), cursor at row {r}, column {c} -----\n")
        }
        None => "----- VGA text console (80x25), cursor off -----\n".to_string(),
    };
    if buf.chunks_exact(2).all(|c| c[0] == b' ' || c[0] == 0) {
        text.push_str("(blank screen)\n");
    } else {
        text.push_str(&render_text(buf, cursor));
    }
    text.push_str("----- end of VGA text console -----\n");
    text
}

/// The VGA register file behind ports 0x3c0-0x3df.
#[derive(Debug)]
pub struct VgaPorts {
    misc_output: u8,
    seq_index: u8,
    seq: [u8; 8],
    gc_index: u8,
    gc: [u8; 16],
    crtc_index: u8,
    crtc: [u8; 32],
    attr_index: u8,
    attr_data_next: bool,
    attr: [u8; 32],
    dac_mask: u8,
    status_toggle: u8,
}

impl Default for VgaPorts {
    fn default() -> VgaPorts {
        let mut crtc = [0u8; 32];
        crtc[CRTC_CURSOR_START] = 0x0d;
        crtc[CRTC_CURSOR_START + 1] = 0x0e;
        VgaPorts {
            misc_output: MISC_OUTPUT_COLOUR,
            seq_index: 0,
            seq: [0; 8],
            gc_index: 0,
            gc: [0; 16],
            crtc_index: 0,
            crtc,
            attr_index: 0,
            attr_data_next: false,
            attr: [0; 32],
            dac_mask: 0xff,
            status_toggle: 0,
        }
    }
}

impl VgaPorts {
    /// The cursor as (row, column), or `None` when the cursor is disabled or off screen.
    pub fn cursor(&self) -> Option<(usize, usize)> {
        if self.crtc[CRTC_CURSOR_START] & CURSOR_DISABLED != 0 {
            return None;
        }
        let pos =
            usize::from(self.crtc[CRTC_CURSOR_HIGH]) << 8 | usize::from(self.crtc[CRTC_CURSOR_LOW]);
        (pos < COLUMNS * ROWS).then_some((pos / COLUMNS, pos % COLUMNS))
    }

    fn read_port(&mut self, offset: u16) -> u8 {
        match offset {
            0x00 => self.attr_index,
            0x01 => self.attr[usize::from(self.attr_index & 0x1f)],
            0x04 => self.seq_index,
            0x05 => self.seq[usize::from(self.seq_index & 0x07)],
            0x06 => self.dac_mask,
            0x0c => self.misc_output,
            0x0e => self.gc_index,
            0x0f => self.gc[usize::from(self.gc_index & 0x0f)],
            0x14 => self.crtc_index,
            0x15 => self.crtc[usize::from(self.crtc_index & 0x1f)],
            0x1a => {
                // Input status 1: toggle display-enable and vertical retrace; resets the
                // attribute controller's index/data flip-flop.
                self.attr_data_next = false;
                self.status_toggle ^= 0x09;
                self.status_toggle
            }
            _ => 0,
        }
    }

    fn write_port(&mut self, offset: u16, value: u8) {
        match offset {
            0x00 if self.attr_data_next => {
                self.attr[usize::from(self.attr_index & 0x1f)] = value;
                self.attr_data_next = false;
            }
            0x00 => {
                self.attr_index = value;
                self.attr_data_next = true;
            }
            0x02 => self.misc_output = value,
            0x04 => self.seq_index = value,
            0x05 => self.seq[usize::from(self.seq_index & 0x07)] = value,
            0x06 => self.dac_mask = value,
            0x0e => self.gc_index = value,
            0x0f => self.gc[usize::from(self.gc_index & 0x0f)] = value,
            0x14 => self.crtc_index = value,
            0x15 => self.crtc[usize::from(self.crtc_index & 0x1f)] = value,
            _ => {}
        }
    }
}

impl PortDevice for VgaPorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.read_port(offset.saturating_add(i as u16));
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<VmEvent> {
        // A word write to an index port sets index and data at once (`outw 0x3d4`).
        for (i, &b) in data.iter().enumerate() {
            self.write_port(offset.saturating_add(i as u16), b);
        }
        None
    }
}

/// The VMM's helper that dumps the text screen.
#[derive(Clone)]
pub struct VgaText {
    ports: Arc<Mutex<VgaPorts>>,
}

impl VgaText {
    /// A helper reading the cursor from `ports`.
    pub fn new(ports: Arc<Mutex<VgaPorts>>) -> VgaText {
        VgaText { ports }
    }

    fn lock(&self) -> MutexGuard<'_, VgaPorts> {
        self.ports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cursor as (row, column), if enabled.
    pub fn cursor(&self) -> Option<(usize, usize)> {
        self.lock().cursor()
    }

    /// Copies the 4000-byte text buffer out of guest memory (any `GuestMemory`, e.g. a
    /// `GuestMemoryMmap`).
    pub fn snapshot<M>(&self, mem: &M) -> Result<Box<[u8; TEXT_BYTES]>, DeviceError>
    where
        M: Bytes<GuestAddress> + ?Sized,
        M::E: std::fmt::Display,
    {
        let mut buf = Box::new([0u8; TEXT_BYTES]);
        mem.read_slice(&mut buf[..], GuestAddress(VGA_TEXT_ADDR))
            .map_err(|e| DeviceError::ReadVgaMemory(e.to_string()))?;
        Ok(buf)
    }

    /// Writes the framed rendering of the screen to `out`.
    pub fn dump<M, W>(&self, mem: &M, out: &mut W) -> Result<(), DeviceError>
    where
        M: Bytes<GuestAddress> + ?Sized,
        M::E: std::fmt::Display,
        W: Write + ?Sized,
    {
        let buf = self.snapshot(mem)?;
        let text = render_framed(&buf, self.cursor());
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(DeviceError::WriteVgaText)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn screen(lines: &[(usize, &[u8])]) -> Box<[u8; TEXT_BYTES]> {
        let mut buf = Box::new([0u8; TEXT_BYTES]);
        for cell in buf.chunks_exact_mut(2) {
            cell.copy_from_slice(&[b' ', 0x07]);
        }
        for &(row, bytes) in lines {
            for (col, &b) in bytes.iter().enumerate() {
                buf[(row * COLUMNS + col) * 2] = b;
            }
        }
        buf
    }

    #[test]
    fn test_render_text_box_characters_mapped() {
        let buf = screen(&[
            (0, &[0xc9, 0xcd, 0xbb][..]),
            (1, &[0xba, b'A', 0xba][..]),
            (2, &[0xc8, 0xcd, 0xbc][..]),
            (3, &[0xb0, 0xb1, 0xb2, 0xdb, 0xda, 0xc4, 0xbf][..]),
        ]);

        let text = render_text(&buf, None);

        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), ROWS);
        assert_eq!(&lines[..5], ["╔═╗", "║A║", "╚═╝", "░▒▓█┌─┐", ""]);
    }

    #[test]
    fn test_render_text_trailing_spaces_trimmed_except_to_cursor() {
        let buf = screen(&[(0, b"hello   "), (1, b"$ ")]);

        let text = render_text(&buf, Some((1, 2)));

        assert!(text.starts_with("hello\n$ \n\n"));
    }

    #[test]
    fn test_render_text_nul_and_nbsp_are_spaces() {
        let buf = screen(&[(0, &[b'a', 0x00, 0xff, b'b'][..])]);

        let text = render_text(&buf, None);

        assert!(text.starts_with("a  b\n"));
    }

    #[test]
    fn test_render_framed_blank_screen_reported() {
        let buf = Box::new([0u8; TEXT_BYTES]);

        let text = render_framed(&buf, None);

        assert!(text.contains("(blank screen)"));
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn test_vga_ports_cursor_from_crtc() {
        let mut ports = VgaPorts::default();
        let pos: u16 = 3 * 80 + 7;

        ports.write(0x14, &[0x0e, (pos >> 8) as u8]);
        ports.write(0x14, &[0x0f, pos as u8]);

        assert_eq!(ports.cursor(), Some((3, 7)));
    }

    #[test]
    fn test_vga_ports_status_toggles_and_misc_reads_colour() {
        let mut ports = VgaPorts::default();
        let (mut a, mut b, mut misc) = ([0u8], [0u8], [0u8]);

        ports.read(0x1a, &mut a);
        ports.read(0x1a, &mut b);
        ports.read(0x0c, &mut misc);

        assert_ne!(a[0] & 0x08, b[0] & 0x08);
        assert_eq!(misc[0], MISC_OUTPUT_COLOUR);
    }

    #[test]
    fn test_vga_text_dump_reads_guest_memory() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        mem.write_slice(&[b'O', 0x07, b'K', 0x07], GuestAddress(VGA_TEXT_ADDR + 160))
            .expect("write");
        let vga = VgaText::new(Arc::new(Mutex::new(VgaPorts::default())));
        let mut out = Vec::new();

        vga.dump(&mem, &mut out).expect("dump");

        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(text.lines().nth(2), Some("OK"));
    }

    #[test]
    fn test_vga_text_dump_without_memory_is_error() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).expect("memory");
        let vga = VgaText::new(Arc::new(Mutex::new(VgaPorts::default())));

        let result = vga.dump(&mem, &mut Vec::new());

        assert!(matches!(result, Err(DeviceError::ReadVgaMemory(_))));
    }
}
