//! Registration of script functions together with their documentation.
//!
//! Every function a script can call is registered through a [`Domain`], which records its
//! signature and a one-line doc. The records feed the REPL's `:help`, tab completion and the
//! generated API reference `docs/scripting.md`.

use rhai::{Module, RhaiNativeFunc, Variant};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use super::convert::RResult;
use super::options::{OptionDoc, docs};

/// The documentation of one script function (or one overload of it).
#[derive(Clone, Debug)]
pub struct FnDoc {
    /// The domain it belongs to (`tensor`, `volume`, ...).
    pub domain: &'static str,
    /// The name scripts call it by (for properties, the property name).
    pub name: &'static str,
    /// The signature as scripts see it, e.g. `zeros(shape: Array) -> Tensor`.
    pub signature: &'static str,
    /// One line saying what it does.
    pub doc: &'static str,
    /// The keys of its options map, generated from the typed configuration it reads.
    pub options: Option<fn() -> Vec<OptionDoc>>,
    /// Checks an options map as the function would, without running it.
    pub check: Option<OptionsCheck>,
}

/// Checks an options map (`what` names the function in errors).
pub type OptionsCheck = fn(&str, &rhai::Map) -> RResult<()>;

fn check_as<T: DeserializeOwned + JsonSchema>(what: &str, m: &rhai::Map) -> RResult<()> {
    super::options::parse::<T>(what, m).map(|_| ())
}

/// One domain of the script API: a Rhai module plus the docs of its functions.
pub struct Domain {
    name: &'static str,
    summary: &'static str,
    module: Module,
    docs: Vec<FnDoc>,
}

impl Domain {
    /// An empty domain called `name`, described by `summary`.
    pub fn new(name: &'static str, summary: &'static str) -> Self {
        Domain {
            name,
            summary,
            module: Module::new(),
            docs: Vec::new(),
        }
    }

    /// The domain's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// One line describing the domain.
    pub fn summary(&self) -> &'static str {
        self.summary
    }

    /// The documented functions.
    pub fn docs(&self) -> &[FnDoc] {
        &self.docs
    }

    /// Registers a documented function (methods are functions whose first argument is the
    /// receiver: `t.sum()` calls `sum(t)`).
    pub fn func<A: 'static, const N: usize, const X: bool, R, F>(
        &mut self,
        name: &'static str,
        signature: &'static str,
        doc: &'static str,
        f: F,
    ) -> &mut Self
    where
        R: Variant + Clone,
        F: RhaiNativeFunc<A, N, X, R, true> + Send + Sync + 'static,
    {
        self.module.set_native_fn(name, f);
        self.document(name, signature, doc)
    }

    /// Registers another overload of a function documented elsewhere (numeric variants).
    pub fn overload<A: 'static, const N: usize, const X: bool, R, F>(
        &mut self,
        name: &'static str,
        f: F,
    ) -> &mut Self
    where
        R: Variant + Clone,
        F: RhaiNativeFunc<A, N, X, R, true> + Send + Sync + 'static,
    {
        self.module.set_native_fn(name, f);
        self
    }

    /// Registers a documented read-only property (`v.shape`).
    pub fn getter<A: Variant + Clone, R, F>(
        &mut self,
        name: &'static str,
        signature: &'static str,
        doc: &'static str,
        f: F,
    ) -> &mut Self
    where
        R: Variant + Clone,
        F: Fn(&mut A) -> Result<R, Box<rhai::EvalAltResult>> + Send + Sync + 'static,
    {
        self.module.set_getter_fn(name, f);
        self.document(name, signature, doc)
    }

    /// Registers a custom type's display name, used in error messages.
    pub fn custom_type<T: Variant + Clone>(&mut self, name: &'static str) -> &mut Self {
        self.module.set_custom_type::<T>(name);
        self
    }

    /// Adds a doc record for something registered by other means (e.g. an indexer).
    pub fn document(
        &mut self,
        name: &'static str,
        signature: &'static str,
        doc: &'static str,
    ) -> &mut Self {
        self.docs.push(FnDoc {
            domain: self.name,
            name,
            signature,
            doc,
            options: None,
            check: None,
        });
        self
    }

    /// Documents the options map of the function registered last as the keys of `T`.
    pub fn options<T: DeserializeOwned + JsonSchema>(&mut self) -> &mut Self {
        if let Some(last) = self.docs.last_mut() {
            last.options = Some(docs::<T>);
            last.check = Some(check_as::<T>);
        }
        self
    }

    /// Gives up the module, keeping name, summary and docs.
    pub fn into_parts(self) -> (Module, DomainDocs) {
        (
            self.module,
            DomainDocs {
                name: self.name,
                summary: self.summary,
                docs: self.docs,
            },
        )
    }

    /// Mutable access to the module, for registrations the helpers above do not cover.
    pub fn module_mut(&mut self) -> &mut Module {
        &mut self.module
    }
}

