//! The committed src/bindings.rs must be what bindgen makes of koala.h today.
//! Skipped (with a message) where bindgen is not installed.
use std::path::PathBuf;
use std::process::Command;

/// The tokens of a Rust file without the whitespace and without the commas
/// that only precede a closing bracket: what changes between bindgen's raw
/// output and the same output formatted by rustfmt (any version), and
/// nothing that carries meaning.
fn normalised(source: &str) -> String {
    let packed: Vec<char> = source.chars().filter(|c| !c.is_whitespace()).collect();
    let mut out = String::with_capacity(packed.len());
    for (i, &c) in packed.iter().enumerate() {
        let trailing_comma = c == ',' && matches!(packed.get(i + 1), Some(')') | Some(']') | Some('}') | Some('>'));
        if !trailing_comma {
            out.push(c);
        }
    }
    out
}

#[test]
fn normalisation_ignores_formatting_only() {
    assert_eq!(normalised("fn f(\n    a: u8,\n) -> Option<u8,> {}"), normalised("fn f(a: u8) -> Option<u8> {}"));
    assert_ne!(normalised("fn f(a: u8, b: u8) {}"), normalised("fn f(a: u8) {}"));
    assert_ne!(normalised("pub const X: u32 = 10;"), normalised("pub const X: u32 = 100;"));
}

#[test]
fn committed_bindings_match_a_fresh_bindgen_run() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bindgen_found = Command::new("bindgen").arg("--version").output().map(|o| o.status.success());
    if !matches!(bindgen_found, Ok(true)) {
        eprintln!("SKIPPED: bindgen is not installed (Debian package `bindgen`); cannot check src/bindings.rs");
        return;
    }
    let out_dir = std::env::temp_dir().join(format!("koala-sys-bindings-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let fresh_path = out_dir.join("bindings.rs");
    // --no-rustfmt: bindgen's raw output, so the check needs no rustfmt
    let status = Command::new("sh")
        .arg(here.join("regenerate.sh"))
        .arg(&fresh_path)
        .arg("--no-rustfmt")
        .status()
        .expect("running regenerate.sh");
    assert!(status.success(), "regenerate.sh failed");
    let fresh = std::fs::read_to_string(&fresh_path).unwrap();
    let committed = std::fs::read_to_string(here.join("src/bindings.rs")).unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        normalised(&fresh) == normalised(&committed),
        "src/bindings.rs is stale: koala.h changed. Run bindings/rust/koala-sys/regenerate.sh and commit."
    );
}

#[test]
fn the_linked_library_matches_the_header() {
    let v = unsafe { koala_sys::koala_version() };
    assert_eq!(v, koala_sys::KOALA_VERSION_NUMBER);
}

#[test]
fn the_1_0_struct_sizes_end_where_the_1_1_fields_begin() {
    // koala.h: KOALA_CONFIG_SIZE_1_0 == offsetof(koala_config, threads), and
    // KOALA_INFO_SIZE_1_0 == offsetof(koala_info, lr) (bindgen cannot
    // translate those macros; lib.rs writes them out)
    let cfg = std::mem::MaybeUninit::<koala_sys::koala_config>::uninit();
    let info = std::mem::MaybeUninit::<koala_sys::koala_info>::uninit();
    let base = cfg.as_ptr() as usize;
    let threads = unsafe { std::ptr::addr_of!((*cfg.as_ptr()).threads) } as usize;
    assert_eq!(threads - base, koala_sys::KOALA_CONFIG_SIZE_1_0);
    let base = info.as_ptr() as usize;
    let lr = unsafe { std::ptr::addr_of!((*info.as_ptr()).lr) } as usize;
    assert_eq!(lr - base, koala_sys::KOALA_INFO_SIZE_1_0);
}
