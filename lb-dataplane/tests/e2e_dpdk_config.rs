//! The DPDK configuration without DPDK hardware: the bare-metal example
//! passes `lbctl check`, and an `lbd` built without the `dpdk` feature
//! refuses `io = "dpdk"` with an error that names the feature. Runs in
//! every build, as any user.

use std::path::PathBuf;
use std::process::Command;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/bare-metal-2port.toml")
}

#[test]
fn bare_metal_example_passes_lbctl_check() {
    let out = Command::new(env!("CARGO_BIN_EXE_lbctl"))
        .arg("check")
        .arg(example())
        .output()
        .expect("run lbctl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("2 ports"), "{text}");
    let cfg = lb_config::load(&example()).expect("loads");
    assert_eq!(cfg.dataplane.io, lb_core::model::IoBackend::Dpdk);
    assert_eq!(
        cfg.ports.iter().map(|p| p.dpdk_port).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    assert_eq!(
        (cfg.dataplane.workers, &cfg.dataplane.cores[..]),
        (2, &[2, 3][..])
    );
}

#[cfg(not(feature = "dpdk"))]
#[test]
fn lbd_without_the_dpdk_feature_names_it() {
    let dir = std::env::temp_dir().join(format!("lbd-nodpdk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("--config")
        .arg(example())
        .arg("--control")
        .arg(dir.join("lbd.sock"))
        .output()
        .expect("run lbd");
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("io = \"dpdk\" needs lbd built with the dpdk feature"),
        "{err}"
    );
    assert!(err.contains("--features dpdk"), "{err}");
}
