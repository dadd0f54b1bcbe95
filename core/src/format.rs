//! The data directory's format version: the file `sluice-format` at its root.
//!
//! A Sluice reads only the on-disk formats it knows: one that opened a directory written in
//! another format would misread it (after the change to Kafka-exact offsets, a log written
//! before it has Raft's own entries at Kafka offsets). So the first start on a new directory
//! stores [`FORMAT_VERSION`] durably, and every start decides with [`decide`] whether to go on:
//!
//! | the directory holds | decision |
//! |---|---|
//! | no format file and nothing of Sluice's | a new directory: store the current version |
//! | a format file naming [`FORMAT_VERSION`] | open it |
//! | a format file naming a version in [`FORMAT_VERSION_READ_MIN`]`..`[`FORMAT_VERSION`] | store the current version, then open it (an upgrade: this Sluice reads the older format as it is, and from now on may write what only the current one holds, so an older Sluice must refuse the directory) |
//! | no format file but Sluice's data (`__cluster_metadata-0`, a `<topic>-<partition>` directory, the pre-quorum `metadata.toml`) | format 1, written before the file existed: refuse |
//! | a format file naming an older version, a newer one, or damaged | refuse |
//!
//! A refusal says what the directory holds and what to do; nothing in it is changed. Entries that
//! are not Sluice's (`lost+found` on a mount point, the broker's `.lock`) do not make a directory
//! old: a new directory may hold them.
//!
//! The file is text an operator can read, with a CRC-32C so that a flipped bit cannot turn one
//! version into another (`2` and `3` differ in one bit):
//!
//! ```text
//! # Sluice data directory format. A Sluice that does not read this format refuses to start.
//! format.version=2
//! crc32c=1a2b3c4d
//! ```
//!
//! The CRC covers every byte before the `crc32c=` line. The file holds nothing specific to a
//! node, so every data directory of one format has the same file: a damaged one can be restored
//! from another broker's. It is written as the topic-id marker and the hard state are: a
//! temporary file, fsync, rename, fsync of the directory.

use std::io;
use std::path::Path;

use crate::storage::{Storage, StorageFile};

/// The format this Sluice writes. Bump it with every change on disk that an older Sluice would
/// misread, and add a line to [`FORMAT_HISTORY`].
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format this Sluice opens as it is.
pub const FORMAT_VERSION_READ_MIN: u32 = 2;
/// The format of a directory with Sluice's data and no format file: it was written before the
/// file existed.
pub const FORMAT_VERSION_UNVERSIONED: u32 = 1;

/// What each format is, for the messages of a refusal.
pub const FORMAT_HISTORY: &[(u32, &str)] = &[
    (
        1,
        "written before Kafka-exact offsets and before the format file: Raft's own entries \
         take Kafka offsets in it",
    ),
    (2, "Kafka-exact offsets: only records take Kafka offsets"),
    (
        3,
        "DeleteRecords: Raft's log-start entries (control type 102) and checkpoints that hold \
         the log start (SLC3)",
    ),
    (
        4,
        "protocol-aware recovery: the Raft hard state in two copies (raft-state, raft-state-2) \
         with the repair bound (SLH2)",
    ),
];

const _: () = assert!(FORMAT_VERSION_READ_MIN <= FORMAT_VERSION);
const _: () = assert!(FORMAT_VERSION_UNVERSIONED < FORMAT_VERSION_READ_MIN);
const _: () = assert!(FORMAT_HISTORY.len() == FORMAT_VERSION as usize);

/// The format file, at the root of the data directory.
pub const FORMAT_FILE: &str = "sluice-format";
/// Where the format file is written before it is renamed into place.
pub const FORMAT_TMP_FILE: &str = "sluice-format.tmp";
/// A larger format file is damaged (bounds the read).
pub const FORMAT_FILE_BYTES_MAX: usize = 4096;
/// Where Sluice kept its metadata before the metadata quorum: a directory holding it is Sluice's.
pub const LEGACY_METADATA_FILE: &str = "metadata.toml";

const HEADER: &str =
    "# Sluice data directory format. A Sluice that does not read this format refuses to start.\n";
const VERSION_KEY: &str = "format.version=";
const CRC_KEY: &str = "crc32c=";

