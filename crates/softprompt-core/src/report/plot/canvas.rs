//! An RGB canvas with the drawing primitives the charts use, saved as PNG atomically.

use std::path::Path;

use super::font::*;
use super::{Rgb, BACKGROUND};
use crate::fsio::atomic_write;
use crate::{Error, Result};

/// An RGB image `[height, width, 3]` with drawing primitives. Coordinates are pixels from
/// the top-left corner; everything drawn outside the image (or the clip rectangle) is
/// dropped.
pub(super) struct Canvas {
    pub(super) w: i64,
    pub(super) h: i64,
    pub(super) px: Vec<u8>,
    /// Clip rectangle `[x0, y0, x1, y1)`.
    pub(super) clip: (i64, i64, i64, i64),
}

impl Canvas {
    pub(super) fn new(w: usize, h: usize) -> Self {
        let mut px = Vec::with_capacity(w * h * 3);
        for _ in 0..w * h {
            px.extend_from_slice(&BACKGROUND);
        }
        Canvas {
            w: w as i64,
            h: h as i64,
            px,
            clip: (0, 0, w as i64, h as i64),
        }
    }

    pub(super) fn set_clip(&mut self, x0: i64, y0: i64, x1: i64, y1: i64) {
        self.clip = (x0.max(0), y0.max(0), x1.min(self.w), y1.min(self.h));
    }

    pub(super) fn reset_clip(&mut self) {
        self.clip = (0, 0, self.w, self.h);
    }

    pub(super) fn index(&self, x: i64, y: i64) -> Option<usize> {
        let (x0, y0, x1, y1) = self.clip;
        if x < x0 || y < y0 || x >= x1 || y >= y1 {
            return None;
        }
        Some(((y * self.w + x) * 3) as usize)
    }

    pub(super) fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Blend `c` over the pixel with opacity `a` in [0, 1].
    pub(super) fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f64) {
        if a <= 0.0 {
            return;
        }
        if let Some(i) = self.index(x, y) {
            let a = a.min(1.0);
            for (dst, &src) in self.px[i..i + 3].iter_mut().zip(&c) {
                let old = *dst as f64;
                *dst = (old + (src as f64 - old) * a).round() as u8;
            }
        }
    }

    /// Filled rectangle `[x0, x1) × [y0, y1)`.
    pub(super) fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                self.set(x, y, c);
            }
        }
    }

    /// 1-px outline of the rectangle `[x0, x1] × [y0, y1]` (inclusive corners).
    pub(super) fn rect_outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.fill_rect(x0, y0, x1 + 1, y0 + 1, c);
        self.fill_rect(x0, y1, x1 + 1, y1 + 1, c);
        self.fill_rect(x0, y0, x0 + 1, y1 + 1, c);
        self.fill_rect(x1, y0, x1 + 1, y1 + 1, c);
    }

    /// Anti-aliased line of width `width` between pixel centres (x0, y0) and (x1, y1):
    /// every pixel is blended by its coverage, estimated from its distance to the segment.
    pub(super) fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: f64, c: Rgb) {
        let half = width / 2.0;
        let (dx, dy) = (x1 - x0, y1 - y0);
        let len2 = dx * dx + dy * dy;
        let pad = half + 1.0;
        let (xmin, xmax) = (x0.min(x1) - pad, x0.max(x1) + pad);
        let (ymin, ymax) = (y0.min(y1) - pad, y0.max(y1) + pad);
        let (cx0, cy0, cx1, cy1) = self.clip;
        let xa = (xmin.floor() as i64).max(cx0);
        let xb = (xmax.ceil() as i64).min(cx1 - 1);
        let ya = (ymin.floor() as i64).max(cy0);
        let yb = (ymax.ceil() as i64).min(cy1 - 1);
        for y in ya..=yb {
            for x in xa..=xb {
                let (px, py) = (x as f64, y as f64);
                // Distance from the pixel centre to the segment.
                let t = if len2 > 0.0 {
                    (((px - x0) * dx + (py - y0) * dy) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let (qx, qy) = (x0 + t * dx - px, y0 + t * dy - py);
                let d = (qx * qx + qy * qy).sqrt();
                let cov = (half + 0.5 - d).clamp(0.0, 1.0);
                self.blend(x, y, c, cov);
            }
        }
    }

    /// Filled disc of radius `r` around (cx, cy), anti-aliased.
    pub(super) fn disc(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        self.line(cx, cy, cx, cy, 2.0 * r, c);
    }

    /// Text with its top-left corner at (x, y).
    pub(super) fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.glyphs(s, scale, c, |gx, gy| (x + gx, y + gy));
    }

    /// Text centred horizontally on `cx`, top at `y`.
    pub(super) fn text_centered(&mut self, cx: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.text(cx - text_width(s, scale) / 2, y, s, scale, c);
    }

    /// Text ending at `xr`, top at `y`.
    pub(super) fn text_right(&mut self, xr: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.text(xr - text_width(s, scale), y, s, scale, c);
    }

    /// Text rotated 90° counter-clockwise (reading upwards): the text's top edge is at
    /// column `x`, and it is centred vertically on `cy`.
    pub(super) fn text_up_centered(&mut self, x: i64, cy: i64, s: &str, scale: i64, c: Rgb) {
        let bottom = cy + text_width(s, scale) / 2;
        self.glyphs(s, scale, c, |gx, gy| (x + gy, bottom - gx));
    }

    /// Text rotated 90° counter-clockwise whose end (last character) is at row `y_top`
    /// and whose top edge is at column `x`.
    pub(super) fn text_up_from(&mut self, x: i64, y_top: i64, s: &str, scale: i64, c: Rgb) {
        let bottom = y_top + text_width(s, scale);
        self.glyphs(s, scale, c, |gx, gy| (x + gy, bottom - gx));
    }

    /// Draw the ink pixels of `s`; `map` turns unrotated text coordinates (gx to the right,
    /// gy downwards, origin at the top-left of the text) into image coordinates.
    pub(super) fn glyphs(
        &mut self,
        s: &str,
        scale: i64,
        c: Rgb,
        map: impl Fn(i64, i64) -> (i64, i64),
    ) {
        for (i, ch) in s.chars().enumerate() {
            let (rows, drop) = glyph(ch);
            let ox = i as i64 * ADVANCE;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                        continue;
                    }
                    let gx = (ox + col) * scale;
                    let gy = (r as i64 + drop) * scale;
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let (x, y) = map(gx + sx, gy + sy);
                            self.set(x, y, c);
                        }
                    }
                }
            }
        }
    }

    /// Encode as an 8-bit RGB PNG.
    pub(super) fn to_png(&self, path: &Path) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let err = |e: png::EncodingError| Error::format(path, format!("cannot encode PNG: {e}"));
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_compression(png::Compression::Best);
            let mut writer = enc.write_header().map_err(err)?;
            writer.write_image_data(&self.px).map_err(err)?;
            writer.finish().map_err(err)?;
        }
        Ok(out)
    }

    /// Encode and write atomically to `path`.
    pub(super) fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png(path)?;
        atomic_write(path, &bytes)
    }
}
