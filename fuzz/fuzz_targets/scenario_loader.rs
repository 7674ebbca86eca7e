//! Arbitrary text into the scenario loader: an error names a place, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsim::scenario::Scenario;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Scenario::parse(text, Path::new("fuzz.toml")) {
        assert!(e.to_string().starts_with("fuzz.toml"), "{e}");
    }
});
