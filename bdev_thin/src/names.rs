//! Names that clients choose (bdevs, pools, volumes, exports): their bounds, and how a log line
//! shows them.
//!
//! The bounds follow SPDK: a JSON string holding a NUL is no C string and is refused when
//! decoded (`Params`), a bdev name may not be empty, and pool and volume names, like lvol store
//! and lvol names, hold at most 63 bytes (the metadata's `NAME_BYTES_MAX`). SPDK leaves bdev
//! names otherwise unbounded; here they hold at most `limits::BDEV_NAME_BYTES_MAX` bytes, so one
//! request cannot make every listing and log line carry kilobytes. NBD export names hold at
//! most 4096 bytes, the protocol's bound on a string.
//!
//! Names may still hold newlines and other control characters (SPDK allows them, and pools
//! written elsewhere may carry them): logs print every name through [`Escaped`], so one event
//! stays one line and a name cannot forge another.

use std::fmt::{self, Write};

use crate::limits;

/// Checks a bdev's name at its creation: 1 to `limits::BDEV_NAME_BYTES_MAX` bytes. The message
/// names the parameter and the bound.
pub fn check_bdev_name(key: &str, name: &str) -> Result<(), String> {
    let max = limits::BDEV_NAME_BYTES_MAX;
    if name.is_empty() || name.len() > max {
        return Err(format!("{key}: must be 1 to {max} bytes (got {})", name.len()));
    }
    Ok(())
}

/// Writes one line to the log (stderr) with every control character escaped (see [`Escaped`]):
/// for lines that show names or messages holding them.
pub fn log_line(line: fmt::Arguments<'_>) {
    eprintln!("{}", Escaped(line));
}

/// Shows `T` with control characters and backslashes escaped as Rust writes them (`\n`,
/// `\u{0}`, `\\`), and the Unicode line and paragraph separators too: what a log prints of a
/// name, or of a message that holds one, is one line and reads back unambiguously.
pub struct Escaped<T>(pub T);

impl<T: fmt::Display> fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(EscapingWriter(f), "{}", self.0)
    }
}

impl<T: fmt::Display> fmt::Debug for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

struct EscapingWriter<'a, 'b>(&'a mut fmt::Formatter<'b>);

impl Write for EscapingWriter<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for c in text.chars() {
            if c.is_control() || matches!(c, '\\' | '\u{2028}' | '\u{2029}') {
                write!(self.0, "{}", c.escape_default())?;
            } else {
                self.0.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_split_or_forge_a_line() {
        let shown = Escaped("pool\n[reactor] forged\r\0\\n\u{2028}é").to_string();
        assert_eq!(shown, "pool\\n[reactor] forged\\r\\u{0}\\\\n\\u{2028}é");
        assert_eq!(Escaped(format_args!("a{}b", '\t')).to_string(), "a\\tb");
    }

    #[test]
    fn bdev_names_are_bounded() {
        assert!(check_bdev_name("name", "").is_err());
        assert!(check_bdev_name("name", &"x".repeat(limits::BDEV_NAME_BYTES_MAX)).is_ok());
        let long = "x".repeat(limits::BDEV_NAME_BYTES_MAX + 1);
        assert_eq!(
            check_bdev_name("name", &long).unwrap_err(),
            format!("name: must be 1 to {} bytes (got 256)", limits::BDEV_NAME_BYTES_MAX)
        );
    }
}
