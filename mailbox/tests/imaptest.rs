//! Dovecot's imaptest scripts (tests/data/imaptest, MIT) run against mailsim's IMAP server.
//!
//! Debian does not package imaptest, so this is a runner of our own for the same scripts, with
//! imaptest's rules as its documentation and source describe them: untagged replies in any
//! order, one reply may satisfy several expectations, `!` lines must not match, `?` lines may,
//! `$var` binds on first sight, `$` matches anything, `$n` follows a sequence number through
//! EXPUNGEs, `$!` directives change list matching, and the defaults ("n FETCH ($!unordered=2)",
//! FETCH FLAGS unordered without extras except \Recent, LIST/LSUB flags unordered, STATUS
//! unordered pairs). Scripts whose `capabilities:` header names an extension the server does
//! not announce are counted as skipped, like imaptest does.
//!
//! The test prints a table (run with `--nocapture`). The scripts that must pass are named in
//! `tests/data/imaptest/PASSING`: the test fails if one of them fails (with its reason), and if a
//! script passes that the list does not name (so that the list stays true and only grows).

use mailsim_mailbox::server::{self, MailboxConfig};
use mailsim_mailbox::users::Users;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

const MAILBOX: &str = "imaptest";
const USER: &str = "bob@example.test";
const PASSWORD: &str = "pass";

#[derive(Clone, Debug, PartialEq)]
enum Arg {
    Nil,
    Atom(String),
    Str(String),
    List(Vec<Arg>),
}

impl Arg {
    fn text(&self) -> Option<&str> {
        match self {
            Arg::Atom(s) | Arg::Str(s) => Some(s),
            _ => None,
        }
    }
    fn is(&self, word: &str) -> bool {
        self.text().is_some_and(|s| s.eq_ignore_ascii_case(word))
    }
}

