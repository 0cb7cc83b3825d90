//! How devices are wired to the guest without exits to userspace: ioeventfds (a guest write to
//! a notify address signals an eventfd inside KVM), irqfds (a write to an eventfd raises a GSI
//! inside KVM) and the GSI routing table that says what each GSI is: an IOAPIC/PIC pin or an
//! MSI message.
//!
//! KVM has one routing table per VM and `KVM_SET_GSI_ROUTING` replaces all of it, so the table
//! lives here, once: the default pin routes (GSIs 0-15 to the PIC and the IOAPIC, 16-23 to the
//! IOAPIC, as KVM sets them up) plus every MSI route a device programmed (MSI-X vectors).
//!
//! Transports see the [`EventWiring`] trait, so they are tested without /dev/kvm
//! ([`mock::RecordingWiring`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::IOAPIC_PINS;

/// Errors wiring eventfds into KVM.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    /// KVM_IOEVENTFD failed.
    #[error("unable to {op} an ioeventfd at {addr:?}: {source}")]
    IoEvent {
        /// register or unregister.
        op: &'static str,
        /// The notify address.
        addr: NotifyAddress,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_IRQFD failed.
    #[error("unable to {op} an irqfd for GSI {gsi}: {source}")]
    Irqfd {
        /// register or unregister.
        op: &'static str,
        /// The interrupt line.
        gsi: u32,
        /// The cause.
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_GSI_ROUTING failed.
    #[error("unable to set the GSI routing table: {0}")]
    SetRouting(kvm_ioctls::Error),
    /// An eventfd could not be created.
    #[error("unable to create an eventfd for GSI {gsi}")]
    CreateEventFd {
        /// The interrupt line it was for.
        gsi: u32,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The table has more entries than KVM_SET_GSI_ROUTING takes.
    #[error("the GSI routing table has too many entries")]
    TooManyRoutes,
}

/// A guest address whose writes signal an ioeventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyAddress {
    /// A port.
    Pio(u64),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// Which writes signal the eventfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotifyMatch {
    /// Any write, of any width.
    Any,
    /// 16-bit writes of this value.
    U16(u16),
    /// 32-bit writes of this value.
    U32(u32),
}

/// An MSI message: where and what the device writes to interrupt (x86: LAPIC address/data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address, low 32 bits.
    pub address_lo: u32,
    /// Address, high 32 bits.
    pub address_hi: u32,
    /// Data.
    pub data: u32,
}

/// What a GSI delivers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A pin of an in-kernel interrupt controller.
    Irqchip {
        /// KVM_IRQCHIP_PIC_MASTER, _SLAVE or _IOAPIC.
        chip: u32,
        /// The pin.
        pin: u32,
    },
    /// An MSI message.
    Msi(MsiMessage),
}

/// Connects device eventfds to the guest. Implemented over KVM by [`KvmWiring`].
pub trait EventWiring: Send + Sync {
    /// Makes guest writes at `addr` (matching `datamatch`) signal `fd` inside KVM.
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: NotifyAddress,
        datamatch: NotifyMatch,
    ) -> Result<(), IrqError>;
    /// Undoes [`EventWiring::register_ioevent`] (same arguments).
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: NotifyAddress,
        datamatch: NotifyMatch,
    ) -> Result<(), IrqError>;
    /// Makes a write to `fd` raise `gsi` (an edge, or an MSI).
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    /// Makes a write to `fd` assert level-triggered `gsi`; KVM de-asserts it when the guest
    /// acknowledges it (EOI) and signals `resample`, on which the device asserts it again if
    /// it still has an interrupt pending.
    fn register_irqfd_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), IrqError>;
    /// Undoes a registration of `fd` on `gsi`.
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError>;
    /// Routes `gsi` to an MSI message (replacing its previous route).
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError>;
    /// Removes the route of `gsi` (its irqfd then raises nothing).
    fn remove_route(&self, gsi: u32) -> Result<(), IrqError>;
}

/// The routing table: every GSI's routes (GSIs 0-15 have two: PIC and IOAPIC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutingTable {
    routes: BTreeMap<u32, Vec<Route>>,
}

impl Default for RoutingTable {
    /// KVM's default table: GSIs 0-15 to the PIC pins and the IOAPIC pins of the same number,
    /// 16-23 to the IOAPIC.
    fn default() -> RoutingTable {
        let mut routes = BTreeMap::new();
        for gsi in 0..IOAPIC_PINS {
            let mut r = Vec::with_capacity(2);
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                r.push(Route::Irqchip { chip, pin: gsi % 8 });
            }
            r.push(Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: gsi,
            });
            routes.insert(gsi, r);
        }
        RoutingTable { routes }
    }
}

