// Rank <-> mesh coordinates, tensor-parallel innermost.
#include "ptrain/core/mesh.h"

namespace ptrain {

MeshCoords coords_of(int rank, const MeshShape& s) {
  return {.dp = (rank / s.tp) % s.dp, .tp = rank % s.tp, .pp = rank / (s.tp * s.dp)};
}

int rank_of(const MeshCoords& c, const MeshShape& s) {
  return c.tp + s.tp * (c.dp + s.dp * c.pp);
}

}  // namespace ptrain
