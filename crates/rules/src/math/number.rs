//! Reading a normalised answer as a number, and comparing numbers.
//!
//! Integers, decimals and fractions are kept as exact rationals (`i128`) while they fit, so
//! `\frac{1}{2}`, `0.5` and `2/4` are the same value; past that, `f64`.

/// A numeric value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    /// `num / den`, reduced, `den > 0`.
    Ratio(i128, i128),
    /// Too big for a ratio; always finite.
    Float(f64),
}

/// A number read from an answer, with how it was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Number {
    /// The value (for `50%`, 50).
    pub value: Value,
    /// Written with a decimal point or an exponent: compared with a tolerance.
    pub decimal: bool,
    /// Written with `%`.
    pub percent: bool,
}

impl Value {
    fn ratio(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let divisor = gcd(num.unsigned_abs(), den.unsigned_abs());
        let (mut num, mut den) = (
            num / i128::try_from(divisor).ok()?,
            den / i128::try_from(divisor).ok()?,
        );
        if den < 0 {
            (num, den) = (num.checked_neg()?, den.checked_neg()?);
        }
        Some(Self::Ratio(num, den))
    }

    fn float(x: f64) -> Option<Self> {
        x.is_finite().then_some(Self::Float(x))
    }

    #[allow(clippy::cast_precision_loss)] // the f64 view is for tolerance comparisons
    fn to_f64(self) -> f64 {
        match self {
            Self::Ratio(num, den) => num as f64 / den as f64,
            Self::Float(x) => x,
        }
    }

    fn neg(self) -> Self {
        match self {
            Self::Ratio(num, den) => num
                .checked_neg()
                .map_or(Self::Float(-self.to_f64()), |num| Self::Ratio(num, den)),
            Self::Float(x) => Self::Float(-x),
        }
    }

    fn div(self, by: Self) -> Option<Self> {
        if let (Self::Ratio(a, b), Self::Ratio(c, d)) = (self, by)
            && let (Some(num), Some(den)) = (a.checked_mul(d), b.checked_mul(c))
        {
            return Self::ratio(num, den);
        }
        let divisor = by.to_f64();
        if divisor == 0.0 {
            return None;
        }
        Self::float(self.to_f64() / divisor)
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// Reads a normalised answer (see [`super::latex::normalize`]) as a number:
/// `[sign] (\frac{A}{B} | A/B | A) [%]`, where `A` and `B` are integers or decimals with
/// optional thousands separators (`1,000`) and exponent (`1.5e3`, `1.5\times10^{3}`).
/// Anything else, or a zero denominator, is not a number.
pub(crate) fn parse(text: &str) -> Option<Number> {
    let mut cursor = Cursor { rest: text };
    let negative = cursor.sign();
    let (value, decimal) = cursor.fraction()?;
    let percent = cursor.eat("%");
    if !cursor.rest.is_empty() {
        return None;
    }
    Some(Number {
        value: if negative { value.neg() } else { value },
        decimal,
        percent,
    })
}

/// Whether two numbers are the same answer.
///
/// Both written as integers or fractions: exact equality. Either written with a decimal point or
/// an exponent: `|a − b| ≤ tolerance · max(|a|, |b|)`. When exactly one side carries `%`, it
/// also matches as a share (`50%` matches `0.5`, and `50`).
pub(crate) fn same(a: &Number, b: &Number, tolerance: f64) -> bool {
    let with_tolerance = a.decimal || b.decimal;
    let hundred = Value::Ratio(100, 1);
    let variants = |n: &Number, other: &Number| {
        let share = (n.percent && !other.percent)
            .then(|| n.value.div(hundred))
            .flatten();
        [Some(n.value), share]
    };
    variants(a, b).into_iter().flatten().any(|x| {
        variants(b, a)
            .into_iter()
            .flatten()
            .any(|y| values_equal(x, y, with_tolerance, tolerance))
    })
}

fn values_equal(x: Value, y: Value, with_tolerance: bool, tolerance: f64) -> bool {
    if let (Value::Ratio(a, b), Value::Ratio(c, d)) = (x, y) {
        // Reduced with positive denominators: equal values have equal parts.
        if (a, b) == (c, d) {
            return true;
        }
        if !with_tolerance {
            return false;
        }
    }
    let (fx, fy) = (x.to_f64(), y.to_f64());
    if fx == fy {
        return true;
    }
    with_tolerance && (fx - fy).abs() <= tolerance * fx.abs().max(fy.abs())
}

/// A position in the text being read.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, prefix: &str) -> bool {
        match self.rest.strip_prefix(prefix) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// `-` (true), `+` or nothing (false).
    fn sign(&mut self) -> bool {
        if self.eat("-") {
            true
        } else {
            self.eat("+");
            false
        }
    }

    fn digits(&mut self) -> &'a str {
        let len = self.rest.bytes().take_while(u8::is_ascii_digit).count();
        let (digits, rest) = self.rest.split_at(len);
        self.rest = rest;
        digits
    }

