//! hemiron-pve
