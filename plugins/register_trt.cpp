// Entry points of libdefmamba_trt_plugins.so, the TensorRT plugin library (IPluginV3).
//
// TensorRT 10 loads a plugin library through IPluginRegistry::loadLibrary (C++), registry.load_library
// (Python), `trtexec --dynamicPlugins=<lib>`, or from a version-compatible plan that carries it. It then
// looks up these C symbols:
//   getCreators(int32_t& nbCreators)      -> the IPluginCreatorInterface list (IPluginV3 creators), and
//   setLoggerFinder(ILoggerFinder* finder) -> lets the plugins log through TensorRT's logger.
// (getPluginCreators, the IPluginV2 counterpart, is not exported: there are no V2 plugins here.)
//
// The library does not link libnvinfer and does not register itself when it is loaded (no
// REGISTER_TENSORRT_PLUGIN, which calls getPluginRegistry() in libnvinfer): registration is TensorRT's
// job via loadLibrary. Consequently `trtexec --staticPlugins=<lib>` (a plain dlopen) registers nothing.
// All creators use namespace "" and version "1" (see plugins/README.md, section "TensorRT").
#include "deform_gather/trt_plugin.h"
#include "selective_scan/trt_plugin.h"
#include "token_sort/trt_plugin.h"
#include "trt_utils.h"

#include <NvInferRuntime.h>

#include <array>
#include <cstdint>
#include <exception>
#include <tuple>

#if defined(_WIN32)
#define DEFMAMBA_TRT_EXPORT __declspec(dllexport)
#else
#define DEFMAMBA_TRT_EXPORT __attribute__((visibility("default")))
#endif

namespace {

using namespace defmamba::trt;

// One creator per op, in the order getCreators lists them; a new op adds its trt_plugin.h above and its
// creator class here.
using CreatorTypes = std::tuple<SelectiveScanPluginCreator, DeformGatherPluginCreator, TokenSortPluginCreator>;
constexpr size_t kNbCreators = std::tuple_size<CreatorTypes>::value;

// The creators, alive for as long as the library is loaded (TensorRT deregisters them before it
// unloads the library), and the list of them that getCreators hands out.
struct Creators {
  CreatorTypes creators;
  std::array<nvinfer1::IPluginCreatorInterface*, kNbCreators> list = std::apply(
      [](auto&... c) { return std::array<nvinfer1::IPluginCreatorInterface*, kNbCreators>{&c...}; }, creators);
};

}  // namespace

extern "C" DEFMAMBA_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) noexcept {
  try {
    static Creators creators;
    nbCreators = static_cast<int32_t>(creators.list.size());
    return creators.list.data();
  } catch (std::exception const& e) {
    Log::log(nvinfer1::ILogger::Severity::kERROR, e.what());
  } catch (...) {
  }
  nbCreators = 0;
  return nullptr;
}

extern "C" DEFMAMBA_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept {
  Log::setLoggerFinder(finder);
}
