//! The `pretext` command line: run scripts, the REPL, one-off expressions, checks and tools.

use std::path::PathBuf;
use std::process::ExitCode;

/// Writes to standard output; when it is closed (`pretext … | head -1`) the process ends
/// quietly with exit code 0, and any other write error ends it with exit code 1.
fn out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

// `print!`/`println!` through `out` (std's panic on a closed standard output).
macro_rules! print {
    ($($t:tt)*) => { out(format_args!($($t)*)) };
}
macro_rules! println {
    ($($t:tt)*) => { out(format_args!("{}\n", format_args!($($t)*))) };
}

use clap::{Args, Parser, Subcommand};
use pretext::data::synthetic::{FundusConfig, PhantomConfig, fundus, pancreas, write_new};
use pretext::progress::Progress;
use pretext::script::{Host, HostConfig, Repl};

/// Scriptable 3D self-supervised learning for medical imaging.
#[derive(Parser)]
#[command(name = "pretext", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Show Rust backtraces in error messages (with RUST_BACKTRACE=1); for bug reports.
    #[arg(long, global = true)]
    debug: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Rhai script.
    Run {
        /// The script file.
        script: PathBuf,
        /// Run the script's sweeps as N shard processes at once (one per core by default
        /// threads split between them), then once more to gather their results and draw the
        /// figures. Results are the same as with one job.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
        #[command(flatten)]
        host: HostArgs,
    },
    /// Start the interactive REPL.
    Repl {
        #[command(flatten)]
        host: ScriptArgs,
    },
    /// Evaluate one expression (or statements) and print the result.
    Eval {
        /// The code, e.g. '(zeros([2,3]) + 1.5).sum().to_float()'.
        code: String,
        #[command(flatten)]
        host: ScriptArgs,
    },
    /// Parse a script without running it; errors give line:column and exit with 1.
    Check {
        /// The script file.
        script: PathBuf,
    },
    /// Print the script API reference (Markdown, the content of docs/scripting.md).
    Doc,
    /// Datasets: generate synthetic ones, verify and preview dataset folders.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Measure speed: single ops, whole UNet3D training steps, or the data preprocessing.
    Bench(BenchArgs),
    /// Merge sweep result files (e.g. the shards of a job array) into one, without duplicates.
    Merge {
        /// The result files (JSONL).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// The merged file.
        #[arg(short, long)]
        out: PathBuf,
        /// Also write the merged rows as CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// Keep rows of different configuration hashes side by side (by default an error
        /// naming both hashes).
        #[arg(long)]
        allow_mixed: bool,
    },
    /// Summarise a run folder (e.g. runs/quick/fig3) in report.md and report.html: the
    /// configuration, figures, statistics, timings and failures.
    Report {
        /// The run's output folder.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Generate a synthetic dataset in the real on-disk layout (Decathlon or APTOS).
    Synth {
        /// What to generate.
        #[arg(value_enum)]
        kind: SynthKind,
        /// The folder to write: new or empty (written in a temporary folder, then renamed).
        #[arg(long)]
        out: PathBuf,
        /// Replace the contents of a non-empty `--out` folder.
        #[arg(long)]
        force: bool,
        /// Labelled cases (pancreas) or photographs (fundus, in APTOS's class balance).
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// The seed; the same seed gives the same files.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Pancreas: unlabelled cases written to imagesTs/.
        #[arg(long, default_value_t = 0)]
        unlabelled: usize,
        /// Pancreas: voxels per case, X,Y,Z (the field of view is 420 x 420 x 200 mm).
        #[arg(long, default_value = "128,128,64", value_parser = parse_shape)]
        shape: [usize; 3],
        /// Pancreas: the share of cases with a tumour.
        #[arg(long, default_value_t = 0.7)]
        tumour_share: f64,
        /// Fundus: photograph width and height in pixels.
        #[arg(long, default_value_t = 320)]
        size: usize,
    },
    /// Check a dataset folder: every case's shape, dtype, spacing and label values; every
    /// missing or unreadable file, shape mismatch and bad label. Exits with 1 on problems.
    Verify {
        /// A Decathlon folder (dataset.json, imagesTr, labelsTr, imagesTs) or an APTOS folder
        /// (train.csv, train_images).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a contact sheet (PNG) of a dataset folder: CT slices with label overlays, or
    /// photographs by grade; with --pred, image | truth | prediction per case and the Dice
    /// of every label.
    Preview {
        /// The dataset folder (Decathlon or APTOS); with --pred also a folder of NIfTI images.
        dir: PathBuf,
        /// The PNG file to write.
        #[arg(long)]
        out: PathBuf,
        /// Cases (Decathlon, predictions) or photographs per grade (APTOS).
        #[arg(long, default_value_t = 4)]
        n: usize,
        /// Pixels per picture.
        #[arg(long, default_value_t = 160)]
        px: u32,
        /// A folder of predicted label maps (<id>.nii.gz, in each image's own geometry) to
        /// draw against the truth.
        #[arg(long)]
        pred: Option<PathBuf>,
        /// With --pred on a folder of images: the folder of true label maps (<id>.nii.gz).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// With --pred on a folder of images: which files are images.
        #[arg(long, default_value = "*.nii*")]
        glob: String,
        /// With --pred: the grey window LO,HI (default: the abdominal CT window for a
        /// Decathlon folder, else each case's 0.5 and 99.5 percentiles).
        #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
        window: Option<(f32, f32)>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SynthKind {
    /// CT-like abdomen phantoms with pancreas and tumour labels (Decathlon layout).
    Pancreas,
    /// Fundus-like photographs graded 0-4 (APTOS layout).
    Fundus,
}

fn parse_shape(s: &str) -> Result<[usize; 3], String> {
    let v: Vec<usize> = s
        .split([',', 'x'])
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected X,Y,Z (three positive integers), got `{s}`"))?;
    match v[..] {
        [x, y, z] if x > 0 && y > 0 && z > 0 => Ok([x, y, z]),
        _ => Err(format!(
            "expected X,Y,Z (three positive integers), got `{s}`"
        )),
    }
}

fn parse_window(s: &str) -> Result<(f32, f32), String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("expected LO,HI (two numbers), got `{s}`"))?;
    match v[..] {
        [lo, hi] if lo < hi => Ok((lo, hi)),
        _ => Err(format!("expected LO,HI with LO < HI, got `{s}`")),
    }
}

/// What `pretext bench` measures.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchKind {
    /// Each UNet3D convolution and the other ops of a block: forward and forward+backward.
    Ops,
    /// Training steps (forward, loss, backward, Adam) of the UNet3D at --sizes and of the
    /// DenseNets (quick profile 16x3x96^2, DenseNet-121 8x3x224^2); --model picks.
    Models,
    /// The pretext samplers at O's batch sizes on in-memory volumes (--sizes, default 128 for
    /// this kind): milliseconds per batch; compare with scripts/bench_pretext_ref.py.
    Pretext,
    /// Every op and model on --device against the CPU kernels (on the CPU: against the composed
    /// implementation other devices use); exits 1 if any differs beyond its tolerance.
    Parity,
    /// The pancreas preprocessing (min-max, bounding box, crop, resize, min-max) of one CT;
    /// compare with scripts/bench_preprocess_ref.py on the same file.
    Preprocess,
}

