//! Go `time.Duration` strings (`90s`, `2m`, `1h30m`, `1.5h`), parsed by the grammar and the
//! range rules of Go's `time.ParseDuration`, which is what the kubelet uses for its flags and
//! for `metav1.Duration` fields in KubeletConfiguration. A spelling the kubelet would refuse
//! is refused here, when the profile is read, instead of on the node at first boot.

use std::fmt;
use std::str::FromStr;

/// A duration as Go spells it: the text as written (rendered unchanged) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoDuration {
    text: String,
    nanos: i64,
}

impl GoDuration {
    /// The text as the profile wrote it; Go parses it to [`GoDuration::nanos`].
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn nanos(&self) -> i64 {
        self.nanos
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why a string is not a Go duration; the message is Go's own reason in plain words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{shown}` is not a Go duration: {why} (write numbers with units ns, us, ms, s, m, h, e.g. `2m` or `1h30m`)")]
pub struct DurationError {
    shown: String,
    why: &'static str,
}

/// `1 << 63`: Go accumulates in a uint64 and allows this much only for a negative result.
const LIMIT: u64 = 1 << 63;

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, DurationError> {
        let err = |why| DurationError { shown: crate::ident::shown(input), why };
        let (neg, mut s) = match input.as_bytes().first() {
            Some(b'-') => (true, &input[1..]),
            Some(b'+') => (false, &input[1..]),
            _ => (false, input),
        };
        if s == "0" {
            return Ok(Self { text: input.to_owned(), nanos: 0 });
        }
        if s.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total: u64 = 0;
        while !s.is_empty() {
            if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
                return Err(err("a number must come before each unit"));
            }
            let before = s.len();
            let (whole, rest) = leading_int(s).ok_or_else(|| err("it is out of range (about ±292 years)"))?;
            let has_int = rest.len() != before;
            s = rest;
            let (mut frac, mut scale, mut has_frac) = (0u64, 1f64, false);
            if let Some(rest) = s.strip_prefix('.') {
                let before = rest.len();
                let (f, sc, rest) = leading_fraction(rest);
                (frac, scale, has_frac) = (f, sc, rest.len() != before);
                s = rest;
            }
            if !has_int && !has_frac {
                return Err(err("a `.` needs digits beside it"));
            }
            let unit_len = s.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(s.len());
            if unit_len == 0 {
                return Err(err("a unit is missing"));
            }
            let unit =
                unit_nanos(&s[..unit_len]).ok_or_else(|| err("the unit is not one of ns, us, µs, ms, s, m, h"))?;
            s = &s[unit_len..];
            let range = || err("it is out of range (about ±292 years)");
            let mut v = whole.checked_mul(unit).filter(|&v| v <= LIMIT).ok_or_else(range)?;
            if frac > 0 {
                // Go: v += uint64(float64(f) * (float64(unit) / scale)), as floating point.
                v = v.saturating_add((frac as f64 * (unit as f64 / scale)) as u64);
                if v > LIMIT {
                    return Err(range());
                }
            }
            total = total.checked_add(v).filter(|&t| t <= LIMIT).ok_or_else(range)?;
        }
        let nanos = if neg {
            // -(1 << 63) is i64::MIN exactly.
            0i64.wrapping_sub_unsigned(total)
        } else {
            i64::try_from(total).map_err(|_| err("it is out of range (about ±292 years)"))?
        };
        Ok(Self { text: input.to_owned(), nanos })
    }
}

/// Go's `leadingInt`: the digits at the start of `s` and the rest; `None` on overflow.
fn leading_int(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut x: u64 = 0;
    for b in s[..end].bytes() {
        if x > LIMIT / 10 {
            return None;
        }
        x = x * 10 + u64::from(b - b'0');
        if x > LIMIT {
            return None;
        }
    }
    Some((x, &s[end..]))
}

/// Go's `leadingFraction`: digits after the dot, with the power of ten they are scaled by.
/// Digits past what fits are consumed and ignored, as Go does.
fn leading_fraction(s: &str) -> (u64, f64, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (mut x, mut scale, mut overflow) = (0u64, 1f64, false);
    for b in s[..end].bytes() {
        if overflow {
            continue;
        }
        if x > (LIMIT - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(b - b'0');
        if y > LIMIT {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[end..])
}

fn unit_nanos(unit: &str) -> Option<u64> {
    Some(match unit {
        "ns" => 1,
        // U+00B5 (micro sign) and U+03BC (Greek mu), both accepted by Go.
        "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    })
}

crate::serde_via_str!(GoDuration);

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a panic is the failure report in a test
mod tests {
    use super::*;

    fn nanos(s: &str) -> Result<i64, DurationError> {
        s.parse::<GoDuration>().map(|d| d.nanos())
    }

    /// Cases from Go's own `parseDurationTests` (src/time/time_test.go).
    #[test]
    fn agrees_with_go() {
        let ok: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5_000_000_000),
            ("30s", 30_000_000_000),
            ("1478s", 1_478_000_000_000),
            ("-5s", -5_000_000_000),
            ("+5s", 5_000_000_000),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5_000_000_000),
            ("5.6s", 5_600_000_000),
            ("5.s", 5_000_000_000),
            (".5s", 500_000_000),
            ("1.0s", 1_000_000_000),
            ("1.00s", 1_000_000_000),
            ("1.004s", 1_004_000_000),
            ("100.00100s", 100_001_000_000),
            ("10ns", 10),
            ("11us", 11_000),
            ("12µs", 12_000),
            ("12μs", 12_000),
            ("13ms", 13_000_000),
            ("14s", 14_000_000_000),
            ("15m", 900_000_000_000),
            ("16h", 57_600_000_000_000),
            ("3h30m", 12_600_000_000_000),
            ("10.5s4m", 250_500_000_000),
            ("-2m3.4s", -123_400_000_000),
            ("1h2m3s4ms5us6ns", 3_723_004_005_006),
            ("39h9m14.425s", 140_954_425_000_000),
            ("52763797000ns", 52_763_797_000),
            ("0.3333333333333333333h", 1_200_000_000_000),
            ("9007199254740993ns", 9_007_199_254_740_993),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 360_000_000_000),
            ("0.830103483285477580700h", 2_988_372_539_827),
        ];
        for (s, want) in ok {
            assert_eq!(nanos(s).unwrap_or_else(|e| panic!("{s}: {e}")), *want, "{s}");
        }
        let bad = [
            "",
            "3",
            "-",
            "s",
            ".",
            "-.",
            ".s",
            "+.s",
            "1d",
            "\u{85}",
            "\u{ffd}",
            "9223372036854775808ns",
            "9223372036854775.808us",
            "9223372036854ms775us808ns",
            "-9223372036854775809ns",
            "99999999999999999999999h",
            "3000000h",
            "2m ",
            " 2m",
            "2 m",
            "1h\n[Service]",
        ];
        for s in bad {
            assert!(nanos(s).is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn text_is_kept_and_errors_are_short() {
        let d: GoDuration = "1h30m".parse().unwrap();
        assert_eq!(d.as_str(), "1h30m");
        let long = format!("{}h", "9".repeat(10_000));
        let e = long.parse::<GoDuration>().unwrap_err().to_string();
        assert!(e.contains("out of range") && e.len() < 400, "{e}");
    }
}
