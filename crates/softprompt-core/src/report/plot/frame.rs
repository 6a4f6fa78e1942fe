//! The frame line and bar charts share: title, rotated y label, y ticks with grid lines, the
//! plot rectangle and the "no data" note.

use super::axis::*;
use super::canvas::Canvas;
use super::font::*;
use super::*;

/// A plot rectangle in pixels, with the y axis it was laid out for.
pub(super) struct Frame {
    pub(super) left: i64,
    pub(super) right: i64,
    pub(super) top: i64,
    pub(super) bottom: i64,
    pub(super) ya: Axis,
}

impl Frame {
    /// Lays out a frame on `cv` (its left edge follows the widest y tick label; `right_margin`
    /// and `bottom_margin` leave room for what the chart draws there) and draws the title,
    /// the y label and the y ticks with their grid lines. The outline comes last
    /// ([`Frame::outline`]), over the chart's own grid lines.
    pub(super) fn draw(
        cv: &mut Canvas,
        title: &str,
        y_label: &str,
        ya: Axis,
        right_margin: i64,
        bottom_margin: i64,
    ) -> Frame {
        let (w, h) = (cv.w, cv.h);
        let ls = LABEL_SCALE;
        let ticks = tick_labels(&ya);
        let tick_w = ticks
            .iter()
            .map(|(_, s)| text_width(s, ls))
            .max()
            .unwrap_or(0);
        let f = Frame {
            left: 12 + TEXT_H * ls + 10 + tick_w + TICK_LEN + 4,
            right: w - right_margin,
            top: 14 + TEXT_H * TITLE_SCALE + 16,
            bottom: h - bottom_margin,
            ya,
        };
        cv.text_centered(
            w / 2,
            14,
            &fit_text(title, w - 20, TITLE_SCALE),
            TITLE_SCALE,
            TEXT_COLOR,
        );
        cv.text_up_centered(
            12,
            (f.top + f.bottom) / 2,
            &fit_text(y_label, f.bottom - f.top, ls),
            ls,
            TEXT_COLOR,
        );
        for (v, label) in &ticks {
            let y = f.y(*v).round() as i64;
            cv.fill_rect(f.left + 1, y, f.right, y + 1, GRID_COLOR);
            cv.fill_rect(f.left - TICK_LEN, y, f.left, y + 1, AXIS_COLOR);
            cv.text_right(
                f.left - TICK_LEN - 4,
                y - GLYPH_H * ls / 2,
                label,
                ls,
                TEXT_COLOR,
            );
        }
        f
    }

    /// The pixel row of the value `v`.
    pub(super) fn y(&self, v: f64) -> f64 {
        self.ya.map(v, self.bottom as f64, self.top as f64)
    }

    /// The plot rectangle's outline, and "no data" in its middle when `empty`.
    pub(super) fn outline(&self, cv: &mut Canvas, empty: bool) {
        cv.rect_outline(self.left, self.top, self.right, self.bottom, AXIS_COLOR);
        if empty {
            cv.text_centered(
                (self.left + self.right) / 2,
                (self.top + self.bottom) / 2 - 7,
                "no data",
                2,
                MUTED_COLOR,
            );
        }
    }
}

/// An axis's ticks with their labels.
pub(super) fn tick_labels(a: &Axis) -> Vec<(f64, String)> {
    a.ticks()
        .into_iter()
        .map(|v| (v, format_tick(v, a.step)))
        .collect()
}
