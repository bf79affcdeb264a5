//! Convergence plots: a test metric against round/epoch, optimizer steps,
//! samples processed, wall-clock time and bytes sent (the five ways to put
//! methods on an equal footing), one line per method, the naive baseline as
//! a dashed reference; drawn as a [`PanelPlot`], the grid of line charts
//! the parallelization study's plots use too.
//!
//! Written as SVG (text stays text) and PNG (rendered with the embedded DejaVu
//! Sans, so the picture is the same on a machine without fonts).

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans.LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// One measurement of a method's progress.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Round (federated) or epoch (centralized).
    pub step: f64,
    /// Optimizer steps so far (summed over stations).
    pub grad_steps: f64,
    /// Training samples processed so far (summed over stations).
    pub samples: f64,
    /// Seconds since the method started.
    pub wall_seconds: f64,
    /// Bytes sent over the network so far (0 for centralized methods).
    pub bytes: f64,
    /// The plotted metric.
    pub metric: f64,
}

/// A method's curve.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label, e.g. `fedavg` or `centralized`.
    pub method: String,
    /// Points in step order.
    pub points: Vec<Point>,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct ConvergencePlot<'a> {
    /// Title above the three panels.
    pub title: &'a str,
    /// Y axis label, e.g. `test macro-F1`.
    pub metric: &'a str,
    /// The curves.
    pub series: &'a [Series],
    /// A horizontal reference line: (label, value).
    pub baseline: Option<(&'a str, f64)>,
}

const SIZE: (u32, u32) = (1500, 900);

/// An x axis: its label and how to read it off a point.
type Axis = (&'static str, fn(&Point) -> f64);

pub(crate) fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the embedded DejaVu Sans font could not be loaded"));
    });
    result
}

impl ConvergencePlot<'_> {
    /// Writes the plot as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<()> {
        self.panels().write_svg(path)
    }

    /// Writes the plot as PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        self.panels().write_png(path)
    }

    /// The five panels: the metric against each x axis, on one y range.
    fn panels(&self) -> PanelPlot {
        let axes: [Axis; 5] = [
            ("round / epoch", |p| p.step),
            ("optimizer steps (all stations)", |p| p.grad_steps),
            ("samples processed (millions)", |p| p.samples / 1e6),
            ("wall-clock seconds", |p| p.wall_seconds),
            ("MB sent", |p| p.bytes / 1e6),
        ];
        let y_range = self.y_range();
        let panels = axes
            .into_iter()
            .map(|(x_label, x_of)| {
                // Methods that send nothing (centralized) have no place on the bytes axis.
                let mut lines: Vec<Line> = self
                    .series
                    .iter()
                    .filter(|s| x_label != "MB sent" || s.points.iter().any(|p| p.bytes > 0.0))
                    .map(|s| Line {
                        label: s.method.clone(),
                        points: s.points.iter().map(|p| (x_of(p), p.metric)).collect(),
                        dashed: false,
                    })
                    .collect();
                let x_hi = x_extent(&lines);
                if let Some((label, value)) = self.baseline {
                    lines.push(Line {
                        label: label.to_string(),
                        points: vec![(0.0, value), (x_hi, value)],
                        dashed: true,
                    });
                }
                Panel {
                    caption: String::new(),
                    x_label: x_label.to_string(),
                    y_label: self.metric.to_string(),
                    lines,
                    x_range: Some((0.0, x_hi)),
                    y_range: Some(y_range),
                    legend: Legend::LowerRight,
                }
            })
            .collect();
        PanelPlot {
            title: self.title.to_string(),
            grid: (2, 3),
            panels,
        }
    }

    /// The y range covering every finite value and the baseline, padded by 5%.
    fn y_range(&self) -> (f64, f64) {
        let values = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.metric))
            .chain(self.baseline.map(|(_, v)| v));
        padded_range(values)
    }
}

/// The range covering every finite value, padded by 5% (at least 1e-3);
/// `(0, 1)` when there is none.
fn padded_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// The x axis end covering every line's finite points from 0, 2% beyond
/// the largest (1 when there is none).
fn x_extent(lines: &[Line]) -> f64 {
    let x_hi = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    if x_hi > 0.0 {
        x_hi * 1.02
    } else {
        1.0
    }
}

/// A line of a [`Panel`]: points joined in order and marked with dots, or a
/// dashed grey reference (a naive baseline, ideal scaling) without dots.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    /// Legend label.
    pub label: String,
    /// `(x, y)` in drawing order; non-finite points are left out.
    pub points: Vec<(f64, f64)>,
    /// A dashed reference line.
    pub dashed: bool,
}

/// One chart of a [`PanelPlot`].
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Caption above the chart (none when empty).
    pub caption: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// The lines, solid ones coloured in order.
    pub lines: Vec<Line>,
    /// The x range; default from 0 to 2% past the largest x.
    pub x_range: Option<(f64, f64)>,
    /// The y range; default the values' range padded by 5%.
    pub y_range: Option<(f64, f64)>,
    /// The corner of the legend.
    pub legend: Legend,
}

