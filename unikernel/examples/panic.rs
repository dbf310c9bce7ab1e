//! Panics with a known message (tests check message, location and status).
#![no_std]
#![no_main]

duet::main!(main);

fn main() {
    duet::println!("about to panic");
    let answer = core::hint::black_box(42);
    panic!("boom: the answer is {answer}");
}
