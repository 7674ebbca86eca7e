//! The scale benchmark (issue 23): a scenario's run, replay, event listing and report, each as
//! the user runs it (a `mailsim` child process), with its wall time, its own peak RSS (from
//! `wait4`) and events per second over the run's log.
//!
//! Usage: scale [SCENARIO] [--out DIR] [--bin DIR] [--skip-run] [--compare-formats]
//!   SCENARIO   default benches/scenarios/scale-million.toml
//!   --out DIR  the run directory (default: a temporary one, removed at the end)
//!   --bin DIR  where `mailsim` and `mailsim-report` are (default: beside this binary, so
//!              `cargo build --release -p mailsim --features report --bins` first)
//!   --skip-run measure replay, events and report of the run already in --out
//!   --compare-formats  also convert the run's log to format 1 (JSON records) in a copy of
//!              the run directory, and measure replay, events and report on each in turn
//!              (`format=binary` and `format=json` on each line)
//!
//! Prints one line per step: `scale: step=run wall_s=... peak_rss_mb=... events=...
//! events_per_s=...`, then the run directory's size on disk.

use mailsim_events::{Clock, SystemClock};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Wall time, peak RSS (bytes) and exit status of one child process.
fn measure(cmd: &mut Command) -> Result<(f64, u64, i32), Box<dyn std::error::Error>> {
    let wall = SystemClock;
    let t0 = wall.now_ms();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are to live locals.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = (wall.now_ms() - t0) as f64 / 1000.0;
    if got != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()).into());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // ru_maxrss is in kilobytes on Linux.
    Ok((seconds, usage.ru_maxrss as u64 * 1024, code))
}

/// Records in a log: its frames, checked but not decoded.
fn records(log: &Path) -> Result<u64, Box<dyn std::error::Error>> {
    let mut reader = mailsim_events::LogReader::open(log)?;
    let mut n = 0;
    while reader.next_payload()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn disk_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_bytes(&e.path()))
        .sum::<u64>()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut scenario = PathBuf::from("benches/scenarios/scale-million.toml");
    let mut out: Option<PathBuf> = None;
    let mut bin: Option<PathBuf> = None;
    let mut skip_run = false;
    let mut compare = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(args.next().ok_or("--out DIR")?.into()),
            "--bin" => bin = Some(args.next().ok_or("--bin DIR")?.into()),
            "--skip-run" => skip_run = true,
            "--compare-formats" => compare = true,
            s if s.starts_with("--") => return Err(format!("unknown option {s}").into()),
            s => scenario = s.into(),
        }
    }
    let bin = match bin {
        Some(b) => b,
        None => std::env::current_exe()?
            .parent()
            .ok_or("this binary has no directory")?
            .to_path_buf(),
    };
    let mailsim = bin.join("mailsim");
    if !mailsim.exists() || !bin.join("mailsim-report").exists() {
        return Err(format!(
            "no mailsim and mailsim-report in {}: cargo build --release -p mailsim --features report --bins",
            bin.display()
        )
        .into());
    }
    let temp = tempfile::tempdir()?;
    let dir = out.unwrap_or_else(|| temp.path().join("run"));
    if skip_run && !dir.join("events.log").exists() {
        return Err(format!("--skip-run: no run in {}", dir.display()).into());
    }
    let quiet = || {
        let mut c = Command::new(&mailsim);
        c.stdout(Stdio::null());
        c
    };
    let mut steps: Vec<(&str, Command)> = Vec::new();
    if !skip_run {
        let mut c = quiet();
        c.arg("run")
            .arg(&scenario)
            .arg("--quiet")
            .arg("--out")
            .arg(&dir);
        steps.push(("run", c));
    }
    let mut events = None;
    let mut run = |step: &str,
                   format: Option<&str>,
                   mut cmd: Command|
     -> Result<(), Box<dyn std::error::Error>> {
        let (seconds, rss, code) = measure(&mut cmd)?;
        if code != 0 {
            return Err(format!("{step}: exit status {code}").into());
        }
        let n = match events {
            Some(n) => n,
            None => *events.insert(records(&dir.join("events.log"))?),
        };
        let format = format.map(|f| format!(" format={f}")).unwrap_or_default();
        println!(
            "scale: step={step}{format} wall_s={seconds:.1} peak_rss_mb={:.0} events={n} events_per_s={:.0}",
            rss as f64 / 1e6,
            n as f64 / seconds
        );
        Ok(())
    };
    for (step, cmd) in steps {
        run(step, None, cmd)?;
    }
    // The readers, on the run directory and (when comparing) on its copy with a JSON log.
    let json_dir = temp.path().join("json");
    let mut dirs = vec![("binary", dir.clone())];
    if compare {
        std::fs::create_dir_all(&json_dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() && entry.file_name() != "events.log" {
                std::fs::copy(entry.path(), json_dir.join(entry.file_name()))?;
            }
        }
        mailsim_events::convert(
            &dir.join("events.log"),
            &json_dir.join("events.log"),
            mailsim_events::Format::Json,
        )?;
        dirs.push(("json", json_dir.clone()));
    }
    for (format, d) in &dirs {
        let format = compare.then_some(*format);
        let mut c = quiet();
        c.arg("replay").arg(d);
        run("replay", format, c)?;
        let mut c = quiet();
        c.arg("events").arg(d);
        run("events", format, c)?;
        let mut c = quiet();
        c.arg("report")
            .arg(d)
            .arg("--quiet")
            .arg("--out")
            .arg(temp.path().join("report"))
            .env("MAILSIM_REPORT", bin.join("mailsim-report"));
        run("report", format, c)?;
        std::fs::remove_dir_all(temp.path().join("report")).ok();
    }
    if compare {
        println!(
            "scale: log_mb format=json {:.0}",
            disk_bytes(&json_dir.join("events.log")) as f64 / 1e6
        );
    }
    println!(
        "scale: run_dir_mb={:.0} log_mb={:.0}",
        disk_bytes(&dir) as f64 / 1e6,
        disk_bytes(&dir.join("events.log")) as f64 / 1e6
    );
    Ok(())
}
