//! The JSON of every record the worker writes, the bytes `serde_json::to_vec` makes, made
//! faster.
//!
//! A forecast record holds about ninety numbers rounded to three decimals (three quantiles over
//! the horizon, the stock position, the recommendation). serde_json prints each with a
//! general shortest-round-trip algorithm; for a number that is exactly `m / 1000` with a modest
//! `m`, that shortest form is the decimal `m / 1000` itself, which integer arithmetic prints
//! several times faster. Every other number (more decimals, very large, `-0.0`) goes through
//! serde_json's own formatting, so the output is byte for byte what serde_json makes
//! (the tests compare the two over a million values).

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// Largest `|m|` printed as `m / 1000` by integer arithmetic: far below 2^53, and below the
/// magnitudes where serde_json switches to exponent notation.
const MAX_MILLI: f64 = 1e12;

/// Appends `value`'s JSON to `out`; on an error `out` is left as it was.
pub fn write<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let start = out.len();
    let mut ser = serde_json::Serializer::with_formatter(&mut *out, Decimals);
    let written = value.serialize(&mut ser);
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// `value`'s JSON (see [`write`]).
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    write(value, &mut out)?;
    Ok(out)
}

/// serde_json's compact formatter, with the fast path for numbers of three decimals.
struct Decimals;

impl Formatter for Decimals {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        match milli(value) {
            Some(m) => writer.write_all(print_milli(m, &mut [0; 24])),
            None => CompactFormatter.write_f64(writer, value),
        }
    }
}

/// `m` where `value` is exactly the double nearest `m / 1000` and `|m|` is modest; `None`
/// otherwise (and for `-0.0`, which serde_json prints with its sign).
fn milli(value: f64) -> Option<i64> {
    if value == 0.0 && value.is_sign_negative() {
        return None;
    }
    let scaled = value * 1000.0;
    // NaN and the infinities are not finite.
    if !scaled.is_finite() || scaled.abs() >= MAX_MILLI {
        return None;
    }
    // Rounded half away from zero without a call into libm; where the sum itself rounds the
    // other way, the check below refuses the result.
    let m = (scaled + 0.5f64.copysign(scaled)) as i64;
    (m as f64 / 1000.0 == value).then_some(m)
}

/// The decimal `m / 1000` as serde_json prints it: trailing zeros dropped, `.0` when whole.
fn print_milli(m: i64, buf: &mut [u8; 24]) -> &[u8] {
    let abs = m.unsigned_abs();
    let (whole, frac) = (abs / 1000, abs % 1000);
    // Written backwards from the end of `buf`.
    let mut at = buf.len();
    let mut put = |b: u8, buf: &mut [u8; 24]| {
        at -= 1;
        buf[at] = b;
    };
    if frac == 0 {
        put(b'0', buf);
    } else {
        let digits = [frac / 100, frac / 10 % 10, frac % 10];
        let mut len = 3;
        while digits[len - 1] == 0 {
            len -= 1;
        }
        for d in digits[..len].iter().rev() {
            put(b'0' + *d as u8, buf);
        }
    }
    put(b'.', buf);
    let mut w = whole;
    loop {
        put(b'0' + (w % 10) as u8, buf);
        w /= 10;
        if w == 0 {
            break;
        }
    }
    if m < 0 {
        put(b'-', buf);
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn theirs(x: f64) -> String {
        serde_json::to_string(&x).unwrap()
    }

    fn ours(x: f64) -> String {
        String::from_utf8(to_vec(&x).unwrap()).unwrap()
    }

    #[test]
    fn numbers_print_as_serde_json_prints_them() {
        // Every m / 1000 up to 1,000 either way, then a spread up to the largest magnitude.
        for m in -1_000_000i64..=1_000_000 {
            let x = m as f64 / 1000.0;
            assert_eq!(ours(x), theirs(x), "{m} / 1000");
        }
        let mut m: i64 = 1;
        while (m as f64) < 2.0 * MAX_MILLI {
            for x in [
                m as f64 / 1000.0,
                -(m as f64) / 1000.0,
                m as f64 / 1000.0 + 1e-4,
            ] {
                assert_eq!(ours(x), theirs(x), "{x:?}");
            }
            m = m * 3 + 7;
        }
        for x in [
            0.0,
            -0.0,
            1e-7,
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e15,
            123_456_789.123,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(ours(x), theirs(x), "{x:?}");
        }
    }

    #[test]
    fn a_record_is_the_bytes_serde_json_makes() {
        let record = serde_json::json!({
            "a": [1.5, 0.001, -2.0, 1e300, 7],
            "b": {"c": "d\u{0}\"", "e": null, "f": 12.345},
        });
        assert_eq!(
            to_vec(&record).unwrap(),
            serde_json::to_vec(&record).unwrap()
        );
        let mut out = b"kept".to_vec();
        write(&record, &mut out).unwrap();
        assert_eq!(&out[..4], b"kept");
        assert_eq!(&out[4..], serde_json::to_vec(&record).unwrap());
    }
}
