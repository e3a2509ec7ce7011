//! The `host` domain: JSON and CSV files, progress, arguments.

mod common;
use common::{eval_err, eval_f64, eval_show};

#[test]
fn json_round_trips_maps_arrays_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub").join("r.json");
    let code = format!(
        "write_json(\"{p}\", #{{ task: \"rotation\", dice: [0.5, 0.75], n: 3 }}); \
         let r = read_json(\"{p}\"); r.dice[1] + r.n",
        p = p.display()
    );
    assert_eq!(eval_f64(&code), 3.75);
}

#[test]
fn csv_rows_are_written_with_a_header_and_quoting() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("rows.csv");
    let code = format!(
        "write_csv(\"{p}\", [#{{ task: \"a,b\", dice: 0.5 }}, #{{ task: \"c\", dice: 0.25 }}], [\"task\", \"dice\"]); 1",
        p = p.display()
    );
    eval_f64(&code);
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        "task,dice\n\"a,b\",0.5\nc,0.25\n"
    );
}

#[test]
fn a_bad_json_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.json");
    std::fs::write(&p, "{ not json").unwrap();
    let e = eval_err(&format!("read_json(\"{}\")", p.display()));
    assert!(
        e.contains("broken.json") && e.contains("invalid JSON"),
        "{e}"
    );
}

#[test]
fn progress_counts_steps_in_a_script_loop() {
    // Without a terminal the display prints `label: done/total (seconds) message` lines, the
    // last one when the count reaches the total: it must say 3/3 after three ticks, 5/5 after
    // inc(2), tick(), inc(2), and nothing about reaching the total before it does.
    let code = "let p = progress(3, \"epochs\"); p.message(\"training\"); \
                for i in 0..3 { p.tick(); } p.finish(); \
                let q = progress(5, \"items\"); q.inc(2); q.tick(); q.inc(2); q.finish(); 1";
    let o = common::pretext(&["eval", code], None);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("epochs: 3/3 (") && l.ends_with(") training")),
        "{err}"
    );
    assert!(lines.iter().any(|l| l.starts_with("items: 5/5 (")), "{err}");
    assert!(
        !err.contains("epochs: 4/") && !err.contains("items: 6/"),
        "{err}"
    );
    assert!(eval_err("progress(-1, \"x\")").contains("non-negative"));
    assert!(eval_err("progress(2, \"x\").inc(-1)").contains("non-negative"));
}

#[test]
fn arguments_default_when_not_given() {
    assert_eq!(eval_show("arg(\"missing\", \"fallback\")"), "fallback");
    assert_eq!(eval_show("args().len()"), "0");
    assert_eq!(eval_show("seed()"), "0");
    assert_eq!(eval_show("device()"), "cpu");
}
