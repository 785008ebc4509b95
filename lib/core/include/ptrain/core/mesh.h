// The process mesh of docs/ARCHITECTURE.md ("The mesh"): world W = dp * tp * pp, and rank r at
// tp = r % TP, dp = (r / TP) % DP, pp = r / (TP * DP) (tensor-parallel innermost, so that a
// tensor group shares a node). The only place that maps ranks to coordinates and back.
#pragma once

namespace ptrain {

struct MeshShape {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  int world() const { return dp * tp * pp; }
  int size() const { return world(); }
  bool operator==(const MeshShape&) const = default;
};

struct MeshCoords {
  int dp = 0;
  int tp = 0;
  int pp = 0;
  bool operator==(const MeshCoords&) const = default;
};

MeshCoords coords_of(int rank, const MeshShape& shape);
int rank_of(const MeshCoords& coords, const MeshShape& shape);

}  // namespace ptrain
