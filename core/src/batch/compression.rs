//! Kafka's `compression.type`: the codec a topic stores its batches in, and the leader's rewrite
//! of a producer's batch into it (Kafka's `LogValidator.validateMessagesAndAssignOffsetsCompressed`
//! when the source and target codecs differ).
//!
//! Core decides ([`recompression`]: keep the batch as sent, or rewrite it with codec X) and
//! rebuilds the batch ([`rewrite`]: same header fields, same records, another codec, a fresh
//! CRC). The byte transformation itself, compressing and decompressing a records section, is a
//! pure function the shell hands to the node at construction ([`BatchCodec`]): core carries no
//! codec libraries (the node implements it with the codec crates `kafka-protocol` already
//! brings; core's tests use [`ToyCodec`]). Recompression runs once, on the leader, before the
//! batch enters Raft, so every replica stores the same bytes; the record count is unchanged, so
//! offsets are too.

use super::{encode_batch, BatchError, BatchHeader, ATTR_COMPRESSION_MASK};
use crate::limits::{BATCH_HEADER_BYTES, RECORDS_DECOMPRESSED_BYTES_MAX};

/// A compression codec of a record batch (`attributes` bits 0–2), by Kafka's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    /// The codec with Kafka's id `id`, if there is one (5–7 name none).
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::None),
            1 => Some(Codec::Gzip),
            2 => Some(Codec::Snappy),
            3 => Some(Codec::Lz4),
            4 => Some(Codec::Zstd),
            _ => None,
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// Kafka's name of the codec (`CompressionType.name`).
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

/// The topic config `compression.type` (and the broker's default of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompressionType {
    /// `producer`: keep the producer's codec (Kafka's default).
    #[default]
    Producer,
    /// Store every batch with this codec (`uncompressed` is [`Codec::None`]).
    Codec(Codec),
}

impl CompressionType {
    /// Kafka's values, in the order its documentation lists them.
    pub const NAMES: [&'static str; 6] =
        ["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];

    /// Parses Kafka's spelling (case-sensitive, as Kafka's validator).
    pub fn parse(value: &str) -> Option<CompressionType> {
        Some(match value {
            "producer" => CompressionType::Producer,
            "uncompressed" => CompressionType::Codec(Codec::None),
            "gzip" => CompressionType::Codec(Codec::Gzip),
            "snappy" => CompressionType::Codec(Codec::Snappy),
            "lz4" => CompressionType::Codec(Codec::Lz4),
            "zstd" => CompressionType::Codec(Codec::Zstd),
            _ => return None,
        })
    }

    /// The config value as Kafka shows it.
    pub fn name(self) -> &'static str {
        match self {
            CompressionType::Producer => "producer",
            CompressionType::Codec(Codec::None) => "uncompressed",
            CompressionType::Codec(codec) => codec.name(),
        }
    }
}

/// `compression.gzip.level`: Kafka's default (zlib's default, 6) and range, `[1, 9]` or -1.
pub const GZIP_LEVEL_DEFAULT: i32 = -1;
pub const GZIP_LEVEL_MIN: i32 = 1;
pub const GZIP_LEVEL_MAX: i32 = 9;
/// `compression.lz4.level`: Kafka's default and range `[1, 17]`.
pub const LZ4_LEVEL_DEFAULT: i32 = 9;
pub const LZ4_LEVEL_MIN: i32 = 1;
pub const LZ4_LEVEL_MAX: i32 = 17;
/// `compression.zstd.level`: Kafka's default and range `[-131072, 22]`.
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;
pub const ZSTD_LEVEL_MIN: i32 = -131_072;
pub const ZSTD_LEVEL_MAX: i32 = 22;

/// The levels (KIP-390, Kafka 3.8+) a rewrite compresses with. A level alone never causes a
/// rewrite: a batch already in the target codec is kept, whatever level it was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressionLevels {
    /// `compression.gzip.level`
    pub gzip: i32,
    /// `compression.lz4.level`
    pub lz4: i32,
    /// `compression.zstd.level`
    pub zstd: i32,
}

impl Default for CompressionLevels {
    fn default() -> CompressionLevels {
        CompressionLevels {
            gzip: GZIP_LEVEL_DEFAULT,
            lz4: LZ4_LEVEL_DEFAULT,
            zstd: ZSTD_LEVEL_DEFAULT,
        }
    }
}

