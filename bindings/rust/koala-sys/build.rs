// Finds libkoala and links it.
//
// Where the library is, first match wins:
//   1. KOALA_LIB_DIR, when set: an explicit override (a build tree, a
//      private prefix);
//   2. `pkg-config koala` (the program named by $PKG_CONFIG, default
//      `pkg-config`; it honours PKG_CONFIG_PATH, so Meson's
//      <build>/meson-uninstalled works too);
//   3. the default install directories of `meson install`
//      (/usr/local/lib and the multiarch directory below it), with a warning.
//
// Run-time search path. Cargo applies `rustc-link-arg` only to the package
// whose build script prints it, so an rpath printed here never reaches the
// binaries of crates that depend on `koala` (cargo issue 9554). What does
// reach them:
//   - link-search directories inside the target directory are put on the
//     library path of `cargo run`, `cargo test` and `cargo bench` of every
//     dependent crate. So the library is linked through symlinks in
//     OUT_DIR/lib (libkoala.so, libkoala.so.1 and the CUDA plugin
//     libkoala_cuda.so, which the core loads from the directory it was loaded
//     from);
//   - the `links = "koala"` metadata: DEP_KOALA_LIB_DIR (the real directory)
//     for the build scripts of direct dependents. The `koala` crate passes it
//     on as DEP_KOALA_RS_LIB_DIR, so a crate depending on `koala` gets an
//     rpath for binaries run on their own with one line in its build.rs:
//       println!("cargo:rustc-link-arg=-Wl,-rpath,{}", std::env::var("DEP_KOALA_RS_LIB_DIR").unwrap());
//   - or nothing at all where libkoala sits in a directory of the system
//     loader (installed to /usr/local and `ldconfig` run, or a distribution
//     package).
use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const ENV_VARS: [&str; 5] = ["KOALA_LIB_DIR", "PKG_CONFIG", "PKG_CONFIG_PATH", "PKG_CONFIG_LIBDIR", "PKG_CONFIG_SYSROOT_DIR"];

fn has_library(dir: &Path) -> bool {
    dir.join("libkoala.so").exists()
}

/// The directories of `pkg-config --libs-only-L koala`, then its `libdir`
/// variable (a system directory gets no -L); None if pkg-config or koala.pc
/// is missing.
fn from_pkg_config() -> Option<PathBuf> {
    let program = env::var_os("PKG_CONFIG").unwrap_or_else(|| OsString::from("pkg-config"));
    let run = |args: &[&str]| -> Option<String> {
        let out = Command::new(&program).args(args).arg("koala").output().ok()?;
        if !out.status.success() {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let flags = run(&["--libs-only-L"])?;
    let mut candidates: Vec<PathBuf> = flags
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("-L"))
        .map(PathBuf::from)
        .collect();
    if let Some(libdir) = run(&["--variable=libdir"]) {
        let libdir = libdir.trim();
        if !libdir.is_empty() {
            candidates.push(PathBuf::from(libdir));
        }
    }
    let found = candidates.iter().find(|d| has_library(d)).cloned();
    if found.is_none() {
        println!(
            "cargo:warning=pkg-config found koala.pc but no libkoala.so in {:?}; trying the default directories",
            candidates
        );
    }
    found
}

fn default_lib_dir() -> PathBuf {
    let candidates = [
        "/usr/local/lib/x86_64-linux-gnu",
        "/usr/local/lib/aarch64-linux-gnu",
        "/usr/local/lib",
        "/usr/local/lib64",
    ];
    for dir in candidates.iter() {
        if has_library(Path::new(dir)) {
            return PathBuf::from(dir);
        }
    }
    PathBuf::from(candidates[2])
}

fn lib_dir() -> PathBuf {
    if let Some(d) = env::var_os("KOALA_LIB_DIR") {
        if !d.is_empty() {
            return PathBuf::from(d);
        }
    }
    if let Some(d) = from_pkg_config() {
        return d;
    }
    let d = default_lib_dir();
    println!(
        "cargo:warning=libkoala not found through KOALA_LIB_DIR or pkg-config; using {}",
        d.display()
    );
    d
}

/// OUT_DIR/lib with symlinks to the library (and the CUDA plugin, which may
/// not exist: a dangling link is harmless and resolves once it is built).
fn link_dir(real: &Path) -> PathBuf {
    let dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("lib");
    std::fs::create_dir_all(&dir).expect("creating OUT_DIR/lib");
    for name in ["libkoala.so", "libkoala.so.1", "libkoala_cuda.so"].iter() {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(real.join(name), &link).expect("symlink into OUT_DIR/lib");
    }
    dir
}

fn main() {
    for v in ENV_VARS.iter() {
        println!("cargo:rerun-if-env-changed={}", v);
    }
    println!("cargo:rerun-if-changed=src/bindings.rs");
    let dir = lib_dir();
    let dir = dir.canonicalize().unwrap_or(dir);
    if !has_library(&dir) {
        println!(
            "cargo:warning=libkoala.so not found in {} (set KOALA_LIB_DIR to the directory holding it)",
            dir.display()
        );
    }
    println!("cargo:rustc-link-search=native={}", link_dir(&dir).display());
    println!("cargo:rustc-link-lib=dylib=koala");
    // this package's own tests: find the library without cargo's search path
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    // -> DEP_KOALA_LIB_DIR for the build scripts of direct dependents
    println!("cargo:lib_dir={}", dir.display());
}
