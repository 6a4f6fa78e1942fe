//! Small PNG charts (line chart, heatmap, bar chart) drawn in pure Rust with a built-in
//! 5×7 bitmap font, so no system fonts or plotting libraries are needed.
//!
//! Every chart is rendered into an RGB buffer, encoded with the `png` crate and written
//! atomically (temp file + rename): a reader never sees a half-written image.

use std::path::Path;

use crate::fsio::atomic_write;
use crate::{Error, Result};

/// An RGB color.
pub type Rgb = [u8; 3];

/// Color of all text (titles, labels, ticks, legends).
pub const TEXT_COLOR: Rgb = [0x20, 0x20, 0x20];
/// Background color.
pub const BACKGROUND: Rgb = [0xff, 0xff, 0xff];
/// Series / bar colors, in order (matplotlib's "tab10").
pub const PALETTE: [Rgb; 10] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x7f, 0x7f, 0x7f],
    [0xbc, 0xbd, 0x22],
    [0x17, 0xbe, 0xcf],
];
const AXIS_COLOR: Rgb = [0x40, 0x40, 0x40];
const GRID_COLOR: Rgb = [0xe4, 0xe4, 0xe4];
const MUTED_COLOR: Rgb = [0x90, 0x90, 0x90];
/// Heatmap cells holding NaN.
const NAN_COLOR: Rgb = [0xc8, 0xc8, 0xc8];

/// Size of line and bar charts.
pub const CHART_WIDTH: usize = 800;
pub const CHART_HEIGHT: usize = 500;

/// One line of a line chart: `(x, y)` points in drawing order. Non-finite points leave a
/// gap in the line.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Font: 5×7 glyphs for ASCII 32..=126, drawn by hand ('#' = ink). Lower-case letters with
// descenders (g p q y) are drawn 2 rows lower, so a text line is 9 rows tall.

const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
/// Horizontal advance per character (glyph + 1 column of spacing).
const ADVANCE: i64 = GLYPH_W + 1;
/// Height of a line of text: 7 rows + 2 rows of descender.
const TEXT_H: i64 = GLYPH_H + 2;

