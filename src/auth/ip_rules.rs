//! Client IP allow and deny lists (CIDR), checked in the access phase.

use crate::config::IpRulesConfig;
use crate::error::ProxyError;
use crate::pipeline::RequestCtx;

/// Compiled IP rules.
pub struct IpRules {}

impl IpRules {
    /// Compiles the rules.
    pub fn compile(_cfg: &IpRulesConfig) -> Result<Self, String> {
        Err("ip_rules: not built yet".into())
    }
    /// 403 when the client address is refused.
    pub fn check(&self, _ctx: &RequestCtx) -> Result<(), ProxyError> {
        Ok(())
    }
}
