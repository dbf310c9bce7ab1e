//! A guest as data: [`Vmm::capture`] turns a stopped guest into a
//! [`VmmState`] (every component through its `Persist` impl, guest memory's
//! pages aside), and [`Vmm::assemble`] builds a runnable guest from one.
//! Snapshots and migrations use nothing else.

use super::{guest, Control, Life, Vmm};
use crate::clock::{ClockArgs, ClockState, GuestClock};
use crate::compat::{self, GuestCpu};
use crate::cpu::vcpu::VcpuState;
use crate::devices::{DeviceState, Devices};
use crate::heap::Heap;
use crate::identity::{Identity, IdentityArgs};
use crate::loader::Image;
use crate::memory::MemState;
use crate::persist::{Persist, StateError};
use crate::trace::BootTrace;
use crate::vm::Vm;
use kvm_bindings::kvm_clock_data;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// vCPUs a guest may have (the state already holds a list).
pub const MAX_VCPUS: usize = 1;

/// The monitor's own state of a guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Exits handled so far.
    pub exits: u64,
    /// The heap: bounds, protected ranges (the page tables are rebuilt
    /// from it and the image).
    pub heap: Heap,
    /// Generation and clone index.
    pub identity: Identity,
}

/// Everything about a guest but its memory's pages.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmmState {
    /// The CPU the guest sees.
    pub cpu: GuestCpu,
    /// Each vCPU, in order.
    pub vcpus: Vec<VcpuState>,
    /// The KVM clock.
    pub kvm_clock: kvm_clock_data,
    /// The guest's clock page.
    pub clock: ClockState,
    /// The monitor's own state.
    pub monitor: MonitorState,
    /// The image file's bytes (symbols, segments: the monitor's view).
    pub image: Vec<u8>,
    /// Device records, in table order.
    pub devices: Vec<DeviceState>,
    /// Guest memory's size and writable ranges.
    pub memory: MemState,
}

/// What [`Vmm::assemble`] needs besides the state: a VM whose memory holds
/// the guest's pages, its devices reopened here, the control block.
pub struct Parts {
    /// The VM with guest memory registered and filled.
    pub vm: Vm,
    /// The devices, reopened on this host.
    pub devices: Devices,
    /// The control block.
    pub ctl: Arc<Control>,
    /// Boot trace, if tracing.
    pub trace: Option<BootTrace>,
    /// The clone index to give the guest (the saved one when `None`).
    pub clone_index: Option<u32>,
}

/// What [`check`] found in a state: its image and heap, checked, and the
/// numbers the vCPUs and the clock are rebuilt from.
pub(crate) struct Checked {
    /// The guest's image, parsed and validated.
    pub image: Image,
    /// The heap, checked against guest memory and the image.
    pub heap: Heap,
    /// The guest's TSC rate.
    pub tsc_khz: u32,
    /// The guest TSC when the state was saved.
    pub tsc_at_save: u64,
}

/// The checks of [`Vmm::assemble`] that need no KVM (the fuzz targets run
/// them on hostile states): vCPUs, CPU, image, heap. A state that passes
/// can only describe what a monitor could have built: in particular, the
/// heap's other writable ranges are the stack and the image's writable
/// segments, nothing of the monitor's own.
pub(crate) fn check(st: &VmmState) -> Result<Checked, StateError> {
    if st.vcpus.is_empty() || st.vcpus.len() > MAX_VCPUS {
        return Err(StateError::Invalid(format!(
            "{} vCPUs; this duet runs guests with 1 to {MAX_VCPUS}",
            st.vcpus.len()
        )));
    }
    for v in &st.vcpus {
        if compat::signature(&v.cpuid) != (st.cpu.vendor, st.cpu.features) {
            return Err(StateError::Invalid(
                "the vCPU state and the guest's CPU disagree".into(),
            ));
        }
    }
    let tsc_khz = u32::try_from(st.cpu.tsc_khz).map_err(|_| {
        StateError::Invalid(format!("a TSC of {} kHz is impossible", st.cpu.tsc_khz))
    })?;
    let image = Image::parse(st.image.clone(), st.memory.size)
        .map_err(|e| StateError::Invalid(format!("the guest's image: {e}")))?;
    let Some(tsc_at_save) = st.vcpus[0].tsc() else {
        return Err(StateError::Invalid("the vCPU state has no TSC".into()));
    };
    let heap = Heap::restore((), &st.monitor.heap)?;
    if heap.limit() > st.memory.size || heap.start() < image.end() {
        return Err(StateError::Invalid(
            "the heap lies outside guest memory or over the image".into(),
        ));
    }
    if heap.fixed_writable() != guest::fixed_writable(&image) {
        return Err(StateError::Invalid(
            "the heap's writable ranges are not the stack and the image's data".into(),
        ));
    }
    Ok(Checked {
        image,
        heap,
        tsc_khz,
        tsc_at_save,
    })
}