#[rustfmt::skip]
const GLYPHS: [[&str; 7]; 95] = [
    [".....", ".....", ".....", ".....", ".....", ".....", "....."], // ' '
    ["..#..", "..#..", "..#..", "..#..", "..#..", ".....", "..#.."], // !
    [".#.#.", ".#.#.", ".....", ".....", ".....", ".....", "....."], // "
    [".#.#.", ".#.#.", "#####", ".#.#.", "#####", ".#.#.", ".#.#."], // #
    ["..#..", ".####", "#.#..", ".###.", "..#.#", "####.", "..#.."], // $
    ["##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"], // %
    [".##..", "#..#.", "#.#..", ".#...", "#.#.#", "#..#.", ".##.#"], // &
    ["..#..", "..#..", ".#...", ".....", ".....", ".....", "....."], // '
    ["...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."], // (
    [".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."], // )
    [".....", "..#..", "#.#.#", ".###.", "#.#.#", "..#..", "....."], // *
    [".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."], // +
    [".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."], // ,
    [".....", ".....", ".....", "#####", ".....", ".....", "....."], // -
    [".....", ".....", ".....", ".....", ".....", ".##..", ".##.."], // .
    [".....", "....#", "...#.", "..#..", ".#...", "#....", "....."], // /
    [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."], // 0
    ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."], // 1
    [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"], // 2
    ["#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."], // 3
    ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."], // 4
    ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."], // 5
    ["..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."], // 6
    ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."], // 7
    [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."], // 8
    [".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."], // 9
    [".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."], // :
    [".....", ".##..", ".##..", ".....", ".##..", "..#..", ".#..."], // ;
    ["...#.", "..#..", ".#...", "#....", ".#...", "..#..", "...#."], // <
    [".....", ".....", "#####", ".....", "#####", ".....", "....."], // =
    [".#...", "..#..", "...#.", "....#", "...#.", "..#..", ".#..."], // >
    [".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."], // ?
    [".###.", "#...#", "....#", ".##.#", "#.#.#", "#.#.#", ".###."], // @
    [".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"], // A
    ["####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."], // B
    [".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."], // C
    ["###..", "#..#.", "#...#", "#...#", "#...#", "#..#.", "###.."], // D
    ["#####", "#....", "#....", "####.", "#....", "#....", "#####"], // E
    ["#####", "#....", "#....", "####.", "#....", "#....", "#...."], // F
    [".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"], // G
    ["#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"], // H
    [".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."], // I
    ["..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."], // J
    ["#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"], // K
    ["#....", "#....", "#....", "#....", "#....", "#....", "#####"], // L
    ["#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"], // M
    ["#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"], // N
    [".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."], // O
    ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."], // P
    [".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"], // Q
    ["####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"], // R
    [".####", "#....", "#....", ".###.", "....#", "....#", "####."], // S
    ["#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."], // T
    ["#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."], // U
    ["#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."], // V
    ["#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."], // W
    ["#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"], // X
    ["#...#", "#...#", "#...#", ".#.#.", "..#..", "..#..", "..#.."], // Y
    ["#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"], // Z
    [".###.", ".#...", ".#...", ".#...", ".#...", ".#...", ".###."], // [
    [".....", "#....", ".#...", "..#..", "...#.", "....#", "....."], // backslash
    [".###.", "...#.", "...#.", "...#.", "...#.", "...#.", ".###."], // ]
    ["..#..", ".#.#.", "#...#", ".....", ".....", ".....", "....."], // ^
    [".....", ".....", ".....", ".....", ".....", ".....", "#####"], // _
    [".#...", "..#..", "...#.", ".....", ".....", ".....", "....."], // `
    [".....", ".....", ".###.", "....#", ".####", "#...#", ".####"], // a
    ["#....", "#....", "#.##.", "##..#", "#...#", "#...#", "####."], // b
    [".....", ".....", ".###.", "#....", "#....", "#...#", ".###."], // c
    ["....#", "....#", ".##.#", "#..##", "#...#", "#...#", ".####"], // d
    [".....", ".....", ".###.", "#...#", "#####", "#....", ".###."], // e
    ["..##.", ".#..#", ".#...", "###..", ".#...", ".#...", ".#..."], // f
    [".####", "#...#", "#...#", ".####", "....#", "#...#", ".###."], // g (descender)
    ["#....", "#....", "#.##.", "##..#", "#...#", "#...#", "#...#"], // h
    ["..#..", ".....", ".##..", "..#..", "..#..", "..#..", ".###."], // i
    ["...#.", ".....", "..##.", "...#.", "...#.", "#..#.", ".##.."], // j
    ["#....", "#....", "#..#.", "#.#..", "##...", "#.#..", "#..#."], // k
    [".##..", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."], // l
    [".....", ".....", "##.#.", "#.#.#", "#.#.#", "#...#", "#...#"], // m
    [".....", ".....", "#.##.", "##..#", "#...#", "#...#", "#...#"], // n
    [".....", ".....", ".###.", "#...#", "#...#", "#...#", ".###."], // o
    ["####.", "#...#", "#...#", "####.", "#....", "#....", "#...."], // p (descender)
    [".####", "#...#", "#...#", ".####", "....#", "....#", "....#"], // q (descender)
    [".....", ".....", "#.##.", "##..#", "#....", "#....", "#...."], // r
    [".....", ".....", ".###.", "#....", ".###.", "....#", "####."], // s
    [".#...", ".#...", "###..", ".#...", ".#...", ".#..#", "..##."], // t
    [".....", ".....", "#...#", "#...#", "#...#", "#..##", ".##.#"], // u
    [".....", ".....", "#...#", "#...#", "#...#", ".#.#.", "..#.."], // v
    [".....", ".....", "#...#", "#...#", "#.#.#", "#.#.#", ".#.#."], // w
    [".....", ".....", "#...#", ".#.#.", "..#..", ".#.#.", "#...#"], // x
    ["#...#", "#...#", "#...#", "#..##", ".##.#", "....#", ".###."], // y (descender)
    [".....", ".....", "#####", "...#.", "..#..", ".#...", "#####"], // z
    ["...#.", "..#..", "..#..", ".#...", "..#..", "..#..", "...#."], // {
    ["..#..", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."], // |
    [".#...", "..#..", "..#..", "...#.", "..#..", "..#..", ".#..."], // }
    [".....", ".....", ".#...", "#.#.#", "...#.", ".....", "....."], // ~
];

/// The glyph rows of `c` (bit 4 = leftmost column) and its vertical offset in rows.
/// Characters outside ASCII 32..=126 are drawn as '?'.
fn glyph(c: char) -> ([u8; 7], i64) {
    let code = c as u32;
    let idx = if (32..=126).contains(&code) {
        (code - 32) as usize
    } else {
        ('?' as u32 - 32) as usize
    };
    let mut rows = [0u8; 7];
    for (r, line) in GLYPHS[idx].iter().enumerate() {
        rows[r] = line
            .bytes()
            .fold(0u8, |acc, b| (acc << 1) | u8::from(b == b'#'));
    }
    let drop = if matches!(c, 'g' | 'p' | 'q' | 'y') {
        2
    } else {
        0
    };
    (rows, drop)
}

/// Width in pixels of `s` drawn at `scale`.
fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 {
        0
    } else {
        (n * ADVANCE - 1) * scale
    }
}

/// `s` shortened with ".." so it fits in `max_w` pixels at `scale`.
fn fit_text(s: &str, max_w: i64, scale: i64) -> String {
    if text_width(s, scale) <= max_w {
        return s.to_string();
    }
    let max_chars = ((max_w / scale + 1) / ADVANCE).max(0) as usize;
    if max_chars <= 2 {
        return ".".repeat(max_chars.min(1));
    }
    let mut out: String = s.chars().take(max_chars - 2).collect();
    out.push_str("..");
    out
}

// ---------------------------------------------------------------------------------------
// Canvas

/// An RGB image `[height, width, 3]` with drawing primitives. Coordinates are pixels from
/// the top-left corner; everything drawn outside the image (or the clip rectangle) is
/// dropped.
struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
    /// Clip rectangle `[x0, y0, x1, y1)`.
    clip: (i64, i64, i64, i64),
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
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

    fn set_clip(&mut self, x0: i64, y0: i64, x1: i64, y1: i64) {
        self.clip = (x0.max(0), y0.max(0), x1.min(self.w), y1.min(self.h));
    }

    fn reset_clip(&mut self) {
        self.clip = (0, 0, self.w, self.h);
    }

    fn index(&self, x: i64, y: i64) -> Option<usize> {
        let (x0, y0, x1, y1) = self.clip;
        if x < x0 || y < y0 || x >= x1 || y >= y1 {
            return None;
        }
        Some(((y * self.w + x) * 3) as usize)
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if let Some(i) = self.index(x, y) {
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Blend `c` over the pixel with opacity `a` in [0, 1].
    fn blend(&mut self, x: i64, y: i64, c: Rgb, a: f64) {
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
    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.max(0)..y1.min(self.h) {
            for x in x0.max(0)..x1.min(self.w) {
                self.set(x, y, c);
            }
        }
    }

    /// 1-px outline of the rectangle `[x0, x1] × [y0, y1]` (inclusive corners).
    fn rect_outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.fill_rect(x0, y0, x1 + 1, y0 + 1, c);
        self.fill_rect(x0, y1, x1 + 1, y1 + 1, c);
        self.fill_rect(x0, y0, x0 + 1, y1 + 1, c);
        self.fill_rect(x1, y0, x1 + 1, y1 + 1, c);
    }

    /// Anti-aliased line of width `width` between pixel centres (x0, y0) and (x1, y1):
    /// every pixel is blended by its coverage, estimated from its distance to the segment.
    fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: f64, c: Rgb) {
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
    fn disc(&mut self, cx: f64, cy: f64, r: f64, c: Rgb) {
        self.line(cx, cy, cx, cy, 2.0 * r, c);
    }

    /// Text with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.glyphs(s, scale, c, |gx, gy| (x + gx, y + gy));
    }

    /// Text centred horizontally on `cx`, top at `y`.
    fn text_centered(&mut self, cx: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.text(cx - text_width(s, scale) / 2, y, s, scale, c);
    }

    /// Text ending at `xr`, top at `y`.
    fn text_right(&mut self, xr: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        self.text(xr - text_width(s, scale), y, s, scale, c);
    }

    /// Text rotated 90° counter-clockwise (reading upwards): the text's top edge is at
    /// column `x`, and it is centred vertically on `cy`.
    fn text_up_centered(&mut self, x: i64, cy: i64, s: &str, scale: i64, c: Rgb) {
        let bottom = cy + text_width(s, scale) / 2;
        self.glyphs(s, scale, c, |gx, gy| (x + gy, bottom - gx));
    }

    /// Text rotated 90° counter-clockwise whose end (last character) is at row `y_top`
    /// and whose top edge is at column `x`.
    fn text_up_from(&mut self, x: i64, y_top: i64, s: &str, scale: i64, c: Rgb) {
        let bottom = y_top + text_width(s, scale);
        self.glyphs(s, scale, c, |gx, gy| (x + gy, bottom - gx));
    }

    /// Draw the ink pixels of `s`; `map` turns unrotated text coordinates (gx to the right,
    /// gy downwards, origin at the top-left of the text) into image coordinates.
    fn glyphs(&mut self, s: &str, scale: i64, c: Rgb, map: impl Fn(i64, i64) -> (i64, i64)) {
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
    fn to_png(&self, path: &Path) -> Result<Vec<u8>> {
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
    fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png(path)?;
        atomic_write(path, &bytes)
    }
}

// ---------------------------------------------------------------------------------------
// Axes: nice tick values and their labels

/// The "nice" number (1, 2 or 5 times a power of ten) closest to `x` (Heckbert,
/// Graphics Gems 1990).
fn nice_num(x: f64) -> f64 {
    let p = 10f64.powf(x.log10().floor());
    let f = x / p;
    let nf = if f < 1.5 {
        1.0
    } else if f < 3.0 {
        2.0
    } else if f < 7.0 {
        5.0
    } else {
        10.0
    };
    nf * p
}

/// Axis range and ticks covering `[lo, hi]` with about `target` ticks.
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    step: f64,
}

impl Axis {
    /// Ticks at nice multiples of a nice step; the axis range is widened to whole steps.
    /// A degenerate range is widened around its value.
    fn nice(lo: f64, hi: f64, target: usize) -> Axis {
        let (mut lo, mut hi) = if lo.is_finite() && hi.is_finite() && lo <= hi {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        if hi - lo <= f64::EPSILON * lo.abs().max(hi.abs()).max(1e-300) {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_num((hi - lo) / (target.max(2) - 1) as f64);
        Axis {
            lo: (lo / step).floor() * step,
            hi: (hi / step).ceil() * step,
            step,
        }
    }

    /// Tick values from `lo` to `hi`.
    fn ticks(&self) -> Vec<f64> {
        let n = ((self.hi - self.lo) / self.step).round() as i64;
        (0..=n.clamp(0, 1000))
            .map(|i| {
                let v = self.lo + i as f64 * self.step;
                // Snap to the step grid so labels do not show float noise (or "-0").
                let v = (v / self.step).round() * self.step;
                if v.abs() < self.step * 1e-9 {
                    0.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// Ticks of this axis inside `[lo, hi]` (for a fixed range such as a color scale).
    fn ticks_within(&self, lo: f64, hi: f64) -> Vec<f64> {
        let eps = self.step * 1e-9;
        self.ticks()
            .into_iter()
            .filter(|v| *v >= lo - eps && *v <= hi + eps)
            .collect()
    }

    /// Position of `v` on a pixel span from `p0` (at `lo`) to `p1` (at `hi`).
    fn map(&self, v: f64, p0: f64, p1: f64) -> f64 {
        p0 + (v - self.lo) / (self.hi - self.lo) * (p1 - p0)
    }
}

/// Label for tick value `v` on an axis with tick spacing `step`: just enough decimals to
/// tell ticks apart, scientific notation for very large or small magnitudes.
fn format_tick(v: f64, step: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs();
    let step_exp = step.abs().log10().floor() as i32;
    if !(1e-4..1e6).contains(&mag) {
        let digits = ((mag.log10().floor() as i32) - step_exp).clamp(0, 6) as usize;
        let s = format!("{v:.digits$e}");
        // "1.5e-5" rather than "1.5e-05"-style or "1e0".
        return s;
    }
    let decimals = (-step_exp).clamp(0, 8) as usize;
    format!("{v:.decimals$}")
}

/// A value label with about 3 significant digits (bar annotations, heatmap cells).
fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs();
    if !(1e-3..1e6).contains(&mag) {
        return format!("{v:.2e}");
    }
    let decimals = (2 - mag.log10().floor() as i32).clamp(0, 5) as usize;
    let s = format!("{v:.decimals$}");
    // "0.05" rather than "0.0500", "12" rather than "12.0".
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------
// Line chart

/// Scale of titles; other text (labels, ticks, legend) uses [`LABEL_SCALE`].
const TITLE_SCALE: i64 = 2;
const LABEL_SCALE: i64 = 1;
const TICK_LEN: i64 = 4;

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
    let (w, h) = (CHART_WIDTH as i64, CHART_HEIGHT as i64);
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
    let ya = Axis::nice(y0, y1, 6);
    let y_ticks: Vec<(f64, String)> = ya
        .ticks()
        .into_iter()
        .map(|v| (v, format_tick(v, ya.step)))
        .collect();
    let x_ticks: Vec<(f64, String)> = xa
        .ticks()
        .into_iter()
        .map(|v| (v, format_tick(v, xa.step)))
        .collect();

    // Layout.
    let ls = LABEL_SCALE;
    let title_h = TEXT_H * TITLE_SCALE;
    let y_tick_w = y_ticks
        .iter()
        .map(|(_, s)| text_width(s, ls))
        .max()
        .unwrap_or(0);
    let left = 12 + TEXT_H * ls + 10 + y_tick_w + TICK_LEN + 4;
    let right = w - 24;
    let top = 14 + title_h + 16;
    let bottom = h - (12 + TEXT_H * ls + 10 + TEXT_H * ls + TICK_LEN + 4);

    cv.text_centered(
        w / 2,
        14,
        &fit_text(title, w - 20, TITLE_SCALE),
        TITLE_SCALE,
        TEXT_COLOR,
    );
    cv.text_centered(
        (left + right) / 2,
        h - 12 - TEXT_H * ls,
        &fit_text(x_label, right - left, ls),
        ls,
        TEXT_COLOR,
    );
    cv.text_up_centered(
        12,
        (top + bottom) / 2,
        &fit_text(y_label, bottom - top, ls),
        ls,
        TEXT_COLOR,
    );

    // Grid and ticks.
    let (fl, fr, ft, fb) = (left as f64, right as f64, top as f64, bottom as f64);
    for (v, label) in &y_ticks {
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
    cv.rect_outline(left, top, right, bottom, AXIS_COLOR);

    if !has_data {
        cv.text_centered(
            (left + right) / 2,
            (top + bottom) / 2 - 7,
            "no data",
            2,
            MUTED_COLOR,
        );
    }

    // Series, clipped to the plot frame.
    cv.set_clip(left + 1, top + 1, right, bottom);
    let to_px = |(x, y): (f64, f64)| (xa.map(x, fl, fr), ya.map(y, fb, ft));
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

// ---------------------------------------------------------------------------------------
// Heatmap

/// Piecewise-linear colormap through `stops` (t in [0, 1]).
fn colormap(stops: &[Rgb], t: f64) -> Rgb {
    let t = t.clamp(0.0, 1.0) * (stops.len() - 1) as f64;
    let i = (t.floor() as usize).min(stops.len() - 2);
    let f = t - i as f64;
    let (a, b) = (stops[i], stops[i + 1]);
    let mix = |k: usize| (a[k] as f64 + (b[k] as f64 - a[k] as f64) * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// Viridis, sampled at 9 points.
const VIRIDIS: [Rgb; 9] = [
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
const COOLWARM: [Rgb; 5] = [
    [59, 76, 192],
    [141, 176, 254],
    [221, 221, 221],
    [244, 154, 123],
    [180, 4, 38],
];

/// Color scale of a heatmap: diverging around 0 when the range spans 0 (cosine
/// similarities), sequential otherwise.
struct ColorScale {
    vmin: f64,
    vmax: f64,
}

impl ColorScale {
    fn diverging(&self) -> bool {
        self.vmin < 0.0 && self.vmax > 0.0
    }

    fn color(&self, v: f64) -> Rgb {
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

// ---------------------------------------------------------------------------------------
// Bar chart

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

/// Split `s` into at most `max_lines` lines of at most `max_w` px, breaking at spaces,
/// `-`, `_` or `/` where possible; the last line is shortened with ".." if needed.
fn wrap_label(s: &str, max_w: i64, scale: i64, max_lines: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest: &str = s.trim();
    while !rest.is_empty() && lines.len() + 1 < max_lines {
        if text_width(rest, scale) <= max_w {
            break;
        }
        let max_chars = ((max_w / scale + 1) / ADVANCE).max(1) as usize;
        // Last break opportunity within the first `max_chars` characters.
        let mut cut = None;
        for (ci, (bi, ch)) in rest.char_indices().enumerate() {
            // A space may sit just past the limit (it is not drawn); other break
            // characters stay on the first line.
            if ci > max_chars || (ci == max_chars && ch != ' ') {
                break;
            }
            if matches!(ch, ' ' | '-' | '_' | '/') && ci > 0 {
                cut = Some(if ch == ' ' { bi } else { bi + ch.len_utf8() });
            }
        }
        let cut = cut.unwrap_or_else(|| {
            rest.char_indices()
                .nth(max_chars)
                .map(|(b, _)| b)
                .unwrap_or(rest.len())
        });
        lines.push(rest[..cut].trim_end().to_string());
        rest = rest[cut..].trim_start();
    }
    if !rest.is_empty() || lines.is_empty() {
        lines.push(fit_text(rest, max_w, scale));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_printable_glyph_is_5x7() {
        for row in GLYPHS.iter() {
            for line in row {
                assert_eq!(line.len(), 5, "{row:?}");
                assert!(line.bytes().all(|b| b == b'#' || b == b'.'), "{row:?}");
            }
        }
        // Space is blank; every other printable character has ink.
        assert!(glyph(' ').0.iter().all(|r| *r == 0));
        for c in '!'..='~' {
            assert!(glyph(c).0.iter().any(|r| *r != 0), "{c:?} is blank");
        }
        assert_eq!(glyph('é'), glyph('?'));
    }

    #[test]
    fn nice_ticks() {
        let a = Axis::nice(0.0, 97.0, 6);
        assert_eq!((a.lo, a.hi, a.step), (0.0, 100.0, 20.0));
        assert_eq!(a.ticks(), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        let a = Axis::nice(0.312, 0.887, 6);
        assert_eq!(a.step, 0.1);
        assert!((a.lo - 0.3).abs() < 1e-12 && (a.hi - 0.9).abs() < 1e-12);
        let labels: Vec<String> = a.ticks().iter().map(|v| format_tick(*v, a.step)).collect();
        assert_eq!(labels, ["0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]);
        // Degenerate ranges widen.
        let a = Axis::nice(5.0, 5.0, 6);
        assert!(a.lo < 5.0 && a.hi > 5.0);
        let a = Axis::nice(0.0, 0.0, 6);
        assert!(a.lo < 0.0 && a.hi > 0.0);
        assert_eq!(format_tick(0.00002, 0.00001), "2e-5");
        assert_eq!(format_tick(2_000_000.0, 1_000_000.0), "2e6");
        assert_eq!(format_tick(-0.5, 0.5), "-0.5");
    }

    #[test]
    fn wrapping_and_fitting() {
        assert_eq!(fit_text("abcdef", text_width("abcdef", 1), 1), "abcdef");
        assert_eq!(fit_text("abcdefgh", text_width("abcde", 1), 1), "abc..");
        let l = wrap_label(
            "prompt tuning (100 tokens)",
            text_width("prompt tuning", 1),
            1,
            2,
        );
        assert_eq!(l[0], "prompt tuning");
        assert_eq!(l.len(), 2);
        assert_eq!(wrap_label("short", 100, 1, 2), vec!["short".to_string()]);
    }

    #[test]
    fn value_labels() {
        assert_eq!(format_value(0.874), "0.874");
        assert_eq!(format_value(0.05), "0.05");
        assert_eq!(format_value(12.0), "12");
        assert_eq!(format_value(-3.5), "-3.5");
        assert_eq!(format_value(1234.6), "1235");
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(2e-5), "2.00e-5");
        assert_eq!(format_value(f64::NAN), "n/a");
    }

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
