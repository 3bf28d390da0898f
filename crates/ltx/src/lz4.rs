//! LZ4 block compression that reproduces, byte for byte, the output of the
//! Go `github.com/pierrec/lz4/v4` fast block compressor that Litestream's
//! LTX encoder uses (`lz4.Compressor.CompressBlock` with a destination of
//! `CompressBlockBound` bytes). Any LZ4 compressor yields decodable data, but
//! only this exact match-finding strategy yields identical files. Decoding is
//! delegated to `lz4_flex`.

const MIN_MATCH: usize = 4;
const WIN_SIZE: usize = 1 << 16;
const HASH_LOG: u32 = 16;
/// The last match cannot start within the last 14 bytes.
const MF_LIMIT: usize = 10 + MIN_MATCH;
/// Skip acceleration for incompressible data.
const ADAPT_SKIP_LOG: u32 = 7;

/// Worst-case compressed size of `n` input bytes.
pub(crate) fn compress_bound(n: usize) -> usize {
    n + n / 255 + 16
}

/// Hashes the low 6 bytes of `x` into `0..1 << HASH_LOG`.
fn hash6(x: u64) -> usize {
    const PRIME_6_BYTES: u64 = 227_718_039_650_203;
    ((x << 16).wrapping_mul(PRIME_6_BYTES) >> (64 - HASH_LOG)) as usize
}

fn le64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Reusable match-finder state: the low 16 bits of the last position seen
/// for each hash, tagged with the call's generation so the table needs no
/// clearing between calls. A slot from another call reads as position 0,
/// exactly like a slot of the Go table whose in-use bit is clear.
pub(crate) struct Compressor {
    table: Vec<u32>,
    generation: u32,
}

impl Compressor {
    /// A compressor with an empty table.
    pub(crate) fn new() -> Compressor {
        Compressor {
            table: vec![0; 1 << HASH_LOG],
            generation: 0,
        }
    }

    /// Starts a new block: invalidates every slot.
    fn reset(&mut self) {
        self.generation += 1;
        if self.generation > 0xffff {
            self.table.fill(0);
            self.generation = 1;
        }
    }

    /// Candidate match position for hash `h` at `si` (may be negative or out
    /// of the window; callers check).
    fn get(&self, h: usize, si: usize) -> isize {
        let slot = self.table[h];
        let pos = if slot >> 16 == self.generation {
            slot & 0xffff
        } else {
            0
        };
        let mut i = pos as isize + (si & !(WIN_SIZE - 1)) as isize;
        if i >= si as isize {
            i -= WIN_SIZE as isize;
        }
        i
    }

    fn put(&mut self, h: usize, si: usize) {
        self.table[h] = (self.generation << 16) | (si as u32 & 0xffff);
    }

    /// Whether `src[si..si+4]` matches at candidate `r`; returns the offset.
    fn check(src: &[u8], si: usize, r: isize, seq: u32) -> Option<usize> {
        let offset = si as isize - r;
        (offset > 0 && offset < WIN_SIZE as isize && r >= 0 && seq == le32(src, r as usize))
            .then_some(offset as usize)
    }

