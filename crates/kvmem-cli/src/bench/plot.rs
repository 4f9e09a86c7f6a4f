//! Bandwidth against block size, one panel per path family (host memory, disk, NIXL, GPU: their
//! scales differ by orders of magnitude), drawn twice from one description: SVG for browsers
//! and PNG for anything else. In a panel each path and pattern is one colour: the block
//! transfer solid, its reference (one copy of the same bytes) dashed, its baseline (fio, or a
//! single-threaded memcpy) dotted with crosses. The legend sits beside the plot.

use super::report::{Point, Report};
use super::sweep::human;
use crate::error::{CliError, Result};
use plotters::chart::MeshStyle;
use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

/// Ten colours that stay apart on white (the usual categorical palette).
pub(crate) const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];
/// The image's width; each panel is [`PANEL_HEIGHT`] high.
const WIDTH: u32 = 1280;
const PANEL_HEIGHT: u32 = 440;
const TITLE_HEIGHT: u32 = 40;
/// Width of the legend beside each panel's plot.
const LEGEND_WIDTH: u32 = 400;
pub(crate) const FONT: &str = "sans-serif";

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// A panel's name and which paths it holds.
type Family = (&'static str, fn(&str) -> bool);

/// The path families, one panel each, in drawing order.
const FAMILIES: [Family; 4] = [
    ("host memory", |p| p == "host->host"),
    ("disk (O_DIRECT)", |p| p.contains("disk")),
    ("NIXL (UCX)", |p| {
        p.starts_with("nixl-") || p.starts_with("remote-")
    }),
    ("GPU (pinned and device memory)", |p| {
        p.contains("device") || p.contains("pinned")
    }),
];

/// Draws `report` as `stem.svg` and `stem.png`; returns both paths.
pub fn draw(report: &Report, svg: &Path) -> Result<[std::path::PathBuf; 2]> {
    let png = svg.with_extension("png");
    let failed = |file: &Path, e: Box<dyn std::error::Error>| {
        CliError::Bench(format!("cannot draw {}: {e}", file.display()))
    };
    let panels = panels(report);
    let size = (
        WIDTH,
        TITLE_HEIGHT + PANEL_HEIGHT * panels.len().max(1) as u32,
    );
    register_font();
    draw_on(
        SVGBackend::new(svg, size).into_drawing_area(),
        report,
        &panels,
    )
    .map_err(|e| failed(svg, e))?;
    draw_on(
        BitMapBackend::new(&png, size).into_drawing_area(),
        report,
        &panels,
    )
    .map_err(|e| failed(&png, e))?;
    Ok([svg.to_path_buf(), png])
}

/// The mesh of a chart, in the plots' style: axes named `x` and `y`, labels in [`FONT`].
pub(crate) fn mesh<'a, 'b, DB, XT, YT, X, Y>(
    chart: &'b mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    x: &str,
    y: &str,
) -> MeshStyle<'a, 'b, X, Y, DB>
where
    DB: DrawingBackend,
    X: Ranged<ValueType = XT> + ValueFormatter<XT>,
    Y: Ranged<ValueType = YT> + ValueFormatter<YT>,
{
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x)
        .y_desc(y)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15));
    mesh
}

/// Text needs a font: the bitmap backend draws it with this one, built into the binary, so the
/// PNG looks the same on a machine without fonts.
pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        )
        .is_err()
        {
            tracing::warn!("the plot's font did not load; the PNG will have no text");
        }
    });
}

