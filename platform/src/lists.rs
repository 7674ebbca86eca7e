//! Subscriber lists in an embedded SQLite database (`lists.sqlite` in the spool): imported from
//! CSV, each subscriber with the CSV's other columns as substitution fields and a status
//! (`active`, `unsubscribed`, `bounced`, `complained`) that unsubscribes and the suppression
//! list move. A campaign mails the list's active subscribers only.

use crate::inject::check_address;
use rusqlite::{Connection, params};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

pub struct Lists {
    db: Mutex<Connection>,
}

/// What an import did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Imported {
    pub added: u64,
    /// Already on the list: fields replaced, status kept.
    pub updated: u64,
}

/// One subscriber to mail.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    pub email: String,
    pub fields: Map<String, Value>,
}

/// A list name: letters, digits, `-`, `_`, `.` (it is named in URLs and on command lines).
pub fn check_list_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "{name:?} is not a list name (1 to 64 letters, digits, '-', '_' or '.')"
        ));
    }
    Ok(())
}

impl Lists {
    /// Open (or make) the database at `path`.
    pub fn open(path: &Path) -> Result<Lists, String> {
        let db = Connection::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // Another process (an import beside the MTA's campaigns) may hold the write lock.
        db.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS subscribers (
                 list TEXT NOT NULL,
                 email TEXT NOT NULL,
                 fields TEXT NOT NULL,
                 status TEXT NOT NULL DEFAULT 'active',
                 PRIMARY KEY (list, email)
             );
             CREATE INDEX IF NOT EXISTS subscribers_by_email ON subscribers (email);",
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        Lists::create_campaign_tables(&db).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Lists { db: Mutex::new(db) })
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Import a CSV (RFC 4180, a header row naming an `email` column; every other column is a
    /// substitution field) into `list`, all rows or none: an error names `source`, the line and
    /// the column.
    pub fn import_csv(
        &self,
        list: &str,
        csv: impl std::io::Read,
        source: &str,
    ) -> Result<Imported, String> {
        check_list_name(list)?;
        let rows: Vec<(String, String)> = read_csv(csv, source)?
            .into_iter()
            .map(|s| (s.email, Value::Object(s.fields).to_string()))
            .collect();
        let mut db = self.db();
        let tx = db.transaction().map_err(|e| e.to_string())?;
        let mut done = Imported::default();
        for (email, fields) in rows {
            let existed: bool = tx
                .query_row(
                    "SELECT 1 FROM subscribers WHERE list = ?1 AND email = ?2",
                    params![list, email],
                    |_| Ok(true),
                )
                .unwrap_or(false);
            tx.execute(
                "INSERT INTO subscribers (list, email, fields) VALUES (?1, ?2, ?3)
                 ON CONFLICT (list, email) DO UPDATE SET fields = excluded.fields",
                params![list, email, fields],
            )
            .map_err(|e| e.to_string())?;
            if existed {
                done.updated += 1;
            } else {
                done.added += 1;
            }
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(done)
    }

    /// The list's active subscribers, in address order. `suppressed` says why an address may
    /// not be mailed (the MTA's suppression list); such a subscriber's status becomes
    /// `unsubscribed`, `complained` or `bounced` and it is left out.
    pub fn active(
        &self,
        list: &str,
        suppressed: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<Subscriber>, String> {
        let mut db = self.db();
        let rows: Vec<(String, String)> = {
            let mut stmt = db
                .prepare(
                    "SELECT email, fields FROM subscribers WHERE list = ?1 AND status = 'active' ORDER BY email",
                )
                .map_err(|e| e.to_string())?;
            stmt.query_map(params![list], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(|e| e.to_string())?
        };
        // The suppressed ones' statuses, in one transaction (an index on email keeps each
        // update a lookup).
        let tx = db.transaction().map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(rows.len());
        for (email, fields) in rows {
            if let Some(reason) = suppressed(&email) {
                let status = status_for(&reason);
                tx.execute(
                    &format!(
                        "UPDATE subscribers SET status = ?1 WHERE email = ?2 AND {RANK} < {}",
                        rank_of(status)
                    ),
                    params![status, email],
                )
                .map_err(|e| e.to_string())?;
                continue;
            }
            let fields = match serde_json::from_str(&fields) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            out.push(Subscriber { email, fields });
        }
        tx.commit().map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Set `email`'s status on every list (an unsubscribe, a bounce, a complaint), where it is
    /// weaker: `active` < `unsubscribed` < `bounced` < `complained` (an unsubscribe does not
    /// hide a complaint, a complaint does replace an unsubscribe).
    pub fn set_status(&self, email: &str, status: &str) -> Result<(), String> {
        self.db()
            .execute(
                &format!(
                    "UPDATE subscribers SET status = ?1 WHERE email = ?2 AND {RANK} < {}",
                    rank_of(status)
                ),
                params![status, email.to_ascii_lowercase()],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Is there a list of this name (with any subscriber)?
    pub fn exists(&self, list: &str) -> Result<bool, String> {
        self.db()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM subscribers WHERE list = ?1)",
                params![list],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())
    }

    /// Subscribers of `list` by status.
    pub fn counts(&self, list: &str) -> Result<BTreeMap<String, u64>, String> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT status, COUNT(*) FROM subscribers WHERE list = ?1 GROUP BY status")
            .map_err(|e| e.to_string())?;
        stmt.query_map(params![list], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })
        .and_then(|rows| rows.collect())
        .map_err(|e| e.to_string())
    }
}

/// Subscribers from a CSV (RFC 4180) with a header row naming an `email` column; every other
/// column is a field. An error names `source`, the line and the column. Addresses are
/// lower-cased.
pub fn read_csv(csv: impl std::io::Read, source: &str) -> Result<Vec<Subscriber>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(csv);
    let headers = reader
        .headers()
        .map_err(|e| format!("{source}: line 1: {e}"))?
        .clone();
    let email_at = headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case("email"))
        .ok_or_else(|| format!("{source}: line 1: no `email` column in the header row"))?;
    let mut seen = std::collections::BTreeSet::new();
    for h in &headers {
        if h.is_empty() {
            return Err(format!("{source}: line 1: a column without a name"));
        }
        if !seen.insert(h.to_ascii_lowercase()) {
            return Err(format!("{source}: line 1: column {h:?} is named twice"));
        }
    }
    // Column names as fields: lower-cased, so that `Name` greets as `name` does.
    let names: Vec<String> = headers.iter().map(|h| h.to_ascii_lowercase()).collect();
    let mut out = Vec::new();
    // The line each address was first read on: an address twice in one file is one of two
    // rows the writer meant differently, refused (an independent review saw the last win).
    let mut first_on: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            format!("{source}: line {line}: {e}")
        })?;
        let line = record.position().map_or(0, |p| p.line());
        let email = record.get(email_at).unwrap_or("").to_ascii_lowercase();
        check_address("email", &email)
            .map_err(|e| format!("{source}: line {line}: column email: {}", e.message))?;
        if let Some(first) = first_on.insert(email.clone(), line) {
            return Err(format!(
                "{source}: line {line}: column email: {email} is already on line {first}"
            ));
        }
        // A field goes into headers as easily as into a body: one line, no control characters.
        if let Some((h, _)) = names
            .iter()
            .zip(record.iter())
            .find(|(_, v)| v.chars().any(char::is_control))
        {
            return Err(format!(
                "{source}: line {line}: column {h}: a field may not hold a line break or control character"
            ));
        }
        let fields: Map<String, Value> = names
            .iter()
            .zip(record.iter())
            .enumerate()
            .filter(|(i, _)| *i != email_at)
            .map(|(_, (h, v))| (h.clone(), Value::String(v.to_string())))
            .collect();
        out.push(Subscriber { email, fields });
    }
    Ok(out)
}

