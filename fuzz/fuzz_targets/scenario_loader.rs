//! Arbitrary text into the scenario loader: an error names a place, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::scenario_loader(data));
