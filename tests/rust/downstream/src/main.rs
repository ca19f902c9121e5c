fn main() {
    let (first, last) = koala_downstream::fit().expect("libkoala call failed");
    println!("libkoala {} via the koala crate: KOALA++ loss {:.4} -> {:.6}", koala::version(), first, last);
    if !(last < 0.1 * first) {
        eprintln!("FAILED: the loss did not fall");
        std::process::exit(1);
    }
}
