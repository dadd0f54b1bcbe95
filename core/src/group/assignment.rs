//! The consumer protocol's assignment (`ConsumerProtocolAssignment`, versions 0 to 3, after its
//! version number): the partitions a consumer group's leader hands one member. The coordinator
//! passes assignments through as opaque bytes; this codec exists for what must look inside them
//! (the planted bug `group-double-assign`, tests).

/// A decoded `ConsumerProtocolAssignment`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerAssignment {
    pub version: i16,
    /// (topic, partitions), in the order they were written.
    pub topics: Vec<(String, Vec<i32>)>,
    pub user_data: Option<Vec<u8>>,
}

impl ConsumerAssignment {
    /// Decodes `bytes`; `None` if they are not a consumer-protocol assignment of a known version
    /// (an empty assignment — no bytes — decodes as version 0 with no partitions).
    pub fn decode(bytes: &[u8]) -> Option<ConsumerAssignment> {
        if bytes.is_empty() {
            return Some(ConsumerAssignment::default());
        }
        let mut r = bytes;
        let version = i16::from_be_bytes(take(&mut r, 2)?.try_into().ok()?);
        if !(0..=3).contains(&version) {
            return None;
        }
        let topic_count = count(&mut r)?;
        let mut topics = Vec::with_capacity(topic_count);
        for _ in 0..topic_count {
            let len =
                usize::try_from(i16::from_be_bytes(take(&mut r, 2)?.try_into().ok()?)).ok()?;
            let topic = std::str::from_utf8(take(&mut r, len)?).ok()?.to_string();
            let partition_count = count(&mut r)?;
            let mut partitions = Vec::with_capacity(partition_count);
            for _ in 0..partition_count {
                partitions.push(i32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?));
            }
            topics.push((topic, partitions));
        }
        let user_data = match i32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?) {
            -1 => None,
            len => Some(take(&mut r, usize::try_from(len).ok()?)?.to_vec()),
        };
        r.is_empty().then_some(ConsumerAssignment {
            version,
            topics,
            user_data,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(self.topics.len() as i32).to_be_bytes());
        for (topic, partitions) in &self.topics {
            out.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            out.extend_from_slice(topic.as_bytes());
            out.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
            for p in partitions {
                out.extend_from_slice(&p.to_be_bytes());
            }
        }
        match &self.user_data {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(data) => {
                out.extend_from_slice(&(data.len() as i32).to_be_bytes());
                out.extend_from_slice(data);
            }
        }
        out
    }

    /// The first (topic, partition) assigned, if any.
    pub fn first(&self) -> Option<(&str, i32)> {
        self.topics
            .iter()
            .find_map(|(t, ps)| ps.first().map(|p| (t.as_str(), *p)))
    }

    /// Adds `partition` of `topic` unless it is there already.
    pub fn add(&mut self, topic: &str, partition: i32) {
        match self.topics.iter_mut().find(|(t, _)| t == topic) {
            Some((_, ps)) if ps.contains(&partition) => {}
            Some((_, ps)) => ps.push(partition),
            None => self.topics.push((topic.to_string(), vec![partition])),
        }
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

/// An array length: non-negative and no larger than the bytes left could hold.
fn count(r: &mut &[u8]) -> Option<usize> {
    let n = usize::try_from(i32::from_be_bytes(take(r, 4)?.try_into().ok()?)).ok()?;
    (n <= r.len()).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_kafkas_layout() {
        let a = ConsumerAssignment {
            version: 1,
            topics: vec![("orders".into(), vec![0, 2]), ("x".into(), vec![])],
            user_data: Some(vec![9]),
        };
        let bytes = a.encode();
        // version, 2 topics, "orders" with [0, 2], "x" with [], user data [9].
        assert_eq!(&bytes[..6], &[0, 1, 0, 0, 0, 2]);
        assert_eq!(ConsumerAssignment::decode(&bytes), Some(a.clone()));
        assert_eq!(a.first(), Some(("orders", 0)));
        let none = ConsumerAssignment {
            user_data: None,
            ..a
        };
        assert_eq!(ConsumerAssignment::decode(&none.encode()), Some(none));
    }

    #[test]
    fn refuses_garbage_and_decodes_nothing_as_empty() {
        assert_eq!(
            ConsumerAssignment::decode(&[]),
            Some(ConsumerAssignment::default())
        );
        assert_eq!(ConsumerAssignment::decode(&[0, 9, 0, 0, 0, 0]), None);
        assert_eq!(ConsumerAssignment::decode(&[0, 0, 0x7f, 0, 0, 0]), None);
        let mut bytes = ConsumerAssignment::default().encode();
        bytes.push(0);
        assert_eq!(ConsumerAssignment::decode(&bytes), None, "trailing bytes");
    }

    #[test]
    fn add_keeps_partitions_unique() {
        let mut a = ConsumerAssignment::default();
        a.add("t", 1);
        a.add("t", 1);
        a.add("t", 0);
        a.add("u", 5);
        assert_eq!(
            a.topics,
            vec![("t".to_string(), vec![1, 0]), ("u".to_string(), vec![5])]
        );
    }
}
