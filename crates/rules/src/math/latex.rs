//! Normalising a LaTeX answer so that equal answers written differently compare equal.

use std::collections::HashMap;

/// Commands whose braced argument is kept (or, for units, dropped) without the command.
const TEXT_COMMANDS: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textrm",
    "textnormal",
    "mathrm",
    "mathbf",
    "mathit",
    "mbox",
    "operatorname",
    "boxed",
    "fbox",
];

/// Spacing and sizing commands that carry no meaning in an answer.
const NOISE: &[&str] = &[
    r"\left",
    r"\right",
    r"\bigl",
    r"\bigr",
    r"\Bigl",
    r"\Bigr",
    r"\displaystyle",
    r"\!",
    r"\,",
    r"\;",
    r"\:",
    r"\ ",
    r"\quad",
    r"\qquad",
    r"\$",
    "$",
    "~",
    "{,}",
    r"^{\circ}",
    r"^\circ",
    r"\circ",
    "°",
];

/// What becomes of `\text{…}` groups (and their kin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextGroups {
    /// `\text{cm}` → `cm`.
    Unwrap,
    /// `5\text{ cm}` → `5`: units gone, so the number can be read.
    Drop,
}

/// The normal form of an answer:
///
/// - `\dfrac`, `\tfrac` → `\frac`; `\frac12` → `\frac{1}{2}`; `\sqrt3` → `\sqrt{3}`;
/// - `\%` → `%`; `−` → `-`; dollar signs, `\left`/`\right`, spacing commands, degree signs and
///   LaTeX thousands separators `{,}` removed;
/// - `\text{…}`, `\mathrm{…}`, `\boxed{…}` … unwrapped or dropped, per `text_groups`;
/// - all whitespace removed, trailing periods removed;
/// - `x = 5` → `5` (a short variable name on the left of a single `=`).
pub(crate) fn normalize(answer: &str, text_groups: TextGroups) -> String {
    let mut s = answer.replace('−', "-");
    for (from, to) in [(r"\dfrac", r"\frac"), (r"\tfrac", r"\frac"), (r"\%", "%")] {
        s = s.replace(from, to);
    }
    for noise in NOISE {
        s = s.replace(noise, "");
    }
    let mut s = text_commands(&s, text_groups);
    s.retain(|c| !c.is_whitespace());
    let mut s = braced_shorthand(&s, r"\frac", 2);
    s = braced_shorthand(&s, r"\sqrt", 1);
    while s.ends_with('.') {
        s.pop();
    }
    if let Some((lhs, rhs)) = s.split_once('=')
        && !rhs.contains('=')
        && !lhs.is_empty()
        && lhs.chars().count() <= 2
        && lhs.chars().all(char::is_alphabetic)
    {
        s = rhs.to_owned();
    }
    s
}

/// Unwraps or drops the groups of [`TEXT_COMMANDS`] in one pass (no recursion: nesting depth
/// is whatever the response holds).
fn text_commands(s: &str, mode: TextGroups) -> String {
    let mut out = String::with_capacity(s.len());
    // For each open brace: whether it opened a text group (its `}` is then not written).
    let mut open: Vec<bool> = Vec::new();
    // While dropping, the depth of the group being dropped.
    let mut dropping: Option<usize> = None;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        let mut piece = &rest[..c.len_utf8()];
        match c {
            '\\' => {
                let name_len = rest[1..]
                    .bytes()
                    .take_while(u8::is_ascii_alphabetic)
                    .count();
                let name = &rest[1..1 + name_len];
                if name_len > 0
                    && TEXT_COMMANDS.contains(&name)
                    && rest[1 + name_len..].starts_with('{')
                {
                    open.push(true);
                    if mode == TextGroups::Drop && dropping.is_none() {
                        dropping = Some(open.len());
                    }
                    rest = &rest[2 + name_len..];
                    continue;
                }
                // A command name, or an escaped character, travels whole.
                let len = if name_len > 0 {
                    1 + name_len
                } else {
                    1 + rest[1..].chars().next().map_or(0, char::len_utf8)
                };
                piece = &rest[..len];
            }
            '{' => open.push(false),
            '}' => {
                let depth = open.len();
                if open.pop() == Some(true) {
                    piece = "";
                }
                if dropping == Some(depth) {
                    dropping = None;
                    rest = &rest[1..];
                    continue;
                }
            }
            _ => {}
        }
        if dropping.is_none() {
            out.push_str(piece);
        }
        rest = &rest[piece.len().max(c.len_utf8())..];
    }
    out
}

/// Commands whose group at the end of an answer is a unit.
const UNIT_COMMANDS: &[&str] = &["text", "textrm", "mbox"];

/// The answer without its trailing unit, when something comes before the unit:
/// `2\sqrt{2}\text{ dollars}` → `2\sqrt{2}`; `\text{(B)}` has none.
pub(crate) fn without_unit(answer: &str) -> Option<&str> {
    let answer = answer.trim_end().trim_end_matches('.').trim_end();
    let close = answer
        .len()
        .checked_sub(1)
        .filter(|_| answer.ends_with('}'))?;
    let open = brace_pairs(answer)
        .into_iter()
        .find_map(|(open, end)| (end == close).then_some(open))?;
    let before = UNIT_COMMANDS
        .iter()
        .find_map(|name| answer[..open].strip_suffix(name)?.strip_suffix('\\'))?;
    (!before.trim().is_empty()).then_some(before)
}

