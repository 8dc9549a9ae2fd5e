//! SPDK's JSON config (`-c FILE`): `{"subsystems":[{"subsystem","config":[{method, params}]}]}`,
//! with `//` and `/* */` comments. Entries of the subsystems we have run in order as RPC calls;
//! those of subsystems we lack are skipped with a warning, as SPDK skips modules it was built
//! without. The first failure stops loading with one line naming the method and the parameter.

use std::sync::Arc;

use serde_json::Value;

use crate::rpc::{self, RpcError};
use crate::target::Target;

/// Subsystems whose entries we run.
pub const SUBSYSTEMS: &[&str] = &["bdev", "nbd", "nvmf"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config: invalid JSON at line {line}, column {column}: {message}")]
    Json { line: usize, column: usize, message: String },
    #[error("config: {0}")]
    Shape(String),
    #[error("config: {method}: {}", .error.message)]
    Method { method: String, error: RpcError },
}

/// Removes `//` and `/* */` comments outside strings, keeping line structure for error positions.
pub fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// One entry to run: its method and parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEntry {
    pub subsystem: String,
    pub method: String,
    pub params: Option<Value>,
}

/// Parses a config file's text into the entries to run (skipping, with a warning, the subsystems
/// we do not have).
pub fn parse(text: &str) -> Result<Vec<ConfigEntry>, ConfigError> {
    let value: Value = serde_json::from_str(&strip_comments(text)).map_err(|e| {
        ConfigError::Json { line: e.line(), column: e.column(), message: e.to_string() }
    })?;
    let subsystems = value.get("subsystems").and_then(Value::as_array).ok_or_else(|| {
        ConfigError::Shape("expected an object with a \"subsystems\" array".into())
    })?;
    let mut entries = Vec::new();
    for subsystem in subsystems {
        let name = subsystem
            .get("subsystem")
            .and_then(Value::as_str)
            .ok_or_else(|| ConfigError::Shape("a subsystem without a \"subsystem\" name".into()))?;
        let config = match subsystem.get("config") {
            None | Some(Value::Null) => continue,
            Some(Value::Array(config)) => config,
            Some(_) => {
                return Err(ConfigError::Shape(format!(
                    "subsystem {name}: config must be an array"
                )));
            }
        };
        if !SUBSYSTEMS.contains(&name) {
            if !config.is_empty() {
                crate::names::log_line(format_args!(
                    "config: skipping {} entries of subsystem {name} (not in this build)",
                    config.len()
                ));
            }
            continue;
        }
        for entry in config {
            let method = entry.get("method").and_then(Value::as_str).ok_or_else(|| {
                ConfigError::Shape(format!("subsystem {name}: an entry without a method"))
            })?;
            let params = entry.get("params").cloned().filter(|p| !p.is_null());
            entries.push(ConfigEntry {
                subsystem: name.to_string(),
                method: method.to_string(),
                params,
            });
        }
    }
    Ok(entries)
}

/// Runs every entry in order; stops at the first failure.
pub fn apply(target: &Arc<Target>, entries: &[ConfigEntry]) -> Result<(), ConfigError> {
    for entry in entries {
        rpc::call_blocking(target, &entry.method, entry.params.clone())
            .map_err(|error| ConfigError::Method { method: entry.method.clone(), error })?;
        // A bdev that appeared may hold a pool: let examine bring it back before the next
        // entry uses it.
        rpc::call_blocking(target, "bdev_wait_for_examine", None).map_err(|error| {
            ConfigError::Method { method: "bdev_wait_for_examine".into(), error }
        })?;
    }
    Ok(())
}

/// Reads, parses and applies the config file at `path`.
pub fn load(target: &Arc<Target>, path: &std::path::Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    apply(target, &parse(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_stripped_outside_strings() {
        let text = "{ // a\n \"a\": \"//not\", /* b\n c */ \"b\": 1 }";
        let stripped = strip_comments(text);
        let value: Value = serde_json::from_str(&stripped).unwrap();
        assert_eq!(value["a"], "//not");
        assert_eq!(value["b"], 1);
        assert_eq!(stripped.lines().count(), text.lines().count());
    }

    #[test]
    fn unknown_subsystems_are_skipped_and_shape_errors_named() {
        let entries = parse(
            r#"{"subsystems":[{"subsystem":"iobuf","config":[{"method":"iobuf_set_options"}]},
               {"subsystem":"bdev","config":[{"method":"bdev_malloc_create",
                 "params":{"num_blocks":8,"block_size":512}}]},
               {"subsystem":"accel","config":null}]}"#,
        )
        .unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].method, "bdev_malloc_create");
        assert!(matches!(parse("{}"), Err(ConfigError::Shape(_))));
        assert!(matches!(parse("{"), Err(ConfigError::Json { .. })));
    }
}
