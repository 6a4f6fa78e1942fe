//! Bar charts (one bar per method or setting).

use std::path::Path;

use super::axis::*;
use super::canvas::Canvas;
use super::font::*;
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
    let ya = Axis::nice(lo, hi, 6);
    let ticks: Vec<(f64, String)> = ya
        .ticks()
        .into_iter()
        .map(|v| (v, format_tick(v, ya.step)))
        .collect();

    let ls = LABEL_SCALE;
    let title_h = TEXT_H * TITLE_SCALE;
    let tick_w = ticks
        .iter()
        .map(|(_, s)| text_width(s, ls))
        .max()
        .unwrap_or(0);
    let left = 12 + TEXT_H * ls + 10 + tick_w + TICK_LEN + 4;
    let right = w - 20;
    let top = 14 + title_h + 16;
    let label_lines = 2;
    let bottom = h - (12 + label_lines * (TEXT_H * ls + 3) + 6);

    cv.text_centered(
        w / 2,
        14,
        &fit_text(title, w - 20, TITLE_SCALE),
        TITLE_SCALE,
        TEXT_COLOR,
    );
    cv.text_up_centered(
        12,
        (top + bottom) / 2,
        &fit_text(y_label, bottom - top, ls),
        ls,
        TEXT_COLOR,
    );

    let (ft, fb) = (top as f64, bottom as f64);
    for (v, label) in &ticks {
        let y = ya.map(*v, fb, ft).round() as i64;
        cv.fill_rect(left + 1, y, right, y + 1, GRID_COLOR);
        cv.fill_rect(left - TICK_LEN, y, left, y + 1, AXIS_COLOR);
        cv.text_right(
            left - TICK_LEN - 4,
            y - GLYPH_H * ls / 2,
            label,
            ls,
            TEXT_COLOR,
        );
    }
    cv.rect_outline(left, top, right, bottom, AXIS_COLOR);
    if bars.is_empty() {
        cv.text_centered(
            (left + right) / 2,
            (top + bottom) / 2 - 7,
            "no data",
            2,
            MUTED_COLOR,
        );
        return cv.save(path);
    }

    let zero_y = ya.map(0.0, fb, ft).round() as i64;
    let slot = (right - left) as f64 / n as f64;
    let bar_w = ((slot * 0.6) as i64).clamp(4, 120);
    for (i, (label, v)) in bars.iter().enumerate() {
        let cx = (left as f64 + slot * (i as f64 + 0.5)).round() as i64;
        let c = PALETTE[i % PALETTE.len()];
        let text_max = (slot as i64 - 6).max(ADVANCE);
        if v.is_finite() {
            let y = ya.map(*v, fb, ft).round() as i64;
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
