// The supervision policy alone (launch/supervisor.h), with a fake worker group, a fake
// coordinator and a fake clock: restart counting, a second failure while a round stops or right
// after a restart, a hang, a signal during the grace period, the grace → SIGKILL timing and the
// root cause naming the ranks that never joined. No process is started; a job takes no real time.
#include "ptrain/launch/supervisor.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "ptrain/core/error.h"

namespace ptrain::launch {
namespace {

using std::chrono::milliseconds;

// Time moves only when the loop waits: to the next scripted action, or by the wait's timeout.
class FakeWaiter : public Waiter {
 public:
  // An action at `at` (from the start); it may return a signal for the loop.
  using Action = std::function<int()>;
  Clock::time_point now() override { return now_; }
  std::vector<int> wait(WorkerGroup&, Millis timeout) override {
    ++waits_;
    if (waits_ > 100000) throw std::runtime_error("the loop does not end");
    auto until = now_ + timeout;
    std::vector<int> sigs;
    if (!actions_.empty() && actions_.begin()->first <= until) {
      now_ = std::max(now_, actions_.begin()->first);
      while (!actions_.empty() && actions_.begin()->first <= now_) {
        Action a = std::move(actions_.begin()->second);
        actions_.erase(actions_.begin());
        if (int sig = a()) sigs.push_back(sig);
      }
    } else {
      now_ = until;
    }
    return sigs;
  }
  void wake() override {}
  void at(Millis when, Action a) { actions_.emplace(start_ + when, std::move(a)); }
  void after(Millis delay, Action a) { actions_.emplace(now_ + delay, std::move(a)); }
  Millis elapsed() const { return std::chrono::duration_cast<Millis>(now_ - start_); }

 private:
  Clock::time_point start_ = Clock::time_point(std::chrono::hours(1000));
  Clock::time_point now_ = start_;
  std::multimap<Clock::time_point, Action> actions_;
  int waits_ = 0;
};

// Ranks that run until the script ends them or a signal does. SIGTERM/SIGINT end a rank
// `term_delay` later with 128 + the signal, unless it ignores them; SIGKILL ends it at once.
class FakeGroup : public WorkerGroup {
 public:
  FakeGroup(FakeWaiter& waiter, int ranks, std::vector<std::string> hosts)
      : waiter_(waiter), ranks_(ranks), hosts_(std::move(hosts)) {}

  struct Sent {
    int sig;
    Millis at;
  };
  std::vector<int> rounds;
  std::vector<Sent> signals;
  std::set<int> ignores_term;  // ranks that ignore SIGTERM/SIGINT
  Millis term_delay{100};
  // Called at the start of each round: schedule what the ranks do.
  std::function<void(int round)> on_start;

  void start(int round) override {
    rounds.push_back(round);
    running_.clear();
    for (int r = 0; r < ranks_; ++r) {
      running_.insert(r);
      GroupEvent e;
      e.kind = GroupEvent::Kind::Started;
      e.rank = r;
      e.pid = pid_of(r);
      events_.push_back(e);
    }
    if (on_start) on_start(round);
  }
  void signal(int sig) override {
    signals.push_back({sig, waiter_.elapsed()});
    const int round = rounds.back();
    for (int r : std::set<int>(running_)) {
      if (sig == SIGKILL) {
        exit(r, 0, SIGKILL);
      } else if ((sig == SIGTERM || sig == SIGINT) && !ignores_term.count(r)) {
        waiter_.after(term_delay, [this, r, sig, round] {
          if (rounds.back() == round) exit(r, 0, sig);
          return 0;
        });
      }
    }
  }
  void add_poll_fds(std::vector<struct pollfd>&) const override {}
  void handle_ready(const std::vector<struct pollfd>&) override {}
  std::vector<GroupEvent> poll() override {
    auto out = std::move(events_);
    events_.clear();
    return out;
  }
  int running() const override { return static_cast<int>(running_.size()); }
  std::string host_of(int rank) const override {
    return hosts_[static_cast<size_t>(rank) * hosts_.size() / static_cast<size_t>(ranks_)];
  }
  pid_t pid_of(int rank) const override { return 1000 * (static_cast<int>(rounds.size())) + rank; }
  std::vector<std::string> hosts() const override { return hosts_; }
  std::string log_path(int rank) const override { return fmt::format("/nonexistent/{}", rank); }
  bool multi_host() const override { return hosts_.size() > 1; }

