//! Concurrency limits: slots per key, taken when a request passes and given
//! back when its response body is dropped.

/// The concurrency slots a request holds.
#[derive(Default)]
pub struct Held {}
