//! Each of Kafka's produce checks, as `LogValidator`, `UnifiedLog` and `KafkaApis` apply them:
//! what is refused gets Kafka's code, what Kafka repairs is repaired (see the audit table in
//! docs/architecture.md).

use super::*;
use crate::ErrorCode;

const NOW_MS: i64 = 1_700_000_000_000;
const MAX: u32 = 1 << 20;

fn record(timestamp: i64, key: Option<&[u8]>) -> NewRecord {
    NewRecord {
        timestamp,
        key: key.map(<[u8]>::to_vec),
        value: Some(b"v".to_vec()),
        headers: Vec::new(),
    }
}

/// A batch of records with these timestamps, keyed.
fn batch_at(timestamps: &[i64]) -> Vec<u8> {
    let mut b = BatchBuilder::new(timestamps[0]);
    for (i, t) in timestamps.iter().enumerate() {
        b.push(&record(*t, Some(&[i as u8])));
    }
    b.build()
}

/// Re-encodes `bytes` with its header changed by `edit` (and a good CRC).
fn edited(bytes: &[u8], edit: impl FnOnce(&mut BatchHeader)) -> Vec<u8> {
    let mut header = BatchHeader::parse(bytes).unwrap();
    let count = header.record_count;
    edit(&mut header);
    let out = encode_batch(&header, &bytes[BATCH_HEADER_BYTES..], count);
    let mut out = out;
    // `encode_batch` takes the record count apart; put an edited one back under the CRC.
    if header.record_count != count {
        out[57..61].copy_from_slice(&header.record_count.to_be_bytes());
        let crc = crc32c::crc32c(&out[OFFSET_ATTRIBUTES..]);
        out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
    out
}

fn rules() -> ProduceRules {
    ProduceRules {
        timestamp_after_max_ms: 60 * 60 * 1000,
        ..ProduceRules::structural(MAX)
    }
}

fn accept(bytes: &[u8], rules: &ProduceRules) -> Result<(Vec<u8>, BatchHeader), BatchError> {
    let mut bytes = BytesMut::from(bytes);
    let header = accept_produce(&mut bytes, rules, NOW_MS, &compression::ToyCodec)?;
    Ok((bytes.to_vec(), header))
}

fn refusal(bytes: &[u8], rules: &ProduceRules) -> (BatchError, ErrorCode) {
    let err = accept(bytes, rules).unwrap_err();
    let code = err.error_code();
    (err, code)
}

// ---- Repairs ------------------------------------------------------------------------------

#[test]
fn a_max_timestamp_that_disagrees_with_the_records_is_recomputed_under_a_fresh_crc() {
    // A client whose clock has sub-millisecond precision rounds the batch's maxTimestamp and the
    // records' deltas apart: the header says one millisecond more than any record.
    let sent = edited(&batch_at(&[NOW_MS - 5, NOW_MS - 3, NOW_MS - 4]), |h| {
        h.max_timestamp = NOW_MS - 2;
    });
    assert_eq!(
        check_crc(&sent, &BatchHeader::parse(&sent).unwrap()),
        Ok(())
    );
    let (stored, header) = accept(&sent, &rules()).unwrap();
    assert_eq!(
        header.max_timestamp,
        NOW_MS - 3,
        "the largest record timestamp"
    );
    assert!(!header.is_log_append_time());
    assert_eq!(BatchHeader::parse(&stored), Ok(header));
    assert_eq!(check_crc(&stored, &header), Ok(()));
    // Only maxTimestamp and the CRC changed; the records are the producer's.
    let changed: Vec<usize> = (0..sent.len()).filter(|i| sent[*i] != stored[*i]).collect();
    assert!(
        changed
            .iter()
            .all(|i| (OFFSET_CRC..OFFSET_CRC + 4).contains(i)
                || (OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8).contains(i)),
        "bytes changed outside maxTimestamp and the CRC: {changed:?}"
    );
    // Accepting the repaired batch again changes nothing (a retry, or a second look).
    let (again, _) = accept(&stored, &rules()).unwrap();
    assert_eq!(again, stored);
}

#[test]
fn a_max_timestamp_below_the_records_is_raised_to_them() {
    let sent = edited(&batch_at(&[NOW_MS, NOW_MS + 7]), |h| h.max_timestamp = 0);
    let (_, header) = accept(&sent, &rules()).unwrap();
    assert_eq!(header.max_timestamp, NOW_MS + 7);
}

#[test]
fn a_correct_batch_is_stored_byte_for_byte() {
    let sent = batch_at(&[NOW_MS, NOW_MS + 1]);
    let (stored, header) = accept(&sent, &rules()).unwrap();
    assert_eq!(stored, sent);
    assert_eq!(header, BatchHeader::parse(&sent).unwrap());
}

#[test]
fn records_without_timestamps_leave_max_timestamp_at_no_timestamp() {
    let sent = batch_at(&[NO_TIMESTAMP, NO_TIMESTAMP]);
    let (_, header) = accept(&sent, &rules()).unwrap();
    assert_eq!(header.max_timestamp, NO_TIMESTAMP);
}

#[test]
fn a_log_append_time_topic_stamps_the_append_time_on_the_batch() {
    let rules = ProduceRules {
        timestamp_type: TimestampType::LogAppendTime,
        ..rules()
    };
    // Producer timestamps are not checked on such a topic: a year ahead is fine.
    let sent = batch_at(&[1_000, NOW_MS + 365 * 24 * 3_600_000]);
    let (stored, header) = accept(&sent, &rules).unwrap();
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, NOW_MS);
    assert_eq!(
        header.base_timestamp, 1_000,
        "Kafka leaves baseTimestamp as sent"
    );
    assert_eq!(check_crc(&stored, &header), Ok(()));
    for r in Records::new(&stored).unwrap() {
        assert_eq!(header.record_timestamp(r.unwrap().timestamp_delta), NOW_MS);
    }
}

