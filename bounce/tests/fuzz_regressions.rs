//! Inputs the fuzzer found (tests/data/fuzz): each must be classified without a panic.

#[test]
fn fuzzer_findings_no_longer_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let _ = mailsim_bounce::classify_message(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0);
}
