//! The fleet: clusters and their nodes and templates, placement, VPSes, and the reconciler
//! that compares the store with what the clusters report; node drains and rebalancing.

pub mod clusters;
pub mod hosts;
pub mod placement;
pub mod rebalance;
pub mod reconciler;
pub mod vps;
