//! `import`: the embedded stdlib, the stdlib override and the script's own folder.

mod common;
use common::{pretext, stderr, stdout};
use pretext::script::{Host, HostConfig};

#[test]
fn a_script_imports_a_module_from_its_own_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helpers.rhai"), "fn twice(x) { 2 * x }\n").unwrap();
    std::fs::write(
        dir.path().join("main.rhai"),
        "import \"helpers\" as h;\nprint(h::twice(21));\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let o = pretext(
        &["run", dir.path().join("main.rhai").to_str().unwrap()],
        Some(elsewhere.path()),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "42");
}

#[test]
fn a_stdlib_folder_replaces_the_embedded_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("util.rhai"), "fn mean(xs) { -1 }\n").unwrap();
    let host = Host::new(HostConfig {
        stdlib_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    });
    let v = host
        .eval("import \"util\" as u; u::mean([1, 2])", "<test>")
        .unwrap();
    assert_eq!(v.as_int().unwrap(), -1);
}

#[test]
fn a_missing_module_names_where_it_was_looked_for() {
    let host = Host::new(HostConfig::default());
    let e = host
        .eval("import \"nope\" as n;", "<test>")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("stdlib"), "{e}");
}

#[test]
fn an_error_inside_a_module_names_the_module_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.rhai"),
        "fn f() { 1 }\nlet x = undefined_thing;\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("main.rhai"), "import \"broken\" as b;\n").unwrap();
    let o = pretext(
        &["run", dir.path().join("main.rhai").to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("broken.rhai:2:"), "{e}");
}

#[test]
fn the_pretrain_module_passes_per_task_options_through_to_pretrain() {
    let host = Host::new(HostConfig::default());
    let e = host
        .eval(
            r#"import "pretrain" as pre;
               pre::all(0, [0], #{ tasks: ["jigsaw"], epochs: 1,
                                   per_task: #{ jigsaw: #{ jitterr: 2 } } })"#,
            "<test>",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("jitterr"), "{e}");
    let n = host
        .eval(r#"import "pretrain" as pre; pre::tasks().len()"#, "<test>")
        .unwrap();
    assert_eq!(n.as_int().unwrap(), 5);
}
