//! Paths of the test guests built by this crate's build script.
#![deny(missing_docs)]
