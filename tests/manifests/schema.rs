//! A validator for the structural OpenAPI v3 schemas of Kubernetes CRDs, written for the subset the Kruise CRDs
//! use rather than a general JSON-schema library: Kubernetes gives some keywords meanings JSON Schema lacks
//! (`x-kubernetes-preserve-unknown-fields`, `x-kubernetes-int-or-string`, pruning), and the checks below want
//! those meanings.
//!
//! What "valid" means here. The API server rejects wrong types, enum values outside the list and missing required
//! fields; fields a schema does not know it does not reject but silently *prunes* (with a warning at most), so a
//! typo there loses a setting without an error. This validator reports all of those as errors:
//!
//! - `type` (object, array, string, integer, number, boolean), `enum`, `required`, `items`, `properties`,
//!   `additionalProperties` (schema or boolean), `anyOf` (one branch must match), `format` int32/int64 ranges,
//!   `x-kubernetes-int-or-string`;
//! - an object field that is neither in `properties` nor allowed by `additionalProperties` is an error ("would be
//!   pruned"), unless the schema has `x-kubernetes-preserve-unknown-fields: true`: then unknown fields are kept by
//!   the API server and are left for a more specific check (`core_v1` for the Kruise containers, volumes and pod
//!   template, whose CRD schemas are mostly schemaless);
//! - `null` anywhere is an error unless the schema says `nullable: true` (the API server prunes such nulls, and
//!   in a hand-written manifest a null is always a mistake, like `emptyDir:` for `emptyDir: {}`).
//!
//! Not checked: `default` (applied by the server, not a constraint), `description`, `x-kubernetes-map-type` and
//! `x-kubernetes-list-type: atomic` (merge semantics only). Any other keyword met while validating a value (e.g.
//! `pattern`, `maxLength`, `minimum`, `x-kubernetes-validations`, list types `set`/`map`, other formats) is
//! reported as an error, never skipped: if a newer CRD starts to rely on one, this test fails until the validator
//! learns it. Root `metadata` is checked as ObjectMeta (the API server does the same for custom resources); admission
//! webhooks (Kruise's own validation) are out of reach, a few of their rules are checked separately.

use serde_json::Value;

const IGNORED: &[&str] = &["description", "default", "x-kubernetes-map-type"];
const HANDLED: &[&str] = &[
    "type",
    "properties",
    "required",
    "items",
    "enum",
    "additionalProperties",
    "anyOf",
    "format",
    "nullable",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
];

/// Every problem found in `value`, each starting with its path.
pub fn validate(schema: &Value, value: &Value, root: &str) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, root, &mut errors);
    errors
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        errors.push(format!("{path}: schema is not an object: {schema}"));
        return;
    };
    for k in s.keys() {
        if !IGNORED.contains(&k.as_str()) && !HANDLED.contains(&k.as_str()) {
            errors.push(format!(
                "{path}: schema keyword {k:?} is not implemented by this validator"
            ));
        }
    }
    if let Some(t) = s.get("x-kubernetes-list-type") {
        if t != "atomic" {
            errors.push(format!(
                "{path}: x-kubernetes-list-type {t} is not implemented by this validator"
            ));
        }
    }

    if value.is_null() {
        if s.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: null (the API server would prune it)"));
        }
        return;
    }
    if s.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) && !(is_integer(value) || value.is_string()) {
        errors.push(format!("{path}: {value} is neither an integer nor a string"));
        return;
    }
    if let Some(t) = s.get("type") {
        let ok = match t.as_str() {
            Some("object") => value.is_object(),
            Some("array") => value.is_array(),
            Some("string") => value.is_string(),
            Some("integer") => is_integer(value),
            Some("number") => value.is_number(),
            Some("boolean") => value.is_boolean(),
            _ => {
                errors.push(format!("{path}: schema type {t} is not implemented by this validator"));
                return;
            }
        };
        if !ok {
            errors.push(format!(
                "{path}: expected {}, got {}",
                t.as_str().unwrap_or("?"),
                kind(value)
            ));
            return;
        }
    }
    if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!(
                "{path}: {value} is not one of {}",
                Value::Array(allowed.clone())
            ));
        }
    }
    if let Some(f) = s.get("format") {
        check_format(f, value, path, errors);
    }
    if let Some(branches) = s.get("anyOf").and_then(Value::as_array) {
        let matched = branches.iter().any(|b| validate(b, value, path).is_empty());
        if !matched {
            errors.push(format!(
                "{path}: {value} matches none of anyOf {}",
                Value::Array(branches.clone())
            ));
        }
    }
    let preserve = s.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    match value {
        Value::Object(fields) => {
            if let Some(required) = s.get("required").and_then(Value::as_array) {
                for r in required.iter().filter_map(Value::as_str) {
                    if !fields.contains_key(r) {
                        errors.push(format!("{}: required field missing", join(path, r)));
                    }
                }
            }
            let properties = s.get("properties").and_then(Value::as_object);
            for (k, v) in fields {
                let at = join(path, k);
                match (properties.and_then(|p| p.get(k)), s.get("additionalProperties")) {
                    (Some(sub), _) => check(sub, v, &at, errors),
                    (None, Some(Value::Bool(true))) => no_nulls(v, &at, errors),
                    (None, Some(sub @ Value::Object(_))) => check(sub, v, &at, errors),
                    (None, _) if preserve => no_nulls(v, &at, errors),
                    (None, _) => errors.push(format!("{at}: unknown field (the API server would prune it)")),
                }
            }
        }
        Value::Array(items) => match s.get("items") {
            Some(item) => {
                for (i, v) in items.iter().enumerate() {
                    check(item, v, &format!("{path}[{i}]"), errors);
                }
            }
            None if preserve => no_nulls(value, path, errors),
            None => errors.push(format!("{path}: array where the schema describes no items")),
        },
        _ => {}
    }
}

fn check_format(format: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let range = match format.as_str() {
        Some("int32") => i128::from(i32::MIN)..=i128::from(i32::MAX),
        Some("int64") => i128::from(i64::MIN)..=i128::from(i64::MAX),
        _ => {
            errors.push(format!("{path}: format {format} is not implemented by this validator"));
            return;
        }
    };
    let n = value
        .as_i64()
        .map(i128::from)
        .or_else(|| value.as_u64().map(i128::from));
    if let Some(n) = n {
        if !range.contains(&n) {
            errors.push(format!("{path}: {n} is out of range for {format}"));
        }
    }
}

/// In a subtree the schema leaves open (preserved unknown fields): only nulls are errors.
fn no_nulls(value: &Value, path: &str, errors: &mut Vec<String>) {
    match value {
        Value::Null => errors.push(format!("{path}: null")),
        Value::Object(m) => m.iter().for_each(|(k, v)| no_nulls(v, &join(path, k), errors)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, v)| no_nulls(v, &format!("{path}[{i}]"), errors)),
        _ => {}
    }
}

fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
