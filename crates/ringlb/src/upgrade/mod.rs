//! Live binary upgrade: what the old and the new process say to each other. The two sides
//! of the handover are in `control::upgrade` (old) and `control::inherit` (new).

pub mod wire;
