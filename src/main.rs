//! The `pretext` command line: run scripts, the REPL, one-off expressions, checks and tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use pretext::script::{Host, HostConfig, repl::Repl, values};

/// Scriptable 3D self-supervised learning for medical imaging.
#[derive(Parser)]
#[command(name = "pretext", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Rhai script.
    Run {
        /// The script file.
        script: PathBuf,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Start the interactive REPL.
    Repl {
        #[command(flatten)]
        host: HostArgs,
    },
    /// Evaluate one expression (or statements) and print the result.
    Eval {
        /// The code, e.g. '(zeros([2,3]) + 1.5).sum().to_float()'.
        code: String,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Parse a script without running it; errors give line:column and exit with 1.
    Check {
        /// The script file.
        script: PathBuf,
    },
    /// Print the script API reference (Markdown, the content of docs/scripting.md).
    Doc,
}

/// Options shared by the commands that run scripts.
#[derive(Args)]
struct HostArgs {
    /// A value for the script, read with `arg("key", default)`; repeatable. Values parse as
    /// int, float, bool, array (`[a, b]`) or string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// The master seed (the script reads it with `seed()`).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where tensors and models go: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl HostArgs {
    fn host(&self) -> Result<Host, String> {
        let args = values::parse_set(&self.set).map_err(|e| e.to_string())?;
        let device =
            pretext::script::convert::parse_device(&self.device).map_err(|e| e.to_string())?;
        Ok(Host::new(HostConfig {
            args,
            seed: self.seed,
            device: Some(device),
            stdlib_dir: None,
        }))
    }
}

const SCRIPT_ERROR: u8 = 1;
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let host_of = |h: &HostArgs| {
        h.host().map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(USAGE_ERROR)
        })
    };
    let result = match cli.command {
        Command::Run { script, host } => host_of(&host).and_then(|h| {
            if !script.is_file() {
                eprintln!("error: {}: no such script file", script.display());
                return Err(ExitCode::from(USAGE_ERROR));
            }
            h.run_file(&script).map(|_| ()).map_err(script_failed)
        }),
        Command::Eval { code, host } => host_of(&host).and_then(|h| {
            let v = h.eval(&code, "<eval>").map_err(script_failed)?;
            if !v.is_unit() {
                println!("{}", h.display(&v));
            }
            Ok(())
        }),
        Command::Check { script } => {
            let h = Host::new(HostConfig::default());
            if !script.is_file() {
                eprintln!("error: {}: no such script file", script.display());
                Err(ExitCode::from(USAGE_ERROR))
            } else {
                h.check_file(&script)
                    .map(|_| println!("{}: ok", script.display()))
                    .map_err(script_failed)
            }
        }
        Command::Repl { host } => host_of(&host).and_then(|h| {
            Repl::new(h).run().map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(SCRIPT_ERROR)
            })
        }),
        Command::Doc => {
            print!("{}", Host::new(HostConfig::default()).docs().markdown());
            Ok(())
        }
    };
    result.err().unwrap_or(ExitCode::SUCCESS)
}

fn script_failed(e: pretext::script::ScriptError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(SCRIPT_ERROR)
}
