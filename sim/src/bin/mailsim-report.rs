//! `mailsim-report`: the deliverability report of a run (what `mailsim report` runs). Built with
//! the `report` feature, the only part of mailsim that links polars.

use anyhow::Context;
use clap::Parser;
use mailsim::cli::{EXIT_ERROR, EXIT_NEGATIVE, ReportArgs, error_chain, remove_empty_dirs};
use mailsim::runner;
use mailsim_summary::Summary;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mailsim report",
    version,
    about = "The deliverability report of a run: events.parquet, figures, charts, report.html, \
             DMARC aggregate reports"
)]
struct Cli {
    #[command(flatten)]
    args: ReportArgs,
}

fn main() -> ExitCode {
    match real_main(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailsim: {}", error_chain(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn real_main(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let ReportArgs {
        run_dir,
        compare,
        out,
        quiet,
    } = args;
    if let Some(runs) = compare {
        let out = out.unwrap_or_else(|| PathBuf::from("compare"));
        let (a, b) = mailsim_reports::report::write_compare(&runs[0], &runs[1], &out, !quiet)?;
        println!(
            "report: {} vs {}: delivered {} -> {}, bounced {} -> {}; {}",
            runs[0].display(),
            runs[1].display(),
            a.totals.delivered,
            b.totals.delivered,
            a.totals.bounced_hard + a.totals.bounced_soft,
            b.totals.bounced_hard + b.totals.bounced_soft,
            out.join("compare.html").display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(run_dir) = run_dir else {
        anyhow::bail!("name a run directory, or two runs with --compare");
    };
    let out = out.unwrap_or_else(|| run_dir.join("report"));
    let existed = out.exists();
    let w = match mailsim_reports::report::write_report(&run_dir, &out, !quiet) {
        Ok(w) => w,
        Err(e) => {
            if !existed {
                remove_empty_dirs(&out);
            }
            return Err(e.into());
        }
    };
    let (summary, against) = summary_of(&run_dir)?;
    let mismatches = mailsim_reports::check::differences(&summary, &w.figures);
    let check = if mismatches.is_empty() {
        format!("totals equal {against}")
    } else {
        format!("DIFFERENT from {against}: {}", mismatches.join(", "))
    };
    println!(
        "report: {} events, {} files, {} DMARC aggregate reports; {}{}; {}",
        w.figures.events,
        w.files.len(),
        w.dmarc_reports,
        check,
        if w.torn {
            "; the log ends in a torn record"
        } else {
            ""
        },
        out.join("report.html").display()
    );
    if !mismatches.is_empty() {
        eprintln!(
            "mailsim: the report's totals differ from {}",
            runner::summary_path(&run_dir).display()
        );
        return Ok(ExitCode::from(EXIT_NEGATIVE));
    }
    Ok(ExitCode::SUCCESS)
}

/// The run's summary.json, or the summary folded from its log when there is none.
/// The summary to check the report against, and what it is: the run's summary.json, or (a
/// daemon's spool has none) the summary folded from the log record by record.
fn summary_of(run_dir: &Path) -> anyhow::Result<(Summary, &'static str)> {
    let path = runner::summary_path(run_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
            "summary.json",
        )),
        Err(_) => Ok((
            runner::fold_log(&runner::events_path(run_dir))?.0,
            "the log's summary fold",
        )),
    }
}
