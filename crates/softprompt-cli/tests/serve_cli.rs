//! `softprompt serve` on the real model, through the real binary and real HTTP: mixed-prompt
//! batches answer exactly as lone requests, streaming equals non-streaming, bad requests get
//! a 4xx and change nothing, the admin API loads and unloads prompts safely, overload gets an
//! immediate 429, a client that leaves stops its generation, SIGTERM drains.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_softprompt"))
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    url: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    start_with(args, &[])
}

fn start_with(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = bin()
        .arg("serve")
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start softprompt serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server did not start");
        if let Some(addr) = line.split("listening on ").nth(1) {
            return Server {
                child,
                url: addr.trim().to_string(),
                stderr: rx,
            };
        }
    }
}

/// `n` prompts `p000..` made by `softprompt init` (vocabulary rows, seeds 0..n).
fn make_prompts(dir: &Path, n: usize, extra: &[&str]) {
    // One prompt: --out is the prompt folder itself.
    let target = if n == 1 {
        dir.join("p000")
    } else {
        dir.to_path_buf()
    };
    let out = bin()
        .args([
            "init",
            "--count",
            &n.to_string(),
            "--virtual-tokens",
            "8",
            "--out",
        ])
        .arg(target)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(300))
        .build()
}

/// POST JSON; (status, body as JSON).
fn post(url: &str, body: &Value) -> (u16, Value) {
    post_with(url, body, None)
}

fn post_with(url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut r = agent().post(url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    match r.send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut r = agent().get(url);
    if let Some(k) = key {
        r = r.set("Authorization", &format!("Bearer {k}"));
    }
    match r.call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn metric(url: &str, name: &str) -> f64 {
    let (_, text) = get(&format!("{url}/metrics"), None);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

fn completion(s: &Server, model: &str, text: &str, extra: Value) -> Value {
    completion_at(&s.url, model, text, extra)
}

fn completion_at(url: &str, model: &str, text: &str, extra: Value) -> Value {
    let mut b = json!({ "model": model, "prompt": text, "max_tokens": 10, "temperature": 0.0 });
    for (k, v) in extra.as_object().into_iter().flatten() {
        b[k] = v.clone();
    }
    let (code, v) = post(&format!("{url}/v1/completions"), &b);
    assert_eq!(code, 200, "{v}");
    v
}

/// Open a streaming completion on a raw socket; returns the reader after the headers.
fn open_stream(url: &str, body: &Value) -> BufReader<std::net::TcpStream> {
    let addr = url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let b = body.to_string();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    )
    .unwrap();
    let mut r = BufReader::new(sock);
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            return r;
        }
    }
}

/// The next SSE `data:` payload (chunked framing lines are skipped).
fn next_data(r: &mut BufReader<std::net::TcpStream>) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            return Some(d.to_string());
        }
    }
}

/// `softprompt generate` of 10 greedy tokens after `text` under `prompt` (plus `extra`
/// flags), as the JSON string a completion's text is.
fn cli_greedy(extra: &[&str], text: &str, prompt: &Path) -> Value {
    let out = bin()
        .args(["generate", "--max-new-tokens", "10"])
        .args(extra)
        .args(["--text", text, "--prompt"])
        .arg(prompt)
        .output()
        .unwrap();
    json!(String::from_utf8(out.stdout)
        .unwrap()
        .strip_suffix('\n')
        .unwrap())
}

