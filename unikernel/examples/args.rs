//! Echoes its arguments and environment. An argument `status=N` makes it
//! exit with status N.
#![no_std]
#![no_main]

duet::main!(main);

fn main() -> i32 {
    let mut status = 0;
    for (i, a) in duet::env::args().enumerate() {
        duet::println!("arg[{i}]={a}");
        if let Some(n) = a.strip_prefix("status=") {
            status = n.parse().unwrap_or(0);
        }
    }
    for (k, v) in duet::env::vars() {
        duet::println!("env {k}={v}");
    }
    status
}
