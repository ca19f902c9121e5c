// The same program in a binary without the rpath line (see build.rs).
fn main() {
    let (first, last) = koala_downstream::fit().expect("libkoala call failed");
    println!("plain binary: KOALA++ loss {:.4} -> {:.6}", first, last);
    if !(last < 0.1 * first) {
        std::process::exit(1);
    }
}
