//! A partition replica's Raft hard state (term, vote, commit, repair) in two copies in the
//! partition's directory, `raft-state` and `raft-state-2`: each is 4 magic bytes, then term, vote
//! (u64::MAX for none), commit and the repair bound (u64::MAX for none) as big-endian u64s, then
//! a CRC-32C of all that. A store replaces the first copy atomically (temporary file, fsync,
//! rename, fsync the directory), then the second the same way, and happens only when the term,
//! the vote or the repair mode changes, which is rare.
//!
//! Two copies because a replica that forgot its vote could vote twice in one term: a flipped
//! bit in one copy is repaired from the other when the replica opens. A load takes the newer
//! good copy by term, vote and commit (all only grow), so neither a crash between the two writes
//! nor a lost write of one copy rolls the state back. Both damaged is the one case the replica
//! cannot restart from, and it says so.

use std::io;
use std::path::Path;

use crate::raft::HardState;
use crate::storage::{read_all, Storage};

/// The two copies and the temporary file each is written through.
const COPIES: [(&str, &str); 2] = [
    ("raft-state", "raft-state.tmp"),
    ("raft-state-2", "raft-state-2.tmp"),
];
/// "SLH2": version 2 added the repair bound. Version 1 ("SLHS", 32 bytes, no repair bound)
/// still decodes.
const MAGIC: &[u8; 4] = b"SLH2";
const MAGIC_V1: &[u8; 4] = b"SLHS";
const BYTES: usize = 4 + 4 * 8 + 4;
const BYTES_V1: usize = 4 + 3 * 8 + 4;
const NONE: u64 = u64::MAX;

/// What one copy held.
#[derive(Debug, PartialEq, Eq)]
enum Copy {
    Missing,
    Damaged,
    Good(HardState),
}

fn read_copy<S: Storage>(storage: &S, dir: &Path, name: &str, tmp: &str) -> io::Result<Copy> {
    let tmp = dir.join(tmp);
    if storage.exists(&tmp) {
        storage.remove_file(&tmp)?;
    }
    let path = dir.join(name);
    if !storage.exists(&path) {
        return Ok(Copy::Missing);
    }
    let bytes = read_all(&storage.open(&path, false)?)?;
    Ok(decode(&bytes).map_or(Copy::Damaged, Copy::Good))
}

/// The stored hard state, or the default (term 0, no vote) for a new replica. A copy that is
/// damaged or missing while the other is good is rewritten from it before this returns.
pub fn load<S: Storage>(storage: &S, dir: &Path) -> io::Result<HardState> {
    let mut copies = Vec::with_capacity(COPIES.len());
    for (name, tmp) in COPIES {
        copies.push(read_copy(storage, dir, name, tmp)?);
    }
    let good: Vec<HardState> = copies
        .iter()
        .filter_map(|c| match c {
            Copy::Good(hs) => Some(*hs),
            _ => None,
        })
        .collect();
    // The newest copy: terms only grow, a vote only appears within a term, and the commit
    // index only grows. (The first copy is written first, but a lost write could leave it
    // older than the second.) A repair mode either copy holds is kept: ending one early is
    // unsafe, repeating one only costs a catch-up.
    let newest = good
        .iter()
        .copied()
        .max_by_key(|hs| (hs.term, hs.vote.is_some(), hs.commit))
        .map(|hs| HardState {
            repair: good.iter().filter_map(|g| g.repair).max(),
            ..hs
        });
    let Some(newest) = newest else {
        if copies.iter().all(|c| *c == Copy::Missing) {
            return Ok(HardState::default());
        }
        // A replica that forgot its vote could vote twice in one term: refuse to guess.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: both copies of the Raft hard state ({} and {}) are damaged or missing; the \
                 replica cannot safely restart (move the partition directory away so that it \
                 is rebuilt from its peers as a new replica)",
                dir.display(),
                COPIES[0].0,
                COPIES[1].0
            ),
        ));
    };
    if copies.iter().any(|c| *c != Copy::Good(newest)) {
        // One copy damaged, missing (written by a version with one copy) or older (a crash
        // between the two writes): make both whole again before the replica acts on them.
        store(storage, dir, newest)?;
    }
    Ok(newest)
}

/// Durably replaces both stored copies. Blocks on four fsyncs: the shell runs it off its event
/// loop, one at a time per replica.
pub fn store<S: Storage>(storage: &S, dir: &Path, hs: HardState) -> io::Result<()> {
    let bytes = encode(hs);
    for (name, tmp) in COPIES {
        crate::storage::replace_durably(storage, &dir.join(tmp), &dir.join(name), &bytes)?;
    }
    Ok(())
}

