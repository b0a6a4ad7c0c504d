//! SQLite's variable-length integer, as SQLite's file format and FTS5's records both store it:
//! big-endian groups of 7 bits, the high bit set on all but the last, a ninth byte carrying 8.
//! Read by `facts` and `rank` (FTS5's docsize and averages records) and by the edge's B-tree
//! walk over raw pages.

/// The varint at the start of `bytes` and the bytes it took; `None` if `bytes` ends inside it.
pub fn read(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(9) {
        if i == 8 {
            return Some(((value << 8) | u64::from(byte), 9));
        }
        value = (value << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::read;

    #[test]
    fn one_to_nine_bytes() {
        assert_eq!(read(&[0x05]), Some((5, 1)));
        assert_eq!(read(&[0x81, 0x00]), Some((128, 2)));
        assert_eq!(read(&[0xff; 9]), Some((u64::MAX, 9)));
        assert_eq!(read(&[0x81]), None, "ends inside the varint");
        assert_eq!(read(&[]), None);
    }
}
