//! Portico: an API gateway and reverse proxy.
//!
//! The module list is the architecture; `docs/architecture.md` draws the
//! request path through it.

#[cfg(feature = "acme")]
pub mod acme;
pub mod admin;
pub mod auth;
pub mod config;
pub mod error;
pub mod filters;
pub mod gateway;
pub mod http1;
pub mod observe;
pub mod pipeline;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod server;
pub mod tls;
pub mod upstream;