    /// Compresses `src` as one LZ4 block, appending to `dst`.
    pub(crate) fn compress(&mut self, src: &[u8], dst: &mut Vec<u8>) {
        self.reset();
        let mut si = 0usize;
        let mut anchor = 0usize;
        let sn = src.len().saturating_sub(MF_LIMIT);
        while si < sn {
            let seq = le64(src, si);
            let mut h = hash6(seq);
            let h2 = hash6(seq >> 8);
            // Check a match at si, si+1 and si+2; take the first found.
            let r1 = self.get(h, si);
            let r2 = self.get(h2, si + 1);
            self.put(h, si);
            self.put(h2, si + 1);
            let offset = match Self::check(src, si, r1, seq as u32) {
                Some(o) => o,
                None => {
                    h = hash6(seq >> 16);
                    let r3 = self.get(h, si + 2);
                    si += 1;
                    match Self::check(src, si, r2, (seq >> 8) as u32) {
                        Some(o) => o,
                        None => {
                            si += 1;
                            self.put(h, si);
                            match Self::check(src, si, r3, (seq >> 16) as u32) {
                                Some(o) => o,
                                None => {
                                    si += 2 + ((si - anchor) >> ADAPT_SKIP_LOG);
                                    continue;
                                }
                            }
                        }
                    }
                }
            };

            // Extend the match backwards over pending literals.
            let mut lit_len = si - anchor;
            let mut m_len = MIN_MATCH;
            while lit_len > 0 && si > offset && src[si - 1] == src[si - offset - 1] {
                si -= 1;
                lit_len -= 1;
                m_len += 1;
            }
            let base = si + MIN_MATCH;
            si += m_len;
            // Extend forwards 8 bytes at a time, never past `sn`.
            while si + 8 <= sn {
                let x = le64(src, si) ^ le64(src, si - offset);
                if x == 0 {
                    si += 8;
                } else {
                    si += (x.trailing_zeros() >> 3) as usize;
                    break;
                }
            }
            let m_len = si - base;

            emit_sequence(dst, &src[anchor..anchor + lit_len], Some((offset, m_len)));
            anchor = si;
            if si >= sn {
                break;
            }
            let h = hash6(le64(src, si - 2));
            self.put(h, si - 2);
        }
        emit_sequence(dst, &src[anchor..], None);
    }
}

/// Appends one LZ4 sequence: token, literal length, literals and, unless it
/// is the final literal run, the match offset and extra match length.
fn emit_sequence(dst: &mut Vec<u8>, literals: &[u8], matched: Option<(usize, usize)>) {
    let lit_len = literals.len();
    let m_len = matched.map_or(0, |(_, m)| m);
    dst.push(((lit_len.min(15) as u8) << 4) | m_len.min(15) as u8);
    if lit_len >= 15 {
        push_length(dst, lit_len - 15);
    }
    dst.extend_from_slice(literals);
    if let Some((offset, m_len)) = matched {
        dst.extend_from_slice(&(offset as u16).to_le_bytes());
        if m_len >= 15 {
            push_length(dst, m_len - 15);
        }
    }
}

fn push_length(dst: &mut Vec<u8>, mut n: usize) {
    while n >= 255 {
        dst.push(255);
        n -= 255;
    }
    dst.push(n as u8);
}

/// Decompresses one LZ4 block that must expand to exactly `out.len()` bytes.
pub(crate) fn decompress_exact(src: &[u8], out: &mut [u8]) -> Result<(), String> {
    match lz4_flex::block::decompress_into(src, out) {
        Ok(n) if n == out.len() => Ok(()),
        Ok(n) => Err(format!(
            "LZ4 block expands to {n} bytes, expected {}",
            out.len()
        )),
        Err(e) => Err(format!("bad LZ4 block: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(src: &[u8]) -> Vec<u8> {
        let mut c = Compressor::new();
        let mut dst = Vec::new();
        c.compress(src, &mut dst);
        assert!(dst.len() <= compress_bound(src.len()));
        let mut out = vec![0; src.len()];
        decompress_exact(&dst, &mut out).unwrap();
        assert_eq!(out, src);
        dst
    }

    #[test]
    fn zeros_and_patterns() {
        let z = round_trip(&[0u8; 4096]);
        assert!(z.len() < 40, "{}", z.len());
        let pat: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        round_trip(&pat);
        round_trip(&[]);
        round_trip(b"short input");
    }

    #[test]
    fn reuse_is_deterministic() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 13) as u8).collect();
        let mut c = Compressor::new();
        let mut first = Vec::new();
        c.compress(&data, &mut first);
        for _ in 0..70_000 {
            let mut other = Vec::new();
            c.compress(
                &[
                    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1, 2, 3, 4,
                ],
                &mut other,
            );
        }
        let mut again = Vec::new();
        c.compress(&data, &mut again);
        assert_eq!(first, again);
    }

    #[test]
    fn pseudo_random() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let data: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let d = round_trip(&data);
        assert!(d.len() <= compress_bound(data.len()));
    }
}
