//! The Rhai host: engine construction and one module per exposed domain.
//!
//! [`Host::new`] builds an [`Engine`] in which every domain (`tensor`, `volume`, `image`,
//! `host`, ...) is registered as its own global module, `import "x"` resolves to the embedded
//! `stdlib/x.rhai` (or `$PRETEXT_STDLIB/x.rhai`) and then to the importing script's folder,
//! and errors are rendered with file, line, column and a caret ([`ScriptError`]).

pub(crate) mod api;
mod augment;
pub(crate) mod convert;
pub(crate) mod data;
mod diagnostics;
pub(crate) mod experiment;
mod folder;
pub(crate) mod host;
mod imaging;
pub(crate) mod model;
pub(crate) mod options;
pub(crate) mod pretext;
pub(crate) mod repl;
mod resolver;
pub(crate) mod tensor;
pub(crate) mod values;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use candle_core::Device;
use rhai::{AST, Dynamic, Engine, Map, Scope};

pub use api::{ApiDocs, Domain, FnDoc};
pub use convert::parse_device;
pub use diagnostics::{ScriptError, ScriptErrorKind};
pub use options::{OptionDoc, docs as option_docs};
pub use repl::Repl;
pub use resolver::{STDLIB, STDLIB_ENV};
pub use values::parse_set;

/// State shared by the host and every registered function.
pub struct HostState {
    /// Values given with `--set key=value`.
    pub args: Map,
    /// The run's master seed.
    pub seed: u64,
    device: RwLock<Device>,
    /// Set by Ctrl-C; the running statement stops at its next operation.
    pub interrupt: Arc<AtomicBool>,
    /// This job's share of sweep cells (`--shard i/n`).
    pub shard: crate::experiment::Shard,
    /// Results of different configurations may share a folder (`--allow-mixed`).
    pub allow_mixed: bool,
    /// After `run --jobs N` ran N shards, the run that gathers their result files (N), else 0.
    pub gather: usize,
}

/// The message a script stops with when its standard output was closed (`pretext run … |
/// head -1`); the command line ends quietly with exit code 0 on it.
pub const STDOUT_CLOSED: &str = "standard output closed";

impl HostState {
    /// The device new tensors and models go to.
    pub fn device(&self) -> Device {
        self.device.read().map(|d| d.clone()).unwrap_or(Device::Cpu)
    }

    /// Changes the device new tensors and models go to.
    pub fn set_device(&self, dev: Device) {
        if let Ok(mut d) = self.device.write() {
            *d = dev;
        }
    }
}

/// How to build a [`Host`].
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// Values given with `--set key=value`, already parsed ([`parse_set`]).
    pub args: Map,
    /// The master seed (`--seed`).
    pub seed: u64,
    /// The initial device (`--device`).
    pub device: Option<Device>,
    /// A folder that replaces the embedded stdlib (else `$PRETEXT_STDLIB`, else embedded).
    pub stdlib_dir: Option<PathBuf>,
    /// This job's shard of sweep cells (`--shard i/n`; all cells by default).
    pub shard: Option<crate::experiment::Shard>,
    /// Results of different configurations may share a folder (`--allow-mixed`).
    pub allow_mixed: bool,
    /// The number of shards whose result files this run gathers (`run --jobs N`), else 0.
    pub gather: usize,
}

/// A configured Rhai engine with pretext's domains and their documentation.
pub struct Host {
    engine: Engine,
    docs: ApiDocs,
    state: Arc<HostState>,
}

impl Host {
    /// Builds the engine and registers every domain.
    pub fn new(cfg: HostConfig) -> Host {
        let state = Arc::new(HostState {
            args: cfg.args,
            seed: cfg.seed,
            device: RwLock::new(cfg.device.unwrap_or(Device::Cpu)),
            interrupt: Arc::new(AtomicBool::new(false)),
            shard: cfg.shard.unwrap_or(crate::experiment::Shard::ALL),
            allow_mixed: cfg.allow_mixed,
            gather: cfg.gather,
        });
        let mut engine = Engine::new();
        engine.set_strict_variables(true);
        engine.set_fail_on_invalid_map_property(true);
        engine.set_max_expr_depths(256, 128);
        let flag = state.interrupt.clone();
        // `print` to a closed standard output (`| head -1`) stops the script quietly.
        let closed = Arc::new(AtomicBool::new(false));
        let closed_print = closed.clone();
        engine.on_print(move |s| {
            use std::io::Write;
            if closed_print.load(Ordering::Relaxed) {
                return;
            }
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{s}").and_then(|_| out.flush()).is_err() {
                closed_print.store(true, Ordering::Relaxed);
            }
        });
        engine.on_progress(move |_| {
            if closed.load(Ordering::Relaxed) {
                return Some(Dynamic::from(STDOUT_CLOSED));
            }
            flag.swap(false, Ordering::Relaxed)
                .then(|| Dynamic::from("interrupted by Ctrl-C"))
        });
        let stdlib_dir = cfg
            .stdlib_dir
            .or_else(|| std::env::var_os(STDLIB_ENV).map(PathBuf::from));
        engine.set_module_resolver(resolver::Resolver::new(stdlib_dir));

        let mut docs = ApiDocs::default();
        for domain in domains(&state) {
            let (module, d) = domain.into_parts();
            engine.register_global_module(module.into());
            docs.domains.push(d);
        }
        let (module, d) = host::options_domain(&state, &docs).into_parts();
        engine.register_global_module(module.into());
        docs.domains.push(d);
        docs.stdlib = api::stdlib_functions(&engine);
        Host {
            engine,
            docs,
            state,
        }
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The documentation of every registered function.
    pub fn docs(&self) -> &ApiDocs {
        &self.docs
    }

