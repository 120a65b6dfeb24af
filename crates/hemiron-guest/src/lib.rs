//! hemiron-guest
