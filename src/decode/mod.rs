//! Decoding of input records (CSV rows or JSON objects) into typed records.
//!
//! Pure: no I/O. Each record kind has a documented schema (docs/data.md); a row that does not
//! fit yields a [`DecodeError`] with a stable reason code, and the caller dead-letters it.
//! Quantities and prices are parsed from their decimal text straight into milli-units, so no
//! binary float ever rounds a quantity.
//!
//! Longer than 600 lines with its unit tests: the decoders of every record kind stay together, so
//! every input path (files, Kafka) refuses a record for the same reasons.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use dataflows::StockKind;

mod json;

pub use json::JsonFields;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The line is not valid CSV/JSON, or not an object.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// A required field is absent or empty.
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    /// A numeric field does not hold a decimal number.
    #[error("field `{field}`: `{value}` is not a number")]
    BadNumber {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// A numeric field holds NaN or infinity, or is out of range.
    #[error("field `{field}`: `{value}` is not a finite number in range")]
    NonFinite {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// A time field is neither RFC 3339 nor a date.
    #[error("field `{field}`: `{value}` is not an RFC 3339 time or a YYYY-MM-DD date")]
    BadTime {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// A stock movement kind other than order, receipt, adjustment.
    #[error("field `kind`: `{0}` is not one of order, receipt, adjustment")]
    UnknownKind(String),
    /// A boolean field that is not a boolean.
    #[error("field `{field}`: `{value}` is not a boolean")]
    BadBool {
        /// The field.
        field: &'static str,
        /// What it held.
        value: String,
    },
    /// An id (store, SKU, event, promotion, category, region) that is not a non-empty string
    /// (or integer) of at most [`MAX_ID_BYTES`] bytes without control characters.
    #[error("field `{field}`: {message}")]
    BadId {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// An event dated more than `time.max_future_secs` after the wall clock.
    #[error("event time {} is after {}, the latest accepted (time.max_future_secs past the wall clock)", show_ts(*.ts), show_ts(*.limit))]
    FutureTime {
        /// The event time.
        ts: i64,
        /// The latest event time accepted when it arrived.
        limit: i64,
    },
    /// A value that parses but cannot be right (a negative pack size, end before start).
    #[error("field `{field}`: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

impl DecodeError {
    /// A short, stable reason code for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Malformed(_) => "malformed",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::BadNumber { .. } => "bad_number",
            DecodeError::NonFinite { .. } => "non_finite",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::BadBool { .. } => "bad_bool",
            DecodeError::BadId { .. } => "bad_id",
            DecodeError::FutureTime { .. } => "future_time",
            DecodeError::Invalid { .. } => "invalid_value",
        }
    }
}

/// An instant as RFC 3339 text (seconds since 1970 where out of chrono's range).
fn show_ts(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ts.to_string())
}

/// `Err` when an event time `ts` lies after `limit` (the wall clock plus
/// `time.max_future_secs`): such an event must not move the clock.
pub fn check_not_future(ts: Option<i64>, limit: i64) -> Result<(), DecodeError> {
    match ts {
        Some(ts) if ts > limit => Err(DecodeError::FutureTime { ts, limit }),
        _ => Ok(()),
    }
}

/// A sale: units leaving the shelf (negative for a return).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sale {
    /// Producer's id of the event, if it has one.
    pub event_id: Option<String>,
    /// Event time, seconds since the Unix epoch.
    pub ts: i64,
    /// Store name.
    pub store_id: String,
    /// SKU name.
    pub sku_id: String,
    /// Net quantity, milli-units.
    pub qty: i64,
    /// Unit price, milli-currency.
    pub unit_price: Option<i64>,
    /// Sold on promotion.
    pub promo: bool,
}

/// A stock movement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// Producer's id of the event, if it has one.
    pub event_id: Option<String>,
    /// Event time, seconds since the Unix epoch.
    pub ts: i64,
    /// Store name.
    pub store_id: String,
    /// SKU name.
    pub sku_id: String,
    /// Order, receipt or adjustment.
    pub kind: StockKind,
    /// Quantity, milli-units.
    pub qty: i64,
}

