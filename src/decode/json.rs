//! A JSON object as an input row, read without building a `serde_json::Value`.
//!
//! Every event from Kafka is one JSON object of a handful of fields. Parsing it into a
//! `serde_json::Value` allocates a map node per object and a `String` per key and per text
//! value, only to look up six of them and drop the lot; in the `kafka` bench that was a sixth
//! of the worker's CPU with `catch_up = "latest"`. [`JsonFields`] keeps the fields in a small
//! vector instead, their keys and texts borrowed from the input bytes unless they hold an
//! escape. What a decoder sees is what it saw through the map: the last of duplicate keys wins,
//! numbers print as `serde_json` prints them, arrays and objects are kept whole to be quoted in
//! an error, and a row that is not JSON, or not an object, fails with the message the map's
//! parse gives.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use super::Row;

/// One field's value, as far as decoding needs it.
#[derive(Debug, PartialEq)]
enum Field<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Text(Cow<'a, str>),
    /// An array or an object: never a valid field, kept for the error's quote.
    Nested(Value),
}

/// A JSON object's fields in the order written, borrowed from the input where they can be.
#[derive(Debug, PartialEq)]
pub struct JsonFields<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

impl<'a> JsonFields<'a> {
    /// The fields of the JSON object `bytes`; `Err` holds why they are not one (the text of
    /// `serde_json`'s error, or "not a JSON object").
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        match serde_json::from_slice::<JsonFields>(bytes) {
            Ok(fields) => Ok(fields),
            // The reason as the parse into a `Value` words it.
            Err(fast) => match serde_json::from_slice::<Value>(bytes) {
                Err(e) => Err(e.to_string()),
                Ok(Value::Object(_)) => Err(fast.to_string()),
                Ok(_) => Err("not a JSON object".into()),
            },
        }
    }

    /// The value of the last field named `name` (as a map would keep it).
    fn field(&self, name: &str) -> Option<&Field<'a>> {
        self.0.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

impl Row for JsonFields<'_> {
    fn get(&self, names: &[&str]) -> Option<Cow<'_, str>> {
        names.iter().find_map(|n| match self.field(n)? {
            Field::Null => None,
            Field::Text(s) if s.trim().is_empty() => None,
            Field::Text(s) => Some(Cow::Borrowed(s.trim())),
            Field::Number(x) => Some(Cow::Owned(x.to_string())),
            Field::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Field::Nested(v) => Some(Cow::Owned(v.to_string())),
        })
    }

    fn get_id(&self, names: &[&str]) -> Result<Option<Cow<'_, str>>, String> {
        for n in names {
            match self.field(n) {
                None | Some(Field::Null) => continue,
                Some(Field::Text(s)) if s.trim().is_empty() => continue,
                Some(Field::Text(s)) => return Ok(Some(Cow::Borrowed(s.trim()))),
                Some(Field::Number(x)) if x.is_i64() || x.is_u64() => {
                    return Ok(Some(Cow::Owned(x.to_string())))
                }
                Some(Field::Number(_)) => return Err("is a number but not an integer".into()),
                Some(Field::Bool(_)) => return Err("is a boolean, not a string".into()),
                Some(Field::Nested(Value::Array(_))) => {
                    return Err("is an array, not a string".into())
                }
                Some(Field::Nested(_)) => return Err("is an object, not a string".into()),
            }
        }
        Ok(None)
    }
}

