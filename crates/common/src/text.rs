//! Checks on free text that reaches storage or a query: no characters that
//! hide or reorder what an operator reads, and bounded filter lengths.

/// The longest value a list filter (`?name=`, `?q=`, ...) may have, in
/// characters.
pub const MAX_FILTER_CHARS: usize = 256;

/// Bidirectional embedding, override and isolate controls: they make text
/// display in another order than it is stored.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Refuses control characters (NUL, newlines, escapes, C1) and bidirectional
/// controls in `value`, naming `field` in the message.
pub fn check_printable(field: &str, value: &str) -> Result<(), String> {
    match value
        .chars()
        .find(|c| c.is_control() || is_bidi_control(*c))
    {
        Some(c) => Err(format!(
            "{field} must not contain control or bidirectional-override characters (found U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Refuses a list filter longer than [`MAX_FILTER_CHARS`] characters.
pub fn check_filter(field: &str, value: Option<&str>) -> Result<(), String> {
    match value {
        Some(v) if v.chars().count() > MAX_FILTER_CHARS => Err(format!(
            "the {field} filter must be at most {MAX_FILTER_CHARS} characters"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_refused() {
        assert!(check_printable("name", "Kitchen sensor — 2ᵉ étage").is_ok());
        for bad in [
            "a\0b",
            "line\nbreak",
            "esc\u{1b}[31m",
            "\u{202E}txt.exe",
            "x\u{2066}y",
            "\u{85}",
        ] {
            let err = check_printable("name", bad).unwrap_err();
            assert!(err.contains("name must not contain"), "{err}");
        }
    }

    #[test]
    fn long_filters_are_refused() {
        assert!(check_filter("name", None).is_ok());
        assert!(check_filter("name", Some(&"é".repeat(MAX_FILTER_CHARS))).is_ok());
        assert!(check_filter("name", Some(&"a".repeat(MAX_FILTER_CHARS + 1))).is_err());
    }
}