fn show(args: &[Arg]) -> String {
    args.iter()
        .map(|a| match a {
            Arg::Nil => "NIL".to_string(),
            Arg::Atom(s) => s.clone(),
            Arg::Str(s) => format!("{s:?}"),
            Arg::List(l) => format!("({})", show(l)),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parse IMAP arguments; literals (`{n}` CRLF, then n bytes) are inline in `b`.
fn parse_args(b: &[u8]) -> Vec<Arg> {
    let mut pos = 0;
    parse_list(b, &mut pos, false)
}

fn parse_list(b: &[u8], pos: &mut usize, nested: bool) -> Vec<Arg> {
    let mut out = Vec::new();
    while *pos < b.len() {
        match b[*pos] {
            b' ' | b'\r' | b'\n' => *pos += 1,
            b')' if nested => {
                *pos += 1;
                return out;
            }
            b'(' => {
                *pos += 1;
                out.push(Arg::List(parse_list(b, pos, true)));
            }
            b'"' => {
                *pos += 1;
                let mut s = Vec::new();
                while *pos < b.len() && b[*pos] != b'"' {
                    if b[*pos] == b'\\' && *pos + 1 < b.len() {
                        *pos += 1;
                    }
                    s.push(b[*pos]);
                    *pos += 1;
                }
                *pos += 1;
                out.push(Arg::Str(String::from_utf8_lossy(&s).into_owned()));
            }
            b'~' if b.get(*pos + 1) == Some(&b'{') => *pos += 1,
            b'{' => {
                let close = b[*pos..].iter().position(|&c| c == b'}').map(|p| *pos + p);
                let Some(close) = close else {
                    *pos = b.len();
                    break;
                };
                let n: usize = std::str::from_utf8(&b[*pos + 1..close])
                    .ok()
                    .and_then(|s| s.trim_end_matches('+').parse().ok())
                    .unwrap_or(0);
                let mut start = close + 1;
                if b[start..].starts_with(b"\r\n") {
                    start += 2;
                } else if b[start..].starts_with(b"\n") {
                    start += 1;
                }
                let end = (start + n).min(b.len());
                out.push(Arg::Str(
                    String::from_utf8_lossy(&b[start..end]).into_owned(),
                ));
                *pos = end;
            }
            _ => {
                let start = *pos;
                let mut depth = 0;
                while *pos < b.len() {
                    let c = b[*pos];
                    if c == b'[' {
                        depth += 1;
                    } else if c == b']' {
                        depth -= 1;
                    } else if depth <= 0 && matches!(c, b' ' | b'(' | b')' | b'\r' | b'\n') {
                        break;
                    }
                    *pos += 1;
                }
                let word = String::from_utf8_lossy(&b[start..*pos]).into_owned();
                out.push(if word.eq_ignore_ascii_case("NIL") {
                    Arg::Nil
                } else {
                    Arg::Atom(word)
                });
            }
        }
    }
    out
}

fn has_directives(l: &[Arg]) -> bool {
    l.first()
        .and_then(Arg::text)
        .is_some_and(|s| s.starts_with("$!"))
}

fn directive(s: &str) -> Arg {
    Arg::Atom(s.to_string())
}

/// imaptest's default directives for expected untagged replies.
fn add_defaults(args: &mut [Arg]) {
    let fetch = args.len() >= 3 && args[1].is("fetch");
    let status = args.len() >= 3 && args[0].is("status");
    let list = args.len() >= 2 && (args[0].is("list") || args[0].is("lsub"));
    if fetch && let Arg::List(items) = &mut args[2] {
        for i in 1..items.len() {
            if items[i - 1].is("flags")
                && let Arg::List(flags) = &mut items[i]
                && !has_directives(flags)
            {
                for d in ["$!ignore=\\recent", "$!noextra", "$!unordered"] {
                    flags.insert(0, directive(d));
                }
            }
        }
        if !has_directives(items) {
            items.insert(0, directive("$!unordered=2"));
        }
    }
    if status
        && let Arg::List(items) = &mut args[2]
        && !has_directives(items)
    {
        items.insert(0, directive("$!unordered=2"));
    }
    if list
        && let Arg::List(items) = &mut args[1]
        && !has_directives(items)
    {
        items.insert(0, directive("$!unordered"));
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Existence {
    Must,
    MustNot,
    May,
}

#[derive(Debug, Clone)]
struct Expected {
    existence: Existence,
    args: Vec<Arg>,
}

#[derive(Debug, Clone)]
struct Cmd {
    line: String,
    /// "ok", "no", "bad", or "" for any; None until method 2 gives it.
    status: Option<String>,
    prefix: String,
    /// Tag written in the script (pipelined method 2), if any.
    script_tag: Option<String>,
    linenum: usize,
}

#[derive(Debug, Clone)]
struct Group {
    conn: usize,
    cmds: Vec<Cmd>,
    untagged: Vec<Expected>,
}

#[derive(Debug)]
struct Script {
    name: String,
    connections: usize,
    state: String,
    messages: Option<usize>,
    capabilities: Vec<String>,
    ignore_extra: bool,
    groups: Vec<Group>,
}

const COMMANDS: &[&str] = &[
    "append",
    "authenticate",
    "capability",
    "check",
    "close",
    "copy",
    "create",
    "delete",
    "enable",
    "examine",
    "expunge",
    "fetch",
    "getquota",
    "getquotaroot",
    "id",
    "idle",
    "list",
    "login",
    "logout",
    "lsub",
    "move",
    "namespace",
    "noop",
    "rename",
    "search",
    "select",
    "setquota",
    "sort",
    "starttls",
    "status",
    "store",
    "subscribe",
    "thread",
    "uid",
    "unselect",
    "unsubscribe",
    "xlist",
    "esearch",
    "genurlauth",
    "urlfetch",
    "resetkey",
    "notify",
    "replace",
    "compress",
    "getmetadata",
    "setmetadata",
    "x-dummy",
];

fn is_status_word(w: &str) -> bool {
    matches!(
        w.to_ascii_lowercase().as_str(),
        "ok" | "no" | "bad" | "\"\""
    )
}

/// Read a script, turning `{{{ ... }}}` blocks into inline literals.
fn parse_script(path: &Path) -> Result<Script, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let mut lines: Vec<(usize, String)> = Vec::new();
    let mut it = text.lines().enumerate().peekable();
    let mut skipping = Vec::<bool>::new();
    while let Some((n, line)) = it.next() {
        // !ifenv blocks run only with an environment variable set: none here.
        if let Some(rest) = line.strip_prefix("!ifenv ") {
            skipping.push(std::env::var_os(rest.trim()).is_none());
            continue;
        }
        if let Some(rest) = line.strip_prefix("!ifnenv ") {
            skipping.push(std::env::var_os(rest.trim()).is_some());
            continue;
        }
        if line.starts_with("!else") {
            if let Some(s) = skipping.last_mut() {
                *s = !*s;
            }
            continue;
        }
        if line.starts_with("!endif") {
            skipping.pop();
            continue;
        }
        if skipping.iter().any(|s| *s) {
            continue;
        }
        if let Some(head) = line.strip_suffix("{{{") {
            // `~{{{` is a binary literal: its lines end in LF as written, not CRLF.
            let (head, binary) = match head.strip_suffix('~') {
                Some(h) => (h, true),
                None => (head, false),
            };
            let mut block = String::new();
            let mut last_line_end = 0;
            let mut tail = String::new();
            for (_, l) in it.by_ref() {
                if let Some(t) = l.strip_prefix("}}}") {
                    tail = t.to_string();
                    break;
                }
                block.push_str(l);
                last_line_end = block.len();
                block.push_str(if binary { "\n" } else { "\r\n" });
            }
            // The line end before }}} is not part of the text.
            block.truncate(last_line_end);
            lines.push((n + 1, format!("{head}{{{}}}\r\n{block}{tail}", block.len())));
        } else {
            lines.push((n + 1, line.to_string()));
        }
    }
    let mut script = Script {
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
        connections: 1,
        state: "selected".into(),
        messages: None,
        capabilities: vec![],
        ignore_extra: true,
        groups: vec![],
    };
    let mut i = 0;
    while i < lines.len() && !lines[i].1.trim().is_empty() {
        if lines[i].1.starts_with('#') {
            i += 1;
            continue;
        }
        let (k, v) = lines[i]
            .1
            .split_once(':')
            .ok_or_else(|| format!("line {}: header without ':'", lines[i].0))?;
        let v = v.trim();
        match k.trim() {
            "connections" => script.connections = v.parse().map_err(|_| "connections")?,
            "state" => script.state = v.to_ascii_lowercase(),
            "messages" => script.messages = if v == "all" { None } else { v.parse().ok() },
            "capabilities" => {
                script.capabilities = v.split_whitespace().map(str::to_ascii_uppercase).collect()
            }
            "ignore_extra_untagged" => script.ignore_extra = v != "no",
            _ => {}
        }
        i += 1;
    }
    let multi = script.connections > 1;
    let mut current: Option<Group> = None;
    for (n, line) in &lines[i..] {
        let line = line.trim_end();
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let first = line.chars().next().unwrap_or(' ');
        if first == '*' || first == '!' || first == '?' {
            let existence = match first {
                '*' => Existence::Must,
                '!' => Existence::MustNot,
                _ => Existence::May,
            };
            let mut args = parse_args(line[1..].trim_start().as_bytes());
            add_defaults(&mut args);
            match current.as_mut() {
                Some(g) => g.untagged.push(Expected { existence, args }),
                None => return Err(format!("line {n}: untagged reply before any command")),
            }
            continue;
        }
        let mut rest = line;
        let mut conn = 0;
        if multi
            && let Some((c, r)) = rest.split_once(' ')
            && let Ok(c) = c.parse::<usize>()
        {
            conn = c.saturating_sub(1);
            rest = r;
        }
        let (w1, after) = rest.split_once(' ').unwrap_or((rest, ""));
        // A status line for a pending method-2 command (by tag or the first pending one).
        if let Some(g) = current.as_mut() {
            let by_tag = g.cmds.iter().position(|c| {
                c.status.is_none()
                    && c.script_tag.as_deref() == Some(w1)
                    && is_status_word(after.split(' ').next().unwrap_or(""))
            });
            let pending = g.cmds.iter().position(|c| c.status.is_none());
            if let Some(idx) = by_tag {
                let (s, p) = after.split_once(' ').unwrap_or((after, ""));
                g.cmds[idx].status = Some(s.to_ascii_lowercase().replace("\"\"", ""));
                g.cmds[idx].prefix = p.to_string();
                continue;
            }
            if let Some(idx) = pending
                && is_status_word(w1)
                && (after.is_empty() || after.starts_with('['))
            {
                g.cmds[idx].status = Some(w1.to_ascii_lowercase().replace("\"\"", ""));
                g.cmds[idx].prefix = after.to_string();
                continue;
            }
        }
        let (cmd, status, script_tag) = if is_status_word(w1) {
            (
                after.to_string(),
                Some(w1.to_ascii_lowercase().replace("\"\"", "")),
                None,
            )
        } else if !COMMANDS.contains(&w1.to_ascii_lowercase().as_str()) && !after.is_empty() {
            (after.to_string(), None, Some(w1.to_string()))
        } else {
            (rest.to_string(), None, None)
        };
        let c = Cmd {
            line: cmd,
            status,
            prefix: String::new(),
            script_tag,
            linenum: *n,
        };
        // A pipelined command joins the group whose commands still wait for their status.
        if let Some(g) = current.as_mut()
            && c.script_tag.is_some()
            && g.cmds
                .iter()
                .all(|x| x.script_tag.is_some() && x.status.is_none())
            && g.untagged.is_empty()
            && g.conn == conn
        {
            g.cmds.push(c);
            continue;
        }
        if let Some(g) = current.take() {
            script.groups.push(g);
        }
        current = Some(Group {
            conn,
            cmds: vec![c],
            untagged: vec![],
        });
    }
    if let Some(g) = current.take() {
        script.groups.push(g);
    }
    // Like imaptest, end with LOGOUT on the first connection unless the script logs out.
    let logs_out = script.groups.iter().any(|g| {
        g.cmds.iter().any(|c| c.line.eq_ignore_ascii_case("logout"))
            || g.untagged
                .iter()
                .any(|u| u.args.first().is_some_and(|a| a.is("bye")))
    });
    if !logs_out {
        script.groups.push(Group {
            conn: 0,
            cmds: vec![Cmd {
                line: "logout".into(),
                status: Some("ok".into()),
                prefix: String::new(),
                script_tag: None,
                linenum: 0,
            }],
            untagged: vec![],
        });
    }
    Ok(script)
}

fn mbox_messages(path: &Path) -> Vec<Vec<u8>> {
    let text = std::fs::read(path).unwrap_or_default();
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    let mut cur: Option<Vec<u8>> = None;
    for line in text.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some(m) = cur.take() {
                msgs.push(m);
            }
            cur = Some(Vec::new());
            continue;
        }
        if let Some(m) = cur.as_mut() {
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            m.extend_from_slice(body);
            if line.ends_with(b"\n") {
                m.extend_from_slice(b"\r\n");
            }
        }
    }
    if let Some(m) = cur {
        msgs.push(m);
    }
    msgs
}

struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    exists: u32,
    next_tag: u32,
    closed: bool,
}

/// One full response: a line, with any literals it announces read inline.
async fn read_response(r: &mut BufReader<OwnedReadHalf>) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await.ok()?;
        if n == 0 {
            return if out.is_empty() { None } else { Some(out) };
        }
        out.extend_from_slice(&line);
        let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
        if trimmed.ends_with(b"}")
            && let Some(open) = trimmed.iter().rposition(|&c| c == b'{')
            && let Ok(n) = std::str::from_utf8(&trimmed[open + 1..trimmed.len() - 1])
                .unwrap_or("")
                .trim_end_matches('+')
                .parse::<usize>()
        {
            let mut lit = vec![0u8; n];
            r.read_exact(&mut lit).await.ok()?;
            out.extend_from_slice(&lit);
            continue;
        }
        return Some(out);
    }
}

