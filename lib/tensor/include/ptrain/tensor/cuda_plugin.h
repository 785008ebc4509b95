// The CUDA backend as a plugin: libptrain_cuda.so holds the CUDA op table and the NCCL
// communicator and is loaded with dlopen on first use, so a process that never touches a GPU
// (the launcher, a CPU worker, `ptrain validate`) maps no CUDA library and starts fast.
//
// Where it is looked for, first match wins:
//   $PTRAIN_CUDA_PLUGIN (a file), <exe dir>/../lib, <exe dir>/../../lib, <exe dir>, and the
//   build tree it was compiled in.
#pragma once

#include <string>

namespace ptrain::tensor {

// Bumped whenever an exported entry point changes; a plugin from another build is refused.
inline constexpr int kCudaPluginAbi = 1;

// True when this build compiled the plugin (the toolkit was found), whether or not it is present.
bool cuda_plugin_built();

// The plugin file that would be loaded, "" when none of the places above holds one. Does not load.
std::string cuda_plugin_path();

// Loads the plugin (once; thread-safe) and returns its exported symbol `name`, or nullptr when the
// plugin is missing, cannot be loaded (e.g. libcudart is not on the library path), or lacks the
// symbol; cuda_plugin_error() says which.
void* cuda_plugin_symbol(const char* name);

// Why the plugin could not be loaded ("" once it is loaded, or before the first attempt).
std::string cuda_plugin_error();

// Why cuda_ops() is nullptr: the plugin's load error, or the CUDA runtime's reason (no driver,
// no device); "" when cuda_ops() is usable.
std::string cuda_unavailable_reason();

}  // namespace ptrain::tensor
