// koala-sys knows where libkoala.so is (KOALA_LIB_DIR, pkg-config or the
// install default) and hands it over as DEP_KOALA_LIB_DIR. This crate's own
// tests and examples get an rpath to it so that they also run outside cargo,
// and it is passed on to the build scripts of crates that depend on this one
// as DEP_KOALA_RS_LIB_DIR (`links = "koala-rs"`): cargo gives a
// dependency's `rustc-link-arg` to nobody else, so a crate whose binaries
// must find libkoala without cargo (and without ldconfig) prints
//     cargo:rustc-link-arg=-Wl,-rpath,$DEP_KOALA_RS_LIB_DIR
// in its own build.rs (see tests/rust/downstream). `cargo run` and
// `cargo test` of such crates need nothing: see koala-sys/build.rs.
fn main() {
    if let Ok(dir) = std::env::var("DEP_KOALA_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
        println!("cargo:lib_dir={}", dir);
    }
}
