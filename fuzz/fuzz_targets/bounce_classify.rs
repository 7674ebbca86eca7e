//! Arbitrary messages into the bounce/complaint parser and classifier (DSN, ARF, free text).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::bounce_classify(data));
