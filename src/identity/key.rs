//! The API key format and its digest.
//!
//! A key is `tpk_` + 32 base62 characters from the OS random source (190 bits) + 6 base62
//! characters of checksum: the first 4 bytes of SHA-256 over `tpk_` and the random part, as a
//! base62 number padded to 6 characters. A secret scanner or a typo check can therefore tell a
//! Turnpike key offline (prefix, length, alphabet, checksum) without any server.
//!
//! Only the SHA-256 digest of the whole key and a display prefix (`tpk_` + the first 6 random
//! characters) are ever stored. A plain digest is enough here: with 190 random bits, a stolen
//! digest cannot be turned back into a key, and plain SHA-256 lets operators put digests in the
//! config file (`turnpike keys hash`). Keys that do not follow this format (imported from another
//! gateway) still work when their digest is configured; the format is only a convenience.

use rand::RngCore;

pub const PREFIX: &str = "tpk_";
const RANDOM_CHARS: usize = 32;
const CHECK_CHARS: usize = 6;
/// Length of a key in this format.
pub const KEY_LEN: usize = PREFIX.len() + RANDOM_CHARS + CHECK_CHARS;
/// Characters of the random part shown as the key's display prefix.
const DISPLAY_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a whole key.
pub type Digest = [u8; 32];

/// A freshly made key: the secret is shown once and never stored.
pub struct NewKey {
    pub secret: String,
    pub digest: Digest,
    pub display: String,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

pub fn digest(key: &[u8]) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn checksum(prefix_and_random: &[u8]) -> [u8; CHECK_CHARS] {
    let d = digest(prefix_and_random);
    let mut n = u32::from_be_bytes([d[0], d[1], d[2], d[3]]);
    let mut out = [b'0'; CHECK_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// Makes a new key from the operating system's random source.
pub fn generate() -> NewKey {
    let mut text = String::with_capacity(KEY_LEN);
    text.push_str(PREFIX);
    push_random_base62(&mut text, RANDOM_CHARS);
    let check = checksum(text.as_bytes());
    text.extend(check.iter().map(|&b| char::from(b)));
    NewKey {
        digest: digest(text.as_bytes()),
        display: display_prefix(&text),
        secret: text,
    }
}

/// `tpk_` and the first random characters: enough to tell keys apart in a list, useless to
/// an attacker.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(PREFIX.len() + DISPLAY_CHARS).collect()
}

/// Whether `key` has this format and a correct checksum.
pub fn well_formed(key: &[u8]) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(PREFIX.as_bytes())
        && key[PREFIX.len()..].iter().all(u8::is_ascii_alphanumeric)
        && checksum(&key[..PREFIX.len() + RANDOM_CHARS]) == key[PREFIX.len() + RANDOM_CHARS..]
}

pub fn to_hex(d: &Digest) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in d {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// A 64-character hex digest (either case).
pub fn from_hex(text: &str) -> Option<Digest> {
    let b = text.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A random identifier such as `key_3fZk9QmB2xLp` (not secret; for URLs and logs).
pub fn random_id(prefix: &str) -> String {
    let mut out = String::from(prefix);
    push_random_base62(&mut out, 14);
    out
}

/// Appends `n` base62 characters from the operating system's random source. Rejection
/// sampling (248 = 4 * 62) keeps every character equally likely.
fn push_random_base62(out: &mut String, n: usize) {
    let mut rng = rand::rngs::OsRng;
    let mut added = 0;
    while added < n {
        let mut byte = [0u8; 1];
        rng.fill_bytes(&mut byte);
        if byte[0] < 248 {
            out.push(char::from(BASE62[usize::from(byte[0] % 62)]));
            added += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_format_and_a_checksum_that_catches_typos() {
        let k = generate();
        assert_eq!(k.secret.len(), KEY_LEN);
        assert!(k.secret.starts_with("tpk_"));
        assert!(well_formed(k.secret.as_bytes()));
        assert_eq!(k.digest, digest(k.secret.as_bytes()));
        assert_eq!(k.display, &k.secret[..10]);
        assert!(!format!("{k:?}").contains(&k.secret));
        // Every single-character change in the random part is caught (the checksum is 4 bytes
        // of SHA-256, so a miss would be a 1 in 4 billion event for each variant).
        let bytes = k.secret.as_bytes();
        for i in PREFIX.len()..PREFIX.len() + RANDOM_CHARS {
            let mut typo = bytes.to_vec();
            typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
            assert!(!well_formed(&typo), "typo at {i} not caught");
        }
        assert!(!well_formed(b"tpk_short"));
        assert_ne!(generate().secret, k.secret);
    }

    #[test]
    fn hex_round_trip() {
        let d = digest(b"abc");
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex(&to_hex(&d).to_uppercase()), Some(d));
        assert_eq!(from_hex("xyz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
        assert!(random_id("key_").starts_with("key_"));
        assert_eq!(random_id("key_").len(), 18);
    }
}
