//! Arbitrary messages into the bounce/complaint parser and classifier (DSN, ARF, free text).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for c in mailsim_bounce::classify_message(data) {
        assert!(!c.reason.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mailsim_bounce::classify_reply(550, Some("5.1.1"), text, "RCPT");
        let _ = mailsim_bounce::classify_reply(451, None, text, "DATA");
    }
});