/// A catalog item (upsert by `sku_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogItem {
    /// SKU name.
    pub sku_id: String,
    /// Category, if known.
    pub category: Option<String>,
    /// Units per pack, milli-units.
    pub pack_size: Option<i64>,
    /// Supplier lead time in days.
    pub lead_time_days: Option<i64>,
    /// Minimum order quantity, milli-units.
    pub min_order_qty: Option<i64>,
    /// Whether the item is still sold.
    pub active: bool,
}

/// A store (upsert by `store_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Store {
    /// Store name.
    pub store_id: String,
    /// Region, if known.
    pub region: Option<String>,
    /// Whether the store is open.
    pub active: bool,
}

/// A calendar promotion (upsert by `promo_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromotionRec {
    /// Promotion id.
    pub promo_id: String,
    /// The one store, or `None` for all stores.
    pub store_id: Option<String>,
    /// The promoted SKU.
    pub sku_id: String,
    /// First instant covered.
    pub start: i64,
    /// Last instant covered (a date means that whole day).
    pub end: i64,
    /// Discount in percent, milli-units.
    pub discount_pct: Option<i64>,
}

/// A planned unit price from the price plan (upsert by `price_id`): what the SKU will sell
/// for in one store (or every store) from `start` to `end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPriceRec {
    /// Plan entry id.
    pub price_id: String,
    /// The one store, or `None` for all stores.
    pub store_id: Option<String>,
    /// The SKU.
    pub sku_id: String,
    /// First instant covered.
    pub start: i64,
    /// Last instant covered (a date means that whole day).
    pub end: i64,
    /// Planned unit price, milli-currency, above zero.
    pub price: i64,
}

/// A decoded record of any kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A sale.
    Sale(Sale),
    /// A stock movement.
    Movement(Movement),
    /// A catalog item.
    Catalog(CatalogItem),
    /// A store.
    Store(Store),
    /// A calendar promotion.
    Promotion(PromotionRec),
    /// A price plan entry.
    PlannedPrice(PlannedPriceRec),
}

impl Record {
    /// The event time of a sale or movement; `None` for reference data.
    pub fn ts(&self) -> Option<i64> {
        match self {
            Record::Sale(s) => Some(s.ts),
            Record::Movement(m) => Some(m.ts),
            _ => None,
        }
    }
}

/// Field access over one input row, whatever its encoding.
pub trait Row {
    /// The text of the first of `names` present and non-empty.
    fn get(&self, names: &[&str]) -> Option<Cow<'_, str>>;

    /// Like [`Row::get`], for an id: `Err` says why a value present is not one (a JSON value of
    /// the wrong type). The text still has to pass [`check_id`].
    fn get_id(&self, names: &[&str]) -> Result<Option<Cow<'_, str>>, String> {
        Ok(self.get(names))
    }
}

/// Longest id accepted, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 256;

/// Longest part of an offending value an error repeats, in bytes.
pub const MAX_SHOWN_BYTES: usize = 120;

/// `text`, cut to at most [`MAX_SHOWN_BYTES`] (at a character boundary) with the full length
/// noted: errors quote what they refuse without copying a huge value.
pub fn shown(text: &str) -> String {
    cut(text, MAX_SHOWN_BYTES)
}

/// `text`, cut to at most `max` bytes (at a character boundary) with the full length noted.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// Checks an id's text: non-empty, at most [`MAX_ID_BYTES`] bytes, no control characters.
pub fn check_id(field: &'static str, text: &str) -> Result<(), DecodeError> {
    let bad = |message: String| Err(DecodeError::BadId { field, message });
    if text.is_empty() {
        return bad("is empty".into());
    }
    if text.len() > MAX_ID_BYTES {
        return bad(format!(
            "is {} bytes long; ids are at most {MAX_ID_BYTES}",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return bad(format!(
            "`{}` holds the control character U+{:04X}",
            shown(text),
            c as u32
        ));
    }
    Ok(())
}

/// A CSV row with its header.
pub struct CsvRow<'a> {
    /// Column positions by name.
    pub header: &'a HashMap<String, usize>,
    /// The row.
    pub record: &'a csv::StringRecord,
}

impl Row for CsvRow<'_> {
    fn get(&self, names: &[&str]) -> Option<Cow<'_, str>> {
        names.iter().find_map(|n| {
            let i = *self.header.get(*n)?;
            let v = self.record.get(i)?.trim();
            (!v.is_empty()).then_some(Cow::Borrowed(v))
        })
    }
}