/// What to do with a data directory whose format this Sluice reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new directory: store [`FORMAT_VERSION`], then open it.
    Initialise,
    /// A directory of the current format.
    Open { version: u32 },
    /// A directory of an older format this Sluice reads as it is: store [`FORMAT_VERSION`]
    /// before anything else is written, then open it.
    Upgrade { from: u32 },
}

/// Why a data directory is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Written by an older Sluice, in a format this one does not read. `evidence` names the
    /// entry that shows Sluice's data when there is no format file (format 1).
    Older {
        version: u32,
        evidence: Option<String>,
    },
    /// Written by a newer Sluice.
    Newer { version: u32 },
    /// The format file does not read as one.
    Damaged { why: String },
}

impl Refusal {
    /// The message an operator reads: what the directory holds and what to do.
    pub fn describe(&self, data_dir: &Path) -> String {
        let dir = data_dir.display();
        let file = data_dir.join(FORMAT_FILE);
        let reads = if FORMAT_VERSION_READ_MIN == FORMAT_VERSION {
            format!("format {FORMAT_VERSION}")
        } else {
            format!("formats {FORMAT_VERSION_READ_MIN} to {FORMAT_VERSION}")
        };
        match self {
            Refusal::Older { version, evidence } => {
                let found = match evidence {
                    Some(entry) => format!("; it has {entry} and no {FORMAT_FILE}"),
                    None => String::new(),
                };
                format!(
                    "data directory {dir} holds Sluice format {version} ({}{found}); this sluice \
                     reads {reads}: copy the data out with a Kafka client and remove the \
                     directory, or run the older sluice that wrote it",
                    history(*version)
                )
            }
            Refusal::Newer { version } => format!(
                "data directory {dir} was written by a newer Sluice (format {version}, {}); this \
                 sluice reads {reads}: run a sluice that reads format {version}",
                file.display()
            ),
            Refusal::Damaged { why } => format!(
                "data directory {dir}: {} is damaged ({why}), so its format is unknown; restore \
                 it from another data directory of the same format (the file is the same in \
                 every one), or remove the directory",
                file.display()
            ),
        }
    }
}

fn history(version: u32) -> &'static str {
    FORMAT_HISTORY
        .iter()
        .find(|(v, _)| *v == version)
        .map_or("an unknown format", |(_, what)| what)
}

/// A data directory refused for its format (the payload of the `io::Error` that
/// [`open_data_dir`] returns): the shell tells it from I/O failures, as restarting won't help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDirRefused {
    pub refusal: Refusal,
    pub message: String,
}

impl std::fmt::Display for DataDirRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DataDirRefused {}

/// Decides what to do with a data directory from its format file's bytes (`None` if there is
/// none; at most [`FORMAT_FILE_BYTES_MAX`] + 1 of them are enough) and the names of the entries
/// at its root.
pub fn decide(stored: Option<&[u8]>, entries: &[String]) -> Result<Decision, Refusal> {
    let version = match stored {
        Some(bytes) => decode(bytes).map_err(|why| Refusal::Damaged { why })?,
        None => match entries.iter().find(|name| is_sluice_data(name)) {
            None => return Ok(Decision::Initialise),
            Some(entry) => {
                return Err(Refusal::Older {
                    version: FORMAT_VERSION_UNVERSIONED,
                    evidence: Some(entry.clone()),
                })
            }
        },
    };
    if version < FORMAT_VERSION_READ_MIN {
        return Err(Refusal::Older {
            version,
            evidence: None,
        });
    }
    if version > FORMAT_VERSION {
        return Err(Refusal::Newer { version });
    }
    if version < FORMAT_VERSION {
        return Ok(Decision::Upgrade { from: version });
    }
    Ok(Decision::Open { version })
}

/// Whether an entry at the root of a data directory is something only Sluice writes there: a
/// `<topic>-<partition>` directory (the metadata log `__cluster_metadata-0` is one) or the
/// pre-quorum metadata file.
fn is_sluice_data(name: &str) -> bool {
    if name == LEGACY_METADATA_FILE {
        return true;
    }
    let Some((topic, partition)) = name.rsplit_once('-') else {
        return false;
    };
    !partition.is_empty()
        && partition.bytes().all(|b| b.is_ascii_digit())
        && partition.parse::<i32>().is_ok()
        && crate::metadata::topic_config::validate_topic_name(topic).is_ok()
}

