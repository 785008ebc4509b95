// Line charts as inline SVG for report.html (report.cc): axes with round ticks, one <path> per
// series (a series may break into segments, e.g. after a restart rewinds the steps), vertical
// markers (restarts) and a legend. No script, no external resource.
#pragma once

#include <string>
#include <vector>

namespace ptrain::launch::detail {

struct ChartSeries {
  std::string name;
  // Points in order; a segment ends where `breaks` says (indices where a new segment starts).
  std::vector<double> x, y;
  std::vector<size_t> breaks;
};

struct ChartMarker {
  double x = 0;
  std::string label;  // drawn at the top, and as the marker's <title>
};

struct Chart {
  std::string id;  // the svg element's id
  std::string title, x_label, y_label;
  std::vector<ChartSeries> series;
  std::vector<ChartMarker> markers;
  int width = 560, height = 260;
};

// Escapes & < > " ' for HTML text and attributes.
std::string html_escape(const std::string& s);

// "" when no series has a finite point.
std::string render_chart(const Chart& chart);

// Round tick positions covering [lo, hi] (about `target` of them) — exposed for the tests.
std::vector<double> nice_ticks(double lo, double hi, int target);

}  // namespace ptrain::launch::detail