/// Largest magnitude accepted, in milli-units (a billion units or currency units): far above any
/// real quantity or price, and low enough that sums of millions of them stay inside `i64`.
pub const MAX_ABS_MILLI: i64 = 1_000_000_000_000;

/// Parses a decimal number into thousandths, exactly; rounds half away from zero past three
/// decimals. Accepts an exponent (JSON writers emit them) through a checked float path.
pub fn parse_milli(field: &'static str, text: &str) -> Result<i64, DecodeError> {
    let bad = || DecodeError::BadNumber {
        field,
        value: shown(text),
    };
    let non_finite = || DecodeError::NonFinite {
        field,
        value: shown(text),
    };
    // Words and exponents only where a byte is neither a digit, a sign nor a point: plain
    // decimals, nearly every number, go straight to the exact parse below.
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.'));
    if !plain {
        let lower = text.to_ascii_lowercase();
        if lower.contains("nan") || lower.contains("inf") {
            return Err(non_finite());
        }
        if lower.contains('e') {
            let x: f64 = text.parse().map_err(|_| bad())?;
            let m = (x * 1000.0).round();
            if !m.is_finite() || m.abs() > MAX_ABS_MILLI as f64 {
                return Err(non_finite());
            }
            return Ok(m as i64);
        }
    }
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| non_finite())?
    };
    let mut milli: i64 = 0;
    for (i, b) in frac.bytes().take(3).enumerate() {
        milli += i64::from(b - b'0') * 10i64.pow(2 - i as u32);
    }
    if frac.as_bytes().get(3).is_some_and(|b| *b >= b'5') {
        milli += 1;
    }
    let value = int
        .checked_mul(1000)
        .and_then(|v| v.checked_add(milli))
        .filter(|v| *v <= MAX_ABS_MILLI)
        .ok_or_else(non_finite)?;
    Ok(if neg { -value } else { value })
}

/// Parses an RFC 3339 time, or a `YYYY-MM-DD` date (00:00:00 UTC), or `YYYY-MM-DD HH:MM:SS`
/// (UTC), into seconds since the Unix epoch.
pub fn parse_time(field: &'static str, text: &str) -> Result<i64, DecodeError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp()));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Ok(t.and_utc().timestamp());
    }
    Err(DecodeError::BadTime {
        field,
        value: shown(text),
    })
}

fn parse_bool(field: &'static str, text: &str) -> Result<bool, DecodeError> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" => Ok(true),
        "0" | "false" | "f" | "no" | "n" => Ok(false),
        _ => Err(DecodeError::BadBool {
            field,
            value: shown(text),
        }),
    }
}

fn required<'r>(
    row: &'r dyn Row,
    field: &'static str,
    aliases: &[&str],
) -> Result<Cow<'r, str>, DecodeError> {
    row.get(aliases).ok_or(DecodeError::MissingField(field))
}

/// An optional id: absent, or a valid id.
fn optional_id(
    row: &dyn Row,
    field: &'static str,
    aliases: &[&str],
) -> Result<Option<String>, DecodeError> {
    let text = row
        .get_id(aliases)
        .map_err(|message| DecodeError::BadId { field, message })?;
    match text {
        Some(t) => {
            check_id(field, &t)?;
            Ok(Some(t.into_owned()))
        }
        None => Ok(None),
    }
}

/// A required id.
fn required_id(row: &dyn Row, field: &'static str) -> Result<String, DecodeError> {
    optional_id(row, field, &[field])?.ok_or(DecodeError::MissingField(field))
}

fn optional_milli(
    row: &dyn Row,
    field: &'static str,
    aliases: &[&str],
) -> Result<Option<i64>, DecodeError> {
    row.get(aliases).map(|v| parse_milli(field, &v)).transpose()
}

const TS: &[&str] = &["ts", "date", "timestamp"];

