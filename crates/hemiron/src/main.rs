//! The `hemiron` binary: parses the command line and starts the chosen role.
fn main() {}
