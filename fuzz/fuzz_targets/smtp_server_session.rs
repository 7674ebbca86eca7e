//! Arbitrary client bytes into the inbound SMTP session (framer, command parser, DATA,
//! limits): it must never panic and must end when the client goes away.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mailsim_fuzz::smtp_server_session(data));
