//! Printing relative paths on one log line, whatever bytes they hold, and the local time that
//! log lines and the names of conflict copies carry.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Shows a path with every byte visible and the line unbroken: invalid UTF-8 as `\xNN`,
/// control characters and the invisible characters that reorder or break a line on a screen
/// (see `hides_itself`) escaped, `\` doubled, so a log line is always one line, reads in its
/// own order, and two names never print the same.
pub struct Escaped<'a>(pub &'a Path);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.as_os_str().as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    '\r' => f.write_str("\\r")?,
                    c if c.is_control() || hides_itself(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters that show nothing themselves but change how a line is shown: the bidirectional
/// controls, which reorder what follows (a name could make a line read `removed a.txt` where
/// it removed another), the line and paragraph separators, which break a line on some
/// screens, and the zero-width characters, which make two names look alike.
fn hides_itself(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// The current local time, for log lines and for the time stamps in file names.
pub fn local_now() -> jiff::ZonedDateTime {
    jiff::Timestamp::now().to_zoned_datetime(local_zone().clone())
}

/// The local time zone.
///
/// Read once from `TZ` or `/etc/localtime` (only its offsets matter here). jiff's own lookup
/// of the system zone would also index the names of the whole zoneinfo tree: a quarter of a
/// pass over a small unchanged tree (2.7 ms against 2.0 ms, measured).
pub fn local_zone() -> &'static jiff::tz::TimeZone {
    use jiff::tz::TimeZone;
    static ZONE: std::sync::OnceLock<TimeZone> = std::sync::OnceLock::new();
    ZONE.get_or_init(|| {
        if std::env::var_os("TZ").is_none()
            && let Ok(data) = std::fs::read("/etc/localtime")
            && let Ok(zone) = TimeZone::tzif("Local", &data)
        {
            return zone;
        }
        TimeZone::system()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn escapes_what_reorders_or_breaks_a_line_on_a_screen() {
        let p = Path::new("a\u{202e}txt.exe\u{2028}b\u{200b}c\u{2067}d\u{feff}é");
        assert_eq!(
            Escaped(p).to_string(),
            "a\\u{202e}txt.exe\\u{2028}b\\u{200b}c\\u{2067}d\\u{feff}é"
        );
    }

    #[test]
    fn escapes_invalid_bytes_newlines_and_backslashes() {
        let p = Path::new(OsStr::from_bytes(b"caf\xe9/a\nb\\c d"));
        assert_eq!(Escaped(p).to_string(), "caf\\xe9/a\\nb\\\\c d");
    }
}
