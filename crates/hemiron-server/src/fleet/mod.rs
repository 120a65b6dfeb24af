//! The fleet: clusters and their nodes and templates, placement, VPSes, and the reconciler
//! that compares the store with what the clusters report.

pub mod clusters;
pub mod placement;
pub mod reconciler;
pub mod vps;
