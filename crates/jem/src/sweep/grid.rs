//! The axes of a sweep: `KEY=V1,V2,...` with a dotted config key (as in `config.toml`), the
//! settings `KEY=VALUE` of `--set`, and applying them to a [`TrainConfig`] with the config
//! file's own errors.

use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::ConfigError;

/// One axis of the grid: a dotted config key and the values it takes, as TOML values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    /// The dotted key, e.g. `optim.lr`.
    pub key: String,
    /// Its values, in the order given.
    pub values: Vec<toml::Value>,
    /// The values as they were written (cell names, table headers and plot labels).
    pub labels: Vec<String>,
}

impl Axis {
    /// Parse `KEY=V1,V2,...`. Each value is read as a TOML value (`3e-4`, `10`, `true`,
    /// `[32, 64]`, `"bf16"`), and a bare word as a string (`bf16`); commas inside brackets
    /// belong to an array.
    pub fn parse(text: &str) -> Result<Axis, ConfigError> {
        let (key, values) = split_setting(text, "--grid")?;
        let labels: Vec<String> = split_top_level(values)
            .into_iter()
            .map(|v| v.trim().to_string())
            .collect();
        let values: Vec<toml::Value> = labels.iter().map(|v| parse_value(v)).collect();
        if labels.iter().any(String::is_empty) {
            return Err(ConfigError::field(
                key,
                format!("`{text}`: an empty value (values are separated by commas)"),
            ));
        }
        Ok(Axis {
            key: key.to_string(),
            values,
            labels,
        })
    }
}

/// Parse `KEY=VALUE` (one `--set`).
pub fn parse_setting(text: &str) -> Result<(String, toml::Value), ConfigError> {
    let (key, value) = split_setting(text, "--set")?;
    Ok((key.to_string(), parse_value(value.trim())))
}

fn split_setting<'a>(text: &'a str, flag: &str) -> Result<(&'a str, &'a str), ConfigError> {
    let Some((key, values)) = text.split_once('=') else {
        return Err(ConfigError::field(
            flag,
            format!("`{text}`: expected KEY=VALUE, e.g. optim.lr=1e-4"),
        ));
    };
    let key = key.trim();
    let well_formed = !key.is_empty()
        && key
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !well_formed {
        return Err(ConfigError::field(
            flag,
            format!("`{key}` is no dotted config key (e.g. sgld.step_size)"),
        ));
    }
    Ok((key, values))
}

/// Split on commas outside brackets and quotes.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let mut out = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' | '{' if !quoted => depth += 1,
            ']' | '}' if !quoted => depth -= 1,
            ',' if depth == 0 && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A TOML value, or the text as a string when it is none (a bare word such as `bf16`).
fn parse_value(text: &str) -> toml::Value {
    #[derive(Deserialize)]
    struct V {
        v: toml::Value,
    }
    toml::from_str::<V>(&format!("v = {text}"))
        .map(|w| w.v)
        .unwrap_or_else(|_| toml::Value::String(text.to_string()))
}

/// `cfg` with each `(dotted key, value)` set, read back through the config's own parser (so
/// an unknown key or a value of the wrong type is refused, naming the key) and validated.
pub fn apply(
    cfg: &TrainConfig,
    settings: &[(String, toml::Value)],
) -> Result<TrainConfig, ConfigError> {
    let mut root = toml::Value::try_from(cfg).expect("a TrainConfig always serialises");
    for (key, value) in settings {
        set(&mut root, key, value.clone())?;
    }
    let text = toml::to_string(&root).expect("a TOML table serialises");
    let out = TrainConfig::from_toml(&text).map_err(|reason| {
        let keys: Vec<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
        ConfigError::field(&keys.join(", "), reason.trim().to_string())
    })?;
    out.validate()?;
    Ok(out)
}

/// Set `key` in the table `root`: the tables on its path must exist (a misspelt table is an
/// error naming it); an integer given for a float field becomes a float.
fn set(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    let (last, path) = parts.split_last().expect("a key has at least one part");
    let mut table = root.as_table_mut().expect("a config is a table");
    for (i, p) in path.iter().enumerate() {
        let here = parts[..=i].join(".");
        table = match table.get_mut(*p) {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(ConfigError::field(key, format!("`{here}` is not a table"))),
            None => {
                return Err(ConfigError::field(
                    key,
                    format!("the config has no table `{here}`"),
                ));
            }
        };
    }
    let value = match (table.get(*last), value) {
        (Some(toml::Value::Float(_)), toml::Value::Integer(i)) => toml::Value::Float(i as f64),
        (_, v) => v,
    };
    table.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_numbers_words_and_arrays() {
        let a = Axis::parse("optim.lr=3e-5, 1e-4,1").unwrap();
        assert_eq!(a.key, "optim.lr");
        assert_eq!(a.values.len(), 3);
        assert_eq!(a.labels, ["3e-5", "1e-4", "1"]);
        assert_eq!(a.values[0].as_float(), Some(3e-5));
        let w = Axis::parse("model.widths=[32,64],[64, 128]").unwrap();
        assert_eq!(w.values.len(), 2);
        assert_eq!(w.labels[1], "[64, 128]");
        assert_eq!(w.values[1].as_array().map(Vec::len), Some(2));
        let p = Axis::parse("sgld.precision=bf16,f32").unwrap();
        assert_eq!(p.values[0].as_str(), Some("bf16"));
        for bad in ["optim.lr", "=1", "optim..lr=1", "optim.lr=1,,2"] {
            assert!(Axis::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_go_through_the_config_parser() {
        let base = TrainConfig::default();
        let set = |k: &str, v: &str| apply(&base, &[parse_setting(&format!("{k}={v}")).unwrap()]);
        let c = set("optim.lr", "1").unwrap();
        assert_eq!(c.optim.lr, 1.0);
        assert_eq!(set("sgld.steps", "5").unwrap().sgld.steps, 5);
        assert_eq!(set("sgld.chains", "8").unwrap().sgld.chains, Some(8));
        let e = set("optim.lrr", "1").unwrap_err().to_string();
        assert!(
            e.contains("optim.lrr") && e.contains("unknown field"),
            "{e}"
        );
        let e = set("optimm.lr", "1").unwrap_err().to_string();
        assert!(e.contains("no table `optimm`"), "{e}");
        let e = set("sgld.steps", "many").unwrap_err().to_string();
        assert!(e.contains("sgld.steps"), "{e}");
        // Validation: the same error as a config file's.
        let e = set("sgld.steps", "0").unwrap_err().to_string();
        assert!(e.contains("sgld.steps"), "{e}");
    }
}
