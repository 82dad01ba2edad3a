//! JSON views of the running state: the config with its secrets redacted, and
//! the upstreams' endpoints.

use serde_json::{Value, json};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::upstream::state::now_ms;

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// Words that make a key name a secret's (`token`, `api_key`, `x-api-key`,
/// `clientSecret`, ...), also in the plural.
const SECRET_WORDS: [&str; 7] = [
    "token",
    "password",
    "passwd",
    "secret",
    "key",
    "apikey",
    "authorization",
];

/// Key names that hold no secret although one of their words is `key`: a
/// rate limit's key spec, key counts and prefixes, a public key, a JWT
/// provider's key list (its secrets are under `secret`).
const NOT_SECRETS: [&str; 5] = ["key", "keys", "max_keys", "key_prefix", "public_key"];

/// The config as `GET /config` shows it: every value under a key that names a
/// secret is replaced, wherever it is, so settings added later are covered
/// without a list to keep up to date.
pub fn config(cfg: &Config) -> Value {
    let mut value = serde_json::to_value(cfg).unwrap_or(Value::Null);
    redact(&mut value);
    value
}

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // A `{ name, value }` pair (a header or query match, a header to
            // set) whose name is a secret's holds the secret in its value.
            let named_secret = map
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(names_a_secret);
            for (key, v) in map.iter_mut() {
                if named_secret && matches!(key.as_str(), "value" | "regex") {
                    redact_all(v);
                    continue;
                }
                // An object under such a key is a structure (an upstream
                // named `keycloak-api`, say) whose own keys tell.
                if names_a_secret(key) && !NOT_SECRETS.contains(&key.as_str()) && !v.is_object() {
                    redact_all(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some(hidden) = without_userinfo(s) {
                *s = hidden;
            }
        }
        _ => {}
    }
}

/// A URL with its user information (`redis://user:password@host`) replaced,
/// when it has some: a secret under any key name.
fn without_userinfo(s: &str) -> Option<String> {
    let start = s.find("://")? + 3;
    let authority_end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    let at = s[start..authority_end].rfind('@')? + start;
    Some(format!("{}{REDACTED}{}", &s[..start], &s[at..]))
}

/// Replaces every value in `value`; `null` (not set) stays.
fn redact_all(value: &mut Value) {
    match value {
        Value::Null => {}
        Value::Array(items) => items.iter_mut().for_each(redact_all),
        Value::Object(map) => map.values_mut().for_each(redact_all),
        _ => *value = Value::String(REDACTED.into()),
    }
}

/// Whether one of the words of `key` (split at `_`, `-`, `.` and camelCase
/// humps) is a secret's.
fn names_a_secret(key: &str) -> bool {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() || (c.is_uppercase() && prev_lower) {
            words.push(std::mem::take(&mut word));
        }
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        }
        prev_lower = c.is_lowercase();
    }
    words.push(word);
    words.iter().any(|w| {
        let singular = w.strip_suffix('s').unwrap_or(w);
        SECRET_WORDS.contains(&w.as_str()) || SECRET_WORDS.contains(&singular)
    })
}

