//! `softprompt inspect` on the PEFT fixture prompt with the default model: the JSON report's
//! shape, and the pictures and Markdown written to --out.

mod common;

use std::process::Command;

/// CRC-32 (IEEE), as PNG chunks use it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A well-formed PNG: signature, chunks with valid CRCs, IHDR first with a nonzero size,
/// IDAT data, IEND last. Returns (width, height).
fn check_png(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        b.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{}: not a PNG",
        path.display()
    );
    let (mut pos, mut size, mut idat, mut last) = (8usize, None, 0usize, String::new());
    while pos + 12 <= b.len() {
        let len = u32::from_be_bytes(b[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&b[pos + 4..pos + 8]).to_string();
        assert!(
            pos + 12 + len <= b.len(),
            "{}: truncated chunk {kind}",
            path.display()
        );
        let body = &b[pos + 4..pos + 8 + len];
        let crc = u32::from_be_bytes(b[pos + 8 + len..pos + 12 + len].try_into().unwrap());
        assert_eq!(crc32(body), crc, "{}: bad CRC in {kind}", path.display());
        if pos == 8 {
            assert_eq!(kind, "IHDR");
            let w = u32::from_be_bytes(body[4..8].try_into().unwrap());
            let h = u32::from_be_bytes(body[8..12].try_into().unwrap());
            size = Some((w, h));
        }
        if kind == "IDAT" {
            idat += len;
        }
        last = kind;
        pos += 12 + len;
    }
    assert_eq!(pos, b.len(), "{}: trailing bytes", path.display());
    assert_eq!(last, "IEND");
    assert!(idat > 0, "{}: no image data", path.display());
    let (w, h) = size.unwrap();
    assert!(w > 0 && h > 0);
    (w, h)
}

#[test]
fn inspect_peft_fixture_prompt_json() {
    let prompt = common::fixture_dir("smollm2-135m").join("prompt");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("inspect");
    let k = 4;
    let res = Command::new(env!("CARGO_BIN_EXE_softprompt"))
        .args(["inspect", "--json", "--k", &k.to_string(), "--prompt"])
        .arg(&prompt)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(res.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&res.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&res.stdout)));

    assert_eq!(v["num_virtual_tokens"], 20);
    assert_eq!(v["hidden_size"], 576);
    assert_eq!(v["k"], k);
    let vocab = v["vocab_size"].as_u64().unwrap();
    assert!(vocab > 40_000, "{vocab}");
    let norms = &v["embedding_norms"];
    let (lo, med, hi) = (
        norms["min"].as_f64().unwrap(),
        norms["median"].as_f64().unwrap(),
        norms["max"].as_f64().unwrap(),
    );
    assert!(0.0 <= lo && lo <= med && med <= hi);

    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 20);
    for (i, vec) in vectors.iter().enumerate() {
        assert_eq!(vec["index"], i);
        let pct = vec["norm_percentile"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&pct));
        assert!(vec["norm"].as_f64().unwrap() > 0.0);
        // A PEFT prompt has no softprompt.json: no drift.
        assert!(vec["drift"].is_null());
        for (key, measure) in [("nearest_cosine", "cosine"), ("nearest_l2", "l2")] {
            let near = vec[key].as_array().unwrap();
            assert_eq!(near.len(), k, "{key}");
            let mut prev: Option<f64> = None;
            for n in near {
                let c = n["cosine"].as_f64().unwrap();
                assert!((-1.0..=1.0).contains(&c), "cosine {c}");
                assert!(n["l2"].as_f64().unwrap() >= 0.0);
                assert!(n["id"].as_u64().unwrap() < vocab);
                assert!(n["piece"].is_string());
                // Best first.
                let x = n[measure].as_f64().unwrap();
                if let Some(p) = prev {
                    assert!(
                        if measure == "cosine" { x <= p } else { x >= p },
                        "{key} not sorted"
                    );
                }
                prev = Some(x);
            }
        }
    }
    let sim = v["prompt_similarity"].as_array().unwrap();
    assert_eq!(sim.len(), 20);
    assert!(sim.iter().all(|r| r.as_array().unwrap().len() == 20));

    let hard = &v["hard_prompt"];
    let ids = hard["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 20);
    for (id, vec) in ids.iter().zip(vectors) {
        assert_eq!(id, &vec["nearest_cosine"][0]["id"]);
    }
    assert!(hard["text"].is_string());
    assert!(v["init"].is_null());
    assert!(
        v["evaluation"].is_null(),
        "no task and no data: no evaluation"
    );

    for name in ["prompt_similarity.png", "nearest_tokens.png"] {
        let (w, h) = check_png(&out.join(name));
        assert!(w >= 100 && h >= 100, "{name}: {w}x{h}");
    }
    let md = std::fs::read_to_string(out.join("inspect.md")).unwrap();
    assert!(md.contains("### v19") && md.contains("## Hard projection"));
    assert_eq!(v["files"]["pictures"].as_array().unwrap().len(), 2);
}
