//! Line charts (training curves).

use std::path::Path;

use super::axis::*;
use super::canvas::Canvas;
use super::font::*;
use super::frame::{tick_labels, Frame};
use super::*;
use crate::Result;

/// A line chart of `series` (e.g. training loss and eval accuracy against the step),
/// [`CHART_WIDTH`]×[`CHART_HEIGHT`] px, with nice ticks, light grid lines, one color per
/// series and a legend. Non-finite points break a line; a series with one point is a dot;
/// series with at most 60 points also get a dot per point. Empty input gives an empty
/// frame with "no data".
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<()> {
    let h = CHART_HEIGHT as i64;
    let mut cv = Canvas::new(CHART_WIDTH, CHART_HEIGHT);

    // Data range over finite points.
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().filter(finite).copied())
        .collect();
    let has_data = !all.is_empty();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !has_data {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let xa = Axis::nice(x0, x1, 8);
    let x_ticks = tick_labels(&xa);
    let ls = LABEL_SCALE;
    let f = Frame::draw(
        &mut cv,
        title,
        y_label,
        Axis::nice(y0, y1, 6),
        24,
        12 + TEXT_H * ls + 10 + TEXT_H * ls + TICK_LEN + 4,
    );
    let (left, right, top, bottom) = (f.left, f.right, f.top, f.bottom);
    cv.text_centered(
        (left + right) / 2,
        h - 12 - TEXT_H * ls,
        &fit_text(x_label, right - left, ls),
        ls,
        TEXT_COLOR,
    );
    let (fl, fr) = (left as f64, right as f64);
    // Skip x labels that would overlap the previous one.
    let mut last_end = i64::MIN;
    for (v, label) in &x_ticks {
        let x = xa.map(*v, fl, fr).round() as i64;
        cv.fill_rect(x, top, x + 1, bottom, GRID_COLOR);
        cv.fill_rect(x, bottom, x + 1, bottom + TICK_LEN, AXIS_COLOR);
        let tw = text_width(label, ls);
        if x - tw / 2 > last_end + 6 {
            cv.text_centered(x, bottom + TICK_LEN + 4, label, ls, TEXT_COLOR);
            last_end = x + tw / 2;
        }
    }
    f.outline(&mut cv, !has_data);

    // Series, clipped to the plot frame.
    cv.set_clip(left + 1, top + 1, right, bottom);
    let to_px = |(x, y): (f64, f64)| (xa.map(x, fl, fr), f.y(y));
    for (k, s) in series.iter().enumerate() {
        let c = PALETTE[k % PALETTE.len()];
        let n_finite = s.points.iter().filter(finite).count();
        let mut prev: Option<(f64, f64)> = None;
        for &p in &s.points {
            if !(p.0.is_finite() && p.1.is_finite()) {
                prev = None;
                continue;
            }
            let q = to_px(p);
            if let Some(a) = prev {
                cv.line(a.0, a.1, q.0, q.1, 2.0, c);
            }
            prev = Some(q);
        }
        if n_finite <= 60 {
            for &p in s.points.iter().filter(finite) {
                let q = to_px(p);
                cv.disc(q.0, q.1, if n_finite == 1 { 4.0 } else { 2.5 }, c);
            }
        }
    }
    cv.reset_clip();

    // Legend in the plot corner that hides the fewest points.
    let named: Vec<(usize, &Series)> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.name.is_empty())
        .collect();
    if !named.is_empty() {
        let row_h = TEXT_H * ls + 6;
        let swatch = 18;
        let max_text = (right - left) / 2;
        let labels: Vec<String> = named
            .iter()
            .map(|(_, s)| {
                let mut l = s.name.clone();
                if s.points.iter().filter(finite).count() == 0 {
                    l.push_str(" (no data)");
                }
                fit_text(&l, max_text, ls)
            })
            .collect();
        let lw = 8 + swatch + 6 + labels.iter().map(|l| text_width(l, ls)).max().unwrap_or(0) + 8;
        let lh = 6 + row_h * labels.len() as i64;
        let margin = 8;
        let corners = [
            (right - margin - lw, top + margin),
            (left + margin, top + margin),
            (right - margin - lw, bottom - margin - lh),
            (left + margin, bottom - margin - lh),
        ];
        let pts: Vec<(f64, f64)> = all.iter().map(|&p| to_px(p)).collect();
        let hidden = |&(bx, by): &(i64, i64)| {
            pts.iter()
                .filter(|(x, y)| {
                    *x >= bx as f64
                        && *x <= (bx + lw) as f64
                        && *y >= by as f64
                        && *y <= (by + lh) as f64
                })
                .count()
        };
        let (bx, by) = corners
            .iter()
            .copied()
            .min_by_key(|c| hidden(c))
            .unwrap_or(corners[0]);
        cv.fill_rect(bx, by, bx + lw, by + lh, BACKGROUND);
        cv.rect_outline(bx, by, bx + lw, by + lh, MUTED_COLOR);
        for (i, ((k, _), label)) in named.iter().zip(&labels).enumerate() {
            let c = PALETTE[k % PALETTE.len()];
            let ry = by + 6 + row_h * i as i64;
            let cy = (ry + GLYPH_H * ls / 2) as f64;
            cv.line((bx + 8) as f64, cy, (bx + 8 + swatch) as f64, cy, 2.5, c);
            cv.text(bx + 8 + swatch + 6, ry, label, ls, TEXT_COLOR);
        }
    }

    cv.save(path)
}