/// Every case sent alone, then all at once: the batched answers equal the lone ones token for
/// token, and the requests did share decode steps. Returns the lone answers.
fn alone_equals_together(s: &Server, cases: &[(&str, &str, Value)]) -> Vec<Value> {
    let alone: Vec<Value> = cases
        .iter()
        .map(|(p, t, e)| completion(s, p, t, e.clone()))
        .collect();
    let steps0 = metric(&s.url, "softprompt_decode_steps_total");
    let rows0 = metric(&s.url, "softprompt_decode_rows_total");
    let url = s.url.clone();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let hs: Vec<_> = cases
            .iter()
            .map(|(p, t, e)| sc.spawn(|| completion_at(&url, p, t, e.clone())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mean_batch = (metric(&s.url, "softprompt_decode_rows_total") - rows0)
        / (metric(&s.url, "softprompt_decode_steps_total") - steps0);
    assert!(
        mean_batch > 3.0,
        "requests did not share batches: mean batch {mean_batch}"
    );
    for ((c, a), t) in cases.iter().zip(&alone).zip(&together) {
        assert_eq!(
            a["softprompt"]["token_ids"], t["softprompt"]["token_ids"],
            "{c:?}: batched answer differs from the lone one"
        );
        assert_eq!(a["choices"][0]["text"], t["choices"][0]["text"]);
        assert_eq!(t["model"], c.0);
        assert_eq!(t["usage"]["completion_tokens"], 10);
    }
    alone
}

/// `--weights bf16` is served in exact mode too where the CPU has AMX or AVX512-BF16 (and
/// refused with that reason elsewhere): batched answers equal lone ones token for token.
#[test]
fn bf16_batches_answer_exactly_as_lone_requests() {
    let dir = tempfile::tempdir().unwrap();
    let probe = bin()
        .args([
            "serve",
            "--weights",
            "bf16",
            "--bind",
            "127.0.0.1:0",
            "--prompts",
        ])
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&probe.stderr);
    assert!(!probe.status.success());
    if err.contains("batch-invariant only on CPUs with AMX or AVX512-BF16") {
        eprintln!("skipping bf16_batches_answer_exactly_as_lone_requests: {err}");
        return;
    }
    make_prompts(&dir.path().join("prompts"), 3, &[]);
    let s = start(&[
        "--weights",
        "bf16",
        "--prompts",
        dir.path().join("prompts").to_str().unwrap(),
    ]);
    let mut cases = Vec::new();
    for p in ["p000", "p001", "p002", "base"] {
        for t in ["The capital of France is", "I loved this movie"] {
            cases.push((p, t, json!({})));
        }
    }
    let alone = alone_equals_together(&s, &cases);
    // The answers are the bf16 model's: the CLI's greedy generation on bf16 weights.
    let p001 = dir.path().join("prompts/p001");
    assert_eq!(
        cli_greedy(&["--weights", "bf16"], "I loved this movie", &p001),
        alone[3]["choices"][0]["text"]
    );
}

#[test]
fn mixed_prompt_batches_answer_exactly_as_lone_requests() {
    let dir = tempfile::tempdir().unwrap();
    make_prompts(&dir.path().join("prompts"), 4, &[]);
    // A deep prompt (PEFT prefix tuning) served beside them: its own KV cache, no prefill.
    let deep = dir.path().join("prompts/q-deep");
    let out = bin()
        .args([
            "init",
            "--deep",
            "--virtual-tokens",
            "6",
            "--seed",
            "5",
            "--out",
        ])
        .arg(&deep)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start(&["--prompts", dir.path().join("prompts").to_str().unwrap()]);
    let texts = [
        "The capital of France is",
        "Once upon a time",
        "I loved this movie",
    ];
    let mut cases = Vec::new();
    for p in ["p000", "p001", "p002", "p003", "q-deep", "base"] {
        for (i, t) in texts.iter().enumerate() {
            let extra = if i == 1 {
                json!({ "temperature": 0.9, "top_p": 0.9, "seed": 7 })
            } else {
                json!({})
            };
            cases.push((p, *t, extra));
        }
    }
    let alone = alone_equals_together(&s, &cases);
    // Different prompts do steer the model differently (the prompt is really applied).
    let outs: std::collections::HashSet<String> = alone[..12]
        .iter()
        .step_by(3)
        .map(|v| v["choices"][0]["text"].to_string())
        .collect();
    assert!(outs.len() > 1, "every prompt gave the same text: {outs:?}");
    // Streaming gives the same text, chunk by chunk, then [DONE].
    let mut r = open_stream(
        &s.url,
        &json!({ "model": "p002", "prompt": texts[0], "max_tokens": 10, "temperature": 0.0, "stream": true }),
    );
    let mut text = String::new();
    let mut finish = Value::Null;
    while let Some(d) = next_data(&mut r) {
        if d == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&d).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap());
        finish = v["choices"][0]["finish_reason"].clone();
    }
    assert_eq!(json!(text), alone[6]["choices"][0]["text"]);
    assert_eq!(finish, "length");
    // Each prompt's sha256 is echoed and listed.
    let (_, models) = get(&format!("{}/v1/models", s.url), None);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 6);
    assert_eq!(
        models["data"][1]["softprompt"]["sha256"],
        alone[0]["softprompt"]["sha256"]
    );
    assert_eq!(models["data"][1]["softprompt"]["kind"], "input");
    assert_eq!(models["data"][5]["id"], "q-deep");
    assert_eq!(models["data"][5]["softprompt"]["kind"], "prefix");
    // The deep prompt's greedy answer is the CLI's.
    assert_eq!(
        cli_greedy(&[], texts[0], &deep),
        alone[12]["choices"][0]["text"]
    );
}

