//! The interactive REPL (`pretext repl`).
//!
//! One scope and the functions defined so far persist across inputs; an unfinished statement
//! continues on the next line; history is kept in the user's data directory; Tab completes
//! function and variable names; Ctrl-C stops a running statement without leaving the REPL.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use rhai::{AST, ParseError, ParseErrorType, Scope};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Config, Context, Editor, Helper};

use super::{Host, ScriptErrorKind};

/// The environment variable that overrides the history file's location.
pub const HISTORY_ENV: &str = "PRETEXT_HISTORY";

const COMMANDS: &[(&str, &str)] = &[
    (":help", "list the script functions by domain"),
    (":help NAME", "the signature and doc of a function"),
    (":load FILE", "run a script file in this session's scope"),
    (
        ":vars",
        "the variables in scope, with their types and values",
    ),
    (":quit", "leave (Ctrl-D too)"),
];

/// Tab completion over function names and the variables in scope.
struct ReplHelper {
    functions: Vec<String>,
    variables: Arc<Mutex<Vec<String>>>,
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_' || *c == ':'))
            .map(|(i, c)| i + c.len_utf8())
            .unwrap_or(0);
        let word = &line[start..pos];
        let mut names: Vec<String> = if word.starts_with(':') {
            COMMANDS
                .iter()
                .map(|(c, _)| c.split(' ').next().unwrap_or(c).to_string())
                .collect()
        } else {
            let vars = self.variables.lock().map(|v| v.clone()).unwrap_or_default();
            vars.into_iter()
                .chain(self.functions.iter().cloned())
                .collect()
        };
        names.retain(|n| n.starts_with(word));
        names.sort();
        names.dedup();
        Ok((
            start,
            names
                .into_iter()
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: n,
                })
                .collect(),
        ))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}
impl Highlighter for ReplHelper {}
impl Validator for ReplHelper {}
impl Helper for ReplHelper {}

/// The REPL's session: the host, its scope, and the functions defined so far.
pub struct Repl {
    host: Host,
    scope: Scope<'static>,
    functions: AST,
    variables: Arc<Mutex<Vec<String>>>,
}