/// The networks `pretext bench models` measures.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum BenchModel {
    /// The UNet3D at each of --sizes.
    Unet,
    /// DenseNet at the quick profile's and the paper's shapes.
    Densenet,
    /// The quick profile's DenseNet (16x3x96^2) alone.
    DensenetQuick,
    /// DenseNet-121 (8x3x224^2) alone.
    Densenet121,
    /// All of them.
    All,
}

#[derive(Args)]
struct BenchArgs {
    /// What to measure.
    kind: BenchKind,
    /// Preprocess: a NIfTI CT file; without it a 512x512x100 synthetic CT (seed 0) is made.
    input: Option<PathBuf>,
    /// Preprocess: the target shape X,Y,Z.
    #[arg(long, default_value = "128,128,128", value_parser = parse_shape)]
    target: [usize; 3],
    /// Preprocess: the output of scripts/bench_preprocess_ref.py (NIfTI) to compare with.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Volume sizes (cubes), e.g. --sizes 32,64.
    #[arg(long, value_delimiter = ',', default_value = "32,64")]
    sizes: Vec<usize>,
    /// Volumes per batch (models).
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Images per batch of the DenseNet rows (models); default: 16 for the quick network, 8
    /// for DenseNet-121 (the GPU check uses 32).
    #[arg(long)]
    dense_batch: Option<usize>,
    /// Base filters of the UNet (models).
    #[arg(long, default_value_t = 16)]
    filters: usize,
    /// Models: which networks (unet, densenet = densenet-quick and densenet121, or all).
    #[arg(long, default_value = "all")]
    model: BenchModel,
    /// Ops: leave out the 2D convolution rows (DenseNet's shapes).
    #[arg(long)]
    no_conv2d: bool,
    /// Only a forward pass in inference mode, once, with its peak memory (models).
    #[arg(long)]
    forward_only: bool,
    /// Untimed runs before measuring.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed runs (the median is reported; preprocess also reports the minimum).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parity: only the cases whose name contains this (e.g. "conv3d").
    #[arg(long)]
    filter: Option<String>,
}

