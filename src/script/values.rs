//! Parsing of `--set key=value` command-line values into script values.

use rhai::{Array, Dynamic, FLOAT, INT, Map};

use crate::error::{Error, Result};

/// Parses `key=value` pairs into a map. Values become INT, FLOAT, bool, array (`[a, b]`,
/// nested allowed) or string (quotes optional).
pub fn parse_set<S: AsRef<str>>(pairs: &[S]) -> Result<Map> {
    let mut map = Map::new();
    for pair in pairs {
        let pair = pair.as_ref();
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::arg("--set", format!("expected key=value, got `{pair}`")))?;
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.' || c == '-')
        {
            return Err(Error::arg(
                "--set",
                format!("invalid key `{key}` in `{pair}`"),
            ));
        }
        map.insert(
            key.into(),
            parse_value(value.trim()).map_err(|m| Error::arg("--set", format!("{key}: {m}")))?,
        );
    }
    Ok(map)
}

/// Parses one value: int, float, bool, array or string.
pub fn parse_value(s: &str) -> std::result::Result<Dynamic, String> {
    if let Some(inner) = s.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("unclosed array `{s}`"))?;
        let items = split_top_level(inner)?;
        let arr: Array = items
            .iter()
            .filter(|i| !i.trim().is_empty())
            .map(|i| parse_value(i.trim()))
            .collect::<std::result::Result<_, _>>()?;
        return Ok(Dynamic::from_array(arr));
    }
    if let Ok(i) = s.parse::<INT>() {
        return Ok(Dynamic::from_int(i));
    }
    if let Ok(f) = s.parse::<FLOAT>() {
        return Ok(Dynamic::from_float(f));
    }
    match s {
        "true" => return Ok(Dynamic::from_bool(true)),
        "false" => return Ok(Dynamic::from_bool(false)),
        _ => {}
    }
    let unquoted = ['"', '\'']
        .iter()
        .find_map(|q| s.strip_prefix(*q).and_then(|r| r.strip_suffix(*q)))
        .unwrap_or(s);
    Ok(Dynamic::from(unquoted.to_string()))
}

fn split_top_level(s: &str) -> std::result::Result<Vec<String>, String> {
    let (mut depth, mut quote, mut cur, mut out) = (0i32, None, String::new(), Vec::new());
    for c in s.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('[', None) => depth += 1,
            (']', None) => depth -= 1,
            (',', None) if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("unbalanced `]` in `[{s}]`"));
        }
        cur.push(c);
    }
    if depth != 0 || quote.is_some() {
        return Err(format!("unbalanced brackets or quotes in `[{s}]`"));
    }
    out.push(cur);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_parse_as_int_float_bool_string_and_array() {
        let m = parse_set(&[
            "a=3",
            "b=0.5",
            "c=true",
            "d=hello",
            "e=[1, 2.5, x]",
            "f=[[1,2],[3]]",
            "g='a,b'",
        ])
        .unwrap();
        assert_eq!(m["a"].as_int().unwrap(), 3);
        assert_eq!(m["b"].as_float().unwrap(), 0.5);
        assert!(m["c"].as_bool().unwrap());
        assert_eq!(m["d"].clone().into_string().unwrap(), "hello");
        let e = m["e"].clone().into_array().unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].clone().into_string().unwrap(), "x");
        assert_eq!(m["f"].clone().into_array().unwrap().len(), 2);
        assert_eq!(m["g"].clone().into_string().unwrap(), "a,b");
    }

    #[test]
    fn set_without_equals_sign_is_an_error_naming_the_flag() {
        let e = parse_set(&["novalue"]).unwrap_err().to_string();
        assert!(e.contains("--set") && e.contains("key=value"), "{e}");
    }
}
