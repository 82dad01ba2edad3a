//! Authorization of the identified caller: consumers, groups, scopes and
//! claim rules. 401 when nobody is identified, 403 when the caller lacks the right.
//!
//! A 403 names what is missing (a scope, a claim's name), never a value the
//! caller's token holds.

use std::borrow::Cow;

use http::{HeaderValue, header};
use regex::Regex;
use serde_json::Value;

use super::{ClaimPath, Claims, Identity};
use crate::config::{AuthorizeConfig, ClaimRule};
use crate::error::{ErrorKind, ProxyError};
use crate::observe::metrics::Metrics;
use crate::pipeline::RequestCtx;
use prometheus_client::metrics::counter::Counter;

/// What a claim rule asks of the claim's value.
#[derive(Debug)]
enum Test {
    Equals(Box<str>),
    OneOf(Box<[Box<str>]>),
    Contains(Box<str>),
    Regex(Regex),
}

/// One compiled claim rule.
#[derive(Debug)]
struct Rule {
    claim: Box<str>,
    path: ClaimPath,
    test: Test,
}

/// Compiled rules.
pub struct Authorize {
    consumers: Box<[Box<str>]>,
    groups: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    claims: Box<[Rule]>,
    /// The route's challenges, sent with a 401.
    challenges: Box<[HeaderValue]>,
    /// The challenges sent with a 403 for a missing scope: Bearer ones get
    /// RFC 6750 §3.1 `error="insufficient_scope"` and the scopes required.
    scope_challenges: Box<[HeaderValue]>,
    /// The route's `unauthorized` and `forbidden` counters.
    counts: Option<[Counter; 2]>,
}

/// RFC 6749 §3.3 `scope-token`: `1*NQCHAR`.
fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

