//! `softprompt loadtest`: N clients over M prompts against a running server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use softprompt_serve::loadtest::{self, LoadConfig};

#[derive(Args)]
pub struct LoadtestArgs {
    /// Server root.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients, each sending one request after another.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 120)]
    duration_s: u64,
    /// Stop after this many requests (0 = until the duration ends).
    #[arg(long, default_value_t = 0)]
    max_requests: usize,
    /// Comma-separated prompt names, or "all" (every prompt the server lists, base excluded).
    #[arg(long, default_value = "all")]
    prompts: String,
    /// Use only the first N of those prompts.
    #[arg(long)]
    limit_prompts: Option<usize>,
    /// Inputs, one per line (default: 8 built-in English texts).
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Only greedy requests (default: half of them sample with a fixed seed).
    #[arg(long)]
    greedy_only: bool,
    /// Skip replaying each distinct request alone to compare answers.
    #[arg(long)]
    no_check: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: LoadtestArgs) -> Result<()> {
    let url = a.url.trim_end_matches('/').to_string();
    let mut prompts: Vec<String> = if a.prompts == "all" {
        let v: serde_json::Value = ureq::get(&format!("{url}/v1/models"))
            .call()
            .with_context(|| format!("{url}/v1/models"))?
            .into_json()?;
        let base = v["data"][0]["id"].as_str().unwrap_or("base").to_string();
        v["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|m| m["id"].as_str().map(String::from))
                    .filter(|n| *n != base || d.len() == 1)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        a.prompts.split(',').map(|s| s.trim().to_string()).collect()
    };
    if let Some(n) = a.limit_prompts {
        prompts.truncate(n);
    }
    let inputs = match &a.inputs {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect(),
        None => loadtest::default_inputs(),
    };
    let cfg = LoadConfig {
        url,
        clients: a.clients,
        duration: Duration::from_secs(a.duration_s),
        max_requests: a.max_requests,
        prompts,
        inputs,
        max_tokens: a.max_tokens,
        mix_sampling: !a.greedy_only,
        check: !a.no_check,
    };
    eprintln!(
        "loadtest: {} clients, {} prompts, {} inputs, up to {} s",
        cfg.clients,
        cfg.prompts.len(),
        cfg.inputs.len(),
        a.duration_s
    );
    let rep = loadtest::run(&cfg, |m| eprintln!("loadtest: {m}")).map_err(anyhow::Error::msg)?;
    if a.json {
        let mut v = rep.to_json();
        v["clients"] = cfg.clients.into();
        v["prompts"] = cfg.prompts.len().into();
        println!("{v}");
    } else {
        println!("{}", rep.table());
        for e in &rep.error_samples {
            println!("error: {e}");
        }
    }
    anyhow::ensure!(
        rep.errors == 0 && rep.mismatches == 0,
        "{} errors, {} mismatches",
        rep.errors,
        rep.mismatches
    );
    Ok(())
}
