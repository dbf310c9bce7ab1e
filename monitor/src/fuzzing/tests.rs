//! The harnesses on fixed pseudo-random inputs (so plain `cargo test`
//! keeps them building and running), and the inputs the fuzz targets
//! found, as regression tests.

use super::elf::{Body, ElfSpec, Seg, Vaddr};
use super::gen::Len;
use arbitrary::{Arbitrary, Unstructured};

/// `n` inputs made from a xorshift stream seeded with `seed`.
fn inputs<T: for<'a> Arbitrary<'a>>(n: usize, mut seed: u64) -> Vec<T> {
    let mut bytes = vec![0u8; 4096];
    (0..n)
        .filter_map(|_| {
            for b in bytes.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = seed as u8;
            }
            let len = 16 + (seed as usize % (bytes.len() - 16));
            T::arbitrary(&mut Unstructured::new(&bytes[..len])).ok()
        })
        .collect()
}

#[test]
fn every_harness_runs_on_pseudo_random_inputs() {
    for i in inputs(300, 1) {
        super::hypercalls::run(&i);
    }
    for i in inputs(300, 2) {
        super::loader::run(&i);
    }
    for i in inputs(300, 3) {
        super::snapshot::run(&i);
    }
    for i in inputs(300, 4) {
        super::migration::run(&i);
    }
    for i in inputs(300, 5) {
        super::control::run(&i);
    }
    for i in inputs(300, 6) {
        super::cli::run(&i);
    }
}

fn text(vaddr: Vaddr, bytes: u16) -> Seg {
    Seg {
        load: true,
        ptype: 0,
        flags: 5,
        vaddr,
        extra: Some(Len::Small(0)),
        body: Body::Bytes(bytes),
    }
}

fn image(segs: Vec<Seg>, entry: Result<(u8, u16), u64>) -> Vec<u8> {
    ElfSpec {
        entry,
        segs,
        ..super::snapshot::sample_image()
    }
    .build()
}

/// Found by the loader target: a text segment that does not start on a
/// page (0x279079) passed an entry point up to a page past its last page
/// (0x286044, the segment's pages end at 0x286000). The guest would have
/// started in unmapped memory.
#[test]
fn an_entry_point_past_the_text_is_refused() {
    use crate::loader::{Image, LoadError};
    let seg = text(Vaddr::Page(121, 121), 52736);
    let past = image(vec![seg], Ok((0, 53195)));
    assert!(matches!(
        Image::parse(past.clone(), 64 << 20),
        Err(LoadError::EntryOutsideText(0x28_6044))
    ));
    super::loader::check(past, 64 << 20, &[]);
    // The segment's last byte is still an entry point.
    let last = image(vec![seg], Ok((0, 52736 - 1)));
    let i = Image::parse(last, 64 << 20).unwrap();
    assert_eq!(i.entry, 0x27_9079 + 52736 - 1);
}

/// The virtio driver steps bring the disk's queue up and a read request
/// through the descriptor checks to the disk (its status byte says OK).
#[test]
fn the_virtio_steps_reach_the_disk() {
    use super::gen::{Addr, Word};
    use super::hypercalls::driver::{Desc, Kick, Setup};
    use super::hypercalls::{run_then, GuestWrite, Input, Nr, Step, Value, LAYOUT};
    let status = Addr::Heap(0x12000);
    let input = Input {
        template: false,
        steps: vec![
            Step::Call {
                writes: vec![GuestWrite {
                    at: status,
                    words: vec![Word::Raw(0xff)],
                }],
                nr: Nr::Call(3),
                value: Value::Raw(0),
            },
            Step::Setup(Setup {
                features: None,
                size: Ok(4),
                rings: (Addr::Heap(0x1000), Addr::Heap(0x2000), Addr::Heap(0x3000)),
                raw: false,
                ready: None,
            }),
            Step::Kick(Kick {
                descs: vec![
                    Desc {
                        addr: Addr::Heap(0x10000),
                        len: Len::Small(16),
                        flags: 1,
                        next: 1,
                    },
                    Desc {
                        addr: Addr::Heap(0x11000),
                        len: Len::Sectors(1),
                        flags: 3,
                        next: 2,
                    },
                    Desc {
                        addr: status,
                        len: Len::Small(1),
                        flags: 2,
                        next: 0,
                    },
                ],
                first: 0,
                headers: vec![(Addr::Heap(0x10000), 0, 3)],
                heads: vec![0],
                skew: 0,
            }),
        ],
    };
    let byte = run_then(&input, |g| {
        let mut b = [0u8];
        g.mem()
            .read_bytes(duet_abi::Gpa(status.at(&LAYOUT)), &mut b)
            .unwrap();
        b[0]
    });
    assert_eq!(byte, 0, "the request was not served (status {byte:#x})");
}

