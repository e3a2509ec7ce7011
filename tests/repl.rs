//! The REPL driven through piped standard input.

mod common;
use common::{pretext_with_stdin, stderr, stdout};

fn repl(input: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let o = pretext_with_stdin(&["repl"], input, &dir.path().join("history.txt"));
    assert!(o.status.success(), "{}", stderr(&o));
    (stdout(&o), stderr(&o))
}

#[test]
fn an_unfinished_statement_continues_on_the_next_line() {
    let (out, err) = repl("let a = [1,\n2];\na.len()\n");
    assert!(
        out.lines().any(|l| l.trim() == "2"),
        "stdout: {out}\nstderr: {err}"
    );
}

#[test]
fn variables_and_functions_persist_across_inputs() {
    let (out, err) = repl(
        "let x = 20;\nfn twice(v) {\n  v * 2\n}\ntwice(x) + 2\nlet t = ones([2, 2]);\nt.sum().to_float()\n",
    );
    assert!(out.lines().any(|l| l.trim() == "42"), "{out}\n{err}");
    assert!(out.lines().any(|l| l.trim() == "4.0"), "{out}\n{err}");
}

#[test]
fn imports_persist_across_inputs() {
    let (out, err) = repl("import \"util\" as u;\nu::mean([2, 4])\n");
    assert!(out.lines().any(|l| l.trim() == "3.0"), "{out}\n{err}");
}

#[test]
fn help_lists_domains_and_describes_one_function() {
    let (out, _) = repl(":help\n:help zeros\n");
    for domain in ["tensor", "volume", "image", "host"] {
        assert!(
            out.lines().any(|l| l.starts_with(domain)),
            "domain {domain} missing: {out}"
        );
    }
    assert!(out.contains("zeros(shape: Array) -> Tensor"), "{out}");
    assert!(out.contains("A tensor of zeros"), "{out}");
}

#[test]
fn vars_lists_the_scope_and_load_runs_a_file_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("defs.rhai");
    std::fs::write(&file, "let loaded = 5;\nfn plus_one(v) { v + 1 }\n").unwrap();
    let (out, err) = repl(&format!(
        "let y = 3;\nlet t = zeros([2]);\n:load {}\nplus_one(loaded)\n:vars\n",
        file.display()
    ));
    assert!(out.lines().any(|l| l.trim() == "6"), "{out}\n{err}");
    assert!(out.contains("let y: i64 = 3"), "{out}");
    assert!(out.contains("let loaded: i64 = 5"), "{out}");
    // Script type names, not Rust paths.
    assert!(out.contains("let t: Tensor ="), "{out}");
    assert!(!out.contains("::"), "{out}");
}

#[test]
fn errors_show_a_caret_and_the_session_goes_on() {
    let (out, err) = repl("let a = 1;\na + nothing\na + 1\n");
    assert!(err.contains("Undefined variable: nothing"), "{err}");
    assert!(err.contains('^'), "{err}");
    assert!(out.lines().any(|l| l.trim() == "2"), "{out}");
}

#[test]
fn quit_leaves_before_later_input() {
    let (out, _) = repl("1 + 1\n:quit\n40 + 2\n");
    assert!(out.lines().any(|l| l.trim() == "2"));
    assert!(!out.contains("42"), "{out}");
}

#[test]
fn history_is_written_to_the_history_file() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("sub").join("history.txt");
    let o = pretext_with_stdin(&["repl"], "let remembered = 1;\n", &history);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&history).unwrap();
    assert!(text.contains("let remembered = 1;"), "{text}");
}

#[test]
fn help_lists_the_stdlib_modules_and_shows_one_of_their_functions() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::pretext_with_stdin(
        &["repl"],
        ":help\n:help sweep::data_efficiency\n",
        &dir.path().join("history"),
    );
    let out = common::stdout(&o);
    assert!(out.contains("stdlib modules"), "{out}");
    assert!(
        out.contains("sweep: ") && out.contains("data_efficiency"),
        "{out}"
    );
    assert!(
        out.contains("sweep::data_efficiency(data, cfg)") && out.contains("Runs every cell"),
        "{out}"
    );
}
