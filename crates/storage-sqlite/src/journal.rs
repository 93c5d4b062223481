//! The archive journal: archive appends made durable against a crash of the server process
//! before SQLite commits them.
//!
//! Every one-to-one message is archived twice, and delivery must not run ahead of the
//! archive (a message a recipient has received is in both archives, even after a SIGKILL).
//! Waiting for SQLite's commit put a transaction on every message's path: batches stayed
//! as small as the sessions with a message in flight, each commit wrote a whole page for
//! every index leaf it touched, and a commit queued behind the checkpointer's `fsync`
//! stalled every delivery waiting on it. The journal takes the commit off that path:
//!
//! * An append is encoded as one record and copied into a file mapped with `MAP_SHARED`.
//!   Once the copy is done the record is in the kernel's page cache, which outlives the
//!   process: that is the durability a commit gives under `synchronous=NORMAL` (it too
//!   survives a crash of the process, not of the machine), for the cost of a `memcpy` and
//!   no system call.
//! * The record then goes to the archive writer's queue, in journal order, and the writer
//!   commits records in large batches, storing in the same transaction the journal
//!   position it has reached (`archive_journal`). Reads of the archive wait until the
//!   writer has committed everything journaled before them, so a client never sees its
//!   archive without a message it has received.
//! * At open, the records after the stored position are committed before anything else
//!   runs, and the journal starts over in a new segment.
//!
//! Segments are files of [`SEGMENT_BYTES`] named by a number that only grows. A record is
//! `[payload length u32][CRC-32 of the payload u32][payload]`, little-endian; a segment
//! ends at the first length of zero (the rest of the file was never written) or the first
//! record whose checksum fails (the process died while copying it: it was never
//! acknowledged). A segment is deleted once the writer has committed a record of a later
//! one.
//!
//! One process owns a journal at a time (an `flock` on `lock`): the server. A second
//! process on the same database (the CLI while the server runs) does not get it and
//! commits its appends directly, as every append was committed before the journal.
//!
//! Written by hand because what it does is small and specific: the crates that offer
//! write-ahead logs bring their own file formats, threads and `fsync` policies, and the
//! point here is an append with no system call.

use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use rookery_storage::ArchiveEntry;

/// The size of a segment file. A record larger than a segment is not journaled (the
/// caller commits it directly); stanzas are limited far below this.
pub(crate) const SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// Bytes before a record's payload: its length and checksum.
const HEADER: usize = 8;

/// Where a record ends: the segment and the offset just past it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// One archive append, as journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// Which archive table (see [`crate::archive::Table::tag`]).
    pub table: u8,
    pub domain: String,
    pub user: String,
    pub entry: ArchiveEntry,
}

/// Encodes a record (header included) into `out`, which is cleared first.
pub(crate) fn encode(out: &mut Vec<u8>, table: u8, domain: &str, user: &str, e: &ArchiveEntry) {
    out.clear();
    out.extend_from_slice(&[0; HEADER]);
    out.push(table);
    out.extend_from_slice(&e.timestamp_us.to_le_bytes());
    for s in [
        domain,
        user,
        &e.id,
        &e.with_bare,
        &e.with_resource,
        &e.stanza,
    ] {
        // Strings are bounded by the stanza limits, far below 4 GiB.
        out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let len = u32::try_from(out.len() - HEADER).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(&out[HEADER..]);
    out[0..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A record's fields, borrowed from its encoding.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub table: u8,
    pub domain: &'a str,
    pub user: &'a str,
    pub id: &'a str,
    pub timestamp_us: i64,
    pub with_bare: &'a str,
    pub with_resource: &'a str,
    /// UTF-8, as encoded from a `&str`, but left as bytes: the stanza is most of a record,
    /// and checking it again was a tenth of the archive writer's time. [`fields`] reads the
    /// records this process encoded a moment ago; [`decode`], which reads records back from
    /// disk, checks it.
    pub stanza: &'a [u8],
}

impl Record {
    pub(crate) fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            table: self.table,
            domain: &self.domain,
            user: &self.user,
            id: &self.entry.id,
            timestamp_us: self.entry.timestamp_us,
            with_bare: &self.entry.with_bare,
            with_resource: &self.entry.with_resource,
            stanza: self.entry.stanza.as_bytes(),
        }
    }
}

/// The fields of a record this process encoded, header included ([`encode`]); None if it is
/// malformed. The stanza is not checked to be UTF-8 (see [`RecordRef::stanza`]).
pub(crate) fn fields(record: &[u8]) -> Option<RecordRef<'_>> {
    decode_ref(record.get(HEADER..)?)
}