impl CompressionLevels {
    /// The level `codec` compresses with; snappy and none have none.
    pub fn level(&self, codec: Codec) -> Option<i32> {
        match codec {
            Codec::Gzip => Some(self.gzip),
            Codec::Lz4 => Some(self.lz4),
            Codec::Zstd => Some(self.zstd),
            Codec::None | Codec::Snappy => None,
        }
    }

    /// Checks Kafka's ranges; the error names the config.
    pub fn validate(&self) -> Result<(), String> {
        if self.gzip != GZIP_LEVEL_DEFAULT
            && !(GZIP_LEVEL_MIN..=GZIP_LEVEL_MAX).contains(&self.gzip)
        {
            return Err(format!(
                "compression.gzip.level must be in [{GZIP_LEVEL_MIN}, {GZIP_LEVEL_MAX}] or \
                 {GZIP_LEVEL_DEFAULT}, got {}",
                self.gzip
            ));
        }
        for (name, value, min, max) in [
            ("lz4", self.lz4, LZ4_LEVEL_MIN, LZ4_LEVEL_MAX),
            ("zstd", self.zstd, ZSTD_LEVEL_MIN, ZSTD_LEVEL_MAX),
        ] {
            if !(min..=max).contains(&value) {
                return Err(format!(
                    "compression.{name}.level must be in [{min}, {max}], got {value}"
                ));
            }
        }
        Ok(())
    }
}

/// Compresses and decompresses a batch's records section (everything after the 61-byte header)
/// with Kafka's framing of each codec. Pure: the same input gives the same output, on every node
/// and in the simulator. Supplied by the shell (see the module docs).
pub trait BatchCodec: Send + Sync {
    /// The records compressed with `codec` (never [`Codec::None`]). More than `bytes_max` bytes of
    /// output is an error, so a small batch cannot expand without bound.
    fn decompress(
        &self,
        codec: Codec,
        compressed: &[u8],
        bytes_max: usize,
    ) -> Result<Vec<u8>, String>;

    /// `records` compressed with `codec` (never [`Codec::None`]) at `level` (`None` for codecs
    /// without levels).
    fn compress(&self, codec: Codec, level: Option<i32>, records: &[u8])
        -> Result<Vec<u8>, String>;
}

/// No codecs at all: every rewrite from or to a compressed codec fails (CORRUPT_MESSAGE). For
/// logs used without a node (the single-node `PartitionLog::append` of tests and benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCodecs;

impl BatchCodec for NoCodecs {
    fn decompress(&self, codec: Codec, _: &[u8], _: usize) -> Result<Vec<u8>, String> {
        Err(format!("no {} codec here", codec.name()))
    }

    fn compress(&self, codec: Codec, _: Option<i32>, _: &[u8]) -> Result<Vec<u8>, String> {
        Err(format!("no {} codec here", codec.name()))
    }
}

/// A stand-in codec for core's tests and benchmarks: "compressed" bytes are the codec's id, the
/// level (0 without one) and the records reversed. Reversible, deterministic, and it tells the
/// codecs apart, so a batch decompressed with the wrong one fails as a real one would.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Copy, Debug, Default)]
pub struct ToyCodec;

#[cfg(any(test, feature = "testing"))]
impl BatchCodec for ToyCodec {
    fn decompress(
        &self,
        codec: Codec,
        compressed: &[u8],
        bytes_max: usize,
    ) -> Result<Vec<u8>, String> {
        match compressed {
            [id, _level, reversed @ ..] if *id == codec.id() => {
                if reversed.len() > bytes_max {
                    return Err(format!("more than {bytes_max} bytes"));
                }
                Ok(reversed.iter().rev().copied().collect())
            }
            _ => Err(format!("not {} data", codec.name())),
        }
    }

    fn compress(
        &self,
        codec: Codec,
        level: Option<i32>,
        records: &[u8],
    ) -> Result<Vec<u8>, String> {
        let mut out = vec![codec.id(), level.unwrap_or(0) as u8];
        out.extend(records.iter().rev());
        Ok(out)
    }
}