fn encode(hs: HardState) -> Vec<u8> {
    assert_ne!(
        hs.vote,
        Some(NONE),
        "no node has the id that stands for no vote"
    );
    assert_ne!(hs.repair, Some(NONE), "a repair bound is an index");
    let mut out = Vec::with_capacity(BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&hs.term.to_be_bytes());
    out.extend_from_slice(&hs.vote.unwrap_or(NONE).to_be_bytes());
    out.extend_from_slice(&hs.commit.to_be_bytes());
    out.extend_from_slice(&hs.repair.unwrap_or(NONE).to_be_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    assert_eq!(out.len(), BYTES);
    debug_assert_eq!(
        decode(&out),
        Some(hs),
        "the hard state reads back as written"
    );
    out
}

fn decode(bytes: &[u8]) -> Option<HardState> {
    let len = match bytes.get(..4)? {
        m if m == MAGIC => BYTES,
        m if m == MAGIC_V1 => BYTES_V1,
        _ => return None,
    };
    if bytes.len() != len {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[len - 4..].try_into().ok()?);
    if crc32c::crc32c(&bytes[..len - 4]) != crc {
        return None;
    }
    let word =
        |i: usize| u64::from_be_bytes(bytes[4 + 8 * i..12 + 8 * i].try_into().expect("8 bytes"));
    let optional = |w: u64| (w != NONE).then_some(w);
    Some(HardState {
        term: word(0),
        vote: optional(word(1)),
        commit: word(2),
        repair: if len == BYTES {
            optional(word(3))
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageFile;
    use crate::testing::{CrashMode, MemStorage};

    fn state() -> HardState {
        HardState {
            term: 7,
            vote: Some(2),
            commit: 40,
            repair: None,
        }
    }

    #[test]
    fn round_trips_and_survives_a_crash() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        assert_eq!(load(&storage, dir).unwrap(), HardState::default());
        let hs = state();
        store(&storage, dir, hs).unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(load(&storage, dir).unwrap(), hs);
        let repairing = HardState {
            vote: None,
            repair: Some(12),
            ..hs
        };
        assert_eq!(decode(&encode(repairing)), Some(repairing));
    }

    #[test]
    fn a_flipped_bit_in_one_copy_is_repaired_from_the_other() {
        for (damaged, _) in COPIES {
            let storage = MemStorage::new();
            let dir = Path::new("p");
            storage.create_dir_all(dir).unwrap();
            store(&storage, dir, state()).unwrap();
            assert!(storage.flip_bit(&dir.join(damaged), 70));
            assert_eq!(load(&storage, dir).unwrap(), state(), "{damaged} damaged");
            // Both copies are whole again: damaging the other one now loses nothing either.
            let other = COPIES.iter().find(|c| c.0 != damaged).unwrap().0;
            assert!(storage.flip_bit(&dir.join(other), 75));
            assert_eq!(
                load(&storage, dir).unwrap(),
                state(),
                "then {other} damaged"
            );
        }
    }

    #[test]
    fn both_copies_damaged_is_refused_naming_the_files() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        store(&storage, dir, state()).unwrap();
        for (name, _) in COPIES {
            assert!(storage.flip_bit(&dir.join(name), 33));
        }
        let e = load(&storage, dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("raft-state-2"), "{e}");
    }

    #[test]
    fn a_crash_between_the_two_writes_keeps_the_newer_first_copy() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        store(&storage, dir, state()).unwrap();
        let newer = HardState {
            term: 8,
            vote: None,
            ..state()
        };
        let bytes = encode(newer);
        let (name, tmp) = COPIES[0];
        crate::storage::replace_durably(&storage, &dir.join(tmp), &dir.join(name), &bytes).unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(load(&storage, dir).unwrap(), newer);
        // And the older second copy was brought up to date.
        assert_eq!(
            decode(&read_all(&storage.open(&dir.join(COPIES[1].0), false).unwrap()).unwrap()),
            Some(newer)
        );
    }

    #[test]
    fn a_version_1_file_still_loads() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        let hs = state();
        let mut v1 = Vec::new();
        v1.extend_from_slice(MAGIC_V1);
        for w in [hs.term, hs.vote.unwrap(), hs.commit] {
            v1.extend_from_slice(&w.to_be_bytes());
        }
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_be_bytes());
        let f = storage.open(&dir.join(COPIES[0].0), true).unwrap();
        f.append(&v1).unwrap();
        assert_eq!(load(&storage, dir).unwrap(), hs);
    }

    /// Review finding: "the first good copy is the newest" assumes every acknowledged fsync
    /// kept its write. A lost write (the threat model of docs/architecture.md, "Protocol-aware
    /// recovery") of the first copy leaves it older than the second; `load` then returns the
    /// older state (here: the vote of term 8 forgotten) and overwrites the newer second copy
    /// with it. Hard state only moves forward (term, then a vote within a term), so the newer
    /// of two good copies can be told by its contents.
    #[test]
    fn review_a_lost_write_of_the_first_copy_does_not_roll_the_state_back() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        store(&storage, dir, state()).unwrap();
        let newer = HardState {
            term: 8,
            vote: Some(3),
            ..state()
        };
        store(&storage, dir, newer).unwrap();
        // The disk lost the first copy's write: it still holds the older state.
        let (name, tmp) = COPIES[0];
        crate::storage::replace_durably(
            &storage,
            &dir.join(tmp),
            &dir.join(name),
            &encode(state()),
        )
        .unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(
            load(&storage, dir).unwrap(),
            newer,
            "the vote of term 8 was forgotten (and the second copy overwritten)"
        );
    }
}
