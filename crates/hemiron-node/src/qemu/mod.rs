//! Running QEMU: choosing the accelerator, building command lines, and managing processes.

pub mod accel;
pub mod cmdline;
pub mod devices;
pub mod limits;
pub mod process;
pub mod support;
