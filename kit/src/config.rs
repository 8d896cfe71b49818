//! Service configuration: one TOML file per service, every key overridable by an environment
//! variable, unknown or mistyped keys refused with the file, line and key named, and values that
//! parse but cannot work refused by the service's [`Validate`] with the key named.
//!
//! Environment overrides: `{PREFIX}__{SECTION}__{KEY}=value` (case-insensitive, `__` between
//! levels). The value is read as a TOML literal when it parses as one (`42`, `true`, `"x"`,
//! `["a","b"]`), else as a plain string. Example: `LODESTONE_BRIDGE__KAFKA__BOOTSTRAP_SERVERS`.

use std::path::Path;

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("environment variable {var}: {detail}")]
    Env { var: String, detail: String },
    #[error("config {path}: {source}")]
    Refused { path: String, source: InvalidValue },
}

/// A value that parses but cannot work, e.g. a zero interval or an empty topic name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} {detail}")]
pub struct InvalidValue {
    /// The key as written in the file, with its section: `persist.interval_ms`.
    pub key: String,
    pub detail: String,
}

impl InvalidValue {
    pub fn new(key: impl Into<String>, detail: impl Into<String>) -> InvalidValue {
        InvalidValue { key: key.into(), detail: detail.into() }
    }
}

/// The checks a configuration needs beyond its types. [`load`] runs them; so does every service's
/// own constructor when it is given a configuration in code (tests).
pub trait Validate {
    fn validate(&self) -> Result<(), InvalidValue>;
}

/// `Err(InvalidValue { key, detail })` unless `ok`: one line per check in a `validate()`.
pub fn ensure(ok: bool, key: &str, detail: impl FnOnce() -> String) -> Result<(), InvalidValue> {
    if ok {
        return Ok(());
    }
    Err(InvalidValue::new(key, detail()))
}

/// `Err` naming `key` unless `value` is above zero: the check most bounds and periods need.
pub fn positive(key: &str, value: u64) -> Result<(), InvalidValue> {
    if value == 0 {
        return Err(InvalidValue::new(key, "must be greater than 0"));
    }
    Ok(())
}

/// `Err` naming `key` when `value` is empty.
pub fn non_empty(key: &str, value: &str) -> Result<(), InvalidValue> {
    if value.trim().is_empty() {
        return Err(InvalidValue::new(key, "must not be empty"));
    }
    Ok(())
}

/// Loads `T` from the TOML file at `path` (or all defaults when `None`), applies environment
/// overrides that start with `{env_prefix}__`, then [`Validate::validate`]s it. `T` should use
/// `#[serde(deny_unknown_fields)]` and `#[serde(default)]` so that a missing key takes its
/// documented default.
pub fn load<T: DeserializeOwned + Validate>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    let shown = path.map_or_else(|| "(defaults)".to_string(), |p| p.display().to_string());
    let config: T = parse(path, env_prefix)?;
    config.validate().map_err(|source| ConfigError::Refused { path: shown, source })?;
    Ok(config)
}

fn parse<T: DeserializeOwned>(path: Option<&Path>, env_prefix: &str) -> Result<T, ConfigError> {
    let (text, shown) = match path {
        Some(path) => {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
            (text, shown)
        }
        None => (String::new(), "(defaults)".to_string()),
    };
    // Parse the file on its own first so that errors carry its line and column.
    toml::from_str::<T>(&text).map_err(|e| ConfigError::Invalid { path: shown.clone(), detail: e.to_string() })?;
    let mut tree: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Invalid { path: shown.clone(), detail: e.to_string() })?;
    let prefix = format!("{}__", env_prefix.to_ascii_uppercase());
    let mut overridden = Vec::new();
    for (var, value) in std::env::vars() {
        let Some(key_path) = var.to_ascii_uppercase().strip_prefix(&prefix).map(str::to_owned) else { continue };
        let keys: Vec<String> = key_path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        set_path(&mut tree, &keys, parse_literal(&value)).map_err(|detail| ConfigError::Env { var: var.clone(), detail })?;
        overridden.push(var);
    }
    toml::Value::Table(tree).try_into().map_err(|e: toml::de::Error| {
        let detail = if overridden.is_empty() {
            e.to_string()
        } else {
            format!("{e} (after environment overrides {})", overridden.join(", "))
        };
        ConfigError::Invalid { path: shown, detail }
    })
}

fn parse_literal(text: &str) -> toml::Value {
    let wrapped = format!("v = {text}");
    match toml::from_str::<toml::Table>(&wrapped) {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.into()),
    }
}

fn set_path(tree: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut table = tree;
    for key in parents {
        let entry = table.entry(key.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| format!("{key} is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        port: u16,
        kafka: Kafka,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Kafka {
        bootstrap_servers: String,
    }

    impl Default for Example {
        fn default() -> Self {
            Example { port: 1, kafka: Kafka::default() }
        }
    }

    impl Validate for Example {
        fn validate(&self) -> Result<(), InvalidValue> {
            positive("port", u64::from(self.port))
        }
    }

    impl Default for Kafka {
        fn default() -> Self {
            Kafka { bootstrap_servers: "127.0.0.1:9092".into() }
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn file_then_environment() {
        let file = write("port = 5\n");
        let loaded: Example = load(Some(file.path()), "LODESTONE_TEST_A").unwrap();
        assert_eq!(loaded, Example { port: 5, kafka: Kafka::default() });
        std::env::set_var("LODESTONE_TEST_B__KAFKA__BOOTSTRAP_SERVERS", "h:1");
        std::env::set_var("LODESTONE_TEST_B__PORT", "7");
        let loaded: Example = load(Some(file.path()), "LODESTONE_TEST_B").unwrap();
        assert_eq!(loaded, Example { port: 7, kafka: Kafka { bootstrap_servers: "h:1".into() } });
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let file = write("port = 5\n\n[kafka]\nbootstrap_server = \"x\"\n");
        let err = load::<Example>(Some(file.path()), "LODESTONE_TEST_C").unwrap_err().to_string();
        assert!(err.contains("line 4") && err.contains("bootstrap_server"), "{err}");
    }

    #[test]
    fn a_value_that_cannot_work_is_refused_with_its_key() {
        let file = write("port = 0\n");
        let err = load::<Example>(Some(file.path()), "LODESTONE_TEST_D").unwrap_err().to_string();
        assert_eq!(err, format!("config {}: port must be greater than 0", file.path().display()));
    }
}

/// A path relative to the folder of the crate under test, found at run time from
/// `CARGO_MANIFEST_DIR` (which `cargo test` sets). Tests use it rather than the compile-time
/// `env!`, because a test binary may be reused from a checkout in another folder that shares the
/// target directory.
pub fn crate_path(relative: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")).join(relative)
}
