//! The node's metadata: cluster id, topics with their ids, partition counts and config overrides,
//! and the producer-id allocation watermark. Kept in `metadata.toml` in the data directory and
//! replaced atomically (write a temporary file, fsync, rename, fsync the directory).
//!
//! Single-node for now; with the metadata quorum (issue 4/5) this becomes the applied state of
//! the metadata Raft log.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_core::storage::{read_all, Storage, StorageFile};

const METADATA_FILE: &str = "metadata.toml";
const METADATA_TMP_FILE: &str = "metadata.toml.tmp";
/// Producer ids are reserved in blocks so that one durable write serves many InitProducerId.
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// Topic name and config rules live in core, where the metadata controller uses them too.
pub use sluice_core::metadata::topic_config::{
    describe_topic_config, topic_log_config, validate_topic_name, TOPIC_CONFIG_NAMES,
    TOPIC_NAME_BYTES_MAX,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// The topic id as a UUID string (Kafka 2.8+ topic ids).
    pub id: String,
    pub partitions: i32,
    /// Config overrides by Kafka config name.
    #[serde(default)]
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub cluster_id: String,
    /// Producer ids below this are reserved (durably); the next is handed out from memory.
    pub producer_id_reserved_end: i64,
    #[serde(default)]
    pub topics: Vec<TopicMeta>,
}

impl Metadata {
    /// Reads the metadata file, or `None` if this is a new data directory.
    pub fn load<S: Storage>(storage: &S) -> io::Result<Option<Metadata>> {
        let tmp = Path::new(METADATA_TMP_FILE);
        if storage.exists(tmp) {
            storage.remove_file(tmp)?;
        }
        let path = Path::new(METADATA_FILE);
        if !storage.exists(path) {
            return Ok(None);
        }
        let bytes = read_all(&storage.open(path, false)?)?;
        let text =
            String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        toml::from_str(&text).map(Some).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{METADATA_FILE}: {e}"))
        })
    }

    /// Durably replaces the metadata file.
    pub fn save<S: Storage>(&self, storage: &S) -> io::Result<()> {
        let text = toml::to_string(self).map_err(io::Error::other)?;
        let tmp = storage.open(Path::new(METADATA_TMP_FILE), true)?;
        tmp.truncate(0)?;
        tmp.append(text.as_bytes())?;
        tmp.sync()?;
        storage.rename(Path::new(METADATA_TMP_FILE), Path::new(METADATA_FILE))?;
        storage.sync_dir(Path::new(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::storage::{CrashMode, MemStorage};

    #[test]
    fn saved_metadata_survives_a_crash() {
        let storage = MemStorage::new();
        let meta = Metadata {
            cluster_id: "c".into(),
            producer_id_reserved_end: 2000,
            topics: vec![TopicMeta {
                name: "t".into(),
                id: "00000000-0000-0000-0000-000000000001".into(),
                partitions: 2,
                configs: BTreeMap::new(),
            }],
        };
        meta.save(&storage).unwrap();
        storage.crash(CrashMode::Clean);
        assert_eq!(Metadata::load(&storage).unwrap(), Some(meta));
    }
}
