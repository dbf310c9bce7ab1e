//! The session's promises: every flipped bit, replayed, reordered or
//! dropped frame, and every frame from another session is refused.

use super::*;

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const NS: [u8; 32] = [1; 32];
const ND: [u8; 32] = [2; 32];

fn pair(key: &[u8], nd: &[u8; 32], t: &[u8; 32]) -> (Session, Session) {
    (
        Session::new(key, Role::Source, &NS, nd, t),
        Session::new(key, Role::Destination, &NS, nd, t),
    )
}

/// Frames the source seals: each one's bytes on the wire.
fn sealed(src: &mut Session, frames: &[(Kind, &[u8])]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|(k, p)| {
            let mut w = Vec::new();
            src.write(&mut w, *k, p).unwrap();
            w
        })
        .collect()
}

fn open(dst: &mut Session, wire: &[u8]) -> Result<Frame, MigrateError> {
    dst.read(&mut &wire[..])
}

#[test]
fn frames_round_trip_in_both_directions_and_in_place() {
    let (mut s, mut d) = pair(KEY, &ND, &[9; 32]);
    let w = sealed(&mut s, &[(Kind::Sync, b""), (Kind::State, b"state bytes")]);
    assert_eq!(w[1].len(), protocol::SEALED_OVERHEAD + 11);
    // The payload does not appear in the clear.
    assert!(!w[1].windows(5).any(|x| x == b"state"));
    assert_eq!(open(&mut d, &w[0]).unwrap().kind, Kind::Sync);
    let f = open(&mut d, &w[1]).unwrap();
    assert_eq!((f.kind, &f.payload[..]), (Kind::State, &b"state bytes"[..]));
    let mut back = Vec::new();
    d.write(&mut back, Kind::SyncAck, b"").unwrap();
    assert_eq!(s.read(&mut &back[..]).unwrap().kind, Kind::SyncAck);
    // A page run sealed where it lies equals one sealed by copy.
    let (mut s1, _) = pair(KEY, &ND, &[9; 32]);
    let (mut s2, mut d2) = pair(KEY, &ND, &[9; 32]);
    let mut payload = protocol::pages_header(3, 1).to_vec();
    payload.extend_from_slice(&[0x5a; 4096]);
    let mut frame = vec![0u8; protocol::SEALED_OVERHEAD + payload.len()];
    frame[FRAME_HEADER..FRAME_HEADER + payload.len()].copy_from_slice(&payload);
    s1.seal(Kind::Pages, &mut frame).unwrap();
    assert_eq!(sealed(&mut s2, &[(Kind::Pages, &payload)])[0], frame);
    let f = d2.read_into(&mut &frame[..], Vec::new()).unwrap();
    assert_eq!(f.payload, payload);
}

#[test]
fn every_bit_flip_is_refused() {
    let (mut s, _) = pair(KEY, &ND, &[9; 32]);
    let w = sealed(&mut s, &[(Kind::Pages, &[7u8; 48])]).remove(0);
    for i in 0..w.len() {
        for bit in 0..8 {
            let (_, mut d) = pair(KEY, &ND, &[9; 32]);
            let mut b = w.clone();
            b[i] ^= 1 << bit;
            assert!(
                open(&mut d, &b).is_err(),
                "flip of bit {bit} in byte {i} accepted"
            );
        }
    }
    let (_, mut d) = pair(KEY, &ND, &[9; 32]);
    assert!(open(&mut d, &w).is_ok());
}

#[test]
fn replayed_reordered_and_dropped_frames_are_refused() {
    let (mut s, _) = pair(KEY, &ND, &[9; 32]);
    let w = sealed(
        &mut s,
        &[(Kind::Pages, b"a"), (Kind::Pages, b"b"), (Kind::Sync, b"")],
    );
    let fresh = || pair(KEY, &ND, &[9; 32]).1;
    let seq = |d: &mut Session, order: &[usize]| -> Result<(), MigrateError> {
        for &i in order {
            open(d, &w[i])?;
        }
        Ok(())
    };
    assert!(seq(&mut fresh(), &[0, 1, 2]).is_ok());
    for (what, order) in [
        ("replay", &[0, 0][..]),
        ("replay later", &[0, 1, 0]),
        ("reorder", &[1, 0]),
        ("drop", &[0, 2]),
        ("drop the first", &[1]),
    ] {
        let e = seq(&mut fresh(), order).unwrap_err();
        assert!(matches!(e, MigrateError::Integrity(_)), "{what}: {e}");
    }
    // A frame that failed is not accepted afterwards in its good form.
    let mut d = fresh();
    let mut bad = w[0].clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(open(&mut d, &bad).is_err());
    assert!(open(&mut d, &w[0]).is_err());
}

#[test]
fn frames_from_another_session_key_or_direction_are_refused() {
    let (mut s, mut d) = pair(KEY, &ND, &[9; 32]);
    let w = sealed(&mut s, &[(Kind::Sync, b"")]).remove(0);
    // Another destination nonce, another transcript, another key.
    for (key, nd, t) in [
        (KEY, [3u8; 32], [9u8; 32]),
        (KEY, ND, [8; 32]),
        (&b"another key of thirty-two bytes!"[..], ND, [9; 32]),
    ] {
        let (_, mut other) = pair(key, &nd, &t);
        let e = open(&mut other, &w).unwrap_err();
        assert!(matches!(e, MigrateError::Integrity(_)), "{e}");
    }
    // Reflected back to its sender: the other direction's key.
    let e = s.read(&mut &w[..]).unwrap_err();
    assert!(matches!(e, MigrateError::Integrity(_)), "{e}");
    assert!(open(&mut d, &w).is_ok());
}

#[test]
fn headers_are_checked_before_anything_is_allocated() {
    let (_, mut d) = pair(KEY, &ND, &[9; 32]);
    let h = protocol::sealed_header(Kind::Sync, u32::MAX, 0);
    assert!(matches!(open(&mut d, &h), Err(MigrateError::Protocol(_))));
    let (mut s, _) = pair(KEY, &ND, &[9; 32]);
    let mut big = vec![0u8; protocol::SEALED_OVERHEAD + (1 << 20) + 1];
    assert!(s.seal(Kind::State, &mut big).is_err());
    assert!(s.seal(Kind::Sync, &mut [0u8; 3]).is_err());
}

#[test]
fn the_transcript_covers_every_handshake_byte() {
    let mut a = Transcript::default();
    let mut w = Vec::new();
    a.send(&mut w, Kind::Auth, &protocol::Auth { mac: vec![1, 2] })
        .unwrap();
    let mut b = Transcript::default();
    b.recv(&mut &w[..]).unwrap();
    assert_eq!(a.hash(), b.hash());
    let mut c = Transcript::default();
    c.send(
        &mut Vec::new(),
        Kind::Auth,
        &protocol::Auth { mac: vec![1, 3] },
    )
    .unwrap();
    assert_ne!(a.hash(), c.hash());
    assert_ne!(a.hash(), Transcript::default().hash());
}
