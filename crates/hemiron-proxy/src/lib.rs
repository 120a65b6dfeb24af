//! The deploy proxy's core, independent of the data plane: which version a request goes to
//! (`routing`), the signed cookie that keeps a session on its version (`sticky`), and the
//! statistics that judge a canary against its baseline (`stats`).

#![forbid(unsafe_code)]

pub mod routing;
pub mod stats;
pub mod sticky;