/// Where a [`Panel`]'s legend goes: a corner the lines leave free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Legend {
    /// Lower right (curves that rise or fall from the upper left).
    #[default]
    LowerRight,
    /// Upper right (curves that fall).
    UpperRight,
    /// Upper left (curves that rise to the right).
    UpperLeft,
}

/// Charts on a grid under one title, as SVG and PNG: the convergence plot
/// and the parallelization study's plots.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelPlot {
    /// Title above the panels.
    pub title: String,
    /// Rows and columns of panels.
    pub grid: (usize, usize),
    /// The panels, row by row (fewer than the grid holds leaves cells empty).
    pub panels: Vec<Panel>,
}

impl PanelPlot {
    /// Writes the plot as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<()> {
        // Text is laid out (measured) with the font even when written as SVG.
        register_font()?;
        let root = SVGBackend::new(path, SIZE).into_drawing_area();
        self.draw(&root)
            .with_context(|| format!("drawing {}", path.display()))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))
    }

    /// Writes the plot as PNG.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        register_font()?;
        let root = BitMapBackend::new(path, SIZE).into_drawing_area();
        self.draw(&root)
            .with_context(|| format!("drawing {}", path.display()))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", path.display()))
    }

    /// Writes `<stem>.svg` and `<stem>.png` into `dir`.
    pub fn write_both(&self, dir: &Path, stem: &str) -> Result<()> {
        self.write_svg(&dir.join(format!("{stem}.svg")))?;
        self.write_png(&dir.join(format!("{stem}.png")))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let root = root
            .titled(&self.title, ("sans-serif", 22))
            .map_err(|e| anyhow!("{e}"))?;
        let cells = root.split_evenly(self.grid);
        for (cell, panel) in cells.iter().zip(&self.panels) {
            panel.draw(cell)?;
        }
        Ok(())
    }
}

impl Panel {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        let (x_lo, x_hi) = self.x_range.unwrap_or((0.0, x_extent(&self.lines)));
        let (y_lo, y_hi) = self.y_range.unwrap_or_else(|| {
            padded_range(self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))
        });
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60);
        if !self.caption.is_empty() {
            builder.caption(&self.caption, ("sans-serif", 16));
        }
        let mut chart = builder
            .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(self.y_label.as_str())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let mut solid = 0;
        for line in &self.lines {
            let pts: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            if line.dashed {
                let grey = RGBColor(110, 110, 110);
                chart
                    .draw_series(DashedLineSeries::new(pts, 6, 4, grey.stroke_width(2)))
                    .map_err(|e| anyhow!("{e}"))?
                    .label(line.label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(2))
                    });
                continue;
            }
            let color = Palette99::pick(solid).to_rgba();
            solid += 1;
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| anyhow!("{e}"))?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| anyhow!("{e}"))?;
        }
        chart
            .configure_series_labels()
            .position(match self.legend {
                Legend::LowerRight => SeriesLabelPosition::LowerRight,
                Legend::UpperRight => SeriesLabelPosition::UpperRight,
                Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
            })
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<Series> {
        let curve = |name: &str, bytes: f64| Series {
            method: name.to_string(),
            points: (1..=5)
                .map(|i| Point {
                    step: i as f64,
                    grad_steps: i as f64 * 10.0,
                    samples: i as f64 * 640.0,
                    wall_seconds: i as f64 * 0.5,
                    bytes: bytes * i as f64,
                    metric: 0.3 + 0.05 * i as f64,
                })
                .collect(),
        };
        vec![curve("fedavg", 1e6), curve("centralized", 0.0)]
    }

    #[test]
    fn writes_svg_and_png_with_every_method_and_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let series = series();
        let plot = ConvergencePlot {
            title: "risk / dnn",
            metric: "test macro-F1",
            series: &series,
            baseline: Some(("majority class", 0.2)),
        };
        let svg = dir.path().join("c.svg");
        let png = dir.path().join("c.png");
        plot.write_svg(&svg).unwrap();
        plot.write_png(&png).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        for needle in ["fedavg", "centralized", "majority class", "MB sent"] {
            assert!(text.contains(needle), "svg lacks {needle}");
        }
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 10_000, "png suspiciously small");
    }

    #[test]
    fn y_range_ignores_non_finite_values() {
        let mut s = series();
        s[0].points[0].metric = f64::NAN;
        let plot = ConvergencePlot {
            title: "t",
            metric: "m",
            series: &s,
            baseline: Some(("b", 0.1)),
        };
        let (lo, hi) = plot.y_range();
        assert!(lo < 0.1 && hi > 0.55 && hi < 0.6, "{lo} {hi}");
    }
}
