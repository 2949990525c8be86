//! Compiles `src/tls.c`: the thread-locals the hooks read on every call (see `src/tls.rs`).

fn main() {
    println!("cargo:rerun-if-changed=src/tls.c");
    cc::Build::new().file("src/tls.c").compile("mtcpshim_tls");
}