#[test]
fn a_compressed_batch_keeps_its_max_timestamp_but_takes_the_append_time() {
    let gzip = edited(&batch_at(&[NOW_MS, NOW_MS + 1]), |h| {
        h.attributes |= 1;
        h.max_timestamp = NOW_MS + 5;
    });
    // Core cannot read compressed records: the producer's maxTimestamp stands.
    let (stored, header) = accept(&gzip, &rules()).unwrap();
    assert_eq!((stored, header.max_timestamp), (gzip.clone(), NOW_MS + 5));
    let lat = ProduceRules {
        timestamp_type: TimestampType::LogAppendTime,
        ..rules()
    };
    let (stored, header) = accept(&gzip, &lat).unwrap();
    assert_eq!(header.compression(), 1);
    assert!(header.is_log_append_time());
    assert_eq!(header.max_timestamp, NOW_MS);
    assert_eq!(check_crc(&stored, &header), Ok(()));
}

#[test]
fn the_log_append_time_bit_from_a_producer_is_cleared_on_a_create_time_topic() {
    // Kafka reads every record of such a batch at its maxTimestamp, then stores it as
    // CreateTime with that maxTimestamp.
    let sent = edited(&batch_at(&[NOW_MS - 9, NOW_MS - 8]), |h| {
        h.attributes |= ATTR_LOG_APPEND_TIME;
        h.max_timestamp = NOW_MS - 1;
    });
    let (stored, header) = accept(&sent, &rules()).unwrap();
    assert!(!header.is_log_append_time());
    assert_eq!(header.max_timestamp, NOW_MS - 1);
    assert_eq!(check_crc(&stored, &header), Ok(()));
}

// ---- Refusals, with Kafka's codes ---------------------------------------------------------

#[test]
fn the_log_append_time_bit_from_a_producer_is_refused_on_a_log_append_time_topic() {
    let sent = edited(&batch_at(&[NOW_MS]), |h| {
        h.attributes |= ATTR_LOG_APPEND_TIME
    });
    let lat = ProduceRules {
        timestamp_type: TimestampType::LogAppendTime,
        ..rules()
    };
    assert_eq!(
        refusal(&sent, &lat),
        (
            BatchError::LogAppendTimeFromProducer,
            ErrorCode::InvalidTimestamp
        )
    );
}

#[test]
fn a_timestamp_beyond_after_max_ms_is_an_invalid_timestamp() {
    let hour = 3_600_000;
    assert!(accept(&batch_at(&[NOW_MS + hour]), &rules()).is_ok());
    let (err, code) = refusal(&batch_at(&[NOW_MS, NOW_MS + hour + 1]), &rules());
    assert_eq!(code, ErrorCode::InvalidTimestamp);
    assert_eq!(
        err,
        BatchError::TimestampOutOfRange {
            timestamp: NOW_MS + hour + 1,
            min: NOW_MS.saturating_sub(i64::MAX),
            max: NOW_MS + hour
        }
    );
    // Kafka 4's default: anything in the past is fine.
    assert!(accept(&batch_at(&[0, -5]), &rules()).is_ok());
}

#[test]
fn a_timestamp_before_before_max_ms_is_an_invalid_timestamp() {
    let rules = ProduceRules {
        timestamp_before_max_ms: 1_000,
        ..rules()
    };
    assert!(accept(&batch_at(&[NOW_MS - 1_000]), &rules).is_ok());
    assert_eq!(
        refusal(&batch_at(&[NOW_MS - 1_001]), &rules).1,
        ErrorCode::InvalidTimestamp
    );
    // No timestamp is never out of range.
    assert!(accept(&batch_at(&[NO_TIMESTAMP]), &rules).is_ok());
}