  // Elastic: what shrink() answers (unset: the interface's refusal); every call is recorded.
  std::function<ReshapeResult(const std::vector<std::string>& lost)> on_shrink;
  std::vector<std::vector<std::string>> shrinks;
  ReshapeResult shrink(const std::vector<std::string>& lost) override {
    shrinks.push_back(lost);
    if (!on_shrink) return WorkerGroup::shrink(lost);
    ReshapeResult r = on_shrink(lost);
    if (r.refused.empty()) {
      std::vector<std::string> left;
      for (const auto& h : hosts_)
        if (std::find(lost.begin(), lost.end(), h) == lost.end()) left.push_back(h);
      hosts_ = left;
      ranks_ = r.world_size;
    }
    return r;
  }
  // Elastic growing: what joining() answers, and what grow() does (unset: the interface's
  // refusal); every grow() is recorded.
  std::vector<std::string> joining_hosts;
  std::function<ReshapeResult(const std::vector<std::string>& hosts)> on_grow;
  std::vector<std::vector<std::string>> grows;
  std::vector<std::string> joining() override { return joining_hosts; }
  ReshapeResult grow(const std::vector<std::string>& hosts) override {
    grows.push_back(hosts);
    if (!on_grow) return WorkerGroup::grow(hosts);
    ReshapeResult r = on_grow(hosts);
    if (r.refused.empty()) {
      hosts_.insert(hosts_.end(), hosts.begin(), hosts.end());
      ranks_ = r.world_size;
      joining_hosts.clear();
    }
    return r;
  }
  // The session to rank `r`'s host ends: its ranks are gone, the first one Lost.
  void lose(int r, const std::string& why) {
    const std::string host = host_of(r);
    for (int k : std::set<int>(running_))
      if (host_of(k) == host) running_.erase(k);
    GroupEvent e;
    e.kind = GroupEvent::Kind::Lost;
    e.rank = r;
    e.host = host;
    e.text = why;
    events_.push_back(e);
  }

  // Rank `r` ends now with `code` (or the signal).
  void exit(int r, int code, int sig = 0) {
    if (!running_.erase(r)) return;
    GroupEvent e;
    e.kind = GroupEvent::Kind::Exited;
    e.rank = r;
    e.pid = pid_of(r);
    e.status.code = sig ? -1 : code;
    e.status.signal = sig;
    events_.push_back(e);
  }
  bool sent(int sig) const {
    for (const auto& s : signals)
      if (s.sig == sig) return true;
    return false;
  }
  std::optional<Millis> first(int sig) const {
    for (const auto& s : signals)
      if (s.sig == sig) return s.at;
    return std::nullopt;
  }

 private:
  FakeWaiter& waiter_;
  int ranks_;
  std::vector<std::string> hosts_;
  std::set<int> running_;
  std::vector<GroupEvent> events_;
};

class FakeRendezvous : public RendezvousControl {
 public:
  std::vector<std::string> aborts;
  std::vector<int> rounds;
  std::vector<int> missing;
  void abort(const std::string& reason) override { aborts.push_back(reason); }
  void begin_round(int round) override {
    rounds.push_back(round);
    missing.clear();
  }
  std::vector<int> missing_ranks() override { return missing; }
  bool any_joined() override { return true; }
  std::optional<int64_t> checkpoint;  // what last_checkpoint() answers
  std::optional<int64_t> last_checkpoint() override { return checkpoint; }
};

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ptrain-supervisor-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    out_ = std::tmpfile();
  }
  void TearDown() override {
    std::fclose(out_);
    std::filesystem::remove_all(root_);
  }
  // Runs the policy over `group` and returns the result; console() and summary() show the rest.
  JobResult run(FakeGroup& group, SupervisorOptions o = {}) {
    dir_.emplace(RunDir::create(root_, "job"));
    Console console(out_, false, ConsoleMode::All, 1);
    EventQueue events(waiter_);
    events_ = &events;
    o.world_size = o.world_size > 1 ? o.world_size : 4;
    Supervisor s(o, group, rdzv_, waiter_, events, console, *dir_);
    JobResult r = s.run();
    events_ = nullptr;
    restarts_ = s.restarts().restarts();
    return r;
  }
  // What the job showed: the console, and the messages for stderr, which launcher.log has too.
  std::string console() {
    std::fflush(out_);
    std::rewind(out_);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, out_)) > 0) text.append(buf, n);
    return text + launcher_log();
  }
  std::string summary() { return read_file(dir_->file("summary.json")); }
  std::string launcher_log() { return read_file(dir_->file("launcher.log")); }

  static SupervisorOptions restarts(int n) {
    SupervisorOptions o;
    o.max_restarts = n;
    o.builtin = true;
    return o;
  }

  std::string root_;
  std::FILE* out_ = nullptr;
  FakeWaiter waiter_;
  FakeRendezvous rdzv_;
  std::optional<RunDir> dir_;
  EventQueue* events_ = nullptr;
  int restarts_ = 0;
};

