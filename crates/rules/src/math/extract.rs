//! Finding the final answer in a response: the last `\boxed{…}`, else the last inline math or
//! the last number.

use std::sync::LazyLock;

use regex::Regex;

/// Commands whose braced argument is the answer.
const BOX_COMMANDS: &[&str] = &["boxed", "fbox"];

/// A number as it appears in running text: a LaTeX fraction (signed), `a/b`, an integer or
/// decimal (thousands separators `,` or `{,}`, exponent, percent allowed). ASCII digits only:
/// `\d` would also take digits of other scripts, which no numeric parser reads.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        [-−]?\\[dt]?frac\s*\{\s*[-−]?[0-9][0-9,.]*\s*\}\s*\{\s*[-−]?[0-9][0-9,.]*\s*\}
        | [-−]?[0-9]+(?:\.[0-9]+)?\s*/\s*[0-9]+(?:\.[0-9]+)?
        | [-−]?(?:[0-9]{1,3}(?:(?:,|\{,\})[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?:\s*\\?%)?
        | [-−]?\.[0-9]+(?:\s*\\?%)?
        ",
    )
    .expect("the number pattern is valid")
});

/// The content of the last complete, non-empty `\boxed{…}` (or `\fbox{…}`, or `\boxed 5`).
///
/// Braces nest (`\boxed{\frac{1}{\sqrt{2}}}`); escaped braces `\{ \}` do not count. A box left
/// open (a truncated response) is skipped. "Last" is the box that closes last.
pub(crate) fn last_boxed(text: &str) -> Option<&str> {
    // One forward pass with a stack of open braces, so the cost stays linear however many
    // unbalanced boxes the text holds.
    let bytes = text.as_bytes();
    let mut open: Vec<(usize, bool)> = Vec::new(); // (content start, is a box)
    let mut last: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let name_end = i
                    + 1
                    + text[i + 1..]
                        .bytes()
                        .take_while(u8::is_ascii_alphabetic)
                        .count();
                if name_end == i + 1 {
                    i += 2; // an escaped character such as `\{`
                    continue;
                }
                if BOX_COMMANDS.contains(&&text[i + 1..name_end]) {
                    let rest = &text[name_end..];
                    let arg_start = name_end + (rest.len() - rest.trim_start().len());
                    if bytes.get(arg_start) == Some(&b'{') {
                        open.push((arg_start + 1, true));
                        i = arg_start + 1;
                        continue;
                    }
                    if arg_start > name_end {
                        // `\boxed 5`: the argument runs to whitespace or `$`.
                        let len = text[arg_start..]
                            .find(|c: char| c.is_whitespace() || c == '$')
                            .unwrap_or(text.len() - arg_start);
                        if len > 0 {
                            last = Some((arg_start, arg_start + len));
                        }
                        i = arg_start + len;
                        continue;
                    }
                }
                i = name_end;
            }
            b'{' => {
                open.push((i + 1, false));
                i += 1;
            }
            b'}' => {
                if let Some((start, true)) = open.pop()
                    && !text[start..i].trim().is_empty()
                {
                    last = Some((start, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    last.map(|(start, end)| text[start..end].trim())
}

/// The answer part of a reference: its last `\boxed{…}`, else what follows its last `####`
/// (the GSM8K convention), else all of it.
pub(crate) fn reference_answer(reference: &str) -> &str {
    last_boxed(reference)
        .or_else(|| {
            reference
                .rsplit_once("####")
                .map(|(_, answer)| answer.trim())
        })
        .unwrap_or(reference)
}

/// Inline math in running text: its content and where the whole span, delimiters included,
/// starts and ends (byte offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InlineMath<'a> {
    /// Between the delimiters, trimmed.
    pub content: &'a str,
    /// Where the opening delimiter starts.
    pub start: usize,
    /// Just past the closing delimiter.
    pub end: usize,
}

/// The last non-empty inline math of the text: `$…$`, `$$…$$` or `\(…\)`.
///
/// `\$` is a dollar sign, not a delimiter; a span left open (a lone `$ 5` price, a truncated
/// response) is none. "Last" is the span that closes last.
pub(crate) fn last_inline_math(text: &str) -> Option<InlineMath<'_>> {
    // The open span: where it starts, where its content starts, its closing delimiter.
    // Bytes, not chars: every delimiter is ASCII, so the offsets found are char boundaries.
    let mut open: Option<(usize, usize, &[u8])> = None;
    let mut last = None;
    let mut i = 0;
    while i < text.len() {
        let rest = &text.as_bytes()[i..];
        if let Some((start, content_start, closing)) = open {
            if rest.starts_with(closing) {
                let content = text[content_start..i].trim();
                i += closing.len();
                if !content.is_empty() {
                    last = Some(InlineMath {
                        content,
                        start,
                        end: i,
                    });
                }
                open = None;
                continue;
            }
        } else if let Some((delimiter, closing)) =
            [(&b"$$"[..], &b"$$"[..]), (b"$", b"$"), (br"\(", br"\)")]
                .into_iter()
                .find(|(delimiter, _)| rest.starts_with(delimiter))
        {
            open = Some((i, i + delimiter.len(), closing));
            i += delimiter.len();
            continue;
        }
        // An escaped character such as `\$` is no delimiter.
        i += if rest[0] == b'\\' { 2 } else { 1 };
    }
    last
}

/// The last number in running text, as written (`-3`, `1,000`, `3/4`, `\frac{1}{2}`, `50%`),
/// and the byte offset where it starts.
///
/// A minus sign glued to a preceding letter, digit or closing bracket is a subtraction or a
/// hyphen, not a sign: in `x-5` and `2023-05` the last number is `5` and `05`.
pub(crate) fn last_number(text: &str) -> Option<(usize, &str)> {
    let found = NUMBER.find_iter(text).last()?;
    let number = found.as_str();
    let Some(unsigned) = number
        .strip_prefix('-')
        .or_else(|| number.strip_prefix('−'))
    else {
        return Some((found.start(), number));
    };
    let glued = text[..found.start()]
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || matches!(c, ')' | ']' | '}'));
    Some(if glued {
        (found.end() - unsigned.len(), unsigned)
    } else {
        (found.start(), number)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Option<&str> {
        last_number(text).map(|(_, number)| number)
    }

    #[test]
    fn nested_boxed() {
        assert_eq!(
            last_boxed(r"so \boxed{\frac{1}{\sqrt{2}}}."),
            Some(r"\frac{1}{\sqrt{2}}")
        );
        assert_eq!(last_boxed(r"\boxed{{a}{b}}"), Some("{a}{b}"));
    }

    #[test]
    fn the_last_box_wins_and_broken_ones_are_skipped() {
        assert_eq!(last_boxed(r"\boxed{1} then \boxed{2}"), Some("2"));
        assert_eq!(
            last_boxed(r"\boxed{7} and finally \boxed{8"),
            Some("7"),
            "truncated"
        );
        assert_eq!(last_boxed(r"\boxed{3} \boxed{ }"), Some("3"), "empty box");
        assert_eq!(
            last_boxed(r"\boxed{\{1,2\}}"),
            Some(r"\{1,2\}"),
            "escaped braces"
        );
        assert_eq!(last_boxed(r"\fbox{9}"), Some("9"));
        assert_eq!(last_boxed(r"$\boxed 5$"), Some("5"));
        assert_eq!(last_boxed(r"\boxed  {6}"), Some("6"));
        assert_eq!(last_boxed(r"\boxedx{6}"), None);
        assert_eq!(last_boxed(r"no box }}} {{{ \\"), None);
        assert_eq!(last_boxed(""), None);
        assert_eq!(last_boxed("\\"), None);
        assert_eq!(last_boxed("\\boxed"), None);
        assert_eq!(last_boxed("é\\é{ü}"), None);
    }

    #[test]
    fn many_unclosed_boxes_stay_linear() {
        let text = r"\boxed{".repeat(200_000);
        assert_eq!(last_boxed(&text), None);
    }

    #[test]
    fn reference_answers() {
        assert_eq!(reference_answer(r"so \boxed{3} #### 4"), "3");
        assert_eq!(reference_answer("2 + 2 = 4\n#### 4 "), "4");
        assert_eq!(reference_answer("1/2"), "1/2");
        assert_eq!(reference_answer("####"), "");
    }

    #[test]
    fn inline_math() {
        let content = |text| last_inline_math(text).map(|math| math.content);
        assert_eq!(content(r"is $a$ then $ 3\sqrt{7} $."), Some(r"3\sqrt{7}"));
        assert_eq!(content(r"is \(x\) and $$y$$"), Some("y"));
        assert_eq!(content(r"$a$$b$"), Some("b"));
        assert_eq!(content(r"$$a$b$$"), Some("a$b"));
        assert_eq!(content(r"$\$5$"), Some(r"\$5"));
        assert_eq!(content(r"\$5 and \$6"), None);
        assert_eq!(content(r"costs $5 today"), None, "left open");
        assert_eq!(
            content(r"$x$ and $ $"),
            Some("x"),
            "empty spans are skipped"
        );
        assert_eq!(content(r"\(x"), None);
        assert_eq!(content(r"é$ü$\é$"), Some("ü"));
        assert_eq!(content(""), None);
        assert_eq!(content("\\"), None);
        assert_eq!(
            last_inline_math("ab $x$ c"),
            Some(InlineMath {
                content: "x",
                start: 3,
                end: 6
            })
        );
    }

    #[test]
    fn last_number_forms() {
        assert_eq!(number("3 apples and 4 pears, so 7."), Some("7"));
        assert_eq!(number("It costs 1,000,000 dollars"), Some("1,000,000"));
        assert_eq!(number("values 1, 2, 3"), Some("3"));
        assert_eq!(number("the answer is -12."), Some("-12"));
        assert_eq!(number("the answer is −12"), Some("−12"));
        assert_eq!(number("x-5"), Some("5"));
        assert_eq!(number("(2)-3"), Some("3"));
        assert_eq!(number("we get 3/4"), Some("3/4"));
        assert_eq!(number(r"we get $\frac{3}{4}$"), Some(r"\frac{3}{4}"));
        assert_eq!(number(r"we get \dfrac {3} {4}"), Some(r"\dfrac {3} {4}"));
        assert_eq!(number(r"so -\frac{5}{6}."), Some(r"-\frac{5}{6}"));
        assert_eq!(number(r"\boxed{-\dfrac{5}{6}"), Some(r"-\dfrac{5}{6}"));
        assert_eq!(number(r"1-\frac{5}{6}"), Some(r"\frac{5}{6}"));
        assert_eq!(number(r"is 16{,}842."), Some("16{,}842"));
        assert_eq!(number(r"is 1{,}84"), Some("84"));
        assert_eq!(last_number("a -3"), Some((2, "-3")));
        assert_eq!(last_number("a-3"), Some((2, "3")));
        assert_eq!(number("rate 12.5%"), Some("12.5%"));
        assert_eq!(number(r"rate 12.5\%"), Some(r"12.5\%"));
        assert_eq!(number("about 6.02e23"), Some("6.02e23"));
        assert_eq!(number("just .5"), Some(".5"));
        assert_eq!(
            number("٣ and ３"),
            None,
            "non-ASCII digits are not numbers here"
        );
        assert_eq!(number("no digits"), None);
        assert_eq!(number(""), None);
    }
}
