//! Forwarding a request to an upstream: bodies, header rules, upgrades.

pub mod body;
pub mod forward;
pub mod headers;
pub mod retry;