#[test]
fn bad_requests_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_prompts(&dir.path().join("prompts"), 1, &[]);
    let s = start(&[
        "--prompts",
        dir.path().join("prompts").to_str().unwrap(),
        "--max-body-bytes",
        "4096",
        "--max-input-tokens",
        "64",
        "--max-output-tokens",
        "32",
    ]);
    let u = format!("{}/v1/completions", s.url);
    let good = json!({ "model": "p000", "prompt": "Hello", "max_tokens": 5, "temperature": 0.0 });
    let before = post(&u, &good).1;
    let with = |k: &str, v: Value| {
        let mut b = good.clone();
        b[k] = v;
        b
    };
    let cases: Vec<(&str, Value, u16)> = vec![
        ("unknown prompt", with("model", json!("nope")), 404),
        (
            "path traversal name",
            with("model", json!("../../etc/passwd")),
            404,
        ),
        ("negative max_tokens", with("max_tokens", json!(-1)), 422),
        ("zero max_tokens", with("max_tokens", json!(0)), 422),
        (
            "huge max_tokens",
            with("max_tokens", json!(1u64 << 40)),
            422,
        ),
        (
            "max_tokens over the flag",
            with("max_tokens", json!(33)),
            422,
        ),
        (
            "negative temperature",
            with("temperature", json!(-0.5)),
            422,
        ),
        ("top_p zero", with("top_p", json!(0.0)), 422),
        ("top_p above one", with("top_p", json!(1.5)), 422),
        ("negative top_k", with("top_k", json!(-3)), 422),
        (
            "token id past the vocabulary",
            with("prompt", json!([1, 2, 49152])),
            422,
        ),
        ("negative token id", with("prompt", json!([1, -2])), 422),
        (
            "two prompts streamed",
            json!({ "model": "p000", "prompt": ["a", "b"], "stream": true }),
            422,
        ),
        ("65 prompts", with("prompt", json!(vec!["a"; 65])), 422),
        ("n = 2", with("n", json!(2)), 422),
        ("logprobs over the limit", with("logprobs", json!(21)), 422),
        ("negative logprobs", with("logprobs", json!(-1)), 422),
        ("logprobs not an integer", with("logprobs", json!("5")), 422),
        (
            "logprobs streamed",
            json!({ "model": "p000", "prompt": "Hello", "logprobs": 1, "stream": true }),
            422,
        ),
        (
            "max_tokens 0 without echo",
            with("max_tokens", json!(0)),
            422,
        ),
        (
            "input over --max-input-tokens",
            with("prompt", json!("word ".repeat(100))),
            422,
        ),
        (
            "empty base prompt",
            json!({ "model": "base", "prompt": "" }),
            422,
        ),
        ("model missing", json!({ "prompt": "x" }), 422),
        (
            "max_tokens not a number",
            with("max_tokens", json!("ten")),
            422,
        ),
        (
            "body over --max-body-bytes",
            with("prompt", json!("x".repeat(5000))),
            413,
        ),
    ];
    for (what, body, code) in &cases {
        let (got, v) = post(&u, body);
        assert_eq!(got, *code, "{what}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    // Not JSON at all.
    let r = agent()
        .post(&u)
        .set("Content-Type", "application/json")
        .send_string("{not json");
    assert!(
        matches!(r, Err(ureq::Error::Status(400, _))),
        "malformed JSON"
    );
    // Nothing changed: the same request still gets the same answer; no 5xx counted.
    assert_eq!(
        post(&u, &good).1["softprompt"]["token_ids"],
        before["softprompt"]["token_ids"]
    );
    assert_eq!(metric(&s.url, "softprompt_errors_total"), 0.0);
    assert_eq!(get(&format!("{}/health", s.url), None).0, 200);
}

#[test]
fn admin_loads_and_unloads_prompts_inside_the_folder_only() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    make_prompts(&prompts, 1, &[]);
    let spare = dir.path().join("spare");
    make_prompts(&spare, 2, &[]);
    let key = "0123456789abcdef-test-key";
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, key).unwrap();
    let s = start(&[
        "--prompts",
        prompts.to_str().unwrap(),
        "--admin-key-file",
        key_file.to_str().unwrap(),
    ]);
    let admin = format!("{}/admin/prompts", s.url);
    // Key checks.
    assert_eq!(get(&admin, None).0, 401);
    assert_eq!(get(&admin, Some("wrong-key-wrong-key")).0, 401);
    assert_eq!(post_with(&admin, &json!({ "name": "p000" }), None).0, 401);
    assert_eq!(get(&admin, Some(key)).0, 200);
    // A prompt copied in at run time loads, answers, and is listed.
    copy_dir(&spare.join("p001"), &prompts.join("late"));
    let (code, v) = post_with(&admin, &json!({ "name": "late" }), Some(key));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["softprompt"]["virtual_tokens"], 8);
    let late = completion(&s, "late", "Hello", json!({}));
    assert_eq!(late["softprompt"]["sha256"], v["softprompt"]["sha256"]);
    // Names that are not plain folder names.
    for bad in [
        "../spare/p000",
        "..",
        ".hidden",
        "a/b",
        "",
        "p000/../../spare",
    ] {
        let (code, v) = post_with(&admin, &json!({ "name": bad }), Some(key));
        assert_eq!(code, 422, "name {bad:?}: {v}");
    }
    // A symlink that leads out of the folder.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(spare.join("p000"), prompts.join("escape")).unwrap();
        let (code, v) = post_with(&admin, &json!({ "name": "escape" }), Some(key));
        assert_eq!(code, 422, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("outside"),
            "{v}"
        );
    }
    // A prompt made for another base model (its fingerprint differs).
    copy_dir(&spare.join("p000"), &prompts.join("other"));
    let meta_path = prompts.join("other/softprompt.json");
    let mut meta: Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["model_fingerprint"] = json!("sha256:0000000000000000");
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let (code, v) = post_with(&admin, &json!({ "name": "other" }), Some(key));
    assert_eq!(code, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fingerprint"),
        "{v}"
    );
    // Missing folder.
    assert_eq!(
        post_with(&admin, &json!({ "name": "absent" }), Some(key)).0,
        404
    );
    // Unload while a request uses the prompt: the request finishes with it (pinned).
    let mut r = open_stream(
        &s.url,
        &json!({ "model": "late", "prompt": "Count: one, two,", "max_tokens": 24, "temperature": 0.0, "stream": true }),
    );
    assert!(next_data(&mut r).is_some());
    let del = agent()
        .delete(&format!("{admin}/late"))
        .set("Authorization", &format!("Bearer {key}"))
        .call()
        .unwrap();
    assert_eq!(del.status(), 200);
    let mut last = Value::Null;
    while let Some(d) = next_data(&mut r) {
        if d == "[DONE]" {
            break;
        }
        last = serde_json::from_str(&d).unwrap();
    }
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 24);
    let (code, _) = post(
        &format!("{}/v1/completions", s.url),
        &json!({ "model": "late", "prompt": "x" }),
    );
    assert_eq!(code, 404);
    let del = agent()
        .delete(&format!("{admin}/late"))
        .set("Authorization", &format!("Bearer {key}"))
        .call();
    assert!(matches!(del, Err(ureq::Error::Status(404, _))));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn overload_gets_immediate_429_and_a_gone_client_stops_its_generation() {
    let s = start(&["--max-concurrent", "1", "--max-output-tokens", "400"]);
    let long = json!({ "model": "base", "prompt": "Tell me a long story.", "max_tokens": 400, "temperature": 0.0, "ignore_eos": true, "stream": true });
    let mut r = open_stream(&s.url, &long);
    assert!(next_data(&mut r).is_some());
    let t = Instant::now();
    let (code, v) = post(
        &format!("{}/v1/completions", s.url),
        &json!({ "model": "base", "prompt": "Hi" }),
    );
    assert_eq!(code, 429, "{v}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "429 took {:?}",
        t.elapsed()
    );
    // The client leaves: its generation stops long before 400 tokens.
    drop(r);
    let t = Instant::now();
    while metric(&s.url, "softprompt_active_sequences") > 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "generation kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&s.url, "softprompt_cancelled_total"), 1.0);
    assert!(metric(&s.url, "softprompt_generated_tokens_total") < 400.0);
    assert!(metric(&s.url, "softprompt_rejected_total") >= 1.0);
    // The slot is free again.
    let t = Instant::now();
    loop {
        let (code, _) = post(
            &format!("{}/v1/completions", s.url),
            &json!({ "model": "base", "prompt": "Hi", "max_tokens": 2 }),
        );
        if code == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "slot not released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let mut s = start(&[]);
    let mut r = open_stream(
        &s.url,
        &json!({ "model": "base", "prompt": "One, two, three,", "max_tokens": 30, "temperature": 0.0, "ignore_eos": true, "stream": true }),
    );
    assert!(next_data(&mut r).is_some());
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut n = 1;
    let mut done = false;
    while let Some(d) = next_data(&mut r) {
        if d == "[DONE]" {
            done = true;
            break;
        }
        n += 1;
    }
    assert!(done, "stream cut after {n} chunks");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "server did not exit");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success());
    let log: Vec<String> = s.stderr.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("draining")), "{log:?}");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
}

