//! Finds the installed libnucleuscheckpoint through pkg-config (`nucleus-checkpoint.pc`), as a C
//! consumer does with `pkg-config --cflags --libs nucleus-checkpoint`.
//!
//! `NUCLEUS_CHECKPOINT_LIB_DIR` skips pkg-config: link `libnucleuscheckpoint.so` from that folder.
use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=NUCLEUS_CHECKPOINT_LIB_DIR");
    if let Some(dir) = env::var_os("NUCLEUS_CHECKPOINT_LIB_DIR") {
        println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        println!("cargo:rustc-link-lib=dylib=nucleuscheckpoint");
        return;
    }
    // The pkg-config crate prints the link flags (and rerun-if-env-changed for PKG_CONFIG_PATH,
    // PKG_CONFIG_LIBDIR, PKG_CONFIG_SYSROOT_DIR and the like).
    if let Err(e) = pkg_config::Config::new().probe("nucleus-checkpoint") {
        eprintln!(
            "nucleus-checkpoint-sys: libnucleuscheckpoint was not found through pkg-config \
             (nucleus-checkpoint.pc): install the library (meson install) and point PKG_CONFIG_PATH \
             at its .pc, or set NUCLEUS_CHECKPOINT_LIB_DIR to the folder of libnucleuscheckpoint.so.\n{}",
            e
        );
        std::process::exit(1);
    }
}
