//! A real full disk (no simulated errors): a small tmpfs is mounted on a temp folder and
//! filled. Saving a checkpoint, a prompt or any atomic file there must fail with an
//! error naming the file ("No space left on device"), leave the previous version intact
//! and loadable, and leave no temp files behind; training on it must stop with that
//! error, and resume exactly once space is freed.
//!
//! Mounting needs root, or an unprivileged user namespace (`unshare -rm`, in which the
//! test re-runs itself). Where neither works the tests are skipped with a printed reason.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;

use common::{demo_config, step_losses, tiny_demo_model};
use softprompt_core::fsio::atomic_write;
use softprompt_core::prompt::SoftPrompt;
use softprompt_core::train::checkpoint::{
    load_checkpoint, load_latest, save_checkpoint, Checkpoint,
};
use softprompt_core::train::{self, Quiet};
use softprompt_core::Tensor;

const IN_NS: &str = "SOFTPROMPT_FULL_DISK_IN_USERNS";

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.0.path())
            .stderr(Stdio::null())
            .status();
    }
}

fn try_mount(kib: u64) -> Option<Tmpfs> {
    let dir = tempfile::tempdir().ok()?;
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={kib}k,mode=0700"),
            "tmpfs",
        ])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // (not `then_some`: that would build, and drop, a `Tmpfs` when mounting failed)
    if ok {
        Some(Tmpfs(dir))
    } else {
        None
    }
}

/// Run `body` on a fresh `kib`-KiB tmpfs: mounted directly if we may, otherwise by
/// re-running this one test inside `unshare -rm`; skipped (with a message) if neither works.
fn on_small_disk(test: &str, kib: u64, body: impl FnOnce(&Path)) {
    if let Some(fs) = try_mount(kib) {
        body(fs.path());
        return;
    }
    if std::env::var_os(IN_NS).is_some() {
        panic!("mount failed inside the user namespace");
    }
    let userns = Command::new("unshare")
        .args(["-rm", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !userns {
        eprintln!("skipping {test}: cannot mount a tmpfs (not root, and no unprivileged user namespaces for `unshare -rm`)");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .arg("-rm")
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(IN_NS, "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test} inside `unshare -rm` failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run inside the namespace:\n{text}"
    );
}

/// Fill the file system holding `dir` completely; returns the filler file.
fn fill(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("filler");
    let mut f = fs::File::create(&p).unwrap();
    let chunk = vec![0xAB; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    drop(f);
    // The last partial write may have left some bytes free: fill them one at a time.
    let mut f = fs::OpenOptions::new().append(true).open(&p).unwrap();
    while f.write(&[0xAB]).is_ok_and(|n| n == 1) {}
    p
}

/// Free `bytes` from the filler.
fn free(filler: &Path, bytes: u64) {
    let f = fs::OpenOptions::new().write(true).open(filler).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(bytes)).unwrap();
}

fn tmp_entries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-") || n.ends_with(".tmp"))
        .collect()
}

fn ckpt(step: u64, n: usize) -> Checkpoint {
    Checkpoint {
        step,
        tensors: vec![
            (
                "prompt".into(),
                vec![n / 16, 16],
                (0..n).map(|i| (i as f32 + step as f32).sin()).collect(),
            ),
            ("m".into(), vec![n], vec![step as f32; n]),
        ],
        state: serde_json::json!({"step": step, "note": "x".repeat(100)}),
    }
}

#[test]
fn checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint() {
    on_small_disk(
        "checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint",
        1024,
        |root| {
            let dir = root.join("checkpoints");
            let old = ckpt(1, 4096); // 32 KiB of tensors
            let new = ckpt(2, 4096);
            let (mut failed, mut succeeded) = (0, 0);
            let mut stages: Vec<String> = Vec::new();
            // Leave 0, 4, 8, ... 96 KiB free: the save runs out of space at every stage
            // (temp folder, tensors file, state.json, the `latest` pointer) or succeeds.
            for free_kib in (0..=96).step_by(4) {
                let _ = fs::remove_dir_all(&dir);
                let _ = fs::remove_file(root.join("filler"));
                save_checkpoint(&dir, &old, 2).unwrap();
                let latest_before = fs::read(dir.join("latest")).unwrap();
                let filler = fill(root);
                free(&filler, free_kib * 1024);
                match save_checkpoint(&dir, &new, 2) {
                    Ok(p) => {
                        succeeded += 1;
                        assert_eq!(load_checkpoint(&p).unwrap(), new);
                        assert_eq!(load_latest(&dir).unwrap().unwrap(), new);
                    }
                    Err(e) => {
                        failed += 1;
                        let msg = e.to_string();
                        // Which write ran out of space: the last path component named.
                        let what = msg
                            .split(": ")
                            .next()
                            .unwrap_or("")
                            .rsplit('/')
                            .next()
                            .unwrap_or("");
                        let what = if what.starts_with(".tmp-latest") {
                            "latest"
                        } else if what.starts_with(".tmp-ckpt") {
                            "the temp folder"
                        } else {
                            what
                        };
                        if !stages.contains(&what.to_string()) {
                            stages.push(what.to_string());
                        }
                        assert!(
                            msg.contains(&*dir.to_string_lossy()),
                            "{free_kib} KiB free: {msg}"
                        );
                        assert!(
                            msg.contains("No space left on device"),
                            "{free_kib} KiB free: {msg}"
                        );
                        assert_eq!(fs::read(dir.join("latest")).unwrap(), latest_before);
                        assert_eq!(
                            load_latest(&dir).unwrap().unwrap(),
                            old,
                            "{free_kib} KiB free"
                        );
                        // (a failed write of `latest` itself happens after the new folder is
                        // in place; then both checkpoints are complete)
                        if let Ok(c) = load_checkpoint(&dir.join("ckpt-00000002")) {
                            assert_eq!(c, new);
                        }
                        assert!(
                            tmp_entries(&dir).is_empty(),
                            "leftovers: {:?}",
                            tmp_entries(&dir)
                        );
                    }
                }
            }
            eprintln!("full-disk checkpoint saves: {failed} failed cleanly (out of space writing: {stages:?}), {succeeded} fit");
            assert!(
                failed > 0 && succeeded > 0,
                "the sweep must cover both outcomes"
            );
        },
    );
}

#[test]
fn atomic_write_on_a_full_disk_keeps_the_old_file() {
    on_small_disk(
        "atomic_write_on_a_full_disk_keeps_the_old_file",
        256,
        |root| {
            let p = root.join("train_log.jsonl");
            atomic_write(&p, b"old content\n").unwrap();
            let filler = fill(root);
            let e = atomic_write(&p, &vec![b'n'; 64 << 10])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&*root.to_string_lossy()) && e.contains("No space left on device"),
                "{e}"
            );
            assert_eq!(fs::read(&p).unwrap(), b"old content\n");
            assert!(tmp_entries(root).is_empty(), "{:?}", tmp_entries(root));
            free(&filler, 128 << 10);
            atomic_write(&p, &vec![b'n'; 64 << 10]).unwrap();
            assert_eq!(fs::read(&p).unwrap().len(), 64 << 10);
        },
    );
}

