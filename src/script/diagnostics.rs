//! Script errors rendered with file, line, column, the source line and a caret.

use rhai::{EvalAltResult, ParseError, Position};

/// What kind of failure a [`ScriptError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptErrorKind {
    /// The script does not parse.
    Parse,
    /// The script failed while running.
    Runtime,
    /// The run was stopped by Ctrl-C.
    Interrupted,
    /// The script file could not be read.
    Io,
}

/// A script error, ready to print: `error: FILE:LINE:COL: message`, then the source line
/// with a caret under the column, then the call chain.
#[derive(Clone, Debug)]
pub struct ScriptError {
    /// What kind of failure.
    pub kind: ScriptErrorKind,
    /// The file (or `<eval>`, `<repl>`) where the innermost error happened.
    pub file: String,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// The message without position.
    pub message: String,
    /// The whole rendered text.
    pub rendered: String,
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.rendered)
    }
}

impl std::error::Error for ScriptError {}

impl ScriptError {
    /// A script that could not be read.
    pub fn io(msg: String) -> Self {
        ScriptError {
            kind: ScriptErrorKind::Io,
            file: String::new(),
            line: None,
            column: None,
            rendered: format!("error: {msg}"),
            message: msg,
        }
    }

    /// A parse error in `text`, the source called `name`.
    pub fn parse(e: &ParseError, name: &str, text: &str) -> Self {
        Self::build(
            ScriptErrorKind::Parse,
            e.0.to_string(),
            name,
            Some(text),
            e.1,
            Vec::new(),
        )
    }

    /// A runtime error raised while running `text`, the source called `name`.
    pub fn runtime(e: &EvalAltResult, name: &str, text: &str) -> Self {
        let mut frames = Vec::new();
        let (mut file, mut src, mut err) = (name.to_string(), Some(text.to_string()), e);
        loop {
            match err {
                EvalAltResult::ErrorInFunctionCall(fname, fsrc, inner, pos) => {
                    frames.push(format!("in call to `{fname}` at {}", location(&file, *pos)));
                    if !fsrc.is_empty() && *fsrc != file {
                        file = fsrc.clone();
                        src = std::fs::read_to_string(&file).ok();
                    }
                    err = inner;
                }
                EvalAltResult::ErrorInModule(mname, inner, pos) => {
                    frames.push(format!(
                        "in module `{mname}` imported at {}",
                        location(&file, *pos)
                    ));
                    file = mname.clone();
                    src = std::fs::read_to_string(&file).ok();
                    err = inner;
                }
                EvalAltResult::ErrorParsing(pe, pos) => {
                    let msg = pe.to_string();
                    return Self::build(
                        ScriptErrorKind::Parse,
                        msg,
                        &file,
                        src.as_deref(),
                        *pos,
                        frames,
                    );
                }
                _ => break,
            }
        }
        let kind = match err {
            EvalAltResult::ErrorTerminated(..) => ScriptErrorKind::Interrupted,
            _ => ScriptErrorKind::Runtime,
        };
        let pos = err.position();
        let msg = match err {
            EvalAltResult::ErrorTerminated(v, _) => v.to_string(),
            EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
            other => {
                let s = other.to_string();
                match s.rfind(" (line ") {
                    Some(i) if s.ends_with(')') => s[..i].to_string(),
                    _ => s,
                }
            }
        };
        frames.reverse();
        Self::build(kind, msg, &file, src.as_deref(), pos, frames)
    }

    fn build(
        kind: ScriptErrorKind,
        message: String,
        file: &str,
        text: Option<&str>,
        pos: Position,
        frames: Vec<String>,
    ) -> Self {
        let (line, column) = (pos.line(), pos.position());
        let mut rendered = format!("error: {}: {message}", location(file, pos));
        let source_line = text
            .zip(line)
            .and_then(|(t, l)| Some((l, t.lines().nth(l - 1)?)));
        if let Some((l, src_line)) = source_line {
            let gutter = l.to_string().len();
            let col = column.unwrap_or(1).max(1);
            let caret: String = src_line
                .chars()
                .take(col - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            rendered.push_str(&format!(
                "\n{:gutter$} |\n{l} | {src_line}\n{:gutter$} | {caret}^",
                "", ""
            ));
        }
        for f in frames {
            rendered.push_str(&format!("\n  {f}"));
        }
        ScriptError {
            kind,
            file: file.to_string(),
            line,
            column,
            message,
            rendered,
        }
    }
}

fn location(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}