    /// The shared state (arguments, seed, device, interrupt flag).
    pub fn state(&self) -> &Arc<HostState> {
        &self.state
    }

    /// Parses a script file without running it.
    pub fn check_file(&self, path: &Path) -> Result<AST, ScriptError> {
        let text = read_script(path)?;
        let name = path.display().to_string();
        let ast = self.compile(&text, &name, &Scope::new())?;
        if let Some((f, pos)) = self.unknown_calls(&ast).into_iter().next() {
            let known = self.function_names(&ast);
            let hint = options::suggestion(&f, known.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            let e = rhai::EvalAltResult::ErrorRuntime(
                format!("unknown function `{f}`{hint}").into(),
                pos,
            );
            return Err(ScriptError::runtime(&e, &name, &text));
        }
        Ok(ast)
    }

    /// Every function a call in `ast` may name without a module path: the registered ones,
    /// Rhai's packages and keywords, and the script's own.
    fn function_names(&self, ast: &AST) -> std::collections::BTreeSet<String> {
        let mut names: std::collections::BTreeSet<String> = [
            "print",
            "debug",
            "type_of",
            "eval",
            "Fn",
            "call",
            "curry",
            "is_shared",
            "is_def_var",
            "is_def_fn",
        ]
        .map(String::from)
        .into();
        names.extend(ast.iter_functions().map(|f| f.name.to_string()));
        if let Ok(json) = self.engine.gen_fn_metadata_with_ast_to_json(ast, true)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&json)
        {
            for f in v["functions"].as_array().into_iter().flatten() {
                if let Some(n) = f["name"].as_str() {
                    names.insert(n.to_string());
                }
            }
        }
        names
    }

    /// Calls in `ast` (function bodies included) to a function that exists nowhere, with
    /// their positions; calls into imported modules (`m::f`) are not checked.
    fn unknown_calls(&self, ast: &AST) -> Vec<(String, rhai::Position)> {
        let known = self.function_names(ast);
        let mut unknown = Vec::new();
        ast.walk(&mut |path: &[rhai::ASTNode]| {
            if let Some(rhai::ASTNode::Expr(rhai::Expr::FnCall(call, pos))) = path.last()
                && call.namespace.is_empty()
                && call.op_token.is_none()
                && !known.contains(call.name.as_str())
            {
                unknown.push((call.name.to_string(), *pos));
            }
            true
        });
        unknown
    }

    /// Parses `text`, naming it `name` in errors.
    pub fn compile(&self, text: &str, name: &str, scope: &Scope) -> Result<AST, ScriptError> {
        let mut ast = self
            .engine
            .compile_with_scope(scope, text)
            .map_err(|e| ScriptError::parse(&e, name, text))?;
        ast.set_source(name);
        Ok(ast)
    }

    /// Runs a script file.
    pub fn run_file(&self, path: &Path) -> Result<Dynamic, ScriptError> {
        let text = read_script(path)?;
        let name = path.display().to_string();
        let mut scope = Scope::new();
        let ast = self.compile(&text, &name, &scope)?;
        self.eval_ast(&mut scope, &ast, &name, &text)
    }

    /// Evaluates source text (an expression or statements) and returns the last value.
    pub fn eval(&self, text: &str, name: &str) -> Result<Dynamic, ScriptError> {
        let mut scope = Scope::new();
        let ast = self.compile(text, name, &scope)?;
        self.eval_ast(&mut scope, &ast, name, text)
    }

    /// The script-facing name of a value's type (`Tensor`, `Volume`, `map`), not its Rust path.
    pub fn type_name(&self, v: &Dynamic) -> String {
        let name = self.engine.map_type_name(v.type_name());
        name.rsplit("::").next().unwrap_or(name).to_string()
    }

    /// Evaluates a compiled AST in `scope`; `name`/`text` are used to render errors.
    pub fn eval_ast(
        &self,
        scope: &mut Scope,
        ast: &AST,
        name: &str,
        text: &str,
    ) -> Result<Dynamic, ScriptError> {
        self.state.interrupt.store(false, Ordering::Relaxed);
        crate::stop::clear();
        self.engine
            .eval_ast_with_scope::<Dynamic>(scope, ast)
            .map_err(|e| ScriptError::runtime(&e, name, text))
    }

    /// Resolves module `path` as `import` would and makes it callable as `alias::f` in every
    /// later evaluation (the REPL uses this so imports outlive the input that made them).
    pub fn register_import(&mut self, path: &str, alias: &str) -> Result<(), ScriptError> {
        let module = self
            .engine
            .module_resolver()
            .resolve(&self.engine, None, path, rhai::Position::NONE)
            .map_err(|e| ScriptError::runtime(&e, "<import>", ""))?;
        self.engine.register_static_module(alias, module);
        Ok(())
    }

    /// Renders a value for display: tensors, volumes and images with their own description.
    pub fn display(&self, v: &Dynamic) -> String {
        if v.is_string() {
            return v.to_string();
        }
        let mut scope = Scope::new();
        scope.push("value", v.clone());
        self.engine
            .eval_with_scope::<String>(&mut scope, "value.to_string()")
            .unwrap_or_else(|_| v.to_string())
    }
}

fn read_script(path: &Path) -> Result<String, ScriptError> {
    std::fs::read_to_string(path)
        .map_err(|e| ScriptError::io(format!("{}: cannot read script: {e}", path.display())))
}

/// Every domain of the script API, in the order `:help` lists them.
fn domains(state: &Arc<HostState>) -> Vec<Domain> {
    vec![
        tensor::domain(state),
        imaging::volume_domain(),
        imaging::image_domain(),
        data::domain(),
        model::domain(state),
        pretext::domain(state),
        experiment::domain(state),
        host::domain(state),
    ]
}
