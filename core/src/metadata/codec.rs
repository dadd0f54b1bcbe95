//! The primitives of the metadata encodings: big-endian integers, `u16`-length strings and
//! counted sequences. Reading is bounds-checked everywhere, and a count is checked against the
//! bytes left before anything is allocated, so no input can panic or over-allocate.

use bytes::BufMut;

use crate::limits::METADATA_STRING_BYTES_MAX;

/// Why bytes are not a metadata record or image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a field.
    Truncated,
    /// Bytes remain after the last field.
    TrailingBytes(usize),
    /// A format version this code does not know (written by a newer Sluice).
    UnknownVersion(u8),
    /// A record kind this code does not know.
    UnknownKind(u8),
    /// A string that is not UTF-8.
    BadUtf8,
    /// A length or count above its limit, or a flag byte that is neither 0 nor 1.
    OutOfRange(&'static str),
    /// An image whose checksum does not match.
    BadChecksum,
    /// An image whose content breaks the image's invariants.
    Inconsistent(String),
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(
        s.len() <= METADATA_STRING_BYTES_MAX,
        "string too long to encode"
    );
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

pub(super) fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.put_u8(0),
        Some(s) => {
            out.put_u8(1);
            put_str(out, s);
        }
    }
}

pub(super) fn put_count(out: &mut Vec<u8>, n: usize) {
    out.put_u32(u32::try_from(n).expect("count fits in u32"));
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::OutOfRange("flag")),
        }
    }

    pub(super) fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        if len > METADATA_STRING_BYTES_MAX {
            return Err(DecodeError::OutOfRange("string length"));
        }
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::BadUtf8)
    }

    pub(super) fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        if self.bool()? {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }

    /// A `u32` count of elements that take at least `element_bytes_min` each, at most `max`.
    pub(super) fn count(
        &mut self,
        element_bytes_min: usize,
        max: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        assert!(element_bytes_min > 0);
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::OutOfRange(what));
        }
        if n.saturating_mul(element_bytes_min) > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }

    pub(super) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}