/// The format file for `version`.
pub fn encode(version: u32) -> Vec<u8> {
    let body = format!("{HEADER}{VERSION_KEY}{version}\n");
    let crc = crc32c::crc32c(body.as_bytes());
    let out = format!("{body}{CRC_KEY}{crc:08x}\n").into_bytes();
    assert!(out.len() <= FORMAT_FILE_BYTES_MAX);
    debug_assert_eq!(decode(&out), Ok(version), "the format file reads back");
    out
}

/// The version a format file names, or why it does not read as one. Comments (`#`) and keys
/// other than `format.version` are allowed before the CRC line (a later version may add some).
pub fn decode(bytes: &[u8]) -> Result<u32, String> {
    if bytes.len() > FORMAT_FILE_BYTES_MAX {
        return Err(format!("longer than {FORMAT_FILE_BYTES_MAX} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let Some(text) = text.strip_suffix('\n') else {
        return Err("does not end with a newline (cut short?)".into());
    };
    let (body, crc_line) = match text.rfind('\n') {
        Some(at) => (&text[..=at], &text[at + 1..]),
        None => ("", text),
    };
    let stored_crc = crc_line
        .strip_prefix(CRC_KEY)
        // Lowercase only: an uppercase digit (one flipped bit) is damage, not the same CRC.
        .filter(|hex| hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(|| format!("its last line is not {CRC_KEY}<8 hex digits>"))?;
    let crc = crc32c::crc32c(body.as_bytes());
    if crc != stored_crc {
        return Err(format!(
            "its CRC-32C is {crc:08x}, the file says {stored_crc:08x}"
        ));
    }
    let mut version = None;
    for line in body.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(value) = line.strip_prefix(VERSION_KEY) {
            let parsed = value
                .parse::<u32>()
                .map_err(|_| format!("format.version {value:?} is not a number"))?;
            if version.replace(parsed).is_some() {
                return Err("format.version appears twice".into());
            }
        } else if !line.contains('=') {
            return Err(format!("line {line:?} is not key=value"));
        }
    }
    version.ok_or_else(|| "it has no format.version".to_string())
}

/// Checks the format of the data directory `storage` is rooted at, storing the current version
/// durably in a new one (`data_dir` only names it in messages). A refusal is an
/// [`io::ErrorKind::InvalidData`] error whose payload is a [`DataDirRefused`]; an I/O failure
/// names the path it is about. Nothing is changed in a refused directory.
pub fn open_data_dir<S: Storage>(storage: &S, data_dir: &Path) -> io::Result<Decision> {
    let root = Path::new("");
    let file = Path::new(FORMAT_FILE);
    let context = |what: &'static str, path: &Path| {
        let path = data_dir.join(path);
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let entries = storage
        .list(root)
        .map_err(context("cannot list the data directory", root))?;
    let stored = if storage.exists(file) {
        Some(read(storage).map_err(context("cannot read", file))?)
    } else {
        None
    };
    let decision = decide(stored.as_deref(), &entries).map_err(|refusal| {
        let message = refusal.describe(data_dir);
        io::Error::new(
            io::ErrorKind::InvalidData,
            DataDirRefused { refusal, message },
        )
    })?;
    if matches!(decision, Decision::Initialise | Decision::Upgrade { .. }) {
        assert!(
            stored.is_none() == (decision == Decision::Initialise),
            "only a directory without the file is new"
        );
        store(storage, FORMAT_VERSION).map_err(context("cannot write", file))?;
        // Read back what was stored: a directory that does not keep it must not be used.
        let back = read(storage).map_err(context("cannot read back", file))?;
        if decode(&back) != Ok(FORMAT_VERSION) {
            return Err(io::Error::other(format!(
                "{} does not read back as written",
                data_dir.join(FORMAT_FILE).display()
            )));
        }
    }
    Ok(decision)
}

/// Reads the format file; one byte more than a good file can hold tells a too-long one.
fn read<S: Storage>(storage: &S) -> io::Result<Vec<u8>> {
    storage
        .open(Path::new(FORMAT_FILE), false)?
        .read_at(0, FORMAT_FILE_BYTES_MAX + 1)
}

/// Durably stores the format file: a temporary file, fsync, rename, fsync of the directory.
fn store<S: Storage>(storage: &S, version: u32) -> io::Result<()> {
    let (tmp, file) = (Path::new(FORMAT_TMP_FILE), Path::new(FORMAT_FILE));
    crate::storage::replace_durably(storage, tmp, file, &encode(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CrashMode, Faults, MemStorage};

    fn names(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    fn refusal(result: io::Result<Decision>) -> DataDirRefused {
        let error = result.expect_err("the directory is refused");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let inner = error.into_inner().expect("a refusal carries its reason");
        inner
            .downcast::<DataDirRefused>()
            .map(|b| *b)
            .expect("a DataDirRefused")
    }

    #[test]
    fn a_new_directory_is_initialised_even_beside_entries_that_are_not_sluices() {
        assert_eq!(decide(None, &[]), Ok(Decision::Initialise));
        let foreign = names(&[
            ".lock",
            "lost+found",
            FORMAT_TMP_FILE,
            "notes.txt",
            "x-y",
            "a-",
        ]);
        assert_eq!(decide(None, &foreign), Ok(Decision::Initialise));
    }

    #[test]
    fn the_current_version_opens() {
        let stored = encode(FORMAT_VERSION);
        let entries = names(&["__cluster_metadata-0", "orders-3", FORMAT_FILE]);
        assert_eq!(
            decide(Some(stored.as_slice()), &entries),
            Ok(Decision::Open {
                version: FORMAT_VERSION
            })
        );
    }

    #[test]
    fn sluice_data_without_a_format_file_is_format_1_and_refused() {
        for entry in [
            "__cluster_metadata-0",
            "orders-0",
            "t.v_2-17",
            "metadata.toml",
        ] {
            let entries = names(&["lost+found", entry]);
            let refusal = decide(None, &entries).unwrap_err();
            assert_eq!(
                refusal,
                Refusal::Older {
                    version: 1,
                    evidence: Some(entry.to_string())
                }
            );
            let message = refusal.describe(Path::new("./data"));
            assert!(
                message.starts_with("data directory ./data holds Sluice format 1 ("),
                "{message}"
            );
            assert!(message.contains(&format!("it has {entry} and no sluice-format")));
            assert!(
                message.contains(&format!(
                    "this sluice reads formats {FORMAT_VERSION_READ_MIN} to {FORMAT_VERSION}"
                )),
                "{message}"
            );
            assert!(message.contains("copy the data out with a Kafka client"));
            assert!(message.contains("run the older sluice"));
        }
    }

    #[test]
    fn a_newer_version_is_refused_and_an_older_one_too() {
        let newer = decide(Some(encode(FORMAT_VERSION + 1).as_slice()), &[]).unwrap_err();
        assert_eq!(
            newer,
            Refusal::Newer {
                version: FORMAT_VERSION + 1
            }
        );
        let message = newer.describe(Path::new("/var/lib/sluice"));
        assert!(
            message.starts_with("data directory /var/lib/sluice was written by a newer Sluice"),
            "{message}"
        );
        assert!(
            message.contains("/var/lib/sluice/sluice-format"),
            "{message}"
        );
        let older = decide(Some(encode(FORMAT_VERSION_READ_MIN - 1).as_slice()), &[]).unwrap_err();
        assert_eq!(
            older,
            Refusal::Older {
                version: FORMAT_VERSION_READ_MIN - 1,
                evidence: None
            }
        );
        assert!(older
            .describe(Path::new("d"))
            .contains("or run the older sluice"));
    }

    /// Format 2 (before DeleteRecords) is read as it is; opening it stores the current format
    /// first, so that a format-2 Sluice refuses the directory once it may hold log-start entries.
    #[test]
    fn a_format_2_directory_is_upgraded_durably_on_open() {
        let storage = MemStorage::new();
        store(&storage, 2).unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(
            open_data_dir(&storage, Path::new("data")).unwrap(),
            Decision::Upgrade { from: 2 }
        );
        storage.crash(CrashMode::Clean);
        assert_eq!(
            storage.read_file(Path::new(FORMAT_FILE)),
            Some(encode(FORMAT_VERSION))
        );
        assert_eq!(
            open_data_dir(&storage, Path::new("data")).unwrap(),
            Decision::Open {
                version: FORMAT_VERSION
            }
        );
    }

    #[test]
    fn a_damaged_file_is_refused_whatever_the_directory_holds() {
        let good = encode(FORMAT_VERSION);
        // Every single flipped bit is caught (the CRC, or the text around it, no longer reads).
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                matches!(
                    decide(Some(bad.as_slice()), &[]),
                    Err(Refusal::Damaged { .. })
                ),
                "bit {bit} flipped still reads as {:?}",
                decode(&bad)
            );
        }
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut} reads");
        }
        assert!(decode(&vec![b'#'; FORMAT_FILE_BYTES_MAX + 1]).is_err());
        let message = decide(Some(b"garbage"), &[])
            .unwrap_err()
            .describe(Path::new("d"));
        assert!(message.starts_with("data directory d: d/sluice-format is damaged ("));
    }

    #[test]
    fn the_file_is_text_with_a_crc_and_later_keys_are_allowed() {
        let text = String::from_utf8(encode(2)).unwrap();
        assert!(text.contains("\nformat.version=2\n"), "{text}");
        let body = "# a comment\nformat.version=7\nnode.id=3\n";
        let crc = crc32c::crc32c(body.as_bytes());
        assert_eq!(
            decode(format!("{body}crc32c={crc:08x}\n").as_bytes()),
            Ok(7)
        );
        let twice = "format.version=2\nformat.version=2\n";
        let crc = crc32c::crc32c(twice.as_bytes());
        assert!(decode(format!("{twice}crc32c={crc:08x}\n").as_bytes()).is_err());
    }

    #[test]
    fn a_new_directory_gets_the_file_durably_and_opens_after_a_crash() {
        let storage = MemStorage::new();
        assert_eq!(
            open_data_dir(&storage, Path::new("data")).unwrap(),
            Decision::Initialise
        );
        storage.crash(CrashMode::Clean);
        assert_eq!(
            storage.read_file(Path::new(FORMAT_FILE)),
            Some(encode(FORMAT_VERSION))
        );
        assert!(!storage.exists(Path::new(FORMAT_TMP_FILE)));
        assert_eq!(
            open_data_dir(&storage, Path::new("data")).unwrap(),
            Decision::Open {
                version: FORMAT_VERSION
            }
        );
    }

    #[test]
    fn power_cut_at_each_step_of_initialising_leaves_a_directory_that_opens() {
        for ops in 0..8 {
            let storage = MemStorage::new();
            storage.inject(Faults {
                power_cut_after_ops: Some(ops),
                ..Faults::default()
            });
            let first = open_data_dir(&storage, Path::new("data"));
            storage.crash(CrashMode::Clean);
            storage.inject(Faults::default());
            let again = open_data_dir(&storage, Path::new("data"))
                .unwrap_or_else(|e| panic!("cut after {ops} ops ({first:?}): {e}"));
            assert!(
                matches!(
                    again,
                    Decision::Initialise
                        | Decision::Open {
                            version: FORMAT_VERSION
                        }
                ),
                "{again:?}"
            );
            assert_eq!(
                open_data_dir(&storage, Path::new("data")).unwrap(),
                Decision::Open {
                    version: FORMAT_VERSION
                }
            );
        }
    }

    #[test]
    fn a_format_1_directory_is_refused_and_left_as_it_was() {
        let storage = MemStorage::new();
        storage
            .open(Path::new("orders-0/00000000000000000000.log"), true)
            .unwrap();
        let before = storage.paths();
        let refused = refusal(open_data_dir(&storage, Path::new("/srv/data")));
        assert_eq!(
            refused.refusal,
            Refusal::Older {
                version: 1,
                evidence: Some("orders-0".into())
            }
        );
        assert!(refused
            .message
            .starts_with("data directory /srv/data holds Sluice format 1"));
        assert_eq!(storage.paths(), before, "nothing is written");
    }

    #[test]
    fn a_newer_directory_is_refused() {
        let storage = MemStorage::new();
        let file = storage.open(Path::new(FORMAT_FILE), true).unwrap();
        file.append(&encode(FORMAT_VERSION + 1)).unwrap();
        let refused = refusal(open_data_dir(&storage, Path::new("d")));
        assert_eq!(
            refused.refusal,
            Refusal::Newer {
                version: FORMAT_VERSION + 1
            }
        );
    }
}