impl Vmm {
    /// Captures the guest's state, stopped between two `KVM_RUN`s (the last
    /// hypercall's `out` completed first, so the saved RIP is past it).
    ///
    /// Devices with threads of their own are quiesced first and stay so:
    /// the caller resumes them ([`Vmm::resume_devices`]) if the guest goes
    /// on here.
    pub fn capture(&mut self) -> Result<VmmState, StateError> {
        self.vcpus[0].complete_io().map_err(StateError::Invalid)?;
        self.devices.quiesce();
        let vcpus = self
            .vcpus
            .iter()
            .map(Persist::save)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VmmState {
            cpu: self.guest_cpu()?,
            vcpus,
            kvm_clock: self.vm.clock()?,
            clock: self.clock.save()?,
            monitor: MonitorState {
                exits: self.exits,
                heap: self.heap.save()?,
                identity: self.identity.save()?,
            },
            image: self.image.bytes().to_vec(),
            devices: self.devices.save()?,
            memory: self.vm.mem().save()?,
        })
    }

    /// Builds a runnable guest from `st` (a snapshot restore and a
    /// migration destination share it): the vCPUs, the KVM clock, the
    /// tables' allocator, the heap, the guest clock rebased on the TSC now
    /// (monotonic time continues, wall time is this host's), and a new
    /// identity (generation + 1, fresh seed).
    pub fn assemble(p: Parts, st: &VmmState) -> Result<Vmm, StateError> {
        let Parts {
            mut vm,
            mut devices,
            ctl,
            mut trace,
            clone_index,
        } = p;
        if vm.mem().size() != st.memory.size {
            return Err(StateError::Invalid(
                "guest memory and the state disagree on its size".into(),
            ));
        }
        let Checked {
            image,
            heap,
            tsc_khz,
            tsc_at_save,
        } = check(st)?;
        // The guest may have the monitor write where its heap and image
        // say, not where the saved memory state says.
        vm.mem_mut().set_writable(heap.writable_ranges());
        let vcpus = st
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, s)| vm.restore_vcpu(i as u64, tsc_khz, s))
            .collect::<Result<Vec<_>, _>>()?;
        vm.set_clock(&st.kvm_clock)?;
        // The monitor's own structures, rebuilt: nothing privileged is
        // taken from the saved state.
        let bad = |e: crate::paging::PagingError| {
            StateError::Invalid(format!("rebuilding the guest's tables: {e}"))
        };
        let pt = guest::map(vm.mem(), &image, &heap).map_err(bad)?;
        guest::write_privileged(vm.mem()).map_err(bad)?;
        for v in &vcpus {
            guest::reset_privileged(v)?;
        }
        if let Some(t) = &mut trace {
            t.mark("restore vCPU + devices");
        }
        // The guest TSC now (KVM set it from the saved MSR), to rebase the clock.
        let now = Instant::now();
        let tsc_now = vcpus[0].tsc()?;
        let clock = GuestClock::restore(
            ClockArgs::now(vm.mem(), tsc_at_save, tsc_now, now),
            &st.clock,
        )?;
        if let Some(t) = &mut trace {
            t.anchor(now, tsc_now, st.cpu.tsc_khz);
        }
        let identity = Identity::restore(
            IdentityArgs {
                mem: vm.mem(),
                clone_index,
            },
            &st.monitor.identity,
        )?;
        // Restored queues are served from where the capture left them.
        vm.start_devices(&mut devices)
            .map_err(|e| StateError::Device(e.to_string()))?;
        Ok(Vmm {
            vcpus,
            devices,
            image,
            pt,
            heap,
            clock,
            identity,
            exits: st.monitor.exits,
            started: Instant::now(),
            ctl,
            trace,
            life: Life::new(),
            debugger: None,
            vm,
        })
    }

    /// Lets device threads go on after a [`Vmm::capture`] the guest
    /// survives (a snapshot, an aborted migration).
    pub fn resume_devices(&self) {
        self.devices.resume();
    }

    /// The trace, for a caller that marks restore phases.
    pub fn trace_mut(&mut self) -> Option<&mut BootTrace> {
        self.trace.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::snapshot::{sample as spec, Spec};
    use crate::layout;
    use crate::statefile::StateFile;
    use duet_abi::boot::IMAGE_BASE;

    fn state(s: &Spec) -> VmmState {
        let bytes = s.sections().encode();
        StateFile::decode(&bytes, "t").unwrap().to_state().unwrap()
    }

    /// Found writing the snapshot fuzz target's check: a state file (or a
    /// migration peer) could list the page tables, or the image's text,
    /// among the heap's writable ranges, and the guest then had the
    /// monitor write hypercall results there.
    #[test]
    fn a_heap_that_gives_the_guest_the_monitors_pages_is_refused() {
        let good = state(&spec(None));
        let c = check(&good).unwrap();
        assert_eq!(c.heap.fixed_writable(), guest::fixed_writable(&c.image));
        let stack = (layout::STACK_BOTTOM, layout::STACK_TOP);
        let data = (IMAGE_BASE + 0x1000, IMAGE_BASE + 0x2000);
        for fixed in [
            vec![stack, data, (layout::PAGE_TABLES, layout::PAGE_TABLES_END)],
            vec![stack, (IMAGE_BASE, IMAGE_BASE + 0x2000)],
            vec![(layout::GDT, layout::STACK_TOP), data],
        ] {
            let e = check(&state(&spec(Some(&fixed)))).err().unwrap();
            assert!(e.to_string().contains("writable ranges"), "{e}");
        }
        // The rebuild the fuzz target runs (its own check included).
        assert!(crate::fuzzing::snapshot::restore(
            &spec(None).sections().encode()
        ));
    }
}