/// The non-empty families and their points.
fn panels(report: &Report) -> Vec<(&'static str, Vec<&Point>)> {
    let mut panels: Vec<(&'static str, Vec<&Point>)> = FAMILIES
        .iter()
        .map(|(name, _)| (*name, Vec::new()))
        .collect();
    for p in &report.points {
        // A path no family claims goes to the last panel rather than nowhere.
        let i = FAMILIES
            .iter()
            .position(|(_, member)| member(p.path))
            .unwrap_or(FAMILIES.len() - 1);
        panels[i].1.push(p);
    }
    panels.retain(|(_, pts)| !pts.is_empty());
    panels
}

fn pattern(p: &Point) -> String {
    format!("{:?}", p.pattern).to_lowercase()
}

fn draw_on<DB>(
    root: DrawingArea<DB, Shift>,
    report: &Report,
    panels: &[(&'static str, Vec<&Point>)],
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    title.draw(&Text::new(
        format!(
            "kvmem bench: bandwidth vs block size on {} ({} cpus), median of {} runs per point",
            report.machine.cpu, report.machine.cpus, report.settings.iterations
        ),
        (16, 10),
        (FONT, 20).into_font(),
    ))?;
    if panels.is_empty() {
        body.draw(&Text::new(
            "no points were measured",
            (16, 10),
            (FONT, 16).into_font(),
        ))?;
    }
    let areas = body.split_evenly((panels.len().max(1), 1));
    for ((name, pts), area) in panels.iter().zip(areas.iter()) {
        panel(area, name, pts)?;
    }
    root.present()?;
    Ok(())
}

/// The series of a panel: (path, pattern), in the order the points came.
fn series(pts: &[&Point]) -> Vec<(&'static str, String)> {
    let mut series: Vec<(&'static str, String)> = Vec::new();
    for p in pts {
        let key = (p.path, pattern(p));
        if !series.contains(&key) {
            series.push(key);
        }
    }
    series
}

fn panel<DB>(area: &DrawingArea<DB, Shift>, name: &str, pts: &[&Point]) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let (plot, legend_area) = area.split_horizontally(WIDTH - LEGEND_WIDTH);
    let log2 = |b: usize| (b as f64).log2();
    let min_x = pts
        .iter()
        .map(|p| log2(p.block_bytes))
        .fold(f64::MAX, f64::min);
    let max_x = pts
        .iter()
        .map(|p| log2(p.block_bytes))
        .fold(f64::MIN, f64::max);
    let max_y = pts
        .iter()
        .flat_map(|p| {
            [
                Some(p.gib_s),
                Some(p.reference_gib_s),
                p.fio.as_ref().and_then(|f| f.gib_s),
                p.memcpy.as_ref().map(|m| m.gib_s),
            ]
        })
        .flatten()
        .fold(0.1f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&plot)
        .caption(name, (FONT, 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(min_x - 0.3..max_x + 0.3, 0.0..max_y)?;
    mesh(&mut chart, "block size", "GiB/s")
        .x_labels(((max_x - min_x) as usize + 2).max(2))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 0.0 {
                human(1usize << (x.round() as u32))
            } else {
                String::new()
            }
        })
        .draw()?;

    let series = series(pts);
    let mut has_baseline = None;
    let mut methods: Vec<&str> = Vec::new();
    for (i, (path, pat)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mine: Vec<&&Point> = pts
            .iter()
            .filter(|p| p.path == *path && pattern(p) == *pat)
            .collect();
        for p in &mine {
            if !methods.contains(&p.reference_method) {
                methods.push(p.reference_method);
            }
        }
        let line = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
            mine.iter()
                .filter_map(|p| Some((log2(p.block_bytes), f(p)?)))
                .collect()
        };
        let blocks = line(&|p| Some(p.gib_s));
        chart.draw_series(LineSeries::new(blocks.clone(), colour.stroke_width(2)))?;
        chart.draw_series(
            blocks
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
        )?;
        chart.draw_series(DashedLineSeries::new(
            line(&|p| Some(p.reference_gib_s)),
            8,
            5,
            colour.stroke_width(1),
        ))?;
        let baseline = line(&|p| {
            p.fio
                .as_ref()
                .and_then(|f| f.gib_s)
                .or(p.memcpy.as_ref().map(|m| m.gib_s))
        });
        if !baseline.is_empty() {
            has_baseline = Some(if mine.iter().any(|p| p.fio.is_some()) {
                "fio, same block size, pattern and queue depth"
            } else {
                "one memcpy on one thread"
            });
            chart.draw_series(DashedLineSeries::new(
                baseline.clone(),
                2,
                3,
                colour.mix(0.8).stroke_width(1),
            ))?;
            chart.draw_series(
                baseline
                    .iter()
                    .map(|&(x, y)| Cross::new((x, y), 3, colour.stroke_width(1))),
            )?;
        }
    }
    legend(&legend_area, &series, &methods, has_baseline)
}

/// The legend beside a panel: one entry per series (its colour), then what the line styles mean.
fn legend<DB>(
    area: &DrawingArea<DB, Shift>,
    series: &[(&'static str, String)],
    methods: &[&str],
    baseline: Option<&str>,
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let font = (FONT, 14).into_font();
    let small = (FONT, 12).into_font();
    let grey = RGBColor(60, 60, 60);
    let row = 19;
    let mut y = 40;
    let x = 8;
    let text = |area: &DrawingArea<DB, Shift>, s: String, y: i32, f: &FontDesc| {
        area.draw(&Text::new(s, (x + 42, y - 7), f.clone()))
    };
    for (i, (path, pat)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        area.draw(&PathElement::new(
            vec![(x, y), (x + 32, y)],
            colour.stroke_width(2),
        ))?;
        area.draw(&Circle::new((x + 16, y), 3, colour.filled()))?;
        text(area, format!("{path} {pat}"), y, &font)?;
        y += row;
    }
    y += row / 2;
    area.draw(&PathElement::new(
        vec![(x, y), (x + 32, y)],
        grey.stroke_width(2),
    ))?;
    text(area, "block transfer (planning included)".into(), y, &small)?;
    y += row;
    for dash in [0, 12, 24] {
        area.draw(&PathElement::new(
            vec![(x + dash, y), (x + dash + 7, y)],
            grey.stroke_width(1),
        ))?;
    }
    let how = match methods {
        [one] => format!("reference: {one}"),
        _ => "reference: one copy of the same bytes".to_string(),
    };
    text(area, how, y, &small)?;
    if let Some(b) = baseline {
        y += row;
        for dot in [0, 6, 12, 18, 24, 30] {
            area.draw(&PathElement::new(
                vec![(x + dot, y), (x + dot + 2, y)],
                grey.stroke_width(1),
            ))?;
        }
        area.draw(&Cross::new((x + 16, y), 3, grey.stroke_width(1)))?;
        text(area, format!("baseline: {b}"), y, &small)?;
    }
    Ok(())
}
