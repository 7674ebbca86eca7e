//! Arbitrary client bytes into the sans-IO IMAP session over a real (temporary) Maildir store:
//! it must never panic, and every response line must be tagged, untagged or a continuation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::imap_session(data));
