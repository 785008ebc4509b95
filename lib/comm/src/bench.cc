// `ptrain bench comm`: times one op over a size sweep through our Communicator and through
// plain Gloo on its own context, with inputs whose results are exact in float32.
#include "ptrain/comm/bench.h"

#include <fmt/format.h>
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "gloo/store_adaptor.h"
#include "ptrain/comm/gloo.h"
#include "ptrain/comm/shm.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

// Small integers: every sum over up to 64 ranks is exact.
float value(int rank, size_t i) {
  return static_cast<float>(rank % 16 + 1 + static_cast<int>(i % 8));
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

using Op = std::function<void()>;

struct Sized {
  size_t count;  // whole buffer, in elements
  size_t per;    // per-rank chunk (allgather input, reduce_scatter output)
};

Sized size_for(const std::string& op, size_t bytes, int n) {
  size_t count = std::max<size_t>(1, bytes / sizeof(float));
  if (op == "allgather" || op == "reduce_scatter" || op == "alltoall") {
    size_t per = std::max<size_t>(1, count / n);
    return {per * n, per};
  }
  return {count, count};
}

}  // namespace

void check_bench_backend(const std::string& backend) {
  if (backend != "gloo" && backend != "shm")
    throw ConfigError(fmt::format("bench comm: unknown backend '{}'", backend),
                      "use --backend gloo or shm");
}

double bus_factor(const std::string& op, int n) {
  if (op == "allreduce") return n > 1 ? 2.0 * (n - 1) / n : 0;
  if (op == "allgather" || op == "reduce_scatter" || op == "alltoall")
    return n > 1 ? double(n - 1) / n : 0;
  if (op == "broadcast" || op == "sendrecv") return 1.0;
  throw ConfigError(fmt::format("bench comm: unknown op '{}'", op),
                    "use allreduce, allgather, reduce_scatter, alltoall, broadcast or sendrecv");
}

