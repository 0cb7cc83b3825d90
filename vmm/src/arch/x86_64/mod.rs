//! x86_64 machine set-up: memory layout, boot-time CPU state, firmware tables.

pub mod layout;
