//! Memory taken by reading volumes, `pretext data verify` and preparation (issue 15, item 13),
//! measured as the peak resident memory of the `pretext` binary.
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Runs `pretext args` with `env` and returns its peak resident memory in bytes (wait4's
/// ru_maxrss of that one child), asserting it succeeds.
fn peak(args: &[&str], env: &[(&str, &str)], data_home: &Path) -> u64 {
    let err = tempfile::NamedTempFile::new().unwrap();
    // Reaped by wait4 below (for its rusage), which clippy does not see.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .envs(env.iter().copied())
        .env("PRETEXT_DATA", data_home)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain libc calls on a zeroed struct and the pid of our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into the two locals above.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let stderr = std::fs::read_to_string(err.path()).unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "pretext {args:?} failed: {stderr}"
    );
    usage.ru_maxrss as u64 * 1024
}

/// A u8 NIfTI-1 `.nii.gz` of `n`³ voxels: zeros with a cube of `value` in the middle (minus
/// a ripple of 0..4 with `ripple`).
fn cube(path: &Path, n: usize, value: u8, ripple: bool) {
    let mut b = vec![0u8; 348];
    b[0..4].copy_from_slice(&348i32.to_le_bytes());
    for (i, d) in [3i16, n as i16, n as i16, n as i16, 1, 1, 1, 1]
        .iter()
        .enumerate()
    {
        b[40 + 2 * i..42 + 2 * i].copy_from_slice(&d.to_le_bytes());
    }
    b[70..72].copy_from_slice(&2i16.to_le_bytes());
    b[72..74].copy_from_slice(&8i16.to_le_bytes());
    for i in 0..4 {
        b[76 + 4 * i..80 + 4 * i].copy_from_slice(&1f32.to_le_bytes());
    }
    b[108..112].copy_from_slice(&352f32.to_le_bytes());
    b[344..348].copy_from_slice(b"n+1\0");
    b.extend_from_slice(&[0; 4]);
    let start = b.len();
    b.resize(start + n * n * n, 0);
    for z in n / 4..3 * n / 4 {
        for y in n / 4..3 * n / 4 {
            let row = start + n * y + n * n * z;
            for x in n / 4..3 * n / 4 {
                b[row + x] = value - if ripple { ((x + y + z) % 5) as u8 } else { 0 };
            }
        }
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&b).unwrap();
    std::fs::write(path, e.finish().unwrap()).unwrap();
}

/// A Decathlon folder of two labelled cases of `n`³ voxels.
fn dataset(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir.join("imagesTr")).unwrap();
    std::fs::create_dir_all(dir.join("labelsTr")).unwrap();
    for i in 0..2 {
        cube(&dir.join(format!("imagesTr/c{i}.nii.gz")), n, 200, true);
        cube(&dir.join(format!("labelsTr/c{i}.nii.gz")), n, 1, false);
    }
}

#[test]
fn reading_verifying_and_preparing_are_bounded_by_the_volume_size_and_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (small, big) = (tmp.path().join("small"), tmp.path().join("big"));
    // 256³ voxels: 64 MiB as f32 (the files are a few hundred KB).
    let n = 256;
    let volume = (n * n * n * 4) as f64;
    dataset(&small, 8);
    dataset(&big, n);
    let mb = |b: f64| b / (1 << 20) as f64;
    let extra = |base: u64, at: u64| at.saturating_sub(base) as f64;

    // Reading: the f32 voxels and a few MiB (before: 3 copies and more, 1.58 GB for a 130 KB
    // file of 512³ u8).
    let image = big.join("imagesTr/c0.nii.gz");
    let load = format!("load_nifti(\"{}\"); 1", image.display());
    let base = peak(&["eval", "1"], &[], &home);
    let read = extra(base, peak(&["eval", &load], &[], &home));
    assert!(
        read < 1.2 * volume,
        "reading took {:.0} MiB for a {:.0} MiB volume",
        mb(read),
        mb(volume)
    );

    // verify: one volume of a case in memory at a time; with a budget for one case, one case
    // at a time although two threads are free (before: both volumes of two cases, and copies).
    let vbase = peak(&["data", "verify", small.to_str().unwrap()], &[], &home);
    let args = ["data", "verify", big.to_str().unwrap()];
    for budget in ["1", "100M"] {
        let v = extra(
            vbase,
            peak(&args, &[("PRETEXT_DATA_MEMORY", budget)], &home),
        );
        assert!(
            v < 1.3 * volume,
            "verify with a budget of {budget} took {:.0} MiB (one volume: {:.0} MiB)",
            mb(v),
            mb(volume)
        );
    }
    let v = extra(vbase, peak(&args, &[], &home));
    assert!(
        v < 2.3 * volume,
        "verify took {:.0} MiB on two threads",
        mb(v)
    );

    // Preparation: a case's image, label and preprocessing intermediates, one case at a time
    // within a budget that fits one (estimated 4 volumes; before: both cases at once, each
    // with copies of its image and label, 7.5 volumes).
    let script = |root: &Path| {
        format!(
            "pancreas(#{{ root: \"{}\", shape: [16, 16, 16] }}).len()",
            root.display()
        )
    };
    let pbase = peak(&["eval", &script(&small)], &[], &home);
    let p = extra(
        pbase,
        peak(
            &["eval", &script(&big)],
            &[("PRETEXT_DATA_MEMORY", "300M")],
            &home,
        ),
    );
    assert!(
        p < 3.5 * volume,
        "preparation with a budget for one case took {:.0} MiB (one volume: {:.0} MiB)",
        mb(p),
        mb(volume)
    );
}
