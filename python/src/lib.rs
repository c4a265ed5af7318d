//! Python face of slotline: the `slotline._native` extension module.
//!
//! The pure-Python package `slotline` (in `python/slotline/`) builds LMCache's two
//! plug-ins on top of [`client::Client`]. `unsafe` lives only in [`efd`] (eventfd
//! syscalls) and [`views`] (raw access to caller buffers).

pub mod client;
pub mod completion;
pub mod efd;
pub mod hooks;
pub mod io;
pub mod lent;
pub mod stats;
pub mod views;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<client::Client>()?;
    m.add_class::<client::Fetched>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