/// `softprompt score --json` on `text` (with `prompt`, or the base model): (ids, logprobs).
fn cli_score(text: &str, prompt: Option<&Path>) -> (Value, Value) {
    let mut c = bin();
    c.args(["score", "--json", "--text", text]);
    if let Some(p) = prompt {
        c.arg("--prompt").arg(p);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["ids"].clone(), v["logprobs"].clone())
}

#[test]
fn echo_and_logprobs_equal_score_bit_for_bit_and_batch_as_single_requests() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    make_prompts(&prompts, 1, &[]);
    let s = start(&["--prompts", prompts.to_str().unwrap()]);
    let u = format!("{}/v1/completions", s.url);
    let texts = [
        "Review: a warm, funny film\nSentiment: positive",
        "Once upon a time",
    ];
    let score = |model: &str, prompt: Value, extra: Value| {
        let mut b = json!({ "model": model, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 3 });
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        let (code, v) = post(&u, &b);
        assert_eq!(code, 200, "{v}");
        v
    };
    for (model, dirp) in [("p000", Some(prompts.join("p000"))), ("base", None)] {
        let batch = score(model, json!(texts), json!({}));
        assert_eq!(batch["choices"].as_array().unwrap().len(), 2);
        for (i, text) in texts.iter().enumerate() {
            let (ids, cli) = cli_score(text, dirp.as_deref());
            let one = score(model, json!(text), json!({}));
            let c = &one["choices"][0];
            assert_eq!(c["text"], json!(text));
            let lp = c["logprobs"]["token_logprobs"].as_array().unwrap();
            assert_eq!(lp.len(), ids.as_array().unwrap().len());
            // Without a soft prompt the first token has no predictor (null, as OpenAI).
            let scored: Vec<Value> = if dirp.is_none() {
                assert!(lp[0].is_null());
                lp[1..].to_vec()
            } else {
                lp.to_vec()
            };
            assert_eq!(
                Value::from(scored),
                cli,
                "{model} {text:?}: server != score --json"
            );
            // The batch's choice i is the lone request's answer.
            assert_eq!(batch["choices"][i]["index"], json!(i));
            assert_eq!(batch["choices"][i]["logprobs"], c["logprobs"]);
            // Top-k: 3 alternatives, sorted, and the token's own log-prob is at most the best.
            for (j, top) in c["logprobs"]["top_logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .enumerate()
            {
                if top.is_null() {
                    continue;
                }
                let best = top
                    .as_object()
                    .unwrap()
                    .values()
                    .map(|v| v.as_f64().unwrap())
                    .fold(f64::MIN, f64::max);
                assert!(
                    top.as_object().unwrap().len() <= 3 && !top.as_object().unwrap().is_empty()
                );
                assert!(lp[j].as_f64().unwrap() <= best + 1e-12);
            }
            assert_eq!(c["logprobs"]["text_offset"][0], json!(0));
        }
    }
    // Greedy generation with logprobs: each generated token is the top entry, with its log-prob.
    let g = completion(
        &s,
        "p000",
        "The capital of France is",
        json!({ "logprobs": 2, "max_tokens": 4 }),
    );
    let lpg = &g["choices"][0]["logprobs"];
    let toks = lpg["tokens"].as_array().unwrap();
    assert_eq!(
        toks.len(),
        g["softprompt"]["token_ids"]
            .as_array()
            .map_or(4, Vec::len)
            .max(1)
            .min(4)
    );
    for (j, t) in toks.iter().enumerate() {
        let top = lpg["top_logprobs"][j].as_object().unwrap();
        let (best_tok, best_lp) = top
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap();
        assert_eq!(best_tok, t.as_str().unwrap());
        assert_eq!(best_lp, &lpg["token_logprobs"][j]);
    }
    // lm_eval's request: echo, max_tokens 1, logprobs 1: prompt tokens + one generated.
    let h = score(
        "p000",
        json!([texts[1]]),
        json!({ "max_tokens": 1, "logprobs": 1 }),
    );
    let n = cli_score(texts[1], Some(&prompts.join("p000")))
        .0
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        h["choices"][0]["logprobs"]["token_logprobs"]
            .as_array()
            .unwrap()
            .len(),
        n + 1
    );
}

