//! Prints its identity (generation, clone index, seed, a random number),
//! marks its ready point with `duet::snapshot_point()`, prints the identity
//! again, then keeps running: `ROUNDS` (first argument, default 3) rounds
//! of a little work, printing a line per round.
#![no_std]
#![no_main]

duet::main!(main);

fn show(when: &str) {
    let id = duet::identity();
    duet::println!(
        "{when}: generation={} clone={} seed={:016x}{:016x} rand={:016x}",
        id.generation,
        id.clone_index,
        id.seed[0],
        id.seed[1],
        duet::rand::u64()
    );
}

fn main() {
    let rounds: u64 = duet::env::args()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    duet::println!("identity app ready");
    show("boot");
    let restored = duet::snapshot_point();
    show(if restored { "restored" } else { "continued" });
    let mut acc = 1u64;
    for r in 0..rounds {
        for i in 0..100_000u64 {
            acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        duet::println!("clone={} round {r} alive", duet::identity().clone_index);
    }
    duet::println!("identity done {}", acc & 1);
}
