//! A static glibc (crt-static) needs the unwinder stubs its own objects reference; a no_std binary does not
//! bring them in through std, so link libgcc_eh explicitly in that case.
fn main() {
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-lib=static=gcc_eh");
        println!("cargo:rustc-link-lib=static=gcc");
    }
}