/// The documentation of one domain, kept after its module went into the engine.
#[derive(Clone, Debug)]
pub struct DomainDocs {
    /// The domain's name.
    pub name: &'static str,
    /// One line describing it.
    pub summary: &'static str,
    /// Its functions.
    pub docs: Vec<FnDoc>,
}

/// A public function of an embedded stdlib module (`import "sweep" as sweep;`).
#[derive(Clone, Debug, PartialEq)]
pub struct StdlibFn {
    /// The module (`sweep`).
    pub module: &'static str,
    /// The function's name.
    pub name: String,
    /// Its parameters.
    pub params: Vec<String>,
    /// Its doc comment (`///` lines), joined.
    pub doc: String,
}

impl StdlibFn {
    /// `module::name(params)`.
    pub fn signature(&self) -> String {
        format!("{}::{}({})", self.module, self.name, self.params.join(", "))
    }
}

/// The public functions of the embedded stdlib modules, by module, then by name.
pub fn stdlib_functions(engine: &rhai::Engine) -> Vec<StdlibFn> {
    let mut out = Vec::new();
    for (module, source) in super::resolver::STDLIB {
        let first = out.len();
        let Ok(ast) = engine.compile(*source) else {
            continue;
        };
        for f in ast.iter_functions() {
            // Closures compile to anonymous functions; they are not part of the API.
            if f.access == rhai::FnAccess::Private || f.name.starts_with("anon$") {
                continue;
            }
            let doc = f
                .comments
                .iter()
                .flat_map(|c| c.lines())
                .map(|l| l.trim().trim_start_matches("///").trim())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            out.push(StdlibFn {
                module,
                name: f.name.to_string(),
                params: f.params.iter().map(|p| p.to_string()).collect(),
                doc,
            });
        }
        out[first..].sort_by(|a, b| (&a.name, a.params.len()).cmp(&(&b.name, b.params.len())));
    }
    out
}

/// The whole documented API.
#[derive(Clone, Debug, Default)]
pub struct ApiDocs {
    /// The domains, in registration order.
    pub domains: Vec<DomainDocs>,
    /// The public functions of the embedded stdlib modules.
    pub stdlib: Vec<StdlibFn>,
}

impl ApiDocs {
    /// All records named `name` (one per overload).
    pub fn lookup(&self, name: &str) -> Vec<&FnDoc> {
        self.domains
            .iter()
            .flat_map(|d| d.docs.iter())
            .filter(|d| d.name == name)
            .collect()
    }

    /// The options check of function `name`, when it takes an options map.
    pub fn options_check(&self, name: &str) -> Option<OptionsCheck> {
        self.lookup(name).into_iter().find_map(|f| f.check)
    }

    /// Every documented name, sorted and without duplicates.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self
            .domains
            .iter()
            .flat_map(|d| d.docs.iter().map(|f| f.name))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The API reference in Markdown (the content of `docs/scripting.md`).
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "# Script API reference\n\n\
             Generated by `pretext doc > docs/scripting.md`; a test checks that it is current and \
             that every function the engine registers appears here.\n\n\
             Methods are functions whose first argument is the receiver: `t.sum()` is `sum(t)`. \
             Numbers may be INT or FLOAT wherever a FLOAT is shown.\n",
        );
        for d in &self.domains {
            s.push_str(&format!(
                "\n## {}\n\n{}\n\n| name | signature | what it does |\n|---|---|---|\n",
                d.name, d.summary
            ));
            for f in &d.docs {
                s.push_str(&format!(
                    "| `{}` | `{}` | {} |\n",
                    f.name,
                    f.signature.replace('|', "\\|"),
                    f.doc
                ));
            }
            for f in d.docs.iter().filter(|f| f.options.is_some()) {
                s.push_str(&format!("\n### Options of `{}`\n\n", f.name));
                s.push_str(&options_table(f));
            }
        }
        s.push_str(
            "\n## stdlib modules\n\nScript modules embedded in the binary: `import \"sweep\" as sweep;` \
             then `sweep::data_efficiency(data, cfg)`.\n\n| function | what it does |\n|---|---|\n",
        );
        for f in &self.stdlib {
            s.push_str(&format!(
                "| `{}` | {} |\n",
                f.signature(),
                f.doc.replace('|', "\\|")
            ));
        }
        s
    }
}

/// The options of `f` as a Markdown table (empty when it takes none).
pub fn options_table(f: &FnDoc) -> String {
    let Some(options) = f.options else {
        return String::new();
    };
    let mut s = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for o in options() {
        let default = if o.default.is_empty() {
            String::new()
        } else {
            format!("`{}`", o.default)
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            o.key,
            o.ty,
            default,
            o.doc.replace('|', "\\|")
        ));
    }
    s
}