std::vector<BenchRow> run_comm_bench(int rank, int world, std::shared_ptr<rendezvous::Store> store,
                                     const BenchOptions& o) {
  const double factor = bus_factor(o.op, world);
  if (o.op == "sendrecv" && world < 2)
    throw ConfigError("bench comm: sendrecv needs at least 2 processes");
  if (o.min_bytes == 0 || o.max_bytes < o.min_bytes || o.iters < 1 || o.runs < 1)
    throw ConfigError(fmt::format("bench comm: bad sweep (min {} B, max {} B, iters {}, runs {})",
                                  o.min_bytes, o.max_bytes, o.iters, o.runs));
  check_bench_backend(o.backend);
  std::unique_ptr<Communicator> ours;
  auto ours_store = std::make_shared<rendezvous::PrefixStore>("bench/ours", store);
  if (o.backend == "shm") {
    ShmOptions shm_options;
    shm_options.comm = o.comm;
    shm_options.tag = "bench";
    ours = create_shm_communicator({"bench", rank, world}, ours_store, shm_options);
  } else {
    GlooOptions gloo_options;
    gloo_options.comm = o.comm;
    ours = create_gloo_communicator({"bench", rank, world}, ours_store, gloo_options);
  }

  // The baseline: a fresh Gloo context, no queue, no checks, gloo's own ring allreduce.
  const bool has_plain = o.baseline && world > 1 &&
                         (o.op == "allreduce" || o.op == "allgather" || o.op == "broadcast");
  std::shared_ptr<gloo::rendezvous::Context> plain;
  if (has_plain) {
    gloo::transport::tcp::attr attr;
    attr.hostname = "127.0.0.1";
    auto device = gloo::transport::tcp::CreateDevice(attr);
    plain = std::make_shared<gloo::rendezvous::Context>(rank, world);
    plain->setTimeout(o.comm.timeout);
    detail::GlooStoreAdaptor adaptor(
        std::make_shared<rendezvous::PrefixStore>("bench/plain", store), o.comm.timeout);
    plain->connectFullMesh(adaptor, device);
  }

  std::vector<BenchRow> rows;
  for (size_t bytes = o.min_bytes; bytes <= o.max_bytes; bytes *= 2) {
    const Sized sz = size_for(o.op, bytes, world);
    std::vector<float> a(sz.count), b(sz.count);
    const int left = (rank - 1 + world) % world, right = (rank + 1) % world;
    Op run_ours, run_plain;
    if (o.op == "allreduce") {
      run_ours = [&] { ours->allreduce(a.data(), sz.count, DType::kF32); };
      run_plain = [&] {
        gloo::AllreduceOptions p(plain);
        p.setOutput<float>(a.data(), sz.count);
        p.setReduceFunction(
            static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
        p.setAlgorithm(gloo::AllreduceOptions::Algorithm::RING);
        p.setTimeout(o.comm.timeout);
        gloo::allreduce(p);
      };
    } else if (o.op == "allgather") {
      run_ours = [&] { ours->allgather(a.data(), b.data(), sz.per, DType::kF32); };
      run_plain = [&] {
        gloo::AllgatherOptions p(plain);
        p.setInput<float>(a.data(), sz.per);
        p.setOutput<float>(b.data(), sz.count);
        p.setTimeout(o.comm.timeout);
        gloo::allgather(p);
      };
    } else if (o.op == "reduce_scatter") {
      run_ours = [&] { ours->reduce_scatter(a.data(), b.data(), sz.per, DType::kF32); };
    } else if (o.op == "alltoall") {  // alltoallv with sz.per elements to every peer
      run_ours = [&] {
        std::vector<size_t> counts(world, sz.per);
        ours->alltoallv(a.data(), counts, b.data(), counts, DType::kF32);
      };
    } else if (o.op == "broadcast") {
      run_ours = [&] { ours->broadcast(a.data(), sz.count, DType::kF32, 0); };
      run_plain = [&] {
        gloo::BroadcastOptions p(plain);
        p.setOutput<float>(a.data(), sz.count);
        p.setRoot(0);
        p.setTimeout(o.comm.timeout);
        gloo::broadcast(p);
      };
    } else {  // sendrecv: a ring shift
      run_ours = [&] {
        auto s = ours->send_async(a.data(), sz.count, DType::kF32, right);
        ours->recv(b.data(), sz.count, DType::kF32, left);
        s->wait(o.comm.timeout);
      };
    }

    // One checked op on fresh inputs.
    for (size_t i = 0; i < sz.count; ++i) a[i] = value(rank, i);
    run_ours();
    double err = 0;
    for (size_t i = 0; i < sz.count && o.op != "reduce_scatter" && o.op != "alltoall"; ++i) {
      double want = 0;
      if (o.op == "allreduce")
        for (int q = 0; q < world; ++q) want += value(q, i);
      else if (o.op == "allgather")
        want = value(static_cast<int>(i / sz.per), i % sz.per);
      else if (o.op == "broadcast")
        want = value(0, i);
      else
        want = value(left, i);
      double got = o.op == "allreduce" || o.op == "broadcast" ? a[i] : b[i];
      err = std::max(err, std::fabs(got - want));
    }
    if (o.op == "alltoall")  // chunk q came from rank q: its chunk for this rank
      for (size_t i = 0; i < sz.count; ++i)
        err = std::max(
            err, std::fabs(double(b[i]) - value(int(i / sz.per), rank * sz.per + i % sz.per)));
    if (o.op == "reduce_scatter")
      for (size_t i = 0; i < sz.per; ++i) {
        double want = 0;
        for (int q = 0; q < world; ++q) want += value(q, rank * sz.per + i);
        err = std::max(err, std::fabs(b[i] - want));
      }

    auto time_runs = [&](const Op& op) {
      for (int w = 0; w < o.warmup; ++w) op();
      std::vector<double> samples;
      for (int run = 0; run < o.runs; ++run) {
        ours->barrier();
        auto t0 = Clock::now();
        for (int it = 0; it < o.iters; ++it) op();
        float us = static_cast<float>(
            std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / o.iters);
        ours->allreduce(&us, 1, DType::kF32, ReduceOp::kMax);  // the slowest rank's time
        samples.push_back(us);
      }
      return median(samples);
    };
    BenchRow row;
    row.bytes = sz.count * sizeof(float);
    row.count = sz.count;
    row.us = time_runs(run_ours);
    row.algbw = row.bytes / row.us / 1e3;
    row.busbw = row.algbw * factor;
    float err_f = static_cast<float>(err);
    ours->allreduce(&err_f, 1, DType::kF32, ReduceOp::kMax);
    row.max_err = err_f;
    if (has_plain && run_plain) {
      row.plain_us = time_runs(run_plain);
      row.plain_busbw = row.bytes / row.plain_us / 1e3 * factor;
    }
    rows.push_back(row);
    if (bytes > o.max_bytes / 2) break;  // no overflow past max
  }
  return rows;
}

std::string format_bench_table(const BenchOptions& o, int world,
                               const std::vector<BenchRow>& rows) {
  std::string out = fmt::format(
      "# ptrain bench comm: {} on {} processes ({}), {} iters x {} runs (median), "
      "busbw factor {:.3f}\n",
      o.op, world, o.backend == "shm" ? "shm, shared memory" : "gloo, TCP", o.iters, o.runs,
      bus_factor(o.op, world));
  out += fmt::format("# {:>12} {:>11} {:>11} {:>10} {:>10} {:>9} | {:>11} {:>10} {:>10}\n",
                     "size(B)", "count", "time(us)", "algbw", "busbw", "max_err", "plain(us)",
                     "plain_bus", "ours/plain");
  for (const auto& r : rows) {
    std::string plain = r.plain_us > 0 ? fmt::format("{:>11.1f} {:>10.3f} {:>10.2f}", r.plain_us,
                                                     r.plain_busbw, r.plain_us / r.us)
                                       : fmt::format("{:>11} {:>10} {:>10}", "-", "-", "-");
    out += fmt::format("  {:>12} {:>11} {:>11.1f} {:>10.3f} {:>10.3f} {:>9.2g} | {}\n", r.bytes,
                       r.count, r.us, r.algbw, r.busbw, r.max_err, plain);
  }
  out +=
      "# algbw, busbw in GB/s; plain = gloo's own ring over TCP without ptrain's layer; "
      "ours/plain = plain time / our time\n";
  return out;
}

}  // namespace ptrain::comm