/// A field that must be UTF-8 text.
fn text(s: &[u8]) -> Option<&str> {
    std::str::from_utf8(s).ok()
}

/// Decodes a payload in place; None if it is malformed.
fn decode_ref(payload: &[u8]) -> Option<RecordRef<'_>> {
    let (&table, rest) = payload.split_first()?;
    let (ts, mut rest) = rest.split_at_checked(8)?;
    let timestamp_us = i64::from_le_bytes(ts.try_into().ok()?);
    let mut next = || -> Option<&[u8]> {
        let (len, tail) = rest.split_at_checked(4)?;
        let len = usize::try_from(u32::from_le_bytes(len.try_into().ok()?)).ok()?;
        let (s, tail) = tail.split_at_checked(len)?;
        rest = tail;
        Some(s)
    };
    let (domain, user, id, with_bare, with_resource) = (
        text(next()?)?,
        text(next()?)?,
        text(next()?)?,
        text(next()?)?,
        text(next()?)?,
    );
    let stanza = next()?;
    if !rest.is_empty() {
        return None;
    }
    Some(RecordRef {
        table,
        domain,
        user,
        id,
        timestamp_us,
        with_bare,
        with_resource,
        stanza,
    })
}

/// Decodes a payload; None if it is malformed (then the checksum matched by accident, or
/// the file was damaged: the segment ends there).
fn decode(payload: &[u8]) -> Option<Record> {
    let r = decode_ref(payload)?;
    Some(Record {
        table: r.table,
        domain: r.domain.to_owned(),
        user: r.user.to_owned(),
        entry: ArchiveEntry {
            id: r.id.to_owned(),
            timestamp_us: r.timestamp_us,
            with_bare: r.with_bare.to_owned(),
            with_resource: r.with_resource.to_owned(),
            // From disk: checked here (see `RecordRef::stanza`).
            stanza: String::from_utf8(r.stanza.to_vec()).ok()?,
        },
    })
}

/// The records of one segment's bytes from `offset` on, each with the position it ends at.
fn scan(segment: u64, bytes: &[u8], offset: usize) -> Vec<(Position, Record)> {
    let mut out = Vec::new();
    let mut at = offset;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(record) = decode(payload) else {
            break;
        };
        at += HEADER + len;
        out.push((
            Position {
                segment,
                offset: at as u64,
            },
            record,
        ));
    }
    out
}

/// The journal directory of the database at `db`.
pub(crate) fn dir_of(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".archive-journal");
    PathBuf::from(name)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.log"))
}

/// The segment numbers in `dir`, ascending.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// A journal directory this process owns (it holds the lock), before it is written to.
pub(crate) struct Claim {
    dir: PathBuf,
    lock: File,
}

impl Claim {
    /// Takes the journal of the database at `db`, creating its directory (private to the
    /// owner: records hold messages). None when another process holds it.
    pub(crate) fn take(db: &Path) -> io::Result<Option<Claim>> {
        let dir = dir_of(db);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a descriptor this function owns; it only takes an advisory lock.
        let got = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if got != 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            };
        }
        Ok(Some(Claim { dir, lock }))
    }

    /// The records after `applied`, in journal order.
    pub(crate) fn leftovers(&self, applied: Position) -> io::Result<Vec<(Position, Record)>> {
        let mut out = Vec::new();
        for segment in segments(&self.dir)? {
            if segment < applied.segment {
                continue;
            }
            let bytes = std::fs::read(segment_path(&self.dir, segment))?;
            let from = if segment == applied.segment {
                usize::try_from(applied.offset).unwrap_or(usize::MAX)
            } else {
                0
            };
            out.extend(scan(segment, &bytes, from));
        }
        Ok(out)
    }

    /// Starts journaling after every existing segment has been committed (`applied` is at
    /// or past their records): they are deleted, and the first segment written is
    /// numbered after all of them.
    pub(crate) fn start(self, applied: Position) -> io::Result<Journal> {
        let existing = segments(&self.dir)?;
        for &segment in &existing {
            std::fs::remove_file(segment_path(&self.dir, segment))?;
        }
        let last = existing.last().copied().unwrap_or(0).max(applied.segment);
        Ok(Journal {
            dir: self.dir,
            _lock: self.lock,
            segment: last,
            map: None,
            pos: 0,
        })
    }
}

