//! Task data: built-in tasks on the real data, readers, preparation, batching, the demo task.
//!
//! The real-data tests read `/work/shared/data` (found as `CARGO_MANIFEST_DIR/../../../shared/data`,
//! or `$SOFTPROMPT_SHARED`); they are skipped with a note when it is absent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use softprompt_core::data::{
    self, bucket_batches, builtin_task, builtin_task_names, demo_records, label_counts, load_split,
    majority_baseline, prepare, read_records, resolve_data_file, DemoSplit, Items, TaskKind,
    TaskSpec,
};

fn shared_data() -> Option<PathBuf> {
    let dir = match std::env::var_os("SOFTPROMPT_SHARED").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("data"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"),
    };
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: no shared data at {}", dir.display());
        None
    }
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn class_items(items: Items) -> Vec<data::ClassItem> {
    match items {
        Items::Class(v) => v,
        Items::Gen(_) => panic!("expected classification items"),
    }
}

/// The record text each task's rendered prompt must contain.
fn main_text_field(task: &str) -> &'static str {
    match task {
        "sst2" => "sentence",
        "boolq" => "passage",
        "cb" => "premise",
        "copa" => "choice1",
        "wic" => "sentence1",
        _ => unreachable!(),
    }
}

#[test]
fn builtin_tasks_on_real_data() {
    let Some(root) = shared_data() else { return };
    // Row counts from each folder's PROVENANCE.md.
    let expected = [
        ("sst2", 67349, 872),
        ("boolq", 1550, 3270),
        ("cb", 250, 56),
        ("copa", 400, 100),
        ("wic", 5428, 638),
    ];
    for (task, n_train, n_val) in expected {
        let spec = builtin_task(task).unwrap();
        let classes = spec.num_classes();
        for (split, file, n) in [
            ("train", spec.train.clone().unwrap(), n_train),
            ("validation", spec.validation.clone().unwrap(), n_val),
        ] {
            let (records, skipped, name) = load_split(&file, Some(&root), false).unwrap();
            assert_eq!(skipped, 0);
            assert_eq!(records.len(), n, "{task} {split}: row count");
            let (items, skipped) = prepare(&spec, &records, Path::new(&name), false).unwrap();
            assert_eq!(skipped, 0);
            let items = class_items(items);
            assert_eq!(items.len(), n);
            for it in &items {
                assert!(
                    it.label.is_some(),
                    "{task} {split} line {}: no label",
                    it.line
                );
                assert_eq!(it.candidates.len(), classes);
            }
            let counts = label_counts(&items);
            assert!(counts.iter().all(|&c| c > 0), "{task} {split}: {counts:?}");

            // The rendered prompt or candidates contain the record's (trimmed) text.
            let field = main_text_field(task);
            let rec = &records[0];
            let want = rec.fields[field].as_str().unwrap().trim();
            let it = &items[0];
            let all = format!("{}{}", it.text, it.candidates.join(""));
            let found = if task == "copa" {
                // Candidates lower-case the first letter.
                all.to_lowercase().contains(&want.to_lowercase())
            } else {
                all.contains(want)
            };
            assert!(found, "{task}: {want:?} not in {all:?}");
            if split == "validation" {
                let (maj, acc) = majority_baseline(&items);
                eprintln!(
                    "--- {task} ({name}, line {}): label {:?} of {:?}, majority class {maj} = {:.3}\n{}[{}]",
                    it.line,
                    it.label,
                    it.candidates,
                    acc,
                    it.text,
                    it.candidates.join("|")
                );
            }
        }
    }
}

#[test]
fn sst2_trailing_spaces_are_stripped() {
    let Some(root) = shared_data() else { return };
    let spec = builtin_task("sst2").unwrap();
    let (records, _, name) = load_split("sst2/validation.tsv", Some(&root), false).unwrap();
    let raw = records[0].fields["sentence"].as_str().unwrap();
    assert!(raw.ends_with(' '), "the GLUE file has trailing spaces");
    let items = class_items(prepare(&spec, &records, Path::new(&name), false).unwrap().0);
    assert!(items[0]
        .text
        .contains(&format!("Review: {}\nSentiment:", raw.trim())));
    assert!(items.iter().all(|i| !i.text.contains(" \nSentiment:")));
}

#[test]
fn unlabeled_real_test_splits() {
    let Some(root) = shared_data() else { return };
    for task in ["cb", "copa", "wic", "boolq"] {
        let spec = builtin_task(task).unwrap();
        let (records, _, name) =
            load_split(spec.test.as_deref().unwrap(), Some(&root), false).unwrap();
        let items = class_items(prepare(&spec, &records, Path::new(&name), false).unwrap().0);
        assert!(items.iter().all(|i| i.label.is_none()), "{task}");
        assert_eq!(majority_baseline(&items), (0, 0.0));
    }
}

