//! Arbitrary server bytes, in arbitrary chunks, into the client's reply reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailsim_smtp::ReplyReader;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = if rest.is_empty() { 0 } else { split as usize % rest.len() };
    let mut reader = ReplyReader::default();
    for chunk in [&rest[..cut], &rest[cut..]] {
        let mut it = chunk.iter();
        loop {
            match reader.parse(&mut it) {
                Ok(Some(reply)) => {
                    assert!((200..=599).contains(&reply.code));
                    if let Some(e) = &reply.enhanced {
                        assert_eq!(e.split('.').count(), 3, "{e}");
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    reader = ReplyReader::default();
                    break;
                }
            }
        }
    }
});
