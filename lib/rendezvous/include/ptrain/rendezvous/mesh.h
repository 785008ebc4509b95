// The 3-D process mesh (DESIGN.md section 4): rank -> (dp, tp, pp) coordinates, tensor-parallel
// innermost so that a tensor group shares a node.
#pragma once

namespace ptrain::rendezvous {

struct MeshShape {
  int dp = 1, tp = 1, pp = 1;
  int size() const { return dp * tp * pp; }
};

struct MeshCoords {
  int dp = 0, tp = 0, pp = 0;
};

// tp = r % TP; dp = (r / TP) % DP; pp = r / (TP * DP).
inline MeshCoords coords_of(int rank, const MeshShape& shape) {
  return {(rank / shape.tp) % shape.dp, rank % shape.tp, rank / (shape.tp * shape.dp)};
}

}  // namespace ptrain::rendezvous
