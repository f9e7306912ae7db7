//! Typed request structs from a parsed JSON object, with errors that name the field (its path,
//! `messages[2].content`) and the expected type, and never the value given.
//!
//! serde_json's own errors quote what they met (`invalid type: string "<prompt text>",
//! expected a sequence`, ``unknown field `<key>` ``) and keep no structured form to strip it
//! from, and `serde_path_to_error` still renders them through serde_json. So requests are read
//! from the [`Value`] that [`crate::json::object`] parsed, through this small deserializer
//! whose error type, [`SchemaError`], has nowhere to put a value: serde hands it the kind of
//! value met ([`Unexpected`]) and what was expected, and it keeps only the kind.
//!
//! Path segments are field names only where they are the struct's own (serde passes the
//! `&'static` field list); keys of free-form maps (`logit_bias`) appear as `*`.

use std::fmt;

use serde::de::{
    self, value::BorrowedStrDeserializer, DeserializeSeed, Deserializer, Expected, MapAccess,
    SeqAccess, Unexpected, Visitor,
};
use serde_json::{Map, Value};

/// Where in the request a value sits; lives on the stack of the deserializer's calls.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'static str),
    Key(&'a Path<'a>),
    Index(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self, out: &mut String) {
        match *self {
            Path::Root => {}
            Path::Field(parent, name) => {
                parent.render(out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Path::Key(parent) => {
                parent.render(out);
                out.push_str(if out.is_empty() { "*" } else { ".*" });
            }
            Path::Index(parent, i) => {
                parent.render(out);
                out.push_str(&format!("[{i}]"));
            }
        }
    }
}

/// A request value that does not fit the schema. Holds only text of ours: field names from
/// the struct definitions, expected types, and the JSON kind of what was given.
#[derive(Debug)]
pub(crate) struct SchemaError {
    /// The path of the offending value (`body` for the top level), once known.
    path: Option<String>,
    /// A field of the struct at `path` the error is about (a missing or repeated field).
    member: Option<&'static str>,
    /// What the value must be.
    pub expected: String,
    /// The message after the path: `must be an array, got a string`.
    detail: String,
}

impl SchemaError {
    fn new(expected: impl Into<String>, detail: impl Into<String>) -> Self {
        SchemaError {
            path: None,
            member: None,
            expected: expected.into(),
            detail: detail.into(),
        }
    }

    /// Records where the error happened, unless a deeper level already did.
    fn at(mut self, path: &Path<'_>) -> Self {
        if self.path.is_none() {
            let mut s = String::new();
            path.render(&mut s);
            if let Some(m) = self.member {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(m);
            }
            self.path = Some(if s.is_empty() { "body".into() } else { s });
        }
        self
    }

    /// The field path: `messages[0].content`, `body` for the whole body.
    pub fn field(&self) -> &str {
        self.path.as_deref().unwrap_or("body")
    }

    /// The whole message: `messages[0].content must be …, got …`.
    pub fn message(&self) -> String {
        format!("{} {}", self.field(), self.detail)
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for SchemaError {}

/// The JSON kind of what serde met, without its value.
fn kind(u: &Unexpected<'_>) -> &'static str {
    match u {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a fractional number",
        Unexpected::Char(_) | Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit | Unexpected::Option => "null",
        Unexpected::Seq => "an array",
        Unexpected::Map => "an object",
        _ => "another kind of value",
    }
}

/// serde's name for an expected type, in the words of JSON.
fn plain(exp: &dyn Expected) -> String {
    let s = exp.to_string();
    match s.as_str() {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a sequence" => "an array".into(),
        "a map" => "an object".into(),
        "a borrowed string" => "a string".into(),
        _ if s.starts_with("struct ") => "an object".into(),
        _ => s,
    }
}

impl de::Error for SchemaError {
    /// serde calls this for the fall-through of an untagged enum, with the enum's
    /// `expecting` text: ours.
    fn custom<T: fmt::Display>(msg: T) -> Self {
        let msg = msg.to_string();
        SchemaError::new(msg.clone(), format!("must be {msg}"))
    }

    fn invalid_type(unexp: Unexpected<'_>, exp: &dyn Expected) -> Self {
        let expected = plain(exp);
        let detail = format!("must be {expected}, got {}", kind(&unexp));
        SchemaError::new(expected, detail)
    }

    fn invalid_value(_: Unexpected<'_>, exp: &dyn Expected) -> Self {
        let expected = plain(exp);
        let detail = format!("must be {expected}");
        SchemaError::new(expected, detail)
    }

    fn invalid_length(len: usize, exp: &dyn Expected) -> Self {
        let expected = plain(exp);
        let detail = format!("must be {expected}, got {len} entries");
        SchemaError::new(expected, detail)
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        let list = expected.join(", ");
        SchemaError::new(format!("one of {list}"), format!("must be one of {list}"))
    }

    fn unknown_field(_: &str, expected: &'static [&'static str]) -> Self {
        SchemaError::new(
            "known fields",
            format!(
                "has an unknown field; the accepted fields are {}",
                expected.join(", ")
            ),
        )
    }

    fn missing_field(field: &'static str) -> Self {
        let mut e = SchemaError::new("required", "is required");
        e.member = Some(field);
        e
    }

    fn duplicate_field(field: &'static str) -> Self {
        let mut e = SchemaError::new("given once", "is given twice");
        e.member = Some(field);
        e
    }
}

/// Deserializes `T` from a parsed request body.
pub(crate) fn from_value<T: de::DeserializeOwned>(value: &Value) -> Result<T, SchemaError> {
    T::deserialize(ValueDe {
        value,
        path: &Path::Root,
    })
}

/// The JSON field names of struct `T` as its `Deserialize` impl knows them (renames
/// applied), so a route can tell which keys of a body it does not read.
pub(crate) fn struct_fields<T: de::DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// A deserializer that records the field list serde passes to `deserialize_struct` and
/// then fails.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, SchemaError> {
        Err(SchemaError::new("a struct", "is not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, SchemaError> {
        *self.0 = fields;
        Err(SchemaError::new("a struct", "probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// A JSON value at a path, as a serde deserializer.
struct ValueDe<'de, 'p> {
    value: &'de Value,
    path: &'p Path<'p>,
}

fn unexpected(v: &Value) -> Unexpected<'static> {
    match v {
        Value::Null => Unexpected::Unit,
        Value::Bool(_) => Unexpected::Bool(false),
        Value::Number(n) if n.is_f64() => Unexpected::Float(0.0),
        Value::Number(_) => Unexpected::Unsigned(0),
        Value::String(_) => Unexpected::Str(""),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> Deserializer<'de> for ValueDe<'de, '_> {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        let path = self.path;
        let result = match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => visitor.visit_u64(u),
                (None, Some(i)) => visitor.visit_i64(i),
                (None, None) => visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(ArrayAccess {
                items: items.iter().enumerate(),
                path,
            }),
            Value::Object(map) => visitor.visit_map(ObjectAccess::new(map, None, path)),
        };
        result.map_err(|e| e.at(path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        let path = self.path;
        match self.value {
            Value::Object(map) => visitor
                .visit_map(ObjectAccess::new(map, Some(fields), path))
                .map_err(|e: SchemaError| e.at(path)),
            other => {
                Err(<SchemaError as de::Error>::invalid_type(unexpected(other), &visitor).at(path))
            }
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        let path = self.path;
        match self.value {
            Value::String(s) => visitor
                .visit_enum(BorrowedStrDeserializer::new(s))
                .map_err(|e: SchemaError| e.at(path)),
            other => {
                Err(<SchemaError as de::Error>::invalid_type(unexpected(other), &visitor).at(path))
            }
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier
    }
}

struct ArrayAccess<'de, 'p> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    path: &'p Path<'p>,
}

impl<'de> SeqAccess<'de> for ArrayAccess<'de, '_> {
    type Error = SchemaError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, SchemaError> {
        let Some((i, value)) = self.items.next() else {
            return Ok(None);
        };
        let path = Path::Index(self.path, i);
        seed.deserialize(ValueDe { value, path: &path })
            .map(Some)
            .map_err(|e| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct ObjectAccess<'de, 'p> {
    entries: serde_json::map::Iter<'de>,
    /// The struct's field names, when reading a struct (else a free-form map).
    fields: Option<&'static [&'static str]>,
    /// The value of the key just read, and the key if it is one of `fields`.
    pending: Option<(&'de Value, Option<&'static str>)>,
    path: &'p Path<'p>,
}

impl<'de, 'p> ObjectAccess<'de, 'p> {
    fn new(
        map: &'de Map<String, Value>,
        fields: Option<&'static [&'static str]>,
        path: &'p Path<'p>,
    ) -> Self {
        ObjectAccess {
            entries: map.iter(),
            fields,
            pending: None,
            path,
        }
    }
}

impl<'de> MapAccess<'de> for ObjectAccess<'de, '_> {
    type Error = SchemaError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, SchemaError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let own = self
            .fields
            .and_then(|fields| fields.iter().copied().find(|f| f == key));
        self.pending = Some((value, own));
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, SchemaError> {
        let Some((value, own)) = self.pending.take() else {
            return Err(SchemaError::new("a value", "has a key without a value"));
        };
        let path = match own {
            Some(name) => Path::Field(self.path, name),
            None => Path::Key(self.path),
        };
        seed.deserialize(ValueDe { value, path: &path })
            .map_err(|e| e.at(&path))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        role: String,
        #[serde(default)]
        n: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(untagged, expecting = "a string or an array of strings")]
    #[allow(dead_code)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        messages: Vec<Inner>,
        #[serde(default)]
        stop: Option<OneOrMany>,
        #[serde(default)]
        bias: Option<HashMap<String, f32>>,
        #[serde(default)]
        max: Option<u64>,
    }

    /// The error for `body`: (field, message); the message must not contain `SECRET`.
    fn check(body: serde_json::Value) -> (String, String) {
        let e = from_value::<Outer>(&body).expect_err("should fail");
        let msg = e.message();
        assert!(!msg.contains("SECRET"), "{msg}");
        assert!(!e.expected.contains("SECRET"), "{}", e.expected);
        (e.field().to_string(), msg)
    }

    #[test]
    fn errors_name_the_path_and_type_but_never_the_value() {
        use serde_json::json;
        let (f, m) = check(json!({"messages": "SECRET text"}));
        assert_eq!(f, "messages");
        assert_eq!(m, "messages must be an array, got a string");
        let (f, m) = check(json!({"messages": ["SECRET text"]}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("messages[0]", "messages[0] must be an object, got a string")
        );
        let (f, m) = check(json!({"messages": [{"role": "u"}, {"role": 5}]}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            (
                "messages[1].role",
                "messages[1].role must be a string, got an integer"
            )
        );
        let (f, m) = check(json!({"messages": [], "SECRET": 1}));
        assert_eq!(f, "body");
        assert!(
            m.contains("unknown field") && m.contains("messages, stop"),
            "{m}"
        );
        let (f, _) = check(json!({"messages": [{"role": "u", "SECRET": 1}]}));
        assert_eq!(f, "messages[0]");
        let (f, m) = check(json!({"messages": [{}]}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("messages[0].role", "messages[0].role is required")
        );
        let (f, m) = check(json!({"stop": "x"}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("messages", "messages is required")
        );
        let (f, m) = check(json!({"messages": [], "stop": {"SECRET": 1}}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("stop", "stop must be a string or an array of strings")
        );
        let (f, _) = check(json!({"messages": [], "bias": {"SECRET": "SECRET"}}));
        assert_eq!(f, "bias.*");
        let (f, m) = check(json!({"messages": [], "max": -5}));
        assert_eq!(
            (f.as_str(), m.as_str()),
            ("max", "max must be a non-negative integer")
        );
        let (f, _) = check(json!({"messages": [{"role": "u", "n": 1e10}]}));
        assert_eq!(f, "messages[0].n");
        let (f, _) = check(json!("SECRET"));
        assert_eq!(f, "body");
        let ok: Outer =
            from_value(&json!({"messages": [{"role": "u"}], "stop": ["a"], "bias": {"1": 2}}))
                .unwrap();
        assert_eq!(ok.messages.len(), 1);
    }
}
