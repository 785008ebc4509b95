// report.html: one self-contained page about a run (no script, no network: inline SVG charts and
// a Content-Security-Policy that forbids fetches) with the spec, the mesh, loss and eval curves,
// throughput, step time, memory, communication and pipeline-bubble figures, restarts marked on
// every curve, and the root cause when the run failed. Written by `ptrain report` and at the end
// of every run (RunDir::write_file of summary.json).
#pragma once

#include <string>

namespace ptrain::launch {

// Reads RUN_DIR's job.yaml, metrics.jsonl, summary.json and writes RUN_DIR/report.html; returns
// its path. Throws ConfigError (one line) when the folder is not a run (no job.yaml,
// launcher.log or metrics.jsonl) or has no metrics.
std::string write_report(const std::string& run_dir);

// The page's HTML (write_report without the writing).
std::string render_report(const std::string& run_dir);

}  // namespace ptrain::launch
