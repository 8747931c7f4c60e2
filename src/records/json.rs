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
//!
//! Sinks write through the [`Json`] trait: progress records and dead letters go through serde
//! with that formatter; a forecast record, the bulk of the output, is written field by field
//! (the tests compare its bytes with serde_json's over random records).

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

/// A record the worker writes as JSON: the bytes `serde_json::to_vec` makes of it.
pub trait Json {
    /// Appends the record's JSON to `out`; on an error `out` is left as it was.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()>;
}

impl Json for super::EpochRecord {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        write(self, out)
    }
}

impl Json for super::DeadLetterRecord {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        write(self, out)
    }
}

/// Written field by field rather than through serde: a forecast record is about ninety numbers
/// and a dozen texts, and serde's calls per token (each comma, each number a copy of its own)
/// made this a sixth of the worker's CPU with `catch_up = "every_epoch"`. The bytes are
/// serde's (the tests compare them); the patterns below name every field, so a field added to
/// the record does not compile until it is written here too.
impl Json for super::ForecastRecord {
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let super::ForecastRecord {
            epoch_end,
            store_id,
            sku_id,
            schema_hash,
            model,
            model_version,
            fallback_reason,
            forecast,
            forecast_p10,
            forecast_p90,
            on_hand,
            on_order,
            recommendation,
        } = self;
        let crate::replenish::Advice {
            order_qty,
            order_up_to,
            reorder_point,
            cover_periods,
            stockout_risk,
            lead_time_days,
            review_days,
            service_level,
            pack_size,
            min_order_qty,
            active,
        } = recommendation;
        out.reserve(1024 + 24 * (forecast.len() + forecast_p10.len() + forecast_p90.len()));
        let texts: [(&str, &str); 6] = [
            ("{\"epoch_end\":", epoch_end),
            (",\"store_id\":", store_id),
            (",\"sku_id\":", sku_id),
            (",\"schema_hash\":", schema_hash),
            (",\"model\":", model),
            (",\"model_version\":", model_version),
        ];
        let reason = fallback_reason
            .as_deref()
            .map(|r| (",\"fallback_reason\":", r));
        for (key, value) in texts.into_iter().chain(reason) {
            out.extend_from_slice(key.as_bytes());
            text(value, out);
        }
        for (key, values) in [
            (",\"forecast\":", forecast),
            (",\"forecast_p10\":", forecast_p10),
            (",\"forecast_p90\":", forecast_p90),
        ] {
            out.extend_from_slice(key.as_bytes());
            numbers(values, out);
        }
        let fields: [(&str, Option<f64>); 12] = [
            (",\"on_hand\":", *on_hand),
            (",\"on_order\":", *on_order),
            (",\"recommendation\":{\"order_qty\":", *order_qty),
            (",\"order_up_to\":", Some(*order_up_to)),
            (",\"reorder_point\":", Some(*reorder_point)),
            (",\"cover_periods\":", *cover_periods),
            (",\"stockout_risk\":", *stockout_risk),
            (",\"lead_time_days\":", Some(*lead_time_days)),
            (",\"review_days\":", Some(*review_days)),
            (",\"service_level\":", Some(*service_level)),
            (",\"pack_size\":", Some(*pack_size)),
            (",\"min_order_qty\":", Some(*min_order_qty)),
        ];
        for (key, value) in fields {
            out.extend_from_slice(key.as_bytes());
            optional(value, out);
        }
        out.extend_from_slice(if *active {
            b",\"active\":true}}"
        } else {
            b",\"active\":false}}"
        });
        Ok(())
    }
}

