//! Binds the system's DPDK: `pkg-config libdpdk` for the flags, bindgen over
//! `shim.h` into `OUT_DIR`, and `cc` for `shim.c` (DPDK's static-inline fast
//! path as real symbols). Does nothing unless the `link` feature is on.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "link")]
    link::main();
}

#[cfg(feature = "link")]
mod link {
    use std::env;
    use std::path::PathBuf;
    use std::process::Command;

    /// The oldest DPDK with the `RTE_ETH_*` names and the `rte_eth_fp_ops`
    /// fast path this crate uses.
    const MIN_VERSION: &str = "21.11";

    const HOW_TO_INSTALL: &str = "\
DPDK development files were not found, and the `dpdk` feature needs them.\n\
On Debian/Ubuntu install them with:\n\
\n\
    apt-get install -y libdpdk-dev libclang-dev clang pkg-config\n\
\n\
or point PKG_CONFIG_PATH at the directory holding libdpdk.pc of a DPDK you built.\n\
Build without `--features dpdk` to use the AF_PACKET backend only.";

    pub fn main() {
        println!("cargo:rerun-if-changed=shim.h");
        println!("cargo:rerun-if-changed=shim.c");
        println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

        let lib = match pkg_config::Config::new()
            .atleast_version(MIN_VERSION)
            .probe("libdpdk")
        {
            Ok(lib) => lib,
            Err(e) => panic!("\n\n{HOW_TO_INSTALL}\n\n(pkg-config said: {e})\n"),
        };
        // The raw flags matter: they carry `-include rte_config.h` and the
        // `-march` DPDK was built for, without which the inline functions
        // do not compile (target specific option mismatch).
        let cflags = raw_cflags();
        println!("cargo:version={}", lib.version);
        for path in &lib.include_paths {
            println!("cargo:include={}", path.display());
        }

        let mut cc = cc::Build::new();
        cc.file("shim.c").warnings(true).opt_level(3);
        for flag in &cflags {
            cc.flag(flag);
        }
        cc.compile("lbdpdkshim");

        let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        let bindings = bindgen::Builder::default()
            .header("shim.h")
            .clang_args(&cflags)
            .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
            .allowlist_function("rte_eal_.*")
            .allowlist_function("rte_eth_.*")
            .allowlist_function("rte_pktmbuf_.*")
            .allowlist_function("rte_mempool_.*")
            .allowlist_function("rte_lcore_.*")
            .allowlist_function("rte_socket_id")
            .allowlist_function("rte_socket_count")
            .allowlist_function("rte_thread_(un)?register")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_acl_.*")
            .allowlist_function("lb_rte_.*")
            .allowlist_type("rte_acl_.*")
            .allowlist_type("rte_eth_.*")
            .allowlist_type("rte_mbuf")
            .allowlist_type("rte_mempool")
            .allowlist_type("rte_ether_addr")
            .allowlist_var("RTE_ETH_.*")
            .allowlist_var("RTE_MBUF_.*")
            .allowlist_var("RTE_PKTMBUF_.*")
            .allowlist_var("RTE_ACL_.*")
            .allowlist_var("RTE_MAX_.*")
            .allowlist_var("RTE_ETHER_.*")
            .allowlist_var("RTE_MEMPOOL_.*")
            .allowlist_var("SOCKET_ID_ANY")
            .allowlist_var("LCORE_ID_ANY")
            .allowlist_var("LB_RTE_.*")
            // Packed structs holding aligned ones: rustc rejects their
            // generated layout, and nothing here needs their fields.
            .opaque_type("rte_arp_ipv4")
            .opaque_type("rte_arp_hdr")
            .opaque_type("rte_l2tpv2_combined_msg_hdr")
            .opaque_type("rte_gtp_psc_generic_hdr")
            .prepend_enum_name(false)
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| {
                panic!("bindgen failed on shim.h with cflags {cflags:?}: {e}\n\n{HOW_TO_INSTALL}")
            });
        bindings
            .write_to_file(out.join("bindings.rs"))
            .expect("OUT_DIR is writable");
    }

    /// `pkg-config --cflags libdpdk`, split into arguments.
    fn raw_cflags() -> Vec<String> {
        let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".into());
        let out = Command::new(&pkg_config)
            .args(["--cflags", "libdpdk"])
            .output()
            .unwrap_or_else(|e| panic!("\n\n{HOW_TO_INSTALL}\n\n(running {pkg_config}: {e})\n"));
        if !out.status.success() {
            panic!(
                "\n\n{HOW_TO_INSTALL}\n\n({pkg_config} --cflags libdpdk: {})\n",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }
}