TEST_F(SupervisorTest, AJobWhoseRanksAllSucceedSucceeds) {
  FakeGroup g(waiter_, 4, {"a"});
  g.on_start = [&](int) {
    for (int r = 0; r < 4; ++r)
      waiter_.after(Millis(500 + r), [&g, r] {
        g.exit(r, 0);
        return 0;
      });
  };
  JobResult r = run(g);
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.status, "succeeded");
  EXPECT_TRUE(g.signals.empty());
  EXPECT_TRUE(rdzv_.aborts.empty());
  EXPECT_NE(summary().find(R"("exit_codes": [0, 0, 0, 0])"), std::string::npos) << summary();
}

TEST_F(SupervisorTest, AFailureAbortsEveryRankAndGivesItsExitCode) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(3, 7);
      return 0;
    });
  };
  JobResult r = run(g);
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.status, "failed");
  ASSERT_EQ(rdzv_.aborts.size(), 1u);
  EXPECT_NE(rdzv_.aborts[0].find("rank 3 on b exited with"), std::string::npos) << rdzv_.aborts[0];
  EXPECT_EQ(g.first(SIGTERM), Millis(1000));
  EXPECT_FALSE(g.sent(SIGKILL));  // every rank obeyed SIGTERM within the grace period
  EXPECT_NE(console().find("job failed: rank 3 on host b (pid 1003) exited with"),
            std::string::npos)
      << console();
  EXPECT_NE(summary().find(R"("failed_rank": 3, "failed_host": "b")"), std::string::npos)
      << summary();
  EXPECT_NE(summary().find(R"("exit_codes": [143, 143, 143, 7])"), std::string::npos) << summary();
}

TEST_F(SupervisorTest, RestartsAreCountedAndTheJobSucceedsInALaterRound) {
  FakeGroup g(waiter_, 4, {"a"});
  g.on_start = [&](int round) {
    if (round < 2) {
      // Rank 1 fails in round 0, rank 2 in round 1 (a different failure: not refused).
      waiter_.after(Millis(1000), [&g, round] {
        g.exit(1 + round, 1);
        return 0;
      });
    } else {
      for (int r = 0; r < 4; ++r)
        waiter_.after(Millis(1000), [&g, r] {
          g.exit(r, 0);
          return 0;
        });
    }
  };
  JobResult r = run(g, restarts(3));
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(r.status, "succeeded");
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(rdzv_.rounds, (std::vector<int>{1, 2}));
  EXPECT_EQ(restarts_, 2);
  std::string s = summary();
  EXPECT_NE(s.find(R"("restarts": [{"round": 1, "rank": 1, "reason": "exited with)"),
            std::string::npos)
      << s;
  EXPECT_NE(s.find(R"({"round": 2, "rank": 2)"), std::string::npos) << s;
  EXPECT_EQ(s.find(R"("round": 3)"), std::string::npos) << s;
  // One machine: the restart line does not name the host.
  EXPECT_NE(launcher_log().find("restart 1/3: rank 1 exited with"), std::string::npos)
      << launcher_log();
  // The second restart waited for its backoff (1 s) on the fake clock.
  EXPECT_GE(waiter_.elapsed(), Millis(1000 + 100 + 1000 + 100 + 1000 + 1000));
}

