//! Axes: nice tick values (Heckbert, Graphics Gems 1990) and their labels.

/// The "nice" number (1, 2 or 5 times a power of ten) closest to `x` (Heckbert,
/// Graphics Gems 1990).
pub(super) fn nice_num(x: f64) -> f64 {
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
pub(super) struct Axis {
    pub(super) lo: f64,
    pub(super) hi: f64,
    pub(super) step: f64,
}

impl Axis {
    /// Ticks at nice multiples of a nice step; the axis range is widened to whole steps.
    /// A degenerate range is widened around its value.
    pub(super) fn nice(lo: f64, hi: f64, target: usize) -> Axis {
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
    pub(super) fn ticks(&self) -> Vec<f64> {
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
    pub(super) fn ticks_within(&self, lo: f64, hi: f64) -> Vec<f64> {
        let eps = self.step * 1e-9;
        self.ticks()
            .into_iter()
            .filter(|v| *v >= lo - eps && *v <= hi + eps)
            .collect()
    }

    /// Position of `v` on a pixel span from `p0` (at `lo`) to `p1` (at `hi`).
    pub(super) fn map(&self, v: f64, p0: f64, p1: f64) -> f64 {
        p0 + (v - self.lo) / (self.hi - self.lo) * (p1 - p0)
    }
}

/// Label for tick value `v` on an axis with tick spacing `step`: just enough decimals to
/// tell ticks apart, scientific notation for very large or small magnitudes.
pub(super) fn format_tick(v: f64, step: f64) -> String {
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
pub(super) fn format_value(v: f64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
