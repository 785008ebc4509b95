#include "svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace ptrain::launch::detail {
namespace {

// Colour-blind-safe palette (Okabe-Ito), then greys.
constexpr const char* kColors[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                   "#E69F00", "#56B4E9", "#F0E442", "#000000"};

std::string tick_text(double v, double step) {
  if (v == 0) return "0";
  double a = std::fabs(v);
  if (a >= 1e6 || a < 1e-3) return fmt::format("{:.2g}", v);
  // As many decimals as the tick step needs (2.5 -> 1, 0.25 -> 2), at most 6.
  int decimals = 0;
  while (decimals < 6) {
    double scaled = step * std::pow(10.0, decimals);
    if (std::fabs(scaled - std::round(scaled)) < 1e-6 * std::max(1.0, scaled)) break;
    ++decimals;
  }
  return fmt::format("{:.{}f}", v, decimals);
}

}  // namespace

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target) {
  if (!(hi > lo)) return {lo};
  double raw = (hi - lo) / std::max(1, target);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  std::vector<double> ticks;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step)
    ticks.push_back(std::fabs(t) < step * 1e-9 ? 0.0 : t);
  return ticks;
}

std::string render_chart(const Chart& c) {
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  size_t points = 0;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
      x0 = std::min(x0, s.x[i]), x1 = std::max(x1, s.x[i]);
      y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
      ++points;
    }
  if (points == 0) return "";
  for (const auto& m : c.markers) x0 = std::min(x0, m.x), x1 = std::max(x1, m.x);
  if (x1 <= x0) x0 -= 1, x1 += 1;
  if (y1 <= y0) {
    double pad = y0 == 0 ? 1 : std::fabs(y0) * 0.05;
    y0 -= pad, y1 += pad;
  } else {
    double pad = (y1 - y0) * 0.05;
    y1 += pad;
    y0 = y0 >= 0 && y0 - pad < 0 ? 0 : y0 - pad;
  }
  const double left = 64, right = 16, top = 30, bottom = 42;
  const double pw = c.width - left - right, ph = c.height - top - bottom;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
  auto py = [&](double y) { return top + (1 - (y - y0) / (y1 - y0)) * ph; };

  std::string o = fmt::format(
      "<svg id=\"{}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" "
      "width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"{}\">\n",
      html_escape(c.id), c.width, c.height, c.width, c.height, html_escape(c.title));
  o += fmt::format("<text class=\"title\" x=\"{}\" y=\"18\">{}</text>\n", left,
                   html_escape(c.title));
  o += fmt::format(
      "<rect class=\"plot\" x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#bbb\"/>\n",
      left, top, pw, ph);
  auto yt = nice_ticks(y0, y1, 5);
  double ystep = yt.size() > 1 ? yt[1] - yt[0] : 1;
  for (double t : yt) {
    double y = py(t);
    o += fmt::format(
        "<line class=\"grid\" x1=\"{}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#eee\"/><text class=\"tick\" x=\"{}\" y=\"{:.1f}\" "
        "text-anchor=\"end\">{}</text>\n",
        left, left + pw, y, y, left - 6, y + 4, tick_text(t, ystep));
  }
  auto xt = nice_ticks(x0, x1, 6);
  double xstep = xt.size() > 1 ? xt[1] - xt[0] : 1;
  for (double t : xt) {
    double x = px(t);
    o += fmt::format(
        "<line class=\"xtick\" x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" "
        "stroke=\"#bbb\"/><text class=\"tick\" x=\"{:.1f}\" y=\"{:.1f}\" "
        "text-anchor=\"middle\">{}</text>\n",
        x, x, top + ph, top + ph + 4, x, top + ph + 16, tick_text(t, xstep));
  }
  o += fmt::format("<text class=\"label\" x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
                   left + pw / 2, c.height - 6, html_escape(c.x_label));
  o += fmt::format(
      "<text class=\"label\" transform=\"translate(14 {:.1f}) rotate(-90)\" "
      "text-anchor=\"middle\">{}</text>\n",
      top + ph / 2, html_escape(c.y_label));
  for (const auto& m : c.markers) {
    double x = px(m.x);
    o += fmt::format(
        "<g class=\"marker\"><title>{}</title><line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" "
        "y2=\"{:.1f}\" stroke=\"#c00\" stroke-dasharray=\"4 3\"/><text x=\"{:.1f}\" y=\"{}\" "
        "class=\"mark\">{}</text></g>\n",
        html_escape(m.label), x, x, top, top + ph, x + 3, top + 10, html_escape(m.label));
  }
  for (size_t k = 0; k < c.series.size(); ++k) {
    const auto& s = c.series[k];
    const char* color = kColors[k % std::size(kColors)];
    std::string d;
    bool pen_down = false;
    size_t next_break = 0;
    size_t drawn = 0;
    for (size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
      while (next_break < s.breaks.size() && s.breaks[next_break] <= i) {
        if (s.breaks[next_break] == i) pen_down = false;
        ++next_break;
      }
      if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) {
        pen_down = false;
        continue;
      }
      d += fmt::format("{}{:.1f} {:.1f} ", pen_down ? "L" : "M", px(s.x[i]), py(s.y[i]));
      pen_down = true;
      ++drawn;
    }
    if (d.empty()) continue;
    d.pop_back();
    o += fmt::format(
        "<path class=\"series\" data-series=\"{}\" data-points=\"{}\" d=\"{}\" fill=\"none\" "
        "stroke=\"{}\" stroke-width=\"1.6\"/>\n",
        html_escape(s.name), drawn, d, color);
    // A single point draws no line: mark it.
    if (drawn == 1)
      for (size_t i = 0; i < s.x.size(); ++i)
        if (std::isfinite(s.x[i]) && std::isfinite(s.y[i]))
          o += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n",
                           px(s.x[i]), py(s.y[i]), color);
    o += fmt::format(
        "<g class=\"legend\"><rect x=\"{:.1f}\" y=\"{}\" width=\"148\" height=\"14\" "
        "fill=\"#fff\" fill-opacity=\"0.85\"/><line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{}\" "
        "y2=\"{}\" stroke=\"{}\" "
        "stroke-width=\"2\"/><text x=\"{:.1f}\" y=\"{}\">{}</text></g>\n",
        left + pw - 152, top + 5 + 14 * k, left + pw - 150, left + pw - 134, top + 12 + 14 * k,
        top + 12 + 14 * k, color, left + pw - 130, top + 16 + 14 * k, html_escape(s.name));
  }
  o += "</svg>\n";
  return o;
}

}  // namespace ptrain::launch::detail