/// The journal being written. Appends must be serialised (the caller holds a lock) and
/// queued to the writer in the order they were written.
pub(crate) struct Journal {
    dir: PathBuf,
    /// Held for the life of the journal: the `flock` goes with the descriptor.
    _lock: File,
    /// The current segment's number (the last one used when `map` is None).
    segment: u64,
    /// The current segment, mapped; None until the first append (a process that never
    /// archives anything, like most CLI commands, creates no file).
    map: Option<MmapMut>,
    /// Where the next record goes in the current segment.
    pos: usize,
}

impl Journal {
    /// The journal's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first segment this journal will write.
    pub(crate) fn first_segment(&self) -> u64 {
        self.segment + 1
    }

    /// Copies an encoded record (see [`encode`]) into the journal and returns where it
    /// ends; None when it is larger than a segment (the caller commits it directly).
    /// Err when a new segment cannot be made (the file system is full, say).
    pub(crate) fn append(&mut self, record: &[u8]) -> io::Result<Option<Position>> {
        if record.len() > SEGMENT_BYTES {
            return Ok(None);
        }
        if self.map.is_none() || self.pos + record.len() > SEGMENT_BYTES {
            self.map = Some(self.next_segment()?);
            self.pos = 0;
        }
        let Some(map) = self.map.as_mut() else {
            return Ok(None);
        };
        map[self.pos..self.pos + record.len()].copy_from_slice(record);
        self.pos += record.len();
        Ok(Some(Position {
            segment: self.segment,
            offset: self.pos as u64,
        }))
    }

    /// Creates and maps the next segment. The file is sized up front; its pages are
    /// allocated as they are first written.
    fn next_segment(&mut self) -> io::Result<MmapMut> {
        let segment = self.segment + 1;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(segment_path(&self.dir, segment))?;
        file.set_len(SEGMENT_BYTES as u64)?;
        // SAFETY: the file was just created by this process, which holds the journal's
        // lock, so no one else maps, truncates or writes it while it is mapped.
        let map = unsafe { MmapMut::map_mut(&file)? };
        self.segment = segment;
        Ok(map)
    }
}