impl RoutingTable {
    /// Routes `gsi` to `msg` alone.
    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) {
        self.routes.insert(gsi, vec![Route::Msi(msg)]);
    }

    /// Removes every route of `gsi`.
    pub fn remove(&mut self, gsi: u32) {
        self.routes.remove(&gsi);
    }

    /// The routes of `gsi`.
    pub fn routes(&self, gsi: u32) -> &[Route] {
        self.routes.get(&gsi).map_or(&[], |r| r.as_slice())
    }

    /// The table as KVM_SET_GSI_ROUTING takes it.
    pub fn to_kvm(&self) -> Result<KvmIrqRouting, IrqError> {
        let mut table = KvmIrqRouting::new(0).map_err(|_| IrqError::TooManyRoutes)?;
        for (&gsi, routes) in &self.routes {
            for route in routes {
                let mut e = kvm_irq_routing_entry {
                    gsi,
                    ..Default::default()
                };
                match *route {
                    Route::Irqchip { chip, pin } => {
                        e.type_ = KVM_IRQ_ROUTING_IRQCHIP;
                        e.u.irqchip.irqchip = chip;
                        e.u.irqchip.pin = pin;
                    }
                    Route::Msi(m) => {
                        e.type_ = KVM_IRQ_ROUTING_MSI;
                        e.u.msi.address_lo = m.address_lo;
                        e.u.msi.address_hi = m.address_hi;
                        e.u.msi.data = m.data;
                    }
                }
                table.push(e).map_err(|_| IrqError::TooManyRoutes)?;
            }
        }
        Ok(table)
    }
}

/// [`EventWiring`] over a KVM VM.
pub struct KvmWiring {
    vm: Arc<VmFd>,
    table: Mutex<RoutingTable>,
}

impl KvmWiring {
    /// Wiring for `vm`, starting from KVM's default routes.
    pub fn new(vm: Arc<VmFd>) -> KvmWiring {
        KvmWiring {
            vm,
            table: Mutex::new(RoutingTable::default()),
        }
    }

    fn update(&self, change: impl FnOnce(&mut RoutingTable)) -> Result<(), IrqError> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut table);
        self.vm
            .set_gsi_routing(&table.to_kvm()?)
            .map_err(IrqError::SetRouting)
    }

    fn ioevent(
        &self,
        register: bool,
        fd: &EventFd,
        addr: NotifyAddress,
        datamatch: NotifyMatch,
    ) -> Result<(), kvm_ioctls::Error> {
        let kvm_addr = match addr {
            NotifyAddress::Pio(p) => IoEventAddress::Pio(p),
            NotifyAddress::Mmio(a) => IoEventAddress::Mmio(a),
        };
        match (register, datamatch) {
            (true, NotifyMatch::Any) => self.vm.register_ioevent(fd, &kvm_addr, NoDatamatch),
            (true, NotifyMatch::U16(v)) => self.vm.register_ioevent(fd, &kvm_addr, v),
            (true, NotifyMatch::U32(v)) => self.vm.register_ioevent(fd, &kvm_addr, v),
            (false, NotifyMatch::Any) => self.vm.unregister_ioevent(fd, &kvm_addr, NoDatamatch),
            (false, NotifyMatch::U16(v)) => self.vm.unregister_ioevent(fd, &kvm_addr, v),
            (false, NotifyMatch::U32(v)) => self.vm.unregister_ioevent(fd, &kvm_addr, v),
        }
    }
}

impl EventWiring for KvmWiring {
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: NotifyAddress,
        datamatch: NotifyMatch,
    ) -> Result<(), IrqError> {
        self.ioevent(true, fd, addr, datamatch)
            .map_err(|source| IrqError::IoEvent {
                op: "register",
                addr,
                source,
            })
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: NotifyAddress,
        datamatch: NotifyMatch,
    ) -> Result<(), IrqError> {
        self.ioevent(false, fd, addr, datamatch)
            .map_err(|source| IrqError::IoEvent {
                op: "unregister",
                addr,
                source,
            })
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .register_irqfd(fd, gsi)
            .map_err(|source| IrqError::Irqfd {
                op: "register",
                gsi,
                source,
            })
    }

    fn register_irqfd_resample(
        &self,
        fd: &EventFd,
        resample: &EventFd,
        gsi: u32,
    ) -> Result<(), IrqError> {
        self.vm
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(|source| IrqError::Irqfd {
                op: "register",
                gsi,
                source,
            })
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
        self.vm
            .unregister_irqfd(fd, gsi)
            .map_err(|source| IrqError::Irqfd {
                op: "unregister",
                gsi,
                source,
            })
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
        self.update(|t| t.set_msi(gsi, msg))
    }

    fn remove_route(&self, gsi: u32) -> Result<(), IrqError> {
        self.update(|t| t.remove(gsi))
    }
}

/// A recording [`EventWiring`] for tests without /dev/kvm.
#[cfg(test)]
pub mod mock {
    use std::os::fd::AsRawFd;