TEST_F(SupervisorTest, ASecondFailureWhileTheRoundStopsIsNotASecondRestart) {
  FakeGroup g(waiter_, 4, {"a"});
  g.on_start = [&](int round) {
    if (round == 0) {
      waiter_.after(Millis(1000), [&g] {
        g.exit(1, 1);
        return 0;
      });
      // Rank 2 fails too, before SIGTERM reaches it (its own bug, not an echo).
      waiter_.after(Millis(1050), [&g] {
        g.exit(2, 5);
        return 0;
      });
    } else {
      for (int r = 0; r < 4; ++r)
        waiter_.after(Millis(10), [&g, r] {
          g.exit(r, 0);
          return 0;
        });
    }
  };
  JobResult r = run(g, restarts(1));
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  EXPECT_EQ(restarts_, 1);
  // The first failure stays the root cause of round 0.
  EXPECT_NE(summary().find(R"("restarts": [{"round": 1, "rank": 1)"), std::string::npos)
      << summary();
}

TEST_F(SupervisorTest, AFailureRightAfterARestartCountsTowardMaxRestarts) {
  FakeGroup g(waiter_, 4, {"a"});
  g.on_start = [&](int round) {
    waiter_.after(Millis(round == 0 ? 1000 : 50), [&g, round] {
      g.exit(round == 0 ? 1 : 0, round == 0 ? 1 : 9);
      return 0;
    });
  };
  JobResult r = run(g, restarts(1));
  EXPECT_EQ(r.exit_code, 9);
  EXPECT_EQ(r.status, "failed");
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  std::string c = console();
  EXPECT_NE(c.find("--- round 0 ---"), std::string::npos) << c;
  EXPECT_NE(c.find("--- round 1 ---"), std::string::npos) << c;
  EXPECT_NE(c.find("job failed: rank 0 on host a"), std::string::npos) << c;
}

TEST_F(SupervisorTest, AHungRankIsAFailureWithTheTimeoutExitCodeAndRestarts) {
  FakeGroup g(waiter_, 2, {"a"});
  g.on_start = [&](int round) {
    if (round == 0) {
      waiter_.after(Millis(3000), [this] {
        events_->push({SupervisorEvent::Kind::Hang, 1, 0, "no heartbeat for 10 s", {}});
        return 0;
      });
    } else {
      for (int r = 0; r < 2; ++r)
        waiter_.after(Millis(10), [&g, r] {
          g.exit(r, 0);
          return 0;
        });
    }
  };
  SupervisorOptions o = restarts(1);
  o.world_size = 2;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.first(SIGTERM), Millis(3000));
  EXPECT_NE(summary().find(R"("rank": 1, "reason": "hung: no heartbeat for 10 s")"),
            std::string::npos)
      << summary();
  EXPECT_NE(summary().find(fmt::format(R"("exit_code": {})", kExitTimeout)), std::string::npos)
      << summary();
}

TEST_F(SupervisorTest, AKillThatAPeersEchoReportedFirstIsTheRootCause) {
  // Rank 0 sees its peer (a parameter server) vanish and exits 4 before the server's own
  // SIGKILL death is reported: the SIGKILL, which the supervisor did not send, is the cause.
  FakeGroup g(waiter_, 3, {"a", "b"});
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(0, kExitRemote);
      return 0;
    });
    waiter_.after(Millis(1050), [&g] {
      g.exit(2, 0, SIGKILL);
      return 0;
    });
  };
  SupervisorOptions o;
  o.world_size = 2;
  o.servers = 1;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_NE(console().find("job failed: parameter server 0 (rank 2) on host b"), std::string::npos)
      << console();
}

TEST_F(SupervisorTest, OurOwnSigkillNeverReplacesTheRootCause) {
  FakeGroup g(waiter_, 2, {"a"});
  g.ignores_term = {1};
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(0, kExitRemote);
      return 0;
    });
  };
  SupervisorOptions o;
  o.world_size = 2;
  JobResult r = run(g, o);
  EXPECT_EQ(g.first(SIGKILL), Millis(6000));
  EXPECT_EQ(r.exit_code, kExitRemote);  // rank 1's SIGKILL was the stop's, not a cause
}

TEST_F(SupervisorTest, RanksThatIgnoreSigtermAreKilledWhenTheGraceEnds) {
  FakeGroup g(waiter_, 2, {"a"});
  g.ignores_term = {0};
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(1, 1);
      return 0;
    });
  };
  SupervisorOptions o;
  o.world_size = 2;
  o.term_grace = Millis(5000);
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(g.first(SIGTERM), Millis(1000));
  EXPECT_EQ(g.first(SIGKILL), Millis(6000));
  EXPECT_NE(summary().find(R"("exit_codes": [137, 1])"), std::string::npos) << summary();
}

