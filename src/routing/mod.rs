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
pub use router::{BuildError, Params, RouteMatch, RouteRequest, RouteSpec, Router};
pub use template::Template;

#[cfg(test)]
mod tests;
