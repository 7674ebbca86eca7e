//! The event schema, the durable event log and the clock seam shared by every mailsim crate.
//!
//! * [`Event`] is one variant per kind of state change (message injected, SMTP reply received,
//!   delivered, deferred, bounced, expired, and on the receiving side session, verdicts, stored).
//! * [`Record`] wraps an event with its sequence number `seq` and timestamp `ts` (ms since the
//!   Unix epoch, from the injected [`Clock`]).
//! * [`log::EventLog`] appends records to a file with per-record CRC32 checksums, group-commits
//!   them (one fsync per batch) on a writer thread, and cuts a torn tail on reopen.
//!   [`log::read_log`] reads a log back; every projection (summary, replay, reports) folds these.
//! * [`RecordView`] is a record as it lies in its binary encoding, its strings borrowed: what a
//!   replay's fold reads without allocating.
//!
//! Data flow: components hold an [`log::EventSink`] (cheap to clone), stamp events with the
//! clock and send them to the writer thread, which assigns `seq` in arrival order.

pub mod binary;
pub mod clock;
pub mod log;
pub mod schema;

pub use binary::SmtpReplyView;
pub use clock::{Clock, RuntimeClock, SystemClock};
pub use log::{
    Damage, Durability, EventLog, EventSink, Format, FrameBatch, LogError, LogReader, LogTail,
    Observer, RepairReport, check_sequence, convert, read_log, repair,
};
pub use schema::{
    Event, EventView, HasShape, Kind, PayloadError, PayloadRecord, Record, RecordView, Reply,
    SCHEMA_VERSION, Shape, SmtpReply,
};
