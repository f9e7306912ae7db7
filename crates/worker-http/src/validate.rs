//! Field-by-field validation of a JSON object, collecting every error. Messages name the
//! field and its constraint and never repeat the value given (a value may be prompt text).

use serde_json::{Map, Value};

use crate::error::{ApiError, FieldError};

/// A JSON object being read into a typed request.
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            errors: Vec::new(),
        }
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.obj.get(name).filter(|v| !v.is_null())
    }

    fn fail(&mut self, name: &str, constraint: &str, message: String) {
        self.errors.push(FieldError::new(name, constraint, message));
    }

    fn missing(&mut self, name: &str, constraint: &str) {
        self.fail(
            name,
            "required",
            format!("{name} is required ({constraint})"),
        );
    }

    fn wrong_type(&mut self, name: &str, constraint: &str, v: &Value) {
        self.fail(
            name,
            constraint,
            format!("{name} must be {constraint}, got {}", type_name(v)),
        );
    }

    /// Refuses fields not in `known`.
    pub fn deny_unknown(&mut self, known: &[&str]) {
        let unknown: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        for k in unknown {
            // The key is client text but not prompt text; cap it anyway.
            let shown: String = k.chars().take(64).collect();
            self.fail(
                &shown,
                "known field",
                format!("unknown field; expected one of {}", known.join(", ")),
            );
        }
    }

    /// A string of `1..=max_chars` characters.
    pub fn string(&mut self, name: &str, max_chars: usize) -> Option<String> {
        let v = self.get(name)?;
        match v.as_str() {
            Some("") => {
                self.fail(name, "non-empty", format!("{name} must not be empty"));
                None
            }
            Some(s) if s.chars().count() > max_chars => {
                self.fail(
                    name,
                    &format!("at most {max_chars} characters"),
                    format!("{name} is longer than {max_chars} characters"),
                );
                None
            }
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(name, "a string", v);
                None
            }
        }
    }

    pub fn required_string(&mut self, name: &str, max_chars: usize) -> Option<String> {
        if self.get(name).is_none() {
            self.missing(name, "a non-empty string");
            return None;
        }
        self.string(name, max_chars)
    }

    /// An integer in `min..=max`.
    pub fn uint(&mut self, name: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.get(name)?;
        let constraint = format!("an integer in [{min}, {max}]");
        match v.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(_) => {
                self.fail(name, &constraint, format!("{name} must be {constraint}"));
                None
            }
            None if v.is_number() => {
                self.fail(name, &constraint, format!("{name} must be {constraint}"));
                None
            }
            None => {
                self.wrong_type(name, &constraint, v);
                None
            }
        }
    }

    /// A finite number for which `ok` holds; `constraint` says which in words.
    pub fn number(&mut self, name: &str, constraint: &str, ok: fn(f64) -> bool) -> Option<f32> {
        let v = self.get(name)?;
        match v.as_f64() {
            Some(x) if x.is_finite() && ok(x) => Some(x as f32),
            Some(_) => {
                self.fail(name, constraint, format!("{name} must be {constraint}"));
                None
            }
            None => {
                self.wrong_type(name, constraint, v);
                None
            }
        }
    }

    /// A string or an array of at most `max` non-empty strings.
    pub fn stop(&mut self, name: &str, max: usize) -> Vec<String> {
        let constraint = format!("a string or an array of at most {max} non-empty strings");
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let items: Vec<&Value> = match v {
            Value::String(_) => vec![v],
            Value::Array(a) => a.iter().collect(),
            _ => {
                self.wrong_type(name, &constraint, v);
                return Vec::new();
            }
        };
        if items.len() > max {
            self.fail(
                name,
                &constraint,
                format!(
                    "{name} has {} entries, at most {max} are allowed",
                    items.len()
                ),
            );
            return Vec::new();
        }
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 256 => out.push(s.to_string()),
                _ => {
                    self.fail(
                        name,
                        &constraint,
                        format!(
                            "every {name} entry must be a non-empty string of at most 256 bytes"
                        ),
                    );
                    return Vec::new();
                }
            }
        }
        out
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(self.errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, read: impl FnOnce(&mut Fields), fields: &[&str]) {
        let Value::Object(obj) = serde_json::from_str(body).unwrap() else {
            panic!("not an object")
        };
        let mut f = Fields::new(&obj);
        read(&mut f);
        let got: Vec<&str> = f.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(got, fields, "{body}");
    }

    #[test]
    fn errors_name_fields_and_hide_values() {
        check(
            r#"{"a": "x"}"#,
            |f| {
                let _ = f.required_string("p", 10);
            },
            &["p"],
        );
        check(
            r#"{"p": 5}"#,
            |f| {
                let _ = f.string("p", 10);
            },
            &["p"],
        );
        check(
            r#"{"n": -1}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &["n"],
        );
        check(
            r#"{"n": 2.5}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &["n"],
        );
        check(
            r#"{"n": 3}"#,
            |f| {
                let _ = f.uint("n", 1, 5);
            },
            &[],
        );
        check(
            r#"{"t": "hot"}"#,
            |f| {
                let _ = f.number("t", ">= 0", |x| x >= 0.0);
            },
            &["t"],
        );
        check(
            r#"{"s": ["a","b","c","d","e"]}"#,
            |f| {
                let _ = f.stop("s", 4);
            },
            &["s"],
        );
        check(r#"{"s": "a"}"#, |f| assert_eq!(f.stop("s", 4), ["a"]), &[]);
        check(r#"{"x": 1, "y": 2}"#, |f| f.deny_unknown(&["x"]), &["y"]);
        let Value::Object(obj) = serde_json::from_str(r#"{"p": ["secret prompt"]}"#).unwrap()
        else {
            panic!()
        };
        let mut f = Fields::new(&obj);
        f.string("p", 10);
        assert!(!f.errors[0].message.contains("secret"));
    }
}
