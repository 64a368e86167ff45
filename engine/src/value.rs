//! Setting values: literals or `${{ ... }}` expressions, and the unit types of the file
//! (durations, byte sizes).

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::value::{
    BoolDeserializer, F64Deserializer, I64Deserializer, MapAccessDeserializer,
    SeqAccessDeserializer, StrDeserializer, U64Deserializer, UnitDeserializer,
};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::expr::is_template;
use crate::node::Spanned;

/// A setting that is either written out or computed by an expression when planned or run.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<T> {
    Lit(T),
    /// The raw template text (with `${{ }}`), and where it is.
    Expr(Spanned<String>),
}

impl<T> Value<T> {
    pub fn literal(&self) -> Option<&T> {
        match self {
            Value::Lit(v) => Some(v),
            Value::Expr(_) => None,
        }
    }
}

impl<T: Default> Default for Value<T> {
    fn default() -> Self {
        Value::Lit(T::default())
    }
}

impl<T> From<T> for Value<T> {
    fn from(value: T) -> Self {
        Value::Lit(value)
    }
}

enum LitOrExpr<T> {
    Lit(T),
    Expr(String),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LitOrExpr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LitOrExpr<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a `${{ ... }}` expression")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                if is_template(v) {
                    return Ok(LitOrExpr::Expr(v.to_owned()));
                }
                T::deserialize(StrDeserializer::<E>::new(v)).map(LitOrExpr::Lit)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                T::deserialize(BoolDeserializer::<E>::new(v)).map(LitOrExpr::Lit)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                T::deserialize(I64Deserializer::<E>::new(v)).map(LitOrExpr::Lit)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                T::deserialize(U64Deserializer::<E>::new(v)).map(LitOrExpr::Lit)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                T::deserialize(F64Deserializer::<E>::new(v)).map(LitOrExpr::Lit)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                T::deserialize(UnitDeserializer::<E>::new()).map(LitOrExpr::Lit)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                T::deserialize(SeqAccessDeserializer::new(seq)).map(LitOrExpr::Lit)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(LitOrExpr::Lit)
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<LitOrExpr<T>>::deserialize(d)?;
        Ok(match spanned.value {
            LitOrExpr::Lit(v) => Value::Lit(v),
            LitOrExpr::Expr(text) => Value::Expr(Spanned::new(text, spanned.span)),
        })
    }
}

impl<T: Serialize> Serialize for Value<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Lit(v) => v.serialize(s),
            Value::Expr(text) => text.value.serialize(s),
        }
    }
}

/// Schema of a `${{ ... }}` expression string.
pub fn expression_schema() -> Schema {
    json_schema!({
        "type": "string",
        "pattern": "\\$\\{\\{.*\\}\\}",
        "description": "An expression: `${{ params.NAME }}`, `${{ stages.ID.outputs.PORT }}`, `${{ cycle.window }}`, `${{ env.NAME }}`, `${{ item.FIELD }}`"
    })
}

impl<T: JsonSchema> JsonSchema for Value<T> {
    fn inline_schema() -> bool {
        true
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("ValueOf{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let literal = generator.subschema_for::<T>();
        json_schema!({ "anyOf": [literal, expression_schema()] })
    }
}

/// A length of time written with a unit: `500ms`, `30s`, `10m`, `2h`, `1d`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a duration: write a number and a unit (ms, s, m, h, d), e.g. `30s` or `1h30m`"
)]
pub struct BadDuration {
    pub input: String,
}

impl FromStr for Duration {
    type Err = BadDuration;

    fn from_str(input: &str) -> Result<Self, BadDuration> {
        let bad = || BadDuration {
            input: input.to_owned(),
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad());
            }
            let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let seconds = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return Err(bad()),
            };
            rest = &rest[unit_len..];
            let part =
                std::time::Duration::try_from_secs_f64(number * seconds).map_err(|_| bad())?;
            total = total.checked_add(part).ok_or_else(bad)?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let ms = self.0.as_millis();
        let units = [
            (86_400_000, "d"),
            (3_600_000, "h"),
            (60_000, "m"),
            (1000, "s"),
            (1, "ms"),
        ];
        if ms == 0 {
            return f.write_str("0s");
        }
        let mut rest = ms;
        for (size, unit) in units {
            if rest >= size {
                write!(f, "{}{unit}", rest / size)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as `30s`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "`{v}` has no unit: write `{v}s`, `{v}m` or `{v}ms`"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(format!("`{v}` has no unit: write `{v}s`")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d))+$",
            "description": "A duration with a unit: `500ms`, `30s`, `10m`, `2h`, `1d`, `1h30m`."
        })
    }
}

/// A number of bytes: an integer, or with a unit (`512KiB`, `10MB`, `4GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let text = input.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let number: f64 = text[..split].parse().map_err(|_| {
            format!("`{input}` is not a size: write e.g. `4GiB`, `512MB` or a number of bytes")
        })?;
        let unit: u64 = match text[split..].trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}`: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
                ));
            }
        };
        Ok(ByteSize((number * unit as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let units = [
            (1u64 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (size, unit) in units {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as `4GiB`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$" }
            ],
            "description": "A size in bytes, or with a unit: `512KiB`, `10MB`, `4GiB`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.0.as_secs(), 5400);
        assert_eq!(d.to_string(), "1h30m");
        assert_eq!("500ms".parse::<Duration>().unwrap().to_string(), "500ms");
        for bad in ["", "10", "ten s", "10 minutes", "5x", "s"] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!("4GiB".parse::<ByteSize>().unwrap().0, 4 << 30);
        assert_eq!(ByteSize(10 << 20).to_string(), "10MiB");
        assert!("4 parsecs".parse::<ByteSize>().is_err());
    }
}
