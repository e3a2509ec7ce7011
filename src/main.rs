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
    /// Measure speed: single ops or whole UNet3D training steps.
    Bench(BenchArgs),
}

/// What `pretext bench` measures.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchKind {
    /// Each UNet3D convolution and the other ops of a block: forward and forward+backward.
    Ops,
    /// UNet3D training steps (forward, Dice loss, backward, Adam).
    Models,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure.
    kind: BenchKind,
    /// Volume sizes (cubes), e.g. --sizes 32,64.
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    sizes: Vec<usize>,
    /// Volumes per batch (models).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Base filters of the UNet (models).
    #[arg(long, default_value_t = 16)]
    filters: usize,
    /// Only a forward pass in inference mode, once, with its peak memory (models).
    #[arg(long)]
    forward_only: bool,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
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
        Command::Bench(args) => bench(&args).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(SCRIPT_ERROR)
        }),
    };
    result.err().unwrap_or(ExitCode::SUCCESS)
}

fn bench(a: &BenchArgs) -> pretext::Result<()> {
    use pretext::bench::{self, Timing};
    let dev = pretext::script::convert::parse_device(&a.device)?;
    let t = Timing {
        warmup: a.warmup,
        reps: a.reps,
    };
    let cfg = pretext::nn::UNet3dConfig {
        filters: a.filters,
        ..Default::default()
    };
    let threads = rayon::current_num_threads();
    eprintln!(
        "pretext bench {:?} on {} ({threads} threads)",
        a.kind, a.device
    );
    let rows = match a.kind {
        BenchKind::Ops => bench::ops(&a.sizes, t, &dev)?,
        BenchKind::Models if a.forward_only => a
            .sizes
            .iter()
            .map(|&s| bench::forward_only(s, a.batch, &cfg, &dev))
            .collect::<pretext::Result<_>>()?,
        BenchKind::Models => bench::models(&a.sizes, a.batch, &cfg, t, &dev)?,
    };
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    } else {
        print!("{}", bench::table(&rows));
    }
    Ok(())
}

fn script_failed(e: pretext::script::ScriptError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(SCRIPT_ERROR)
}
