//! From the library's setting names to this CLI's flags. The library's errors name the
//! setting to change ([`Error::Setting`]: `lr`, `steps`, `weights`, `force`, ...) in its own
//! words; the user of the CLI needs the flag that sets it, which [`flag_hint`] gives and
//! `main` appends to the error line.

use softprompt_core::Error;

/// The flag that sets the library setting `name` (a config field), when the CLI has one.
pub fn flag_for(name: &str) -> Option<&'static str> {
    Some(match name {
        "model" => "--model",
        "weights" => "--weights",
        "force" => "--force",
        "init" => "--init",
        "num_virtual_tokens" => "--virtual-tokens",
        "lr" => "--lr",
        "ft_lr" => "--ft-lr",
        "lora_lr" => "--lora-lr",
        "lora_rank" => "--lora-rank",
        "methods" => "--methods",
        "steps" => "--steps",
        "batch_size" => "--batch-size",
        "grad_accum" => "--grad-accum",
        "resume" => "--resume",
        "k" => "--k",
        _ => return None,
    })
}

/// The flag to change for a library error: the flag of the setting it names, or `--model`
/// when fetching the model failed (another model source is the way out).
pub fn flag_hint(err: &Error) -> Option<&'static str> {
    match err {
        Error::Setting { name, .. } => flag_for(name),
        Error::Fetch(_) => Some("--model"),
        _ => None,
    }
}

/// ` (see --flag)` for the first library error in `err`'s chain that has a flag, else empty.
pub fn hint(err: &anyhow::Error) -> String {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().and_then(flag_hint))
        .map_or(String::new(), |f| format!(" (see {f})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag named here exists on some command of the CLI.
    #[test]
    fn every_mapped_flag_exists() {
        let names = [
            "model",
            "weights",
            "force",
            "init",
            "num_virtual_tokens",
            "lr",
            "ft_lr",
            "lora_lr",
            "lora_rank",
            "methods",
            "steps",
            "batch_size",
            "grad_accum",
            "resume",
            "k",
        ];
        let cli = crate::Cli::command();
        let mut longs = Vec::new();
        for sub in cli.get_subcommands() {
            for a in sub.get_arguments() {
                if let Some(l) = a.get_long() {
                    longs.push(format!("--{l}"));
                }
            }
        }
        for n in names {
            let flag = flag_for(n).unwrap();
            assert!(longs.iter().any(|l| l == flag), "{n} -> {flag} is no flag");
        }
        assert_eq!(flag_for("no_such_setting"), None);
    }

    #[test]
    fn hints_come_from_the_error_chain() {
        let e = anyhow::Error::from(Error::setting("lr", "lr must be positive, got 0"))
            .context("training");
        assert_eq!(hint(&e), " (see --lr)");
        let e = anyhow::Error::from(Error::Input("bad text".into()));
        assert_eq!(hint(&e), "");
    }
}
