//! Heatmaps (cosine similarities) with a diverging or sequential colormap.

use std::path::Path;

use super::axis::*;
use super::canvas::Canvas;
use super::font::*;
use super::*;
use crate::{Error, Result};

/// Piecewise-linear colormap through `stops` (t in [0, 1]).
pub(super) fn colormap(stops: &[Rgb], t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |k: usize| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// Viridis, sampled at 9 points.
pub(super) const VIRIDIS: [Rgb; 9] = [
    [68, 1, 84],
    [71, 44, 122],
    [59, 81, 139],
    [44, 113, 142],
    [33, 144, 141],
    [39, 173, 129],
    [92, 200, 99],
    [170, 220, 50],
    [253, 231, 37],
];

/// A blue–white–red diverging map (close to matplotlib's "coolwarm").
pub(super) const COOLWARM: [Rgb; 5] = [
    [59, 76, 192],
    [141, 176, 254],
    [221, 221, 221],
    [244, 154, 123],
    [180, 4, 38],
];

/// Color scale of a heatmap: diverging around 0 when the range spans 0 (cosine
/// similarities), sequential otherwise.
pub(super) struct ColorScale {
    pub(super) vmin: f64,
    pub(super) vmax: f64,
}

impl ColorScale {
    pub(super) fn diverging(&self) -> bool {
        self.vmin < 0.0 && self.vmax > 0.0
    }

    pub(super) fn color(&self, v: f64) -> Rgb {
        if !v.is_finite() {
            return NAN_COLOR;
        }
        if self.diverging() {
            // White at 0, each side stretched to its end of the range.
            let t = if v < 0.0 {
                0.5 * (1.0 - v / self.vmin)
            } else {
                0.5 + 0.5 * v / self.vmax
            };
            colormap(&COOLWARM, t)
        } else {
            colormap(&VIRIDIS, (v - self.vmin) / (self.vmax - self.vmin))
        }
    }
}

/// A heatmap of `values` (`[rows, cols]` row-major; NaN cells are gray), colored from
/// `vmin` to `vmax` (values outside are clamped) with a color-scale legend on the right.
/// The colormap diverges (blue–white–red, white at 0) when `vmin < 0 < vmax`, e.g. for
/// cosine similarities in [-1, 1], and is viridis otherwise.
///
/// `row_labels` / `col_labels` must have `rows` / `cols` entries, or be empty for
/// 0-based indices; only as many labels are drawn as fit. Cells are square, 1 to 40 px;
/// large cells show their values.
pub fn heatmap(
    path: &Path,
    title: &str,
    row_labels: &[String],
    col_labels: &[String],
    values: &[f32],
    vmin: f32,
    vmax: f32,
) -> Result<()> {
    let what = format!("heatmap {}", path.display());
    let rows = if row_labels.is_empty() {
        None
    } else {
        Some(row_labels.len())
    };
    let cols = if col_labels.is_empty() {
        None
    } else {
        Some(col_labels.len())
    };
    let (rows, cols) = match (rows, cols) {
        (Some(r), Some(c)) => (r, c),
        (Some(r), None) if r > 0 && values.len().is_multiple_of(r) => (r, values.len() / r),
        (None, Some(c)) if c > 0 && values.len().is_multiple_of(c) => (values.len() / c, c),
        (None, None) => {
            // Without labels assume a square matrix.
            let n = (values.len() as f64).sqrt().round() as usize;
            (n, n)
        }
        _ => (0, 0),
    };
    if rows == 0 || cols == 0 || rows * cols != values.len() {
        return Err(Error::Input(format!(
            "{what}: {} values do not fill a [{}, {}] matrix (the label counts)",
            values.len(),
            row_labels.len(),
            col_labels.len()
        )));
    }
    if rows > 4096 || cols > 4096 {
        return Err(Error::Input(format!(
            "{what}: [{rows}, {cols}] is too large to draw (at most 4096 × 4096)"
        )));
    }
    if !vmin.is_finite() || !vmax.is_finite() || vmin > vmax {
        return Err(Error::Input(format!(
            "{what}: invalid color range [{vmin}, {vmax}]"
        )));
    }
    let (mut lo, mut hi) = (vmin as f64, vmax as f64);
    if lo == hi {
        lo -= 0.5;
        hi += 0.5;
    }
    let scale = ColorScale { vmin: lo, vmax: hi };
    let row_text: Vec<String> = (0..rows)
        .map(|r| row_labels.get(r).cloned().unwrap_or_else(|| r.to_string()))
        .collect();
    let col_text: Vec<String> = (0..cols)
        .map(|c| col_labels.get(c).cloned().unwrap_or_else(|| c.to_string()))
        .collect();

    // Cell size: fit the matrix in about 640×480, square cells of 1..=40 px.
    let cell = (640 / cols as i64).min(480 / rows as i64).clamp(1, 40);
    let ls = LABEL_SCALE;
    let max_label_w = 16 * ADVANCE * ls;
    let row_label_w = row_text
        .iter()
        .map(|s| text_width(&fit_text(s, max_label_w, ls), ls))
        .max()
        .unwrap_or(0);
    let col_label_w = col_text
        .iter()
        .map(|s| text_width(&fit_text(s, max_label_w, ls), ls))
        .max()
        .unwrap_or(0);
    // Column labels are horizontal when short, else rotated.
    let col_vertical = col_label_w + 4 > cell * 2;
    let line = TEXT_H * ls + 2;
    // Draw every `stride`-th label so they do not overlap.
    let row_stride = ((line + cell - 1) / cell).max(1) as usize;
    let col_stride = if col_vertical {
        ((line + cell - 1) / cell).max(1) as usize
    } else {
        ((col_label_w + 6 + cell - 1) / cell).max(1) as usize
    };

    let mat_w = cell * cols as i64;
    let mat_h = cell * rows as i64;
    let colorbar_w = 16;
    let cb_label_w = 9 * ADVANCE * ls;
    let title_h = TEXT_H * TITLE_SCALE;
    let left = 12 + row_label_w + 6;
    let top = 12 + title_h + 14;
    let col_area = if col_vertical {
        col_label_w
    } else {
        TEXT_H * ls
    } + 8;
    let cb_x = left + mat_w + 24;
    let cb_h = mat_h.max(160);
    let width = (cb_x + colorbar_w + 6 + cb_label_w + 12)
        .max(text_width(title, TITLE_SCALE) + 24)
        .max(320);
    let height = (top + (mat_h + col_area).max(cb_h) + 12).max(200);
    let mut cv = Canvas::new(width as usize, height as usize);

    cv.text_centered(
        width / 2,
        12,
        &fit_text(title, width - 20, TITLE_SCALE),
        TITLE_SCALE,
        TEXT_COLOR,
    );

    // Cells.
    let annotate = cell >= 36 && rows * cols <= 400;
    for r in 0..rows {
        for c in 0..cols {
            let v = values[r * cols + c] as f64;
            let color = scale.color(v);
            let (x, y) = (left + c as i64 * cell, top + r as i64 * cell);
            cv.fill_rect(x, y, x + cell, y + cell, color);
            if annotate {
                let s = fit_text(&format_value(v), cell - 2, 1);
                // Dark text on light cells, white on dark ones.
                let luma =
                    0.299 * color[0] as f64 + 0.587 * color[1] as f64 + 0.114 * color[2] as f64;
                let tc = if luma > 140.0 { TEXT_COLOR } else { BACKGROUND };
                cv.text_centered(x + cell / 2, y + cell / 2 - GLYPH_H / 2, &s, 1, tc);
            }
        }
    }
    cv.rect_outline(left - 1, top - 1, left + mat_w, top + mat_h, AXIS_COLOR);

    // Labels.
    for r in (0..rows).step_by(row_stride) {
        let cy = top + r as i64 * cell + cell / 2;
        let s = fit_text(&row_text[r], max_label_w, ls);
        cv.text_right(left - 6, cy - GLYPH_H * ls / 2, &s, ls, TEXT_COLOR);
    }
    for c in (0..cols).step_by(col_stride) {
        let cx = left + c as i64 * cell + cell / 2;
        let s = fit_text(&col_text[c], max_label_w, ls);
        if col_vertical {
            // Reads upwards, ending just below the matrix.
            cv.text_up_from(cx - GLYPH_H * ls / 2, top + mat_h + 6, &s, ls, TEXT_COLOR);
        } else {
            cv.text_centered(cx, top + mat_h + 6, &s, ls, TEXT_COLOR);
        }
    }

    // Color scale legend: hi at the top.
    let cb_top = top;
    for y in 0..cb_h {
        let v = hi - (hi - lo) * y as f64 / (cb_h - 1).max(1) as f64;
        cv.fill_rect(
            cb_x,
            cb_top + y,
            cb_x + colorbar_w,
            cb_top + y + 1,
            scale.color(v),
        );
    }
    cv.rect_outline(
        cb_x - 1,
        cb_top - 1,
        cb_x + colorbar_w,
        cb_top + cb_h,
        AXIS_COLOR,
    );
    let axis = Axis::nice(lo, hi, 6);
    let mut ticks = axis.ticks_within(lo, hi);
    if ticks.len() < 2 {
        ticks = vec![lo, hi];
    }
    for v in ticks {
        let y = (cb_top as f64 + (hi - v) / (hi - lo) * (cb_h - 1) as f64).round() as i64;
        cv.fill_rect(
            cb_x + colorbar_w,
            y,
            cb_x + colorbar_w + 4,
            y + 1,
            AXIS_COLOR,
        );
        let s = format_tick(v, axis.step);
        cv.text(
            cb_x + colorbar_w + 6,
            y - GLYPH_H * ls / 2,
            &s,
            ls,
            TEXT_COLOR,
        );
    }

    cv.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_colors() {
        let s = ColorScale {
            vmin: -1.0,
            vmax: 1.0,
        };
        assert_eq!(s.color(0.0), COOLWARM[2]);
        assert_eq!(s.color(-1.0), COOLWARM[0]);
        assert_eq!(s.color(1.0), COOLWARM[4]);
        assert_eq!(s.color(5.0), COOLWARM[4]);
        assert_eq!(s.color(f64::NAN), NAN_COLOR);
        let s = ColorScale {
            vmin: 0.0,
            vmax: 1.0,
        };
        assert_eq!(s.color(0.0), VIRIDIS[0]);
        assert_eq!(s.color(1.0), VIRIDIS[8]);
    }
}
