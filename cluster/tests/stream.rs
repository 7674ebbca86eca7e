//! The event stream against a real nats-server (Debian's package): every record of each
//! node's log reaches the stream once, through a publisher that is killed and restarted and
//! through a NATS outage, and `collect` merges the nodes' records into one log in order.

use mailsim_cluster::collect::{COORDINATOR, collect, read_stream};
use mailsim_cluster::nats_server::NatsServer;
use mailsim_cluster::publish::{Published, Publisher};
use mailsim_cluster::{connect, events_stream};
use mailsim_events::{Clock, Durability, Event, EventLog, EventSink, read_log};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

struct Ticks(AtomicU64);
impl Clock for Ticks {
    fn now_ms(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

fn node_log(dir: &Path, name: &str, start: u64) -> (EventLog, EventSink, PathBuf, Arc<Ticks>) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("events.log");
    let ticks = Arc::new(Ticks(AtomicU64::new(start)));
    let log = EventLog::create_with(&path, ticks.clone(), Durability::EveryBatch).unwrap();
    let sink = log.sink();
    (log, sink, path, ticks)
}

fn injected(i: u64) -> Event {
    Event::Injected {
        msg: i,
        message_id: format!("<{i}@test>"),
        from: "sender@example.net".into(),
        rcpt: format!("user{i}@example.com"),
        domain: "example.com".into(),
        size: 100 + i,
        campaign: None,
        lane: None,
    }
}

fn started(mode: &str) -> Event {
    Event::RunStarted {
        scenario: "stream-test".into(),
        seed: 1,
        mode: mode.into(),
        dmarc_records: Default::default(),
        spf_records: Default::default(),
        profiles: Default::default(),
    }
}

async fn publisher(url: &str, run: &str, node: &str, log: &Path) -> Publisher {
    // Acknowledgements waited for 1 s (5 s by default): an outage of 1.5 s fails publishes.
    let client = connect(url, node).await.unwrap();
    let js = async_nats::jetstream::context::ContextBuilder::new()
        .timeout(Duration::from_secs(1))
        .build(client);
    let stream = events_stream(&js, run).await.unwrap();
    Publisher {
        js,
        stream,
        run: run.into(),
        node: node.into(),
        log: log.to_path_buf(),
    }
}

/// Records per subject the stream holds.
async fn stream_counts(url: &str, run: &str) -> BTreeMap<String, u64> {
    let js = async_nats::jetstream::new(connect(url, "counter").await.unwrap());
    let mut out = BTreeMap::new();
    for r in read_stream(&js, run).await.unwrap() {
        *out.entry(r.node).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_through_a_killed_publisher_and_a_nats_outage() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("nats"), 0).expect("nats-server");
    let url = nats.url();
    let run = "t1";

    // Node a: a publisher killed mid-way and started again.
    let (log_a, sink_a, path_a, _) = node_log(dir.path(), "a", 1_000);
    sink_a.emit(started("fleet"));
    for i in 0..3000 {
        sink_a.emit(injected(i));
    }
    sink_a.flush().unwrap();
    let (stop_tx, stop_rx) = watch::channel(false);
    let first = tokio::spawn(
        publisher(&url, run, "a", &path_a)
            .await
            .run(stop_rx.clone()),
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    first.abort();
    let _ = first.await;
    for i in 3000..5000 {
        sink_a.emit(injected(i));
    }
    let second = tokio::spawn(publisher(&url, run, "a", &path_a).await.run(stop_rx));

    // Node b: publishing while NATS goes away for a second and comes back.
    let (log_b, sink_b, path_b, _) = node_log(dir.path(), "b", 1_500);
    sink_b.emit(started("mta"));
    let (stop_b_tx, stop_b_rx) = watch::channel(false);
    let b = tokio::spawn(publisher(&url, run, "b", &path_b).await.run(stop_b_rx));
    for i in 0..1000 {
        sink_b.emit(injected(10_000 + i));
    }
    sink_b.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    nats.kill();
    for i in 1000..2000 {
        sink_b.emit(injected(10_000 + i));
    }
    sink_b.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart().unwrap();
    for i in 2000..2500 {
        sink_b.emit(injected(10_000 + i));
    }

    // The coordinator's frame.
    let (log_c, sink_c, path_c, ticks_c) = node_log(dir.path(), COORDINATOR, 900);
    sink_c.emit(started("cluster"));
    sink_c.flush().unwrap();
    // The coordinator finishes after every node's last record.
    ticks_c.0.store(1_000_000, Ordering::Relaxed);
    sink_c.emit(Event::RunFinished {
        reason: "done".into(),
    });
    drop(sink_c);
    log_c.close().unwrap();
    let (stop_c_tx, stop_c_rx) = watch::channel(false);
    let c = tokio::spawn(
        publisher(&url, run, COORDINATOR, &path_c)
            .await
            .run(stop_c_rx),
    );

    drop((sink_a, sink_b));
    let (written_a, written_b) = (log_a.close().unwrap(), log_b.close().unwrap());
    for tx in [&stop_tx, &stop_b_tx, &stop_c_tx] {
        tx.send(true).unwrap();
    }
    let within = Duration::from_secs(60);
    let a: Published = tokio::time::timeout(within, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b: Published = tokio::time::timeout(within, b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(within, c)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((written_a, written_b), (5001, 2501));
    assert!(
        a.found > 0,
        "the second publisher found records in the stream: {a:?}"
    );
    assert!(
        a.duplicates > 0,
        "and sent again the last ones it may have lost: {a:?}"
    );
    assert_eq!(a.next_seq, 5001);
    assert_eq!(b.next_seq, 2501);
    assert!(b.retries > 0, "the outage was noticed: {b:?}");

    // What the stream holds, counted by reading it: each node's log, once.
    let counts = stream_counts(&url, run).await;
    let local = |p: &Path| read_log(p).unwrap().0.len() as u64;
    assert_eq!(counts["a"], local(&path_a));
    assert_eq!(counts["b"], local(&path_b));
    assert_eq!(counts[COORDINATOR], 2);

    // Collected: one start and one finish (the coordinator's), every other record of every
    // node, in time order, each the same event as in its node's log.
    let out = dir.path().join("collected");
    let js = async_nats::jetstream::new(connect(&url, "collector").await.unwrap());
    let collected = collect(&js, run, &out).await.unwrap();
    assert_eq!(collected.duplicates, 0);
    assert_eq!(collected.node_lifecycle, 2);
    let (records, torn) = read_log(&out.join("events.log")).unwrap();
    assert!(!torn);
    assert_eq!(records.len() as u64, 5000 + 2500 + 2);
    assert!(matches!(records[0].event, Event::RunStarted { ref mode, .. } if mode == "cluster"));
    assert!(matches!(
        records.last().unwrap().event,
        Event::RunFinished { .. }
    ));
    assert!(
        records
            .windows(2)
            .all(|w| w[0].ts <= w[1].ts && w[1].seq == w[0].seq + 1)
    );
    let mut expected: Vec<(u64, String)> = Vec::new();
    for p in [&path_a, &path_b] {
        for r in read_log(p).unwrap().0 {
            if !matches!(r.event, Event::RunStarted { .. }) {
                expected.push((r.ts, serde_json::to_string(&r.event).unwrap()));
            }
        }
    }
    expected.sort();
    let mut got: Vec<(u64, String)> = records[1..records.len() - 1]
        .iter()
        .map(|r| (r.ts, serde_json::to_string(&r.event).unwrap()))
        .collect();
    got.sort();
    assert_eq!(got, expected);

    // A second collect into the same place is refused, naming the file.
    let again = collect(&js, run, &out).await.unwrap_err().to_string();
    assert!(
        again.contains("events.log") && again.contains("already holds a run"),
        "{again}"
    );
    // An unknown run is named.
    let none = collect(&js, "nosuchrun", &dir.path().join("x"))
        .await
        .unwrap_err()
        .to_string();
    assert!(none.contains("nosuchrun"), "{none}");
}

/// A node started again under the same run and node name with a new directory numbers its
/// records from 0 again: they must not be taken for the records already in the stream (and
/// dropped as duplicates by their message ids). Its publisher refuses, naming the node; the
/// same log started again resumes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_log_under_a_published_node_name_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("nats"), 0).expect("nats-server");
    let url = nats.url();
    let run = "t3";
    let within = Duration::from_secs(60);
    let publish = |path: PathBuf| {
        let url = url.clone();
        async move {
            let (stop, stop_rx) = watch::channel(true);
            let done =
                tokio::time::timeout(within, publisher(&url, run, "m", &path).await.run(stop_rx))
                    .await
                    .unwrap();
            drop(stop);
            done
        }
    };
    let (log, sink, first, _) = node_log(dir.path(), "first", 1_000);
    for i in 0..300 {
        sink.emit(injected(i));
    }
    drop(sink);
    log.close().unwrap();
    assert_eq!(publish(first.clone()).await.unwrap().next_seq, 300);

    let (log, sink, second, _) = node_log(dir.path(), "second", 5_000);
    for i in 0..100 {
        sink.emit(injected(1_000 + i));
    }
    drop(sink);
    log.close().unwrap();
    let refused = publish(second).await.unwrap_err().to_string();
    assert!(
        refused.contains("second/events.log")
            && refused.contains("records 0 to 299 of node \"m\"")
            && refused.contains("another --node name"),
        "{refused}"
    );
    // A new log longer than what was published: its record 299 is another.
    let (log, sink, third, _) = node_log(dir.path(), "third", 9_000);
    for i in 0..400 {
        sink.emit(injected(2_000 + i));
    }
    drop(sink);
    log.close().unwrap();
    let refused = publish(third).await.unwrap_err().to_string();
    assert!(
        refused.contains("record 299 is not the one published"),
        "{refused}"
    );
    // The first log again: it is the one published, and resumes.
    let again = publish(first).await.unwrap();
    assert_eq!((again.found, again.next_seq), (300, 300));
    assert_eq!(stream_counts(&url, run).await["m"], 300);
}
