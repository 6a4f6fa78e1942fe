//! Small PNG charts (line chart, heatmap, bar chart) drawn in pure Rust with a built-in
//! 5×7 bitmap font, so no system fonts or plotting libraries are needed.
//!
//! Every chart is rendered into an RGB buffer, encoded with the `png` crate and written
//! atomically (temp file + rename): a reader never sees a half-written image.
//!
//! Files: `font.rs` (the glyphs and text layout), `canvas.rs` (an RGB image with drawing
//! primitives, saved as PNG), `axis.rs` (nice ticks and value labels), `frame.rs` (title, y axis
//! and plot rectangle of line and bar charts), and one file per
//! chart: `line.rs`, `heatmap.rs`, `bar.rs`.

mod axis;
mod bar;
mod canvas;
mod font;
mod frame;
mod heatmap;
mod line;

pub use bar::bar_chart;
pub use heatmap::heatmap;
pub use line::line_chart;

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
pub(super) const AXIS_COLOR: Rgb = [0x40, 0x40, 0x40];

pub(super) const GRID_COLOR: Rgb = [0xe4, 0xe4, 0xe4];

pub(super) const MUTED_COLOR: Rgb = [0x90, 0x90, 0x90];

/// Heatmap cells holding NaN.
pub(super) const NAN_COLOR: Rgb = [0xc8, 0xc8, 0xc8];

/// Size of line and bar charts.
pub const CHART_WIDTH: usize = 800;

pub const CHART_HEIGHT: usize = 500;
/// Scale of titles; other text (labels, ticks, legend) uses [`LABEL_SCALE`].
pub(super) const TITLE_SCALE: i64 = 2;

pub(super) const LABEL_SCALE: i64 = 1;

pub(super) const TICK_LEN: i64 = 4;

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
