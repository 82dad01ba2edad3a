//! Where a credential is read from: a header (optionally after a scheme such
//! as `Bearer`), a cookie or a query parameter; and removing it before the
//! request goes upstream.

use std::borrow::Cow;

use http::Request;

use crate::config::TokenSource;

/// The places a provider reads its credential from, in order.
pub struct Sources {}

impl Sources {
    /// Compiles the list.
    pub fn compile(_cfg: &[TokenSource]) -> Result<Self, String> {
        Ok(Self {})
    }
    /// The first credential found.
    pub fn find<'r, B>(&self, _req: &'r Request<B>) -> Option<Cow<'r, str>> {
        None
    }
    /// Removes the credential from every place.
    pub fn strip<B>(&self, _req: &mut Request<B>) {}
}