#[test]
fn classify_uses_the_prompts_task_and_matches_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts");
    make_prompts(&prompts, 2, &["--task", "demo"]);
    let s = start(&["--prompts", prompts.to_str().unwrap()]);
    let text = "a warm, funny and moving film";
    let (code, v) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": "p000", "input": text }),
    );
    assert_eq!(code, 200, "{v}");
    let out = bin()
        .args(["classify", "--json", "--text", text, "--prompt"])
        .arg(prompts.join("p000"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["label"], cli["label"]);
    for (l, p) in cli["probabilities"].as_object().unwrap() {
        let d = (p.as_f64().unwrap() - v["probabilities"][l].as_f64().unwrap()).abs();
        assert!(d < 1e-4, "{l}: server vs CLI probability differ by {d}");
    }
    // The base model has no task of its own: it needs one named.
    let (code, _) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": "base", "input": text }),
    );
    assert_eq!(code, 422);
    let (code, v) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": "base", "input": text, "task": "demo" }),
    );
    assert_eq!(code, 200, "{v}");

    // An ensemble: the mean of its prompts' probabilities, as the CLI's `--prompt A --prompt B`.
    let probs = |v: &Value| -> Vec<f64> {
        let m = v["probabilities"].as_object().unwrap();
        m.values().map(|p| p.as_f64().unwrap()).collect()
    };
    let one = |name: &str| {
        let (code, v) = post(
            &format!("{}/v1/classify", s.url),
            &json!({ "model": name, "input": text }),
        );
        assert_eq!(code, 200, "{v}");
        probs(&v)
    };
    let (pa, pb) = (one("p000"), one("p001"));
    let (code, v) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": ["p000", "p001"], "input": text }),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["softprompt"].as_array().map(Vec::len), Some(2), "{v}");
    for ((x, y), e) in pa.iter().zip(&pb).zip(probs(&v)) {
        assert!((e - (x + y) / 2.0).abs() < 1e-12, "{v}");
    }
    let out = bin()
        .args(["classify", "--json", "--text", text, "--prompt"])
        .arg(prompts.join("p000"))
        .arg("--prompt")
        .arg(prompts.join("p001"))
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (x, y) in probs(&cli).iter().zip(probs(&v)) {
        assert!((x - y).abs() < 1e-4, "CLI {cli} vs server {v}");
    }
    // Prompts of different tasks (the base model has none) are refused by name.
    let (code, v) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": ["p000", "base"], "input": text }),
    );
    assert_eq!(code, 422, "{v}");
    assert!(v.to_string().contains("different tasks"), "{v}");
    let _: PathBuf = prompts;
}