#[test]
fn copa_template_renders_because_and_so() {
    let spec = builtin_task("copa").unwrap();
    let recs = vec![
        data::Record {
            line: 1,
            fields: json!({"premise": "My body cast a shadow over the grass.", "choice1": "The sun was rising.",
                "choice2": "I cut the grass.", "question": "cause", "label": 0})
            .as_object()
            .unwrap()
            .clone(),
        },
        data::Record {
            line: 2,
            fields: json!({"premise": "I emptied my pockets. ", "choice1": "I retrieved a ticket stub.",
                "choice2": "I found a weapon.", "question": "effect", "label": 1})
            .as_object()
            .unwrap()
            .clone(),
        },
    ];
    let items = class_items(
        prepare(&spec, &recs, Path::new("copa.jsonl"), false)
            .unwrap()
            .0,
    );
    assert_eq!(
        items[0].text,
        "My body cast a shadow over the grass because"
    );
    assert_eq!(
        items[0].candidates,
        vec![" the sun was rising.", " I cut the grass."]
    );
    assert_eq!(items[1].text, "I emptied my pockets so");
    assert_eq!(items[1].label, Some(1));
}

#[test]
fn csv_with_quotes_and_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.csv",
        "text,label\r\n\"a, \"\"quoted\"\" film\",1\n\"two\nlines\",0\nplain,1\n",
    );
    let (recs, skipped) = read_records(&p, false).unwrap();
    assert_eq!(skipped, 0);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].fields["text"], json!("a, \"quoted\" film"));
    assert_eq!(recs[1].fields["text"], json!("two\nlines"));
    assert_eq!((recs[0].line, recs[1].line, recs[2].line), (2, 3, 5));
    let spec = TaskSpec::from_flags("Text: {text}\nLabel:", "0=no,1=yes", "label").unwrap();
    let items = class_items(prepare(&spec, &recs, &p, false).unwrap().0);
    assert_eq!(items[0].text, "Text: a, \"quoted\" film\nLabel:");
    assert_eq!(
        items.iter().map(|i| i.label.unwrap()).collect::<Vec<_>>(),
        vec![1, 0, 1]
    );
}

#[test]
fn tsv_rows_and_column_count() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.tsv",
        "sentence\tlabel\n\"odd\" one \t0\ngood\t1\nbad\t1\textra\n",
    );
    let e = read_records(&p, false).unwrap_err().to_string();
    assert!(
        e.contains("d.tsv") && e.contains("line 4") && e.contains("3 columns, expected 2"),
        "{e}"
    );
    let (recs, skipped) = read_records(&p, true).unwrap();
    assert_eq!((recs.len(), skipped), (2, 1));
    assert_eq!(recs[0].fields["sentence"], json!("\"odd\" one "));
}

#[test]
fn bad_json_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.jsonl",
        "{\"a\": 1}\n\n{\"a\": 2,,}\n[1, 2]\n{\"a\": 3}\n",
    );
    let e = read_records(&p, false).unwrap_err().to_string();
    assert!(
        e.contains("d.jsonl") && e.contains("line 3") && e.contains("column"),
        "{e}"
    );
    let (recs, skipped) = read_records(&p, true).unwrap();
    assert_eq!((recs.len(), skipped), (2, 2));
    assert_eq!(recs[1].line, 5);
    // A line that is valid JSON but not an object.
    let p = write(dir.path(), "e.jsonl", "{\"a\": 1}\n\"text\"\n");
    let e = read_records(&p, false).unwrap_err().to_string();
    assert!(
        e.contains("line 2") && e.contains("expected a JSON object"),
        "{e}"
    );
}

