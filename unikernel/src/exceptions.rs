//! Exception entry points and the image header that lists them.
//!
//! These stubs are the only ring-0 code in a Duet guest. The monitor points
//! every IDT gate at them (on the TSS's IST stack); each pushes the vector,
//! the general registers and CR2 into a [`FaultFrame`] and reports it with
//! the fault hypercall. The monitor prints the report, symbolizes RIP, and
//! ends the VM. They are written to be short because on nested (PVM) hosts
//! every ring-0 instruction is emulated.
//!
//! [`FaultFrame`]: duet_abi::hypercall::FaultFrame

use core::arch::naked_asm;
use duet_abi::boot::{ImageHeader, EXCEPTION_VECTORS, IMAGE_MAGIC};
use duet_abi::hypercall::Hypercall;
use duet_abi::ABI_VERSION;

/// Common tail of every stub: save registers and CR2, report, halt.
#[unsafe(naked)]
unsafe extern "C" fn fault_common() {
    naked_asm!(
        "push rax", "push rbx", "push rcx", "push rdx", "push rsi", "push rdi", "push rbp",
        "push r8", "push r9", "push r10", "push r11", "push r12", "push r13", "push r14", "push r15",
        "mov rax, cr2",
        "push rax",
        // The IST stack lies below 4 GiB, so the frame's address fits in eax.
        "mov eax, esp",
        "mov dx, {port}",
        "out dx, eax",
        "2:",
        "hlt",
        "jmp 2b",
        port = const Hypercall::Fault as u16 + duet_abi::hypercall::PORT_BASE,
    );
}

macro_rules! stubs {
    ($($name:ident = $vec:literal),* $(,)?) => {
        $(
            #[unsafe(naked)]
            unsafe extern "C" fn $name() {
                naked_asm!(
                    // Vectors without a CPU error code push a 0 so every
                    // frame has the same layout.
                    ".if {has_err} == 0",
                    "push 0",
                    ".endif",
                    "push {vec}",
                    "jmp {common}",
                    has_err = const duet_abi::hypercall::vector_has_error_code($vec) as u8,
                    vec = const $vec,
                    common = sym fault_common,
                );
            }
        )*
        /// The image header: the monitor reads it from the ELF file before boot.
        #[used]
        #[unsafe(link_section = ".duet.header")]
        pub static HEADER: ImageHeader = ImageHeader {
            magic: IMAGE_MAGIC,
            abi_version: ABI_VERSION,
            flags: 0,
            vectors: [$(Some($name)),*],
        };
    };
}

stubs!(
    v0 = 0,
    v1 = 1,
    v2 = 2,
    v3 = 3,
    v4 = 4,
    v5 = 5,
    v6 = 6,
    v7 = 7,
    v8 = 8,
    v9 = 9,
    v10 = 10,
    v11 = 11,
    v12 = 12,
    v13 = 13,
    v14 = 14,
    v15 = 15,
    v16 = 16,
    v17 = 17,
    v18 = 18,
    v19 = 19,
    v20 = 20,
    v21 = 21,
    v22 = 22,
    v23 = 23,
    v24 = 24,
    v25 = 25,
    v26 = 26,
    v27 = 27,
    v28 = 28,
    v29 = 29,
    v30 = 30,
    v31 = 31,
);

const _: () = assert!(EXCEPTION_VECTORS == 32);
