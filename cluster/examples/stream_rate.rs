//! The event stream's own rates on a real log: `cargo run --release -p mailsim-cluster
//! --example stream_rate -- LOG` publishes the log to a fresh
//! nats-server's JetStream as one node would (the publisher: read, frame, publish, await the
//! acknowledgements), reads it back as `mailsim collect` does, and, as the peer measured in
//! the same run, reads and decodes the log file alone. Prints records, seconds and records/s
//! for each, and the publisher's cost per record against the file read.

use mailsim_cluster::collect::read_stream;
use mailsim_cluster::nats_server::NatsServer;
use mailsim_cluster::publish::Publisher;
use mailsim_cluster::{connect, events_stream};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let log = std::env::args_os()
        .nth(1)
        .ok_or("usage: stream_rate EVENTS_LOG")?;
    let log = std::path::PathBuf::from(log);
    let bytes = std::fs::metadata(&log)?.len();

    // The peer: the file read and decoded (what every reader of a log does).
    let t = Instant::now();
    let mut records = 0u64;
    for r in mailsim_events::LogReader::open(&log)? {
        r?;
        records += 1;
    }
    let read_s = t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats"), 0)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (publish_s, published, collect_s, collected) = rt.block_on(async {
        let js = async_nats::jetstream::new(connect(&nats.url(), "bench").await?);
        let stream = events_stream(&js, "bench").await?;
        let publisher = Publisher {
            js: js.clone(),
            stream,
            run: "bench".into(),
            node: "node".into(),
            log: log.clone(),
        };
        // Stop already said: publish what the log holds, then return.
        let (_tx, rx) = tokio::sync::watch::channel(true);
        let t = Instant::now();
        let p = publisher.run(rx).await?;
        let publish_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = read_stream(&js, "bench").await?;
        let collect_s = t.elapsed().as_secs_f64();
        Ok::<_, Box<dyn std::error::Error>>((publish_s, p.acknowledged, collect_s, back.len()))
    })?;
    assert_eq!(published, records);
    assert_eq!(collected as u64, records);
    let line = |what: &str, s: f64| {
        println!(
            "{what:<28} {records} records  {s:>7.3} s  {:>9.0} records/s  {:>6.1} MB/s",
            records as f64 / s,
            bytes as f64 / s / 1e6
        )
    };
    line("read and decode the file", read_s);
    line("publish (acknowledged)", publish_s);
    line("read back from the stream", collect_s);
    println!(
        "stream_rate: records={records} bytes={bytes} publish_us_per_record={:.2} read_us_per_record={:.2}",
        publish_s * 1e6 / records as f64,
        read_s * 1e6 / records as f64
    );
    Ok(())
}