/// Options shared by the commands that run scripts.
#[derive(Args, Clone)]
struct ScriptArgs {
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

impl ScriptArgs {
    fn host(&self) -> Result<Host, String> {
        HostArgs {
            script: self.clone(),
            shard: None,
            allow_mixed: false,
        }
        .host()
    }
}

/// Options of `run`: the script's, and a sweep's share of the cells.
#[derive(Args)]
struct HostArgs {
    #[command(flatten)]
    script: ScriptArgs,
    /// Run only shard I of N of a sweep's cells (e.g. one job of a Slurm array); see
    /// `pretext merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Let a sweep add rows of another configuration to a folder that holds results of a
    /// different one (by default an error naming both configuration hashes).
    #[arg(long)]
    allow_mixed: bool,
}

impl HostArgs {
    fn host(&self) -> Result<Host, String> {
        self.host_gathering(0)
    }

    /// The host of the run that gathers the result files of `gather` shards (0: none).
    fn host_gathering(&self, gather: usize) -> Result<Host, String> {
        let args = pretext::script::parse_set(&self.script.set).map_err(|e| e.to_string())?;
        let device =
            pretext::script::parse_device(&self.script.device).map_err(|e| e.to_string())?;
        Ok(Host::new(HostConfig {
            args,
            seed: self.script.seed,
            device: Some(device),
            stdlib_dir: None,
            shard: self
                .shard
                .as_deref()
                .map(pretext::experiment::Shard::parse)
                .transpose()
                .map_err(|e| e.to_string())?,
            allow_mixed: self.allow_mixed,
            gather,
        }))
    }
}

const SCRIPT_ERROR: u8 = 1;
const USAGE_ERROR: u8 = 2;
/// Stopped by SIGINT or SIGTERM (128 + SIGINT, as shells report it).
const STOPPED: u8 = 130;

fn main() -> ExitCode {
    // SAFETY: no other thread exists yet (argument parsing starts none).
    unsafe { pretext::ops::configure_threads() };
    let cli = Cli::parse();
    // Data commands hold a few whole volumes, each read once, on two threads: with glibc's
    // defaults a freed volume goes back to the system, where keeping it in the heap can leave
    // a hole the other thread's next volume does not fit (a third volume of peak memory).
    if !matches!(cli.command, Command::Data { .. }) {
        pretext::ops::configure_allocator();
    }
    if !cli.debug {
        // Errors are for users: no Rust backtrace in them (candle attaches one when
        // RUST_BACKTRACE is set) unless --debug. Panics, which are bugs, keep RUST_BACKTRACE.
        // SAFETY: still no other thread.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(USAGE_ERROR)
    };
    let host_of = |h: &HostArgs| h.host().map_err(usage);
    let script_host = |h: &ScriptArgs| h.host().map_err(usage);
    let result = match cli.command {
        Command::Run { script, jobs, host } => {
            if !script.is_file() {
                eprintln!("error: {}: no such script file", script.display());
                Err(ExitCode::from(USAGE_ERROR))
            } else if let Some(n) = jobs.filter(|&n| n > 1) {
                run_jobs(&script, n, &host).and_then(|()| {
                    let h = host.host_gathering(n).map_err(|e| {
                        eprintln!("error: {e}");
                        ExitCode::from(USAGE_ERROR)
                    })?;
                    h.run_file(&script).map(|_| ()).map_err(script_failed)
                })
            } else {
                host_of(&host).and_then(|h| {
                    stop_on_signals(h.state().interrupt.clone());
                    h.run_file(&script).map(|_| ()).map_err(script_failed)
                })
            }
        }
        Command::Eval { code, host } => script_host(&host).and_then(|h| {
            stop_on_signals(h.state().interrupt.clone());
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
        Command::Repl { host } => script_host(&host).and_then(|h| {
            Repl::new(h).run().map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(SCRIPT_ERROR)
            })
        }),
        Command::Doc => {
            print!("{}", Host::new(HostConfig::default()).docs().markdown());
            Ok(())
        }
        Command::Data { command } => data_command(command),
        Command::Report { dir } => pretext::experiment::summary::write(&dir)
            .map(|r| println!("wrote {} and {}", r.markdown.display(), r.html.display()))
            .map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(SCRIPT_ERROR)
            }),
        Command::Merge {
            inputs,
            out,
            csv,
            allow_mixed,
        } => merge(&inputs, &out, csv.as_deref(), allow_mixed).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(SCRIPT_ERROR)
        }),
        Command::Bench(args) => bench(&args).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(SCRIPT_ERROR)
        }),
    };
    result.err().unwrap_or(ExitCode::SUCCESS)
}

