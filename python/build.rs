//! Refuses a stable-ABI build for Python 3.10.
//!
//! The default feature `abi3` targets the limited API of 3.11 (the buffer protocol the
//! plug-ins need is in it only from 3.11). Given a 3.10 interpreter, maturin builds the
//! 3.11 stable-ABI module anyway and tags the wheel `cp310`: it installs, then fails at
//! import (`undefined symbol: PyType_GetName`). Fail the build instead, saying how to
//! build for 3.10. maturin names the target interpreter in
//! `PYO3_ENVIRONMENT_SIGNATURE` (`cpython-3.10-64bit`); without it (a plain cargo
//! build) PyO3's own build script already refuses an interpreter older than 3.11.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PYO3_ENVIRONMENT_SIGNATURE");
    if std::env::var_os("CARGO_FEATURE_ABI3").is_none() {
        return;
    }
    let Ok(sig) = std::env::var("PYO3_ENVIRONMENT_SIGNATURE") else {
        return;
    };
    if let Some((major, minor)) = cpython_version(&sig) {
        if (major, minor) < (3, 11) {
            panic!(
                "slotline: the `abi3` feature (the default) needs Python 3.11 or later, and \
                 this build targets Python {major}.{minor}. Build without it: \
                 MATURIN_PEP517_ARGS=\"--no-default-features\" pip install . \
                 (or maturin build --no-default-features)"
            );
        }
    }
}

/// `cpython-3.10-64bit` -> (3, 10); other implementations and forms -> None.
fn cpython_version(sig: &str) -> Option<(u32, u32)> {
    let mut parts = sig.split('-');
    if parts.next()? != "cpython" {
        return None;
    }
    let (major, minor) = parts.next()?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
