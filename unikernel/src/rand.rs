//! Random numbers that differ between clones: a small PRNG (xoshiro256**)
//! seeded from the identity page and reseeded whenever the generation
//! changes, so guests restored from one snapshot never share a sequence.
//! Not cryptographic.

use spin::Mutex;

struct State {
    generation: u64,
    s: [u64; 4],
    seeded: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    generation: 0,
    s: [0; 4],
    seeded: false,
});

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random `u64`.
pub fn u64() -> u64 {
    let id = crate::identity::identity();
    let mut st = STATE.lock();
    if !st.seeded || st.generation != id.generation {
        let mut x = id.seed[0] ^ id.seed[1].rotate_left(32) ^ crate::rt::rdtsc();
        st.s = [
            splitmix(&mut x),
            splitmix(&mut x),
            splitmix(&mut x),
            splitmix(&mut x),
        ];
        st.generation = id.generation;
        st.seeded = true;
    }
    let s = &mut st.s;
    let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
    let t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = s[3].rotate_left(45);
    out
}