impl Repl {
    /// A session on `host`.
    pub fn new(host: Host) -> Self {
        Repl {
            host,
            scope: Scope::new(),
            functions: AST::empty(),
            variables: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs the read-eval-print loop until `:quit` or end of input.
    pub fn run(mut self) -> anyhow::Result<()> {
        let interactive = std::io::stdin().is_terminal();
        let config = Config::builder()
            .auto_add_history(false)
            .max_history_size(5000)?
            .build();
        let mut editor: Editor<ReplHelper, DefaultHistory> = Editor::with_config(config)?;
        editor.set_helper(Some(ReplHelper {
            functions: self
                .host
                .docs()
                .names()
                .iter()
                .map(|s| s.to_string())
                .filter(|s| is_ident(s))
                .chain(
                    self.host
                        .docs()
                        .stdlib
                        .iter()
                        .map(|f| format!("{}::{}", f.module, f.name)),
                )
                .collect(),
            variables: self.variables.clone(),
        }));
        let history = history_path();
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        let flag = self.host.state().interrupt.clone();
        // Ctrl-C while a statement runs stops it, native work included (at its next step), and
        // returns to the prompt. A second handler cannot be installed; ignore that case (the
        // REPL then exits on Ctrl-C).
        let _ = ctrlc::set_handler(move || {
            crate::stop::request();
            flag.store(true, Ordering::Relaxed);
        });
        // The history is written after every entry, so that a killed session keeps it.
        let save_history = |editor: &mut rustyline::Editor<_, _>| {
            if let Some(h) = &history {
                if let Some(dir) = h.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = editor.save_history(h);
            }
        };
        if interactive {
            println!(
                "pretext {} REPL — :help lists functions, :quit leaves. Unfinished input continues on the next line.",
                env!("CARGO_PKG_VERSION")
            );
        }
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() { ">> " } else { ".. " };
            match editor.readline(prompt) {
                Ok(line) => {
                    if buffer.is_empty() && line.trim().starts_with(':') {
                        let _ = editor.add_history_entry(line.trim());
                        save_history(&mut editor);
                        if !self.command(line.trim()) {
                            break;
                        }
                        continue;
                    }
                    buffer.push_str(&line);
                    buffer.push('\n');
                    if buffer.trim().is_empty() {
                        buffer.clear();
                        continue;
                    }
                    match self.submit(&buffer) {
                        Submit::Incomplete => continue,
                        Submit::Done => {
                            let _ = editor.add_history_entry(buffer.trim_end());
                            save_history(&mut editor);
                            buffer.clear();
                        }
                    }
                }
                Err(ReadlineError::Interrupted) => {
                    if !buffer.is_empty() {
                        println!("(input cleared)");
                    }
                    buffer.clear();
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            }
        }
        save_history(&mut editor);
        Ok(())
    }

    /// Compiles and runs one input; says whether more lines are needed.
    fn submit(&mut self, input: &str) -> Submit {
        let ast = match self.host.engine().compile_with_scope(&self.scope, input) {
            Ok(ast) => ast,
            Err(e) if is_incomplete(&e, input) => return Submit::Incomplete,
            Err(e) => {
                eprintln!("{}", super::ScriptError::parse(&e, "<repl>", input));
                return Submit::Done;
            }
        };
        self.execute(ast, "<repl>", input, true);
        Submit::Done
    }

    /// Runs a compiled input in the session scope, keeping its functions and imports.
    fn execute(&mut self, mut ast: AST, name: &str, text: &str, print_value: bool) {
        ast.set_source(name);
        let merged = self.functions.merge(&ast);
        match self.host.eval_ast(&mut self.scope, &merged, name, text) {
            Ok(v) => {
                self.functions = merged.clone_functions_only();
                self.keep_imports(text);
                if print_value && !v.is_unit() {
                    println!("{}", self.host.display(&v));
                }
            }
            Err(e) if e.kind == ScriptErrorKind::Interrupted => eprintln!("interrupted"),
            Err(e) => {
                self.functions = merged.clone_functions_only();
                eprintln!("{e}");
            }
        }
        if let Ok(mut vars) = self.variables.lock() {
            *vars = self.scope.iter().map(|(n, _, _)| n.to_string()).collect();
        }
    }

    /// Makes `import "x" as y;` statements of an input visible to later inputs.
    fn keep_imports(&mut self, text: &str) {
        for stmt in text.split(';') {
            let stmt = stmt.trim();
            let Some(rest) = stmt.strip_prefix("import") else {
                continue;
            };
            let Some((path, alias)) = rest.split_once(" as ") else {
                continue;
            };
            let path = path.trim().trim_matches('"');
            let alias = alias.trim();
            if !is_ident(alias) {
                continue;
            }
            if let Err(e) = self.host.register_import(path, alias) {
                eprintln!("{e}");
            }
        }
    }

    /// Handles a `:command`; returns false to leave.
    fn command(&mut self, line: &str) -> bool {
        let (cmd, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        match cmd {
            ":quit" | ":q" | ":exit" => return false,
            ":help" | ":h" if arg.is_empty() => self.help_all(),
            ":help" | ":h" => self.help_one(arg),
            ":vars" => self.vars(),
            ":load" if !arg.is_empty() => self.load(Path::new(arg)),
            _ => eprintln!(
                "unknown command `{line}`; commands: :help, :help NAME, :load FILE, :vars, :quit"
            ),
        }
        true
    }

    fn help_all(&self) {
        for d in &self.host.docs().domains {
            let mut names: Vec<&str> = d.docs.iter().map(|f| f.name).collect();
            names.dedup();
            println!("{} — {}\n  {}", d.name, d.summary, names.join(" "));
        }
        println!("stdlib modules (import \"NAME\" as NAME; :help NAME::FN shows one):");
        let stdlib = &self.host.docs().stdlib;
        for (module, _) in crate::script::STDLIB {
            let names: Vec<&str> = stdlib
                .iter()
                .filter(|f| f.module == *module)
                .map(|f| f.name.as_str())
                .collect();
            println!("  {module}: {}", names.join(" "));
        }
        println!("REPL commands:");
        for (c, doc) in COMMANDS {
            println!("  {c:<12} {doc}");
        }
    }

    fn help_one(&self, name: &str) {
        if let Some((module, f)) = name.split_once("::") {
            let found: Vec<_> = self
                .host
                .docs()
                .stdlib
                .iter()
                .filter(|s| s.module == module && s.name == f)
                .collect();
            if found.is_empty() {
                eprintln!("no stdlib function `{name}`; :help lists them all");
            }
            for s in found {
                println!("{}\n    {}", s.signature(), s.doc);
            }
            return;
        }
        let found = self.host.docs().lookup(name.trim_start_matches('.'));
        if found.is_empty() {
            eprintln!("no function named `{name}`; :help lists them all");
        }
        for f in found {
            println!("{}\n    {} [{}]", f.signature, f.doc, f.domain);
            if let Some(options) = f.options {
                println!("    options (key: type = default, meaning):");
                for o in options() {
                    let default = if o.default.is_empty() {
                        String::new()
                    } else {
                        format!(" = {}", o.default)
                    };
                    println!(
                        "      {}: {}{default}  {}",
                        o.key,
                        o.ty.replace("\\|", "|"),
                        o.doc
                    );
                }
            }
        }
    }

    fn vars(&self) {
        if self.scope.is_empty() {
            println!("(no variables)");
        }
        for (name, constant, value) in self.scope.iter() {
            let kind = if constant { "const" } else { "let" };
            let mut shown = self.host.display(&value);
            if shown.len() > 100 {
                shown.truncate(97);
                shown.push_str("...");
            }
            println!("{kind} {name}: {} = {shown}", self.host.type_name(&value));
        }
    }

    fn load(&mut self, path: &Path) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return eprintln!("error: {}: cannot read script: {e}", path.display()),
        };
        let name = path.display().to_string();
        match self.host.compile(&text, &name, &self.scope) {
            Ok(ast) => self.execute(ast, &name, &text, false),
            Err(e) => eprintln!("{e}"),
        }
    }
}

enum Submit {
    Incomplete,
    Done,
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(f) if f.is_alphabetic() || f == '_')
        && c.all(|c| c.is_alphanumeric() || c == '_')
}

/// Whether a parse error only means the input stops early (more lines will finish it).
fn is_incomplete(e: &ParseError, input: &str) -> bool {
    match &*e.0 {
        ParseErrorType::UnexpectedEOF => true,
        ParseErrorType::BadInput(rhai::LexError::UnterminatedString) => true,
        ParseErrorType::MissingToken(..)
        | ParseErrorType::MissingSymbol(..)
        | ParseErrorType::ExprExpected(..) => {
            let lines: Vec<&str> = input.trim_end().lines().collect();
            match (e.1.line(), lines.last()) {
                (None, _) => true,
                (Some(l), Some(last)) => {
                    l > lines.len()
                        || (l == lines.len()
                            && e.1.position().unwrap_or(usize::MAX) > last.trim_end().len())
                }
                _ => false,
            }
        }
        _ => false,
    }
}

fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(HISTORY_ENV) {
        return Some(PathBuf::from(p));
    }
    dirs::data_dir().map(|d| d.join("pretext").join("history.txt"))
}
