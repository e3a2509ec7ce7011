//! `import "x"`: the embedded stdlib first, then the importing script's folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared};

type SharedModule = Shared<Module>;

/// The environment variable that points at a stdlib folder replacing the embedded one.
pub const STDLIB_ENV: &str = "PRETEXT_STDLIB";

/// The stdlib modules compiled into the binary: (name, source).
pub const STDLIB: &[(&str, &str)] = &[
    ("util", include_str!("../../stdlib/util.rhai")),
    ("profiles", include_str!("../../stdlib/profiles.rhai")),
    ("sweep", include_str!("../../stdlib/sweep.rhai")),
    ("figures", include_str!("../../stdlib/figures.rhai")),
    ("pretrain", include_str!("../../stdlib/pretrain.rhai")),
    ("contrastive", include_str!("../../stdlib/contrastive.rhai")),
];

/// Resolves imports and caches evaluated modules by origin.
pub struct Resolver {
    stdlib_dir: Option<PathBuf>,
    cache: Mutex<HashMap<String, SharedModule>>,
    /// Modules being evaluated, to report import cycles instead of recursing.
    loading: Mutex<Vec<String>>,
}

impl Resolver {
    /// A resolver whose stdlib is `stdlib_dir`, or the embedded one when `None`.
    pub fn new(stdlib_dir: Option<PathBuf>) -> Self {
        Resolver {
            stdlib_dir,
            cache: Mutex::new(HashMap::new()),
            loading: Mutex::new(Vec::new()),
        }
    }

    /// Finds the source of module `path`: (origin shown in errors, text).
    fn locate(&self, source: Option<&str>, path: &str) -> Result<(String, String), String> {
        let file = if path.ends_with(".rhai") {
            path.to_string()
        } else {
            format!("{path}.rhai")
        };
        match &self.stdlib_dir {
            Some(dir) => {
                let p = dir.join(&file);
                if p.is_file() {
                    return read(&p);
                }
            }
            None => {
                if let Some((_, text)) = STDLIB.iter().find(|(name, _)| *name == path) {
                    return Ok((format!("stdlib/{file}"), text.to_string()));
                }
            }
        }
        let script_dir = source
            .map(Path::new)
            .and_then(Path::parent)
            .unwrap_or(Path::new(""));
        let mut tried = vec![];
        for candidate in [script_dir.join(&file), PathBuf::from(&file)] {
            if candidate.is_file() {
                return read(&candidate);
            }
            tried.push(candidate.display().to_string());
        }
        let stdlib = match &self.stdlib_dir {
            Some(d) => d.join(&file).display().to_string(),
            None => format!("embedded stdlib/{file}"),
        };
        Err(format!(
            "module `{path}` not found (looked in {stdlib}, {})",
            tried.join(", ")
        ))
    }
}

fn read(p: &Path) -> Result<(String, String), String> {
    std::fs::read_to_string(p)
        .map(|t| (p.display().to_string(), t))
        .map_err(|e| format!("{}: {e}", p.display()))
}

impl ModuleResolver for Resolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let (origin, text) = self
            .locate(source, path)
            .map_err(|msg| EvalAltResult::ErrorRuntime(msg.into(), pos))?;
        if let Some(m) = self.cache.lock().ok().and_then(|c| c.get(&origin).cloned()) {
            return Ok(m);
        }
        let in_module = |e: Box<EvalAltResult>| -> Box<EvalAltResult> {
            EvalAltResult::ErrorInModule(origin.clone(), e, pos).into()
        };
        {
            let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            if loading.contains(&origin) {
                let chain = loading.join(" -> ");
                return Err(EvalAltResult::ErrorRuntime(
                    format!("import cycle: {chain} -> {origin}").into(),
                    pos,
                )
                .into());
            }
            loading.push(origin.clone());
        }
        let evaluated = engine
            .compile(&text)
            .map_err(|e| in_module(e.into()))
            .and_then(|mut ast| {
                ast.set_source(origin.as_str());
                Module::eval_ast_as_new(Scope::new(), &ast, engine).map_err(in_module)
            });
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|o| o != &origin);
        let module: SharedModule = evaluated?.into();
        if let Ok(mut c) = self.cache.lock() {
            c.insert(origin, module.clone());
        }
        Ok(module)
    }
}
