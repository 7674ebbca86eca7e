//! The `mailsim` command line.

use anyhow::Context;
use clap::{Parser, Subcommand};
use mailsim::cli::{EXIT_ERROR, EXIT_NEGATIVE, error_chain, remove_empty_dirs};
use mailsim::runner::{self, RunOptions};
use mailsim::scenario::Scenario;
use mailsim::world::World;
use mailsim_events::{Clock, SystemClock, read_log};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};

/// mimalloc rather than the system allocator: a virtual run of a million messages makes and
/// frees tens of millions of short strings and buffers, and glibc's allocator spent a fifth of
/// such a run in malloc and free (BENCHMARKS.md, issue 23).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailsim",
    version,
    about = "A deliverability testbed: real MTA, synthetic DNS, simulated recipients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `mta` variant (its many flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a scenario and write its event log and summary.json.
    Run {
        scenario: PathBuf,
        /// Run directory (default: runs/<name>-<unix ms>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Never draw a progress bar.
        #[arg(long)]
        quiet: bool,
        /// Measure another MTA: submit the campaign to it (smtp://HOST:PORT) instead of
        /// mailsim's own; it must route every scenario domain to the fleet (--fleet-port).
        #[arg(long)]
        mta: Option<String>,
        /// The fleet's SMTP port when measuring another MTA (0: any, printed at start).
        #[arg(long, default_value_t = 0)]
        fleet_port: u16,
        /// The DNS server's port when measuring another MTA (0: any).
        #[arg(long, default_value_t = 0)]
        dns_port: u16,
        /// Submission connections to the other MTA.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Coordinate a multi-node run on this NATS server (nats://HOST:PORT): the nodes
        /// (`mailsim node`) take the scenario from it, the run is collected from its stream.
        #[arg(long, requires = "run_id", conflicts_with = "mta")]
        nats: Option<String>,
        /// The multi-node run's id (one NATS subject token: letters, digits, '-', '_').
        #[arg(long, requires = "nats")]
        run_id: Option<String>,
        /// Fleet nodes of a multi-node run (shards 0/N .. N-1/N).
        #[arg(long, default_value_t = 1)]
        fleet_nodes: u32,
        /// Each fleet node's own network, in shard order (A.B.0.0/16,...): its domains' MX
        /// hosts listen there and every node's DNS says so (default: the scenario's 127.1.x.y).
        #[arg(long, requires = "nats")]
        fleet_nets: Option<mailsim::cluster::FleetNets>,
        /// Injector nodes of a multi-node run (`mailsim node --role injector --shard i`), each
        /// submitting its share of the campaign (0: the coordinator submits it).
        #[arg(long, default_value_t = 0, requires = "nats")]
        injectors: u32,
        /// How long a multi-node run waits for every node to say ready, in seconds.
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
    /// One node of a multi-node run: takes the scenario from the coordinator (`mailsim run
    /// SCENARIO --nats URL --run-id ID`) through NATS, serves its part, publishes its event
    /// log, and stops when the coordinator says so.
    Node {
        /// The NATS server (nats://HOST:PORT).
        #[arg(long)]
        nats: String,
        /// The run id the coordinator was given.
        #[arg(long)]
        run: String,
        #[arg(long, value_enum)]
        role: mailsim::cluster::Role,
        /// The fleet or injector node's index (0 .. the run's fleet or injector nodes - 1).
        #[arg(long)]
        shard: Option<u32>,
        /// The MTA node's submission address (port 0: a free one); give an address the
        /// coordinator or the injectors can reach when they run on other machines.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// The node's directory: its event log, mailboxes or spool.
        #[arg(long)]
        out: PathBuf,
        /// The node's name in the run (default fleet-<shard> or mta).
        #[arg(long)]
        name: Option<String>,
        /// How long to wait for the coordinator's scenario, in seconds.
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
    },
    /// Print a run's event log as JSON lines. A log damaged in the middle is refused with the
    /// place (exit 2) unless --salvage.
    Events {
        run_dir: PathBuf,
        /// Skip damaged stretches (each reported on stderr) and print every valid record.
        #[arg(long)]
        salvage: bool,
    },
    /// Rewrite a damaged event log keeping every valid record (the original is kept as
    /// events.log.damaged).
    Repair { run_dir: PathBuf },
    /// Rebuild the summary (and with --queue, the queue state) from a run's event log alone.
    Replay {
        run_dir: PathBuf,
        /// Print the messages still queued, one JSON object per line, after the summary.
        #[arg(long)]
        queue: bool,
    },
    /// Write a deliverability report of a run: report.html (charts, tables, what to fix),
    /// domains.csv, reasons.csv, replies.csv, events.parquet, SVG charts, and DMARC aggregate
    /// reports (dmarc/). With --compare, two runs side by side.
    Report(mailsim::cli::ReportArgs),
    /// Show per-domain outcome differences between two runs.
    Diff { run_a: PathBuf, run_b: PathBuf },
    /// Bounce and complaint processing.
    Bounce {
        #[command(subcommand)]
        command: BounceCommand,
    },
    /// Run the MTA as a daemon: SMTP submission in, delivery through the given DNS server.
    /// A restart on the same spool queues again everything not final (crash safe).
    Mta {
        /// Spool directory (segments, events.log, suppression.log).
        #[arg(long)]
        spool: PathBuf,
        /// The DNS server to resolve MX through (fake-dns, as `mailsim fleet` prints it).
        #[arg(long)]
        dns: SocketAddr,
        /// Where to take mail by SMTP.
        #[arg(long, default_value = "127.0.0.1:2525")]
        submission: SocketAddr,
        /// The port remote SMTP servers listen on (`mailsim fleet` prints it).
        #[arg(long, default_value_t = 25)]
        remote_port: u16,
        #[arg(long, value_parser = host_name_arg, default_value = "mta.mailsim.test")]
        hostname: String,
        /// Source address of outbound connections.
        #[arg(long, default_value = "127.0.0.1")]
        ip: std::net::IpAddr,
        #[arg(long, default_value_t = 300)]
        retry_interval_s_min: u64,
        #[arg(long, default_value_t = 4000)]
        retry_interval_s_max: u64,
        #[arg(long, default_value_t = 432_000)]
        lifetime_s: u64,
        #[arg(long, default_value_t = 8)]
        conns_per_domain_max: usize,
        /// How long a destination is held when every connection to it fails (or after a
        /// rate-limit reply), in seconds.
        #[arg(long, default_value_t = 60)]
        destination_backoff_s: u64,
        /// A shaping file: per-destination limits and reply-driven actions (see the README).
        #[arg(long)]
        shaping: Option<PathBuf>,
        /// STARTTLS: opportunistic (any certificate; in clear when not offered), required, off.
        #[arg(long, default_value = "opportunistic")]
        tls: String,
        /// Check servers' certificates against these (PEM; a fleet's ca.pem). They are
        /// checked for MTA-STS and reported in `tls` events either way.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// DKIM-sign mail from DOMAIN with the RSA key (PKCS#8 or PKCS#1 PEM):
        /// DOMAIN:SELECTOR:KEY_FILE (repeatable).
        #[arg(long)]
        dkim: Vec<String>,
        /// The HTTPS port of destinations' `mta-sts.<domain>` servers (`mailsim fleet` prints
        /// its `sts_port`).
        #[arg(long, default_value_t = 443)]
        sts_port: u16,
        /// Serve the HTTP injection API (POST /api/inject/v1) here; needs --http-tokens.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// The API's bearer tokens: one per line (at least 16 characters), `#` comments.
        #[arg(long)]
        http_tokens: Option<PathBuf>,
        /// The largest API request body taken, in bytes (larger: 413).
        #[arg(long, default_value_t = mailsim_platform::http::BODY_MAX_DEFAULT)]
        http_body_max: usize,
        /// The base of the tracking and one-click unsubscribe URLs put in mail (default:
        /// http:// and the --http address; give an https:// one behind a TLS proxy).
        #[arg(long, requires = "http")]
        http_public_url: Option<String>,
        /// Serve the same (API, tracking, unsubscribe) over HTTPS here, and put https:// URLs
        /// in mail (RFC 8058 asks for an HTTPS one-click URI); needs --http.
        #[arg(long, requires = "http")]
        https: Option<SocketAddr>,
        /// The HTTPS certificate chain (PEM; default: a self-signed one made in the spool).
        #[arg(long, requires = "https", requires = "https_key")]
        https_cert: Option<PathBuf>,
        /// The HTTPS certificate's private key (PEM).
        #[arg(long, requires = "https_cert")]
        https_key: Option<PathBuf>,
        /// Transactional and bulk mail in separate lanes: transactional first at every
        /// destination, with connections and an injector of its own. A message's lane: the
        /// API's `lane` field, an `X-Mailsim-Lane` header, or the port it came in by.
        #[arg(long)]
        lanes: bool,
        /// Connections per destination for transactional mail only (with --lanes).
        #[arg(long, default_value_t = 2, requires = "lanes")]
        transactional_conns: usize,
        /// A second SMTP submission port whose mail is transactional (with --lanes).
        #[arg(long, requires = "lanes")]
        submission_transactional: Option<SocketAddr>,
        /// Serve the sender's MX here: what comes back to the senders' domains. DSNs and ARF
        /// complaints put addresses on the suppression list; a mail to unsubscribe@ is an
        /// RFC 2369 unsubscribe (with --http, bulk mail offers it in List-Unsubscribe).
        #[arg(long)]
        mx: Option<SocketAddr>,
        #[command(flatten)]
        publish: mailsim::cluster::PublishArgs,
    },
    /// Run a scenario's DNS and fleet alone (live), until interrupted; prints the DNS address
    /// and the fleet's SMTP port on a ready line.
    Fleet {
        scenario: PathBuf,
        /// Directory for the fleet's event log and mailboxes.
        #[arg(long)]
        out: PathBuf,
        /// The port every MX host listens on (0: any).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// The DNS server's port (0: any).
        #[arg(long, default_value_t = 0)]
        dns_port: u16,
        /// Leave the senders' own MX hosts unserved (their routes are still printed), so that
        /// `mailsim mta --mx <route IP>:<port>` takes the bounces, complaints and mailto
        /// unsubscribes the fleet's recipients send back.
        #[arg(long)]
        no_sender_mx: bool,
        /// Certificates (PEM) the fleet's recipients also trust when they fetch https:// URLs
        /// (a sender's own server: `mailsim mta --https`); repeatable.
        #[arg(long)]
        trust: Vec<PathBuf>,
        /// Serve only shard i of n: the domains whose name hashes to i (every node computes
        /// the same split), so that n fleet nodes serve the scenario together.
        #[arg(long)]
        shard: Option<mailsim::cluster::Shard>,
        #[command(flatten)]
        publish: mailsim::cluster::PublishArgs,
    },
    /// Merge a multi-node run's event stream (NATS JetStream) into one run directory:
    /// events.log (ordered by time, then node, then the node's sequence) and summary.json.
    Collect {
        /// The run id the nodes published under (--run).
        run_id: String,
        /// The NATS server (nats://HOST:PORT).
        #[arg(long)]
        nats: String,
        /// The run directory to write (must not hold an events.log).
        #[arg(long)]
        out: PathBuf,
    },
    /// A standalone mailbox server: inbound SMTP (MX), submission, IMAP and POP3 over Maildir.
    Mailbox(Box<MailboxArgs>),
    /// Hash a password for a mailbox users file (argon2id).
    HashPassword { password: String },
    /// Submit a scenario's campaign to an MTA by SMTP (mailsim's daemon or any other).
    Send {
        scenario: PathBuf,
        /// The MTA's submission address (SMTP).
        #[arg(long, required_unless_present = "http", conflicts_with = "http")]
        to: Option<SocketAddr>,
        /// Inject through the MTA's HTTP API at this address instead (POST /api/inject/v1).
        #[arg(long, requires = "token_file")]
        http: Option<SocketAddr>,
        /// The API's bearer token (the file's first line).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Recipients per API request.
        #[arg(long, default_value_t = 100)]
        per_request: usize,
        /// Connections (SMTP sessions or HTTP keep-alive connections) at once.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Submit by SMTP at most this many messages a second, evenly spaced (a steady stream,
        /// such as transactional mail).
        #[arg(long, conflicts_with = "http")]
        rate: Option<f64>,
        /// Append each acknowledged Message-ID to this file.
        #[arg(long)]
        acked: Option<PathBuf>,
        /// Give up after this long without an acknowledgement.
        #[arg(long, default_value_t = 120)]
        stall_s_max: u64,
    },
    /// Serve a scenario's DNS zones, zone files, or both (UDP and TCP) until interrupted.
    Dns {
        /// The scenario whose zones (and zone files, and fault timeline) to serve.
        scenario: Option<PathBuf>,
        /// An RFC 1035 zone file to serve (with $ORIGIN or an SOA); over the scenario's records
        /// where both hold a name and type. Repeat for more.
        #[arg(long = "zone")]
        zones: Vec<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:5353")]
        listen: SocketAddr,
    },
    /// Sender authentication: SPF, DKIM, DMARC and ARC.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Subscriber lists of the MTA daemon (in SPOOL/lists.sqlite), for `POST /api/campaigns`.
    List {
        #[command(subcommand)]
        command: ListCommand,
    },
}

