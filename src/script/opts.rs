//! Option maps of script functions (`f(#{key: value, ...})`): typed reads with defaults, and
//! errors that name the function, the key and what was expected; unknown keys are refused.

use rhai::{Dynamic, Map};

use super::convert::{RResult, number, rt_err};

/// Reads an options map, refusing keys it does not know.
pub struct Opts<'a> {
    /// The function the options are for (named in errors).
    pub what: &'static str,
    map: &'a Map,
}

impl<'a> Opts<'a> {
    /// Checks that `map` has only `allowed` keys.
    pub fn new(what: &'static str, map: &'a Map, allowed: &[&str]) -> RResult<Opts<'a>> {
        if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(rt_err(format!(
                "{what}: unknown option `{k}`; expected one of {}",
                allowed.join(", ")
            )));
        }
        Ok(Opts { what, map })
    }

    /// The value of `key`, unless absent or `()`.
    pub fn get(&self, key: &str) -> Option<&Dynamic> {
        self.map.get(key).filter(|v| !v.is_unit())
    }

    /// An error saying option `key` must be `want`.
    pub fn err(&self, key: &str, want: &str, v: &Dynamic) -> Box<rhai::EvalAltResult> {
        rt_err(format!(
            "{}: option `{key}` must be {want}, got {v} ({})",
            self.what,
            v.type_name()
        ))
    }

    /// A string option.
    pub fn string(&self, key: &str, default: &str) -> RResult<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(v) => v
                .clone()
                .into_string()
                .map_err(|_| self.err(key, "a string", v)),
        }
    }

    /// A boolean option.
    pub fn boolean(&self, key: &str, default: bool) -> RResult<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().map_err(|_| self.err(key, "true or false", v)),
        }
    }

    /// A number option.
    pub fn float(&self, key: &str, default: f64) -> RResult<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => number(v, &format!("{}: option `{key}`", self.what)),
        }
    }

    /// A non-negative integer option.
    pub fn count(&self, key: &str, default: usize) -> RResult<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_int()
                .ok()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| self.err(key, "a non-negative integer", v)),
        }
    }

    /// Exactly `n` numbers.
    pub fn numbers(&self, key: &str, n: usize) -> RResult<Option<Vec<f64>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let want = format!("an array of {n} numbers");
        let arr = v
            .clone()
            .into_array()
            .map_err(|_| self.err(key, &want, v))?;
        let nums = arr
            .iter()
            .map(|x| number(x, &format!("{}: option `{key}`", self.what)))
            .collect::<RResult<Vec<f64>>>()?;
        if nums.len() != n {
            return Err(self.err(key, &want, v));
        }
        Ok(Some(nums))
    }

    /// Three positive integers.
    pub fn shape3(&self, key: &str, default: [usize; 3]) -> RResult<[usize; 3]> {
        match self.numbers(key, 3)? {
            None => Ok(default),
            Some(v) if v.iter().all(|x| x.fract() == 0.0 && *x >= 1.0) => {
                Ok([v[0] as usize, v[1] as usize, v[2] as usize])
            }
            Some(_) => Err(self.err(key, "three positive integers", &self.map[key])),
        }
    }

    /// A required string option.
    pub fn required_string(&self, key: &str) -> RResult<String> {
        match self.get(key) {
            None => Err(rt_err(format!("{}: option `{key}` is required", self.what))),
            Some(_) => self.string(key, ""),
        }
    }

    /// An array of non-negative integers given as option `key` (value `v`).
    pub fn counts_of(&self, key: &str, v: &Dynamic) -> RResult<Vec<usize>> {
        let arr = v
            .clone()
            .into_array()
            .map_err(|_| self.err(key, "an array of integers", v))?;
        arr.iter()
            .map(|x| {
                x.as_int()
                    .ok()
                    .and_then(|i| usize::try_from(i).ok())
                    .ok_or_else(|| self.err(key, "an array of non-negative integers", v))
            })
            .collect()
    }

    /// An array of indices (`key` absent: `None`).
    pub fn indices(&self, key: &str) -> RResult<Option<Vec<usize>>> {
        self.get(key).map(|v| self.counts_of(key, v)).transpose()
    }

    /// A map option (absent: empty).
    pub fn map(&self, key: &str) -> RResult<Map> {
        match self.get(key) {
            None => Ok(Map::new()),
            Some(v) => v
                .clone()
                .try_cast::<Map>()
                .ok_or_else(|| self.err(key, "a map", v)),
        }
    }
}
