//! Prints a greeting and exits with status 0.
#![no_std]
#![no_main]

duet::main!(main);

fn main() {
    duet::println!("Hello from Duet!");
}
