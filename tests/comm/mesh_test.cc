// ProcessMesh: coordinates and groups of docs/ARCHITECTURE.md ("The mesh"), lazy communicators per
// group, and the backend choice.
#include "ptrain/comm/mesh.h"

#include <gtest/gtest.h>

#include "harness.h"
#include "ptrain/comm/nccl.h"
#include "ptrain/core/error.h"

namespace ptrain::comm {
namespace {

using testing::expect_all_ok;
using testing::run_ranks;

const MeshShape k222{.dp = 2, .tp = 2, .pp = 2};

CommFactory no_factory() {
  return [](const GroupSpec&) -> std::unique_ptr<Communicator> { return nullptr; };
}

TEST(Mesh, CoordsPutTensorInnermostThenDataThenPipeline) {
  // r -> (dp, tp, pp) for a 2x2x2 mesh.
  const MeshCoords want[8] = {{0, 0, 0}, {0, 1, 0}, {1, 0, 0}, {1, 1, 0},
                              {0, 0, 1}, {0, 1, 1}, {1, 0, 1}, {1, 1, 1}};
  for (int r = 0; r < 8; ++r) {
    EXPECT_EQ(ProcessMesh::coords_of(r, k222), want[r]) << "rank " << r;
    EXPECT_EQ(ProcessMesh::rank_of(want[r], k222), r);
  }
}

TEST(Mesh, GroupsOf2x2x2) {
  ProcessMesh mesh(5, 8, k222, no_factory());  // rank 5 = dp 0, tp 1, pp 1
  EXPECT_EQ(mesh.group_ranks(GroupKind::kTp), (std::vector<int>{4, 5}));
  EXPECT_EQ(mesh.group_ranks(GroupKind::kDp), (std::vector<int>{5, 7}));
  EXPECT_EQ(mesh.group_ranks(GroupKind::kPp), (std::vector<int>{1, 5}));
  EXPECT_EQ(mesh.group_ranks(GroupKind::kWorld).size(), 8u);
  auto dp = mesh.group_spec(GroupKind::kDp);
  EXPECT_EQ(dp.name, "dp[5,7]");
  EXPECT_EQ(dp.rank, 0);
  EXPECT_EQ(mesh.group_spec(GroupKind::kPp).rank, 1);
}

TEST(Mesh, KeyPrefixesDifferPerGroupAndRound) {
  ProcessMesh a(0, 8, k222, no_factory(), 0), b(1, 8, k222, no_factory(), 0),
      a1(0, 8, k222, no_factory(), 1);
  EXPECT_NE(a.group_spec(GroupKind::kDp).key_prefix, b.group_spec(GroupKind::kDp).key_prefix);
  EXPECT_EQ(a.group_spec(GroupKind::kTp).key_prefix, b.group_spec(GroupKind::kTp).key_prefix);
  EXPECT_NE(a.group_spec(GroupKind::kTp).key_prefix, a1.group_spec(GroupKind::kTp).key_prefix);
}

TEST(Mesh, WorldThatIsNotTheProductIsAConfigError) {
  EXPECT_THROW(ProcessMesh(0, 6, k222, no_factory()), ConfigError);
  EXPECT_THROW(ProcessMesh(8, 8, k222, no_factory()), ConfigError);
}

TEST(Mesh, EveryGroupReducesOverItsOwnRanksWithGloo) {
  auto store = std::make_shared<rendezvous::MemoryStore>();
  expect_all_ok(run_ranks(8, [&](int r) {
    ProcessMesh mesh(r, 8, k222, make_comm_factory(Backend::kGloo, store, {}));
    for (GroupKind kind : {GroupKind::kTp, GroupKind::kDp, GroupKind::kPp, GroupKind::kWorld}) {
      float x = static_cast<float>(r);
      mesh.group(kind).allreduce(&x, 1, DType::kF32);
      float want = 0;
      for (int q : mesh.group_ranks(kind)) want += static_cast<float>(q);
      ASSERT_EQ(x, want) << to_string(kind) << " on rank " << r;
    }
    EXPECT_EQ(&mesh.dp(), &mesh.group(GroupKind::kDp));  // created once
  }));
}

TEST(Backend, AutoPicksNcclOnlyWhenEveryRankHasItsOwnGpu) {
  // Otherwise the host-memory choice per group: shm within a host, Gloo across hosts.
  EXPECT_EQ(choose_backend("auto", tensor::Device::kCpu, 0), Backend::kHostAuto);
  EXPECT_EQ(choose_backend("auto", tensor::Device::kCuda, 2), Backend::kHostAuto);
  EXPECT_EQ(choose_backend("auto", tensor::Device::kCuda, 1),
            nccl_built() ? Backend::kNccl : Backend::kHostAuto);
  EXPECT_EQ(choose_backend("gloo", tensor::Device::kCuda, 1), Backend::kGloo);
  EXPECT_EQ(choose_backend("shm", tensor::Device::kCpu, 1), Backend::kShm);
}

TEST(Backend, ImpossibleRequestsAreConfigErrors) {
  EXPECT_THROW(choose_backend("nccl", tensor::Device::kCpu, 0), ConfigError);
  EXPECT_THROW(choose_backend("nccl", tensor::Device::kCuda, 2), ConfigError);
  EXPECT_THROW(choose_backend("mpi", tensor::Device::kCpu, 0), ConfigError);
}

}  // namespace
}  // namespace ptrain::comm
