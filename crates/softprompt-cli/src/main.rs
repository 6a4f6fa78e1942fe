//! `softprompt`: train, evaluate, inspect and use soft prompts on a frozen model.
//! A thin layer over softprompt-core: this file parses the command line, starts the logger,
//! runs one command (`cmd/`) and maps its result to the exit code: 0, 1 with one `error:`
//! line, or 130 for a run stopped by Ctrl-C after its checkpoint.

mod cmd;
mod flags;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::common::Interrupted;

#[derive(Parser)]
#[command(
    name = "softprompt",
    version,
    about = "Prompt tuning on a frozen language model: train, evaluate, inspect and serve soft prompts",
    after_help = "Logs: RUST_LOG (e.g. RUST_LOG=debug) sets the level of the library's and the server's log lines on stderr."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Log-probability of every token of a text, given the soft prompt.
    Score(cmd::score::ScoreArgs),
    /// Continue a text with the soft prompt prepended (KV cache; the prompt enters once).
    Generate(cmd::generate::GenerateArgs),
    /// Train a soft prompt on a task (default: the built-in `demo` sentiment task).
    Train(Box<cmd::train::TrainArgs>),
    /// Distill a long hard prompt into a few virtual tokens, without labels (the model with
    /// the hard prompt teaches the model with a soft prompt).
    Distill(Box<cmd::distill::DistillArgs>),
    /// Evaluate a soft prompt (or the bare template with --no-prompt) on a labelled file.
    Eval(cmd::eval::EvalArgs),
    /// Classify one input with a trained prompt (its task's template and label words).
    Classify(cmd::classify::ClassifyArgs),
    /// Open the black box: each virtual token's nearest vocabulary tokens, norm and drift from
    /// its init, and the hard projection (nearest tokens) evaluated next to the soft prompt.
    Inspect(Box<cmd::inspect::InspectArgs>),
    /// Serve many soft prompts from one frozen model over HTTP (OpenAI-compatible
    /// /v1/completions, /v1/chat/completions, /v1/classify, /v1/models, admin API, /metrics).
    Serve(Box<cmd::serve::ServeArgs>),
    /// Load-test a running server: N clients over M prompts, latency and throughput, and a
    /// check of every answer against the same request sent alone.
    Loadtest(cmd::loadtest::LoadtestArgs),
    /// Hard prompt vs prompt tuning vs LoRA vs full fine-tuning on one task, measured: trainable
    /// parameters, artifact size, training time, peak memory, accuracy, inference cost and
    /// forgetting (compare.md, compare.png, compare.json).
    Compare(Box<cmd::compare::CompareArgs>),
    /// Prompt transfer (SPoT): rank trained prompts by their similarity to a briefly trained
    /// prompt of the target task, then train the target from the top-ranked one and check it
    /// against the usual init.
    Transfer(Box<cmd::transfer::TransferArgs>),
    /// Write a soft prompt without training (vocabulary rows, a text, random, label words).
    Init(Box<cmd::init::InitArgs>),
    /// Speed and memory benchmarks (median of several runs): W1 training step, decode, classification.
    Bench(cmd::bench::BenchArgs),
    /// Write a model (e.g. a GGUF) as a Hugging Face folder: config.json, f32 safetensors,
    /// tokenizer.json, for PyTorch/transformers or any other tool.
    Export(cmd::export::ExportArgs),
    /// Describe a model and/or a soft prompt: architecture, sizes, dtype, fingerprints.
    Info(cmd::info::InfoArgs),
}

fn run(c: Cmd) -> anyhow::Result<()> {
    match c {
        Cmd::Score(a) => cmd::score::run(a),
        Cmd::Generate(a) => cmd::generate::run(a),
        Cmd::Train(a) => cmd::train::run(*a),
        Cmd::Distill(a) => cmd::distill::run(*a),
        Cmd::Eval(a) => cmd::eval::run(a),
        Cmd::Classify(a) => cmd::classify::run(a),
        Cmd::Inspect(a) => cmd::inspect::run(*a),
        Cmd::Serve(a) => cmd::serve::run(*a),
        Cmd::Loadtest(a) => cmd::loadtest::run(a),
        Cmd::Compare(a) => cmd::compare::run(*a),
        Cmd::Transfer(a) => cmd::transfer::run(*a),
        Cmd::Init(a) => cmd::init::run(*a),
        Cmd::Bench(a) => cmd::bench::run(a),
        Cmd::Export(a) => cmd::export::run(a),
        Cmd::Info(a) => cmd::info::run(a),
    }
}