#[test]
fn a_compressed_batch_whose_max_timestamp_is_out_of_range_is_refused() {
    let gzip = edited(&batch_at(&[NOW_MS]), |h| {
        h.attributes |= 1;
        h.max_timestamp = NOW_MS + 2 * 3_600_000;
    });
    assert_eq!(refusal(&gzip, &rules()).1, ErrorCode::InvalidTimestamp);
}

#[test]
fn a_keyless_record_on_a_compacted_topic_is_an_invalid_record() {
    let mut b = BatchBuilder::new(NOW_MS);
    b.push(&record(NOW_MS, Some(b"k")));
    b.push(&record(NOW_MS, None));
    let compacted = ProduceRules {
        keys_required: true,
        ..rules()
    };
    assert_eq!(
        refusal(&b.build(), &compacted),
        (
            BatchError::KeylessRecordInCompactedTopic,
            ErrorCode::InvalidRecord
        )
    );
    assert!(accept(&b.build(), &rules()).is_ok());
}

#[test]
fn a_timestamp_refusal_outranks_a_key_refusal_as_in_kafka() {
    let mut b = BatchBuilder::new(NOW_MS);
    b.push(&record(NOW_MS, None));
    b.push(&record(NOW_MS + 2 * 3_600_000, Some(b"k")));
    let compacted = ProduceRules {
        keys_required: true,
        ..rules()
    };
    assert_eq!(
        refusal(&b.build(), &compacted).1,
        ErrorCode::InvalidTimestamp
    );
}

#[test]
fn no_batch_or_more_than_one_is_an_invalid_record() {
    assert_eq!(
        refusal(&[], &rules()),
        (BatchError::Empty, ErrorCode::InvalidRecord)
    );
    let one = batch_at(&[NOW_MS]);
    assert_eq!(
        refusal(&[one.clone(), one.clone(), one.clone()].concat(), &rules()),
        (BatchError::MultipleBatches(3), ErrorCode::InvalidRecord)
    );
}

#[test]
fn bytes_after_the_batch_that_are_no_batch_are_corrupt() {
    // Stricter than Kafka, which drops them: see `check_produce`.
    let one = batch_at(&[NOW_MS]);
    let with_tail = [&one[..], &one[..20]].concat();
    assert_eq!(
        refusal(&with_tail, &rules()),
        (BatchError::TrailingBytes(20), ErrorCode::CorruptMessage)
    );
}

#[test]
fn a_batch_from_a_producer_must_start_at_offset_zero() {
    let mut sent = batch_at(&[NOW_MS]);
    set_base_offset(&mut sent, 7);
    assert_eq!(
        refusal(&sent, &rules()),
        (BatchError::BaseOffsetNotZero(7), ErrorCode::InvalidRecord)
    );
}

#[test]
fn max_message_bytes_bounds_the_batch_before_its_crc_is_checked() {
    let sent = batch_at(&[NOW_MS, NOW_MS]);
    let len = sent.len();
    let small = ProduceRules {
        message_bytes_max: len as u32 - 1,
        ..rules()
    };
    assert_eq!(
        refusal(&sent, &small),
        (
            BatchError::TooLarge {
                bytes: len,
                max: len as u32 - 1
            },
            ErrorCode::MessageTooLarge
        )
    );
    // Kafka checks the size before the CRC.
    let mut bad = sent.clone();
    bad[len - 1] ^= 1;
    assert_eq!(refusal(&bad, &small).1, ErrorCode::MessageTooLarge);
}

#[test]
fn a_bad_crc_or_length_is_a_corrupt_message() {
    let mut sent = batch_at(&[NOW_MS]);
    let last = sent.len() - 1;
    sent[last] ^= 0x40;
    assert!(matches!(
        refusal(&sent, &rules()),
        (BatchError::BadCrc { .. }, ErrorCode::CorruptMessage)
    ));
    let mut short = batch_at(&[NOW_MS]);
    short[8..12].copy_from_slice(&20i32.to_be_bytes());
    assert_eq!(
        refusal(&short, &rules()),
        (BatchError::BadLength(20), ErrorCode::CorruptMessage)
    );
}

#[test]
fn old_magic_is_an_invalid_record_and_unknown_magic_corrupt() {
    for (magic, code) in [
        (0, ErrorCode::InvalidRecord),
        (1, ErrorCode::InvalidRecord),
        (3, ErrorCode::CorruptMessage),
        (-1, ErrorCode::CorruptMessage),
    ] {
        let mut sent = batch_at(&[NOW_MS]);
        sent[OFFSET_MAGIC] = magic as u8;
        assert_eq!(
            refusal(&sent, &rules()),
            (BatchError::UnsupportedMagic(magic), code)
        );
        // A v0/v1 message set is shorter than a v2 header: still told apart by its magic.
        assert_eq!(refusal(&sent[..26], &rules()).1, code);
    }
}

