//! Figures, drawn with plotters to PNG or SVG (chosen by the file extension).

use crate::theory::TheoryReport;
use anyhow::{bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Output format of a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Bitmap.
    Png,
    /// Vector.
    Svg,
}

impl Format {
    /// From the path's extension; anything but `.png` / `.svg` is an error.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => bail!("{}: the figure must end in .png or .svg", path.display()),
        }
    }
}

/// Draws the theory figure: fixed points against targets, entropies of SPO vs DPO,
/// convergence curves, and the finite-sample error against N.
pub fn theory_figure(report: &TheoryReport, path: &Path) -> Result<()> {
    let size = (1400, 1000);
    match Format::from_path(path)? {
        Format::Png => draw_theory(BitMapBackend::new(path, size).into_drawing_area(), report),
        Format::Svg => draw_theory(SVGBackend::new(path, size).into_drawing_area(), report),
    }
    .with_context(|| format!("drawing {}", path.display()))
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

fn draw_theory<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, report: &TheoryReport) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((2, 2));
    fixed_points(&panels[0], report)?;
    entropies(&panels[1], report)?;
    convergence(&panels[2], report)?;
    finite(&panels[3], report)?;
    root.present().map_err(err)
}

fn fixed_points<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &TheoryReport) -> Result<()> {
    let n = report.rewards.len();
    let ymax = report.spo.iter().flat_map(|r| r.pi.iter().chain(&r.target)).cloned().fold(0.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("Theorem 1: SPO fixed point (dots) vs softmax(r/α) (lines)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0.0..ymax.max(1e-3))
        .map_err(err)?;
    chart.configure_mesh().x_desc("response").y_desc("probability").draw().map_err(err)?;
    for (k, row) in report.spo.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                row.target.iter().enumerate().map(|(i, &p)| (i as f64, p)),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("α = {}", row.alpha))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(row.pi.iter().enumerate().map(|(i, &p)| Circle::new((i as f64, p), 5, color.filled())))
            .map_err(err)?;
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)
}

fn entropies<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &TheoryReport) -> Result<()> {
    let temps: Vec<f64> =
        report.spo.iter().map(|r| r.alpha).chain(report.dpo.iter().map(|r| r.beta)).filter(|t| *t > 0.0).collect();
    let (lo, hi) = temps.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &t| (a.min(t), b.max(t)));
    let (lo, hi) = if lo.is_finite() { (lo.log10() - 0.2, hi.log10() + 0.2) } else { (-1.0, 1.0) };
    let hmax = (report.rewards.len() as f64).ln() * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("Entropy of the fixed point: SPO keeps it, DPO loses it as β → 0", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(lo..hi, 0.0..hmax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("log10 temperature (α for SPO, β for DPO)")
        .y_desc("entropy (nats)")
        .draw()
        .map_err(err)?;
    let mut series: Vec<(String, Vec<(f64, f64)>)> = vec![
        (
            "SPO pref. only (vs α)".into(),
            report.spo.iter().filter(|r| r.alpha > 0.0).map(|r| (r.alpha.log10(), r.entropy)).collect(),
        ),
        ("DPO (vs β)".into(), report.dpo.iter().map(|r| (r.beta.log10(), r.entropy)).collect()),
    ];
    for beta in report.dpo.iter().map(|r| r.beta) {
        let pts = report
            .spo_kl
            .iter()
            .filter(|r| r.beta == beta && r.alpha > 0.0)
            .map(|r| (r.alpha.log10(), r.entropy))
            .collect();
        series.push((format!("SPO + {beta}·KL (vs α)"), pts));
    }
    for (k, (label, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    let href = report.reference_entropy;
    chart
        .draw_series(LineSeries::new([(lo, href), (hi, href)], BLACK.stroke_width(1)))
        .map_err(err)?
        .label("π_ref")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK));
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)
}

fn convergence<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &TheoryReport) -> Result<()> {
    let curves: Vec<_> = report.curves.iter().filter(|c| c.errors.len() > 1).collect();
    let len = curves.iter().map(|c| c.errors.len()).max().unwrap_or(2) as f64;
    let log = |g: f64| g.max(1e-17).log10();
    let top = curves.iter().flat_map(|c| c.errors.iter()).map(|&g| log(g)).fold(-6.0, f64::max) + 0.3;
    let mut chart = ChartBuilder::on(area)
        .caption("Gradient descent: different paths, one fixed point (Thm 1–2)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..len, -6.5..top)
        .map_err(err)?;
    chart.configure_mesh().x_desc("iteration").y_desc("log10 max |π − softmax(r/α)|").draw().map_err(err)?;
    for (k, c) in curves.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(
                c.errors.iter().enumerate().map(|(i, &g)| (i as f64, log(g))),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(err)
}

fn finite<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &TheoryReport) -> Result<()> {
    if report.finite.is_empty() {
        return Ok(());
    }
    let xs: Vec<f64> = report.finite.iter().map(|r| (r.n as f64).log10()).collect();
    let ys: Vec<f64> = report.finite.iter().map(|r| r.max_abs_err.max(1e-12).log10()).collect();
    let (x0, x1) = (xs[0] - 0.2, xs[xs.len() - 1] + 0.2);
    let (y0, y1) = ys.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| (a.min(y), b.max(y)));
    let mut chart = ChartBuilder::on(area)
        .caption(format!("Finite samples (α = {}): SGD error vs N", report.finite_alpha), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(x0..x1, (y0 - 0.5)..(y1 + 0.5))
        .map_err(err)?;
    chart.configure_mesh().x_desc("log10 N pairs").y_desc("log10 max |π − softmax(r/α)|").draw().map_err(err)?;
    let pts: Vec<(f64, f64)> = xs.into_iter().zip(ys).collect();
    chart.draw_series(LineSeries::new(pts.clone(), BLUE.stroke_width(2))).map_err(err)?;
    chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 5, BLUE.filled()))).map_err(err)?;
    Ok(())
}

/// One curve of the win-rate figure: `(step, win rate, interval low, interval high)`.
#[derive(Debug, Clone, PartialEq)]
pub struct WinRateCurve {
    /// Legend label (the run's name).
    pub label: String,
    /// Points by ascending step.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Draws win rate against training step for several runs, each with its 95%
/// interval as a shaded band and the 50% line for reference — the paper's Figure 1.
pub fn winrate_figure(curves: &[WinRateCurve], title: &str, path: &Path) -> Result<()> {
    let size = (1000, 640);
    match Format::from_path(path)? {
        Format::Png => draw_winrate(BitMapBackend::new(path, size).into_drawing_area(), curves, title),
        Format::Svg => draw_winrate(SVGBackend::new(path, size).into_drawing_area(), curves, title),
    }
    .with_context(|| format!("drawing {}", path.display()))
}

fn draw_winrate<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, curves: &[WinRateCurve], title: &str) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let xmax = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..xmax * 1.02, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("training step")
        .y_desc("win rate vs reference")
        .light_line_style(WHITE)
        .x_label_formatter(&|x: &f64| format!("{x:.0}"))
        .y_label_formatter(&|y: &f64| format!("{:.0}%", *y * 100.0))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new([(0.0, 0.5), (xmax * 1.02, 0.5)], BLACK.mix(0.5).stroke_width(1)))
        .map_err(err)?;
    for (k, c) in curves.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let band: Vec<(f64, f64)> =
            c.points.iter().map(|p| (p.0, p.2)).chain(c.points.iter().rev().map(|p| (p.0, p.3))).collect();
        chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.18).filled()))).map_err(err)?;
        let line: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, p.1)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(3)))
            .map_err(err)?
            .label(c.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(line.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}
