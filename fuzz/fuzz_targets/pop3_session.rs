//! Arbitrary client bytes into the sans-IO POP3 session over a temporary Maildir store: it must
//! never panic, and every response begins +OK, -ERR, "+ " or is part of a multi-line answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::pop3_session(data));
