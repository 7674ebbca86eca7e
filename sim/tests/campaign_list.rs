//! A scenario's campaign from a subscriber list (`[campaign] list = "subscribers.csv"`): the
//! receiving servers get exactly the list's addresses, each greeted by the name in its row.

mod common;

use mailsim::scenario::Scenario;

const SCENARIO: &str = "name = \"listed\"\nseed = 4\nmode = \"virtual\"\n\
    [[sender]]\ndomain = \"news.example.test\"\n\
    [[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"b.test\"\n\
    [campaign]\nlist = \"subscribers.csv\"\nsize_bytes = 800\n";

#[test]
fn the_campaign_goes_to_the_list_and_greets_each_subscriber_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("subscribers.csv"),
        "email,name\nAnn@a.test,Ann\nbob@b.test,\"Bob, Jr.\"\ncy@a.test,Cy\n",
    )
    .unwrap();
    let path = dir.path().join("listed.toml");
    std::fs::write(&path, SCENARIO).unwrap();
    let scenario = Scenario::load(&path).unwrap();
    let summary = common::run(&scenario, &dir.path().join("run"));
    assert_eq!(summary.delivered, 3);
    let mut got: Vec<(String, String)> = common::maildir_files(&dir.path().join("run/mailboxes"))
        .iter()
        .filter_map(|p| {
            let bytes = std::fs::read(p).unwrap();
            let m = mail_parser::MessageParser::default().parse(&bytes)?;
            let to = m.to()?.first()?.address()?.to_string();
            let greeting = m.body_text(0)?.lines().next()?.to_string();
            Some((to, greeting))
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("ann@a.test".to_string(), "Hello Ann,".to_string()),
            ("bob@b.test".to_string(), "Hello Bob, Jr.,".to_string()),
            ("cy@a.test".to_string(), "Hello Cy,".to_string()),
        ]
    );
}

#[test]
fn a_list_with_an_address_outside_the_scenario_is_refused_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("subscribers.csv"),
        "email,name\nann@a.test,Ann\neve@elsewhere.test,Eve\n",
    )
    .unwrap();
    let path = dir.path().join("listed.toml");
    std::fs::write(&path, SCENARIO).unwrap();
    let e = Scenario::load(&path).unwrap_err().to_string();
    assert!(e.contains("listed.toml"), "{e}");
    assert!(e.contains("campaign.list"), "{e}");
    assert!(e.contains("eve@elsewhere.test"), "{e}");
    std::fs::write(
        dir.path().join("subscribers.csv"),
        "email\nnot-an-address\n",
    )
    .unwrap();
    let e = Scenario::load(&path).unwrap_err().to_string();
    assert!(e.contains("subscribers.csv: line 2: column email"), "{e}");
}
