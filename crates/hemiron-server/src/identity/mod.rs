//! Identity: users, login sessions, API tokens, TOTP MFA.

pub mod auth;
pub mod cache;
pub mod crypto;
pub mod tokens;
pub mod users;
