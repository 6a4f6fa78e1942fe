//! Bar charts (one bar per method or setting).

use std::path::Path;

use super::axis::*;
use super::canvas::Canvas;
use super::font::*;
use super::frame::Frame;
use super::*;
use crate::{Error, Result};

/// A bar chart, one bar per `(label, value)` in order and color (e.g. accuracy per
/// method), with the value above each bar, labels below (wrapped onto two lines or
/// shortened when long) and a y axis that always includes 0. Negative values hang below
/// the 0 line; non-finite values show "n/a" and no bar. [`CHART_WIDTH`]×[`CHART_HEIGHT`]
/// px, wider when there are many bars.
pub fn bar_chart(path: &Path, title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<()> {
    let n = bars.len() as i64;
    let w = (CHART_WIDTH as i64).max(120 + n * 48);
    let h = CHART_HEIGHT as i64;
    if w > 16384 {
        return Err(Error::Input(format!(
            "bar chart {}: {n} bars are too many to draw",
            path.display()
        )));
    }
    let mut cv = Canvas::new(w as usize, h as usize);

    let finite: Vec<f64> = bars.iter().map(|b| b.1).filter(|v| v.is_finite()).collect();
    let lo = finite.iter().copied().fold(0.0f64, f64::min);
    let hi = finite.iter().copied().fold(0.0f64, f64::max);
    let ls = LABEL_SCALE;
    let label_lines = 2;
    let f = Frame::draw(
        &mut cv,
        title,
        y_label,
        Axis::nice(lo, hi, 6),
        20,
        12 + label_lines * (TEXT_H * ls + 3) + 6,
    );
    f.outline(&mut cv, bars.is_empty());
    if bars.is_empty() {
        return cv.save(path);
    }
    let Frame {
        left,
        right,
        bottom,
        ..
    } = f;

    let zero_y = f.y(0.0).round() as i64;
    let slot = (right - left) as f64 / n as f64;
    let bar_w = ((slot * 0.6) as i64).clamp(4, 120);
    for (i, (label, v)) in bars.iter().enumerate() {
        let cx = (left as f64 + slot * (i as f64 + 0.5)).round() as i64;
        let c = PALETTE[i % PALETTE.len()];
        let text_max = (slot as i64 - 6).max(ADVANCE);
        if v.is_finite() {
            let y = f.y(*v).round() as i64;
            let (y0, y1) = if y <= zero_y {
                (y, zero_y)
            } else {
                (zero_y + 1, y + 1)
            };
            cv.fill_rect(
                cx - bar_w / 2,
                y0,
                cx - bar_w / 2 + bar_w,
                y1.max(y0 + 1),
                c,
            );
            let s = fit_text(&format_value(*v), text_max, ls);
            let ty = if *v >= 0.0 {
                y0 - TEXT_H * ls - 2
            } else {
                y1 + 4
            };
            cv.text_centered(cx, ty, &s, ls, TEXT_COLOR);
        } else {
            cv.text_centered(cx, zero_y - TEXT_H * ls - 2, "n/a", ls, MUTED_COLOR);
        }
        for (k, l) in wrap_label(label, text_max, ls, label_lines as usize)
            .iter()
            .enumerate()
        {
            cv.text_centered(
                cx,
                bottom + 6 + k as i64 * (TEXT_H * ls + 3),
                l,
                ls,
                TEXT_COLOR,
            );
        }
    }
    // The zero line on top of the bars.
    cv.fill_rect(left, zero_y, right + 1, zero_y + 1, AXIS_COLOR);

    cv.save(path)
}
