//! Configuration: the schema, loading with `${ENV}` interpolation, and validation
//! with `file:line:column` errors.

pub mod auth;
pub mod load;
pub mod rate_limit;
pub mod schema;
pub mod units;
pub mod validate;

pub use load::{ConfigError, ConfigErrors, load_file, load_str};
pub use schema::*;
