// The 3-D process mesh (docs/ARCHITECTURE.md, "The mesh") as the coordinator hands it out: the
// shape and coordinates of ptrain/core/mesh.h, under the names rendezvous code has always used.
#pragma once

#include "ptrain/core/mesh.h"

namespace ptrain::rendezvous {

using ptrain::coords_of;
using ptrain::MeshCoords;
using ptrain::MeshShape;
using ptrain::rank_of;

}  // namespace ptrain::rendezvous