    /// `\frac{A}{B}`, `A/B` or `A`; the flag says whether a decimal was involved.
    fn fraction(&mut self) -> Option<(Value, bool)> {
        if self.eat(r"\frac{") {
            let (num, d1) = self.signed_decimal()?;
            if !self.eat("}{") {
                return None;
            }
            let (den, d2) = self.signed_decimal()?;
            if !self.eat("}") {
                return None;
            }
            return Some((num.div(den)?, d1 || d2));
        }
        let (num, d1) = self.decimal()?;
        if self.eat("/") {
            let (den, d2) = self.decimal()?;
            return Some((num.div(den)?, d1 || d2));
        }
        Some((num, d1))
    }

    fn signed_decimal(&mut self) -> Option<(Value, bool)> {
        let negative = self.sign();
        let (value, decimal) = self.decimal()?;
        Some((if negative { value.neg() } else { value }, decimal))
    }

    /// An unsigned integer or decimal with optional thousands separators and exponent; the flag
    /// says whether it had a decimal point or an exponent.
    fn decimal(&mut self) -> Option<(Value, bool)> {
        let mut int_digits = self.digits().to_owned();
        // Thousands separators: groups of exactly three digits after a first group of 1 to 3.
        if (1..=3).contains(&int_digits.len()) {
            while let Some(group) = self.rest.strip_prefix(',')
                && group.len() >= 3
                && group.as_bytes()[..3].iter().all(u8::is_ascii_digit)
                && !group.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
            {
                int_digits.push_str(&group[..3]);
                self.rest = &group[3..];
            }
        }
        let frac_digits = if self.eat(".") {
            Some(self.digits())
        } else {
            None
        };
        let frac_digits = match frac_digits {
            Some("") if int_digits.is_empty() => return None,
            Some(f) => f,
            None if int_digits.is_empty() => return None,
            None => "",
        };
        let exponent = self.exponent()?;
        let decimal = !frac_digits.is_empty() || exponent.is_some();
        let value = decimal_value(&int_digits, frac_digits, exponent.unwrap_or(0))?;
        Some((value, decimal))
    }

    /// `e-3`, `E5`, `\times10^{3}`, `\cdot10^3`: `Some(None)` when there is none, `None` when
    /// one starts but is malformed.
    fn exponent(&mut self) -> Option<Option<i32>> {
        let before = self.rest;
        if self.eat("e") || self.eat("E") {
            let negative = self.sign();
            let digits = self.digits();
            if digits.is_empty() {
                self.rest = before;
                return Some(None);
            }
            let magnitude: i32 = digits.parse().ok()?;
            return Some(Some(if negative { -magnitude } else { magnitude }));
        }
        if self.eat(r"\times10^") || self.eat(r"\cdot10^") {
            let braced = self.eat("{");
            let negative = self.sign();
            let digits = if braced {
                self.digits()
            } else {
                let one = self
                    .rest
                    .get(..1)
                    .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
                self.rest = &self.rest[1..];
                one
            };
            if digits.is_empty() || (braced && !self.eat("}")) {
                return None;
            }
            let magnitude: i32 = digits.parse().ok()?;
            return Some(Some(if negative { -magnitude } else { magnitude }));
        }
        Some(None)
    }
}

