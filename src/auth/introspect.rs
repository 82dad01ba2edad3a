//! OAuth2 token introspection (RFC 7662): the token is posted to the
//! authorization server's endpoint (client authentication with HTTP Basic,
//! RFC 6749 §2.3.1) and its answer decides. Answers are cached by the
//! token's SHA-256 (never the token itself) in a bounded cache: an active one
//! until `cache_ttl` or the token's `exp`, whichever comes first, an inactive
//! one for `negative_cache_ttl`; concurrent requests with one token make one
//! call. A failed call (endpoint down, timeout, bad answer) is not cached and
//! answers 503.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderValue, Request};
use moka::Expiry;
use moka::future::Cache;
use prometheus_client::metrics::counter::Counter;

use super::fetch::{Client, Target, form_encode};
use super::jwt::{MAX_TOKEN, bearer_challenge};
use super::source::Sources;
use super::{Claims, Consumers, Identity, Outcome};
use crate::config::IntrospectionConfig;
use crate::observe::metrics::Metrics;

/// Largest introspection answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// A cached answer, with how long it stays.
#[derive(Clone)]
enum Verdict {
    /// The token is active; the answer's members are its claims.
    Active(Arc<Claims>, Duration),
    /// The token is not active (expired, revoked, unknown).
    Inactive(Duration),
}

/// Each answer expires after its own time.
struct ByVerdict;

impl Expiry<[u8; 32], Verdict> for ByVerdict {
    fn expire_after_create(&self, _: &[u8; 32], v: &Verdict, _: Instant) -> Option<Duration> {
        Some(match v {
            Verdict::Active(_, ttl) | Verdict::Inactive(ttl) => *ttl,
        })
    }
}

/// A compiled provider.
pub struct Introspection {
    name: Arc<str>,
    sources: Sources,
    client: Client,
    endpoint: Target,
    /// `Basic` credentials of the gateway at the authorization server.
    authorization: HeaderValue,
    /// Answers by token digest, shared with the previous snapshot's provider.
    cache: Arc<Cache<[u8; 32], Verdict>>,
    cache_ttl: Duration,
    negative_ttl: Duration,
    consumer_claim: Box<str>,
    /// Accepted audiences (none: any).
    audiences: Box<[Box<str>]>,
    /// Whether the last call failed (warned once per failure streak).
    failing: AtomicBool,
    success: Counter,
    failure: Counter,
}

impl Introspection {
    /// Compiles the provider; `previous` is the same definition's provider
    /// in the running snapshot, whose state is kept.
    pub fn compile(
        name: &str,
        cfg: &IntrospectionConfig,
        file: &str,
        previous: Option<&Introspection>,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let sources = Sources::compile(&cfg.from).map_err(|e| format!("from: {e}"))?;
        let endpoint = Target::parse(&cfg.endpoint).map_err(|e| format!("endpoint: {e}"))?;
        let client = Client::new(
            cfg.ca.as_deref(),
            file,
            endpoint.is_https(),
            cfg.timeout.0,
            MAX_ANSWER,
        )?;
        // RFC 6749 §2.3.1: both parts form-urlencoded before Basic encoding.
        let mut pair = String::new();
        form_encode(&cfg.client_id, &mut pair);
        pair.push(':');
        form_encode(&cfg.client_secret, &mut pair);
        let mut authorization = HeaderValue::try_from(format!("Basic {}", STANDARD.encode(pair)))
            .map_err(|e| format!("client_id/client_secret: {e}"))?;
        authorization.set_sensitive(true);
        let cache = match previous {
            Some(p) => p.cache.clone(),
            None => Arc::new(
                Cache::builder()
                    .max_capacity(cfg.cache_entries as u64)
                    .expire_after(ByVerdict)
                    .build(),
            ),
        };
        Ok(Self {
            name: name.into(),
            sources,
            client,
            endpoint,
            authorization,
            cache,
            cache_ttl: cfg.cache_ttl.0,
            negative_ttl: cfg.negative_cache_ttl.0,
            consumer_claim: cfg.consumer_claim.as_deref().unwrap_or("sub").into(),
            audiences: cfg.audiences.iter().map(|a| a.as_str().into()).collect(),
            failing: AtomicBool::new(false),
            success: metrics.key_fetch(name, "success"),
            failure: metrics.key_fetch(name, "failure"),
        })
    }

