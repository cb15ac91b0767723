//! Text normalisation shared by the string-comparing rules.

use unicase::UniCase;
use unicode_normalization::UnicodeNormalization;

/// How text is normalised before two strings are compared.
///
/// The steps run in this order: Unicode NFC (always: canonically equivalent text is the same
/// text), case folding, punctuation removal, whitespace collapsing, trimming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Normalization {
    /// Full Unicode case folding (`"STRASSE"` and `"straße"` compare equal, so do `"ΟΔΟΣ"` and `"οδοσ"`).
    pub ignore_case: bool,
    /// Every run of Unicode whitespace (spaces, tabs, newlines, no-break spaces …) becomes one space.
    pub collapse_whitespace: bool,
    /// Removes Unicode punctuation (`\p{P}`) and ASCII symbols (`$+<=>^`|~`).
    pub strip_punctuation: bool,
    /// Removes leading and trailing whitespace.
    pub trim: bool,
}

impl Normalization {
    /// Applies the normalisation.
    pub(crate) fn apply(&self, text: &str) -> String {
        let mut out: String = text.nfc().collect();
        if self.ignore_case {
            out = UniCase::new(out).to_folded_case();
        }
        if self.strip_punctuation {
            out.retain(|c| !is_punctuation(c));
        }
        if self.collapse_whitespace {
            out = collapse_whitespace(&out);
        }
        if self.trim {
            out = out.trim().to_owned();
        }
        out
    }
}

/// Unicode punctuation or an ASCII symbol (what Python's `string.punctuation` holds, and more).
fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_punctuation();
    }
    matches!(
        c,
        // General punctuation block: dashes, quotes, daggers, bullets, ellipsis, primes …
        '\u{2010}'..='\u{2027}' | '\u{2030}'..='\u{205E}'
        // CJK symbols and punctuation: 、。〃〈〉《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟
        | '\u{3001}'..='\u{3003}' | '\u{3008}'..='\u{3011}' | '\u{3014}'..='\u{301F}'
        // Fullwidth ASCII punctuation
        | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' | '\u{FF3B}'..='\u{FF40}'
        | '\u{FF5B}'..='\u{FF65}'
        // Latin-1 punctuation: ¡ § « ¶ · » ¿
        | '\u{A1}' | '\u{A7}' | '\u{AB}' | '\u{B6}' | '\u{B7}' | '\u{BB}' | '\u{BF}'
    )
}

/// Every run of whitespace becomes a single space (leading and trailing runs included).
pub(crate) fn collapse_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Normalization = Normalization {
        ignore_case: true,
        collapse_whitespace: true,
        strip_punctuation: true,
        trim: true,
    };

    #[test]
    fn unicode_case_folding_is_full() {
        let n = Normalization {
            strip_punctuation: false,
            ..ALL
        };
        assert_eq!(n.apply("STRASSE"), n.apply("straße"));
        assert_eq!(n.apply("ΟΔΟΣ"), n.apply("οδοσ"));
        assert_eq!(n.apply("ΟΔΟΣ"), n.apply("οδος"));
        assert_ne!(n.apply("Straße"), n.apply("Strasse!"));
    }

    #[test]
    fn composed_and_decomposed_accents_are_equal() {
        let n = Normalization {
            ignore_case: false,
            ..ALL
        };
        assert_eq!(n.apply("caf\u{e9}"), n.apply("cafe\u{301}"));
    }

    #[test]
    fn whitespace_variants_collapse() {
        let n = ALL;
        assert_eq!(n.apply("  a\t\n b\u{a0}\u{2003}c  "), "a b c");
        assert_eq!(collapse_whitespace(" x  "), " x ");
    }

    #[test]
    fn punctuation_goes_symbols_too() {
        let n = ALL;
        assert_eq!(n.apply("«Hello», — world!!! $5+"), "hello world 5");
        assert_eq!(n.apply("「東京」。"), "東京");
    }
}
