//! The playground at `/` driven in headless Chromium through W3C WebDriver (chromedriver),
//! against the real binary and model: a wrong key shows a readable error; with the key, upload
//! a small labelled file for the demo task, preview it, train a few steps while the chart
//! updates, find the new prompt in Try and classify with it (the bars equal `/v1/classify`),
//! look inside it, download its adapter zip and load that with `SoftPrompt::load`.
//!
//! Skipped (one line) without /usr/bin/chromium and /usr/bin/chromedriver (Debian's
//! `chromium`, `chromium-driver`). With `SOFTPROMPT_SCREENSHOTS=DIR` it saves
//! `DIR/playground-{try,train,inspect}.png`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use softprompt_core::prompt::SoftPrompt;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const KEY: &str = "playground-test-key-0123456789";
/// The W3C element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(prompts: &Path, extra: &[&str]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_softprompt"))
        .args(["serve", "--bind", "127.0.0.1:0", "--prompts"])
        .arg(prompts)
        .args(extra)
        .env("SOFTPROMPT_ADMIN_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start softprompt serve");
    let err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let proc = Proc(child);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("server did not start");
        if let Some(addr) = line.split("listening on ").nth(1) {
            let url = addr.trim().to_string();
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (proc, url);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A WebDriver session over plain HTTP (ureq).
struct Driver {
    base: String,
    agent: ureq::Agent,
    /// The session, deleted when dropped (that closes Chromium, also when a test fails).
    sid: std::cell::RefCell<Option<String>>,
    _proc: Proc,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(sid) = self.sid.borrow_mut().take() {
            let _ = self
                .agent
                .delete(&format!("{}/session/{sid}", self.base))
                .call();
        }
    }
}

impl Driver {
    fn start(download_dir: &Path, profile: &Path) -> (Driver, String) {
        let port = free_port();
        let proc = Proc(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build();
        let base = format!("http://127.0.0.1:{port}");
        let d = Driver {
            base,
            agent,
            sid: std::cell::RefCell::new(None),
            _proc: proc,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.agent.get(&format!("{}/status", d.base)).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1100",
                    format!("--user-data-dir={}", profile.display())],
                "prefs": {
                    "download.default_directory": download_dir.to_string_lossy(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let v = d.call("POST", "/session", Some(caps));
        let sid = v["sessionId"].as_str().expect("session id").to_string();
        *d.sid.borrow_mut() = Some(sid.clone());
        (d, sid)
    }

    /// One command; its `value`. A WebDriver error fails the test with its message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match r {
            Ok(resp) => resp.into_json::<Value>().expect("webdriver json")["value"].take(),
            Err(ureq::Error::Status(code, resp)) => {
                let mut s = String::new();
                let _ = resp.into_reader().take(4000).read_to_string(&mut s);
                panic!("webdriver {method} {path}: {code} {s}")
            }
            Err(e) => panic!("webdriver {method} {path}: {e}"),
        }
    }
}

/// The page, through one session.
struct Page<'a> {
    d: &'a Driver,
    s: String,
}

