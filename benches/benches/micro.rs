//! Micro-benchmarks of the hot paths: SMTP reply parsing (client), command framing (server),
//! DATA dot-stuffing, and event-log append + summary fold.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mailsim_benches::{reply_stream, sample_message};
use mailsim_events::clock::FixedClock;
use mailsim_events::{Event, EventLog, read_log};
use mailsim_mailbox::smtp::{Framer, Input};
use mailsim_mta::client::{ReplyReader, dot_stuff};
use std::hint::black_box;
use std::sync::Arc;

fn smtp_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("smtp");
    let stream = reply_stream(1000);
    g.throughput(Throughput::Elements(4001));
    g.bench_function("client_reply_parse_4001_replies", |b| {
        b.iter(|| {
            let mut reader = ReplyReader::default();
            let mut it = stream.iter();
            let mut n = 0;
            while let Ok(Some(r)) = reader.parse(&mut it) {
                n += r.code as usize;
            }
            black_box(n)
        })
    });
    let mut commands = Vec::new();
    for i in 0..1000 {
        commands.extend_from_slice(format!("MAIL FROM:<news@news.example.test> SIZE=5120\r\nRCPT TO:<user{i}@accept.test>\r\nDATA\r\n").as_bytes());
    }
    g.throughput(Throughput::Elements(3000));
    g.bench_function("server_frame_3000_commands", |b| {
        b.iter(|| {
            let mut f = Framer::new(512, 1 << 20);
            f.feed(&commands);
            let mut n = 0;
            while let Some(Input::Line(l)) = f.next_input() {
                n += l.len();
            }
            black_box(n)
        })
    });
    let body = sample_message(5 * 1024);
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("dot_stuff_5k", |b| {
        let mut out = Vec::with_capacity(8192);
        b.iter(|| {
            out.clear();
            dot_stuff(black_box(&body), &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn event_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_log");
    const N: u64 = 100_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("append_100k_and_close", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let log = EventLog::create(&dir.path().join("events.log"), Arc::new(FixedClock(0)))
                    .unwrap();
                let sink = log.sink();
                for i in 0..N {
                    sink.emit(Event::Delivered {
                        msg: i,
                        rcpt: format!("user{i}@accept.test"),
                        domain: "accept.test".into(),
                        mx: "mx1.accept.test".into(),
                        attempts: 1,
                    });
                }
                log.close().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.log");
    let log = EventLog::create(&path, Arc::new(FixedClock(0))).unwrap();
    let sink = log.sink();
    for i in 0..N {
        sink.emit(Event::Injected {
            msg: i,
            message_id: format!("<{i}@news.example.test>"),
            from: "news@news.example.test".into(),
            rcpt: format!("user{i}@accept.test"),
            domain: "accept.test".into(),
            size: 5120,
        });
        sink.emit(Event::Delivered {
            msg: i,
            rcpt: format!("user{i}@accept.test"),
            domain: "accept.test".into(),
            mx: "mx1.accept.test".into(),
            attempts: 1,
        });
    }
    log.close().unwrap();
    g.throughput(Throughput::Elements(2 * N));
    g.bench_function("read_and_fold_200k", |b| {
        b.iter(|| {
            let (records, _) = read_log(&path).unwrap();
            black_box(mailsim_reports::Summary::fold(&records).delivered)
        })
    });
    g.finish();
}

criterion_group!(benches, smtp_parsing, event_log);
criterion_main!(benches);
