//! Typed options of script functions. An options map (`f(#{key: value, ...})`) deserialises
//! into a config struct owned by the layer that uses it; the struct's serde attributes and
//! JSON schema (doc comments included) are the one source of every key, type, default and
//! doc line. Unknown keys are refused at any depth with the valid keys and a "did you mean";
//! values of the wrong type name the key's full path.

use rhai::{Dynamic, Map};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::convert::{RResult, rt_err};

/// Deserialises the options map `map` of function `what` into `T`.
pub fn parse<T: DeserializeOwned + JsonSchema>(what: &str, map: &Map) -> RResult<T> {
    parse_with(what, map, serde_json::Map::new())
}

/// As [`parse`], with `fixed` entries that the caller supplies (e.g. the task named by another
/// argument) and the script may not set.
pub fn parse_with<T: DeserializeOwned + JsonSchema>(
    what: &str,
    map: &Map,
    fixed: serde_json::Map<String, Value>,
) -> RResult<T> {
    let mut value = to_json(what, map)?;
    let schema = Schema::of::<T>();
    if let Some(k) = fixed.keys().find(|k| map.contains_key(k.as_str())) {
        return Err(rt_err(format!(
            "{what}: option `{k}` is given by the function's arguments, not by its options"
        )));
    }
    schema.check(what, &schema.root, &value, "")?;
    if let Value::Object(o) = &mut value {
        o.extend(fixed);
    }
    from_json(what, value)
}

/// Deserialises a JSON value (already key-checked) into `T`, naming the failing key's path.
pub fn from_json<T: DeserializeOwned>(what: &str, value: Value) -> RResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            rt_err(format!("{what}: {inner}"))
        } else {
            rt_err(format!("{what}: option `{path}`: {inner}"))
        }
    })
}

/// A string argument naming a variant of enum `T` by its script name (e.g. `"max_hamming"`).
pub fn enum_arg<T: DeserializeOwned>(what: &str, arg: &str, v: &str) -> RResult<T> {
    serde_json::from_value(Value::String(v.into()))
        .map_err(|e| rt_err(format!("{what}: argument `{arg}`: {e}")))
}

/// A Rhai map as JSON, without `()` entries (an entry set to `()` takes its default).
pub fn to_json(what: &str, map: &Map) -> RResult<Value> {
    let v: Value = rhai::serde::from_dynamic(&Dynamic::from_map(map.clone()))
        .map_err(|e| rt_err(format!("{what}: options must be plain values: {e}")))?;
    Ok(without_nulls(v))
}

fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// The closest of `valid` to `key`, when it is close enough to be a likely typo.
pub fn suggestion<'a>(key: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    valid
        .into_iter()
        .map(|v| (strsim::jaro_winkler(key, v), v))
        .filter(|(s, _)| *s > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v)
}

