//! Charts of explanations and fairness audits: horizontal bars (a ranking,
//! or groups side by side per category), a beeswarm (every row's value per
//! feature, coloured by the feature's value) and a heatmap (stations by
//! features). SVG and PNG, with the embedded font (see [`crate::plot`]).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::plot::register_font;

/// Pixels per labelled row, plus room for the title and axis.
fn height(rows: usize) -> u32 {
    (140 + 34 * rows as u32).clamp(320, 2400)
}

/// Writes `<stem>.svg` and `<stem>.png` into `dir` with `draw`.
fn write_both(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    draw: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> Result<()>,
    draw_png: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let svg = dir.join(format!("{stem}.svg"));
    {
        let root = SVGBackend::new(&svg, size).into_drawing_area();
        draw(&root).with_context(|| format!("drawing {}", svg.display()))?;
        root.present()
            .map_err(|e| anyhow!("writing {}: {e}", svg.display()))?;
    }
    let png = dir.join(format!("{stem}.png"));
    let root = BitMapBackend::new(&png, size).into_drawing_area();
    draw_png(&root).with_context(|| format!("drawing {}", png.display()))?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", png.display()))
}

/// The y label of row `y` of `names` drawn bottom-up from the first name at
/// the top (labels only at whole rows).
fn row_label(names: &[String], y: f64) -> String {
    let r = y.round();
    if (y - r).abs() > 1e-6 || r < 0.0 {
        return String::new();
    }
    let i = names.len().checked_sub(1 + r as usize);
    i.and_then(|i| names.get(i)).cloned().unwrap_or_default()
}

/// Horizontal bars: one row per name, one bar per series in each row
/// (e.g. mean |SHAP| per group, or a fairness rate per group and level).
#[derive(Clone, Debug, PartialEq)]
pub struct Bars {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Row names, top to bottom.
    pub names: Vec<String>,
    /// `(label, one value per name)`; one series draws no legend.
    pub series: Vec<(String, Vec<f64>)>,
}

impl Bars {
    /// Writes `<stem>.svg` and `.png` into `dir`.
    pub fn write_both(&self, dir: &Path, stem: &str) -> Result<()> {
        let per_row = 22 + 9 * self.series.len().max(1) as u32;
        let size = (
            1200,
            (140 + per_row * self.names.len() as u32).clamp(320, 2400),
        );
        write_both(dir, stem, size, &|a| self.draw(a), &|a| self.draw(a))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let n = self.names.len();
        let values = self.series.iter().flat_map(|s| s.1.iter().copied());
        let (lo, hi) = values
            .filter(|v| v.is_finite())
            .fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-9);
        let label_width = self.names.iter().map(|s| s.len()).max().unwrap_or(4) as u32 * 8 + 20;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(label_width.min(420))
            .build_cartesian_2d(
                (lo - if lo < 0.0 { pad } else { 0.0 })..(hi + pad),
                -0.5..(n as f64 - 0.5),
            )
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n.max(1))
            .y_label_formatter(&|y| row_label(&self.names, *y))
            .x_desc(self.x_label.as_str())
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let k = self.series.len().max(1) as f64;
        let band = 0.8 / k;
        for (s, (label, vals)) in self.series.iter().enumerate() {
            let color = Palette99::pick(s).to_rgba();
            let bars = vals
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(i, &v)| {
                    let y = (n - 1 - i) as f64 + 0.4 - band * s as f64;
                    Rectangle::new([(0.0, y), (v, y - band * 0.9)], color.filled())
                });
            let drawn = chart.draw_series(bars).map_err(|e| anyhow!("{e}"))?;
            if self.series.len() > 1 {
                drawn.label(label.as_str()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled())
                });
            }
        }
        if self.series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.4))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }
}

/// One feature's row of a [`Beeswarm`]: `(value, colour in [0, 1])` per
/// explained row, the colour the feature's own (scaled) value.
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmRow {
    /// The feature.
    pub name: String,
    /// `(attribution, feature value in [0, 1])`.
    pub points: Vec<(f64, f64)>,
}