TEST_F(SupervisorTest, ASignalDuringTheGracePeriodKillsAtOnceAndNeverRestarts) {
  FakeGroup g(waiter_, 2, {"a"});
  g.ignores_term = {0};
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(1, 1);
      return 0;
    });
    waiter_.after(Millis(2000), [] { return SIGINT; });  // the user presses Ctrl-C again
  };
  SupervisorOptions o = restarts(5);
  o.world_size = 2;
  o.term_grace = Millis(30000);
  JobResult r = run(g, o);
  EXPECT_EQ(g.first(SIGKILL), Millis(2000));  // not at the end of the 30 s grace
  EXPECT_EQ(g.rounds, (std::vector<int>{0}));
  EXPECT_EQ(r.status, "failed");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(launcher_log().find("SIGINT again: killing every worker"), std::string::npos)
      << launcher_log();
}

TEST_F(SupervisorTest, ASignalDuringTheRestartBackoffEndsTheJob) {
  FakeGroup g(waiter_, 2, {"a"});
  g.on_start = [&](int round) {
    waiter_.after(Millis(1000), [&g, round] {
      g.exit(1, 1 + round);  // a different exit code each round: never refused
      return 0;
    });
    if (round == 1) waiter_.after(Millis(1500), [] { return SIGTERM; });  // during the 1 s backoff
  };
  SupervisorOptions o = restarts(5);
  o.world_size = 2;
  JobResult r = run(g, o);
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  EXPECT_EQ(r.status, "failed");
  EXPECT_EQ(r.exit_code, 2);
}

TEST_F(SupervisorTest, AnInterruptIsForwardedAndGives128PlusTheSignal) {
  FakeGroup g(waiter_, 3, {"a"});
  g.on_start = [&](int) { waiter_.after(Millis(700), [] { return SIGTERM; }); };
  JobResult r = run(g, restarts(3));
  EXPECT_EQ(r.exit_code, 128 + SIGTERM);
  EXPECT_EQ(r.status, "interrupted");
  EXPECT_EQ(g.first(SIGTERM), Millis(700));
  EXPECT_EQ(g.rounds.size(), 1u);  // an interrupted job is not restarted
  ASSERT_EQ(rdzv_.aborts.size(), 1u);
  EXPECT_NE(rdzv_.aborts[0].find("received SIGTERM"), std::string::npos);
  EXPECT_NE(summary().find(R"("reason": "interrupted by SIGTERM")"), std::string::npos)
      << summary();
}

TEST_F(SupervisorTest, TheRootCauseNamesTheRanksThatNeverJoinedWithTheirHosts) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  g.on_start = [&](int) {
    rdzv_.missing = {2, 3};
    waiter_.after(Millis(1000), [&g] {
      g.exit(0, 1);
      return 0;
    });
  };
  JobResult r = run(g);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(console().find("rendezvous incomplete: rank(s) 2, 3 on b never joined"),
            std::string::npos)
      << console();
}

TEST_F(SupervisorTest, RanksThatNeverJoinFailTheJobAfterTheJoinTimeout) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  g.on_start = [&](int) { rdzv_.missing = {1, 3}; };
  SupervisorOptions o;
  o.join_timeout = Millis(20000);
  o.rendezvous_timeout_s = 20;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, kExitTimeout);
  EXPECT_EQ(g.first(SIGTERM), Millis(20000) + kJoinCheckGrace);
  std::string c = console();
  EXPECT_NE(c.find("rank 1 on host a (pid 1001) never joined the rendezvous within "
                   "rendezvous.timeout_s=20 (missing: rank(s) 1 on a, rank(s) 3 on b)"),
            std::string::npos)
      << c;
}

TEST_F(SupervisorTest, AKilledRankIsNamedWithItsHostAndPid) {
  FakeGroup g(waiter_, 2, {"a", "b"});
  g.on_start = [&](int) {
    waiter_.after(Millis(1000), [&g] {
      g.exit(1, 0, SIGKILL);
      return 0;
    });
  };
  SupervisorOptions o;
  o.world_size = 2;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_NE(console().find("rank 1 on host b (pid 1001) was killed by"), std::string::npos)
      << console();
}

