//! The command line: run, eval, check, --set, exit codes and error positions.

mod common;
use common::{pretext, stderr, stdout};

#[test]
fn eval_prints_the_value_of_an_expression() {
    let o = pretext(&["eval", "(zeros([2,3]) + 1.5).sum().to_float()"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "9.0");
}

#[test]
fn version_prints_the_crate_version() {
    let o = pretext(&["--version"], None);
    assert!(o.status.success());
    assert!(stdout(&o).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn quickstart_example_runs_and_writes_its_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qs");
    let o = pretext(
        &[
            "run",
            "examples/quickstart.rhai",
            "--set",
            &format!("out={}", out.display()),
            "--set",
            "size=16",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("phantom.nii.gz").is_file());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["dtype"], "i16");

    // The file itself, read back by the loader that tests/nifti.rs checks against nibabel, and
    // the script's numbers recomputed here: the phantom is a sphere of radius n/3 around the
    // centre at 40 HU in -1000 HU, plus noise 10·randn(seed 0), rounded to integers.
    let n = 16usize;
    let vol = pretext::Volume::load(out.join("phantom.nii.gz")).unwrap();
    assert_eq!(vol.dtype().name(), "i16");
    assert_eq!(vol.spatial_shape(), [n; 3]);
    assert_eq!(vol.spacing(), [0.8f32 as f64, 0.8f32 as f64, 2.5]);
    let got = vol.to_vec().unwrap();
    let host = pretext::script::Host::new(pretext::script::HostConfig::default());
    let noise: candle_core::Tensor = host
        .eval("randn([16, 16, 16], 0)", "<test>")
        .unwrap()
        .try_cast()
        .expect("a tensor");
    let noise = noise.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let c = (n as f64 - 1.0) / 2.0;
    let (mut voxels, mut inside_sum, mut round_trip) = (0usize, 0f64, 0f64);
    for x in 0..n {
        for y in 0..n {
            for z in 0..n {
                let i = (x * n + y) * n + z; // tensors are indexed [x, y, z]
                let d = [x, y, z]
                    .map(|k| (k as f64 - c).powi(2))
                    .iter()
                    .sum::<f64>();
                let sphere = d.sqrt() < n as f64 / 3.0;
                // In f32, in the script's order of operations.
                let ct = (if sphere { 1040f32 } else { 0.0 } - 1000.0) + noise[i] * 10.0;
                assert_eq!(got[i], ct.round(), "voxel [{x}, {y}, {z}]: {ct}");
                let ct = ct as f64;
                round_trip = round_trip.max((got[i] as f64 - ct).abs());
                if sphere {
                    voxels += 1;
                    inside_sum += got[i] as f64;
                }
            }
        }
    }
    let num = |k: &str| summary[k].as_f64().unwrap();
    assert!((num("round_trip_max_error") - round_trip).abs() < 1e-3);
    assert_eq!(num("foreground_voxels"), voxels as f64);
    let ml = voxels as f64 * (0.8f32 as f64).powi(2) * 2.5 / 1000.0;
    assert!((num("foreground_ml") - ml).abs() < 1e-9, "{ml}");
    assert!((num("mean_inside_hu") - inside_sum / voxels as f64).abs() < 1e-3);
}

#[test]
fn an_undefined_variable_on_line_3_exits_1_and_names_line_3() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.rhai");
    std::fs::write(
        &script,
        "let a = 1;\nlet b = a + 1;\nlet c = b + missing;\n",
    )
    .unwrap();
    let o = pretext(&["run", script.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("bad.rhai:3:13"), "{e}");
    assert!(e.contains("missing"), "{e}");
    assert!(
        e.contains("3 | let c = b + missing;"),
        "source line shown: {e}"
    );
}

#[test]
fn a_runtime_error_names_the_script_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("shape.rhai");
    std::fs::write(
        &script,
        "let a = zeros([2, 3]);\n\nlet b = a.reshape([4, 4]);\n",
    )
    .unwrap();
    let o = pretext(&["run", script.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("shape.rhai:3:"), "{e}");
    assert!(e.contains("reshape"), "{e}");
}

#[test]
fn an_error_inside_a_function_names_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("fn.rhai");
    std::fs::write(
        &script,
        "fn f(x) {\n    x.squeeze(0)\n}\nf(zeros([2, 2]));\n",
    )
    .unwrap();
    let o = pretext(&["run", script.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("fn.rhai:2:"), "inner position: {e}");
    assert!(
        e.contains("in call to `f` at") && e.contains("fn.rhai:4:"),
        "call site: {e}"
    );
}

#[test]
fn check_reports_parse_errors_with_line_and_column_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("syntax.rhai");
    std::fs::write(&script, "let a = 1;\nlet b = (a + ;\n").unwrap();
    let o = pretext(&["check", script.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("syntax.rhai:2:"), "{}", stderr(&o));
    let ok = pretext(&["check", "examples/quickstart.rhai"], None);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

#[test]
fn check_does_not_run_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("side_effect.rhai");
    let marker = dir.path().join("marker.json");
    std::fs::write(
        &script,
        format!("write_json(\"{}\", 1);\n", marker.display()),
    )
    .unwrap();
    assert!(
        pretext(&["check", script.to_str().unwrap()], None)
            .status
            .success()
    );
    assert!(!marker.exists());
}

#[test]
fn set_values_reach_the_script_with_their_types() {
    let o = pretext(
        &[
            "eval",
            "`${arg(\"n\", 0) + 1} ${arg(\"lr\", 0.0) * 2.0} ${arg(\"flag\", false)} ${arg(\"name\", \"\")} ${arg(\"xs\", []).len()} ${arg(\"absent\", 7)} ${seed()}`",
            "--set",
            "n=41",
            "--set",
            "lr=0.25",
            "--set",
            "flag=true",
            "--set",
            "name=rotation",
            "--set",
            "xs=[0.05, 0.1, 1.0]",
            "--seed",
            "5",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "42 0.5 true rotation 3 7 5");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(pretext(&["run"], None).status.code(), Some(2));
    assert_eq!(pretext(&["frobnicate"], None).status.code(), Some(2));
    let o = pretext(&["run", "no/such/script.rhai"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no/such/script.rhai"), "{}", stderr(&o));
    let o = pretext(&["eval", "1", "--set", "novalue"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--set"), "{}", stderr(&o));
}

#[test]
fn asking_for_cuda_without_it_says_so_plainly() {
    if candle_core::utils::cuda_is_available() {
        return;
    }
    let o = pretext(&["eval", "1", "--device", "cuda"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("CUDA is not available"),
        "{}",
        stderr(&o)
    );
    let o = pretext(&["eval", "device(\"cuda\")"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("CUDA is not available"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn stdlib_imports_work_from_any_directory() {
    let dir = tempfile::tempdir().unwrap();
    let o = pretext(
        &["eval", "import \"util\" as u; u::mean([1, 2, 3, 6])"],
        Some(dir.path()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "3.0");
}

#[test]
fn check_flags_a_call_to_an_unknown_function_with_its_position_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("typo.rhai");
    std::fs::write(
        &script,
        "fn mine(x) { x }\nlet a = mine(1);\nlet ct = pancrea(#{ shape: [8, 8, 8] });\n",
    )
    .unwrap();
    let o = pretext(&["check", script.to_str().unwrap()], None);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("typo.rhai:3:"), "{err}");
    assert!(
        err.contains("unknown function `pancrea`; did you mean `pancreas`?"),
        "{err}"
    );
}

#[test]
fn every_example_and_stdlib_module_passes_check() {
    for dir in ["examples", "stdlib"] {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "rhai") {
                let o = pretext(&["check", path.to_str().unwrap()], None);
                assert!(o.status.success(), "{}: {}", path.display(), stderr(&o));
            }
        }
    }
}

#[test]
fn errors_carry_no_rust_backtrace_unless_debug() {
    // A shape error that candle raises, with backtraces requested by the environment.
    let run = |debug: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"));
        if debug {
            c.arg("--debug");
        }
        c.args(["eval", "zeros([2, 3]).matmul(zeros([4, 5]))"])
            .env("RUST_BACKTRACE", "1")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap()
    };
    let o = run(false);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("matmul"), "{err}");
    assert!(!err.contains("backtrace"), "{err}");
    let o = run(true);
    assert!(
        stderr(&o).contains("backtrace"),
        "--debug keeps it: {}",
        stderr(&o)
    );
}

#[test]
fn repl_and_eval_do_not_offer_sweep_options() {
    for cmd in ["repl", "eval"] {
        let help = stdout(&pretext(&[cmd, "--help"], None));
        assert!(help.contains("--set"), "{help}");
        assert!(
            !help.contains("--shard") && !help.contains("--allow-mixed"),
            "{help}"
        );
    }
    assert!(stdout(&pretext(&["run", "--help"], None)).contains("--shard"));
}

#[test]
fn bench_models_takes_the_densenet_batch_and_names_the_row_after_it() {
    let o = pretext(
        &[
            "bench",
            "models",
            "--model",
            "densenet-quick",
            "--dense-batch",
            "3",
            "--warmup",
            "0",
            "--reps",
            "1",
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
    assert_eq!(row["op"], "densenet_step");
    assert_eq!(row["shape"], "3x3x96^2 g8 b2-4-4 i16 bn2");
}