/// A described session reaches the end of the destination's path (state
/// decoded, checked and rebuilt); a byte changed on the way, or a source
/// without the key, is refused.
#[test]
fn a_sealed_session_reaches_the_rebuild_and_tampering_is_refused() {
    use super::migration::{session, Payload, Tamper};
    use crate::migration::MigrateError;
    let d = |t, auth| {
        described(
            t,
            auth,
            Payload::State(Box::new(super::snapshot::sample(None))),
        )
    };
    session(&d(Tamper::None, true)).unwrap();
    let e = session(&d(Tamper::Byte(40, 1), true)).unwrap_err();
    assert!(matches!(e, MigrateError::Integrity(_)), "{e}");
    let e = session(&d(Tamper::None, false)).unwrap_err();
    assert!(matches!(e, MigrateError::Rejected(_)), "{e}");
    // A dropped frame: the next one arrives out of turn.
    let e = session(&d(Tamper::Drop, true)).unwrap_err();
    assert!(matches!(e, MigrateError::Integrity(_)), "{e}");
    // The sample state with changes reaches the rebuild too.
    let t = super::snapshot::Tweaks {
        heap: None,
        protect: vec![(2, 1, false)],
        clock: None,
        tsc: None,
        virtio: vec![],
        devices: vec![],
    };
    session(&described(Tamper::None, true, Payload::Sample(Box::new(t)))).unwrap();
    // A state whose CPU is not the one the Hello named.
    let mut other = super::snapshot::sample(None);
    other.same_cpu = false;
    let e = session(&described(
        Tamper::None,
        true,
        Payload::State(Box::new(other)),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("disagrees with the hello"), "{e}");
}

/// A session of a page run, a state frame (tampered with as `t`) and an
/// honest end; the source proves the key when `auth`.
fn described(
    t: super::migration::Tamper,
    auth: bool,
    state: super::migration::Payload,
) -> super::migration::Described {
    use super::migration::{Described, FrameSpec, HelloSpec, Payload, Tamper};
    Described {
        hello: HelloSpec {
            current: true,
            mem: Ok(8),
            devices: vec![],
            copy_disks: false,
        },
        auth,
        frames: vec![
            FrameSpec {
                kind: None,
                payload: Payload::Pages(0, Len::Small(1), 1),
                tamper: Tamper::None,
            },
            FrameSpec {
                kind: None,
                payload: state,
                tamper: t,
            },
            FrameSpec {
                kind: None,
                payload: Payload::End(true, 0, 0),
                tamper: Tamper::None,
            },
        ],
    }
}

/// The Sample input starts from a good state: with a virtio disk whose
/// rings sit on heap pages it passes the checks and reaches the rebuild;
/// a heap ending past its limit does not.
#[test]
fn the_sample_input_reaches_the_rebuild() {
    use super::snapshot::{bytes, restore, Input, Tweaks};
    let t = |heap| Tweaks {
        heap,
        protect: vec![(1, 2, true)],
        clock: None,
        tsc: None,
        virtio: vec![(15, vec![(8, 4, 5, 6, 0, 0)])],
        devices: vec![],
    };
    let sample = |h| bytes(&Input::Sample(Box::new(t(h)), vec![]));
    assert!(restore(&sample(None)));
    assert!(!restore(&sample(Some((32, 16)))));
}