/// `\frac12` → `\frac{1}{2}`: a command's single-character arguments get braces.
///
/// Linear in the length of `s`: braces are paired once, up front.
fn braced_shorthand(s: &str, command: &str, arguments: usize) -> String {
    let closing = brace_pairs(s);
    // Byte ranges of single-character arguments to wrap in braces.
    let mut wrap: Vec<(usize, usize)> = Vec::new();
    for (at, _) in s.match_indices(command) {
        let mut pos = at + command.len();
        if s[pos..].starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue; // a longer command name, such as `\fracture`
        }
        for _ in 0..arguments {
            match s[pos..].chars().next() {
                Some('{') => match closing.get(&pos) {
                    Some(&end) => pos = end + 1,
                    None => break,
                },
                Some(c) if !matches!(c, '\\' | '}' | '[') => {
                    wrap.push((pos, pos + c.len_utf8()));
                    pos += c.len_utf8();
                }
                _ => break,
            }
        }
    }
    wrap.sort_unstable();
    wrap.dedup();
    let mut out = String::with_capacity(s.len() + 2 * wrap.len());
    let mut copied = 0;
    for (start, end) in wrap {
        out.push_str(&s[copied..start]);
        out.push('{');
        out.push_str(&s[start..end]);
        out.push('}');
        copied = end;
    }
    out.push_str(&s[copied..]);
    out
}

/// The byte index of the closing `}` for each opening `{` that has one (escaped braces do not
/// count).
fn brace_pairs(s: &str) -> HashMap<usize, usize> {
    let mut open = Vec::new();
    let mut pairs = HashMap::new();
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => open.push(i),
            '}' => {
                if let Some(start) = open.pop() {
                    pairs.insert(start, i);
                }
            }
            _ => {}
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalize(s, TextGroups::Unwrap)
    }

    #[test]
    fn fractions_and_roots_get_one_spelling() {
        assert_eq!(n(r"\dfrac{\sqrt3}{2}"), r"\frac{\sqrt{3}}{2}");
        assert_eq!(n(r"\tfrac12"), r"\frac{1}{2}");
        assert_eq!(n(r"\frac1{10}"), r"\frac{1}{10}");
        assert_eq!(n(r"\frac{1} {2}"), r"\frac{1}{2}");
        assert_eq!(n(r"\sqrt{x}"), r"\sqrt{x}");
        assert_eq!(n(r"\sqrt[3]{2}"), r"\sqrt[3]{2}");
        assert_eq!(
            n(r"\frac\pi2"),
            r"\frac\pi2",
            "no guessing at command arguments"
        );
    }

    #[test]
    fn noise_goes() {
        assert_eq!(n(r"$\left( 1, 2 \right)$."), "(1,2)");
        assert_eq!(n(r"\$1{,}000"), "1000");
        assert_eq!(n(r"50\%"), "50%");
        assert_eq!(n(r"30^\circ"), "30");
        assert_eq!(n("−7"), "-7");
        assert_eq!(n("5..."), "5");
        assert_eq!(n(r"x = \frac{1}{2}"), r"\frac{1}{2}");
        assert_eq!(n("f(x)=2"), "f(x)=2");
        assert_eq!(n("a=b=3"), "a=b=3");
    }

    #[test]
    fn text_groups_unwrap_or_drop() {
        assert_eq!(n(r"\text{(B)}"), "(B)");
        assert_eq!(n(r"\textbf{\text{yes}}"), "yes");
        assert_eq!(n(r"\boxed{4}"), "4");
        assert_eq!(n(r"\text{a{b}c}"), "a{b}c");
        assert_eq!(normalize(r"5\text{ cm}", TextGroups::Drop), "5");
        assert_eq!(
            normalize(r"5\text{ c{m}\text{x}} + 1", TextGroups::Drop),
            "5+1"
        );
        assert_eq!(normalize(r"\mathrm{kg}", TextGroups::Drop), "");
    }

    #[test]
    fn trailing_units() {
        assert_eq!(
            without_unit(r"2\sqrt{2}\text{ dollars}"),
            Some(r"2\sqrt{2}")
        );
        assert_eq!(without_unit(r"x+1 \mbox{cm}."), Some("x+1 "));
        assert_eq!(without_unit(r"5\textrm{ {m}^2}"), Some("5"));
        assert_eq!(without_unit(r"\text{(B)}"), None, "nothing before");
        assert_eq!(without_unit(r"x\text{ and }y"), None, "not at the end");
        assert_eq!(without_unit(r"\frac{1}{2}"), None);
        assert_eq!(without_unit(r"2\textbf{x}"), None);
        for s in ["", "}", "{}", "\\}", r"\text}"] {
            assert_eq!(without_unit(s), None, "{s}");
        }
    }

    #[test]
    fn broken_latex_does_not_panic() {
        for s in [
            "\\",
            "\\text{",
            "}}}",
            "{{{",
            "\\frac",
            "\\frac{",
            "\\sqrt\\",
            "\\é",
            "\\text{é",
            "é\\frac1",
        ] {
            let _ = normalize(s, TextGroups::Unwrap);
            let _ = normalize(s, TextGroups::Drop);
        }
        let deep = format!("{}x{}", r"\text{".repeat(100_000), "}".repeat(100_000));
        assert_eq!(normalize(&deep, TextGroups::Unwrap), "x");
        // Unclosed nested fractions must stay linear, not rescan the rest for every brace.
        let open = r"\frac{".repeat(200_000);
        assert_eq!(normalize(&open, TextGroups::Unwrap), open);
    }
}
