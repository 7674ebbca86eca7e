//! Arbitrary server bytes, in arbitrary chunks, into the client's reply reader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::smtp_reply_parser(data));