#[test]
fn chat_completions_render_the_models_template() {
    let s = start(&[]);
    let q = "What is the capital of France?";
    let (code, chat) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({ "model": "base", "messages": [{ "role": "user", "content": q }], "max_tokens": 12, "temperature": 0.0 }),
    );
    assert_eq!(code, 200, "{chat}");
    assert_eq!(chat["object"], "chat.completion");
    let answer = chat["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{chat}");
    // SmolLM2's template, written out: the same ids, the same answer.
    let rendered = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    );
    let plain = completion(&s, "base", &rendered, json!({ "max_tokens": 12 }));
    assert_eq!(
        plain["usage"]["prompt_tokens"],
        chat["usage"]["prompt_tokens"]
    );
    assert_eq!(
        plain["softprompt"]["token_ids"],
        chat["softprompt"]["token_ids"]
    );
    // Bad messages are the client's fault.
    let (code, _) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({ "model": "base", "messages": [] }),
    );
    assert_eq!(code, 422);
    let (code, _) = post(
        &format!("{}/v1/chat/completions", s.url),
        &json!({ "model": "base", "messages": [{ "role": 3, "content": "x" }] }),
    );
    assert_eq!(code, 422);
}

#[test]
fn timeout_and_oversized_headers_are_refused_cleanly() {
    let s = start(&["--timeout-s", "1", "--max-output-tokens", "500"]);
    let t = Instant::now();
    let (code, v) = post(
        &format!("{}/v1/completions", s.url),
        &json!({ "model": "base", "prompt": "Tell me a story.", "max_tokens": 500, "ignore_eos": true }),
    );
    assert_eq!(code, 504, "{v}");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The timed-out generation stops.
    let t = Instant::now();
    while metric(&s.url, "softprompt_active_sequences") > 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed-out generation kept running"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&s.url, "softprompt_timeouts_total"), 1.0);
    // A 1 MiB header: a 4xx status line, and the server stays up.
    let addr = s.url.trim_start_matches("http://");
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    let big = "a".repeat(1 << 20);
    let _ = write!(
        sock,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Big: {big}\r\n\r\n"
    );
    let mut resp = String::new();
    let _ = BufReader::new(sock).read_line(&mut resp);
    let code: u16 = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!((400..500).contains(&code), "status line {resp:?}");
    assert_eq!(get(&format!("{}/health", s.url), None).0, 200);
}

