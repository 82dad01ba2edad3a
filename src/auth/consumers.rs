//! Consumers: named identities with their credentials, indexed for the
//! providers (API key digests, Basic user names, token subjects).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ConfigError, ConsumerConfig};

/// A consumer as the request path sees it.
#[derive(Debug)]
pub struct Consumer {
    /// Its name.
    pub name: Arc<str>,
    /// Its groups.
    pub groups: Box<[Arc<str>]>,
    /// Its metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Every consumer, indexed by credential.
#[derive(Default)]
pub struct Consumers {}

impl Consumers {
    /// Indexes the consumers; errors carry their location.
    pub fn compile(_cfg: &[ConsumerConfig], _file: &str) -> Result<Self, Vec<ConfigError>> {
        Ok(Self {})
    }
    /// The consumer a token subject names.
    pub fn by_subject(&self, _subject: &str) -> Option<&Arc<Consumer>> {
        None
    }
}