TEST_F(SupervisorTest, ADeadParameterServerIsAFailureNamingIt) {
  FakeGroup g(waiter_, 3, {"a"});  // ranks 0, 1 work; rank 2 is parameter server 0
  g.on_start = [&](int) {
    waiter_.after(Millis(800), [&g] {
      g.exit(2, 0, SIGKILL);
      return 0;
    });
  };
  SupervisorOptions o;
  o.world_size = 2;
  o.servers = 1;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 137);
  EXPECT_NE(console().find("job failed: parameter server 0 (rank 2) on host a"), std::string::npos)
      << console();
}

// Elastic jobs: round 0 loses host b mid-training (its ranks had joined), so round 1 tries every
// host again; b is lost again before its ranks join round 1, so round 2 runs on a alone.
class ElasticSupervisorTest : public SupervisorTest {
 protected:
  void script(FakeGroup& g) {
    g.on_start = [&](int round) {
      if (round == 0) {
        waiter_.after(Millis(1000), [&g] {
          g.lose(2, "lost its host: the ssh session to b ended");
          return 0;
        });
      } else if (round == 1) {
        rdzv_.missing = {2, 3};  // b never joins
        waiter_.after(Millis(50), [&g] {
          g.lose(2, "lost its host: the ssh session to b ended (exit 255)");
          return 0;
        });
      } else {
        for (int r = 0; r < 4; ++r)  // ranks that are not running (shrunk away) are skipped
          waiter_.after(Millis(1000), [&g, r] {
            g.exit(r, 0);
            return 0;
          });
      }
    };
  }
  static SupervisorOptions elastic() {
    SupervisorOptions o = restarts(3);
    o.elastic = true;
    return o;
  }
};

TEST_F(ElasticSupervisorTest, AHostLostBeforeItsRanksJoinIsLeftOutOfTheNextRound) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  script(g);
  g.on_shrink = [](const std::vector<std::string>&) { return ReshapeResult{2, {}}; };
  JobResult r = run(g, elastic());
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1, 2}));
  // Decided once, after round 1 (round 0's loss came after b's ranks had joined).
  ASSERT_EQ(g.shrinks.size(), 1u);
  EXPECT_EQ(g.shrinks[0], std::vector<std::string>{"b"});
  EXPECT_EQ(restarts_, 2);  // the shrunk round is a restart
  EXPECT_NE(launcher_log().find("shrinking to 1 host: host b lost (lost its host: the ssh "
                                "session to b ended (exit 255))"),
            std::string::npos)
      << launcher_log();
  // The failed round's rank keeps its name in the restart line.
  EXPECT_NE(launcher_log().find("restart 2/3: rank 2 lost its host: the ssh session to b ended"),
            std::string::npos)
      << launcher_log();
  EXPECT_NE(launcher_log().find("2 worker(s) from the next round"), std::string::npos)
      << launcher_log();
  EXPECT_NE(summary().find(R"("world_size": 2)"), std::string::npos) << summary();
  EXPECT_NE(summary().find(R"("exit_codes": [0, 0])"), std::string::npos) << summary();
}

TEST_F(ElasticSupervisorTest, AJoinTimeoutWithAHostsRanksMissingLeavesThatHostOut) {
  // Host b's ranks never join; rank 0 (on a) gives up waiting first (its own join timeout,
  // exit 3): b is the host that is lost, not a.
  FakeGroup g(waiter_, 4, {"a", "b"});
  g.on_start = [&](int round) {
    if (round == 0) {
      rdzv_.missing = {2, 3};
      waiter_.after(Millis(20000), [&g] {
        g.exit(0, kExitTimeout);
        return 0;
      });
    } else {
      for (int r = 0; r < 4; ++r)
        waiter_.after(Millis(1000), [&g, r] {
          g.exit(r, 0);
          return 0;
        });
    }
  };
  g.on_shrink = [](const std::vector<std::string>&) { return ReshapeResult{2, {}}; };
  SupervisorOptions o = elastic();
  o.join_timeout = Millis(20000);
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 0) << console();
  ASSERT_EQ(g.shrinks.size(), 1u);
  EXPECT_EQ(g.shrinks[0], std::vector<std::string>{"b"});
  EXPECT_EQ(g.hosts(), std::vector<std::string>{"a"});
}