#[test]
fn record_count_and_offset_range_must_agree_and_be_positive() {
    let sent = batch_at(&[NOW_MS, NOW_MS]);
    for (count, delta) in [(2, 2), (3, 1), (0, -1), (-1, 0)] {
        let bad = edited(&sent, |h| {
            h.record_count = count;
            h.last_offset_delta = delta;
        });
        assert_eq!(
            refusal(&bad, &rules()),
            (
                BatchError::CountMismatch {
                    record_count: count,
                    last_offset_delta: delta
                },
                ErrorCode::InvalidRecord
            ),
            "count {count}, delta {delta}"
        );
    }
}

#[test]
fn records_that_do_not_parse_or_count_are_invalid_records() {
    // One record fewer than the header says (count and delta agree): Kafka's iterator fails.
    let mut b = BatchBuilder::new(NOW_MS);
    b.push(&record(NOW_MS, Some(b"k")));
    let one = b.build();
    let claims_two = edited(&one, |h| {
        h.record_count = 2;
        h.last_offset_delta = 1;
    });
    assert_eq!(refusal(&claims_two, &rules()).1, ErrorCode::InvalidRecord);
}

#[test]
fn record_offset_deltas_other_than_0_to_n_are_refused() {
    // Stricter than Kafka for uncompressed batches: see `check_produce`.
    let mut b = BatchBuilder::new(NOW_MS);
    b.push(&record(NOW_MS, Some(b"a")));
    b.push(&record(NOW_MS, Some(b"b")));
    let mut sent = b.build();
    // The second record's offset delta (after length, attributes and timestamp delta) 1 -> 0.
    let second = BATCH_HEADER_BYTES + 1 + sent[BATCH_HEADER_BYTES] as usize / 2;
    assert_eq!(sent[second + 3], 2, "zig-zag 1");
    sent[second + 3] = 0;
    let crc = crc32c::crc32c(&sent[OFFSET_ATTRIBUTES..]);
    sent[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(
        refusal(&sent, &rules()),
        (
            BatchError::BadRecords("record offset deltas are not 0..n"),
            ErrorCode::InvalidRecord
        )
    );
}

#[test]
fn control_batches_and_producer_ids_without_a_sequence_are_invalid_records() {
    let control = edited(&batch_at(&[NOW_MS]), |h| h.attributes |= ATTR_CONTROL);
    assert_eq!(
        refusal(&control, &rules()),
        (BatchError::ControlBatch, ErrorCode::InvalidRecord)
    );
    let no_sequence = edited(&batch_at(&[NOW_MS]), |h| {
        h.producer_id = 42;
        h.base_sequence = NO_SEQUENCE;
    });
    assert_eq!(
        refusal(&no_sequence, &rules()),
        (
            BatchError::SequenceMissing {
                producer_id: 42,
                base_sequence: NO_SEQUENCE
            },
            ErrorCode::InvalidRecord
        )
    );
}

#[test]
fn an_unknown_compression_codec_is_corrupt() {
    let sent = edited(&batch_at(&[NOW_MS]), |h| h.attributes |= 5);
    assert_eq!(
        refusal(&sent, &rules()),
        (BatchError::UnknownCompression(5), ErrorCode::CorruptMessage)
    );
}

#[test]
fn every_refusal_names_what_was_wrong() {
    let sent = batch_at(&[NOW_MS + 2 * 3_600_000]);
    let err = accept(&sent, &rules()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("timestamp") && text.contains(&(NOW_MS + 2 * 3_600_000).to_string()));
}

proptest::proptest! {
    /// Whatever maxTimestamp a producer sends, the stored batch carries the records' largest
    /// timestamp under a valid CRC, and nothing else changed.
    #[test]
    fn any_max_timestamp_is_repaired(
        deltas in proptest::collection::vec(-1_000i64..1_000, 1..8),
        claimed in proptest::arbitrary::any::<i64>(),
    ) {
        let timestamps: Vec<i64> = deltas.iter().map(|d| NOW_MS + d).collect();
        let sent = edited(&batch_at(&timestamps), |h| h.max_timestamp = claimed);
        let (stored, header) = accept(&sent, &rules()).unwrap();
        proptest::prop_assert_eq!(header.max_timestamp, *timestamps.iter().max().unwrap());
        proptest::prop_assert_eq!(check_crc(&stored, &header), Ok(()));
        proptest::prop_assert_eq!(&stored[BATCH_HEADER_BYTES..], &sent[BATCH_HEADER_BYTES..]);
    }
}
