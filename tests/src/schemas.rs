//! The JSON schemas in `docs/schemas/`, one per command, and the naming rules every `--json`
//! output follows (the README's "JSON output"): what the tests check each output against.

use std::path::PathBuf;

use serde_json::Value;

/// Where the schemas live.
pub fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/schemas"))
}

/// Every schema file, by name (`status` for `status.schema.json`), parsed.
pub fn all() -> Vec<(String, Value)> {
    let mut schemas: Vec<(String, Value)> = std::fs::read_dir(dir())
        .expect("docs/schemas")
        .map(|entry| entry.expect("a schema file").path())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?.strip_suffix(".schema.json")?.to_owned();
            let text = std::fs::read_to_string(&path).expect("reading a schema");
            let schema = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            Some((name, schema))
        })
        .collect();
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas
}

/// A validator for `NAME.schema.json` (formats checked: date-time, ipv4, ipv6), with the other
/// schemas of the directory at hand for its `$ref`s (`common.schema.json#/$defs/...`).
pub fn validator(name: &str) -> jsonschema::Validator {
    let schemas = all();
    let root = schemas
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no docs/schemas/{name}.schema.json"))
        .1
        .clone();
    // Relative `$id`s resolve against the validator's default base.
    let resources = schemas.into_iter().map(|(name, schema)| {
        let resource = jsonschema::Resource::from_contents(schema).expect("a schema resource");
        (format!("json-schema:///{name}.schema.json"), resource)
    });
    jsonschema::options()
        .should_validate_formats(true)
        .with_resources(resources)
        .build(&root)
        .unwrap_or_else(|e| panic!("docs/schemas/{name}.schema.json is not a valid schema: {e}"))
}

/// Fails the test with every way `value` breaks `NAME.schema.json` or the naming rules.
#[track_caller]
pub fn assert_valid(name: &str, value: &Value) {
    let validator = validator(name);
    let mut errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{e} at {}", e.instance_path)).collect();
    errors.extend(vocabulary_breaches(value));
    assert!(
        errors.is_empty(),
        "{name} --json breaks docs/schemas/{name}.schema.json: {errors:#?}\nin {value:#}"
    );
}

/// Where `value` breaks the naming rules, whatever its schema says: keys are snake_case, a
/// protocol is `protocol` (never `proto`), durations are seconds in keys ending `_secs` (never
/// `seconds`), timestamps are RFC 3339 UTC strings in keys named `time` or ending `_at`.
pub fn vocabulary_breaches(value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, "", &mut found);
    found
}

fn walk(value: &Value, at: &str, found: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                walk(item, &format!("{at}/{index}"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let here = format!("{at}/{key}");
                let snake = key.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                    && key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !snake {
                    found.push(format!("{here}: a key that is not snake_case"));
                }
                if key == "proto" || key.ends_with("_proto") {
                    found.push(format!("{here}: `protocol` is the word"));
                }
                if key.contains("seconds") || key.contains("millis") {
                    found.push(format!("{here}: durations are seconds in keys ending `_secs`"));
                }
                if key.ends_with("_secs") && !(item.is_null() || item.as_f64().is_some_and(|n| n >= 0.0)) {
                    found.push(format!("{here}: a duration is a number of seconds, not {item}"));
                }
                if (key == "time" || key.ends_with("_at")) && !(item.is_null() || is_utc_timestamp(item)) {
                    found.push(format!("{here}: a timestamp is RFC 3339 in UTC, not {item}"));
                }
                walk(item, &here, found);
            }
        }
        _ => {}
    }
}

fn is_utc_timestamp(value: &Value) -> bool {
    value.as_str().is_some_and(|text| text.ends_with('Z') && humantime::parse_rfc3339(text).is_ok())
}
