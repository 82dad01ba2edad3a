//! Authorization of the identified caller: consumers, groups, scopes and
//! claim rules. 401 when nobody is identified, 403 when the caller lacks the right.

use http::HeaderValue;

use crate::config::AuthorizeConfig;
use crate::error::ProxyError;
use crate::pipeline::RequestCtx;

/// Compiled rules.
pub struct Authorize {}

impl Authorize {
    /// Compiles the rules; `challenges` are the route's `WWW-Authenticate`
    /// values, sent with a 401.
    pub fn compile(_cfg: &AuthorizeConfig, _challenges: Vec<HeaderValue>) -> Result<Self, String> {
        Err("authorize: not built yet".into())
    }
    /// Checks the caller.
    pub fn check(&self, _ctx: &RequestCtx) -> Result<(), ProxyError> {
        Ok(())
    }
}
