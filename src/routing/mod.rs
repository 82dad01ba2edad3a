//! Request routing: compiled route matchers, path templates and prefix helpers.
//!
//! [`Router`] is built once per configuration and answers, per request, which
//! route applies (see the `router` module docs for matching and priority rules).
//! [`Template`] renders rewrite paths and redirect locations.

mod matcher;
pub mod normalize;
mod router;
mod template;

pub use matcher::strip_prefix;

use std::borrow::Cow;

/// A host name as routes and certificates are keyed: lowercase, without the
/// final dot of a fully qualified name. Borrowed when already so (most are).
pub fn host_key(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}
pub use router::{BuildError, Params, RouteMatch, RouteRequest, RouteSpec, Router};
pub use template::Template;

#[cfg(test)]
mod tests;
