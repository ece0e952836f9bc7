//! Keyed hashes of the scan detector and the rate limiter. The key (`Runtime::scan_key`) is
//! random and chosen when the shared maps are created, so which sources share an admission
//! slot or a budget's slot, and which ports share a bit of a port set, cannot be known, or
//! chosen, from outside the host. Not a cryptographic
//! MAC: a mixing function (the 64-bit finaliser of MurmurHash3) over key and input.

#[inline(always)]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// A source network (`blocks::source_words`) and protocol. One mixing round over both words: multiplying the first
/// by an odd constant is a bijection, so two sources that differ in only one word (every
/// IPv4 source, every IPv6 network of up to /64) never meet before the final mix, which is a
/// bijection too. It runs on every refused attempt of a new source, the spoofed flood's case.
#[inline(always)]
pub fn source(key: &[u64; 2], [hi, lo]: [u64; 2], proto: u8) -> u64 {
    mix((hi ^ key[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo ^ key[1] ^ ((proto as u64) << 56))
}

/// A (source network, limit owner) pair, for its slot in `PG_LIMITS`: as `source`, with the
/// owner (rule and generation) in the high half of the second word.
#[inline(always)]
pub fn limit(key: &[u64; 2], [hi, lo]: [u64; 2], owner: u32) -> u64 {
    mix((hi ^ key[0]).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ lo ^ key[1] ^ ((owner as u64) << 32))
}

/// The bit (0..bits, a power of two) of `port` in a port set of the window that started at
/// `window_start_ns`: a new window gets a new mapping.
#[inline(always)]
pub fn port_bit(key: &[u64; 2], window_start_ns: u64, port: u16, bits: u32) -> u32 {
    (mix(key[1] ^ window_start_ns.rotate_left(17) ^ port as u64) as u32) & (bits - 1)
}
