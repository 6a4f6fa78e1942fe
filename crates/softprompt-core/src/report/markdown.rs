//! Formatting helpers shared by the Markdown reports (`compare.md`, `inspect.md`).

/// Human-readable bytes.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} KB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// A count with thousands separators, or in millions / billions (`124,515`, `134.5 M`).
pub fn human_count(n: usize) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else {
        let s = n.to_string();
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(ch);
        }
        out
    }
}

/// Seconds, or minutes from two minutes on (`12.3 s`, `4.5 min`).
pub fn human_secs(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// Markdown inline code for table cells.
pub fn md_code(text: &str) -> String {
    let s = format!("{text:?}").replace('|', "\\|");
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

/// A fraction as a percentage with one decimal (`87.5%`).
pub fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}
