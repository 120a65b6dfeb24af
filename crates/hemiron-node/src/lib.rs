//! hemiron-node