/// A key, borrowed unless it holds an escape.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(b))
            }
            fn visit_i64<E>(self, x: i64) -> Result<Field<'de>, E> {
                Ok(Field::Number(x.into()))
            }
            fn visit_u64<E>(self, x: u64) -> Result<Field<'de>, E> {
                Ok(Field::Number(x.into()))
            }
            fn visit_f64<E>(self, x: f64) -> Result<Field<'de>, E> {
                // As `Value` keeps it: a number that is not finite becomes null.
                Ok(Number::from_f64(x).map_or(Field::Null, Field::Number))
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Owned(s.to_string())))
            }
            fn visit_string<E>(self, s: String) -> Result<Field<'de>, E> {
                Ok(Field::Text(Cow::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Field<'de>, A::Error> {
                Value::deserialize(SeqAccessDeserializer::new(seq)).map(Field::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Field<'de>, A::Error> {
                Value::deserialize(MapAccessDeserializer::new(map)).map(Field::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for JsonFields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonFields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonFields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
                while let Some((Key(k), v)) = map.next_entry::<Key, Field>()? {
                    fields.push((k, v));
                }
                Ok(JsonFields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row as the map of a `Value` parse reads it: the reference the fields must match.
    struct MapRow<'a>(&'a serde_json::Map<String, Value>);

    impl Row for MapRow<'_> {
        fn get(&self, names: &[&str]) -> Option<Cow<'_, str>> {
            names.iter().find_map(|n| match self.0.get(*n)? {
                Value::Null => None,
                Value::String(s) if s.trim().is_empty() => None,
                Value::String(s) => Some(Cow::Borrowed(s.trim())),
                Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
                other => Some(Cow::Owned(other.to_string())),
            })
        }
    }

    const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "é"];

    #[test]
    fn fields_read_as_a_map_reads_them() {
        let values = [
            "null",
            "true",
            "false",
            "0",
            "-17",
            "18446744073709551615",
            "-9223372036854775808",
            "1.5",
            "1e3",
            "1E-7",
            "123456789012345678901234567890",
            "0.1",
            "\"\"",
            "\"  \"",
            "\" x \"",
            "\"a\\\"b\\\\c\\u00e9\\n\"",
            "\"\\ud83d\\ude00\"",
            "\"é\"",
            "[]",
            "[1,\"x\",[null]]",
            "{}",
            "{\"k\":{\"l\":[1.25]}}",
        ];
        for (i, x) in values.iter().enumerate() {
            let y = values[(i * 7 + 3) % values.len()];
            // Duplicate keys (the last wins), an escaped key, whitespace everywhere.
            let text = format!(
                " {{ \"a\" : {x} , \"b\":{y}, \"a\":{y}, \"c\\u0020\":{x}, \"d\":{x}, \"\\u00e9\":{y} }} "
            );
            let fields = JsonFields::parse(text.as_bytes()).expect(&text);
            let map: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
            for n in NAMES {
                assert_eq!(fields.get(&[n]), MapRow(&map).get(&[n]), "{n} in {text}");
                assert_eq!(
                    fields.get(&["zz", n]),
                    MapRow(&map).get(&["zz", n]),
                    "{n} in {text}"
                );
            }
            assert_eq!(fields.get(&["c "]), MapRow(&map).get(&["c "]), "{text}");
        }
    }

    #[test]
    fn ids_say_what_is_wrong_with_them() {
        let text = r#"{"s":" S1 ","n":17,"f":1.5,"b":true,"a":[1],"o":{},"z":null,"e":" "}"#;
        let fields = JsonFields::parse(text.as_bytes()).unwrap();
        assert_eq!(fields.get_id(&["s"]).unwrap().as_deref(), Some("S1"));
        assert_eq!(fields.get_id(&["n"]).unwrap().as_deref(), Some("17"));
        assert_eq!(
            fields.get_id(&["z", "e", "s"]).unwrap().as_deref(),
            Some("S1")
        );
        assert_eq!(fields.get_id(&["missing"]).unwrap(), None);
        for (n, why) in [
            ("f", "is a number but not an integer"),
            ("b", "is a boolean, not a string"),
            ("a", "is an array, not a string"),
            ("o", "is an object, not a string"),
        ] {
            assert_eq!(fields.get_id(&[n]).unwrap_err(), why);
        }
    }

    #[test]
    fn texts_without_escapes_are_borrowed() {
        let text = br#"{"store_id":"S1","sku_id":"A\"1"}"#;
        let fields = JsonFields::parse(text).unwrap();
        assert!(matches!(fields.0[0].0, Cow::Borrowed(_)));
        assert!(matches!(fields.0[0].1, Field::Text(Cow::Borrowed("S1"))));
        assert!(matches!(&fields.0[1].1, Field::Text(Cow::Owned(s)) if s == "A\"1"));
    }

    #[test]
    fn what_is_not_an_object_fails_as_the_map_parse_does() {
        // Deeper than serde_json's recursion limit.
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200)).into_bytes();
        for bad in [
            &b"[1,2]"[..],
            b"17",
            b"\"x\"",
            b"null",
            b"",
            b"{",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\"}",
            &deep,
        ] {
            let want = match serde_json::from_slice::<Value>(bad) {
                Ok(Value::Object(_)) => panic!("{bad:?} is an object"),
                Ok(_) => "not a JSON object".to_string(),
                Err(e) => e.to_string(),
            };
            assert_eq!(JsonFields::parse(bad).unwrap_err(), want, "{bad:?}");
        }
    }
}