struct Runner {
    vars: HashMap<String, String>,
    seqmap: Vec<u32>,
}

impl Runner {
    fn relative_seq(&self, n: u32) -> String {
        match self.seqmap.get((n as usize).wrapping_sub(1)) {
            Some(0) => "<expunged>".into(),
            Some(v) => v.to_string(),
            None => "<out of range>".into(),
        }
    }

    /// Expand variables in a command; unbound ones are an error.
    fn expand_command(&self, s: &str) -> Result<String, String> {
        let b = s.as_bytes();
        let mut out = String::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'$' || i + 1 == b.len() {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            i += 1;
            if b[i] == b'$' {
                out.push('$');
                i += 1;
                continue;
            }
            let name = if b[i] == b'{' {
                let end = s[i..].find('}').ok_or("missing }")? + i;
                let n = &s[i + 1..end];
                i = end + 1;
                n.to_string()
            } else {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                s[start..i].to_string()
            };
            if let Ok(n) = name.parse::<u32>() {
                out.push_str(&self.relative_seq(n));
            } else {
                out.push_str(
                    self.vars
                        .get(&name)
                        .ok_or_else(|| format!("uninitialized variable ${name}"))?,
                );
            }
        }
        Ok(out)
    }

    /// Match a pattern string against input, binding unbound variables (imaptest's
    /// test_expand_input); returns the expanded pattern.
    fn expand_input(&mut self, pat: &str, input: &str) -> Option<String> {
        let p = pat.as_bytes();
        let inp = input.as_bytes();
        let (mut i, mut j) = (0, 0);
        let mut out = String::new();
        while i < p.len() {
            if p[i] != b'$' || p.get(i + 1) == Some(&b'$') {
                if p[i] == b'$' {
                    i += 1;
                }
                if j >= inp.len() || !p[i].eq_ignore_ascii_case(&inp[j]) {
                    return None;
                }
                out.push(p[i] as char);
                i += 1;
                j += 1;
                continue;
            }
            i += 1;
            let name = if p.get(i) == Some(&b'{') {
                let end = pat[i..].find('}')? + i;
                let n = pat[i + 1..end].to_string();
                i = end + 1;
                n
            } else {
                let start = i;
                while i < p.len() && (p[i].is_ascii_alphanumeric() || p[i] == b'_') {
                    i += 1;
                }
                pat[start..i].to_string()
            };
            let value = if let Ok(n) = name.parse::<u32>() {
                self.relative_seq(n)
            } else if let Some(v) = (!name.is_empty()).then(|| self.vars.get(&name)).flatten() {
                v.clone()
            } else {
                // Unbound: take the input up to the next literal character of the pattern.
                let stop = p.get(i).copied();
                let mut k = j;
                while k < inp.len() && stop.is_none_or(|c| !c.eq_ignore_ascii_case(&inp[k])) {
                    k += 1;
                }
                let v = input[j..k].to_string();
                if !name.is_empty() {
                    self.vars.insert(name, v.clone());
                }
                v
            };
            if !input[j..].starts_with(&value) {
                return None;
            }
            j += value.len();
            out.push_str(&value);
        }
        Some(out)
    }