    /// Checks the request's credential.
    pub async fn authenticate<B>(&self, req: &Request<B>, c: &Consumers) -> Outcome {
        let token = match self.sources.credential(req) {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        self.check(&token, c).await
    }

    async fn check(&self, token: &str, consumers: &Consumers) -> Outcome {
        if token.len() > MAX_TOKEN {
            return Outcome::Rejected(Cow::Borrowed("token too large"));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        match self.cache.try_get_with(key, self.introspect(token)).await {
            Ok(Verdict::Active(claims, _)) if !self.audience_accepted(&claims) => {
                Outcome::Rejected(Cow::Borrowed("audience not accepted"))
            }
            Ok(Verdict::Active(claims, _)) => Outcome::Accepted(self.identity(claims, consumers)),
            Ok(Verdict::Inactive(_)) => Outcome::Rejected(Cow::Borrowed("token not active")),
            Err(_) => Outcome::Unavailable(Cow::Borrowed("token introspection unavailable")),
        }
    }

    /// One call to the endpoint; counted, and logged once per failure streak.
    async fn introspect(&self, token: &str) -> Result<Verdict, String> {
        let mut form = String::with_capacity(token.len() + 40);
        form.push_str("token=");
        form_encode(token, &mut form);
        form.push_str("&token_type_hint=access_token");
        let verdict = match self
            .client
            .post_form(&self.endpoint, &self.authorization, Bytes::from(form))
            .await
        {
            Ok(answer) => self.verdict(&answer.body),
            Err(e) => Err(e),
        };
        match &verdict {
            Ok(_) => {
                self.success.inc();
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(provider = %self.name, "token introspection answers again");
                }
            }
            Err(e) => {
                self.failure.inc();
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::warn!(provider = %self.name, error = %e, "token introspection failed");
                } else {
                    tracing::debug!(provider = %self.name, error = %e, "token introspection failed");
                }
            }
        }
        verdict
    }

    /// The verdict of an answer (RFC 7662 §2.2: a JSON object with a boolean `active`).
    fn verdict(&self, body: &[u8]) -> Result<Verdict, String> {
        let claims: Claims = serde_json::from_slice(body).map_err(|e| {
            format!(
                "{}: answer is not a JSON object: {e}",
                self.endpoint.as_str()
            )
        })?;
        match claims.get("active") {
            Some(serde_json::Value::Bool(true)) => {
                let ttl = match claims.get("exp").and_then(serde_json::Value::as_f64) {
                    Some(exp) => {
                        let now = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        // A past `exp` (clock skew): used now, not cached.
                        Duration::try_from_secs_f64(exp - now)
                            .unwrap_or(Duration::ZERO)
                            .min(self.cache_ttl)
                    }
                    None => self.cache_ttl,
                };
                Ok(Verdict::Active(Arc::new(claims), ttl))
            }
            Some(serde_json::Value::Bool(false)) => Ok(Verdict::Inactive(self.negative_ttl)),
            _ => Err(format!(
                "{}: answer has no boolean `active`",
                self.endpoint.as_str()
            )),
        }
    }

    /// Whether the answer's `aud` (a string or a list, RFC 7662 §2.2) holds
    /// one of the accepted audiences; always when none is configured.
    fn audience_accepted(&self, claims: &Claims) -> bool {
        if self.audiences.is_empty() {
            return true;
        }
        let accepted = |v: &serde_json::Value| {
            v.as_str()
                .is_some_and(|a| self.audiences.iter().any(|x| **x == *a))
        };
        match claims.get("aud") {
            Some(serde_json::Value::Array(items)) => items.iter().any(accepted),
            Some(v) => accepted(v),
            None => false,
        }
    }

    fn identity(&self, claims: Arc<Claims>, consumers: &Consumers) -> Identity {
        let text = |name: &str| match claims.get(name)? {
            serde_json::Value::String(s) => Some(Arc::<str>::from(s.as_str())),
            serde_json::Value::Number(n) => Some(Arc::from(n.to_string())),
            _ => None,
        };
        let named = text(&self.consumer_claim);
        let consumer = named
            .as_deref()
            .and_then(|s| consumers.by_subject(&self.name, s))
            .cloned();
        let subject = named.or_else(|| text("sub"));
        Identity {
            consumer,
            subject,
            claims: Some(claims),
            provider: self.name.clone(),
        }
    }

    /// Removes the credential.
    pub fn strip<B>(&self, req: &mut Request<B>) {
        self.sources.strip(req);
    }

