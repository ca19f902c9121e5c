// koala-sys knows where libkoala.so is (KOALA_LIB_DIR or the install
// default) and hands it over as DEP_KOALA_LIB_DIR. This crate's own tests and
// examples get an rpath to it so they run without LD_LIBRARY_PATH. (Crates
// that depend on `koala` need the same line in their build.rs, or the
// library on the loader path.)
fn main() {
    if let Ok(dir) = std::env::var("DEP_KOALA_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir);
    }
}
