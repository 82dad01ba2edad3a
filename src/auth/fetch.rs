//! A small HTTP client for the auth backends (JWKS, OIDC discovery,
//! introspection): http or https, bounded answer size, a timeout.