fn bench(a: &BenchArgs) -> pretext::Result<()> {
    use pretext::bench::{self, Timing};
    // Set by main before any thread started (`configure_threads`).
    let candle_threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_default();
    let dev = pretext::script::parse_device(&a.device)?;
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
        "pretext bench {:?} on {} ({threads} threads, CANDLE_NUM_THREADS={candle_threads})",
        a.kind, a.device
    );
    let rows = match a.kind {
        BenchKind::Ops => bench::ops(&a.sizes, !a.no_conv2d, t, &dev)?,
        BenchKind::Models if a.forward_only => a
            .sizes
            .iter()
            .map(|&s| bench::forward_only(s, a.batch, &cfg, &dev))
            .collect::<pretext::Result<_>>()?,
        BenchKind::Models => {
            let kind = match a.model {
                BenchModel::Unet => bench::ModelKind::Unet,
                BenchModel::Densenet => bench::ModelKind::Densenet,
                BenchModel::DensenetQuick => bench::ModelKind::DensenetQuick,
                BenchModel::Densenet121 => bench::ModelKind::Densenet121,
                BenchModel::All => bench::ModelKind::All,
            };
            bench::models(kind, &a.sizes, (a.batch, a.dense_batch), &cfg, t, &dev)?
        }
        BenchKind::Pretext => a
            .sizes
            .iter()
            .map(|&s| bench::pretext(s, t))
            .collect::<pretext::Result<Vec<_>>>()?
            .concat(),
        BenchKind::Preprocess => return bench_preprocess(a),
        BenchKind::Parity => return bench_parity(&dev, a.filter.as_deref(), a.json),
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

fn bench_parity(
    dev: &candle_core::Device,
    filter: Option<&str>,
    json: bool,
) -> pretext::Result<()> {
    use std::io::Write;
    // Each case is printed as it finishes, so that a hang or a crash loses nothing before it.
    let checks = pretext::parity::parity(dev, filter, &mut |c| {
        if json {
            println!("{}", serde_json::to_string(c).unwrap_or_default());
        } else {
            let verdict = if c.ok { "ok" } else { "FAILED" };
            let why = match &c.error {
                Some(e) => format!("error: {e}"),
                None => format!("worst: {}", c.worst),
            };
            println!(
                "{:<34} rel err {:>10.3e}  (tol {:.0e})  {verdict}  {why}",
                c.name, c.rel_err, c.tol
            );
        }
        let _ = std::io::stdout().flush();
    });
    if checks.is_empty() {
        return Err(pretext::Error::arg(
            "filter",
            format!("no parity case matches {:?}", filter.unwrap_or_default()),
        ));
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        return Err(pretext::Error::msg(format!(
            "{failed} of {} parity checks failed",
            checks.len()
        )));
    }
    Ok(())
}

/// Runs `script` as `n` shard processes at once (`--shard i/n`), splitting the cores between
/// them unless `RAYON_NUM_THREADS` is set, and waits for all; an error names the failed shards.
fn run_jobs(script: &std::path::Path, n: usize, host: &HostArgs) -> Result<(), ExitCode> {
    if host.shard.is_some() {
        eprintln!("error: --jobs runs the shards itself; give either --jobs or --shard");
        return Err(ExitCode::from(USAGE_ERROR));
    }
    let exe = std::env::current_exe().map_err(failed)?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n).max(1).to_string();
    // A SIGINT or SIGTERM to this process reaches every shard (each then stops at its next
    // step, resumable).
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let forward = pids.clone();
    let _ = ctrlc::set_handler(move || {
        pretext::stop::request();
        for &pid in forward.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill only sends SIGTERM to a shard process this one started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    });
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run")
            .arg(script)
            .arg("--shard")
            .arg(format!("{i}/{n}"));
        cmd.arg("--seed").arg(host.script.seed.to_string());
        cmd.arg("--device").arg(&host.script.device);
        for s in &host.script.set {
            cmd.arg("--set").arg(s);
        }
        if host.allow_mixed {
            cmd.arg("--allow-mixed");
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            cmd.env("RAYON_NUM_THREADS", &threads);
        }
        // Its own process group: a terminal's Ctrl-C reaches this process only, which
        // forwards one SIGTERM (a second signal would make a shard quit at once).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(failed)?;
        pids.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        children.push((i, child));
    }
    let failed_shards: Vec<String> = children
        .into_iter()
        .filter_map(|(i, mut c)| match c.wait() {
            Ok(s) if s.success() => None,
            _ => Some(format!("{i}/{n}")),
        })
        .collect();
    if failed_shards.is_empty() {
        Ok(())
    } else if pretext::stop::requested() {
        eprintln!("stopped; rerunning the same command resumes where the shards stopped");
        Err(ExitCode::from(STOPPED))
    } else {
        eprintln!(
            "error: shard(s) {} failed (their messages are above); rerunning the same command \
             resumes where they stopped",
            failed_shards.join(", ")
        );
        Err(ExitCode::from(SCRIPT_ERROR))
    }
}