TEST_F(ElasticSupervisorTest, ARefusedShrinkSaysWhyAndRestartsEveryHost) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  script(g);
  g.on_shrink = [](const std::vector<std::string>&) {
    return ReshapeResult{0, "1 host left, fewer than nodes.min_nodes = 2"};
  };
  JobResult r = run(g, elastic());
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(g.shrinks.size(), 1u);
  EXPECT_NE(launcher_log().find("not shrinking: host b lost, but 1 host left, fewer than "
                                "nodes.min_nodes = 2"),
            std::string::npos)
      << launcher_log();
  EXPECT_EQ(g.hosts(), (std::vector<std::string>{"a", "b"}));
  EXPECT_NE(summary().find(R"("exit_codes": [0, 0, 0, 0])"), std::string::npos) << summary();
}

TEST_F(ElasticSupervisorTest, AJobThatIsNotElasticNeverShrinks) {
  FakeGroup g(waiter_, 4, {"a", "b"});
  script(g);
  g.on_shrink = [](const std::vector<std::string>&) { return ReshapeResult{2, {}}; };
  JobResult r = run(g, restarts(3));
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1, 2}));
  EXPECT_TRUE(g.shrinks.empty());
  EXPECT_EQ(console().find("shrinking"), std::string::npos) << console();
}

// Elastic jobs that grow: host b can join a job running on host a (2 ranks) from 1 s on.
class GrowSupervisorTest : public SupervisorTest {
 protected:
  // Round 0 runs until it is stopped; later rounds end after 1 s.
  void script(FakeGroup& g, int ranks_after = 4) {
    g.on_start = [&g, this, ranks_after](int round) {
      if (round == 0) {
        waiter_.after(Millis(1000), [&g] {
          g.joining_hosts = {"b"};
          return 0;
        });
        return;
      }
      for (int r = 0; r < ranks_after; ++r)
        waiter_.after(Millis(1000), [&g, r] {
          g.exit(r, 0);
          return 0;
        });
    };
    g.on_grow = [](const std::vector<std::string>&) { return ReshapeResult{4, {}}; };
  }
  static SupervisorOptions grows() {
    SupervisorOptions o = restarts(0);  // growing is not a restart: none is needed
    o.elastic = true;
    o.total_steps = 100;
    o.world_size = 2;
    return o;
  }
};

TEST_F(GrowSupervisorTest, AHostThatCanJoinIsTakenInOnceTheNextCheckpointIsComplete) {
  FakeGroup g(waiter_, 2, {"a"});
  script(g);
  rdzv_.checkpoint = 4;
  waiter_.at(Millis(3000), [this] {
    rdzv_.checkpoint = 8;  // the first checkpoint after b asked
    return 0;
  });
  JobResult r = run(g, grows());
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  ASSERT_EQ(g.grows.size(), 1u);
  EXPECT_EQ(g.grows[0], std::vector<std::string>{"b"});
  // Stopped at the checkpoint, not when b asked.
  ASSERT_TRUE(g.first(SIGTERM));
  EXPECT_GE(*g.first(SIGTERM), Millis(3000));
  EXPECT_LT(*g.first(SIGTERM), Millis(4500));
  EXPECT_EQ(restarts_, 0);
  EXPECT_EQ(g.hosts(), (std::vector<std::string>{"a", "b"}));
  EXPECT_NE(launcher_log().find("host b can join: re-forming the job at the next checkpoint (the "
                                "newest is step 4)"),
            std::string::npos)
      << launcher_log();
  EXPECT_NE(launcher_log().find("host b joins: re-forming the job from the checkpoint of step 8"),
            std::string::npos)
      << launcher_log();
  EXPECT_NE(launcher_log().find("growing to 2 hosts (b joins), 4 worker(s); starting rendezvous "
                                "round 1"),
            std::string::npos)
      << launcher_log();
  // The stopped round's exits are not failures.
  EXPECT_EQ(launcher_log().find("aborting the job"), std::string::npos) << launcher_log();
  EXPECT_NE(summary().find(R"("world_size": 4)"), std::string::npos) << summary();
  EXPECT_NE(summary().find(R"("restarts": [])"), std::string::npos) << summary();
  EXPECT_NE(summary().find(R"("grows": [{"round": 1, "hosts": ["b"], "checkpoint_step": 8)"),
            std::string::npos)
      << summary();
}