/// Every row's attribution per feature, features top to bottom, jittered
/// vertically where points crowd, blue (low feature value) to red (high).
#[derive(Clone, Debug, PartialEq)]
pub struct Beeswarm {
    /// Title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// The features, top to bottom.
    pub rows: Vec<SwarmRow>,
}

impl Beeswarm {
    /// Writes `<stem>.svg` and `.png` into `dir`.
    pub fn write_both(&self, dir: &Path, stem: &str) -> Result<()> {
        let size = (1200, height(self.rows.len()));
        write_both(dir, stem, size, &|a| self.draw(a), &|a| self.draw(a))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let names: Vec<String> = self.rows.iter().map(|r| r.name.clone()).collect();
        let n = names.len();
        let (lo, hi) = self
            .rows
            .iter()
            .flat_map(|r| r.points.iter().map(|p| p.0))
            .filter(|v| v.is_finite())
            .fold((0.0f64, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let pad = ((hi - lo) * 0.05).max(1e-9);
        let label_width = names.iter().map(|s| s.len()).max().unwrap_or(4) as u32 * 8 + 20;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(label_width.min(420))
            .build_cartesian_2d((lo - pad)..(hi + pad), -0.5..(n as f64 - 0.5))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n.max(1))
            .y_label_formatter(&|y| row_label(&names, *y))
            .x_desc(self.x_label.as_str())
            .label_style(("sans-serif", 14))
            .axis_desc_style(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        let zero = vec![(0.0, -0.5), (0.0, n as f64 - 0.5)];
        chart
            .draw_series(LineSeries::new(zero, BLACK.mix(0.5)))
            .map_err(|e| anyhow!("{e}"))?;
        let bins = 120.0;
        let width = (hi + pad - (lo - pad)).max(1e-12);
        for (i, row) in self.rows.iter().enumerate() {
            let y0 = (n - 1 - i) as f64;
            // Points in one x bin stack outwards from the row's centre.
            let mut stacked = std::collections::HashMap::<i64, usize>::new();
            let dots: Vec<_> = row
                .points
                .iter()
                .filter(|p| p.0.is_finite())
                .map(|&(x, c)| {
                    let bin = ((x - lo + pad) / width * bins) as i64;
                    let k = stacked.entry(bin).or_insert(0);
                    let side = if (*k).is_multiple_of(2) { 1.0 } else { -1.0 };
                    let dy = ((*k).div_ceil(2) as f64 * 0.04).min(0.42) * side;
                    *k += 1;
                    let c = if c.is_finite() {
                        c.clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                    let color = RGBColor(
                        (30.0 + 205.0 * c) as u8,
                        (90.0 - 40.0 * c) as u8,
                        (230.0 - 190.0 * c) as u8,
                    );
                    Circle::new((x, y0 + dy), 3, color.filled())
                })
                .collect();
            chart.draw_series(dots).map_err(|e| anyhow!("{e}"))?;
        }
        let (w, _) = root.dim_in_pixel();
        root.draw(&Text::new(
            "colour: feature value, blue low, red high",
            (w as i32 - 330, 30),
            ("sans-serif", 13),
        ))
        .map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }
}

/// A table of values as coloured cells (white 0 to dark at the maximum),
/// each cell labelled: stations by features, groups by metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    /// Title.
    pub title: String,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// Column names, left to right.
    pub columns: Vec<String>,
    /// `values[row][column]`.
    pub values: Vec<Vec<f64>>,
}

impl Heatmap {
    /// Writes `<stem>.svg` and `.png` into `dir`.
    pub fn write_both(&self, dir: &Path, stem: &str) -> Result<()> {
        // Column labels run horizontally: each column as wide as its label.
        let longest = self.columns.iter().map(|c| c.len()).max().unwrap_or(4) as u32;
        let w = (260 + (8 * longest + 16).max(80) * self.columns.len() as u32).clamp(700, 4000);
        let size = (w, height(self.rows.len()) + 40);
        write_both(dir, stem, size, &|a| self.draw(a), &|a| self.draw(a))
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        let (nr, nc) = (self.rows.len(), self.columns.len());
        let max = self
            .values
            .iter()
            .flatten()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let label_width = self.rows.iter().map(|s| s.len()).max().unwrap_or(4) as u32 * 8 + 20;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(label_width.min(360))
            .build_cartesian_2d(-0.5..(nc as f64 - 0.5), -0.5..(nr as f64 - 0.5))
            .map_err(|e| anyhow!("{e}"))?;
        let cols = self.columns.clone();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nc.max(1))
            .y_labels(nr.max(1))
            .x_label_formatter(&|x| {
                let r = x.round();
                if (x - r).abs() > 1e-6 || r < 0.0 {
                    String::new()
                } else {
                    cols.get(r as usize).cloned().unwrap_or_default()
                }
            })
            .y_label_formatter(&|y| row_label(&self.rows, *y))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
        for (i, row) in self.values.iter().enumerate() {
            let y = (nr - 1 - i) as f64;
            for (j, &v) in row.iter().enumerate() {
                let t = if max > 0.0 && v.is_finite() {
                    (v.abs() / max).min(1.0)
                } else {
                    0.0
                };
                let color = RGBColor(
                    (255.0 - 200.0 * t) as u8,
                    (255.0 - 150.0 * t) as u8,
                    (255.0 - 60.0 * t) as u8,
                );
                let x = j as f64;
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)],
                        color.filled(),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
                let text = if v.is_finite() {
                    format!("{v:.3}")
                } else {
                    "-".into()
                };
                let ink = if t > 0.6 { WHITE } else { BLACK };
                chart
                    .draw_series(std::iter::once(Text::new(
                        text,
                        (x - 0.3, y + 0.1),
                        ("sans-serif", 11).into_font().color(&ink),
                    )))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_write_svg_and_png_with_their_labels() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = ["hour", "area", "counts 1 block ago"]
            .map(String::from)
            .into();
        Bars {
            title: "mean |SHAP|".into(),
            x_label: "mean |SHAP value|".into(),
            names: names.clone(),
            series: vec![("all".into(), vec![0.3, 0.2, 0.1])],
        }
        .write_both(dir.path(), "bars")
        .unwrap();
        Beeswarm {
            title: "P(high risk)".into(),
            x_label: "SHAP value".into(),
            rows: names
                .iter()
                .map(|n| SwarmRow {
                    name: n.clone(),
                    points: (0..50)
                        .map(|i| (i as f64 / 50.0 - 0.5, i as f64 / 50.0))
                        .collect(),
                })
                .collect(),
        }
        .write_both(dir.path(), "swarm")
        .unwrap();
        Heatmap {
            title: "stations".into(),
            rows: vec!["Central".into(), "Newton".into()],
            columns: names.clone(),
            values: vec![vec![0.1, 0.2, f64::NAN], vec![0.0, 0.5, 0.25]],
        }
        .write_both(dir.path(), "heat")
        .unwrap();
        for (stem, needle) in [
            ("bars", "counts 1 block ago"),
            ("swarm", "area"),
            ("heat", "Newton"),
        ] {
            let svg = std::fs::read_to_string(dir.path().join(format!("{stem}.svg"))).unwrap();
            assert!(svg.contains(needle), "{stem}.svg lacks {needle}");
            let png = std::fs::read(dir.path().join(format!("{stem}.png"))).unwrap();
            assert_eq!(&png[1..4], b"PNG");
        }
    }

    #[test]
    fn row_labels_fall_on_whole_rows_top_down() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).into();
        assert_eq!(row_label(&names, 2.0), "a");
        assert_eq!(row_label(&names, 0.0), "c");
        assert_eq!(row_label(&names, 0.5), "");
        assert_eq!(row_label(&names, 3.0), "");
    }
}