impl Authorize {
    /// Compiles the rules; `challenges` are the route's `WWW-Authenticate`
    /// values, sent with a 401.
    pub fn compile(cfg: &AuthorizeConfig, challenges: Vec<HeaderValue>) -> Result<Self, String> {
        if challenges.is_empty() {
            return Err("`authorize` needs the route's `auth` to identify the caller".into());
        }
        if let Some(s) = cfg.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(format!(
                "`authorize.scopes`: `{s}` is not a scope (printable ASCII without spaces, `\"` or `\\`)"
            ));
        }
        let claims = cfg
            .claims
            .iter()
            .map(Rule::compile)
            .collect::<Result<Box<[_]>, _>>()?;
        let scope_challenges = if cfg.scopes.is_empty() {
            Box::default()
        } else {
            let extra = format!(
                "error=\"insufficient_scope\", scope=\"{}\"",
                cfg.scopes.join(" ")
            );
            challenges
                .iter()
                .filter_map(|c| {
                    let text = c.to_str().ok()?;
                    let scheme = text.split(' ').next()?;
                    if !scheme.eq_ignore_ascii_case("bearer") {
                        return None;
                    }
                    let sep = if text.len() == scheme.len() {
                        " "
                    } else {
                        ", "
                    };
                    HeaderValue::from_str(&format!("{text}{sep}{extra}")).ok()
                })
                .collect()
        };
        let boxed = |v: &[String]| v.iter().map(|s| s.as_str().into()).collect();
        Ok(Self {
            consumers: boxed(&cfg.consumers),
            groups: boxed(&cfg.groups),
            scopes: boxed(&cfg.scopes),
            claims,
            challenges: challenges.into(),
            scope_challenges,
            counts: None,
        })
    }

    /// Counts refusals in the route's `auth` metric.
    pub fn counted(mut self, route: &str, metrics: &Metrics) -> Self {
        self.counts = Some([
            metrics.auth(route, "unauthorized"),
            metrics.auth(route, "forbidden"),
        ]);
        self
    }

    /// Checks the caller.
    pub fn check(&self, ctx: &RequestCtx) -> Result<(), ProxyError> {
        let verdict = self.decide(ctx.identity.as_ref());
        if let (Err(e), Some([unauthorized, forbidden])) = (&verdict, &self.counts) {
            if e.kind == ErrorKind::Forbidden {
                forbidden.inc();
            } else {
                unauthorized.inc();
            }
        }
        verdict
    }

    /// The decision for `identity`.
    fn decide(&self, identity: Option<&Identity>) -> Result<(), ProxyError> {
        let Some(id) = identity else {
            let mut e = ProxyError::new(ErrorKind::Unauthorized).detail("credentials required");
            for c in &*self.challenges {
                e = e.header(header::WWW_AUTHENTICATE, c.clone());
            }
            return Err(e);
        };
        let forbidden = |why: String| ProxyError::new(ErrorKind::Forbidden).detail(why);
        if !self.consumers.is_empty()
            && !id
                .consumer
                .as_ref()
                .is_some_and(|c| self.consumers.iter().any(|n| **n == *c.name))
        {
            return Err(forbidden(
                "this consumer is not allowed on this route".into(),
            ));
        }
        if !self.groups.is_empty()
            && !id.consumer.as_ref().is_some_and(|c| {
                c.groups
                    .iter()
                    .any(|g| self.groups.iter().any(|n| **n == **g))
            })
        {
            return Err(forbidden(
                "membership of one of the route's groups is required".into(),
            ));
        }
        if let Some(missing) = self.missing_scope(id.claims.as_deref()) {
            let mut e = forbidden(format!("scope `{missing}` required"));
            for c in &*self.scope_challenges {
                e = e.header(header::WWW_AUTHENTICATE, c.clone());
            }
            return Err(e);
        }
        for rule in &*self.claims {
            match id.claims.as_deref().and_then(|c| rule.path.lookup(c)) {
                None => return Err(forbidden(format!("claim `{}` required", rule.claim))),
                Some(v) if !rule.test.passes(v) => {
                    return Err(forbidden(format!(
                        "claim `{}` does not satisfy the route's rule",
                        rule.claim
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The first required scope the claims do not grant: `scope` (a
    /// space-separated string, RFC 8693 §4.2) or `scp` (a list, or a string).
    fn missing_scope(&self, claims: Option<&Claims>) -> Option<&str> {
        let granted = |s: &str| {
            let Some(claims) = claims else {
                return false;
            };
            ["scope", "scp"].iter().any(|k| match claims.get(*k) {
                Some(Value::String(v)) => v.split(' ').any(|t| t == s),
                Some(Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(s)),
                _ => false,
            })
        };
        self.scopes.iter().find(|s| !granted(s)).map(|s| &**s)
    }
}

impl Rule {
    fn compile(r: &ClaimRule) -> Result<Self, String> {
        let at = |e: String| format!("`authorize.claims` rule on `{}`: {e}", r.claim);
        let path = ClaimPath::parse(&r.claim).map_err(at)?;
        let test = match (&r.equals, r.one_of.is_empty(), &r.contains, &r.regex) {
            (Some(v), true, None, None) => Test::Equals(v.as_str().into()),
            (None, false, None, None) => {
                Test::OneOf(r.one_of.iter().map(|s| s.as_str().into()).collect())
            }
            (None, true, Some(v), None) => Test::Contains(v.as_str().into()),
            (None, true, None, Some(re)) => Test::Regex(
                regex::RegexBuilder::new(&format!("^(?:{re})$"))
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| at(format!("`regex: {re}` does not compile: {e}")))?,
            ),
            _ => {
                return Err(at(
                    "needs exactly one of `equals`, `one_of`, `contains`, `regex`".into(),
                ));
            }
        };
        Ok(Self {
            claim: r.claim.as_str().into(),
            path,
            test,
        })
    }
}

/// A scalar claim as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

impl Test {
    fn passes(&self, v: &Value) -> bool {
        match self {
            Self::Equals(want) => scalar_text(v).is_some_and(|t| *t == **want),
            Self::OneOf(list) => scalar_text(v).is_some_and(|t| list.iter().any(|w| *t == **w)),
            Self::Contains(want) => match v {
                Value::Array(items) => items
                    .iter()
                    .any(|i| scalar_text(i).is_some_and(|t| *t == **want)),
                Value::String(s) => s.split(' ').any(|t| t == &**want),
                _ => false,
            },
            Self::Regex(re) => scalar_text(v).is_some_and(|t| re.is_match(&t)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::auth::Consumer;

    fn cfg(yaml: &str) -> AuthorizeConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn compile(yaml: &str) -> Authorize {
        Authorize::compile(
            &cfg(yaml),
            vec![HeaderValue::from_static("Bearer realm=\"api\"")],
        )
        .unwrap()
    }

    fn identity(consumer: Option<(&str, &[&str])>, claims: Value) -> Identity {
        Identity {
            consumer: consumer.map(|(name, groups)| {
                Arc::new(Consumer {
                    name: name.into(),
                    groups: groups.iter().map(|g| (*g).into()).collect(),
                    metadata: BTreeMap::new(),
                })
            }),
            subject: None,
            claims: match claims {
                Value::Object(m) => Some(Arc::new(m)),
                _ => None,
            },
            provider: "p".into(),
        }
    }

    fn status(a: &Authorize, id: Option<&Identity>) -> u16 {
        a.decide(id).err().map_or(200, |e| e.kind.status().as_u16())
    }

    fn detail(a: &Authorize, id: &Identity) -> String {
        a.decide(Some(id)).err().unwrap().detail.unwrap().into()
    }

    #[test]
    fn nobody_is_401_with_the_challenges() {
        let a = compile("consumers: [a]");
        let e = a.decide(None).err().unwrap();
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert_eq!(
            e.headers.unwrap()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"api\""
        );
        assert!(Authorize::compile(&cfg("consumers: [a]"), vec![]).is_err());
    }

    #[test]
    fn consumers_and_groups_are_any_of() {
        let a = compile("consumers: [a, b]\ngroups: [ops, dev]");
        assert_eq!(
            status(&a, Some(&identity(Some(("a", &["dev"])), Value::Null))),
            200
        );
        assert_eq!(
            status(&a, Some(&identity(Some(("b", &["x", "ops"])), Value::Null))),
            200
        );
        assert_eq!(
            status(&a, Some(&identity(Some(("c", &["ops"])), Value::Null))),
            403
        );
        assert_eq!(
            status(&a, Some(&identity(Some(("a", &[])), Value::Null))),
            403
        );
        assert_eq!(
            status(&a, Some(&identity(None, serde_json::json!({"sub": "a"})))),
            403
        );
    }

    #[test]
    fn scopes_are_all_of_from_scope_or_scp() {
        let a = compile("scopes: [orders:read, orders:write]");
        let id = |c: Value| identity(None, c);
        assert_eq!(
            status(
                &a,
                Some(&id(
                    serde_json::json!({"scope": "orders:write x orders:read"})
                ))
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                Some(&id(
                    serde_json::json!({"scp": ["orders:read", "orders:write"]})
                ))
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                Some(&id(serde_json::json!({"scp": "orders:read orders:write"})))
            ),
            200
        );
        let only_read = id(serde_json::json!({"scope": "orders:read orders:writes"}));
        assert_eq!(detail(&a, &only_read), "scope `orders:write` required");
        let e = a.decide(Some(&only_read)).err().unwrap();
        assert_eq!(
            e.headers.unwrap()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"orders:read orders:write\""
        );
        assert_eq!(
            status(&a, Some(&identity(Some(("a", &[])), Value::Null))),
            403
        );
        assert!(
            Authorize::compile(
                &cfg("scopes: [\"a b\"]"),
                vec![HeaderValue::from_static("x")]
            )
            .is_err()
        );
    }

    #[test]
    fn claim_rules() {
        let a = compile(
            "claims:\n  - { claim: role, equals: admin }\n  - { claim: realm_access.roles, contains: ops }\n  - { claim: tier, one_of: [\"1\", \"2\"] }\n  - { claim: email, regex: \".*@example\\\\.com\" }\n  - { claim: \"https://x.io/v\", equals: \"true\" }",
        );
        let good = serde_json::json!({
            "role": "admin",
            "realm_access": {"roles": ["dev", "ops"]},
            "tier": 2,
            "email": "a@example.com",
            "https://x.io/v": true,
        });
        assert_eq!(status(&a, Some(&identity(None, good.clone()))), 200);
        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            identity(None, c)
        };
        assert_eq!(
            detail(&a, &with("role", "user".into())),
            "claim `role` does not satisfy the route's rule"
        );
        assert_eq!(
            status(
                &a,
                Some(&with(
                    "realm_access",
                    serde_json::json!({"roles": "dev ops"})
                ))
            ),
            200
        );
        assert_eq!(
            status(
                &a,
                Some(&with(
                    "realm_access",
                    serde_json::json!({"roles": ["opsx"]})
                ))
            ),
            403
        );
        assert_eq!(status(&a, Some(&with("tier", 3.into()))), 403);
        assert_eq!(
            status(&a, Some(&with("email", "a@example.com.evil".into()))),
            403
        );
        assert_eq!(
            status(
                &a,
                Some(&with("email", serde_json::json!(["a@example.com"])))
            ),
            403
        );
        let mut missing = good.clone();
        missing.as_object_mut().unwrap().remove("role");
        assert_eq!(
            detail(&a, &identity(None, missing)),
            "claim `role` required"
        );
    }

    #[test]
    fn claim_rules_need_exactly_one_test() {
        let bad = |y: &str| {
            Authorize::compile(&cfg(y), vec![HeaderValue::from_static("x")])
                .err()
                .unwrap()
        };
        assert!(bad("claims: [{ claim: a }]").contains("exactly one"));
        assert!(bad("claims: [{ claim: a, equals: x, contains: y }]").contains("exactly one"));
        assert!(bad("claims: [{ claim: a, regex: \"(\" }]").contains("does not compile"));
        assert!(bad("claims: [{ claim: \"a..b\", equals: x }]").contains("claim path"));
    }
}