/// `int.frac × 10^exponent`, exact while it fits in `i128`.
fn decimal_value(int_digits: &str, frac_digits: &str, exponent: i32) -> Option<Value> {
    let exact = || {
        let mut num: i128 = format!("{int_digits}{frac_digits}").parse().ok()?;
        let mut den = 10i128.checked_pow(u32::try_from(frac_digits.len()).ok()?)?;
        let scale = 10i128.checked_pow(exponent.unsigned_abs())?;
        if exponent >= 0 {
            num = num.checked_mul(scale)?;
        } else {
            den = den.checked_mul(scale)?;
        }
        Value::ratio(num, den)
    };
    exact().or_else(|| {
        let int_digits = if int_digits.is_empty() {
            "0"
        } else {
            int_digits
        };
        let frac_digits = if frac_digits.is_empty() {
            "0"
        } else {
            frac_digits
        };
        Value::float(
            format!("{int_digits}.{frac_digits}e{exponent}")
                .parse()
                .ok()?,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> Option<Value> {
        parse(text).map(|n| n.value)
    }

    #[test]
    fn integers_decimals_fractions_are_exact() {
        assert_eq!(value("42"), Some(Value::Ratio(42, 1)));
        assert_eq!(value("-42"), Some(Value::Ratio(-42, 1)));
        assert_eq!(value("+0.50"), Some(Value::Ratio(1, 2)));
        assert_eq!(value(".5"), Some(Value::Ratio(1, 2)));
        assert_eq!(value("5."), Some(Value::Ratio(5, 1)));
        assert_eq!(value("6/8"), Some(Value::Ratio(3, 4)));
        assert_eq!(value(r"\frac{3}{4}"), Some(Value::Ratio(3, 4)));
        assert_eq!(value(r"-\frac{3}{4}"), Some(Value::Ratio(-3, 4)));
        assert_eq!(value(r"\frac{-3}{4}"), Some(Value::Ratio(-3, 4)));
        assert_eq!(value(r"\frac{3}{-4}"), Some(Value::Ratio(-3, 4)));
        assert_eq!(value(r"\frac{1.5}{3}"), Some(Value::Ratio(1, 2)));
        assert_eq!(value("1.5e3"), Some(Value::Ratio(1500, 1)));
        assert_eq!(value("25e-2"), Some(Value::Ratio(1, 4)));
        assert_eq!(value(r"3\times10^{-2}"), Some(Value::Ratio(3, 100)));
        assert_eq!(value(r"3\cdot10^2"), Some(Value::Ratio(300, 1)));
    }

    #[test]
    fn thousands_separators_must_be_well_formed() {
        assert_eq!(value("1,000"), Some(Value::Ratio(1000, 1)));
        assert_eq!(value("12,345,678.5"), Some(Value::Ratio(24_691_357, 2)));
        assert_eq!(value("1,00"), None);
        assert_eq!(value("1,0000"), None);
        assert_eq!(value("1234,567"), None);
        assert_eq!(value("1,2,3"), None);
    }

    #[test]
    fn percent_and_rejects() {
        let p = parse("12.5%").expect("a number");
        assert!(p.percent && p.decimal);
        assert_eq!(p.value, Value::Ratio(25, 2));
        for bad in [
            "",
            "-",
            "x",
            "1/0",
            r"\frac{1}{0}",
            "1/",
            r"\frac{1}",
            "--1",
            "1e",
            "2x",
            "1.2.3",
            "1%%",
            ".",
            "1e99999999999",
            "√2",
        ] {
            assert_eq!(value(bad), None, "{bad}");
        }
    }

    #[test]
    fn huge_numbers_fall_back_to_floats() {
        let big = "1".repeat(60);
        assert!(matches!(value(&big), Some(Value::Float(_))));
        assert!(matches!(value(&format!("{big}/3")), Some(Value::Float(_))));
        assert_eq!(value("1e400"), None, "not finite");
        assert!(matches!(
            value(&format!("-{}", i128::MAX)),
            Some(Value::Ratio(..))
        ));
    }

    fn same_text(a: &str, b: &str, tolerance: f64) -> bool {
        same(&parse(a).expect(a), &parse(b).expect(b), tolerance)
    }

    #[test]
    fn comparison_rules() {
        assert!(same_text(r"\frac{1}{2}", "0.5", 1e-6));
        assert!(same_text("2/4", r"\frac{1}{2}", 0.0));
        assert!(
            !same_text("1/3", "333333/1000000", 1e-3),
            "exact fractions use no tolerance"
        );
        assert!(same_text("1/3", "0.3333333", 1e-6));
        assert!(!same_text("1/3", "0.333", 1e-6));
        assert!(
            !same_text("123456789", "123456788", 1e-6),
            "integers are exact"
        );
        assert!(same_text("2", "2.0000001", 1e-6));
        assert!(!same_text("0", "0.0000001", 1e-6));
        assert!(same_text("-0", "0", 1e-6));
        assert!(same_text("50%", "0.5", 1e-6));
        assert!(same_text("50%", "50", 1e-6));
        assert!(same_text("0.5", "50%", 1e-6));
        assert!(!same_text("50%", "0.5%", 1e-6));
        assert!(!same_text("-5", "5", 1e-6));
    }
}