#[test]
fn prompt_save_on_a_full_disk_keeps_the_previous_prompt() {
    on_small_disk(
        "prompt_save_on_a_full_disk_keeps_the_previous_prompt",
        512,
        |root| {
            let dir = root.join("prompt");
            let old = SoftPrompt::new(Tensor::new(vec![4, 64], vec![0.5; 256]), "m", 2, 4);
            old.save(&dir).unwrap();
            let filler = fill(root);
            let new = SoftPrompt::new(Tensor::new(vec![128, 64], vec![0.25; 128 * 64]), "m", 2, 4);
            let e = new.save(&dir).unwrap_err().to_string();
            assert!(
                e.contains(&*dir.to_string_lossy()) && e.contains("No space left on device"),
                "{e}"
            );
            let back = SoftPrompt::load(&dir).unwrap();
            assert_eq!(back.embeddings, old.embeddings);
            assert!(tmp_entries(&dir).is_empty(), "{:?}", tmp_entries(&dir));
            free(&filler, 256 << 10);
            new.save(&dir).unwrap();
            assert_eq!(SoftPrompt::load(&dir).unwrap().embeddings, new.embeddings);
        },
    );
}

#[test]
fn training_on_a_full_disk_stops_cleanly_and_resumes_exactly() {
    on_small_disk(
        "training_on_a_full_disk_stops_cleanly_and_resumes_exactly",
        8192,
        |root| {
            let m = tiny_demo_model(4);
            let stop = AtomicBool::new(false);
            // Reference: 12 uninterrupted steps on an ordinary disk.
            let tmp = tempfile::tempdir().unwrap();
            let a = tmp.path().join("a");
            let mut cfg = demo_config(12);
            cfg.checkpoint_every = 1;
            train::train(&m, &cfg, &a, false, &stop, &mut Quiet).unwrap();

            // 6 steps on the small disk, then the disk fills up.
            let b = root.join("b");
            let mut first = cfg.clone();
            first.steps = 6;
            train::train(&m, &first, &b, false, &stop, &mut Quiet).unwrap();
            let ckpts = b.join("checkpoints");
            let before = load_latest(&ckpts).unwrap().unwrap();
            assert_eq!(before.step, 6);
            let filler = fill(root);
            let e = train::train(&m, &cfg, &b, true, &stop, &mut Quiet)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&*b.to_string_lossy()) && e.contains("No space left on device"),
                "{e}"
            );
            assert_eq!(
                load_latest(&ckpts).unwrap().unwrap(),
                before,
                "the step-6 checkpoint changed"
            );

            // Space again: the resumed run finishes as if nothing had happened.
            fs::remove_file(&filler).unwrap();
            train::train(&m, &cfg, &b, true, &stop, &mut Quiet).unwrap();
            assert_eq!(step_losses(&a), step_losses(&b));
            assert_eq!(
                fs::read(a.join("adapter_model.safetensors")).unwrap(),
                fs::read(b.join("adapter_model.safetensors")).unwrap()
            );
        },
    );
}
