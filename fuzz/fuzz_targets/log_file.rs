//! Arbitrary bytes as an event log file, through every reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::log_file(data));