    /// The challenge.
    pub fn challenge(&self, error: Option<&str>) -> HeaderValue {
        bearer_challenge(error)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An endpoint answering every connection with `body` (200), counting
    /// calls and keeping the last request.
    async fn endpoint(
        body: &'static str,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(String::new()));
        let (c, seen) = (calls.clone(), last.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let mut buf = vec![0u8; 8192];
                let n = s.read(&mut buf).await.unwrap_or(0);
                *seen.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}/introspect"), calls, last)
    }

    fn provider(url: &str, extra: &str) -> Introspection {
        let yaml =
            format!("endpoint: {url}\nclient_id: \"gate way\"\nclient_secret: \"s:e/c\"\n{extra}");
        let cfg: IntrospectionConfig = serde_saphyr::from_str(&yaml).unwrap();
        Introspection::compile("idp", &cfg, "portico.yaml", None, &Metrics::new()).unwrap()
    }

    #[tokio::test]
    async fn active_answers_are_cached_and_sent_right() {
        let (url, calls, last) =
            endpoint(r#"{"active":true,"sub":"alice","scope":"read write","client_id":"c1"}"#)
                .await;
        let p = provider(&url, "consumer_claim: client_id\n");
        for _ in 0..3 {
            let Outcome::Accepted(id) = p.check("tok en+/", &Consumers::default()).await else {
                panic!("refused")
            };
            assert_eq!(id.subject.as_deref(), Some("c1"));
            assert_eq!(id.claims.unwrap()["scope"], "read write");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let req = last.lock().unwrap().clone();
        assert!(req.starts_with("POST /introspect HTTP/1.1\r\n"), "{req}");
        // "gate way:s:e/c", each part form-encoded first.
        let basic = STANDARD.encode("gate+way:s%3Ae%2Fc");
        assert!(
            req.contains(&format!("authorization: Basic {basic}\r\n")),
            "{req}"
        );
        assert!(req.contains("content-type: application/x-www-form-urlencoded\r\n"));
        assert!(
            req.ends_with("\r\n\r\ntoken=tok+en%2B%2F&token_type_hint=access_token"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn an_answer_for_another_audience_is_refused() {
        let (url, _, _) = endpoint(r#"{"active":true,"sub":"a","aud":["billing","orders"]}"#).await;
        let c = Consumers::default();
        let req = |t: &str| {
            Request::builder()
                .header("authorization", format!("Bearer {t}"))
                .body(())
                .unwrap()
        };
        let accepts = provider(&url, "audiences: [orders]\n");
        assert!(matches!(
            accepts.authenticate(&req("t1"), &c).await,
            Outcome::Accepted(_)
        ));
        let refuses = provider(&url, "audiences: [inventory]\n");
        assert!(matches!(
            refuses.authenticate(&req("t2"), &c).await,
            Outcome::Rejected(why) if why == "audience not accepted"
        ));
        let (url, _, _) = endpoint(r#"{"active":true,"sub":"a"}"#).await;
        let no_aud = provider(&url, "audiences: [orders]\n");
        assert!(matches!(
            no_aud.authenticate(&req("t3"), &c).await,
            Outcome::Rejected(_)
        ));
        assert!(matches!(
            provider(&url, "").authenticate(&req("t4"), &c).await,
            Outcome::Accepted(_)
        ));
    }

    #[tokio::test]
    async fn inactive_answers_and_negative_cache() {
        let (url, calls, _) = endpoint(r#"{"active":false}"#).await;
        let p = provider(&url, "");
        for _ in 0..2 {
            assert!(matches!(
                p.check("t", &Consumers::default()).await,
                Outcome::Rejected(_)
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (url, calls, _) = endpoint(r#"{"active":false}"#).await;
        let p = provider(&url, "negative_cache_ttl: 0s\n");
        for _ in 0..2 {
            assert!(matches!(
                p.check("t", &Consumers::default()).await,
                Outcome::Rejected(_)
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bad_answers_and_a_dead_endpoint_are_unavailable_and_not_cached() {
        let (url, calls, _) = endpoint(r#"{"sub":"x"}"#).await;
        let p = provider(&url, "");
        for _ in 0..2 {
            assert!(matches!(
                p.check("t", &Consumers::default()).await,
                Outcome::Unavailable(_)
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        let p = provider(&dead, "timeout: 1s\n");
        assert!(matches!(
            p.check("t", &Consumers::default()).await,
            Outcome::Unavailable(_)
        ));
    }

    #[tokio::test]
    async fn concurrent_lookups_make_one_call() {
        let (url, calls, _) = endpoint(r#"{"active":true,"sub":"a"}"#).await;
        let p = Arc::new(provider(&url, ""));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let p = p.clone();
            set.spawn(async move { p.check("same", &Consumers::default()).await });
        }
        while let Some(o) = set.join_next().await {
            assert!(matches!(o.unwrap(), Outcome::Accepted(_)));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_past_exp_is_not_cached() {
        let (url, calls, _) = endpoint(r#"{"active":true,"sub":"a","exp":1000}"#).await;
        let p = provider(&url, "");
        for _ in 0..2 {
            assert!(matches!(
                p.check("t", &Consumers::default()).await,
                Outcome::Accepted(_)
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
