// Loading, validating and writing job specs: YAML file -> JobSpec (with `--set` overrides), and
// JobSpec -> YAML (the resolved spec shipped to workers) or JSON (for tools).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ptrain/spec/job_spec.h"

namespace ptrain::spec {

// Specs are small; anything larger is refused before it is read.
inline constexpr int64_t kMaxSpecBytes = int64_t{1} << 20;

// Reads, parses and validates a spec file. `overrides` are `key.path=value` strings (`--set`);
// the value is YAML (`4`, `auto`, `[2, 2]`, `{type: sgd}`). Relative paths in the spec resolve
// against the file's folder. Throws ConfigError "file:line:col: key.path: what; hint".
JobSpec load_file(const std::string& path, const std::vector<std::string>& overrides = {});

// The same for a spec held in memory; `display_name` stands in for the file name in messages
// and `base_dir` for the file's folder.
JobSpec load_string(const std::string& yaml, const std::string& display_name,
                    const std::vector<std::string>& overrides = {},
                    const std::string& base_dir = ".");

// The resolved spec as YAML; load_string(to_yaml(s), ...) gives back a spec equal to `s`
// (source_path aside).
std::string to_yaml(const JobSpec& spec);
// The resolved spec as one JSON object (same keys as the YAML).
std::string to_json(const JobSpec& spec);
// The copies ptrain writes (job.yaml in run folders, what the coordinator hands out): like
// to_yaml, but every `env:` value is written as a `${KEY}` reference to the variable of the same
// name, which the workers have in their environment (the launcher exports it); a later load
// (`--resume`) needs those variables exported.
std::string to_yaml_redacted(const JobSpec& spec);
// The spec with every `env:` value replaced by `<redacted>` (for JSON copies: mlflow params).
JobSpec redact_env(JobSpec spec);

// Fingerprints of the parts of a spec a checkpoint depends on: "model" (the family and its
// keys), "data" (the data set, batch and split) and "train" (seed, precision, optimizer,
// schedule; not steps, log_every, eval_every or grad_accum). Independent of the mesh and the
// world size, so a checkpoint resumes under any parallel layout (and an elastic job that shrank).
// Stable across builds and machines (FNV-1a 64, hex).
std::map<std::string, std::string> fingerprints(const JobSpec& spec);

// The hosts of the job: read from nodes.hostfile when one is named (DeepSpeed/OpenMPI
// `host slots=N` lines, `#` comments), else nodes.hosts. Throws ConfigError with the
// hostfile's line numbers.
std::vector<HostSlots> resolve_hosts(const JobSpec& spec);
// Parses hostfile text; `display_name` is used in messages.
std::vector<HostSlots> parse_hostfile(const std::string& text, const std::string& display_name);

}  // namespace ptrain::spec
