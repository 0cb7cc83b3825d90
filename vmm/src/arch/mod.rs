//! Architecture-specific code. Only x86_64 exists today.

#![forbid(unsafe_code)]

pub mod x86_64;
