//! Stamps the binary with the git commit it was built from (`-dirty` when the work
//! tree had uncommitted changes, `unknown` outside a git checkout) and the cargo
//! profile, so that every bench result names what produced it.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let cli = Path::new(&manifest);
    let root = cli.parent().unwrap_or(cli);
    let commit = match git(root, &["rev-parse", "--short=12", "HEAD"]) {
        Some(c) if !c.is_empty() => {
            // Only tracked files count: build outputs and scratch files do not make a
            // build dirty.
            let dirty = git(root, &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}-dirty")
            } else {
                c
            }
        }
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=SLOTLINE_GIT_COMMIT={commit}");
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=SLOTLINE_BUILD_PROFILE={profile}");

    // Re-run when the commit or the sources change (a rebuild follows then anyway).
    if let Some(git_dir) = git(root, &["rev-parse", "--absolute-git-dir"]) {
        let g = Path::new(&git_dir);
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={}", g.join(f).display());
        }
        if let Some(common) = git(root, &["rev-parse", "--git-common-dir"]) {
            let c = root.join(common);
            println!("cargo:rerun-if-changed={}", c.join("refs/heads").display());
        }
    }
    for d in [
        "src",
        "cli/src",
        "testkit/src",
        "Cargo.toml",
        "cli/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(d).display());
    }
}
