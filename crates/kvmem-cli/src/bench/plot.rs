//! Bandwidth against block size: one panel for host memory and one for disk (their scales differ
//! by an order of magnitude), one solid line per path and pattern, its reference dashed and its
//! baseline (fio, or a single-threaded memcpy) dotted in the same colour. SVG, so no fonts or
//! system libraries are needed.

use super::report::{Point, Report};
use super::sweep::human;
use crate::error::{CliError, Result};
use plotters::prelude::*;
use std::path::Path;

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

pub fn draw(report: &Report, file: &Path) -> Result<()> {
    draw_inner(report, file)
        .map_err(|e| CliError::Bench(format!("cannot draw {}: {e}", file.display())))
}

fn pattern(p: &Point) -> String {
    format!("{:?}", p.pattern).to_lowercase()
}

fn draw_inner(report: &Report, file: &Path) -> DrawResult {
    let host: Vec<&Point> = report
        .points
        .iter()
        .filter(|p| p.path == "host->host")
        .collect();
    let disk: Vec<&Point> = report
        .points
        .iter()
        .filter(|p| p.path != "host->host")
        .collect();
    let panels: Vec<(&str, Vec<&Point>)> = [("host memory", host), ("disk (O_DIRECT)", disk)]
        .into_iter()
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let height = 480 * panels.len().max(1) as u32;
    let root = SVGBackend::new(file, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "kvmem bench: bandwidth vs block size — {} ({} cpus), {} runs per point",
        report.machine.cpu, report.machine.cpus, report.settings.iterations
    );
    let root = root.titled(&title, ("sans-serif", 20))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    for ((name, pts), area) in panels.iter().zip(areas.iter()) {
        panel(area, name, pts)?;
    }
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    name: &str,
    pts: &[&Point],
) -> DrawResult {
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
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(name, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(min_x - 0.5..max_x + 0.5, 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("block size")
        .y_desc("GiB/s")
        .x_labels(((max_x - min_x) as usize + 2).max(2))
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() < 1e-9 && *x >= 0.0 {
                human(1usize << (x.round() as u32))
            } else {
                String::new()
            }
        })
        .draw()?;

    let mut series: Vec<(&str, String)> = Vec::new();
    for p in pts {
        let key = (p.path, pattern(p));
        if !series.contains(&key) {
            series.push(key);
        }
    }
    for (i, (path, pat)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mine: Vec<&&Point> = pts
            .iter()
            .filter(|p| p.path == *path && pattern(p) == *pat)
            .collect();
        let line = |f: &dyn Fn(&Point) -> Option<f64>| -> Vec<(f64, f64)> {
            mine.iter()
                .filter_map(|p| Some((log2(p.block_bytes), f(p)?)))
                .collect()
        };
        let blocks = line(&|p| Some(p.gib_s));
        chart
            .draw_series(LineSeries::new(blocks.clone(), colour.stroke_width(2)))?
            .label(format!("{path} {pat}"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart.draw_series(
            blocks
                .iter()
                .map(|&(x, y)| Circle::new((x, y), 3, colour.filled())),
        )?;
        chart
            .draw_series(DashedLineSeries::new(
                line(&|p| Some(p.reference_gib_s)),
                6,
                4,
                colour.stroke_width(1),
            ))?
            .label(format!(
                "{path} {pat}: reference (one copy of the same bytes)"
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 8, y)], colour.stroke_width(1))
            });
        let baseline = line(&|p| {
            p.fio
                .as_ref()
                .and_then(|f| f.gib_s)
                .or(p.memcpy.as_ref().map(|m| m.gib_s))
        });
        if !baseline.is_empty() {
            let what = if mine.iter().any(|p| p.fio.is_some()) {
                "fio"
            } else {
                "one memcpy, one thread"
            };
            chart
                .draw_series(DashedLineSeries::new(
                    baseline.clone(),
                    2,
                    3,
                    colour.mix(0.7).stroke_width(1),
                ))?
                .label(format!("{path} {pat}: {what}"))
                .legend(move |(x, y)| Cross::new((x + 10, y), 3, colour.stroke_width(1)));
            chart.draw_series(
                baseline
                    .iter()
                    .map(|&(x, y)| Cross::new((x, y), 3, colour.stroke_width(1))),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}
