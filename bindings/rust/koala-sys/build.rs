// Finds libkoala.so and links it. The directory comes from KOALA_LIB_DIR,
// else the default install location of `meson install` (/usr/local/lib, or
// the Debian multiarch directory below it). It is exported to dependent
// crates' build scripts as DEP_KOALA_LIB_DIR (this package `links = "koala"`)
// so that they can add an rpath to their own binaries; cargo only applies a
// `rustc-link-arg` to the package whose build script prints it.
use std::env;
use std::path::{Path, PathBuf};

fn default_lib_dir() -> PathBuf {
    let candidates = [
        "/usr/local/lib",
        "/usr/local/lib/x86_64-linux-gnu",
        "/usr/local/lib/aarch64-linux-gnu",
        "/usr/local/lib64",
    ];
    for dir in candidates.iter() {
        if Path::new(dir).join("libkoala.so").exists() {
            return PathBuf::from(dir);
        }
    }
    PathBuf::from(candidates[0])
}

fn main() {
    println!("cargo:rerun-if-env-changed=KOALA_LIB_DIR");
    println!("cargo:rerun-if-changed=src/bindings.rs");
    let dir = match env::var_os("KOALA_LIB_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => default_lib_dir(),
    };
    if !dir.join("libkoala.so").exists() {
        println!(
            "cargo:warning=libkoala.so not found in {} (set KOALA_LIB_DIR to the directory holding it)",
            dir.display()
        );
    }
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=dylib=koala");
    // this package's own tests: find the library at run time without LD_LIBRARY_PATH
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // -> DEP_KOALA_LIB_DIR for dependents
    println!("cargo:lib_dir={}", dir.display());
}