#[test]
fn missing_field_and_unknown_label() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "d.jsonl",
        "{\"sentence\": \"fine\", \"label\": 1}\n{\"text\": \"oops\", \"label\": 0}\n{\"sentence\": \"meh\", \"label\": 7}\n{\"sentence\": \"ok\", \"label\": true}\n",
    );
    let (recs, _) = read_records(&p, false).unwrap();
    let spec = builtin_task("sst2").unwrap();
    let e = prepare(&spec, &recs, &p, false).unwrap_err().to_string();
    assert!(
        e.contains("d.jsonl") && e.contains("line 2") && e.contains("'sentence'"),
        "{e}"
    );
    let e = prepare(&spec, &recs[2..], &p, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3: unknown label '7' (expected one of 0, 1)"),
        "{e}"
    );
    let (items, skipped) = prepare(&spec, &recs, &p, true).unwrap();
    assert_eq!((items.len(), skipped), (1, 3));

    // A bool label matches "true"/"false" values.
    let spec = TaskSpec::from_flags("{sentence}", "false=no,true=yes", "label").unwrap();
    let items = class_items(prepare(&spec, &recs[3..], &p, false).unwrap().0);
    assert_eq!(items[0].label, Some(1));

    // Only some records lack the label: an error, not an unlabeled split.
    let p2 = write(
        dir.path(),
        "m.jsonl",
        "{\"sentence\": \"a\", \"label\": 1}\n{\"sentence\": \"b\"}\n",
    );
    let (recs, _) = read_records(&p2, false).unwrap();
    let spec = builtin_task("sst2").unwrap();
    let e = prepare(&spec, &recs, &p2, false).unwrap_err().to_string();
    assert!(
        e.contains("line 2") && e.contains("missing label field 'label'"),
        "{e}"
    );
}

#[test]
fn unlabeled_split() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "t.tsv",
        "index\tsentence\n0\tgreat fun \n1\tdull\n",
    );
    let (recs, _) = read_records(&p, false).unwrap();
    let spec = builtin_task("sst2").unwrap();
    let items = class_items(prepare(&spec, &recs, &p, false).unwrap().0);
    assert_eq!(items.len(), 2);
    assert!(items
        .iter()
        .all(|i| i.label.is_none() && i.candidates.len() == 2));
    assert_eq!(items[0].text, "Review: great fun\nSentiment:");
    assert_eq!(label_counts(&items), vec![0, 0]);
}

#[test]
fn empty_files() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("e.jsonl", ""),
        ("b.jsonl", "\n\n  \n"),
        ("h.csv", "a,b\n"),
        ("z.tsv", ""),
    ] {
        let p = write(dir.path(), name, content);
        let e = read_records(&p, false).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("no records"), "{e}");
    }
    let p = write(dir.path(), "bad.jsonl", "nope\n");
    let e = read_records(&p, true).unwrap_err().to_string();
    assert!(e.contains("no records (1 bad rows were skipped)"), "{e}");
    let p = write(dir.path(), "x.parquet", "");
    assert!(read_records(&p, false)
        .unwrap_err()
        .to_string()
        .contains(".jsonl"));
}

#[test]
fn huge_line_is_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.jsonl");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        f.write_all(b"{\"sentence\": \"").unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..20 {
            f.write_all(&chunk).unwrap();
        }
    }
    let t = std::time::Instant::now();
    let e = read_records(&p, true).unwrap_err().to_string();
    assert!(
        e.contains("big.jsonl") && e.contains("line 1") && e.contains("16 MiB"),
        "{e}"
    );
    assert!(t.elapsed().as_secs() < 10);
    // The same in a CSV quoted field spanning many lines.
    let p = dir.path().join("big.csv");
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        f.write_all(b"text\n\"").unwrap();
        let line = [vec![b'b'; 1023], vec![b'\n']].concat();
        for _ in 0..(20 << 10) {
            f.write_all(&line).unwrap();
        }
    }
    let e = read_records(&p, true).unwrap_err().to_string();
    assert!(
        e.contains("big.csv") && e.contains("line 2") && e.contains("16 MiB"),
        "{e}"
    );
}

#[test]
fn bucket_batches_properties() {
    let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 300 + 1).collect();
    let a = bucket_batches(&lengths, 8, 17, 3);
    assert_eq!(a, bucket_batches(&lengths, 8, 17, 3));
    assert_ne!(a, bucket_batches(&lengths, 8, 17, 4));
    assert_ne!(a, bucket_batches(&lengths, 8, 18, 3));
    let mut all: Vec<usize> = a.iter().flatten().copied().collect();
    all.sort();
    assert_eq!(all, (0..1000).collect::<Vec<_>>());
    assert!(a.iter().all(|b| !b.is_empty() && b.len() <= 8));
    // Within a batch, lengths are sorted and close: the spread inside batches is far below the
    // spread of random batches.
    let spread = |b: &Vec<usize>| {
        let ls: Vec<usize> = b.iter().map(|&i| lengths[i]).collect();
        ls.iter().max().unwrap() - ls.iter().min().unwrap()
    };
    for b in &a {
        assert!(b.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]));
    }
    let mean: f64 = a.iter().map(spread).sum::<usize>() as f64 / a.len() as f64;
    assert!(mean < 30.0, "mean spread {mean}");
    // Batches are not in length order (the batch order is shuffled).
    let firsts: Vec<usize> = a.iter().map(|b| lengths[b[0]]).collect();
    assert!(firsts.windows(2).any(|w| w[0] > w[1]));
}

