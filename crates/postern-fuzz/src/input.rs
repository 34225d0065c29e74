//! Taking parameters (sizes, modes, split points) from the front of the
//! fuzzer's bytes, so one input drives both the choices and the data.

/// A cursor over the fuzzer's input. Reading past the end yields zeros, so
/// every input, even an empty one, is usable.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut n = 0u64;
        for _ in 0..8 {
            n = (n << 8) | u64::from(self.byte());
        }
        n
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Deterministic split points derived from a seed (xorshift), for feeding
/// a receiver the way a socket might deliver the bytes.
#[derive(Debug, Clone)]
pub struct Splits(u64);

impl Splits {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A piece length in `1..=max`.
    pub fn next(&mut self, max: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33;
        1 + usize::try_from(r).unwrap_or(0) % max.max(1)
    }
}
