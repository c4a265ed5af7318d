//! Crate-level tests that need internals (the RESP decoder is crate-private).

mod resp_props;
