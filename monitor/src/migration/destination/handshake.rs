//! The destination's half of the handshake: read the Hello, prove we hold
//! the key, make the source prove it over everything said so far, and
//! derive the session. Nothing in the Hello is acted on before the proof.
//! Generic over the stream so the fuzzer drives this same code.

use crate::migration::protocol::{self, Kind, NONCE_LEN};
use crate::migration::session::{Role, Session, Transcript};
use crate::migration::MigrateError;
use std::io::{Read, Write};

/// Runs the handshake on `s` with our `nonce`; the source's Hello and the
/// sealed session every later frame goes through.
pub(crate) fn handshake<S: Read + Write>(
    s: &mut S,
    key: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Result<(protocol::Hello, Session), MigrateError> {
    let mut t = Transcript::default();
    let hello: protocol::Hello = t.recv(s)?.expect(Kind::Hello)?.decode()?;
    if hello.magic != protocol::MAGIC || hello.protocol != protocol::PROTOCOL_VERSION {
        return Err(MigrateError::Rejected(format!(
            "migration protocol version {} is not this duet's {}",
            hello.protocol,
            protocol::PROTOCOL_VERSION
        )));
    }
    let ch = protocol::Challenge {
        nonce,
        mac: protocol::mac(key, b"dst", &t.hash(), &nonce),
    };
    t.send(s, Kind::Challenge, &ch)?;
    let after_challenge = t.hash();
    let auth: protocol::Auth = t.recv(s)?.expect(Kind::Auth)?.decode()?;
    if !protocol::verify(key, b"src", &after_challenge, &[], &auth.mac) {
        return Err(MigrateError::Rejected(
            "the source does not hold the migration key (check --migration-key-file on both sides), or the handshake was altered on the way"
                .into(),
        ));
    }
    let sess = Session::new(key, Role::Destination, &hello.nonce, &nonce, &t.hash());
    Ok((hello, sess))
}
