//! Client IP allow and deny lists (CIDR), checked in the access phase.
//!
//! The address checked is the client's as resolved through
//! `forwarding.trusted_proxies`; an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
//! what a dual-stack socket reports) is checked as the IPv4 address it is.

use crate::config::IpRulesConfig;
use crate::error::{ErrorKind, ProxyError};
use crate::pipeline::RequestCtx;
use crate::proxy::headers::TrustedProxies;

/// Compiled IP rules.
pub struct IpRules {
    /// Empty: every address.
    allow: TrustedProxies,
    allow_all: bool,
    deny: TrustedProxies,
}

impl IpRules {
    /// Compiles the rules.
    pub fn compile(cfg: &IpRulesConfig) -> Result<Self, String> {
        let parse = |key: &str, list: &[String]| {
            TrustedProxies::parse(list.iter().map(|s| s.trim()))
                .map_err(|e| format!("`ip_rules.{key}`: {e}"))
        };
        Ok(Self {
            allow: parse("allow", &cfg.allow)?,
            allow_all: cfg.allow.is_empty(),
            deny: parse("deny", &cfg.deny)?,
        })
    }

    /// Whether `ip` may call: not denied, and allowed (deny wins).
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && (self.allow_all || self.allow.contains(ip))
    }

    /// 403 when the client address is refused.
    pub fn check(&self, ctx: &RequestCtx) -> Result<(), ProxyError> {
        if self.permits(ctx.client_ip) {
            Ok(())
        } else {
            Err(ProxyError::new(ErrorKind::Forbidden)
                .detail("the client address is not allowed")
                .context(format_args!("ip_rules refused {}", ctx.client_ip)))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> IpRules {
        IpRules::compile(&IpRulesConfig {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        })
        .unwrap()
    }

    #[test]
    fn deny_wins_and_empty_allow_is_everything() {
        let ip = |s: &str| s.parse().unwrap();
        let r = rules(&[], &["10.0.0.0/8", "2001:db8::1"]);
        assert!(r.permits(ip("192.0.2.1")));
        assert!(!r.permits(ip("10.1.2.3")));
        assert!(!r.permits(ip("::ffff:10.1.2.3")));
        assert!(!r.permits(ip("2001:db8::1")));
        assert!(r.permits(ip("2001:db8::2")));

        let r = rules(&["192.0.2.0/24", " 198.51.100.7 "], &["192.0.2.66"]);
        assert!(r.permits(ip("192.0.2.1")));
        assert!(r.permits(ip("::ffff:192.0.2.1")));
        assert!(r.permits(ip("198.51.100.7")));
        assert!(!r.permits(ip("198.51.100.8")));
        assert!(!r.permits(ip("192.0.2.66")));
        assert!(!r.permits(ip("::1")));
    }

    #[test]
    fn bad_entries_name_the_key_and_value() {
        let e = IpRules::compile(&IpRulesConfig {
            allow: vec![],
            deny: vec!["10.0.0.0/33".into()],
        })
        .err()
        .unwrap();
        assert_eq!(
            e,
            "`ip_rules.deny`: `10.0.0.0/33` is not an IP address or CIDR"
        );
    }
}