/// A status's strength, as SQL over the `status` column and for one status.
const RANK: &str = "(CASE status WHEN 'unsubscribed' THEN 1 WHEN 'bounced' THEN 2 WHEN 'complained' THEN 3 ELSE 0 END)";

fn rank_of(status: &str) -> u8 {
    match status {
        "unsubscribed" => 1,
        "bounced" => 2,
        "complained" => 3,
        _ => 0,
    }
}

/// The subscriber status a suppression reason stands for.
pub fn status_for(reason: &str) -> &'static str {
    match reason {
        "unsubscribed" | "unengaged" => "unsubscribed",
        "feedback" | "complaint" | "abuse" => "complained",
        _ => "bounced",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_keeps_fields_and_status_and_names_the_bad_line() {
        let dir = tempfile::tempdir().unwrap();
        let lists = Lists::open(&dir.path().join("lists.sqlite")).unwrap();
        let csv = "email,name,city\nAnn@a.test,Ann,Oslo\nbob@b.test,\"Bob, Jr.\",Rome\n";
        let done = lists
            .import_csv("news", csv.as_bytes(), "subs.csv")
            .unwrap();
        assert_eq!(
            done,
            Imported {
                added: 2,
                updated: 0
            }
        );
        lists.set_status("ann@a.test", "unsubscribed").unwrap();
        let again = "email,name,city\nann@a.test,Ann,Bergen\ncy@c.test,Cy,Lyon\n";
        let done = lists
            .import_csv("news", again.as_bytes(), "subs.csv")
            .unwrap();
        assert_eq!(
            done,
            Imported {
                added: 1,
                updated: 1
            }
        );
        let active = lists
            .active("news", |e| (e == "cy@c.test").then(|| "userunknown".into()))
            .unwrap();
        assert_eq!(
            active.len(),
            1,
            "ann unsubscribed (a re-import keeps it), cy bounced"
        );
        assert_eq!(active[0].email, "bob@b.test");
        assert_eq!(active[0].fields["name"], "Bob, Jr.");
        let counts = lists.counts("news").unwrap();
        assert_eq!(counts["active"], 1);
        assert_eq!(counts["unsubscribed"], 1);
        assert_eq!(counts["bounced"], 1);
        // Errors name the file, line and column, and import nothing.
        let bad = "email,name\nok@a.test,Ok\nnot-an-address,Bad\n";
        let e = lists
            .import_csv("news", bad.as_bytes(), "subs.csv")
            .unwrap_err();
        assert!(e.starts_with("subs.csv: line 3: column email:"), "{e}");
        assert_eq!(lists.counts("news").unwrap().values().sum::<u64>(), 3);
        // The same address twice in one file (in any case): refused, naming both lines.
        let twice = "email,name\ndee@d.test,Dee\nok@a.test,Ok\nDEE@d.test,Deirdre\n";
        let e = lists
            .import_csv("news", twice.as_bytes(), "subs.csv")
            .unwrap_err();
        assert_eq!(
            e,
            "subs.csv: line 4: column email: dee@d.test is already on line 2"
        );
        assert_eq!(lists.counts("news").unwrap().values().sum::<u64>(), 3);
        let e = lists
            .import_csv("news", "name\nAnn\n".as_bytes(), "x.csv")
            .unwrap_err();
        assert!(e.contains("no `email` column"), "{e}");
        let e = lists
            .import_csv("news", "email,name\na@a.test,A,extra\n".as_bytes(), "x.csv")
            .unwrap_err();
        assert!(e.starts_with("x.csv: line 2:"), "{e}");
        assert!(lists.import_csv("a b", "email\n".as_bytes(), "x").is_err());
        for (csv, want) in [
            ("email,email\nr@a.test,s@a.test\n", "named twice"),
            ("email,\nr@a.test,v\n", "without a name"),
            (
                "email,name\ng@a.test,\"Evil\nBcc: x@b.test\"\n",
                "line 2: column name",
            ),
        ] {
            let e = lists
                .import_csv("other", csv.as_bytes(), "x.csv")
                .unwrap_err();
            assert!(e.contains(want), "{csv}: {e}");
        }
        assert!(!lists.exists("other").unwrap());
        assert!(lists.exists("news").unwrap());
    }
}
