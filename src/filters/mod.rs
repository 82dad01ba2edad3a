//! Request filters: one file per kind, compiled once per route, dispatched
//! through one enum. **The order of phases is fixed here**: a route's filters
//! are sorted by [`Phase`] when the snapshot is compiled, and run in that order.

pub mod rewrite;

use http::{Request, Response};

use crate::error::ProxyError;
use crate::pipeline::RequestCtx;
use crate::proxy::body::{ClientBody, ResponseBody};

/// The phases of the request path, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// IP rules, CORS preflight.
    Access,
    /// Authentication: who is calling.
    Identify,
    /// Authorization: may they.
    Authorize,
    /// Rate limits.
    Limit,
    /// Header, path and body changes.
    Transform,
    /// Cache lookup (a hit answers here).
    Cache,
}

/// What a filter decided.
pub enum Flow {
    /// Go on to the next filter, then the handler.
    Continue,
    /// Answer now with this response (it is still logged).
    Respond(Box<Response<ResponseBody>>),
}

/// A compiled filter.
pub enum Filter {
    /// Client IP allow and deny lists.
    IpRules(crate::auth::ip_rules::IpRules),
    /// Authentication: sets [`RequestCtx::identity`].
    Auth(crate::auth::AuthFilter),
    /// Authorization of the identified caller.
    Authorize(crate::auth::authorize::Authorize),
    /// Rate and concurrency limits.
    RateLimit(crate::ratelimit::RateLimitFilter),
    /// Path and Host rewrite before forwarding.
    Rewrite(rewrite::Rewrite),
}

impl Filter {
    /// The phase this filter runs in.
    pub fn phase(&self) -> Phase {
        match self {
            Self::IpRules(_) => Phase::Access,
            Self::Auth(_) => Phase::Identify,
            Self::Authorize(_) => Phase::Authorize,
            Self::RateLimit(f) => f.phase(),
            Self::Rewrite(_) => Phase::Transform,
        }
    }

    /// Runs the filter on a request. An error is the answer (401, 403, 429...).
    pub async fn on_request(
        &self,
        req: &mut Request<ClientBody>,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, ProxyError> {
        match self {
            Self::IpRules(f) => f.check(ctx).map(|()| Flow::Continue),
            // Boxed: these futures can wait on remote services and are large;
            // unboxed, they would grow every request's future, also on
            // routes without them.
            Self::Auth(f) => Box::pin(f.apply(req, ctx)).await.map(|()| Flow::Continue),
            Self::Authorize(f) => f.check(ctx).map(|()| Flow::Continue),
            Self::RateLimit(f) => Box::pin(f.apply(req, ctx)).await.map(|()| Flow::Continue),
            Self::Rewrite(f) => Ok(f.apply(req, ctx)),
        }
    }
}

/// Sorts a route's filters into phase order (stable: config order within a phase).
pub fn order(filters: &mut [Filter]) {
    filters.sort_by_key(Filter::phase);
}
