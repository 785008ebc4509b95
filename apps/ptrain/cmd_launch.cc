// `ptrain launch job.yaml [--hosts a:4,b:4 | --hostfile FILE | --slurm] [--ssh-config FILE]`:
// runs a job across SSH hosts (an agent per host, the coordinator here) and exits with its status.
// `ptrain launch --resume RUN_DIR [--hosts ...]` continues a run that ended in the same folder
// (its job.yaml plus the overrides; the hosts from the flags, else the ones it ran on).
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "command.h"
#include "ptrain/core/error.h"
#include "ptrain/launch/hosts.h"
#include "ptrain/launch/job_tls.h"
#include "ptrain/launch/process.h"
#include "ptrain/launch/slurm.h"
#include "ptrain/launch/ssh_launcher.h"
#include "ptrain/spec/plan.h"
#include "ptrain/spec/spec.h"

namespace ptrain::cli {
namespace {

struct LaunchArgs {
  std::string spec_path;
  std::vector<std::string> overrides;
  std::string hosts, hostfile, ssh_config;
  bool slurm = false;
  bool dry_run = false;
  std::string resume_dir;
};

Action setup_launch(CLI::App& sub) {
  auto args = std::make_shared<LaunchArgs>();
  sub.add_option("spec", args->spec_path, "Job spec (YAML)");
  sub.add_option("--resume", args->resume_dir,
                 "Continue the run in RUN_DIR (its job.yaml, its checkpoints)");
  sub.add_option("--set", args->overrides, "Override a spec key: --set train.steps=10")
      ->allow_extra_args(false);
  auto* hosts = sub.add_option("--hosts", args->hosts, "Hosts and slots: a:4,b:4");
  auto* hostfile =
      sub.add_option("--hostfile", args->hostfile, "Hostfile (`host slots=N` per line)");
  auto* slurm = sub.add_flag("--slurm", args->slurm,
                             "Inside a Slurm allocation: one `ptrain node` per node with srun");
  hosts->excludes(hostfile)->excludes(slurm);
  hostfile->excludes(slurm);
  sub.add_option("--ssh-config", args->ssh_config, "ssh_config file for every ssh call (-F)");
  sub.add_flag("--dry-run", args->dry_run, "Validate and print the plan and hosts only");
  return [args] {
    if (!args->resume_dir.empty()) {
      if (!args->spec_path.empty())
        throw ConfigError("give either a job spec or --resume RUN_DIR, not both",
                          "--resume reuses RUN_DIR/job.yaml; change it with --set key=value");
      args->spec_path = args->resume_dir + "/job.yaml";
      if (!std::filesystem::is_regular_file(args->spec_path))
        throw ConfigError(fmt::format("--resume {}: no job.yaml there", args->resume_dir),
                          "name a run folder written by `ptrain launch` (runs/<name>-<time>/)");
    } else if (args->spec_path.empty()) {
      throw ConfigError("no job spec given",
                        "ptrain launch job.yaml --hosts ..., or ptrain launch --resume RUN_DIR");
    }
    // Slurm: srun starts `ptrain node` on every node of the allocation (no ssh).
    if (args->slurm && !args->dry_run) {
      // rendezvous.tls: the nodes of an allocation are not loopback, so auto means on, as for
      // `ptrain submit`: a job certificate in a private folder under logging.dir (which every
      // node must see, as for checkpoints), removed once srun returns; made only once
      // slurm_launch found the allocation and srun.
      auto make_tls = [&]() -> std::string {
        const char* job = std::getenv("SLURM_JOB_ID");
        const char* list = std::getenv("SLURM_JOB_NODELIST");
        std::vector<std::string> o = args->overrides;
        std::string hosts;
        const size_t n = launch::expand_slurm_nodelist(list ? list : "").size();
        for (size_t i = 0; i < n; ++i) hosts += fmt::format("{}\"node-{}\"", i ? ", " : "", i);
        o.push_back("nodes.hosts=[" + hosts + "]");
        spec::JobSpec spec = spec::load_file(args->spec_path, o);
        if (spec.rendezvous.tls == "off") return {};
        std::error_code ec;
        const auto root = std::filesystem::absolute(spec.logging.dir, ec);
        std::filesystem::create_directories(root, ec);
        std::string dir =
            (root / fmt::format(".tls-slurm-{}-{}", job ? job : "0", ::getpid())).string();
        launch::init_tls_dir(dir);
        return dir;
      };
      return launch::slurm_launch(launch::this_executable(), args->spec_path, args->overrides,
                                  make_tls);
    }
    // The hosts replace nodes.hosts before the spec is validated, so that the mesh is checked
    // against them.
    std::vector<spec::HostSlots> host_list;
    if (!args->hosts.empty()) {
      host_list = launch::parse_hosts_flag(args->hosts);
    } else if (!args->hostfile.empty()) {
      std::ifstream in(args->hostfile);
      if (!in)
        throw ConfigError(fmt::format("--hostfile: cannot read {}", args->hostfile),
                          "give a file with one `host slots=N` line per host");
      std::stringstream text;
      text << in.rdbuf();
      host_list = spec::parse_hostfile(text.str(), args->hostfile);
    } else if (args->slurm) {
      host_list = launch::slurm_hosts();
    }
    std::vector<std::string> overrides = args->overrides;
    auto hosts_override = [](const std::vector<spec::HostSlots>& hosts) {
      std::string list;
      for (const auto& h : hosts)
        list += fmt::format("{}\"{}{}\"", list.empty() ? "" : ", ", h.host,
                            h.slots ? ":" + std::to_string(h.slots) : "");
      return "nodes.hosts=[" + list + "]";
    };
    if (!host_list.empty()) overrides.push_back(hosts_override(host_list));
    spec::JobSpec spec = spec::load_file(args->spec_path, overrides);
    if (host_list.empty() && !spec.nodes.hostfile.empty()) {
      // The spec names a hostfile: its hosts stand in for nodes.hosts.
      host_list = spec::resolve_hosts(spec);
      overrides.push_back(hosts_override(host_list));
      overrides.push_back("nodes.hostfile=\"\"");
      spec = spec::load_file(args->spec_path, overrides);
    }
    if (host_list.empty()) host_list = spec.nodes.hosts;
    auto plan = launch::plan_hosts(host_list, spec.nodes.procs_per_node, spec.world_size());
    if (args->dry_run) {
      fmt::print("{}", spec::format_plan(spec::make_plan(spec)));
      for (const auto& p : plan)
        fmt::print("host {}: ranks {}..{} ({} of {} slots)\n", p.host, p.first_rank,
                   p.first_rank + p.procs - 1, p.procs, p.slots);
      return 0;
    }
    launch::SshLaunchOptions options;
    options.hosts = host_list;
    options.ssh = launch::SshOptions::from_spec(spec.nodes.ssh, args->ssh_config);
    options.spec_yaml = spec::to_yaml_redacted(spec);
    options.resume_dir = args->resume_dir;
    if (!args->resume_dir.empty() && spec.checkpoint.resume == "never")
      fmt::print(stderr,
                 "ptrain: warning: checkpoint.resume is never: the run starts again from step 0 "
                 "(use --set checkpoint.resume=auto to continue from its checkpoints)\n");
    launch::SshLauncher launcher(std::move(spec), options);
    return launcher.run().exit_code;
  };
}

}  // namespace

PTRAIN_COMMAND({"launch", "Run a job across SSH hosts (or a Slurm allocation)", false, 11,
                setup_launch})

}  // namespace ptrain::cli
