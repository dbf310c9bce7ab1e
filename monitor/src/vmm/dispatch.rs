//! Hypercall dispatch: one exhaustive `match` from number to handler, each
//! handler given exactly the components it acts on.

use super::Vmm;
use crate::devices::{block, net};
use crate::hypercall::poll::Waker;
use crate::hypercall::{console, lifecycle, mem, poll, snapshot};
use crate::outcome::{Flow, Outcome};
use duet_abi::hypercall::Hypercall;

impl Vmm {
    /// Handles hypercall number `nr` with `eax` = `value`.
    #[inline]
    pub(super) fn hypercall(&mut self, nr: u16, value: u32) -> Flow {
        if nr >= duet_abi::virtio::DOORBELL_BASE {
            return self.doorbell(u32::from(nr - duet_abi::virtio::DOORBELL_BASE));
        }
        let Some(call) = Hypercall::from_number(nr) else {
            return Flow::Stop(Outcome::Failed(format!(
                "guest made unknown hypercall {nr} (port {:#x}); it was built for a different Duet ABI or is corrupt",
                duet_abi::hypercall::PORT_BASE + nr
            )));
        };
        match call {
            Hypercall::Nop => Flow::Continue,
            Hypercall::ConsoleWrite => console::write(self.vm.mem(), value),
            Hypercall::Exit => Flow::Stop(Outcome::Exited((value & 0xff) as u8)),
            Hypercall::Abort => self.abort(value),
            Hypercall::BootTrace => {
                lifecycle::boot_trace(self.vm.mem(), self.trace.as_mut(), value)
            }
            Hypercall::Poll => {
                let waker = Waker {
                    wake_fd: self.ctl.wake_fd(),
                    shutdown_unreported: &mut self.life.shutdown_unreported,
                };
                poll::poll(self.vm.mem(), &self.devices, &self.clock, waker, value)
            }
            Hypercall::MemGrow => mem::grow(&mut self.heap, &mut self.pt, self.vm.mem_mut(), value),
            Hypercall::MemRelease => mem::release(&self.heap, self.vm.mem_mut(), value),
            Hypercall::MemProtect => {
                mem::protect(&mut self.heap, &mut self.pt, self.vm.mem_mut(), value)
            }
            Hypercall::BlkRead => block::hypercalls::io(&self.devices, self.vm.mem(), value, false),
            Hypercall::BlkWrite => block::hypercalls::io(&self.devices, self.vm.mem(), value, true),
            Hypercall::BlkFlush => block::hypercalls::flush(&self.devices, self.vm.mem(), value),
            Hypercall::BlkBatch => block::hypercalls::batch(&self.devices, self.vm.mem(), value),
            Hypercall::NetSend | Hypercall::NetRecv => {
                net::hypercalls::frame(&mut self.devices, self.vm.mem(), value, call)
            }
            Hypercall::NetSendBatch | Hypercall::NetRecvBatch => {
                net::hypercalls::batch(&mut self.devices, self.vm.mem(), value, call)
            }
            Hypercall::SnapshotPoint => {
                snapshot::snapshot_point(self.vm.mem(), self.life.template, value)
            }
            Hypercall::VirtioStatus => match self.devices.virtio(value) {
                None => Flow::Stop(Outcome::Failed(format!(
                    "guest made VirtioStatus for device {value}, which is not a virtio device; check the device table's DEVICE_FLAG_VIRTIO"
                ))),
                Some(v) => match v.status_call(self.vm.mem()) {
                    Ok(()) => Flow::Continue,
                    Err(e) => Flow::Stop(Outcome::Failed(format!(
                        "device {value}'s virtio slot is unusable: {e}"
                    ))),
                },
            },
        }
    }

    /// A doorbell that reached the run loop (no ioeventfd on its port).
    fn doorbell(&mut self, dev: u32) -> Flow {
        match self.devices.virtio(dev) {
            Some(v) => {
                v.doorbell();
                Flow::Continue
            }
            None => Flow::Stop(Outcome::Failed(format!(
                "guest made unknown hypercall {} (the virtio doorbell of device {dev}, which is not a virtio device); it was built for a different Duet ABI or is corrupt",
                duet_abi::virtio::DOORBELL_BASE as u32 + dev
            ))),
        }
    }

    /// The guest panicked: its message, then where (the backtrace from
    /// its abort call) and, with `--core`, a core file.
    fn abort(&mut self, value: u32) -> Flow {
        match lifecycle::abort(self.vm.mem(), value) {
            Flow::Stop(Outcome::Aborted(mut msg)) => {
                if let Ok(r) = self.vcpus[0].get_regs() {
                    msg.push_str(&super::report::backtrace(self, r.rip, r.rbp));
                }
                msg.extend(self.with_debugger(|d, v| d.on_death(v, None)).flatten());
                Flow::Stop(Outcome::Aborted(msg))
            }
            other => other,
        }
    }
}
