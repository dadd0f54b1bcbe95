//! A partition replica's Raft hard state (term, vote, commit) in `raft-state` in the partition's
//! directory: 4 magic bytes, term, vote (u64::MAX for none) and commit as big-endian u64s, then a
//! CRC-32C of all that. Replaced atomically (temporary file, fsync, rename, fsync the directory),
//! and only when the term or vote changes, which is rare.

use std::io;
use std::path::Path;

use crate::raft::HardState;
use crate::storage::{read_all, Storage};

const FILE: &str = "raft-state";
const TMP_FILE: &str = "raft-state.tmp";
const MAGIC: &[u8; 4] = b"SLHS";
const BYTES: usize = 4 + 3 * 8 + 4;
const NO_VOTE: u64 = u64::MAX;

/// The stored hard state, or the default (term 0, no vote) for a new replica.
pub fn load<S: Storage>(storage: &S, dir: &Path) -> io::Result<HardState> {
    let tmp = dir.join(TMP_FILE);
    if storage.exists(&tmp) {
        storage.remove_file(&tmp)?;
    }
    let path = dir.join(FILE);
    if !storage.exists(&path) {
        return Ok(HardState::default());
    }
    let bytes = read_all(&storage.open(&path, false)?)?;
    decode(&bytes).ok_or_else(|| {
        // A replica that forgot its vote could vote twice in one term: refuse to guess.
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is damaged; the replica cannot safely restart",
                path.display()
            ),
        )
    })
}

/// Durably replaces the stored hard state. Blocks on two fsyncs: the shell runs it off its
/// event loop, one at a time per replica.
pub fn store<S: Storage>(storage: &S, dir: &Path, hs: HardState) -> io::Result<()> {
    crate::storage::replace_durably(storage, &dir.join(TMP_FILE), &dir.join(FILE), &encode(hs))
}

fn encode(hs: HardState) -> Vec<u8> {
    assert_ne!(
        hs.vote,
        Some(NO_VOTE),
        "no node has the id that stands for no vote"
    );
    let mut out = Vec::with_capacity(BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&hs.term.to_be_bytes());
    out.extend_from_slice(&hs.vote.unwrap_or(NO_VOTE).to_be_bytes());
    out.extend_from_slice(&hs.commit.to_be_bytes());
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
    if bytes.len() != BYTES || &bytes[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_be_bytes(bytes[BYTES - 4..].try_into().ok()?);
    if crc32c::crc32c(&bytes[..BYTES - 4]) != crc {
        return None;
    }
    let word =
        |i: usize| u64::from_be_bytes(bytes[4 + 8 * i..12 + 8 * i].try_into().expect("8 bytes"));
    let vote = word(1);
    Some(HardState {
        term: word(0),
        vote: (vote != NO_VOTE).then_some(vote),
        commit: word(2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{CrashMode, MemStorage};

    #[test]
    fn round_trips_survives_a_crash_and_refuses_damage() {
        let storage = MemStorage::new();
        let dir = Path::new("p");
        storage.create_dir_all(dir).unwrap();
        assert_eq!(load(&storage, dir).unwrap(), HardState::default());
        let hs = HardState {
            term: 7,
            vote: Some(2),
            commit: 40,
        };
        store(&storage, dir, hs).unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(load(&storage, dir).unwrap(), hs);
        assert!(storage.flip_bit(&dir.join(FILE), 70));
        assert!(load(&storage, dir).is_err());
        assert_eq!(
            decode(&encode(HardState { vote: None, ..hs }))
                .unwrap()
                .vote,
            None
        );
    }
}
