//! Crafted data files (JSON Lines, CSV, TSV), one test per case: reading (and preparing)
//! must give one clear error naming the file, the line and the problem, without a panic.
//! A huge line is refused after at most `MAX_LINE_BYTES` of it, from a sparse 8 GiB file
//! and from an endless pipe, with bounded memory.

mod crafted_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crafted_common::{expect_err, expect_err_with_limit};
use softprompt_core::data::{builtin_task, prepare, read_records, MAX_LINE_BYTES};

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Reading `content` as `name` must fail with `needles`.
#[track_caller]
fn read_refused(name: &str, content: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, content);
    expect_err(&p, needles, || read_records(&p, false));
}

/// Reading succeeds, preparing for SST-2 must fail with `needles`.
#[track_caller]
fn prepare_refused(name: &str, content: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), name, content);
    let (recs, _) = read_records(&p, false).unwrap();
    let spec = builtin_task("sst2").unwrap();
    expect_err(&p, needles, || {
        prepare(&spec, &recs, &p, false).map(|(i, _)| i.len())
    });
}

#[test]
fn bad_json_line() {
    read_refused(
        "bad.jsonl",
        b"{\"sentence\": \"ok\", \"label\": 1}\n{\"sentence\": \"x\", \"label\": }\n",
        &["line 2", "column", "bad JSON"],
    );
}

#[test]
fn line_is_not_an_object() {
    read_refused(
        "list.jsonl",
        b"{\"a\": 1}\n[1, 2]\n",
        &["line 2", "expected a JSON object, got a list"],
    );
}

#[test]
fn json_array_file() {
    read_refused(
        "array.json",
        b"[\n{\"sentence\": \"a\", \"label\": 1}\n]\n",
        &["line 1", "one object per line, not an array"],
    );
}

#[test]
fn missing_field() {
    prepare_refused(
        "missing.jsonl",
        b"{\"sentence\": \"fine\", \"label\": 1}\n{\"text\": \"oops\", \"label\": 0}\n",
        &["line 2", "'sentence'"],
    );
}

#[test]
fn missing_label_field() {
    prepare_refused(
        "nolabel.jsonl",
        b"{\"sentence\": \"a\", \"label\": 1}\n{\"sentence\": \"b\"}\n",
        &["line 2", "missing label field 'label'"],
    );
}

#[test]
fn unknown_label() {
    prepare_refused(
        "label.jsonl",
        b"{\"sentence\": \"a\", \"label\": 1}\n{\"sentence\": \"b\", \"label\": 7}\n",
        &["line 2: unknown label '7' (expected one of 0, 1)"],
    );
}

#[test]
fn empty_file() {
    read_refused("empty.jsonl", b"", &["no records (the file is empty)"]);
}

#[test]
fn only_blank_lines() {
    read_refused("blank.jsonl", b"\n  \n\r\n", &["no records"]);
}

#[test]
fn csv_header_only() {
    read_refused(
        "header.csv",
        b"sentence,label\n",
        &["no records (only a header)"],
    );
}

#[test]
fn csv_wrong_column_count() {
    read_refused(
        "cols.csv",
        b"sentence,label\ngood,1\nbad,1,extra\n",
        &["line 3", "3 columns, expected 2"],
    );
}

#[test]
fn csv_unclosed_quote() {
    read_refused(
        "quote.csv",
        b"sentence,label\n\"never closed,1\n",
        &["line 2", "quoted field never closed"],
    );
}

#[test]
fn csv_duplicate_header_column() {
    read_refused(
        "dup.csv",
        b"label,label\n1,0\n",
        &["line 1", "column name 'label' appears twice"],
    );
}

#[test]
fn tsv_wrong_column_count() {
    read_refused(
        "cols.tsv",
        b"sentence\tlabel\ngood\n",
        &["line 2", "1 columns, expected 2"],
    );
}

#[test]
fn invalid_utf8() {
    read_refused(
        "latin1.jsonl",
        b"{\"sentence\": \"caf\xE9\", \"label\": 1}\n",
        &["line 1", "not valid UTF-8"],
    );
}

#[test]
fn unknown_extension() {
    read_refused("data.parquet", b"PAR1", &["unknown data file type"]);
}

/// Allowed for the huge-line cases: one line buffer of `MAX_LINE_BYTES`, grown by doubling.
const LINE_ALLOC_LIMIT: usize = 2 * MAX_LINE_BYTES + (1 << 20);

#[test]
fn huge_line_in_a_sparse_8_gib_file() {
    // 8 GiB of zero bytes without a newline, taking no disk space.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.jsonl");
    std::fs::File::create(&p).unwrap().set_len(8 << 30).unwrap();
    let t = Instant::now();
    expect_err_with_limit(
        &p,
        &["line 1", "longer than 16 MiB"],
        LINE_ALLOC_LIMIT,
        || read_records(&p, true),
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn huge_csv_row_in_a_sparse_file() {
    // A quoted field that opens and never closes, followed by 4 GiB of zeros.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sparse.csv");
    std::fs::write(&p, b"text,label\n\"").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    expect_err_with_limit(
        &p,
        &["line 2", "longer than 16 MiB"],
        LINE_ALLOC_LIMIT,
        || read_records(&p, true),
    );
}

#[test]
fn huge_line_from_an_endless_pipe() {
    // A FIFO fed by a writer that would send 4 GiB: the reader must stop after about
    // MAX_LINE_BYTES, and the writer then sees the pipe closed.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stream.jsonl");
    match std::process::Command::new("mkfifo").arg(&p).status() {
        Ok(s) if s.success() => {}
        other => {
            eprintln!("skipping huge_line_from_an_endless_pipe: mkfifo unavailable ({other:?})");
            return;
        }
    }
    let wp = p.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&wp).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        let mut sent: u64 = 0;
        f.write_all(b"{\"sentence\": \"").unwrap();
        while sent < 4 << 30 {
            if f.write_all(&chunk).is_err() {
                break; // EPIPE: the reader gave up
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    expect_err_with_limit(
        &p,
        &["line 1", "longer than 16 MiB"],
        LINE_ALLOC_LIMIT,
        || read_records(&p, false),
    );
    let sent = writer.join().unwrap();
    assert!(
        sent <= (MAX_LINE_BYTES as u64) + (8 << 20),
        "the reader consumed {sent} bytes of an over-long line"
    );
}

#[test]
fn the_allocation_meter_sees_large_allocations() {
    // The bound checked by every case above is real: a 10 MiB buffer is seen.
    let (v, largest) = crafted_common::measure(|| vec![1u8; 10 << 20]);
    assert_eq!(v.len(), 10 << 20);
    assert!(largest >= 10 << 20, "{largest}");
    let (_, small) = crafted_common::measure(|| vec![1u8; 100]);
    assert!(small < 4096, "{small}");
}

#[test]
fn task_file_larger_than_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = serde_json::json!({"name": "t", "kind": "classification"});
    spec["padding"] = serde_json::json!("x".repeat(2 << 20));
    let p = write(dir.path(), "task.json", spec.to_string().as_bytes());
    expect_err(&p, &["larger than 1048576 bytes: not a task spec"], || {
        softprompt_core::data::load_task_file(&p)
    });
}

#[test]
fn task_file_not_json() {
    read_refused_task(b"name: sst2\n", &["not a valid task spec"]);
}

fn read_refused_task(content: &[u8], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "task.json", content);
    expect_err(&p, needles, || softprompt_core::data::load_task_file(&p));
}
