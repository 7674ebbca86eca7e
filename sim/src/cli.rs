//! What the `mailsim` command line and the `mailsim-report` tool share: exit codes, how errors
//! are printed, the arguments of `mailsim report`, and how `mailsim report` finds (and on first
//! use builds) the report tool.
//!
//! The report is a binary of its own because it is the only part of mailsim that needs polars:
//! `mailsim run` builds in minutes without it, and `mailsim report` hands its arguments to
//! `mailsim-report`, found beside the `mailsim` executable.

use anyhow::Context;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

// Exit codes, as diff(1) and grep(1) use them: 0 yes / the same / found; 1 a negative answer
// (runs differ, nothing found, a report that disagrees with summary.json); 2 an error.

/// Exit code of a command whose answer is "no" (a check failed, runs differ).
pub const EXIT_NEGATIVE: u8 = 1;
/// Exit code of a command that could not do its work.
pub const EXIT_ERROR: u8 = 2;

/// The report tool's file name, beside `mailsim`.
pub const REPORT_TOOL: &str = "mailsim-report";
/// Names the report tool to use instead of the one beside `mailsim`.
pub const REPORT_TOOL_ENV: &str = "MAILSIM_REPORT";

/// The arguments of `mailsim report` (and of `mailsim-report`, which takes the same).
#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// The run directory.
    #[arg(required_unless_present = "compare")]
    pub run_dir: Option<PathBuf>,
    /// Compare two runs instead (per domain, with deltas).
    #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"], conflicts_with = "run_dir")]
    pub compare: Option<Vec<PathBuf>>,
    /// Where to write (default RUN_DIR/report, or compare/ in the current directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl ReportArgs {
    /// The same arguments as a command line for the report tool.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut out = Vec::new();
        if let Some(runs) = &self.compare {
            out.push("--compare".into());
            out.extend(runs.iter().map(|r| r.clone().into_os_string()));
        }
        if let Some(out_dir) = &self.out {
            out.push("--out".into());
            out.push(out_dir.clone().into_os_string());
        }
        if self.quiet {
            out.push("--quiet".into());
        }
        if let Some(run_dir) = &self.run_dir {
            // After `--`: a run directory named like an option stays a run directory.
            out.push("--".into());
            out.push(run_dir.clone().into_os_string());
        }
        out
    }
}

/// An error and its causes, each said once: many errors already name their source in their
/// own text ("event log PATH: No such file"), which `{:#}` would print a second time.
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut previous = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !previous.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        previous = text;
    }
    out
}

/// Remove `dir` if it holds nothing but empty directories (what a run or report that failed
/// early leaves); anything with a file in it stays.
pub fn remove_empty_dirs(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The report tool `mailsim report` runs: `$MAILSIM_REPORT` when set, else `mailsim-report`
/// beside the running `mailsim`. When it is not there and `mailsim` runs from the cargo target
/// directory of its source tree (as after `cargo run`), it is built there first, once, and that
/// is said on stderr.
pub fn report_tool() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(REPORT_TOOL_ENV) {
        let p = PathBuf::from(p);
        anyhow::ensure!(
            p.is_file(),
            "{REPORT_TOOL_ENV}={}: no such file (it names the report tool to run)",
            p.display()
        );
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the mailsim executable")?;
    let dir = exe
        .parent()
        .context("the mailsim executable has no directory")?;
    let tool = dir.join(REPORT_TOOL);
    if tool.is_file() {
        return Ok(tool);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target_dir = dir.parent().filter(|t| t.join("CACHEDIR.TAG").is_file());
    let (Some(target_dir), true) = (target_dir, workspace.join("reports").is_dir()) else {
        anyhow::bail!(
            "the report tool {} is not installed beside {} (install it from mailsim's source \
             tree: cargo install --path sim --features report --bin {REPORT_TOOL}, or name it \
             in {REPORT_TOOL_ENV})",
            tool.display(),
            exe.display()
        );
    };
    let profile = dir
        .file_name()
        .and_then(|p| p.to_str())
        .unwrap_or("release")
        .to_string();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir)
        .args([
            "--profile",
            if profile == "debug" { "dev" } else { &profile },
        ])
        .args([
            "-p",
            "mailsim",
            "--features",
            "report",
            "--bin",
            REPORT_TOOL,
        ]);
    eprintln!(
        "mailsim report: first use: building the report tool {} (polars and plotters; about \
         {} on 2 cores, once): {}",
        tool.display(),
        FIRST_BUILD,
        std::iter::once(cargo.to_string_lossy().into_owned())
            .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let status = cmd
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    anyhow::ensure!(
        status.success(),
        "building the report tool failed ({status}); the command is printed above"
    );
    anyhow::ensure!(
        tool.is_file(),
        "the build succeeded but {} is not there",
        tool.display()
    );
    Ok(tool)
}

/// How long the report tool's first build takes here (BENCHMARKS.md, first build).
const FIRST_BUILD: &str = "20 minutes";

/// Run `mailsim report`: replace this process with the report tool (its output and exit code
/// are the command's).
pub fn exec_report(args: &ReportArgs) -> anyhow::Result<std::convert::Infallible> {
    use std::os::unix::process::CommandExt;
    let tool = report_tool()?;
    let err = std::process::Command::new(&tool)
        .args(args.to_args())
        .exec();
    Err(anyhow::Error::new(err).context(format!("running {}", tool.display())))
}