/// What the leader does with a producer's batch under `compression.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recompression {
    /// Store it in the codec it came in.
    Keep,
    /// Rebuild it with codec `to` (at `level`, for codecs with levels).
    Rewrite { to: Codec, level: Option<i32> },
}

/// The decision, as Kafka's `LogValidator` makes it: `producer` keeps every batch; a batch
/// already in the target codec is kept (whatever level it was made with); any other batch is
/// rewritten with the target codec. Control batches are never rewritten (only the broker writes
/// them; a producer's is refused before this).
pub fn recompression(
    header: &BatchHeader,
    target: CompressionType,
    levels: &CompressionLevels,
) -> Recompression {
    let CompressionType::Codec(to) = target else {
        return Recompression::Keep;
    };
    if header.is_control() || header.compression() == to.id() {
        return Recompression::Keep;
    }
    Recompression::Rewrite {
        to,
        level: levels.level(to),
    }
}

/// The records section of `batch` (one whole batch described by `header`) uncompressed: as
/// stored for an uncompressed batch, else through `codec` (at most
/// [`RECORDS_DECOMPRESSED_BYTES_MAX`] bytes). A batch that cannot be decompressed is
/// CORRUPT_MESSAGE, with the codec's reason.
pub fn records_uncompressed(
    batch: &[u8],
    header: &BatchHeader,
    codec: &dyn BatchCodec,
) -> Result<Vec<u8>, BatchError> {
    debug_assert_eq!(batch.len(), header.total_bytes());
    let section = &batch[BATCH_HEADER_BYTES..];
    let from = Codec::from_id(header.compression())
        .ok_or(BatchError::UnknownCompression(header.compression()))?;
    if from == Codec::None {
        return Ok(section.to_vec());
    }
    codec
        .decompress(from, section, RECORDS_DECOMPRESSED_BYTES_MAX)
        .map_err(|reason| BatchError::Undecompressable {
            codec: from.name(),
            reason,
        })
}