/// Decodes a sale. Columns: `ts` (or `date`), `store_id`, `sku_id`, `qty`, optional `event_id`,
/// `unit_price` (or `price`), `promo`.
pub fn sale(row: &dyn Row) -> Result<Sale, DecodeError> {
    let ts = parse_time("ts", &required(row, "ts", TS)?)?;
    let unit_price = optional_milli(row, "unit_price", &["unit_price", "price"])?;
    if unit_price.is_some_and(|p| p < 0) {
        return Err(DecodeError::Invalid {
            field: "unit_price",
            message: "must not be negative".into(),
        });
    }
    Ok(Sale {
        event_id: optional_id(row, "event_id", &["event_id"])?,
        ts,
        store_id: required_id(row, "store_id")?,
        sku_id: required_id(row, "sku_id")?,
        qty: parse_milli("qty", &required(row, "qty", &["qty"])?)?,
        unit_price,
        promo: row
            .get(&["promo"])
            .map(|v| parse_bool("promo", &v))
            .transpose()?
            .unwrap_or(false),
    })
}

/// Decodes a stock movement. Columns: `ts`, `store_id`, `sku_id`, `kind`, `qty`, optional
/// `event_id`. Orders and receipts must not be negative.
pub fn movement(row: &dyn Row) -> Result<Movement, DecodeError> {
    let ts = parse_time("ts", &required(row, "ts", TS)?)?;
    let kind_text = required(row, "kind", &["kind"])?;
    let kind = match kind_text.to_ascii_lowercase().as_str() {
        "order" => StockKind::Order,
        "receipt" => StockKind::Receipt,
        "adjustment" => StockKind::Adjustment,
        _ => return Err(DecodeError::UnknownKind(shown(&kind_text))),
    };
    let qty = parse_milli("qty", &required(row, "qty", &["qty"])?)?;
    if qty < 0 && kind != StockKind::Adjustment {
        return Err(DecodeError::Invalid {
            field: "qty",
            message: "orders and receipts must not be negative".into(),
        });
    }
    Ok(Movement {
        event_id: optional_id(row, "event_id", &["event_id"])?,
        ts,
        store_id: required_id(row, "store_id")?,
        sku_id: required_id(row, "sku_id")?,
        kind,
        qty,
    })
}

fn non_negative(field: &'static str, v: Option<i64>) -> Result<Option<i64>, DecodeError> {
    match v {
        Some(x) if x < 0 => Err(DecodeError::Invalid {
            field,
            message: "must not be negative".into(),
        }),
        _ => Ok(v),
    }
}

/// Decodes a catalog item. Columns: `sku_id`, optional `category` (or `cat_id`), `pack_size`,
/// `lead_time_days`, `min_order_qty`, `active` (default true).
pub fn catalog_item(row: &dyn Row) -> Result<CatalogItem, DecodeError> {
    let lead = optional_milli(row, "lead_time_days", &["lead_time_days"])?;
    Ok(CatalogItem {
        sku_id: required_id(row, "sku_id")?,
        category: optional_id(row, "category", &["category", "cat_id"])?,
        pack_size: non_negative(
            "pack_size",
            optional_milli(row, "pack_size", &["pack_size"])?,
        )?,
        lead_time_days: non_negative("lead_time_days", lead.map(|v| v / 1000))?,
        min_order_qty: non_negative(
            "min_order_qty",
            optional_milli(row, "min_order_qty", &["min_order_qty"])?,
        )?,
        active: row
            .get(&["active"])
            .map(|v| parse_bool("active", &v))
            .transpose()?
            .unwrap_or(true),
    })
}

/// Decodes a store. Columns: `store_id`, optional `region` (or `state_id`), `active`.
pub fn store(row: &dyn Row) -> Result<Store, DecodeError> {
    Ok(Store {
        store_id: required_id(row, "store_id")?,
        region: optional_id(row, "region", &["region", "state_id"])?,
        active: row
            .get(&["active"])
            .map(|v| parse_bool("active", &v))
            .transpose()?
            .unwrap_or(true),
    })
}

/// The `start` and `end` (inclusive) of a dated record; `end` may not come before `start`.
fn date_range(row: &dyn Row) -> Result<(i64, i64), DecodeError> {
    let start = parse_time("start", &required(row, "start", &["start"])?)?;
    let end = parse_time("end", &required(row, "end", &["end"])?)?;
    if end < start {
        return Err(DecodeError::Invalid {
            field: "end",
            message: "is before start".into(),
        });
    }
    Ok((start, end))
}

