//! The codecs behind `compression.type` rewrites: core decides which batch is rewritten into
//! which codec and rebuilds it ([`sluice_core::batch::compression`]); this is the byte
//! transformation it is given, with Kafka's framing of each codec and the codec crates
//! `kafka-protocol` already brings (flate2, lz4, snap, zstd).
//!
//! - gzip: a gzip stream (`GZIPOutputStream`); concatenated members are read as one.
//! - snappy: written in snappy-java's framing, as Kafka's `SnappyOutputStream` writes it (a
//!   16-byte header, then blocks of at most 32 KiB, each a length and a raw snappy block); read
//!   in that framing or, without its header, as one raw snappy block (what librdkafka also
//!   accepts, and what snappy-java's reader falls back to).
//! - lz4: the LZ4 frame format with independent blocks (Kafka's `Lz4BlockOutputStream`).
//! - zstd: zstd frames.
//!
//! Every decompression stops at the caller's byte bound, so a small batch cannot expand into an
//! unbounded allocation.

use std::io::{self, Read, Write};

use sluice_core::batch::{BatchCodec, Codec};

/// snappy-java's stream header (magic, version 1, compatible version 1).
const SNAPPY_JAVA_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's default block size, which Kafka uses.
const SNAPPY_JAVA_BLOCK_BYTES: usize = 32 * 1024;

/// Kafka's codecs for the node (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaCodecs;

impl BatchCodec for KafkaCodecs {
    fn decompress(
        &self,
        codec: Codec,
        compressed: &[u8],
        bytes_max: usize,
    ) -> Result<Vec<u8>, String> {
        let result = match codec {
            Codec::None => Err(io::Error::other("not compressed")),
            Codec::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(compressed), bytes_max),
            Codec::Snappy => snappy_decompress(compressed, bytes_max),
            Codec::Lz4 => lz4::Decoder::new(compressed).and_then(|d| read_bounded(d, bytes_max)),
            Codec::Zstd => zstd::stream::read::Decoder::new(compressed)
                .and_then(|d| read_bounded(d, bytes_max)),
        };
        result.map_err(|e| e.to_string())
    }

    fn compress(
        &self,
        codec: Codec,
        level: Option<i32>,
        records: &[u8],
    ) -> Result<Vec<u8>, String> {
        let result = match codec {
            Codec::None => Err(io::Error::other("not a compression codec")),
            Codec::Gzip => {
                // Kafka's -1 is zlib's default level.
                let level = match level {
                    Some(l @ 0..=9) => flate2::Compression::new(l as u32),
                    _ => flate2::Compression::default(),
                };
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(records).and_then(|()| e.finish())
            }
            Codec::Snappy => snappy_compress(records),
            Codec::Lz4 => lz4::EncoderBuilder::new()
                .level(level.unwrap_or(9).max(0) as u32)
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .and_then(|mut e| {
                    e.write_all(records)?;
                    let (out, result) = e.finish();
                    result.map(|()| out)
                }),
            Codec::Zstd => zstd::bulk::compress(records, level.unwrap_or(3)),
        };
        result.map_err(|e| e.to_string())
    }
}

/// Everything `reader` yields, refusing more than `bytes_max` bytes.
fn read_bounded(reader: impl Read, bytes_max: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(bytes_max as u64 + 1).read_to_end(&mut out)?;
    if out.len() > bytes_max {
        return Err(io::Error::other(format!(
            "decompresses to more than {bytes_max} bytes"
        )));
    }
    Ok(out)
}

fn snappy_compress(records: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = SNAPPY_JAVA_MAGIC.to_vec();
    let mut encoder = snap::raw::Encoder::new();
    for block in records.chunks(SNAPPY_JAVA_BLOCK_BYTES) {
        let compressed = encoder.compress_vec(block).map_err(io::Error::other)?;
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(out)
}

fn snappy_decompress(compressed: &[u8], bytes_max: usize) -> io::Result<Vec<u8>> {
    let mut decoder = snap::raw::Decoder::new();
    let mut raw_block = |block: &[u8], out: &mut Vec<u8>| -> io::Result<()> {
        // The claimed length is checked before anything is allocated for it.
        let len = snap::raw::decompress_len(block).map_err(io::Error::other)?;
        if out.len().saturating_add(len) > bytes_max {
            return Err(io::Error::other(format!(
                "decompresses to more than {bytes_max} bytes"
            )));
        }
        let at = out.len();
        out.resize(at + len, 0);
        let written = decoder
            .decompress(block, &mut out[at..])
            .map_err(io::Error::other)?;
        out.truncate(at + written);
        Ok(())
    };
    let mut out = Vec::new();
    let Some(mut rest) = compressed.strip_prefix(&SNAPPY_JAVA_MAGIC[..]) else {
        raw_block(compressed, &mut out)?;
        return Ok(out);
    };
    while !rest.is_empty() {
        let (len, after) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| io::Error::other("snappy block length cut short"))?;
        let len = u32::from_be_bytes(*len) as usize;
        let block = after
            .get(..len)
            .ok_or_else(|| io::Error::other("snappy block cut short"))?;
        raw_block(block, &mut out)?;
        rest = &after[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    fn sample() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips_at_every_level_kafka_allows() {
        let records = sample();
        for codec in CODECS {
            for level in [None, Some(-1), Some(1), Some(9), Some(17), Some(22)] {
                let packed = KafkaCodecs.compress(codec, level, &records).unwrap();
                assert!(
                    packed.len() < records.len(),
                    "{codec:?} {level:?} compresses"
                );
                let unpacked = KafkaCodecs.decompress(codec, &packed, 1 << 30).unwrap();
                assert_eq!(unpacked, records, "{codec:?} {level:?}");
            }
        }
    }

    #[test]
    fn decompression_stops_at_the_bound_and_garbage_is_an_error() {
        let records = sample();
        for codec in CODECS {
            let packed = KafkaCodecs.compress(codec, None, &records).unwrap();
            let bound = records.len() - 1;
            assert!(
                KafkaCodecs.decompress(codec, &packed, bound).is_err(),
                "{codec:?} past its bound"
            );
            assert!(
                KafkaCodecs
                    .decompress(codec, b"not compressed at all", 1 << 20)
                    .is_err(),
                "{codec:?} garbage"
            );
        }
    }

    #[test]
    fn snappy_reads_a_raw_block_and_what_kafka_protocol_writes() {
        use kafka_protocol::compression::{Compressor, Snappy};
        let records = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        assert_eq!(
            KafkaCodecs
                .decompress(Codec::Snappy, &raw, 1 << 30)
                .unwrap(),
            records
        );
        let mut framed = bytes::BytesMut::new();
        <Snappy as Compressor<bytes::BytesMut>>::compress(&mut framed, |buf| {
            buf.extend_from_slice(&records);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            framed[..],
            KafkaCodecs.compress(Codec::Snappy, None, &records).unwrap()[..]
        );
    }
}