/// The error for an unknown key `path` among `valid` keys.
pub fn unknown_key(what: &str, path: &str, key: &str, valid: &[&str]) -> Box<rhai::EvalAltResult> {
    let hint = suggestion(key, valid.iter().copied())
        .map(|s| format!("did you mean `{}`? ", join(path, s)))
        .unwrap_or_default();
    rt_err(format!(
        "{what}: unknown option `{}`; {hint}valid keys{}: {}",
        join(path, key),
        if path.is_empty() {
            String::new()
        } else {
            format!(" of `{path}`")
        },
        valid.join(", ")
    ))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A type's JSON schema with its definitions.
struct Schema {
    root: Value,
    defs: serde_json::Map<String, Value>,
}

impl Schema {
    fn of<T: JsonSchema>() -> Schema {
        let mut root = schemars::schema_for!(T).to_value();
        let defs = root
            .as_object_mut()
            .and_then(|o| o.remove("$defs"))
            .and_then(|d| match d {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
        Schema { root, defs }
    }

    /// `s` with a `$ref` followed, and an optional (`anyOf [T, null]`) reduced to `T`.
    fn resolve<'a>(&'a self, s: &'a Value) -> &'a Value {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            let name = r.rsplit('/').next().unwrap_or(r);
            if let Some(d) = self.defs.get(name) {
                return self.resolve(d);
            }
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = s.get(key) {
                let non_null: Vec<&Value> = alts
                    .iter()
                    .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                    .collect();
                if let [one] = non_null.as_slice() {
                    return self.resolve(one);
                }
            }
        }
        s
    }

    /// The properties of an object schema with fixed keys (`None`: not such an object).
    fn properties<'a>(&'a self, s: &'a Value) -> Option<&'a serde_json::Map<String, Value>> {
        self.resolve(s).get("properties").and_then(Value::as_object)
    }

    /// Refuses keys of `v` that schema `s` does not have and values of the wrong type, at
    /// any depth.
    fn check(&self, what: &str, s: &Value, v: &Value, path: &str) -> RResult<()> {
        self.check_type(what, s, v, path)?;
        let (Some(props), Value::Object(obj)) = (self.properties(s), v) else {
            return Ok(());
        };
        for (k, inner) in obj {
            match props.get(k) {
                Some(ps) => self.check(what, ps, inner, &join(path, k))?,
                None => {
                    let valid: Vec<&str> = props.keys().map(String::as_str).collect();
                    return Err(unknown_key(what, path, k, &valid));
                }
            }
        }
        Ok(())
    }

    /// Refuses a value that does not have the type of schema `s` (numbers, booleans,
    /// strings, arrays and their items, named variants).
    fn check_type(&self, what: &str, s: &Value, v: &Value, path: &str) -> RResult<()> {
        let r = self.resolve(s);
        if v.is_null() || (is_optional(s) && v.is_null()) {
            return Ok(());
        }
        let fits = match primary_type(r) {
            Some("integer") => {
                v.as_i64().is_some_and(|i| {
                    r.get("minimum")
                        .and_then(Value::as_f64)
                        .is_none_or(|m| i as f64 >= m)
                }) || v.as_u64().is_some()
            }
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            Some("string") => v.is_string(),
            Some("object") => v.is_object(),
            Some("array") => v.is_array() && self.array_fits(r, v),
            _ => true,
        };
        let variants = self.variant_names(r);
        let fits =
            fits && (variants.is_empty() || v.as_str().is_some_and(|x| variants.contains(&x)));
        if !fits {
            let mut want = self.type_name(s).replace("\\|", "|");
            if primary_type(r) == Some("integer") && r.get("minimum").is_some() {
                want = format!("{want} ≥ 0");
            }
            return Err(rt_err(format!(
                "{what}: option `{path}` must be {}, got {v}",
                article(&want)
            )));
        }
        if let (Some(Value::Array(items)), Value::Array(vals)) = (r.get("prefixItems"), v) {
            for (i, (is, iv)) in items.iter().zip(vals).enumerate() {
                self.check(what, is, iv, &format!("{path}[{i}]"))?;
            }
        } else if let (Some(is), Value::Array(vals)) = (r.get("items"), v) {
            for (i, iv) in vals.iter().enumerate() {
                self.check(what, is, iv, &format!("{path}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Whether array `v` has the length schema `r` asks for.
    fn array_fits(&self, r: &Value, v: &Value) -> bool {
        let n = v.as_array().map_or(0, Vec::len) as u64;
        let min = r.get("minItems").and_then(Value::as_u64).unwrap_or(0);
        let max = r
            .get("maxItems")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        (min..=max).contains(&n)
    }

    /// The script names of an enum's unit variants (empty for other schemas).
    fn variant_names<'a>(&'a self, r: &'a Value) -> Vec<&'a str> {
        let Some(Value::Array(alts)) = r.get("oneOf").or_else(|| r.get("enum")) else {
            return Vec::new();
        };
        alts.iter()
            .filter_map(|a| {
                a.as_str()
                    .or_else(|| a.get("const").and_then(Value::as_str))
            })
            .collect()
    }

    /// One documentation row per key, nested maps flattened as `outer.inner`.
    fn rows(&self, s: &Value, prefix: &str, out: &mut Vec<OptionDoc>) {
        let Some(props) = self.properties(s) else {
            return;
        };
        for (k, p) in props {
            let key = join(prefix, k);
            let nested = self.properties(p).is_some();
            out.push(OptionDoc {
                key: key.clone(),
                ty: if nested {
                    "Map".into()
                } else {
                    self.type_name(p)
                },
                default: if nested {
                    String::new()
                } else {
                    p.get("default").map(render_default).unwrap_or_default()
                },
                doc: p
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .replace('\n', " "),
            });
            if nested {
                self.rows(p, &key, out);
            }
        }
    }

    /// A script-facing type name of schema `s`.
    fn type_name(&self, s: &Value) -> String {
        let r = self.resolve(s);
        let optional = is_optional(s) || is_optional(r);
        let base = if let Some(Value::Array(alts)) = r.get("oneOf").or_else(|| r.get("anyOf")) {
            let consts: Vec<String> = alts
                .iter()
                .filter_map(|a| {
                    a.get("const")
                        .or_else(|| a.get("enum").and_then(|e| e.get(0)))
                        .map(|c| c.to_string())
                })
                .collect();
            if consts.len() == alts.len() && !consts.is_empty() {
                consts.join(" \\| ")
            } else {
                "value".into()
            }
        } else if let Some(Value::Array(e)) = r.get("enum") {
            e.iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(" \\| ")
        } else {
            match primary_type(r) {
                Some("integer") => "INT".into(),
                Some("number") => "FLOAT".into(),
                Some("boolean") => "bool".into(),
                Some("string") => "String".into(),
                Some("object") => "Map".into(),
                Some("array") => self.array_name(r),
                _ => "value".into(),
            }
        };
        if optional {
            format!("{base} or ()")
        } else {
            base
        }
    }

    fn array_name(&self, r: &Value) -> String {
        if let Some(Value::Array(items)) = r.get("prefixItems") {
            let names: Vec<String> = items.iter().map(|i| self.type_name(i)).collect();
            if names.windows(2).all(|w| w[0] == w[1]) && !names.is_empty() {
                return format!("[{}; {}]", names[0], names.len());
            }
            return format!("[{}]", names.join(", "));
        }
        let item = r
            .get("items")
            .map(|i| self.type_name(i))
            .unwrap_or_else(|| "value".into());
        match (r.get("minItems"), r.get("maxItems")) {
            (Some(a), Some(b)) if a == b => format!("[{item}; {a}]"),
            _ => format!("[{item}]"),
        }
    }
}

/// "an INT", "a FLOAT", ... for error messages.
fn article(ty: &str) -> String {
    if ty.starts_with('"') {
        format!("one of {ty}")
    } else if ty.starts_with('[') {
        format!("an array {ty}")
    } else if ty.starts_with(['A', 'E', 'I', 'O', 'U', 'a', 'e', 'i', 'o', 'u']) {
        format!("an {ty}")
    } else {
        format!("a {ty}")
    }
}

fn primary_type(s: &Value) -> Option<&str> {
    match s.get("type") {
        Some(Value::String(t)) => Some(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null"),
        _ => None,
    }
}

fn is_optional(s: &Value) -> bool {
    let null_type = match s.get("type") {
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => false,
    };
    let null_alt = ["anyOf", "oneOf"].iter().any(|k| {
        s.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|alts| alts.iter().any(|a| a.get("type") == Some(&"null".into())))
    });
    null_type || null_alt
}

fn render_default(v: &Value) -> String {
    match v {
        Value::Null => "()".into(),
        Value::Object(o) if o.is_empty() => "#{}".into(),
        other => other.to_string(),
    }
}

/// The documentation of one option: its key (`outer.inner` when nested), type, default and
/// what it means.
#[derive(Clone, Debug, PartialEq)]
pub struct OptionDoc {
    /// The key, with its parents' keys for nested maps.
    pub key: String,
    /// The type as scripts see it.
    pub ty: String,
    /// The default value (empty for nested maps).
    pub default: String,
    /// One line saying what it sets.
    pub doc: String,
}

/// Every option of `T`, in key order.
pub fn docs<T: JsonSchema>() -> Vec<OptionDoc> {
    let schema = Schema::of::<T>();
    let mut out = Vec::new();
    schema.rows(&schema.root, "", &mut out);
    out
}
