//! Bandwidth against block size, one line per path and pattern, the reference dashed and fio
//! dotted in the same colour. SVG, so no fonts or system libraries are needed.

use super::report::Report;
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

pub fn draw(report: &Report, file: &Path) -> Result<()> {
    draw_inner(report, file)
        .map_err(|e| CliError::Bench(format!("cannot draw {}: {e}", file.display())))
}

fn draw_inner(report: &Report, file: &Path) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pts = &report.points;
    let min_x = pts.iter().map(|p| p.block_bytes).min().unwrap_or(4096) as f64;
    let max_x = pts.iter().map(|p| p.block_bytes).max().unwrap_or(1 << 24) as f64;
    let max_y = pts
        .iter()
        .flat_map(|p| {
            [
                Some(p.gib_s),
                Some(p.reference_gib_s),
                p.fio.as_ref().and_then(|f| f.gib_s),
            ]
        })
        .flatten()
        .fold(0.1f64, f64::max)
        * 1.1;
    let root = SVGBackend::new(file, (1000, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "kvmem bench: bandwidth vs block size ({}, {} cpus)",
                report.machine.cpu, report.machine.cpus
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((min_x / 1.5..max_x * 1.5).log_scale(), 0.0..max_y)?;
    chart
        .configure_mesh()
        .x_desc("block size")
        .y_desc("GiB/s")
        .x_label_formatter(&|x| super::sweep::human(x.round() as usize))
        .draw()?;

    let mut series: Vec<(&str, String)> = Vec::new();
    for p in pts {
        let key = (p.path, format!("{:?}", p.pattern).to_lowercase());
        if !series.contains(&key) {
            series.push(key);
        }
    }
    for (i, (path, pattern)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mine: Vec<_> = pts
            .iter()
            .filter(|p| p.path == *path && format!("{:?}", p.pattern).to_lowercase() == *pattern)
            .collect();
        let line = |f: &dyn Fn(&super::report::Point) -> Option<f64>| -> Vec<(f64, f64)> {
            mine.iter()
                .filter_map(|p| Some((p.block_bytes as f64, f(p)?)))
                .collect()
        };
        let blocks = line(&|p| Some(p.gib_s));
        chart
            .draw_series(LineSeries::new(blocks.clone(), colour.stroke_width(2)))?
            .label(format!("{path} {pattern}"))
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
            .label(format!("{path} {pattern}: reference (one copy)"))
            .legend(move |(x, y)| {
                PathElement::new(
                    vec![(x, y), (x + 8, y), (x + 12, y), (x + 20, y)],
                    colour.stroke_width(1),
                )
            });
        let fio = line(&|p| p.fio.as_ref().and_then(|f| f.gib_s));
        if !fio.is_empty() {
            chart
                .draw_series(DashedLineSeries::new(
                    fio.clone(),
                    2,
                    3,
                    colour.mix(0.7).stroke_width(1),
                ))?
                .label(format!("{path} {pattern}: fio"))
                .legend(move |(x, y)| Cross::new((x + 10, y), 3, colour.stroke_width(1)));
            chart.draw_series(
                fio.iter()
                    .map(|&(x, y)| Cross::new((x, y), 3, colour.stroke_width(1))),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
