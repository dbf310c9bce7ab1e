//! The handshake's proofs, nonces and the pre-shared key file.

use super::{MIN_KEY_LEN, NONCE_LEN};
use crate::migration::MigrateError;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256(key, label ‖ a ‖ b) (the handshake's proofs).
pub fn mac(key: &[u8], label: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().to_vec()
}

/// Checks `tag` = HMAC-SHA256(key, label ‖ a ‖ b) in constant time.
pub fn verify(key: &[u8], label: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(a);
    m.update(b);
    m.verify_slice(tag).is_ok()
}

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    for c in n.chunks_mut(16) {
        let s = crate::bootinfo::random_seed();
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s[0].to_le_bytes());
        b[8..].copy_from_slice(&s[1].to_le_bytes());
        c.copy_from_slice(&b[..c.len()]);
    }
    n
}

/// Reads a key file: its bytes (trailing newline dropped), at least
/// [`MIN_KEY_LEN`] of them.
pub fn read_key(path: &std::path::Path) -> Result<Vec<u8>, MigrateError> {
    let mut k = std::fs::read(path).map_err(|source| MigrateError::Key {
        path: path.display().to_string(),
        why: format!(
            "{source}{}",
            crate::access::denied_hint(&source, "give a key file this user may read")
        ),
    })?;
    while k.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        k.pop();
    }
    if k.len() < MIN_KEY_LEN {
        return Err(MigrateError::Key {
            path: path.display().to_string(),
            why: format!("it holds {} bytes; use at least {MIN_KEY_LEN} random bytes (e.g. `head -c 32 /dev/urandom | base64 > FILE`)", k.len()),
        });
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_needs_the_key() {
        let t = mac(b"k1k1k1k1k1k1k1k1", b"src", b"a", b"b");
        assert!(verify(b"k1k1k1k1k1k1k1k1", b"src", b"a", b"b", &t));
        assert!(!verify(b"k2k2k2k2k2k2k2k2", b"src", b"a", b"b", &t));
        assert!(!verify(b"k1k1k1k1k1k1k1k1", b"dst", b"a", b"b", &t));
    }
}