#[test]
fn demo_task_is_deterministic_and_balanced() {
    let spec = builtin_task("demo").unwrap();
    let (train, skipped, name) = load_split(spec.train.as_deref().unwrap(), None, false).unwrap();
    assert_eq!(
        (train.len(), skipped, name.as_str()),
        (1000, 0, "builtin:demo/train")
    );
    assert_eq!(train, demo_records(DemoSplit::Train));
    let (val, _, _) = load_split(spec.validation.as_deref().unwrap(), None, false).unwrap();
    assert_eq!(val.len(), 200);
    let items = class_items(prepare(&spec, &train, Path::new(&name), false).unwrap().0);
    let counts = label_counts(&items);
    assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
    let vitems = class_items(prepare(&spec, &val, Path::new("v"), false).unwrap().0);
    let vc = label_counts(&vitems);
    assert!(vc[0] > 70 && vc[1] > 70, "{vc:?}");
    // Distinct sentences; both polarities of adjectives appear with both labels (negations).
    let uniq: HashSet<&str> = train
        .iter()
        .map(|r| r.fields["sentence"].as_str().unwrap())
        .collect();
    assert_eq!(uniq.len(), 1000);
    let with_good: Vec<u64> = train
        .iter()
        .filter(|r| {
            r.fields["sentence"]
                .as_str()
                .unwrap()
                .split(' ')
                .any(|w| w == "good")
        })
        .map(|r| r.fields["label"].as_u64().unwrap())
        .collect();
    assert!(with_good.contains(&0) && with_good.contains(&1));
    // Pinned: the demo data never changes (it is generated from a fixed SplitMix64 stream).
    assert_eq!(
        val[0].fields["sentence"],
        json!("although the cast is predictable , the pacing is heartfelt .")
    );
    assert_eq!(val[0].fields["label"], json!(1));
    eprintln!("demo train[0]: {:?}", train[0].fields);
    for r in val.iter().take(12) {
        eprintln!(
            "demo validation: {} {}",
            r.fields["label"], r.fields["sentence"]
        );
    }
    assert!(load_split("builtin:demo/test", None, false).is_err());
}

#[test]
fn from_flags_parsing() {
    let spec = TaskSpec::from_flags(
        r"Review: {sentence}\nSentiment:",
        "0=negative, 1=positive",
        "label",
    )
    .unwrap();
    let TaskKind::Classification {
        template,
        labels,
        label_field,
        ..
    } = &spec.kind
    else {
        panic!()
    };
    assert_eq!(template, "Review: {sentence}\nSentiment:");
    assert_eq!(label_field, "label");
    assert_eq!(labels[0].value, "0");
    assert_eq!(labels[0].text, " negative");
    assert_eq!(labels[1].text, " positive");
    // Template ending with a space: no extra space. A word with its own space keeps it.
    let spec = TaskSpec::from_flags("Q: {q} A: ", "n=no,y=yes", "ans").unwrap();
    let TaskKind::Classification { labels, .. } = &spec.kind else {
        panic!()
    };
    assert_eq!(labels[1].text, "yes");
    let spec = TaskSpec::from_flags("{q}", "a= x,b=y", "l").unwrap();
    let TaskKind::Classification { labels, .. } = &spec.kind else {
        panic!()
    };
    assert_eq!(
        (labels[0].text.as_str(), labels[1].text.as_str()),
        (" x", " y")
    );
    // Errors.
    for (t, l) in [
        ("{q}", "0negative,1=positive"),
        ("{q}", "0=negative"),
        ("{q}", "0=a,0=b"),
        ("{q", "0=a,1=b"),
        ("{q}", "=a,1=b"),
    ] {
        assert!(TaskSpec::from_flags(t, l, "label").is_err(), "{t} {l}");
    }
    assert!(TaskSpec::from_flags("{q}", "0=a,1=b", " ").is_err());
}