    use super::*;

    /// One call made to the wiring.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum WiringCall {
        /// register_ioevent(fd, addr, datamatch).
        Ioevent(i32, NotifyAddress, NotifyMatch),
        /// unregister_ioevent.
        UnIoevent(i32, NotifyAddress, NotifyMatch),
        /// register_irqfd(fd, gsi) or with resample (the resample fd).
        Irqfd(i32, u32, Option<i32>),
        /// unregister_irqfd.
        UnIrqfd(i32, u32),
        /// set_msi_route.
        Msi(u32, MsiMessage),
        /// remove_route.
        Remove(u32),
    }

    /// Records every call; the routing table it would have set.
    #[derive(Default)]
    pub struct RecordingWiring {
        /// The calls, in order.
        pub calls: Mutex<Vec<WiringCall>>,
        /// The table.
        pub table: Mutex<RoutingTable>,
    }

    impl RecordingWiring {
        fn push(&self, call: WiringCall) {
            self.calls.lock().unwrap().push(call);
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<WiringCall> {
            self.calls.lock().unwrap().clone()
        }

        /// The ioeventfds registered and not unregistered: (address, datamatch).
        pub fn live_ioevents(&self) -> Vec<(NotifyAddress, NotifyMatch)> {
            let mut live: Vec<(i32, NotifyAddress, NotifyMatch)> = Vec::new();
            for c in self.calls() {
                match c {
                    WiringCall::Ioevent(fd, a, m) => live.push((fd, a, m)),
                    WiringCall::UnIoevent(fd, a, m) => live.retain(|l| *l != (fd, a, m)),
                    _ => {}
                }
            }
            live.into_iter().map(|(_, a, m)| (a, m)).collect()
        }
    }

    impl EventWiring for RecordingWiring {
        fn register_ioevent(
            &self,
            fd: &EventFd,
            addr: NotifyAddress,
            m: NotifyMatch,
        ) -> Result<(), IrqError> {
            self.push(WiringCall::Ioevent(fd.as_raw_fd(), addr, m));
            Ok(())
        }
        fn unregister_ioevent(
            &self,
            fd: &EventFd,
            addr: NotifyAddress,
            m: NotifyMatch,
        ) -> Result<(), IrqError> {
            self.push(WiringCall::UnIoevent(fd.as_raw_fd(), addr, m));
            Ok(())
        }
        fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
            self.push(WiringCall::Irqfd(fd.as_raw_fd(), gsi, None));
            Ok(())
        }
        fn register_irqfd_resample(
            &self,
            fd: &EventFd,
            resample: &EventFd,
            gsi: u32,
        ) -> Result<(), IrqError> {
            self.push(WiringCall::Irqfd(
                fd.as_raw_fd(),
                gsi,
                Some(resample.as_raw_fd()),
            ));
            Ok(())
        }
        fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), IrqError> {
            self.push(WiringCall::UnIrqfd(fd.as_raw_fd(), gsi));
            Ok(())
        }
        fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), IrqError> {
            self.push(WiringCall::Msi(gsi, msg));
            self.table.lock().unwrap().set_msi(gsi, msg);
            Ok(())
        }
        fn remove_route(&self, gsi: u32) -> Result<(), IrqError> {
            self.push(WiringCall::Remove(gsi));
            self.table.lock().unwrap().remove(gsi);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_routing_table_default_matches_kvm_pin_routes() {
        let t = RoutingTable::default();

        assert_eq!(
            t.routes(9),
            &[
                Route::Irqchip {
                    chip: KVM_IRQCHIP_PIC_SLAVE,
                    pin: 1
                },
                Route::Irqchip {
                    chip: KVM_IRQCHIP_IOAPIC,
                    pin: 9
                }
            ]
        );
        assert_eq!(
            t.routes(20),
            &[Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: 20
            }]
        );
        assert!(t.routes(24).is_empty());
        assert_eq!(t.to_kvm().unwrap().as_slice().len(), 16 * 2 + 8);
    }

    #[test]
    fn test_routing_table_msi_route_replaced_and_removed() {
        let mut t = RoutingTable::default();
        let msg = MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data: 0x4041,
        };

        t.set_msi(30, MsiMessage::default());
        t.set_msi(30, msg);
        let kvm = t.to_kvm().unwrap();
        let last = kvm.as_slice().last().copied().unwrap();
        t.remove(30);

        assert_eq!((last.gsi, last.type_), (30, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was written as an MSI route just above.
        let (lo, data) = unsafe { (last.u.msi.address_lo, last.u.msi.data) };
        assert_eq!((lo, data), (0xfee0_0000, 0x4041));
        assert!(t.routes(30).is_empty());
        assert_eq!(t, RoutingTable::default());
    }
}