/// Log lines on stderr, filtered by `RUST_LOG` (default: info for our crates, warnings for
/// the others). The server's lines carry a timestamp; the other commands' do not (their
/// friendly output is printed, not logged).
fn init_logging(timestamps: bool) {
    use tracing_subscriber::EnvFilter;
    const DEFAULT: &str = "warn,softprompt=info,softprompt_core=info,softprompt_serve=info";
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT), Some(format!("RUST_LOG={v}: {e}"))),
        },
        _ => (EnvFilter::new(DEFAULT), None),
    };
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if timestamps {
        fmt.init();
    } else {
        fmt.without_time().init();
    }
    if let Some(b) = bad {
        tracing::warn!("ignoring {b}");
    }
}

/// Keep freed buffers in the heap instead of returning them to the OS: every layer allocates
/// activation buffers of a few MB, and glibc's defaults (mmap above 128 KiB-32 MiB, trim
/// above 128 KiB) made each step re-fault fresh zeroed pages. The trim threshold (1 GiB) is
/// above a training step's tape (~800 MB for W1), so the tape freed at the end of a step is
/// reused by the next one rather than returned and faulted in again.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(matches!(cli.cmd, Cmd::Serve(_)));
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        // The command has said where it stopped and how to continue.
        Err(e) if e.is::<Interrupted>() => ExitCode::from(130),
        Err(e) => {
            // One line: the outermost context and the root cause.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}{}", chain.join(": "), flags::hint(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    /// Every flag of every command says what it does.
    #[test]
    fn every_flag_has_help() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let mut missing = Vec::new();
        let mut n = 0;
        for sub in cli.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            for arg in sub.get_arguments() {
                if ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                n += 1;
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(n > 150, "only {n} flags found");
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    /// Flags with a fixed set of values list them (in `--help` and in the error for a bad one).
    #[test]
    fn choice_flags_list_their_values() {
        let cli = Cli::command();
        let values = |cmd: &str, flag: &str| -> Vec<String> {
            let sub = cli.find_subcommand(cmd).unwrap_or_else(|| panic!("{cmd}"));
            let arg = sub
                .get_arguments()
                .find(|a| a.get_id() == flag)
                .unwrap_or_else(|| panic!("{cmd} --{flag}"));
            arg.get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect()
        };
        assert_eq!(values("train", "optimizer"), ["adamw", "adafactor"]);
        assert_eq!(
            values("train", "schedule"),
            ["constant", "linear", "cosine"]
        );
        assert_eq!(
            values("compare", "schedule"),
            ["constant", "linear", "cosine"]
        );
        for cmd in ["train", "score", "serve", "bench", "init"] {
            assert_eq!(
                values(cmd, "weights"),
                ["f32", "quantized", "bf16"],
                "{cmd}"
            );
        }
        assert_eq!(
            values("bench", "only"),
            ["train", "decode", "classify", "serve", "decode8", "peak"]
        );
        let help = cli
            .clone()
            .find_subcommand_mut("train")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        for needle in [
            "adafactor",
            "cosine",
            "random[:R]",
            "vocab[:N]",
            "text:T",
            "file:DIR",
        ] {
            assert!(
                help.contains(needle),
                "train --help lacks {needle}:\n{help}"
            );
        }
        let err = Cli::try_parse_from(["softprompt", "train", "--optimizer", "sgd"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("adamw") && err.contains("adafactor"), "{err}");
    }

    #[test]
    fn init_forms_are_checked_when_parsing() {
        let parse = |init: &str| {
            Cli::try_parse_from(["softprompt", "init", "--out", "x", "--init", init])
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for good in [
            "random",
            "random:0.1",
            "vocab",
            "vocab:100",
            "text:Hello",
            "labels",
            "file:dir",
        ] {
            assert!(parse(good).is_ok(), "{good}: {:?}", parse(good));
        }
        for bad in ["bogus", "random:x", "vocab:-3", "text:", "file"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("--init"), "{bad}: {e}");
            assert!(e.contains(bad), "{bad}: {e}");
        }
        let e = parse("bogus").unwrap_err();
        for form in ["random[:R]", "vocab[:N]", "text:T", "labels", "file:DIR"] {
            assert!(e.contains(form), "{e}");
        }
        assert!(Cli::try_parse_from(["softprompt", "train", "--init", "nope"]).is_err());
    }
}
