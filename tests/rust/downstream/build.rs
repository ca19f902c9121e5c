// The one line a crate needs for binaries that find libkoala without cargo
// and without ldconfig: an rpath to the directory koala-sys linked
// (DEP_KOALA_RS_LIB_DIR, handed on by the `koala` crate). Only for the bin
// `koala-downstream` here, so that `koala-downstream-plain` shows what a
// crate without it gets.
fn main() {
    if let Ok(dir) = std::env::var("DEP_KOALA_RS_LIB_DIR") {
        println!("cargo:rustc-link-arg-bin=koala-downstream=-Wl,-rpath,{}", dir);
    }
}