/// `GET /upstreams`: every upstream and the state of each of its endpoints.
pub fn upstreams(gw: &Gateway) -> Value {
    let now = now_ms();
    let upstreams: Vec<Value> = gw
        .upstreams
        .iter()
        .map(|(name, up)| {
            let slow_start = up.config.slow_start.0;
            // Latency is only tracked for the balancer that reads it.
            let peak_ewma = up.config.balance == crate::config::BalanceConfig::PeakEwma;
            let endpoints: Vec<Value> = up
                .endpoints
                .iter()
                .zip(up.states.iter())
                .map(|(ep, state)| {
                    let ejected_until = state.ejected_until();
                    json!({
                        "address": &*ep.address,
                        "resolved": **ep.addrs.load(),
                        "healthy": state.is_healthy(),
                        "ejected": ejected_until.is_some(),
                        "ejected_for_ms": ejected_until.map(|until| until.saturating_sub(now)),
                        "ejections": state.ejection_count(),
                        "in_flight": state.inflight(),
                        "ewma_ms": peak_ewma.then(|| state.ewma_micros(now) / 1000.0),
                        "warmth": state.warmth(slow_start, now),
                    })
                })
                .collect();
            json!({
                "name": name,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({ "upstreams": upstreams })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_settings_that_are_not_secrets_stay_visible() {
        let mut v = json!({
            "consumers": [{ "name": "a", "api_keys": ["k1", { "sha256": "ab" }] }],
            "auth_providers": { "t": { "jwt": { "keys": [
                { "kid": "k", "alg": "HS256", "secret": "s", "public_key": null }
            ] } } },
            "rate_limits": { "r": { "key": "consumer", "max_keys": 10 } },
            "redis": { "key_prefix": "p" },
        });
        redact(&mut v);
        assert_eq!(
            v["consumers"][0]["api_keys"],
            json!([REDACTED, { "sha256": REDACTED }])
        );
        let key = &v["auth_providers"]["t"]["jwt"]["keys"][0];
        assert_eq!(
            (&key["kid"], &key["secret"]),
            (&json!("k"), &json!(REDACTED))
        );
        assert_eq!(
            v["rate_limits"]["r"],
            json!({ "key": "consumer", "max_keys": 10 })
        );
        assert_eq!(v["redis"]["key_prefix"], "p");
    }

    #[test]
    fn user_information_in_urls_is_hidden() {
        assert_eq!(
            without_userinfo("redis://:pw@10.0.0.1:6379/0").as_deref(),
            Some("redis://[redacted]@10.0.0.1:6379/0")
        );
        assert_eq!(
            without_userinfo("https://u:p@as.example/introspect?a=b@c").as_deref(),
            Some("https://[redacted]@as.example/introspect?a=b@c")
        );
        assert_eq!(without_userinfo("https://as.example/x@y"), None);
        assert_eq!(without_userinfo("user@example.com"), None);
        let mut v = json!({ "redis": { "urls": ["redis://u:secret@h:1"] } });
        redact(&mut v);
        assert_eq!(v["redis"]["urls"][0], "redis://[redacted]@h:1");
    }

    #[test]
    fn secret_key_names() {
        for key in [
            "token",
            "api_key",
            "x-api-key",
            "clientSecret",
            "password",
            "tokens",
            "Authorization",
        ] {
            assert!(names_a_secret(key), "{key}");
        }
        for key in [
            "keycloak",
            "hash",
            "monkey",
            "address",
            "keep_alive",
            "header",
        ] {
            assert!(!names_a_secret(key), "{key}");
        }
    }

    #[test]
    fn redaction_is_generic_and_keeps_structure() {
        let mut v = json!({
            "admin": { "address": "127.0.0.1:9901", "token": "s3cret" },
            "upstreams": { "key-service": { "endpoints": ["10.0.0.1:80"] } },
            "routes": [{ "respond": { "headers": { "x-api-key": "k", "x-ok": "v" } } }],
            "auth": { "api_keys": ["a", "b"], "client_secret": null },
            "match": { "headers": [
                { "name": "x-api-key", "value": "s3cret", "regex": null },
                { "name": "Authorization", "regex": "^Bearer abc" },
                { "name": "x-tenant", "value": "acme" },
            ] },
        });
        redact(&mut v);
        let headers = &v["match"]["headers"];
        assert_eq!(headers[0]["value"], REDACTED);
        assert_eq!(headers[0]["name"], "x-api-key");
        assert_eq!(headers[1]["regex"], REDACTED);
        assert_eq!(headers[2]["value"], "acme");
        assert_eq!(v["admin"]["token"], REDACTED);
        assert_eq!(v["admin"]["address"], "127.0.0.1:9901");
        assert_eq!(v["upstreams"]["key-service"]["endpoints"][0], "10.0.0.1:80");
        assert_eq!(v["routes"][0]["respond"]["headers"]["x-api-key"], REDACTED);
        assert_eq!(v["routes"][0]["respond"]["headers"]["x-ok"], "v");
        assert_eq!(v["auth"]["api_keys"], json!([REDACTED, REDACTED]));
        assert_eq!(v["auth"]["client_secret"], Value::Null);
    }

    #[test]
    fn the_running_config_hides_the_admin_token() {
        let cfg = crate::config::load_str(
            "admin: { token: s3cret }\nlisteners: [{ name: main, address: \"127.0.0.1:0\" }]\n",
            "t.yaml",
        )
        .unwrap();
        let v = config(&cfg);
        assert_eq!(v["admin"]["token"], REDACTED);
        assert_eq!(v["listeners"][0]["name"], "main");
        assert!(!v.to_string().contains("s3cret"));
    }
}