/// Decodes a promotion. Columns: `promo_id`, `store_id` (empty or `*` for all stores),
/// `sku_id`, `start`, `end` (inclusive), optional `discount_pct`.
pub fn promotion(row: &dyn Row) -> Result<PromotionRec, DecodeError> {
    let (start, end) = date_range(row)?;
    Ok(PromotionRec {
        promo_id: required_id(row, "promo_id")?,
        store_id: optional_id(row, "store_id", &["store_id"])?.filter(|s| s != "*"),
        sku_id: required_id(row, "sku_id")?,
        start,
        end,
        discount_pct: optional_milli(row, "discount_pct", &["discount_pct"])?,
    })
}

/// Decodes a price plan entry. Columns: `price_id`, `store_id` (empty or `*` for all stores),
/// `sku_id`, `start`, `end` (inclusive), `price` (or `unit_price`, above zero).
pub fn planned_price(row: &dyn Row) -> Result<PlannedPriceRec, DecodeError> {
    let (start, end) = date_range(row)?;
    let text = required(row, "price", &["price", "unit_price"])?;
    let price = parse_milli("price", &text)?;
    if price <= 0 {
        return Err(DecodeError::Invalid {
            field: "price",
            message: format!("{} is not above zero", shown(&text)),
        });
    }
    Ok(PlannedPriceRec {
        price_id: required_id(row, "price_id")?,
        store_id: optional_id(row, "store_id", &["store_id"])?.filter(|s| s != "*"),
        sku_id: required_id(row, "sku_id")?,
        start,
        end,
        price,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> JsonFields<'_> {
        JsonFields::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn decimals_become_exact_milli_units() {
        assert_eq!(parse_milli("qty", "1.5"), Ok(1500));
        assert_eq!(parse_milli("qty", "-2"), Ok(-2000));
        assert_eq!(parse_milli("qty", ".25"), Ok(250));
        assert_eq!(parse_milli("qty", "0.0015"), Ok(2));
        assert_eq!(parse_milli("qty", "1e2"), Ok(100_000));
        assert_eq!(
            parse_milli("qty", "NaN").unwrap_err().reason(),
            "non_finite"
        );
        assert_eq!(
            parse_milli("qty", "inf").unwrap_err().reason(),
            "non_finite"
        );
        assert_eq!(
            parse_milli("qty", "1,5").unwrap_err().reason(),
            "bad_number"
        );
        assert_eq!(parse_milli("qty", "-").unwrap_err().reason(), "bad_number");
        assert_eq!(
            parse_milli("qty", "99999999999999999999")
                .unwrap_err()
                .reason(),
            "non_finite"
        );
    }

    #[test]
    fn dates_are_midnight_utc() {
        assert_eq!(parse_time("ts", "1970-01-02"), Ok(86_400));
        assert_eq!(parse_time("ts", "1970-01-01T01:00:00+01:00"), Ok(0));
        assert_eq!(parse_time("ts", "1970-01-01 00:00:10"), Ok(10));
        assert_eq!(
            parse_time("ts", "yesterday").unwrap_err().reason(),
            "bad_time"
        );
    }

    #[test]
    fn sales_from_json_and_errors_name_the_field() {
        let ok = json(
            r#"{"event_id":"e1","ts":"2024-01-01T10:00:00Z","store_id":"S1","sku_id":"A","qty":2,"unit_price":1.99,"promo":true}"#,
        );
        let s = sale(&ok).unwrap();
        assert_eq!((s.qty, s.unit_price, s.promo), (2000, Some(1990), true));
        let missing = json(r#"{"ts":"2024-01-01","store_id":"S1","qty":1}"#);
        assert_eq!(
            sale(&missing).unwrap_err(),
            DecodeError::MissingField("sku_id")
        );
        let nan = json(r#"{"ts":"2024-01-01","store_id":"S1","sku_id":"A","qty":"NaN"}"#);
        assert_eq!(sale(&nan).unwrap_err().reason(), "non_finite");
    }

    #[test]
    fn movements_check_kind_and_sign() {
        let bad = json(r#"{"ts":"2024-01-01","store_id":"S","sku_id":"A","kind":"gift","qty":1}"#);
        assert_eq!(movement(&bad).unwrap_err().reason(), "unknown_kind");
        let neg =
            json(r#"{"ts":"2024-01-01","store_id":"S","sku_id":"A","kind":"receipt","qty":-1}"#);
        assert_eq!(movement(&neg).unwrap_err().reason(), "invalid_value");
        let adj =
            json(r#"{"ts":"2024-01-01","store_id":"S","sku_id":"A","kind":"Adjustment","qty":-1}"#);
        assert_eq!(movement(&adj).unwrap().qty, -1000);
    }

    #[test]
    fn ids_are_strings_or_integers_short_and_printable() {
        let sale_with = |field: &str, value: &str| {
            // A later duplicate key wins.
            let text = format!(
                r#"{{"ts":"2024-01-01","store_id":"S1","sku_id":"A","qty":1,"{field}":{value}}}"#
            );
            sale(&json(&text))
        };
        for (field, value) in [
            ("store_id", r#"{"x":1}"#),
            ("sku_id", "[1,2]"),
            ("event_id", "true"),
            ("store_id", "1.5"),
            ("sku_id", r#""A\u0000B""#),
            ("store_id", &format!("\"{}\"", "x".repeat(MAX_ID_BYTES + 1))),
        ] {
            let err = sale_with(field, value).unwrap_err();
            assert_eq!(err.reason(), "bad_id", "{field} = {value}: {err}");
            assert!(err.to_string().len() < 300, "the error stays short: {err}");
        }
        assert_eq!(sale_with("store_id", "17").unwrap().store_id, "17");
        let longest = format!("\"{}\"", "é".repeat(MAX_ID_BYTES / 2));
        assert!(sale_with("sku_id", &longest).is_ok());
        // An id that is only blanks is absent.
        assert_eq!(
            sale_with("store_id", r#""  ""#).unwrap_err(),
            DecodeError::MissingField("store_id")
        );
        assert_eq!(
            store(&json(r#"{"store_id":"S","region":{"a":1}}"#))
                .unwrap_err()
                .reason(),
            "bad_id"
        );
    }

    #[test]
    fn errors_quote_a_prefix_of_huge_values() {
        let huge = "9".repeat(1 << 20);
        let err = parse_milli("qty", &format!("{huge}x")).unwrap_err();
        assert!(err.to_string().len() < 300, "{}", err.to_string().len());
        assert!(err.to_string().contains("1048577 bytes"));
        let err = parse_time("ts", &huge).unwrap_err();
        assert!(err.to_string().len() < 300);
    }

    #[test]
    fn promotions_for_all_stores() {
        let p = json(
            r#"{"promo_id":"p","store_id":"*","sku_id":"A","start":"2024-01-01","end":"2024-01-07"}"#,
        );
        assert_eq!(promotion(&p).unwrap().store_id, None);
        let back = json(r#"{"promo_id":"p","sku_id":"A","start":"2024-01-07","end":"2024-01-01"}"#);
        assert_eq!(promotion(&back).unwrap_err().reason(), "invalid_value");
    }

    #[test]
    fn planned_prices_are_positive_and_ordered() {
        let ok = json(
            r#"{"price_id":"p1","store_id":"*","sku_id":"A","start":"2024-01-01","end":"2024-01-07","price":"1.49"}"#,
        );
        let p = planned_price(&ok).unwrap();
        assert_eq!((p.store_id, p.price), (None, 1490));
        for (bad, reason) in [
            (r#""price":0"#, "invalid_value"),
            (r#""price":-1.5"#, "invalid_value"),
            (r#""price":"NaN""#, "non_finite"),
            (r#""price":"cheap""#, "bad_number"),
            (r#""price":1e300"#, "non_finite"),
        ] {
            let text = format!(
                r#"{{"price_id":"p","sku_id":"A","start":"2024-01-01","end":"2024-01-07",{bad}}}"#
            );
            let err = planned_price(&json(&text)).unwrap_err();
            assert_eq!(err.reason(), reason, "{bad}: {err}");
        }
        let back = json(
            r#"{"price_id":"p","sku_id":"A","start":"2024-01-07","end":"2024-01-01","price":1}"#,
        );
        assert_eq!(planned_price(&back).unwrap_err().reason(), "invalid_value");
        let missing =
            json(r#"{"price_id":"p","sku_id":"A","start":"2024-01-07","end":"2024-01-08"}"#);
        assert_eq!(
            planned_price(&missing).unwrap_err(),
            DecodeError::MissingField("price")
        );
    }
}