    fn match_args(&mut self, pat: &[Arg], act: &[Arg], prefix: bool) -> bool {
        let mut a = 0;
        for (k, m) in pat.iter().enumerate() {
            let last = k + 1 == pat.len();
            match m {
                Arg::Nil => {
                    if act.get(a) != Some(&Arg::Nil) {
                        return false;
                    }
                }
                Arg::Atom(ms) | Arg::Str(ms) => {
                    if ms == "$" && matches!(act.get(a), Some(Arg::List(_))) {
                        a += 1;
                        continue;
                    }
                    if ms == "$]" {
                        while act
                            .get(a)
                            .and_then(Arg::text)
                            .is_some_and(|s| !s.contains(']'))
                        {
                            a += 1;
                        }
                        a += 1;
                        continue;
                    }
                    let Some(astr) = act.get(a).and_then(Arg::text) else {
                        return false;
                    };
                    let astr = astr.to_string();
                    let Some(expanded) = self.expand_input(ms, &astr) else {
                        return false;
                    };
                    let ok = if prefix && last {
                        astr.len() >= expanded.len()
                            && astr[..expanded.len()].eq_ignore_ascii_case(&expanded)
                    } else {
                        astr.eq_ignore_ascii_case(&expanded)
                    };
                    if !ok {
                        return false;
                    }
                }
                Arg::List(ml) => {
                    let Some(Arg::List(al)) = act.get(a) else {
                        return false;
                    };
                    let al = al.clone();
                    if !self.match_list(ml, &al) {
                        return false;
                    }
                }
            }
            a += 1;
        }
        prefix || a >= act.len()
    }

