//! The deploy proxy: runs several versions of an app at once and moves traffic between them
//! safely.
//!
//! - `config`: the configuration file; `rollout`: rollout states and their moves;
//!   `routing`: which version a request goes to; `sticky`: the signed version cookie;
//!   `stats`: the canary-vs-baseline statistics.
//! - `engine`: turns configuration and state into routing tables and publishes them with one
//!   atomic swap; `runtime`: what the data plane reads; `dataplane`: the request path;
//!   `health`: active checks; `admin`: the admin API; `server`: listeners and lifecycle.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod engine;
pub mod h1;
pub mod health;
pub mod metrics;
pub mod rollout;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod sticky;
pub mod tls;

pub use server::{run, start, ProxyError, ProxyOptions, Running};