/// A JSON string: as is where nothing needs an escape, else as serde_json escapes it.
fn text(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a vector cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// A number as [`Decimals`] prints it; `null` where it is not finite, as serde_json writes it.
fn number(x: f64, out: &mut Vec<u8>) {
    let mut buf = [0u8; NUMBER_ROOM];
    let n = put_number(x, &mut buf);
    out.extend_from_slice(&buf[..n]);
}

fn optional(x: Option<f64>, out: &mut Vec<u8>) {
    match x {
        Some(x) => number(x, out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON array of numbers. The numbers are printed into a buffer on the stack and copied
/// onto `out` a kilobyte at a time: a copy per number, or a push per byte with its check of
/// the vector's capacity, cost more than the digits themselves.
fn numbers(xs: &[f64], out: &mut Vec<u8>) {
    let mut buf = [0u8; 1024];
    buf[0] = b'[';
    let mut n = 1;
    for (i, x) in xs.iter().enumerate() {
        if n + 1 + NUMBER_ROOM > buf.len() {
            out.extend_from_slice(&buf[..n]);
            n = 0;
        }
        if i > 0 {
            buf[n] = b',';
            n += 1;
        }
        n += put_number(*x, &mut buf[n..]);
    }
    buf[n] = b']';
    out.extend_from_slice(&buf[..=n]);
}

/// Room [`put_number`] needs: serde_json's longest `f64` is 24 bytes; the fast path writes
/// fixed-size pieces that may reach a few bytes past the number's end.
const NUMBER_ROOM: usize = 32;

/// Writes `x` as [`number`] prints it at the start of `buf` (at least [`NUMBER_ROOM`] bytes);
/// returns its length.
#[inline]
fn put_number(x: f64, buf: &mut [u8]) -> usize {
    if !x.is_finite() {
        buf[..4].copy_from_slice(b"null");
        return 4;
    }
    match milli(x) {
        Some(m) => put_milli(m, buf),
        None => {
            let mut w = &mut buf[..];
            let room = w.len();
            // A slice of NUMBER_ROOM bytes holds any f64 serde_json prints.
            let _ = CompactFormatter.write_f64(&mut w, x);
            room - w.len()
        }
    }
}

/// The decimal `m / 1000` as serde_json prints it (trailing zeros dropped, `.0` when whole) at
/// the start of `buf`, which has at least [`NUMBER_ROOM`] bytes; returns its length. The
/// whole part below 1000 and the fraction come from tables, each copied as a fixed-size piece
/// whose tail the next piece overwrites.
#[inline]
fn put_milli(m: i64, buf: &mut [u8]) -> usize {
    let abs = m.unsigned_abs();
    let (whole, frac) = (abs / 1000, (abs % 1000) as usize);
    let mut n = 0;
    if m < 0 {
        buf[0] = b'-';
        n = 1;
    }
    if whole < 1000 {
        let (digits, len) = WHOLES[whole as usize];
        buf[n..n + 3].copy_from_slice(&digits);
        n += len as usize;
    } else {
        // At most nine digits: |m| is below MAX_MILLI.
        let mut digits = [0u8; 20];
        let mut k = digits.len();
        let mut rest = whole;
        while rest > 0 {
            k -= 1;
            digits[k] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let digits = &digits[k..];
        buf[n..n + digits.len()].copy_from_slice(digits);
        n += digits.len();
    }
    let (digits, len) = FRACTIONS[frac];
    buf[n..n + 4].copy_from_slice(&digits);
    n + len as usize
}

/// The numbers 0 to 999 in decimal, left-aligned in three bytes, with their lengths.
static WHOLES: [([u8; 3], u8); 1000] = {
    let mut t = [([0u8; 3], 0u8); 1000];
    let mut i = 0;
    while i < 1000 {
        t[i] = if i >= 100 {
            (
                [
                    b'0' + (i / 100) as u8,
                    b'0' + (i / 10 % 10) as u8,
                    b'0' + (i % 10) as u8,
                ],
                3,
            )
        } else if i >= 10 {
            ([b'0' + (i / 10) as u8, b'0' + (i % 10) as u8, 0], 2)
        } else {
            ([b'0' + i as u8, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// The point and the thousandths 0 to 999 as serde_json ends a number: `.0`, `.5`, `.25`,
/// `.125`, `.05`; in four bytes, with their lengths.
static FRACTIONS: [([u8; 4], u8); 1000] = {
    let mut t = [([0u8; 4], 0u8); 1000];
    let mut f = 0;
    while f < 1000 {
        let digits = [
            b'.',
            b'0' + (f / 100) as u8,
            b'0' + (f / 10 % 10) as u8,
            b'0' + (f % 10) as u8,
        ];
        let len = if f % 100 == 0 {
            2
        } else if f % 10 == 0 {
            3
        } else {
            4
        };
        t[f] = (digits, len);
        f += 1;
    }
    t
};

/// serde_json's compact formatter, with the fast path for numbers of three decimals.
struct Decimals;

impl Formatter for Decimals {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        // serde_json writes the non-finite as null itself: `value` is finite here.
        let mut buf = [0u8; NUMBER_ROOM];
        let n = put_number(value, &mut buf);
        writer.write_all(&buf[..n])
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
    fn thousandths_from_the_tables_are_what_serde_json_prints() {
        // Up to the largest `m` the fast path takes (beyond it serde_json's form is not m / 1000).
        let edges = [
            0,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            9_999_999,
            10_000_000,
            999_999_999_999,
        ];
        let all = (-12_000_000..=12_000_000i64)
            .step_by(7)
            .chain(edges.iter().flat_map(|&m| [m, -m, m + 1, m - 1]));
        for m in all {
            let mut buf = [0u8; NUMBER_ROOM];
            let n = put_milli(m, &mut buf);
            assert_eq!(
                String::from_utf8_lossy(&buf[..n]),
                theirs(m as f64 / 1000.0),
                "{m}"
            );
        }
    }

    #[test]
    fn a_long_array_is_the_bytes_serde_json_makes() {
        // Long enough to be copied out of the stack buffer several times, with numbers of
        // every kind: three decimals, more, huge, tiny, negative zero, not finite.
        let xs: Vec<f64> = (0..2000i64)
            .map(|i| match i % 7 {
                0 => (i * 7919 % 100_000) as f64 / 1000.0,
                1 => -(i as f64) / 1000.0,
                2 => i as f64 * 1e13 + 0.5,
                3 => 1.0 / (i as f64 + 3.0),
                4 => -0.0,
                5 if i % 2 == 0 => f64::NAN,
                5 => f64::NEG_INFINITY,
                _ => i as f64 * 123_456.789,
            })
            .collect();
        for len in [0, 1, 2, 39, 40, 41, 100, 2000] {
            let xs = &xs[..len];
            let mut out = b"prefix".to_vec();
            numbers(xs, &mut out);
            // serde_json writes the non-finite as null too.
            let expected = serde_json::to_vec(xs).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out[6..]),
                String::from_utf8_lossy(&expected),
                "{len} numbers"
            );
        }
    }

    #[test]
    fn a_forecast_record_is_the_bytes_serde_json_makes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let specials = [
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
            -1e-9,
            1.0 / 3.0,
            f64::MAX,
        ];
        let texts = [
            "S1",
            "",
            "é ü",
            "a\"b",
            "back\\slash",
            "tab\tnew\nline",
            "\u{0}\u{1f}\u{7f}",
        ];
        let draw = |rand: &mut dyn FnMut(u64) -> u64| match rand(4) {
            0 => specials[rand(specials.len() as u64) as usize],
            1 => rand(1_000_000) as f64 * 1e-4,
            _ => (rand(2_000_000) as f64 - 1e6) / 1000.0,
        };
        for i in 0..2000 {
            let mut r = crate::records::ForecastRecord {
                epoch_end: "2024-03-01T10:15:00Z".into(),
                store_id: texts[rand(texts.len() as u64) as usize].into(),
                sku_id: texts[rand(texts.len() as u64) as usize].into(),
                schema_hash: "9f3c2a1b".into(),
                model: "stockcast-mlp".into(),
                model_version: "v1".into(),
                fallback_reason: (rand(3) == 0).then(|| texts[i % texts.len()].to_string()),
                forecast: (0..rand(30)).map(|_| draw(&mut rand)).collect(),
                forecast_p10: (0..rand(30)).map(|_| draw(&mut rand)).collect(),
                forecast_p90: (0..rand(30)).map(|_| draw(&mut rand)).collect(),
                on_hand: (rand(2) == 0).then(|| draw(&mut rand)),
                on_order: (rand(2) == 0).then(|| draw(&mut rand)),
                recommendation: crate::replenish::Advice {
                    order_qty: (rand(2) == 0).then(|| draw(&mut rand)),
                    order_up_to: draw(&mut rand),
                    reorder_point: draw(&mut rand),
                    cover_periods: (rand(2) == 0).then(|| draw(&mut rand)),
                    stockout_risk: (rand(2) == 0).then(|| draw(&mut rand)),
                    lead_time_days: draw(&mut rand),
                    review_days: draw(&mut rand),
                    service_level: draw(&mut rand),
                    pack_size: draw(&mut rand),
                    min_order_qty: draw(&mut rand),
                    active: rand(2) == 0,
                },
            };
            if i % 7 == 0 {
                r.forecast = (0..28).map(|h| h as f64 * 0.125).collect();
            }
            let mut out = b"kept".to_vec();
            r.write_json(&mut out).unwrap();
            assert_eq!(&out[..4], b"kept");
            let want = serde_json::to_vec(&r).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out[4..]),
                String::from_utf8_lossy(&want)
            );
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
