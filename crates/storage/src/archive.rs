//! Message archives (XEP-0313): the types of [`crate::ArchiveStore`].
//!
//! An archive is one account's list of messages in the order they were archived. Each
//! entry has the stanza id the server gave it (XEP-0359, unique within the archive), a
//! timestamp, the JID of the other party, and the serialised message.
//!
//! Queries select a *result set* ([`ArchiveFilter`]: with, start, end, after-id,
//! before-id, ids) and return one *page* of it ([`PageRequest`], XEP-0059 RSM) of at most
//! `max` entries, always in archive order, with the size of the whole set and the index of
//! the page's first entry in it, so a query never loads more than one page.

/// One archived message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveEntry {
    /// The stanza id (XEP-0359) the server assigned; unique within one archive.
    pub id: String,
    /// When it was archived, in microseconds since the Unix epoch. Never decreasing within
    /// one archive (the store raises a timestamp older than the archive's newest), so archive
    /// order and time order are the same and `start`/`end` select a contiguous range.
    pub timestamp_us: i64,
    /// The other party's bare JID (normalised by the caller).
    pub with_bare: String,
    /// The other party's resource, or "" when the message had none.
    pub with_resource: String,
    /// The serialised message.
    pub stanza: String,
}

/// Digits of the time prefix of the stanza ids this server's archives make.
pub const ID_TIME_DIGITS: usize = 11;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The time prefix of a stanza id the server makes: `timestamp_us` (clamped at 0) in
/// [`ID_TIME_DIGITS`] base-62 digits, so ids sort by time. 62^11 microseconds is over 16
/// million years: the prefix never wraps. The rest of an id is random (the `mam` module).
///
/// Clients treat ids as opaque. A store may use the prefix: an entry whose id carries the
/// entry's own timestamp is found by that timestamp, which SQLite's store indexes anyway,
/// so no index of the ids themselves has to be written on every append.
pub fn id_time_prefix(timestamp_us: i64) -> String {
    let mut prefix = [b'0'; ID_TIME_DIGITS];
    let mut n = u64::try_from(timestamp_us).unwrap_or(0);
    for slot in prefix.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    prefix.iter().map(|&b| char::from(b)).collect()
}

/// The time an id's prefix gives ([`id_time_prefix`]), if it has one that fits an `i64`.
/// Any id may have one by chance; a store using it must compare the entry's timestamp.
pub fn id_time(id: &str) -> Option<i64> {
    let prefix = id.as_bytes().get(..ID_TIME_DIGITS)?;
    let mut n: u64 = 0;
    for &b in prefix {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        n = n.checked_mul(62)?.checked_add(u64::from(digit))?;
    }
    i64::try_from(n).ok()
}

/// The `with` field of a query (XEP-0313 §4.1.1): a bare JID matches every resource of
/// it; a full JID only that resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithFilter {
    pub bare: String,
    pub resource: Option<String>,
}

/// Which entries form the result set. Every field narrows it; the default is everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveFilter {
    pub with: Option<WithFilter>,
    /// Entries at or after this time (microseconds since the epoch).
    pub start_us: Option<i64>,
    /// Entries at or before this time.
    pub end_us: Option<i64>,
    /// Entries after the one with this id (exclusive). Unknown id: NotFound.
    pub after_id: Option<String>,
    /// Entries before the one with this id (exclusive). Unknown id: NotFound.
    pub before_id: Option<String>,
    /// Only the entries with these ids. Any unknown id: NotFound (XEP-0313 §4.1.3).
    pub ids: Option<Vec<String>>,
}

/// Which page of the result set (XEP-0059 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageRequest {
    /// The first `max` entries.
    First,
    /// The last `max` entries (an empty `<before/>`, §2.5).
    Last,
    /// The `max` entries following the one with this id (§2.2). Unknown id: NotFound.
    After(String),
    /// The `max` entries preceding the one with this id (§2.3). Unknown id: NotFound.
    Before(String),
}

impl PageRequest {
    /// Paging backwards (`Last`, `Before`): `complete` then means the start was reached.
    pub fn is_backwards(&self) -> bool {
        matches!(self, PageRequest::Last | PageRequest::Before(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveQuery {
    pub filter: ArchiveFilter,
    pub page: PageRequest,
    /// At most this many entries in the page (the caller caps it).
    pub max: usize,
}

/// One page of a result set.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ArchivePage {
    /// In archive order, at most `max`.
    pub entries: Vec<ArchiveEntry>,
    /// Entries in the whole result set.
    pub count: usize,
    /// Position of `entries[0]` in the result set; None when the page is empty.
    pub first_index: Option<usize>,
    /// No entry of the result set lies beyond this page in the paging direction (after it
    /// for `First`/`After`, before it for `Last`/`Before`): XEP-0313 §4.3 `complete`.
    pub complete: bool,
}

/// The first or last entry of an archive (XEP-0313 §5 metadata).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveBound {
    pub id: String,
    pub timestamp_us: i64,
}

#[cfg(test)]
mod tests {
    use super::{id_time, id_time_prefix, ID_TIME_DIGITS};

    #[test]
    fn id_time_prefixes_round_trip_and_sort() {
        for t in [0, 1, 61, 62, 1_700_000_000_000_000, i64::MAX] {
            let p = id_time_prefix(t);
            assert_eq!(p.len(), ID_TIME_DIGITS);
            assert_eq!(id_time(&format!("{p}xyz")), Some(t), "{t}");
        }
        assert_eq!(id_time_prefix(-5), id_time_prefix(0));
        assert!(id_time_prefix(1_700_000_000_000_000) < id_time_prefix(1_700_000_000_000_001));
        // Too short, not base 62, or past i64: no time.
        assert_eq!(id_time("0123456789"), None);
        assert_eq!(id_time("0123456789-abc"), None);
        assert_eq!(id_time("zzzzzzzzzzzzzzz"), None);
        assert_eq!(id_time("é0123456789ab"), None);
    }
}
