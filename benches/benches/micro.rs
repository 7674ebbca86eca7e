//! Micro-benchmarks of the hot paths: SMTP reply parsing (client), command framing (server),
//! DATA dot-stuffing, event-log append + summary fold, DKIM signing (RSA-2048, Ed25519), MX
//! resolution with a warm cache, the retry scheduler with 1M queued messages, and the
//! classification of the refusals the MTA meets.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mailsim_benches::{reply_stream, sample_message};
use mailsim_events::clock::FixedClock;
use mailsim_events::{Event, EventLog, read_log};
use mailsim_smtp::ReplyReader;
use mailsim_smtp::client::dot_stuff;
use mailsim_smtp::server::{Framer, Input};
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
            lane: None,
            campaign: None,
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
            black_box(mailsim_summary::Summary::fold(&records).delivered)
        })
    });
    g.finish();
}

fn dkim_signing(c: &mut Criterion) {
    let mut g = c.benchmark_group("dkim");
    let body = sample_message(5 * 1024);
    g.throughput(Throughput::Elements(1));
    for (name, key) in [
        ("sign_rsa2048_5k", mailsim::keys::rsa_from_seed(7).unwrap()),
        (
            "sign_ed25519_5k",
            mailsim::keys::ed25519_from_seed(7).unwrap(),
        ),
    ] {
        let signer = mailsim_mta::dkim::Signer::from_pkcs8(
            "news.example.test",
            "s1",
            &key.pkcs8_der,
            key.ed25519,
        )
        .unwrap();
        g.bench_function(name, |b| {
            b.iter(|| black_box(signer.sign(&body, 1_767_225_600).unwrap().len()))
        });
    }
    g.finish();
}

fn mx_resolution(c: &mut Criterion) {
    use mailsim_mta::dns::{HickoryResolver, Resolver};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut zones = fake_dns::ZoneSet::new();
    zones.add_zone("accept.test");
    zones.add(
        "accept.test",
        fake_dns::RecordData::Mx {
            preference: 10,
            exchange: "mx1.accept.test".into(),
        },
    );
    zones.add(
        "mx1.accept.test",
        fake_dns::RecordData::A([127, 1, 0, 1].into()),
    );
    let server = rt
        .block_on(fake_dns::DnsServer::start(
            &zones,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let resolver = HickoryResolver::new(fake_dns::resolver_for(server.addr())).unwrap();
    rt.block_on(resolver.route("accept.test")).unwrap();
    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mx_route_warm_cache", |b| {
        b.iter(|| black_box(rt.block_on(resolver.route("accept.test")).unwrap().len()))
    });
    g.finish();
    rt.block_on(server.shutdown());
}

fn scheduler(c: &mut Criterion) {
    use mailsim_mta::queue::Queue;
    const N: u64 = 1_000_000;
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N));
    g.bench_function("insert_1m", |b| {
        b.iter_batched(
            || (0..N).map(mailsim_benches::queue_entry).collect::<Vec<_>>(),
            |entries| {
                let mut q = Queue::new();
                for e in entries {
                    q.insert(e);
                }
                black_box(q.len())
            },
            BatchSize::PerIteration,
        )
    });
    // 1M deferred messages come due at once: promote them and take each one.
    g.bench_function("promote_and_take_1m_due", |b| {
        b.iter_batched(
            || {
                let mut q = Queue::new();
                for id in 0..N {
                    q.insert(mailsim_benches::queue_entry(id));
                }
                for d in ["accept.test", "big.test", "flaky.test", "unknown.test"] {
                    while let Some(e) = q.take_ready(d, false) {
                        q.defer(e.id, 1, 1000 + e.id % 300);
                    }
                }
                q
            },
            |mut q| {
                q.promote_due(2000);
                let mut n = 0u64;
                for d in ["accept.test", "big.test", "flaky.test", "unknown.test"] {
                    while let Some(e) = q.take_ready(d, false) {
                        n += e.id & 1;
                    }
                }
                black_box(n)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The MTA's classification of the refusals it meets: a receiver's greylisting reply names
/// each recipient in turn (scale-million meets 3.27 M such refusals). The engine's memo, keyed
/// by the reply without its addresses, against the classifier itself on every reply (what each
/// reply cost while the memo was keyed by the whole text).
fn reply_classification(c: &mut Criterion) {
    use mailsim_smtp::Reply;
    const N: u64 = 10_000;
    let replies: Vec<Reply> = (0..N)
        .map(|i| {
            Reply::new(
                451,
                (4, 7, 1),
                format!(
                    "<user{i}@grey{}.test>: Recipient address rejected: Greylisted, try again in a few minutes",
                    i % 4
                ),
            )
        })
        .collect();
    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(N));
    g.bench_function("engine_memo_10k_greylisting_replies", |b| {
        b.iter(|| {
            for r in &replies {
                black_box(mailsim_mta::engine::classify(r, "RCPT"));
            }
        })
    });
    g.bench_function("classifier_10k_greylisting_replies", |b| {
        b.iter(|| {
            for r in &replies {
                black_box(mailsim_bounce::classify_reply(
                    r.code,
                    r.enhanced.as_deref(),
                    &r.text,
                    "RCPT",
                ));
            }
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    smtp_parsing,
    event_log,
    dkim_signing,
    mx_resolution,
    scheduler,
    reply_classification
);
criterion_main!(benches);
