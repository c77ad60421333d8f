//! ringlb-config: the YAML schema of ringlb, its defaults and its validation.
//!
//! Owns: turning a YAML text into a [`Config`] or a list of [`ConfigError`]s that each
//! name the YAML path of the problem. Must not: open sockets, spawn threads, read clocks.

mod model;

pub use model::*;