impl Page<'_> {
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.d
            .call(method, &format!("/session/{}{path}", self.s), body)
    }
    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        match v[ELEMENT].as_str() {
            Some(id) => id.to_string(),
            None => panic!("no element {css}: {v}"),
        }
    }
    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd("POST", &format!("/element/{e}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }
    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }
    /// Poll `script` until it returns something truthy; that value.
    fn wait(&self, what: &str, secs: u64, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == json!(false) || v == json!(0) || v == json!("")) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    fn screenshot(&self, dir: &Option<PathBuf>, name: &str) {
        let Some(dir) = dir else { return };
        let b64 = self.cmd("GET", "/screenshot", None);
        let png = base64_decode(b64.as_str().expect("screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::create_dir_all(dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("playground-{name}.png")), png).expect("screenshot");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("bad base64 byte {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| val(c) as u32).collect();
        let n = v.iter().fold(0u32, |a, &x| (a << 6) | x) << (6 * (4 - v.len()));
        let take = v.len() * 6 / 8;
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    out
}

/// 40 labelled reviews in the demo task's columns (`sentence`, `label`).
fn labelled_csv(path: &Path) {
    let pos = ["wonderful", "brilliant", "moving", "delightful", "superb"];
    let neg = ["dull", "boring", "awful", "tedious", "clumsy"];
    let mut s = String::from("sentence,label\n");
    for i in 0..40 {
        if i % 2 == 1 {
            s += &format!("\"A {} film, I loved every minute.\",1\n", pos[i % 5]);
        } else {
            s += &format!("\"A {} film, I wanted my money back.\",0\n", neg[i % 5]);
        }
    }
    std::fs::write(path, s).expect("write csv");
}

#[test]
fn playground_trains_serves_and_downloads_a_prompt_in_a_real_browser() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        println!("skipping: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        return;
    }
    let shots = std::env::var_os("SOFTPROMPT_SCREENSHOTS").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let prompts = tmp.path().join("prompts");
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir_all(&prompts).expect("prompts dir");
    std::fs::create_dir_all(&downloads).expect("downloads dir");
    let csv = tmp.path().join("reviews.csv");
    labelled_csv(&csv);

    let (_server, url) = start_server(&prompts, &[]);
    let (driver, sid) = Driver::start(&downloads, &tmp.path().join("profile"));
    let p = Page { d: &driver, s: sid };
    p.cmd("POST", "/url", Some(json!({ "url": format!("{url}/") })));
    p.wait(
        "the page to load the model list",
        30,
        "return document.getElementById('try-model-0').options.length > 1",
    );

    // Train tab: the file and settings; without the key the server's 401 shows in the page.
    p.click("#tab-train");
    p.type_into("#train-name", "pg_demo");
    let e = p.find("#train-file");
    p.cmd(
        "POST",
        &format!("/element/{e}/value"),
        Some(json!({ "text": csv.to_string_lossy() })),
    );
    p.type_into("#train-steps", "6");
    p.type_into("#train-vt", "8");
    p.click("#train-start");
    let msg = p.wait(
        "the error of a start without the key",
        20,
        "const m = document.getElementById('train-msg'); return !m.hidden && m.textContent",
    );
    assert!(
        msg.as_str().unwrap_or("").contains("401")
            && msg.as_str().unwrap_or("").contains("admin key"),
        "readable error, got {msg}"
    );

    // The key, entered once; then preview and train.
    p.type_into("#admin-key", KEY);
    p.click("#key-save");
    p.click("#preview-btn");
    let rows = p.wait(
        "the preview table",
        30,
        "return document.querySelectorAll('#preview-table tr.preview-row').length",
    );
    assert_eq!(rows, json!(5), "the first five rows are previewed");
    let first = p.js("return document.querySelector('#preview-table tr.preview-row').textContent");
    assert!(
        first.as_str().unwrap_or("").contains("Review: A dull film"),
        "rendered with the demo template: {first}"
    );
    p.click("#train-start");
    // The chart updates while the job runs: several different point counts are seen.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = std::collections::BTreeSet::new();
    let status = loop {
        let v = p.js(
            "const c = document.getElementById('chart'); return [document.getElementById('job-status').textContent, Number(c.dataset.lossPoints), Number(c.dataset.valPoints)]",
        );
        seen.insert(v[1].as_u64().unwrap_or(0));
        let st = v[0].as_str().unwrap_or("").to_string();
        if !matches!(st.as_str(), "queued" | "running" | "none") {
            break (st, v);
        }
        assert!(Instant::now() < deadline, "training did not end in 600 s");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(status.0, "done", "job ended: {:?}", status.1);
    assert_eq!(status.1[1], json!(6), "six loss points drawn");
    assert!(
        status.1[2].as_u64().unwrap_or(0) >= 1,
        "validation points drawn"
    );
    assert!(
        seen.iter().filter(|&&n| n > 0 && n < 6).count() >= 1,
        "the chart was drawn during training, not only at the end: {seen:?}"
    );
    assert!(prompts.join("pg_demo/adapter_model.safetensors").exists());
    p.screenshot(&shots, "train");

    // Try: the new prompt is offered; classify with it beside the bare model.
    p.click("#tab-try");
    p.wait(
        "pg_demo in the Try columns",
        30,
        "return [...document.getElementById('try-model-0').options].some(o => o.value === 'pg_demo')",
    );
    p.click("#try-model-0 option[value='pg_demo']");
    let input = "A superb film, I loved every minute.";
    p.type_into("#try-input", input);
    p.click("#try-send");
    p.wait(
        "both columns to finish",
        120,
        "return document.getElementById('try-out-0').dataset.done && document.getElementById('try-out-1').dataset.done",
    );
    let bars = p.js(
        "return [...document.querySelectorAll('#try-out-0 .bar')].map(b => [b.dataset.label, Number(b.dataset.p)])",
    );
    let bars = bars.as_array().expect("bars").clone();
    assert_eq!(bars.len(), 2, "two class bars: {bars:?}");
    let direct: Value = ureq::post(&format!("{url}/v1/classify"))
        .send_json(json!({ "model": "pg_demo", "input": input }))
        .expect("classify")
        .into_json()
        .expect("json");
    for b in &bars {
        let label = b[0].as_str().expect("label");
        let want = direct["probabilities"][label]
            .as_f64()
            .expect("probability");
        assert!(
            (b[1].as_f64().unwrap_or(-1.0) - want).abs() < 1e-9,
            "bar {label} equals /v1/classify"
        );
    }
    let gen = p.js("return document.querySelector('#try-out-1 .out').textContent");
    assert!(
        !gen.as_str().unwrap_or("").is_empty(),
        "the bare model's column streamed text"
    );
    p.screenshot(&shots, "try");

    // Look inside: the inspect table and heatmap, then the zip download.
    p.click("#tab-inspect");
    p.click("#inspect-prompt option[value='pg_demo']");
    p.click("#inspect-btn");
    let n = p.wait(
        "the inspect table",
        60,
        "return document.querySelectorAll('#inspect-table tr.vector-row').length",
    );
    assert_eq!(n, json!(8), "one row per virtual token");
    assert_eq!(
        p.js("return !!document.getElementById('heatmap')"),
        json!(true)
    );
    p.screenshot(&shots, "inspect");
    p.click("#inspect-download");
    let zip_path = downloads.join("pg_demo.zip");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !zip_path.exists() {
        assert!(
            Instant::now() < deadline,
            "the zip was not downloaded to {}",
            downloads.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(300));

    let out = tmp.path().join("unzipped");
    let file = std::fs::File::open(&zip_path).expect("zip");
    zip::ZipArchive::new(file)
        .expect("a zip archive")
        .extract(&out)
        .expect("extract");
    let got = SoftPrompt::load(&out.join("pg_demo")).expect("SoftPrompt::load the download");
    let served = SoftPrompt::load(&prompts.join("pg_demo")).expect("the installed prompt");
    assert_eq!(got.num_virtual_tokens(), 8);
    assert_eq!(
        got.embeddings, served.embeddings,
        "the download is the served prompt"
    );
}

fn api(url: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut req = ureq::post(url);
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    match req.send_json(body.clone()) {
        Ok(r) => (r.status(), r.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(c, r)) => (c, r.into_json().unwrap_or(Value::Null)),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn job_status(url: &str, id: &Value) -> String {
    let v: Value = ureq::get(&format!("{url}/playground/api/jobs/{id}"))
        .call()
        .expect("job")
        .into_json()
        .expect("json");
    v["progress"]["status"].as_str().unwrap_or("").to_string()
}

/// The playground API without a browser: the key, the upload limits and bad files give 4xx
/// with a message that names the problem; a queued job is cancelled before it starts, a
/// running one stops and installs nothing.
#[test]
fn playground_api_refuses_bad_uploads_and_cancels_jobs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let prompts = tmp.path().join("prompts");
    std::fs::create_dir_all(&prompts).expect("prompts dir");
    let (_server, url) = start_server(
        &prompts,
        &["--max-upload-rows", "30", "--max-upload-bytes", "4000"],
    );
    let jobs = format!("{url}/playground/api/jobs");
    let csv = |rows: usize| {
        let mut s = String::from("sentence,label\n");
        for i in 0..rows {
            s += &format!("review number {i} was fine,{}\n", i % 2);
        }
        s
    };
    let body = |name: &str, file: &str, data: String| json!({ "name": name, "task": "demo", "filename": file, "data": data, "steps": 2000 });
    let cases: Vec<(&str, Value, Option<&str>, u16, &str)> = vec![
        (
            "no key",
            body("a", "d.csv", csv(10)),
            None,
            401,
            "admin key",
        ),
        (
            "wrong key",
            body("a", "d.csv", csv(10)),
            Some("x"),
            401,
            "admin key",
        ),
        (
            "rows",
            body("a", "d.csv", csv(31)),
            Some(KEY),
            413,
            "--max-upload-rows",
        ),
        (
            "bytes",
            body("a", "d.csv", "x".repeat(5000)),
            Some(KEY),
            413,
            "--max-upload-bytes",
        ),
        (
            "extension",
            body("a", "d.txt", csv(10)),
            Some(KEY),
            422,
            ".csv",
        ),
        (
            "columns",
            body("a", "d.csv", "sentence,label\ngood,1\nbad,0,extra\n".into()),
            Some(KEY),
            422,
            "line 3",
        ),
        (
            "label",
            body("a", "d.csv", "sentence,label\ngood,1\nbad,7\n".into()),
            Some(KEY),
            422,
            "7",
        ),
        (
            "name",
            body("../x", "d.csv", csv(10)),
            Some(KEY),
            422,
            "bad prompt name",
        ),
        (
            "base name",
            body("base", "d.csv", csv(10)),
            Some(KEY),
            422,
            "bad prompt name",
        ),
        (
            "task",
            json!({ "name": "a", "task": "nope" }),
            Some(KEY),
            422,
            "no built-in task",
        ),
        (
            "labels",
            json!({ "name": "a", "template": "{sentence} is", "data": csv(10), "filename": "d.csv" }),
            Some(KEY),
            422,
            "label words",
        ),
    ];
    for (what, b, key, status, needle) in &cases {
        let (c, v) = api(&jobs, b, *key);
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert_eq!(c, *status, "{what}: {v}");
        assert!(
            msg.contains(needle),
            "{what}: message {msg:?} lacks {needle:?}"
        );
    }
    assert!(ureq::get(&jobs).call().is_ok(), "the server is still up");

    // Preview: rendered rows with their token counts.
    let (c, v) = api(
        &format!("{url}/playground/api/preview"),
        &json!({ "template": "Text: {sentence}\nVerdict:", "labels": "0=bad,1=good", "data": csv(10), "filename": "d.csv" }),
        Some(KEY),
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["rows_total"], json!(10));
    assert_eq!(
        v["rows"][0]["text"],
        json!("Text: review number 0 was fine\nVerdict:")
    );
    assert!(v["rows"][0]["tokens"].as_u64().unwrap_or(0) > 5);
    assert_eq!(v["rows"][1]["label"], json!(" good"));

    // One job runs, the next waits; a name in use is refused; cancel both.
    let (c, a) = api(&jobs, &body("first", "d.csv", csv(20)), Some(KEY));
    assert_eq!(c, 200, "{a}");
    let (c, b) = api(&jobs, &body("second", "d.csv", csv(20)), Some(KEY));
    assert_eq!(c, 200, "{b}");
    let (c, v) = api(&jobs, &body("first", "d.csv", csv(20)), Some(KEY));
    assert_eq!(c, 422, "a pending name: {v}");
    assert_eq!(job_status(&url, &b["id"]), "queued");
    let (c, v) = api(&format!("{jobs}/{}/cancel", b["id"]), &json!({}), Some(KEY));
    assert_eq!(
        (c, v["progress"]["status"].as_str()),
        (200, Some("cancelled"))
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while job_status(&url, &a["id"]) != "running" {
        assert!(Instant::now() < deadline, "the first job never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (c, _) = api(&format!("{jobs}/{}/cancel", a["id"]), &json!({}), None);
    assert_eq!(c, 401, "cancel needs the key");
    let (c, _) = api(&format!("{jobs}/{}/cancel", a["id"]), &json!({}), Some(KEY));
    assert_eq!(c, 200);
    while job_status(&url, &a["id"]) != "cancelled" {
        assert!(Instant::now() < deadline, "the first job did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        job_status(&url, &b["id"]),
        "cancelled",
        "the queued job never ran"
    );
    assert!(!prompts.join("first").exists() && !prompts.join("second").exists());
    // Ended jobs leave no files behind (uploads, checkpoints, previews).
    let left: Vec<_> = std::fs::read_dir(prompts.join(".playground"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in .playground: {left:?}");
}
