//! Builds the guest image with debug logs, for working on the builder without the `hemiron`
//! binary: `cargo run -p hemiron-guest --example build_image -- OUT_DIR [--test-hooks]`.

use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter("hemiron_guest=debug")
        .init();
    let mut args = std::env::args().skip(1);
    let Some(out_dir) = args.next() else {
        eprintln!("usage: build_image OUT_DIR [--test-hooks]");
        return ExitCode::FAILURE;
    };
    let opts = hemiron_guest::BuildOptions {
        out_dir: out_dir.into(),
        cache_dir: hemiron_guest::default_cache_dir(),
        test_hooks: args.any(|a| a == "--test-hooks"),
    };
    match hemiron_guest::build(&opts) {
        Ok(image) => {
            eprintln!("built {}", image.disk.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            let mut msg = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