    fn match_list(&mut self, pat: &[Arg], act: &[Arg]) -> bool {
        let mut unordered = false;
        let mut chain = 1usize;
        let mut noextra: Option<bool> = None;
        let mut ignores = Vec::new();
        let mut bans = Vec::new();
        let mut k = 0;
        while let Some(s) = pat
            .get(k)
            .and_then(Arg::text)
            .filter(|s| s.starts_with("$!"))
        {
            let d = &s[2..];
            if let Some(rest) = d.strip_prefix("unordered") {
                unordered = true;
                noextra.get_or_insert(false);
                if let Some(n) = rest.strip_prefix('=') {
                    chain = n.parse().unwrap_or(1).max(1);
                }
            } else if d == "ordered" {
                unordered = false;
            } else if d == "extra" {
                noextra = Some(false);
            } else if d == "noextra" {
                noextra = Some(true);
            } else if let Some(e) = d.strip_prefix("ignore=") {
                ignores.push(e.to_string());
            } else if let Some(e) = d.strip_prefix("ban=") {
                bans.push(e.to_string());
            }
            k += 1;
        }
        let pat = &pat[k..];
        let noextra = noextra.unwrap_or(true);
        if !unordered {
            return self.match_args(pat, act, false);
        }
        if !act.len().is_multiple_of(chain) || !pat.len().is_multiple_of(chain) {
            return false;
        }
        let mut matched = vec![false; act.len()];
        for pc in pat.chunks(chain) {
            let mut found = false;
            for i in (0..act.len()).step_by(chain) {
                let saved = self.vars.clone();
                if self.match_args(pc, &act[i..i + chain], false) {
                    matched[i] = true;
                    found = true;
                    break;
                }
                self.vars = saved;
            }
            if !found {
                return false;
            }
        }
        for i in (0..act.len()).step_by(chain) {
            if matched[i] {
                continue;
            }
            let Some(s) = act[i].text() else { continue };
            if noextra && !ignores.iter().any(|x| x.eq_ignore_ascii_case(s)) {
                return false;
            }
            if !noextra && bans.iter().any(|x| x.eq_ignore_ascii_case(s)) {
                return false;
            }
        }
        true
    }