/// `key=value` fields of a log line (values unquoted).
fn fields(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The buckets (upper bound, cumulative count), sum and count of a histogram in /metrics.
fn histogram(text: &str, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (f64::NAN, f64::NAN);
    for l in text.lines() {
        let Some((key, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = v.parse().unwrap_or(f64::NAN);
        if let Some(le) = key
            .strip_prefix(&format!("{name}_bucket{{le=\""))
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            buckets.push((le, v));
        } else if key == format!("{name}_sum") {
            sum = v;
        } else if key == format!("{name}_count") {
            count = v;
        }
    }
    (buckets, sum, count)
}

#[test]
fn access_log_lines_and_latency_histograms() {
    let s = start_with(&[], &[("RUST_LOG", "debug")]);
    let u = format!("{}/v1/completions", s.url);
    // 3 answers of 5 tokens, 1 stream of 4, 1 unknown prompt, 1 classification.
    let mut usage = Vec::new();
    for text in ["One, two,", "The sky is", "Hello"] {
        let v = completion(
            &s,
            "base",
            text,
            json!({ "max_tokens": 5, "ignore_eos": true }),
        );
        usage.push(v["usage"].clone());
    }
    let mut r = open_stream(
        &s.url,
        &json!({ "model": "base", "prompt": "Once upon a time", "max_tokens": 4, "ignore_eos": true, "stream": true }),
    );
    while next_data(&mut r).is_some_and(|d| d != "[DONE]") {}
    drop(r);
    assert_eq!(post(&u, &json!({ "model": "nope", "prompt": "x" })).0, 404);
    let (code, _) = post(
        &format!("{}/v1/classify", s.url),
        &json!({ "model": "base", "input": "a fine film", "task": "demo" }),
    );
    assert_eq!(code, 200);

    // /metrics: the stream's latency is observed when its body ends, just after [DONE].
    let t = Instant::now();
    let text = loop {
        let (_, text) = get(&format!("{}/metrics", s.url), None);
        let (_, _, n) = histogram(&text, "softprompt_request_latency_seconds");
        if n >= 6.0 || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (name, count) in [
        ("softprompt_time_to_first_token_seconds", 4.0),
        ("softprompt_inter_token_latency_seconds", 3.0 * 4.0 + 3.0),
        ("softprompt_request_latency_seconds", 6.0),
    ] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
        let (buckets, sum, n) = histogram(&text, name);
        assert_eq!(n, count, "{name} count:\n{text}");
        assert!(buckets.len() > 5, "{name}: {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}: buckets not cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)), "{name}");
        assert!(sum > 0.0 && sum.is_finite(), "{name} sum {sum}");
    }
    // A generation's time to first token is at most its whole latency.
    let (_, ttft, _) = histogram(&text, "softprompt_time_to_first_token_seconds");
    let (_, total, _) = histogram(&text, "softprompt_request_latency_seconds");
    assert!(ttft < total, "ttft sum {ttft} >= latency sum {total}");

    // One access line per request, in order, with the request's numbers.
    let t = Instant::now();
    let mut lines = Vec::new();
    while lines.len() < 6 && t.elapsed() < Duration::from_secs(10) {
        if let Ok(l) = s.stderr.recv_timeout(Duration::from_millis(100)) {
            if l.contains("softprompt_serve::access") {
                lines.push(fields(&l));
            }
        }
    }
    assert!(lines.len() >= 6, "{lines:?}");
    for (l, u) in lines.iter().zip(&usage) {
        assert_eq!(l["method"], "POST");
        assert_eq!(l["path"], "/v1/completions");
        assert_eq!(l["status"], "200");
        assert_eq!(l["prompt"], "base");
        assert_eq!(l["input_tokens"], u["prompt_tokens"].to_string());
        assert_eq!(l["output_tokens"], "5");
        assert!(l["latency_ms"].parse::<f64>().unwrap() > 0.0, "{l:?}");
    }
    // The stream's line is written when its body ends: it may follow the next request's.
    let find = |f: &dyn Fn(&std::collections::HashMap<String, String>) -> bool| {
        lines[3..6]
            .iter()
            .find(|l| f(l))
            .unwrap_or_else(|| panic!("{lines:?}"))
            .clone()
    };
    let stream = find(&|l| l["status"] == "200" && l["path"] == "/v1/completions");
    assert_eq!(stream["output_tokens"], "4", "{stream:?}");
    let missing = find(&|l| l["status"] == "404");
    assert_eq!(missing["prompt"], "-");
    let classify = find(&|l| l["path"] == "/v1/classify");
    assert_eq!(classify["status"], "200");
    assert_eq!(classify["output_tokens"], "0");
    assert!(classify["input_tokens"].parse::<u32>().unwrap() > 3);
}
