//! Rewrites the path (strip a prefix, or a template over the matched params)
//! and the Host sent upstream.

use crate::proxy::body::ClientBody;
use http::uri::{PathAndQuery, Uri};
use http::{HeaderValue, Request};

use super::Flow;
use crate::config::RewriteConfig;
use crate::pipeline::RequestCtx;
use crate::routing::{Template, strip_prefix};

/// How the path changes.
enum PathRewrite {
    None,
    StripPrefix(Box<str>),
    Template(Template),
}

/// A compiled rewrite.
pub struct Rewrite {
    path: PathRewrite,
    host: Option<HeaderValue>,
}

impl Rewrite {
    /// Compiles a rewrite; `known_param` says whether a template name is
    /// captured by the route's path.
    pub fn compile(
        cfg: &RewriteConfig,
        known_param: impl Fn(&str) -> bool,
    ) -> Result<Self, String> {
        let path = match (&cfg.strip_prefix, &cfg.path) {
            (Some(_), Some(_)) => {
                return Err("rewrite takes `strip_prefix` or `path`, not both".into());
            }
            (Some(p), None) => PathRewrite::StripPrefix(p.trim_end_matches('/').into()),
            (None, Some(t)) => {
                if !t.starts_with('/') {
                    return Err(format!("rewrite path `{t}` must start with `/`"));
                }
                let tpl = Template::parse(t)?;
                if let Some(unknown) = tpl.names().find(|n| !known_param(n)) {
                    return Err(format!(
                        "rewrite path uses `{{{unknown}}}`, which the route's path does not capture"
                    ));
                }
                PathRewrite::Template(tpl)
            }
            (None, None) => PathRewrite::None,
        };
        let host = cfg
            .host
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| "rewrite host is not a valid header value".to_string())?;
        Ok(Self { path, host })
    }

    /// Applies the rewrite to the request.
    pub fn apply(&self, req: &mut Request<ClientBody>, ctx: &mut RequestCtx) -> Flow {
        if let Some(h) = &self.host {
            ctx.upstream_host = Some(h.clone());
        }
        let uri = req.uri();
        let new_path = match &self.path {
            PathRewrite::None => return Flow::Continue,
            PathRewrite::StripPrefix(p) => match strip_prefix(uri.path(), p) {
                Some(rest) => rest.to_owned(),
                None => return Flow::Continue,
            },
            PathRewrite::Template(t) => {
                let mut out = String::with_capacity(64);
                t.render(&mut out, |name| ctx.params.get(name));
                out
            }
        };
        let pq = match uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        };
        if let Ok(pq) = PathAndQuery::try_from(pq) {
            let mut parts = uri.clone().into_parts();
            parts.path_and_query = Some(pq);
            if let Ok(u) = Uri::from_parts(parts) {
                *req.uri_mut() = u;
            }
        }
        Flow::Continue
    }
}