fn merge(
    inputs: &[PathBuf],
    out: &std::path::Path,
    csv: Option<&std::path::Path>,
    allow_mixed: bool,
) -> pretext::Result<()> {
    use pretext::experiment::results;
    // The inputs are read, never written; the output is written under its lock, so a merge
    // into a file that a sweep is writing is refused.
    let rows = pretext::experiment::merge_with(inputs, allow_mixed)?;
    let _lock = pretext::lock::Lock::acquire(out, "results file")?;
    results::write_jsonl(out, &rows)?;
    if let Some(c) = csv {
        results::write_csv(c, &rows)?;
    }
    println!(
        "{} rows from {} files -> {}",
        rows.len(),
        inputs.len(),
        out.display()
    );
    Ok(())
}

fn script_failed(e: pretext::script::ScriptError) -> ExitCode {
    if e.kind == pretext::script::ScriptErrorKind::Interrupted
        && e.message == pretext::script::STDOUT_CLOSED
    {
        return ExitCode::SUCCESS;
    }
    eprintln!("{e}");
    if pretext::stop::requested() {
        return ExitCode::from(STOPPED);
    }
    ExitCode::from(SCRIPT_ERROR)
}

/// Batch mode: the first SIGINT or SIGTERM (a Slurm time limit) stops the script and its
/// native work at the next step, files consistent and resumable; a second one quits at once.
fn stop_on_signals(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let seen = std::sync::atomic::AtomicBool::new(false);
    let _ = ctrlc::set_handler(move || {
        if seen.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(i32::from(STOPPED));
        }
        eprintln!("pretext: stopping at the next step (a second signal quits at once)");
        pretext::stop::request();
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
}

fn failed(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(SCRIPT_ERROR)
}

fn data_command(cmd: DataCommand) -> Result<(), ExitCode> {
    match cmd {
        DataCommand::Synth {
            kind,
            out,
            force,
            n,
            seed,
            unlabelled,
            shape,
            tumour_share,
            size,
        } => {
            let started = std::time::Instant::now();
            let total = match kind {
                SynthKind::Pancreas => {
                    let cfg = PhantomConfig {
                        labelled: n,
                        unlabelled,
                        shape,
                        seed,
                        tumour_share,
                    };
                    cfg.validate().map_err(failed)?;
                    let p = Progress::new((n + unlabelled) as u64, "synth pancreas");
                    write_new(&out, force, |d| pancreas::write(&cfg, d, Some(&p)))
                        .map_err(failed)?;
                    p.finish();
                    n + unlabelled
                }
                SynthKind::Fundus => {
                    let cfg = FundusConfig::aptos(n, size, seed);
                    cfg.validate().map_err(failed)?;
                    let p = Progress::new(n as u64, "synth fundus");
                    write_new(&out, force, |d| fundus::write(&cfg, d, Some(&p))).map_err(failed)?;
                    p.finish();
                    n
                }
            };
            println!(
                "wrote {total} cases to {} in {:.1} s",
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        DataCommand::Verify { dir, json } => {
            let report = pretext::data::verify(&dir).map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(USAGE_ERROR)
            })?;
            if json {
                let text = serde_json::to_string_pretty(&report).map_err(failed)?;
                println!("{text}");
            } else {
                println!("{report}");
            }
            if report.is_ok() {
                Ok(())
            } else {
                Err(ExitCode::from(SCRIPT_ERROR))
            }
        }
        DataCommand::Preview {
            dir,
            out,
            n,
            px,
            pred: None,
            ..
        } => {
            pretext::data::preview::preview(&dir, &out, n, px).map_err(failed)?;
            println!("wrote {}", out.display());
            Ok(())
        }
        DataCommand::Preview {
            dir,
            out,
            n,
            px,
            pred: Some(pred),
            labels,
            glob,
            window,
        } => {
            use pretext::data::preview::{PredictionSheet, prediction_sheet};
            let (sheet, scores) = prediction_sheet(&PredictionSheet {
                images: dir,
                pred,
                labels,
                glob,
                window,
                n,
                px,
            })
            .map_err(failed)?;
            for c in &scores {
                let dice: Vec<String> = c
                    .dice
                    .iter()
                    .map(|(l, d)| format!("label {l} dice {d:.3}"))
                    .collect();
                if dice.is_empty() {
                    println!("{}: no truth", c.id);
                } else {
                    println!("{}: {}", c.id, dice.join(", "));
                }
            }
            pretext::Image::from_dynamic(image::DynamicImage::ImageRgb8(sheet))
                .save(&out)
                .map_err(failed)?;
            println!("wrote {}", out.display());
            Ok(())
        }
    }
}

fn bench_preprocess(a: &BenchArgs) -> pretext::Result<()> {
    let started = std::time::Instant::now();
    let (data, shape, what) = match &a.input {
        Some(path) => {
            let v = pretext::Volume::load(path)?;
            let s = v.spatial_shape();
            (v.to_vec()?, s, path.display().to_string())
        }
        None => {
            let cfg = PhantomConfig {
                labelled: 1,
                unlabelled: 0,
                shape: [512, 512, 100],
                ..PhantomConfig::default()
            };
            let p = pancreas::phantom(&cfg, 0)?;
            (p.hu, p.shape, "synthetic CT (seed 0)".to_string())
        }
    };
    println!(
        "input: {what}, {shape:?}, read in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let params = pretext::data::PancreasPreprocess {
        shape: a.target,
        ..Default::default()
    };
    for _ in 0..a.warmup {
        params.apply_raw(&data, shape, None)?;
    }
    let mut times = Vec::new();
    let mut out = None;
    for _ in 0..a.reps.max(1) {
        let t = std::time::Instant::now();
        out = Some(params.apply_raw(&data, shape, None)?);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let out = out.expect("at least one repetition");
    println!(
        "preprocess to {:?}: min {:.3} s, median {:.3} s over {} runs, {} threads \
         (bbox {:?}..{:?})",
        a.target,
        times[0],
        times[times.len() / 2],
        times.len(),
        rayon::current_num_threads(),
        out.bbox.start,
        out.bbox.end
    );
    if let Some(r) = &a.reference {
        let want = pretext::Volume::load(r)?;
        if want.spatial_shape() != a.target {
            return Err(pretext::Error::file(
                r,
                format!(
                    "reference shape {:?} differs from the target {:?}",
                    want.shape(),
                    a.target
                ),
            ));
        }
        let want = want.to_vec()?;
        let d = out
            .image
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            // NaN-propagating (`f32::max` would drop a NaN difference).
            .fold(0f32, |m, d| {
                if m.is_nan() || d.is_nan() {
                    f32::NAN
                } else {
                    m.max(d)
                }
            });
        println!("max |pretext - reference| = {d:.2e}");
    }
    Ok(())
}
