//! Hemiron control plane (`hemiron server`): the multi-tenant API over clusters of nodes.
//!
//! Layers, top to bottom: `api` (axum handlers, OpenAPI, problem+json: no business rules) →
//! domain services (`identity`, `tenancy`, with `authz` deciding every access) → `store`
//! (sqlx on SQLite or PostgreSQL: the only place with SQL).

#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod backups;
pub mod error;
pub mod fleet;
pub mod identity;
pub mod jobs;
pub mod server;
pub mod service;
pub mod store;
pub mod tenancy;

/// An error and its sources on one line (`a: b: c`), for logs and the CLI.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