#[test]
fn task_files_and_names() {
    let names = builtin_task_names();
    for n in ["demo", "sst2", "boolq", "cb", "copa", "wic"] {
        assert!(names.contains(&n), "{n}");
        assert!(builtin_task(n).unwrap().templates().len() >= 2);
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = builtin_task("cb").unwrap();
    let p = write(
        dir.path(),
        "cb.json",
        &serde_json::to_string_pretty(&spec).unwrap(),
    );
    assert_eq!(data::load_task_file(&p).unwrap(), spec);
    let p = write(
        dir.path(),
        "bad.json",
        r#"{"name": "x", "kind": {"type": "classification", "template": "{a}", "labels": [{"value": "1", "text": " y"}]}}"#,
    );
    let e = data::load_task_file(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.json") && e.contains("at least 2 labels"),
        "{e}"
    );
    let p = write(
        dir.path(),
        "typo.json",
        r#"{"name": "x", "kind": {"type": "generation", "template": "{a}", "taget": "{b}"}}"#,
    );
    assert!(data::load_task_file(&p)
        .unwrap_err()
        .to_string()
        .contains("typo.json"));
}

#[test]
fn generation_items() {
    let dir = tempfile::tempdir().unwrap();
    let spec: TaskSpec = serde_json::from_value(json!({
        "name": "g", "kind": {"type": "generation", "template": "Q: {input}\nA:", "target": " {target}"}
    }))
    .unwrap();
    let p = write(
        dir.path(),
        "g.jsonl",
        "{\"input\": \"2+2\", \"target\": 4}\n{\"input\": \"hi\", \"target\": \"hello\"}\n",
    );
    let (recs, _) = read_records(&p, false).unwrap();
    let Items::Gen(items) = prepare(&spec, &recs, &p, false).unwrap().0 else {
        panic!()
    };
    assert_eq!(items[0].input, "Q: 2+2\nA:");
    assert_eq!(items[0].target.as_deref(), Some(" 4"));
    let p = write(dir.path(), "u.jsonl", "{\"input\": \"x\"}\n");
    let (recs, _) = read_records(&p, false).unwrap();
    let Items::Gen(items) = prepare(&spec, &recs, &p, false).unwrap().0 else {
        panic!()
    };
    assert_eq!(items[0].target, None);
}

#[test]
fn resolve_local_and_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("t")).unwrap();
    let p = write(&dir.path().join("t"), "x.jsonl", "{\"a\": 1}\n");
    assert_eq!(resolve_data_file(p.to_str().unwrap(), None).unwrap(), p);
    assert_eq!(
        resolve_data_file("t/x.jsonl", Some(dir.path())).unwrap(),
        dir.path().join("t/x.jsonl")
    );
    let e = resolve_data_file("t/nope.jsonl", Some(dir.path()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("t/nope.jsonl") && e.contains("not found"), "{e}");
    assert!(resolve_data_file("builtin:demo/train", None).is_err());
    let (recs, _, shown) = load_split("t/x.jsonl", Some(dir.path()), false).unwrap();
    assert_eq!(
        (recs.len(), shown),
        (1, dir.path().join("t/x.jsonl").display().to_string())
    );
}

/// Runs itself in a child process with `HF_HUB_OFFLINE=1` and an empty hub cache, so the
/// environment of the other tests is never changed.
#[test]
fn hf_offline_gives_clear_error() {
    if std::env::var_os("SP_DATA_HF_CHILD").is_some() {
        let e = resolve_data_file("hf://datasets/some-org/some-data/train.jsonl@main", None)
            .unwrap_err()
            .to_string();
        println!("CHILD-ERROR: {e}");
        assert!(
            e.contains("hf://datasets/some-org/some-data/train.jsonl")
                && e.contains("HF_HUB_OFFLINE")
        );
        assert!(!e.contains('\n'));
        return;
    }
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hf_offline_gives_clear_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SP_DATA_HF_CHILD", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-ERROR: "), "{stdout}");
    eprintln!(
        "{}",
        stdout
            .lines()
            .find(|l| l.contains("CHILD-ERROR"))
            .unwrap_or("")
    );
}

#[test]
fn nested_fields_and_json_values() {
    // WSC-style nested fields can be used with dotted names.
    let spec = TaskSpec::from_flags(
        "{text}\nDoes \"{target.span2_text}\" refer to \"{target.span1_text}\"?\nAnswer:",
        "false=no,true=yes",
        "label",
    )
    .unwrap();
    let recs = vec![data::Record {
        line: 1,
        fields: match json!({"text": "Mark told Pete lies. He lied.", "target": {"span1_text": "Mark", "span2_text": "He"}, "label": false})
        {
            Value::Object(m) => m,
            _ => unreachable!(),
        },
    }];
    let items = class_items(
        prepare(&spec, &recs, Path::new("w.jsonl"), false)
            .unwrap()
            .0,
    );
    assert_eq!(
        items[0].text,
        "Mark told Pete lies. He lied.\nDoes \"He\" refer to \"Mark\"?\nAnswer:"
    );
    assert_eq!(items[0].label, Some(0));
}
