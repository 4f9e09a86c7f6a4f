//! The plot of a `kvmem replay --capacities` sweep: prefix hit rate against the host tier's
//! capacity, one solid line per policy, plain LRU at the same total capacity dashed, unlimited
//! capacity dotted; drawn as SVG and as PNG from one description.

use crate::bench::plot::{COLOURS, FONT, mesh, register_font};
use crate::error::{CliError, Result};
use crate::replay::{SweepPoint, SweepReport};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

const SIZE: (u32, u32) = (960, 560);

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws `report` as `svg` and a PNG beside it; returns both paths.
///
/// # Errors
/// [`CliError::Replay`] when a file cannot be written.
pub fn draw(report: &SweepReport, svg: &Path) -> Result<[PathBuf; 2]> {
    let png = svg.with_extension("png");
    let failed = |file: &Path, e: Box<dyn std::error::Error>| {
        CliError::Replay(format!("cannot draw {}: {e}", file.display()))
    };
    register_font();
    draw_on(SVGBackend::new(svg, SIZE).into_drawing_area(), report).map_err(|e| failed(svg, e))?;
    draw_on(BitMapBackend::new(&png, SIZE).into_drawing_area(), report)
        .map_err(|e| failed(&png, e))?;
    Ok([svg.to_path_buf(), png])
}

fn draw_on<DB>(root: DrawingArea<DB, Shift>, r: &SweepReport) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let x = |blocks: usize| blocks.max(1) as f64;
    let (lo, hi) = r
        .points
        .iter()
        .map(|p| x(p.host_blocks))
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let (lo, hi) = if lo > hi { (1.0, 2.0) } else { (lo, hi) };
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "prefix hit rate against host capacity ({} requests, {} B blocks)",
                r.requests, r.block_bytes
            ),
            (FONT, 18),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d((lo * 0.85..hi * 1.15).log_scale(), 0.0..100.0)?;
    mesh(&mut chart, "host tier, blocks", "prefix hit rate, %")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let mut policies: Vec<&str> = Vec::new();
    for p in &r.points {
        if !policies.contains(&p.policy.as_str()) {
            policies.push(&p.policy);
        }
    }
    for (i, policy) in policies.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<(f64, f64)> = r
            .points
            .iter()
            .filter(|p| p.policy == *policy)
            .map(|p| (x(p.host_blocks), p.hit_rate * 100.0))
            .collect();
        chart
            .draw_series(LineSeries::new(line.clone(), colour.stroke_width(2)))?
            .label(*policy)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
        chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }
    // The references do not depend on the policy: take them from the first policy's points.
    let first: Vec<_> = r
        .points
        .iter()
        .filter(|p| policies.first().is_some_and(|f| p.policy == *f))
        .collect();
    let grey = RGBColor(90, 90, 90);
    // (label, hit rate, dash and gap, line, legend)
    type Reference = (
        &'static str,
        fn(&SweepPoint) -> f64,
        (i32, i32),
        ShapeStyle,
        ShapeStyle,
    );
    let references: [Reference; 2] = [
        (
            "plain LRU, same total capacity",
            |p| p.lru_hit_rate,
            (8, 5),
            grey.stroke_width(2),
            grey.stroke_width(1),
        ),
        (
            "unlimited capacity",
            |p| p.infinite_hit_rate,
            (2, 4),
            BLACK.stroke_width(1),
            BLACK.stroke_width(1),
        ),
    ];
    for (label, rate, (dash, gap), line, legend) in references {
        chart
            .draw_series(DashedLineSeries::new(
                first.iter().map(|p| (x(p.host_blocks), rate(p) * 100.0)),
                dash,
                gap,
                line,
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], legend));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(grey)
        .draw()?;
    root.present()?;
    Ok(())
}