#[derive(Subcommand)]
enum ListCommand {
    /// Import subscribers from a CSV file with a header row: an `email` column, every other
    /// column a substitution field (`name` also names the recipient). All rows or none; a
    /// subscriber already on the list gets the new fields and keeps its status.
    Import {
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        list: String,
        csv: PathBuf,
    },
    /// A list's subscribers by status (active, unsubscribed, bounced, complained), as JSON.
    Show {
        #[arg(long)]
        spool: PathBuf,
        #[arg(long)]
        list: String,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// A receiver's view of one message: SPF (RFC 7208), every DKIM signature (RFC 6376), DMARC
    /// (RFC 7489) and ARC (RFC 8617) where present. Prints the Authentication-Results header
    /// (RFC 8601) and a JSON verdict with the reason for each result; exit 0 when DMARC passes
    /// (or, without a DMARC record, SPF or DKIM does), 1 otherwise.
    Verify {
        /// The message as received (RFC 5322), or - for standard input.
        message: PathBuf,
        /// The connecting client's address.
        #[arg(long)]
        ip: IpAddr,
        /// The client's HELO/EHLO name.
        #[arg(long)]
        helo: String,
        /// The envelope sender (MAIL FROM); "" for the null sender.
        #[arg(long = "mail-from")]
        mail_from: String,
        /// Zone files to answer the lookups (served by fake-dns on a loopback port).
        #[arg(long = "zone")]
        zones: Vec<PathBuf>,
        /// A DNS server to ask instead (e.g. `mailsim dns`'s address).
        #[arg(long)]
        dns: Option<SocketAddr>,
        /// The receiving host's name (authserv-id in the header).
        #[arg(long, value_parser = host_name_arg, default_value = "mx.mailsim.test")]
        hostname: String,
    },
    /// Lint a sending domain's DNS setup: SPF (syntax, the 10-lookup and void-lookup limits,
    /// +all/?all, several records), DKIM keys (presence, size, t=y, syntax), DMARC (syntax,
    /// policy, external report authorisation, alignment), MX, the sending addresses' reverse
    /// DNS, MTA-STS and TLS-RPT where published. Each finding names its RFC and the fix.
    /// Exit 0: nothing to fix; 3: warnings only; 1: failures; 2: the check could not run.
    Check {
        /// The domain mail is sent as (From and MAIL FROM).
        domain: String,
        /// Zone files to answer the lookups (served by fake-dns on a loopback port).
        #[arg(long = "zone")]
        zones: Vec<PathBuf>,
        /// A DNS server to ask instead (e.g. `mailsim dns`'s address).
        #[arg(long)]
        dns: Option<SocketAddr>,
        /// A DKIM selector the domain signs with (repeatable; none: common selectors are tried).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        /// An address the domain sends from (repeatable): its reverse DNS and SPF authorisation
        /// are checked.
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// Print the findings as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `mailsim auth check`'s exit status when only warnings were found.
const EXIT_WARNINGS: u8 = 3;

#[derive(Subcommand)]
enum BounceCommand {
    /// Classify bounce, complaint and auto-reply messages: one JSON object per recipient found,
    /// {"file","index","recipient","status","reason","hard"}, with "writer" (the MTA or provider
    /// that wrote the report) and "remote" (the provider whose server answered) when recognised.
    Classify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// One line of `mailsim bounce classify`.
#[derive(serde::Serialize)]
struct ClassifiedLine<'a> {
    file: String,
    /// The recipient's 1-based position in the message.
    index: usize,
    recipient: &'a str,
    status: &'a str,
    reason: &'a str,
    hard: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    writer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    remote: Option<&'a str>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("MAILSIM_LOG"))
        .with_writer(std::io::stderr)
        .init();
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailsim: {}", error_chain(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            scenario,
            out,
            quiet,
            mta,
            fleet_port,
            dns_port,
            connections,
            nats,
            run_id,
            fleet_nodes,
            fleet_nets,
            injectors,
            wait_s,
        } => {
            let sc = Scenario::load(&scenario)?;
            let out_dir = out.unwrap_or_else(|| {
                PathBuf::from("runs").join(format!("{}-{}", sc.name, SystemClock.now_ms()))
            });
            if let (Some(nats), Some(run)) = (nats, run_id) {
                if runner::events_path(&out_dir).exists() {
                    anyhow::bail!(
                        "{}: already holds a run (events.log); choose another --out or remove it",
                        out_dir.display()
                    );
                }
                let opts = mailsim::cluster::CoordinatorOptions {
                    nats,
                    run,
                    fleet_nodes,
                    fleet_port,
                    fleet_nets: fleet_nets.unwrap_or_default(),
                    injectors,
                    out: out_dir.clone(),
                    wait: std::time::Duration::from_secs(wait_s),
                    connections,
                };
                let summary = tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(mailsim::cluster::coordinate(
                        &scenario,
                        &sc,
                        opts,
                        stop_signal(),
                    ))?;
                let _ = std::fs::copy(&scenario, out_dir.join("scenario.toml"));
                print!("{}", runner::summary_json(&summary)?);
                eprintln!(
                    "mailsim: {} injected, {} delivered, {} bounced, {} deferred, {} expired; run directory {}",
                    summary.injected,
                    summary.delivered,
                    summary.bounced,
                    summary.deferred,
                    summary.expired,
                    out_dir.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let run_opts = RunOptions {
                out_dir: out_dir.clone(),
                progress: !quiet,
            };
            let existed = out_dir.exists();
            let result = (|| match mta {
                None => runner::run_scenario_drained(&sc, &run_opts),
                Some(url) => {
                    let addr = url
                        .strip_prefix("smtp://")
                        .ok_or_else(|| anyhow::anyhow!("--mta {url}: expected smtp://HOST:PORT"))?
                        .parse::<SocketAddr>()
                        .map_err(|e| anyhow::anyhow!("--mta {url}: {e}"))?;
                    runner::run_external(
                        &sc,
                        &run_opts,
                        &runner::ExternalMta {
                            submission: addr,
                            fleet_port,
                            dns_port,
                            connections,
                        },
                    )
                }
            })();
            let (summary, drain) = match result {
                Ok(ran) => ran,
                Err(e) => {
                    if !existed {
                        remove_empty_dirs(&out_dir);
                    }
                    return Err(e);
                }
            };
            // The scenario travels with its run, for the reader (reports need only the log).
            let _ = std::fs::copy(&scenario, out_dir.join("scenario.toml"));
            print!("{}", runner::summary_json(&summary)?);
            let share = mailsim_summary::Drain::BULK_SHARE * 100.0;
            // Virtual time has no network latency: it measures waits and retries, not speed.
            let drained = if sc.mode == mailsim::scenario::Mode::Virtual {
                format!(
                    "bulk: {share:.0}% of deliveries by {:.1} virtual s, tail: the rest {:.1} virtual s later",
                    drain.bulk_s, drain.tail_s
                )
            } else {
                format!(
                    "bulk: {share:.0}% of deliveries in {:.1} s ({:.0} delivered/s), tail: the rest in {:.1} s more",
                    drain.bulk_s, drain.bulk_per_s, drain.tail_s
                )
            };
            eprintln!(
                "mailsim: {} injected, {} delivered, {} bounced, {} deferred, {} expired; {drained}; run directory {}",
                summary.injected,
                summary.delivered,
                summary.bounced,
                summary.deferred,
                summary.expired,
                out_dir.display()
            );
        }
        Command::Events { run_dir, salvage } => {
            let path = runner::events_path(&run_dir);
            let mut reader = mailsim_events::LogReader::open(&path)?;
            if salvage {
                reader = reader.salvaging();
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut write = || -> anyhow::Result<()> {
                // Each record written from a view of its bytes: nothing allocated for it.
                while let Some(written) = reader.next_with(|r| serde_json::to_writer(&mut out, r)) {
                    written??;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(())
            };
            // A reader that has seen enough (`| head`) closes the pipe: not an error.
            if let Err(e) = write() {
                let kind = e
                    .downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        e.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    });
                let closed = kind == Some(std::io::ErrorKind::BrokenPipe);
                if !closed {
                    return Err(e);
                }
                return Ok(ExitCode::SUCCESS);
            }
            for d in &reader.damage {
                eprintln!(
                    "mailsim: {}: skipped {} damaged bytes at byte {} (record {})",
                    path.display(),
                    d.skipped,
                    d.offset,
                    d.record
                );
            }
            if reader.torn {
                eprintln!(
                    "mailsim: {}: the log ends in a torn record (cut off by a crash) at byte {}; shown up to it",
                    path.display(),
                    reader.good_end
                );
            }
        }
        Command::Repair { run_dir } => {
            let path = runner::events_path(&run_dir);
            let r = mailsim_events::repair(&path)?;
            match &r.original {
                None => println!(
                    "repair: {}: {} records, nothing to repair",
                    path.display(),
                    r.records
                ),
                Some(original) => {
                    for d in &r.damage {
                        println!(
                            "repair: left out {} damaged bytes at byte {} (record {})",
                            d.skipped, d.offset, d.record
                        );
                    }
                    println!(
                        "repair: {}: kept {} valid records, left out {} damaged stretches and {} bytes of torn tail; the original is {}",
                        path.display(),
                        r.records,
                        r.damage.len(),
                        r.torn_bytes,
                        original.display()
                    );
                }
            }
        }
        Command::Replay { run_dir, queue } => {
            print!("{}", runner::summary_json(&fold_run(&run_dir)?)?);
            if queue {
                let state = mailsim_summary::queue::QueueState::fold(&load_records(&run_dir)?);
                for m in state.messages.values() {
                    println!("{}", serde_json::to_string(m)?);
                }
            }
        }
        Command::Report(args) => match mailsim::cli::exec_report(&args)? {},
        Command::Diff { run_a, run_b } => {
            let a = fold_run(&run_a)?;
            let b = fold_run(&run_b)?;
            let rows = mailsim_summary::diff::diff(&a, &b);
            print!("{}", mailsim_summary::diff::render(&rows));
            let changed = rows.iter().filter(|r| r.changed()).count();
            println!("{changed} of {} domains differ", rows.len());
            if changed > 0 {
                return Ok(ExitCode::from(EXIT_NEGATIVE));
            }
        }
        Command::Bounce {
            command: BounceCommand::Classify { files },
        } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut unreadable = 0;
            let mut found = 0;
            for file in &files {
                let raw = match std::fs::read(file) {
                    Ok(raw) => raw,
                    Err(e) => {
                        eprintln!("mailsim: {}: {e}", file.display());
                        unreadable += 1;
                        continue;
                    }
                };
                let classified = mailsim_bounce::classify_message(&raw);
                if classified.is_empty() {
                    eprintln!(
                        "mailsim: {}: no bounce, complaint or auto-reply found",
                        file.display()
                    );
                }
                found += classified.len();
                for (i, c) in classified.iter().enumerate() {
                    let line = ClassifiedLine {
                        file: file.display().to_string(),
                        index: i + 1,
                        recipient: &c.recipient,
                        status: &c.status,
                        reason: &c.reason,
                        hard: c.hard,
                        writer: c.writer.as_deref(),
                        remote: c.remote.as_deref(),
                    };
                    serde_json::to_writer(&mut out, &line)?;
                    out.write_all(b"\n")?;
                }
            }
            out.flush()?;
            if unreadable > 0 {
                anyhow::bail!("{unreadable} of {} files could not be read", files.len());
            }
            if found == 0 {
                return Ok(ExitCode::from(EXIT_NEGATIVE));
            }
        }
        Command::Mta {
            spool,
            dns,
            submission,
            remote_port,
            hostname,
            ip,
            retry_interval_s_min,
            retry_interval_s_max,
            lifetime_s,
            conns_per_domain_max,
            destination_backoff_s,
            shaping,
            tls,
            tls_ca,
            dkim,
            sts_port,
            http,
            http_tokens,
            http_body_max,
            http_public_url,
            https,
            https_cert,
            https_key,
            lanes,
            transactional_conns,
            submission_transactional,
            mx,
            publish,
        } => {
            if transactional_conns == 0 {
                anyhow::bail!("--transactional-conns 0: give at least 1");
            }
            if http.is_some() && http_body_max == 0 {
                anyhow::bail!("--http-body-max 0: give the largest request body to take, in bytes");
            }
            if let Some(url) = &http_public_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                anyhow::bail!("--http-public-url {url:?}: give an http:// or https:// URL");
            }
            let http = match (http, &http_tokens) {
                (None, None) => None,
                (None, Some(_)) => anyhow::bail!("--http-tokens without --http: give both"),
                (Some(_), None) => anyhow::bail!(
                    "--http needs --http-tokens FILE: the API takes no request without a token"
                ),
                (Some(listen), Some(path)) => Some(mailsim::daemon::HttpOptions {
                    listen,
                    tokens: mailsim_platform::http::Tokens::load(path)
                        .map_err(|e| anyhow::anyhow!("--http-tokens {e}"))?,
                    body_max: http_body_max,
                    public_url: http_public_url,
                    https: https.map(|listen| (listen, https_cert.zip(https_key))),
                }),
            };
            let tls = match tls.as_str() {
                "opportunistic" => mailsim_mta::shaping::TlsMode::Opportunistic,
                "required" => mailsim_mta::shaping::TlsMode::Required,
                "off" => mailsim_mta::shaping::TlsMode::Off,
                other => anyhow::bail!("--tls {other:?}: give opportunistic, required or off"),
            };
            let tls_roots = match &tls_ca {
                None => vec![],
                Some(path) => {
                    use rustls::pki_types::CertificateDer;
                    use rustls::pki_types::pem::PemObject;
                    let roots: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.map(|c| c.map(|c| c.to_vec())).collect())
                        .map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", path.display()))?;
                    if roots.is_empty() {
                        anyhow::bail!("--tls-ca {}: no CERTIFICATE in it", path.display());
                    }
                    roots
                }
            };
            let mut signers = Vec::new();
            for spec in &dkim {
                let mut parts = spec.splitn(3, ':');
                let (Some(domain), Some(selector), Some(file)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    anyhow::bail!("--dkim {spec:?}: give DOMAIN:SELECTOR:KEY_FILE");
                };
                let pem = std::fs::read_to_string(file)
                    .with_context(|| format!("--dkim {spec}: reading {file}"))?;
                let key = mailsim::keys::rsa_from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("--dkim {spec}: {file}: {e}"))?;
                signers.push(
                    mailsim_mta::dkim::Signer::from_pkcs8(domain, selector, &key.pkcs8_der, false)
                        .with_context(|| format!("--dkim {spec}"))?,
                );
            }
            let shaping = match shaping {
                None => Default::default(),
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("--shaping {}", path.display()))?;
                    std::sync::Arc::new(
                        mailsim_mta::shaping::Shaping::parse(&text, &path.display().to_string())
                            .map_err(anyhow::Error::msg)?,
                    )
                }
            };
            let opts = mailsim::daemon::MtaDaemonOptions {
                spool,
                dns,
                submission,
                remote_port,
                hostname,
                source_ip: ip,
                retry: mailsim_mta::queue::RetryPolicy {
                    retry_interval_s_min,
                    retry_interval_s_max,
                    lifetime_s,
                },
                conns_per_domain_max,
                destination_backoff_s,
                shaping,
                tls,
                tls_roots,
                signers,
                sts_port,
                http,
                lanes: lanes.then_some(mailsim_mta::engine::Lanes {
                    transactional_conns,
                }),
                submission_transactional,
                mx,
            };
            let log = opts.spool.join("events.log");
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let publishing = publish.start(log).await?;
                    let ran = mailsim::daemon::run_mta(opts, stop_signal()).await;
                    if let Some(p) = publishing {
                        p.finish().await?;
                    }
                    ran
                })?;
        }
        Command::Fleet {
            scenario,
            out,
            port,
            dns_port,
            no_sender_mx,
            trust,
            shard,
            publish,
        } => {
            let sc = Scenario::load(&scenario)?;
            let mut trusted = Vec::new();
            for path in &trust {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.map(|c| c.map(|c| c.to_vec())).collect())
                    .map_err(|e| anyhow::anyhow!("--trust {}: {e}", path.display()))?;
                if certs.is_empty() {
                    anyhow::bail!("--trust {}: no CERTIFICATE in it", path.display());
                }
                trusted.extend(certs);
            }
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let publishing = publish.start(out.join("events.log")).await?;
                    let opts = mailsim::daemon::FleetOptions {
                        out,
                        smtp_port: port,
                        dns_port,
                        sender_mx: !no_sender_mx,
                        trusted,
                        shard,
                        ready: None,
                        placement: None,
                    };
                    let ran = mailsim::daemon::run_fleet(&sc, opts, stop_signal()).await;
                    if let Some(p) = publishing {
                        p.finish().await?;
                    }
                    ran
                })?;
        }
        Command::Node {
            nats,
            run,
            role,
            shard,
            listen,
            out,
            name,
            wait_s,
        } => {
            let opts = mailsim::cluster::NodeOptions {
                nats,
                run,
                role,
                shard,
                out,
                name,
                wait: std::time::Duration::from_secs(wait_s),
                listen,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(mailsim::cluster::run_node(opts, stop_signal()))?;
        }
        Command::Collect { run_id, nats, out } => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(mailsim::cluster::collect(&nats, &run_id, &out))?;
            let summary = fold_run(&out)?;
            let json = runner::summary_json(&summary)?;
            std::fs::write(out.join("summary.json"), &json)
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.join("summary.json").display()))?;
            print!("{json}");
        }
        Command::Mailbox(args) => {
            let MailboxArgs {
                data,
                domains,
                users,
                users_file,
                smtp,
                submission,
                imap,
                pop3,
                tls,
                hostname,
                dns,
                relay,
                quota,
                retention_days,
                auth_delay_s,
            } = *args;
            use mailsim_mailbox::{server, users::Users};
            use mailsim_smtp::tls::Tls;
            let mut accounts = Users::new(&domains);
            for (i, u) in users.iter().enumerate() {
                accounts.add_spec(u, &format!("--user #{}", i + 1))?;
            }
            if let Some(f) = &users_file {
                accounts.load_file(f)?;
            }
            let tls = match tls.as_str() {
                "none" => None,
                "self-signed" => Some(Tls::self_signed(std::slice::from_ref(&hostname))?),
                pair => {
                    let (cert, key) = pair.split_once(',').with_context(|| {
                        format!("--tls {pair:?}: expected self-signed, none or CERT,KEY")
                    })?;
                    Some(Tls::from_pem(cert.as_ref(), key.as_ref())?)
                }
            };
            if smtp.is_none() && submission.is_none() && imap.is_none() && pop3.is_none() {
                anyhow::bail!("give at least one of --smtp, --submission, --imap, --pop3");
            }
            let mut cfg = server::MailboxConfig::new(data, accounts);
            cfg.hostname = hostname;
            cfg.smtp = smtp;
            cfg.submission = submission;
            cfg.imap = imap;
            cfg.pop3 = pop3;
            cfg.tls = tls;
            cfg.dns = dns.map(fake_dns::resolver_for);
            cfg.relay = relay;
            cfg.quota_bytes = match &quota {
                Some(q) => parse_bytes(q).with_context(|| format!("--quota {q:?}"))?,
                None => 0,
            };
            cfg.retention_days = retention_days;
            if !(0.0..=60.0).contains(&auth_delay_s) {
                anyhow::bail!("--auth-delay-s {auth_delay_s}: expected 0 to 60 seconds");
            }
            cfg.login.failure_delay = std::time::Duration::from_secs_f64(auth_delay_s);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let running = server::start(cfg).await?;
                    let show = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
                    println!(
                        "mailbox: smtp={} submission={} imap={} pop3={} ready",
                        show(running.smtp),
                        show(running.submission),
                        show(running.imap),
                        show(running.pop3)
                    );
                    stop_signal().await;
                    running.shutdown().await;
                    anyhow::Ok(())
                })?;
        }
        Command::HashPassword { password } => {
            println!("{}", mailsim_mailbox::users::hash_password(&password));
        }
        Command::List { command } => {
            // A spool that is not there is a mistyped path: refused, never made (an import
            // into a new tree would be one the MTA never reads; an independent review). Showing
            // a list needs the lists file too, and creates nothing.
            let open = |spool: &std::path::Path, show: bool| {
                if !spool.is_dir() {
                    anyhow::bail!(
                        "--spool {}: no such directory (give the MTA daemon's --spool; create it first for a new one)",
                        spool.display()
                    );
                }
                let file = spool.join(mailsim::daemon::LISTS_FILE);
                if show && !file.is_file() {
                    anyhow::bail!(
                        "--spool {}: no lists here (no {})",
                        spool.display(),
                        mailsim::daemon::LISTS_FILE
                    );
                }
                mailsim_platform::lists::Lists::open(&file).map_err(anyhow::Error::msg)
            };
            match command {
                ListCommand::Import { spool, list, csv } => {
                    let file =
                        std::fs::File::open(&csv).with_context(|| format!("{}", csv.display()))?;
                    let done = open(&spool, false)?
                        .import_csv(
                            &list,
                            std::io::BufReader::new(file),
                            &csv.display().to_string(),
                        )
                        .map_err(anyhow::Error::msg)?;
                    println!("list: {list} added={} updated={}", done.added, done.updated);
                }
                ListCommand::Show { spool, list } => {
                    let lists = open(&spool, true)?;
                    if !lists.exists(&list).map_err(anyhow::Error::msg)? {
                        anyhow::bail!("--list {list:?}: no such list in {}", spool.display());
                    }
                    let counts = lists.counts(&list).map_err(anyhow::Error::msg)?;
                    println!("{}", serde_json::to_string(&counts)?);
                }
            }
        }
        Command::Send {
            scenario,
            to,
            http,
            token_file,
            per_request,
            connections,
            rate,
            acked,
            stall_s_max,
        } => {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                anyhow::bail!("--rate: give a number of messages per second over 0");
            }
            let sc = Scenario::load(&scenario)?;
            let world = World::build(&sc).map_err(anyhow::Error::msg)?;
            // The MTA it is sent to signs, or not (mailsim's daemon with --dkim).
            let now_s = (SystemClock.now_ms() / 1000) as i64;
            let campaign = mailsim::send::Campaign::new(&sc, &world, now_s, None, None);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let mut opts = mailsim::send::SendOptions {
                to: to.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
                connections,
                acked_path: acked,
                stall_max: std::time::Duration::from_secs(stall_s_max),
                on_ack: None,
                rate,
            };
            // The time of the sending (the messages, or the HTTP requests, are built as the
            // sessions take them, within it).
            let (report, took) = match (http, &token_file) {
                (Some(api), Some(file)) => {
                    // The first token of a file as `mailsim mta --http-tokens` reads one.
                    let text = std::fs::read_to_string(file)
                        .with_context(|| format!("--token-file {}", file.display()))?;
                    let Some(token) = text
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                    else {
                        anyhow::bail!("--token-file {}: no token in it", file.display());
                    };
                    let requests = mailsim::send::HttpRequests::new(&campaign, per_request);
                    opts.to = api;
                    let started = std::time::Instant::now();
                    let report = runtime
                        .block_on(mailsim::send::send_http(&requests, api, &token, &opts))?;
                    (report, started.elapsed())
                }
                _ => {
                    let started = std::time::Instant::now();
                    let report = runtime.block_on(mailsim::send::send(&campaign, &opts))?;
                    (report, started.elapsed())
                }
            };
            println!(
                "send: acked={} rejected={} retried={} seconds={:.3}",
                report.acked,
                report.rejected,
                report.retried,
                took.as_secs_f64()
            );
        }
        Command::Dns {
            scenario,
            zones,
            listen,
        } => {
            let (mut set, faults) = match &scenario {
                Some(path) => {
                    let sc = Scenario::load(path)?;
                    let world = World::build(&sc).map_err(anyhow::Error::msg)?;
                    (world.zones, world.faults)
                }
                None if zones.is_empty() => {
                    anyhow::bail!("nothing to serve: give a scenario, --zone files, or both")
                }
                None => (fake_dns::ZoneSet::new(), Vec::new()),
            };
            for path in &zones {
                let file = fake_dns::zonefile::load(path, None)?;
                set.overlay(&file.origin, file.records);
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                // Faults on the scenario's timeline count from now.
                let served = set.zones().count();
                let zones = std::sync::Arc::new(fake_dns::FaultyZones::new(set, faults));
                let start_ms = SystemClock.now_ms();
                let server = fake_dns::DnsServer::start_with_faults(
                    zones,
                    listen,
                    std::sync::Arc::new(move || SystemClock.now_ms().saturating_sub(start_ms)),
                )
                .await?;
                println!("dns: serving {served} zones on {} (udp+tcp)", server.addr());
                tokio::signal::ctrl_c().await?;
                server.shutdown().await;
                anyhow::Ok(())
            })?;
        }
        Command::Auth {
            command:
                AuthCommand::Verify {
                    message,
                    ip,
                    helo,
                    mail_from,
                    zones,
                    dns,
                    hostname,
                },
        } => {
            let raw = if message.as_os_str() == "-" {
                let mut raw = Vec::new();
                std::io::stdin().read_to_end(&mut raw)?;
                raw
            } else {
                std::fs::read(&message).with_context(|| message.display().to_string())?
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let verdicts = rt.block_on(async {
                let dns = mailsim::auth::Dns::new(&zones, dns).await?;
                let received = mailsim::auth::Received {
                    ip,
                    helo: &helo,
                    mail_from: &mail_from,
                    message: &raw,
                };
                let v = mailsim::auth::verify(&dns, &hostname, &received).await;
                dns.shutdown().await;
                v
            })?;
            let mut out = std::io::stdout().lock();
            out.write_all(verdicts.header.replace("\r\n", "\n").as_bytes())?;
            serde_json::to_writer(&mut out, &verdicts.detail)?;
            out.write_all(b"\n")?;
            if !mailsim::auth::passes(&verdicts) {
                return Ok(ExitCode::from(EXIT_NEGATIVE));
            }
        }
        Command::Auth {
            command:
                AuthCommand::Check {
                    domain,
                    zones,
                    dns,
                    selectors,
                    ips,
                    json,
                },
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(async {
                let dns = mailsim::auth::Dns::new(&zones, dns).await?;
                let request = mailsim::auth_check::Request {
                    domain: &domain,
                    selectors: &selectors,
                    ips: &ips,
                };
                let report = mailsim::auth_check::check(dns.addr(), &request).await;
                dns.shutdown().await;
                report
            })?;
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                out.write_all(b"\n")?;
            } else {
                out.write_all(report.text().as_bytes())?;
            }
            use mailsim::auth_check::Level;
            return Ok(match report.worst() {
                Level::Fail => ExitCode::from(EXIT_NEGATIVE),
                Level::Warn => ExitCode::from(EXIT_WARNINGS),
                Level::Info => ExitCode::SUCCESS,
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
struct MailboxArgs {
    /// Where mail is stored (Maildir per user: DATA/<domain>/<user>/).
    #[arg(long)]
    data: PathBuf,
    /// A domain this server receives mail for (repeat for more; the first is the default
    /// for bare user names).
    #[arg(long = "domain", required = true)]
    domains: Vec<String>,
    /// An account, USER:PASSWORD or USER:$argon2id$... (repeatable).
    #[arg(long = "user")]
    users: Vec<String>,
    /// A file of accounts, one USER:PASSWORD or USER:HASH per line.
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Inbound SMTP (the MX role).
    #[arg(long)]
    smtp: Option<SocketAddr>,
    /// Submission (STARTTLS, then AUTH PLAIN/LOGIN).
    #[arg(long)]
    submission: Option<SocketAddr>,
    #[arg(long)]
    imap: Option<SocketAddr>,
    #[arg(long)]
    pop3: Option<SocketAddr>,
    /// `self-signed` (made at start-up), CERT.pem,KEY.pem, or `none` (STARTTLS not offered).
    #[arg(long, default_value = "self-signed")]
    tls: String,
    /// The name the server gives itself (greetings, certificate, headers).
    #[arg(long, value_parser = host_name_arg, default_value = "mail.mailsim.test")]
    hostname: String,
    /// DNS server for SPF/DKIM/DMARC checks (default: the system's resolvers).
    #[arg(long)]
    dns: Option<SocketAddr>,
    /// Submitted mail for other domains goes to this MTA (e.g. `mailsim mta --submission`).
    #[arg(long)]
    relay: Option<SocketAddr>,
    /// Per-user quota, bytes (K, M, G suffixes); full mailboxes get 452 4.2.2.
    #[arg(long)]
    quota: Option<String>,
    /// Remove messages older than this many days (logged).
    #[arg(long)]
    retention_days: Option<u32>,
    /// Seconds to wait before answering a failed login (times the failures so far).
    #[arg(long, default_value_t = 1.0)]
    auth_delay_s: f64,
}

/// `1048576`, `512K`, `10M`, `2G` as bytes.
fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| "expected a byte count such as 500M")?;
    n.checked_mul(mult).context("too large")
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A run's summary folded from its log, streaming; a torn tail is reported on stderr.
fn fold_run(run_dir: &std::path::Path) -> anyhow::Result<mailsim_summary::Summary> {
    let path = runner::events_path(run_dir);
    let (summary, torn) =
        runner::fold_log(&path).with_context(|| format!("reading {}", path.display()))?;
    if torn {
        eprintln!(
            "mailsim: {}: the log ends in a torn record (cut off by a crash); read up to it",
            path.display()
        );
    }
    Ok(summary)
}

/// Every good record of a run's log; a torn tail is reported on stderr and left out.
fn load_records(run_dir: &std::path::Path) -> anyhow::Result<Vec<mailsim_events::Record>> {
    let path = runner::events_path(run_dir);
    let (records, torn) = read_log(&path).with_context(|| format!("reading {}", path.display()))?;
    if torn {
        eprintln!(
            "mailsim: {}: the log ends in a torn record (cut off by a crash); read up to it",
            path.display()
        );
    }
    Ok(records)
}

/// `--hostname`: a host name (see [`mailsim::scenario::host_name`]).
fn host_name_arg(s: &str) -> Result<String, String> {
    mailsim::scenario::host_name(s).map(|()| s.to_string())
}