TEST_F(GrowSupervisorTest, ABuiltInJobWithoutCheckpointsDoesNotGrowAndSaysWhy) {
  FakeGroup g(waiter_, 2, {"a"});
  script(g);
  g.on_start = [&g, this](int) {
    waiter_.after(Millis(1000), [&g] {
      g.joining_hosts = {"b"};
      return 0;
    });
    for (int r = 0; r < 2; ++r)
      waiter_.after(Millis(5000), [&g, r] {
        g.exit(r, 0);
        return 0;
      });
  };
  SupervisorOptions o = grows();
  o.checkpoints = false;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, std::vector<int>{0});
  EXPECT_TRUE(g.grows.empty());
  EXPECT_FALSE(g.sent(SIGTERM));
  const std::string line =
      "host b can join, but the job writes no checkpoints (checkpoint.every: 0) to resume from, "
      "so it stays out";
  EXPECT_NE(console().find(line), std::string::npos) << console();
  // Said once, although b keeps asking.
  EXPECT_EQ(launcher_log().find(line), launcher_log().rfind(line)) << launcher_log();
}

TEST_F(GrowSupervisorTest, TheLastStepsCheckpointDoesNotStopTheJob) {
  FakeGroup g(waiter_, 2, {"a"});
  script(g);
  g.on_start = [&g, this](int) {
    waiter_.after(Millis(1000), [&g] {
      g.joining_hosts = {"b"};
      return 0;
    });
    waiter_.after(Millis(3000), [this] {
      rdzv_.checkpoint = 100;  // train.steps: the job is ending anyway
      return 0;
    });
    for (int r = 0; r < 2; ++r)
      waiter_.after(Millis(4000), [&g, r] {
        g.exit(r, 0);
        return 0;
      });
  };
  JobResult r = run(g, grows());
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, std::vector<int>{0});
  EXPECT_FALSE(g.sent(SIGTERM));
  EXPECT_NE(summary().find(R"("world_size": 2)"), std::string::npos) << summary();
}

TEST_F(GrowSupervisorTest, ACommandJobGrowsAtOnce) {
  // A `command:` job's program resumes itself (as under torchrun): no checkpoint to wait for.
  FakeGroup g(waiter_, 2, {"a"});
  script(g);
  SupervisorOptions o = grows();
  o.builtin = false;
  JobResult r = run(g, o);
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  ASSERT_TRUE(g.first(SIGTERM));
  EXPECT_LT(*g.first(SIGTERM), Millis(2100));
  EXPECT_NE(launcher_log().find("host b joins: re-forming the job; stopping this round"),
            std::string::npos)
      << launcher_log();
}

TEST_F(GrowSupervisorTest, ARefusedGrowRunsTheNextRoundAsBeforeAndDoesNotAskAgain) {
  FakeGroup g(waiter_, 2, {"a"});
  script(g, 2);
  g.on_grow = [](const std::vector<std::string>&) {
    return ReshapeResult{0, "the global batch does not split"};
  };
  rdzv_.checkpoint = 4;
  waiter_.at(Millis(2000), [this] {
    rdzv_.checkpoint = 8;
    return 0;
  });
  JobResult r = run(g, grows());
  EXPECT_EQ(r.exit_code, 0) << console();
  EXPECT_EQ(g.rounds, (std::vector<int>{0, 1}));
  EXPECT_EQ(g.grows.size(), 1u);
  EXPECT_EQ(g.hosts(), std::vector<std::string>{"a"});
  EXPECT_NE(console().find("not growing: host b joins, but the global batch does not split"),
            std::string::npos)
      << console();
  EXPECT_NE(summary().find(R"("world_size": 2)"), std::string::npos) << summary();
}

TEST_F(GrowSupervisorTest, ASignalWhileTheRoundStopsForAJoinEndsTheJob) {
  FakeGroup g(waiter_, 2, {"a"});
  script(g);
  g.term_delay = Millis(2000);
  rdzv_.checkpoint = 4;
  waiter_.at(Millis(2000), [this] {
    rdzv_.checkpoint = 8;
    return 0;
  });
  waiter_.at(Millis(3000), [] { return SIGINT; });
  JobResult r = run(g, grows());
  EXPECT_EQ(r.exit_code, 128 + SIGINT) << console();
  EXPECT_EQ(r.status, "interrupted");
  EXPECT_EQ(g.rounds, std::vector<int>{0});
  EXPECT_TRUE(g.grows.empty());
}

}  // namespace
}  // namespace ptrain::launch