    fn handle_expunge(&mut self, seq: u32) {
        if seq as usize > self.seqmap.len() {
            return;
        }
        for s in self.seqmap.iter_mut().skip(seq as usize - 1) {
            if *s == seq {
                *s = 0;
            } else if *s > seq {
                *s -= 1;
            }
        }
    }
}

async fn send(c: &mut Conn, line: &[u8]) -> Result<String, String> {
    c.next_tag += 1;
    let tag = format!("t{}", c.next_tag);
    let mut buf = format!("{tag} ").into_bytes();
    buf.extend_from_slice(line);
    buf.extend_from_slice(b"\r\n");
    c.w.write_all(&buf).await.map_err(|e| e.to_string())?;
    Ok(tag)
}

/// Read until every tag in `tags` is answered; (untagged, tagged by tag).
async fn collect(
    c: &mut Conn,
    tags: &[String],
) -> Result<(Vec<Vec<Arg>>, HashMap<String, Vec<Arg>>), String> {
    let mut untagged = Vec::new();
    let mut tagged = HashMap::new();
    while tagged.len() < tags.len() {
        let resp = tokio::time::timeout(Duration::from_secs(10), read_response(&mut c.r))
            .await
            .map_err(|_| "timed out waiting for the server".to_string())?;
        let Some(resp) = resp else {
            c.closed = true;
            if untagged
                .iter()
                .any(|u: &Vec<Arg>| u.first().is_some_and(|a| a.is("bye")))
            {
                break;
            }
            return Err("connection closed".into());
        };
        let args = parse_args(&resp);
        let Some(first) = args.first().and_then(Arg::text).map(str::to_string) else {
            continue;
        };
        if first == "*" {
            let rest = args[1..].to_vec();
            if rest.len() >= 2 && rest[1].is("exists") {
                c.exists = rest[0]
                    .text()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(c.exists);
            }
            untagged.push(rest);
        } else if first == "+" {
            // A continuation: this runner only sends non-synchronizing literals.
        } else if tags.contains(&first) {
            tagged.insert(first, args[1..].to_vec());
        }
    }
    Ok((untagged, tagged))
}