/// `header`'s batch rebuilt around `records` (an uncompressed records section) compressed with
/// `to`: base offset, epoch, `lastOffsetDelta`, timestamps, producer id, epoch and base sequence,
/// and every attribute but the codec bits (transactional, timestamp type) are kept; the record
/// count is `header`'s; the CRC is computed afresh.
pub fn rewrite(
    header: &BatchHeader,
    records: &[u8],
    to: Codec,
    level: Option<i32>,
    codec: &dyn BatchCodec,
) -> Result<Vec<u8>, BatchError> {
    let mut rebuilt = *header;
    rebuilt.attributes = (header.attributes & !ATTR_COMPRESSION_MASK) | i16::from(to.id());
    let out = if to == Codec::None {
        encode_batch(&rebuilt, records, header.record_count)
    } else {
        let compressed =
            codec
                .compress(to, level, records)
                .map_err(|reason| BatchError::Uncompressable {
                    codec: to.name(),
                    reason,
                })?;
        encode_batch(&rebuilt, &compressed, header.record_count)
    };
    // Read back: the same batch but for its codec, under a good CRC.
    let parsed = BatchHeader::parse(&out).expect("an encoded batch parses");
    assert_eq!(parsed.compression(), to.id());
    assert_eq!(parsed.record_count, header.record_count);
    assert_eq!(
        (
            parsed.producer_id,
            parsed.producer_epoch,
            parsed.base_sequence
        ),
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        )
    );
    debug_assert_eq!(super::check_crc(&out, &parsed), Ok(()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::super::{
        accept_produce, check_crc, BatchBuilder, NewRecord, ProduceRules, Records, TimestampType,
        ATTR_TRANSACTIONAL, OFFSET_ATTRIBUTES, OFFSET_CRC,
    };
    use super::*;
    use crate::ErrorCode;

    const NOW_MS: i64 = 1_700_000_000_000;
    const CODECS: [Codec; 5] = [
        Codec::None,
        Codec::Gzip,
        Codec::Snappy,
        Codec::Lz4,
        Codec::Zstd,
    ];

    /// An idempotent producer's uncompressed batch of three records with keys, values and
    /// headers.
    fn plain() -> Vec<u8> {
        let mut b = BatchBuilder::new(NOW_MS - 10).idempotent(77, 3, 40);
        for i in 0..3u8 {
            b.push(&NewRecord {
                timestamp: NOW_MS - 10 + i64::from(i),
                key: Some(vec![b'k', i]),
                value: (i != 1).then(|| vec![i; 5]),
                headers: vec![(b"h".to_vec(), Some(vec![i])), (b"n".to_vec(), None)],
            });
        }
        b.build()
    }

    /// `batch` as a producer compressing with `codec` would send it (ToyCodec's bytes).
    fn compressed(batch: &[u8], codec: Codec) -> Vec<u8> {
        let mut header = BatchHeader::parse(batch).unwrap();
        if codec == Codec::None {
            return batch.to_vec();
        }
        header.attributes |= i16::from(codec.id());
        let records = ToyCodec
            .compress(codec, Some(1), &batch[BATCH_HEADER_BYTES..])
            .unwrap();
        encode_batch(&header, &records, header.record_count)
    }

    /// Sets the transactional bit under a fresh CRC.
    fn transactional(mut batch: Vec<u8>) -> Vec<u8> {
        let attributes =
            i16::from_be_bytes([batch[OFFSET_ATTRIBUTES], batch[OFFSET_ATTRIBUTES + 1]]);
        batch[OFFSET_ATTRIBUTES..OFFSET_ATTRIBUTES + 2]
            .copy_from_slice(&(attributes | ATTR_TRANSACTIONAL).to_be_bytes());
        let crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
        batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        batch
    }

    fn rules(target: CompressionType) -> ProduceRules {
        ProduceRules {
            compression_type: target,
            ..ProduceRules::structural(1 << 20)
        }
    }

    fn accept(batch: &[u8], rules: &ProduceRules) -> Result<(Vec<u8>, BatchHeader), BatchError> {
        let mut buf = BytesMut::from(batch);
        let header = accept_produce(&mut buf, rules, NOW_MS, &ToyCodec)?;
        Ok((buf.to_vec(), header))
    }

    fn header_of(codec: Codec) -> BatchHeader {
        BatchHeader::parse(&compressed(&plain(), codec)).unwrap()
    }

    #[test]
    fn producer_keeps_every_batch_as_sent() {
        for codec in CODECS {
            let decision = recompression(
                &header_of(codec),
                CompressionType::Producer,
                &Default::default(),
            );
            assert_eq!(decision, Recompression::Keep, "{codec:?}");
            let sent = compressed(&plain(), codec);
            let (stored, _) = accept(&sent, &rules(CompressionType::Producer)).unwrap();
            assert_eq!(stored, sent, "{codec:?} stored byte for byte");
        }
    }

    #[test]
    fn a_batch_already_in_the_target_codec_is_kept_whatever_its_level() {
        let levels = CompressionLevels {
            gzip: 9,
            lz4: 17,
            zstd: -5,
        };
        for codec in CODECS {
            let target = CompressionType::Codec(codec);
            assert_eq!(
                recompression(&header_of(codec), target, &levels),
                Recompression::Keep,
                "{codec:?}"
            );
            let sent = compressed(&plain(), codec);
            // ToyCodec records the level in the bytes: a rewrite would show.
            let (stored, _) = accept(
                &sent,
                &ProduceRules {
                    compression_levels: levels,
                    ..rules(target)
                },
            )
            .unwrap();
            assert_eq!(stored, sent, "{codec:?} stored byte for byte");
        }
    }

    #[test]
    fn a_batch_in_another_codec_is_rewritten_with_the_target_codec_and_its_level() {
        let levels = CompressionLevels {
            gzip: 2,
            lz4: 12,
            zstd: 19,
        };
        for from in CODECS {
            for to in CODECS.into_iter().filter(|to| *to != from) {
                assert_eq!(
                    recompression(&header_of(from), CompressionType::Codec(to), &levels),
                    Recompression::Rewrite {
                        to,
                        level: levels.level(to)
                    },
                    "{from:?} -> {to:?}"
                );
            }
        }
        assert_eq!(levels.level(Codec::Snappy), None);
        assert_eq!(levels.level(Codec::None), None);
    }

    #[test]
    fn a_rewritten_batch_keeps_its_records_producer_fields_and_flags() {
        let original = transactional(plain());
        let sent_header = BatchHeader::parse(&original).unwrap();
        for from in CODECS {
            for to in CODECS.into_iter().filter(|to| *to != from) {
                let sent = compressed(&original, from);
                let target = CompressionType::Codec(to);
                let (stored, header) = accept(&sent, &rules(target))
                    .unwrap_or_else(|e| panic!("{from:?} -> {to:?}: {e}"));
                let what = format!("{from:?} -> {to:?}");
                assert_eq!(header, BatchHeader::parse(&stored).unwrap(), "{what}");
                assert_eq!(check_crc(&stored, &header), Ok(()), "{what}");
                assert_eq!(header.compression(), to.id(), "{what}");
                assert!(header.is_transactional(), "{what}: the transactional flag");
                assert_eq!(
                    (
                        header.producer_id,
                        header.producer_epoch,
                        header.base_sequence,
                        header.record_count,
                        header.last_offset_delta,
                        header.base_timestamp,
                        header.max_timestamp,
                    ),
                    (
                        sent_header.producer_id,
                        sent_header.producer_epoch,
                        sent_header.base_sequence,
                        sent_header.record_count,
                        sent_header.last_offset_delta,
                        sent_header.base_timestamp,
                        NOW_MS - 8,
                    ),
                    "{what}"
                );
                // The records, decompressed, are the producer's records byte for byte.
                let records = records_uncompressed(&stored, &header, &ToyCodec).unwrap();
                assert_eq!(records, original[BATCH_HEADER_BYTES..], "{what}");
                if to == Codec::None {
                    assert_eq!(
                        stored.len(),
                        original.len(),
                        "{what}: as built uncompressed"
                    );
                    assert_eq!(Records::new(&stored).unwrap().count(), 3);
                } else {
                    assert_eq!(stored[BATCH_HEADER_BYTES + 1], levels_used(to), "{what}");
                }
            }
        }
    }

    /// The level ToyCodec wrote for `to` under the default levels (0 for codecs without one).
    fn levels_used(to: Codec) -> u8 {
        CompressionLevels::default().level(to).unwrap_or(0) as u8
    }

    #[test]
    fn an_uncompressed_target_stores_compressed_batches_uncompressed() {
        let target = CompressionType::Codec(Codec::None);
        for from in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let (stored, header) = accept(&compressed(&plain(), from), &rules(target)).unwrap();
            assert_eq!(header.compression(), 0, "{from:?}");
            assert_eq!(
                stored,
                plain(),
                "{from:?}: exactly the batch built uncompressed"
            );
        }
    }

    #[test]
    fn control_batches_are_never_rewritten() {
        let control = super::super::leader_epoch_start_batch(0, 1, NOW_MS);
        let header = BatchHeader::parse(&control).unwrap();
        assert!(header.is_control());
        for to in CODECS {
            assert_eq!(
                recompression(&header, CompressionType::Codec(to), &Default::default()),
                Recompression::Keep,
                "{to:?}"
            );
        }
    }

    #[test]
    fn a_batch_that_does_not_decompress_is_a_corrupt_message_that_says_why() {
        // Claims lz4 but holds ToyCodec's gzip bytes.
        let mut header = header_of(Codec::Gzip);
        header.attributes = (header.attributes & !ATTR_COMPRESSION_MASK) | 3;
        let gzip = compressed(&plain(), Codec::Gzip);
        let lying = encode_batch(&header, &gzip[BATCH_HEADER_BYTES..], header.record_count);
        let err = accept(&lying, &rules(CompressionType::Codec(Codec::Zstd))).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::CorruptMessage);
        assert!(err.to_string().contains("lz4"), "{err}");
        // Kept as sent, it is not looked into (as before).
        assert!(accept(&lying, &rules(CompressionType::Codec(Codec::Lz4))).is_ok());
        // The same through NoCodecs: no codec, no rewrite.
        let mut buf = BytesMut::from(&gzip[..]);
        let err = accept_produce(
            &mut buf,
            &rules(CompressionType::Codec(Codec::None)),
            NOW_MS,
            &NoCodecs,
        )
        .unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::CorruptMessage);
    }

    #[test]
    fn the_records_of_a_rewritten_batch_are_checked_as_kafka_checks_them() {
        // A record an hour and more in the future, hidden inside a compressed batch whose
        // header claims an acceptable maxTimestamp.
        let mut b = BatchBuilder::new(NOW_MS);
        for t in [NOW_MS, NOW_MS + 2 * 3_600_000] {
            b.push(&NewRecord {
                timestamp: t,
                key: None,
                value: Some(b"v".to_vec()),
                headers: vec![],
            });
        }
        let mut header = BatchHeader::parse(&b.build()).unwrap();
        header.max_timestamp = NOW_MS;
        let future = compressed(
            &encode_batch(&header, &b.build()[BATCH_HEADER_BYTES..], 2),
            Codec::Lz4,
        );
        let window = ProduceRules {
            timestamp_after_max_ms: 3_600_000,
            ..rules(CompressionType::Codec(Codec::Gzip))
        };
        let err = accept(&future, &window).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidTimestamp, "{err}");
        // Kept as lz4, only its maxTimestamp is seen (the known limit).
        let kept = ProduceRules {
            compression_type: CompressionType::Producer,
            ..window
        };
        assert!(accept(&future, &kept).is_ok());
        // Keyless records on a compacted topic.
        let compacted = ProduceRules {
            keys_required: true,
            ..rules(CompressionType::Codec(Codec::Zstd))
        };
        let err = accept(&compressed(&b.build(), Codec::Snappy), &compacted).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::InvalidRecord, "{err}");
    }

    #[test]
    fn a_rewrite_that_outgrows_max_message_bytes_is_message_too_large() {
        // ToyCodec adds two bytes, as a real codec grows incompressible records.
        let sent = plain();
        let gzip = rules(CompressionType::Codec(Codec::Gzip));
        let (stored, _) = accept(&sent, &gzip).unwrap();
        let limit = ProduceRules {
            message_bytes_max: (stored.len() - 1) as u32,
            ..gzip
        };
        assert!(sent.len() < stored.len() - 1, "the sent batch fits");
        let err = accept(&sent, &limit).unwrap_err();
        assert_eq!(err.error_code(), ErrorCode::MessageTooLarge, "{err}");
    }

    #[test]
    fn log_append_time_stamps_a_rewritten_batch() {
        let lat = ProduceRules {
            timestamp_type: TimestampType::LogAppendTime,
            ..rules(CompressionType::Codec(Codec::Zstd))
        };
        let (stored, header) = accept(&compressed(&plain(), Codec::Lz4), &lat).unwrap();
        assert!(header.is_log_append_time());
        assert_eq!((header.compression(), header.max_timestamp), (4, NOW_MS));
        assert_eq!(check_crc(&stored, &header), Ok(()));
    }

    #[test]
    fn compression_type_names_parse_and_round_trip() {
        for name in CompressionType::NAMES {
            assert_eq!(CompressionType::parse(name).unwrap().name(), name);
        }
        for bad in ["", "none", "GZIP", "lz4 ", "brotli"] {
            assert_eq!(CompressionType::parse(bad), None, "{bad:?}");
        }
        assert_eq!(CompressionType::default(), CompressionType::Producer);
        for codec in CODECS {
            assert_eq!(Codec::from_id(codec.id()), Some(codec));
        }
        assert_eq!(Codec::from_id(5), None);
    }

    #[test]
    fn levels_follow_kafkas_ranges() {
        assert_eq!(CompressionLevels::default().validate(), Ok(()));
        let with = |gzip, lz4, zstd| CompressionLevels { gzip, lz4, zstd }.validate();
        for ok in [(1, 1, -131_072), (9, 17, 22), (-1, 9, 0)] {
            assert_eq!(with(ok.0, ok.1, ok.2), Ok(()), "{ok:?}");
        }
        for (bad, name) in [
            ((0, 9, 3), "compression.gzip.level"),
            ((10, 9, 3), "compression.gzip.level"),
            ((-2, 9, 3), "compression.gzip.level"),
            ((-1, 0, 3), "compression.lz4.level"),
            ((-1, 18, 3), "compression.lz4.level"),
            ((-1, 9, 23), "compression.zstd.level"),
            ((-1, 9, -131_073), "compression.zstd.level"),
        ] {
            let err = with(bad.0, bad.1, bad.2).unwrap_err();
            assert!(err.contains(name), "{bad:?}: {err}");
        }
    }
}