/// Deletes the segments before `position`'s: the writer has committed a record of that
/// segment, so every record of the earlier ones is committed. `from` is the first
/// segment that may still exist; returns the new one.
pub(crate) fn retire(dir: &Path, from: u64, position: Position) -> u64 {
    for segment in from..position.segment {
        match std::fs::remove_file(segment_path(dir, segment)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(segment, error = %e, "cannot delete an archive journal segment")
            }
        }
    }
    from.max(position.segment)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> ArchiveEntry {
        ArchiveEntry {
            id: format!("id{i}"),
            timestamp_us: 1_700_000_000_000_000 + i as i64,
            with_bare: "bob@example.org".into(),
            with_resource: if i % 2 == 0 {
                "phone".into()
            } else {
                String::new()
            },
            stanza: format!("<message xmlns='jabber:client'><body>{i} é</body></message>"),
        }
    }

    /// A new journal for the database at `db`, nothing committed yet.
    fn fresh(db: &Path) -> Journal {
        Claim::take(db)
            .expect("take")
            .expect("free")
            .start(Position::default())
            .expect("start")
    }

    fn write(journal: &mut Journal, i: usize) -> Position {
        let mut buf = Vec::new();
        encode(&mut buf, (i % 2) as u8, "example.org", "alice", &entry(i));
        journal.append(&buf).expect("append").expect("fits")
    }

    /// The fields read in place from an encoding are the ones encoded, and so are those
    /// decoded as read back from disk; a cut or padded encoding reads as nothing, and so
    /// does one with a field that is not UTF-8 (the stanza is checked only when read back).
    #[test]
    fn fields_are_read_in_place() {
        let e = entry(4);
        let mut buf = Vec::new();
        encode(&mut buf, 1, "example.org", "alice", &e);
        let r = fields(&buf).expect("fields");
        assert_eq!((r.table, r.domain, r.user), (1, "example.org", "alice"));
        assert_eq!(
            (r.id, r.timestamp_us, r.with_bare, r.with_resource, r.stanza),
            (
                e.id.as_str(),
                e.timestamp_us,
                e.with_bare.as_str(),
                e.with_resource.as_str(),
                e.stanza.as_bytes()
            )
        );
        assert!(fields(&buf[..buf.len() - 1]).is_none());
        let mut padded = buf.clone();
        padded.push(0);
        assert!(fields(&padded).is_none());
        assert!(fields(&buf[..HEADER - 1]).is_none());

        // A stanza that is not UTF-8 (a damaged file whose checksum matched): read back from
        // disk it ends the segment; the other fields are checked on either path.
        let mut damaged = buf.clone();
        let last = damaged.len() - 1;
        damaged[last] = 0xff;
        assert!(decode(&damaged[HEADER..]).is_none());
        let mut bad_user = buf.clone();
        let at = bad_user
            .windows(5)
            .position(|w| w == b"alice")
            .expect("user");
        bad_user[at] = 0xff;
        assert!(fields(&bad_user).is_none());
        assert!(decode(&bad_user[HEADER..]).is_none());
        let owned = decode(&buf[HEADER..]).expect("decode");
        assert_eq!(owned.entry, e);
        assert_eq!(owned.as_ref().stanza, e.stanza.as_bytes());
    }

    #[test]
    fn records_round_trip_and_resume_after_the_applied_position() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("r.db");
        let claim = Claim::take(&db).expect("take").expect("free");
        let mut journal = claim.start(Position::default()).expect("start");
        let positions: Vec<_> = (0..10).map(|i| write(&mut journal, i)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        // A second claim in the same process is refused while the journal is held.
        assert!(Claim::take(&db).expect("take").is_none());
        drop(journal);

        let claim = Claim::take(&db).expect("take").expect("free after drop");
        let all = claim.leftovers(Position::default()).expect("scan");
        assert_eq!(all.len(), 10);
        for (i, (pos, rec)) in all.iter().enumerate() {
            assert_eq!(*pos, positions[i]);
            assert_eq!(rec.entry, entry(i));
            assert_eq!(rec.table, (i % 2) as u8);
            assert_eq!(
                (rec.domain.as_str(), rec.user.as_str()),
                ("example.org", "alice")
            );
        }
        let rest = claim.leftovers(positions[6]).expect("scan");
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].1.entry, entry(7));
        // Starting over deletes the old segment and numbers the next one after it.
        let mut journal = claim.start(positions[9]).expect("start");
        assert_eq!(journal.first_segment(), positions[0].segment + 1);
        let p = write(&mut journal, 11);
        assert_eq!(p.segment, positions[0].segment + 1);
        assert_eq!(segments(journal.dir()).expect("list"), vec![p.segment]);
    }

    #[test]
    fn a_torn_or_damaged_record_ends_the_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("r.db");
        let mut journal = fresh(&db);
        let positions: Vec<_> = (0..3).map(|i| write(&mut journal, i)).collect();
        drop(journal);
        let path = segment_path(&dir_of(&db), positions[0].segment);
        // A process killed while copying the third record leaves part of it.
        let mut bytes = std::fs::read(&path).expect("read");
        let third = positions[1].offset as usize;
        bytes[third + HEADER + 3] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let claim = Claim::take(&db).expect("take").expect("free");
        let found = claim.leftovers(Position::default()).expect("scan");
        assert_eq!(found.len(), 2);
        // Garbage in place of a header is not a record either.
        bytes[0..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert!(claim
            .leftovers(Position::default())
            .expect("scan")
            .is_empty());
    }

    #[test]
    fn a_full_segment_continues_in_the_next_and_retire_deletes_the_old() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let db = tmp.path().join("r.db");
        let mut journal = fresh(&db);
        let first = journal.first_segment();
        let big = vec![b'x'; SEGMENT_BYTES / 3];
        let mut buf = Vec::new();
        let mut e = entry(0);
        e.stanza = String::from_utf8(big).expect("ascii");
        let mut ends = Vec::new();
        for i in 0..4 {
            e.id = format!("big{i}");
            encode(&mut buf, 0, "example.org", "alice", &e);
            ends.push(journal.append(&buf).expect("append").expect("fits"));
        }
        assert_eq!(ends[1].segment, first);
        assert_eq!(
            ends[2].segment,
            first + 1,
            "the third does not fit in the first"
        );
        assert_eq!(
            ends[2].offset as usize,
            buf.len(),
            "it starts the new segment"
        );
        // Larger than a segment: not journaled.
        assert_eq!(
            journal.append(&vec![0; SEGMENT_BYTES + 1]).expect("ok"),
            None
        );
        let dir = journal.dir().to_owned();
        assert_eq!(retire(&dir, first, ends[3]), first + 1);
        assert_eq!(segments(&dir).expect("list"), vec![first + 1]);
        drop(journal);
        let claim = Claim::take(&db).expect("take").expect("free");
        let ids: Vec<_> = claim
            .leftovers(Position::default())
            .expect("scan")
            .into_iter()
            .map(|(_, r)| r.entry.id)
            .collect();
        assert_eq!(ids, ["big2", "big3"]);
    }
}