/// A command line for the wire: APPEND without a message gets the next mbox message.
fn wire_command(line: &str, mbox: &[Vec<u8>], next_msg: &mut usize) -> Vec<u8> {
    let lower = line.to_ascii_lowercase();
    let is_append = lower == "append" || lower.starts_with("append ");
    if is_append && !line.contains('{') {
        let args = if lower == "append" {
            MAILBOX.to_string()
        } else {
            line[7..].to_string()
        };
        let msg = if mbox.is_empty() {
            b"Subject: x\r\n\r\nbody\r\n".to_vec()
        } else {
            let m = mbox[*next_msg % mbox.len()].clone();
            *next_msg += 1;
            m
        };
        let mut out = format!("APPEND {args} {{{}+}}\r\n", msg.len()).into_bytes();
        out.extend_from_slice(&msg);
        return out;
    }
    // Literals written inline in a script line are sent non-synchronizing (LITERAL+).
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{'
            && let Some(close) = line[i..].find('}').map(|p| p + i)
            && line[i + 1..close].chars().all(|c| c.is_ascii_digit())
            && close > i + 1
            && line[close + 1..].starts_with("\r\n")
        {
            out.extend_from_slice(&b[i..close]);
            out.extend_from_slice(b"+}");
            i = close + 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

async fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (r, w) = s.into_split();
    let mut c = Conn {
        r: BufReader::new(r),
        w,
        exists: 0,
        next_tag: 0,
        closed: false,
    };
    read_response(&mut c.r).await.ok_or("no greeting")?;
    Ok(c)
}

async fn simple(c: &mut Conn, line: &[u8]) -> Result<Vec<Arg>, String> {
    let tag = send(c, line).await?;
    let (_, tagged) = collect(c, std::slice::from_ref(&tag)).await?;
    let t = tagged.get(&tag).cloned().unwrap_or_default();
    if !t.first().is_some_and(|a| a.is("ok")) {
        return Err(format!(
            "setup {:?}: {}",
            String::from_utf8_lossy(line),
            show(&t)
        ));
    }
    Ok(t)
}

/// Run one script against a fresh server; Ok(()) when every command group matched.
async fn run_script(script: &Script, mbox: &[Vec<u8>]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut users = Users::new(&["example.test".into()]);
    users
        .add_spec(&format!("{USER}:{PASSWORD}"), "imaptest")
        .map_err(|e| e.to_string())?;
    let mut cfg = MailboxConfig::new(dir.path().to_path_buf(), users);
    cfg.imap = Some("127.0.0.1:0".parse().unwrap());
    cfg.dns = Some(fake_dns::resolver_for("127.0.0.1:9".parse().unwrap()));
    cfg.login.failure_delay = Duration::from_millis(10);
    let srv = server::start(cfg).await.map_err(|e| e.to_string())?;
    let addr = srv.imap.unwrap();
    let result = async {
        let mut conns = Vec::new();
        for _ in 0..script.connections {
            conns.push(connect(addr).await?);
        }
        let mut next_msg = 0;
        if script.state != "nonauth" {
            for c in conns.iter_mut() {
                simple(c, format!("LOGIN {USER} {PASSWORD}").as_bytes()).await?;
            }
        }
        if matches!(script.state.as_str(), "created" | "appended" | "selected") {
            simple(&mut conns[0], format!("CREATE {MAILBOX}").as_bytes()).await?;
        }
        if matches!(script.state.as_str(), "appended" | "selected") {
            let n = script.messages.unwrap_or(mbox.len());
            for _ in 0..n {
                let cmd = wire_command("append", mbox, &mut next_msg);
                simple(&mut conns[0], &cmd).await?;
            }
        }
        if script.state == "selected" {
            for c in conns.iter_mut() {
                simple(c, format!("SELECT {MAILBOX}").as_bytes()).await?;
            }
        }
        let mut runner = Runner {
            vars: HashMap::from([
                ("mailbox".to_string(), MAILBOX.to_string()),
                ("user".to_string(), USER.to_string()),
                ("username".to_string(), "bob".to_string()),
                ("domain".to_string(), "example.test".to_string()),
                ("password".to_string(), PASSWORD.to_string()),
            ]),
            seqmap: vec![],
        };
        for g in &script.groups {
            let c = conns
                .get_mut(g.conn)
                .ok_or_else(|| format!("no connection {}", g.conn + 1))?;
            if c.closed {
                return Err(format!(
                    "line {}: connection already closed",
                    g.cmds[0].linenum
                ));
            }
            runner.seqmap = (1..=c.exists).collect();
            let mut tags = Vec::new();
            for cmd in &g.cmds {
                let line = runner
                    .expand_command(&cmd.line)
                    .map_err(|e| format!("line {}: {e}", cmd.linenum))?;
                let wire = wire_command(&line, mbox, &mut next_msg);
                tags.push(send(c, &wire).await?);
            }
            let (untagged, tagged) = collect(c, &tags)
                .await
                .map_err(|e| format!("line {}: {e}", g.cmds[0].linenum))?;
            let mut found = vec![false; g.untagged.len()];
            for u in &untagged {
                let mut matched_any = false;
                for (i, e) in g.untagged.iter().enumerate() {
                    if found[i] {
                        continue;
                    }
                    let saved = runner.vars.clone();
                    let prefix = u
                        .first()
                        .is_some_and(|a| a.is("ok") || a.is("no") || a.is("bad") || a.is("bye"));
                    if runner.match_args(&e.args, u, prefix) {
                        if e.existence == Existence::MustNot {
                            return Err(format!(
                                "line {}: unexpected untagged reply: {}",
                                g.cmds[0].linenum,
                                show(u)
                            ));
                        }
                        found[i] = true;
                        matched_any = true;
                    } else {
                        runner.vars = saved;
                    }
                }
                if !matched_any && !script.ignore_extra {
                    return Err(format!(
                        "line {}: extra untagged reply {}",
                        g.cmds[0].linenum,
                        show(u)
                    ));
                }
                if u.len() >= 2 && u[1].is("expunge") {
                    if let Some(seq) = u[0].text().and_then(|s| s.parse().ok()) {
                        runner.handle_expunge(seq);
                    }
                    c.exists = c.exists.saturating_sub(1);
                }
            }
            for (i, e) in g.untagged.iter().enumerate() {
                if e.existence == Existence::Must && !found[i] {
                    return Err(format!(
                        "line {}: missing untagged reply {} (got: {})",
                        g.cmds[0].linenum,
                        show(&e.args),
                        untagged
                            .iter()
                            .map(|u| show(u))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
            }
            for (cmd, tag) in g.cmds.iter().zip(&tags) {
                let status = cmd.status.clone().unwrap_or_default();
                if status.is_empty() {
                    continue;
                }
                let got = tagged.get(tag).cloned().unwrap_or_default();
                let mut pat = vec![Arg::Atom(status.clone())];
                pat.extend(parse_args(cmd.prefix.as_bytes()));
                if !runner.match_args(&pat, &got, true) {
                    return Err(format!(
                        "line {}: {} expected {} {}, got {}",
                        cmd.linenum,
                        cmd.line,
                        status,
                        cmd.prefix,
                        show(&got)
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    srv.shutdown().await;
    result
}

/// The capabilities our server announces after login.
const OUR_CAPABILITIES: &[&str] = &["IMAP4REV1", "LITERAL+", "IDLE", "UNSELECT", "MOVE"];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/imaptest/scripts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imaptest_scripts() {
    let dir = data_dir();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_none())
        .collect();
    names.sort();
    let default_mbox = mbox_messages(&dir.join("default.mbox"));
    let (mut passed, mut failed, mut skipped) = (vec![], vec![], vec![]);
    for path in &names {
        let script = match parse_script(path) {
            Ok(s) => s,
            Err(e) => {
                failed.push((path.display().to_string(), format!("unparsable: {e}")));
                continue;
            }
        };
        if script
            .capabilities
            .iter()
            .any(|c| !OUR_CAPABILITIES.contains(&c.as_str()))
        {
            skipped.push(script.name.clone());
            continue;
        }
        let own = path.with_extension("mbox");
        let mbox = if own.exists() {
            mbox_messages(&own)
        } else {
            default_mbox.clone()
        };
        match run_script(&script, &mbox).await {
            Ok(()) => passed.push(script.name.clone()),
            Err(e) => failed.push((script.name.clone(), e)),
        }
    }
    let run = passed.len() + failed.len();
    println!(
        "imaptest: {} of {} scripts passed ({:.0}%); {} skipped (extensions not offered: {})",
        passed.len(),
        run,
        100.0 * passed.len() as f64 / run.max(1) as f64,
        skipped.len(),
        skipped.join(" ")
    );
    println!("passed: {}", passed.join(" "));
    for (name, why) in &failed {
        println!(
            "FAILED {name}: {}",
            why.chars().take(600).collect::<String>()
        );
    }
    let listed: Vec<String> = std::fs::read_to_string(dir.join("../PASSING"))
        .expect("tests/data/imaptest/PASSING")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut problems = Vec::new();
    for name in &listed {
        if let Some((_, why)) = failed.iter().find(|(n, _)| n == name) {
            problems.push(format!(
                "{name} is listed as passing but failed: {}",
                why.chars().take(300).collect::<String>()
            ));
        } else if !passed.contains(name) {
            problems.push(format!("{name} is listed as passing but did not run"));
        }
    }
    for name in passed.iter().filter(|n| !listed.contains(n)) {
        problems.push(format!("{name} passes: add it to PASSING"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
