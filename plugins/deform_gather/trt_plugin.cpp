// DeformGather TensorRT plugin: shape/type rules at build time, launchDeformGather at run time.
#include "deform_gather/trt_plugin.h"

#include "deform_gather/kernel.h"
#include "trt_plugin_base.h"
#include "trt_utils.h"

#include <cstdint>
#include <string>
#include <utility>

namespace defmamba {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;

namespace {

enum Input : int32_t { kX = 0, kOFFSET, kTABLE };
constexpr int64_t kMAX_PLANE = int64_t{1} << 31;  // H * W must fit the kernels' 32-bit pixel index

// Sizes read from concrete input shapes.
struct GatherSizes {
  int64_t batch{0}, channels{0}, height{0}, width{0}, offsetChannels{0}, tableH{0}, tableW{0};
};

// Lower bounds of README.md (hold for every shape TensorRT may run, so they are also checked against the
// optimization profile's kMIN).
void checkLowerBounds(ShapeRules const& r) {
  r.atLeast(kX, 2, "H", 2);
  r.atLeast(kX, 3, "W", 2);
  r.atLeast(kOFFSET, 1, "K", 2);
  r.atLeast(kTABLE, 1, "Th", 1);
  r.atLeast(kTABLE, 2, "Tw", 1);
}

class DeformGatherPlugin final : public PluginBase<DeformGatherPlugin, GatherSizes, 3> {
 public:
  static constexpr char const* kNAME = "DeformGather";
  static constexpr int32_t kNB_OUTPUTS = 1;
  static constexpr char const* kINPUT_NAMES[kNB_INPUTS] = {"x", "offset", "rpe_table"};
  static constexpr char const* kOUTPUT_NAMES[kNB_OUTPUTS] = {"feat"};

  explicit DeformGatherPlugin(std::string layerName) : PluginBase(std::move(layerName)) {}

  // The contract of README.md as rules over (partly) known shapes.
  static void checkShapes(ShapeView const* v, char const* where) {
    ShapeRules r(kINPUT_NAMES, v, kNB_INPUTS, where);
    r.rank(kX, 4, "(Bt, Ch, H, W)");
    r.rank(kOFFSET, 4, "(Bt, K, H, W)");
    r.rank(kTABLE, 3, "(Ch, Th, Tw)");
    checkLowerBounds(r);
    r.equal(kOFFSET, 0, kX, 0, "Bt");
    r.equal(kOFFSET, 2, kX, 2, "H");
    r.equal(kOFFSET, 3, kX, 3, "W");
    r.equal(kTABLE, 0, kX, 1, "Ch");
    if (v[kX].known(2) && v[kX].known(3)) r.below(kX, v[kX].d[2] * v[kX].d[3], "H*W", kMAX_PLANE);
  }

  static void checkProfile(DynamicPluginTensorDesc const* in) {
    ShapeView vMin[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i) vMin[i] = ShapeView::of(in[i].min);
    if (vMin[kX].rank == 4 && vMin[kOFFSET].rank == 4 && vMin[kTABLE].rank == 3) {
      checkLowerBounds(ShapeRules(kINPUT_NAMES, vMin, kNB_INPUTS, " in the optimization profile (kMIN)"));
    }
  }

  // x, offset, rpe_table and feat share T (float32 or float16).
  static void checkTypes(DataType const* types) {
    if (!isFloatIO(types[kX])) {
      (Message() << "input 'x' (index 0) must be float32 or float16, got " << dataTypeName(types[kX])).raise();
    }
    for (int32_t i : {kOFFSET, kTABLE}) {
      if (types[i] != types[kX]) {
        (Message() << "input '" << kINPUT_NAMES[i] << "' (index " << i << ") must have the type of input 'x' ("
                   << dataTypeName(types[kX]) << "), got " << dataTypeName(types[i])).raise();
      }
    }
  }

  static void checkOutputTypes(DataType const* in, DataType const* out) {
    if (out[0] != in[kX]) {
      (Message() << "output 'feat' must have the type of input 'x' (" << dataTypeName(in[kX]) << "), got "
                 << dataTypeName(out[0])).raise();
    }
  }

  static void outputTypes(DataType const* in, DataType* out) { out[0] = in[kX]; }

  static void outputShapes(DimsExprs const* in, DimsExprs* out, nvinfer1::IExprBuilder& /*exprBuilder*/) {
    out[0] = in[kX];  // feat: (Bt, Ch, H, W), the same expressions as x
  }

  static bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) {
    DataType const t = inOut[pos].desc.type;
    return pos == kX ? isFloatIO(t) : t == inOut[kX].desc.type;
  }

  static GatherSizes sizesOf(PluginTensorDesc const* in) {
    GatherSizes s;
    s.batch = in[kX].dims.d[0];
    s.channels = in[kX].dims.d[1];
    s.height = in[kX].dims.d[2];
    s.width = in[kX].dims.d[3];
    s.offsetChannels = in[kOFFSET].dims.d[1];
    s.tableH = in[kTABLE].dims.d[1];
    s.tableW = in[kTABLE].dims.d[2];
    return s;
  }

  cudaError_t launch(GatherSizes const& s, PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                     void const* const* inputs, void* const* outputs, void* /*workspace*/,
                     cudaStream_t stream) const {
    if (s.batch == 0 || s.channels == 0) return cudaSuccess;  // empty output: nothing to launch
    auto const gather = [&](auto value) {
      using T = decltype(value);
      return launchDeformGather<T>(static_cast<T const*>(inputs[kX]), static_cast<T const*>(inputs[kOFFSET]),
                                   static_cast<T const*>(inputs[kTABLE]), static_cast<T*>(outputs[0]), s.batch,
                                   s.channels, s.height, s.width, s.offsetChannels, s.tableH, s.tableW, stream);
    };
    if (inputDesc[kX].type == DataType::kFLOAT) return gather(float{});
    if (inputDesc[kX].type == DataType::kHALF) return gather(__half{});
    (Message() << "input 'x' (index 0) must be float32 or float16, got " << dataTypeName(inputDesc[kX].type)).raise();
  }
};

}  // namespace

// ---- creator --------------------------------------------------------------------------------------------
DeformGatherPluginCreator::DeformGatherPluginCreator() : PluginCreatorBase(DeformGatherPlugin::kNAME) {}

nvinfer1::IPluginV3* DeformGatherPluginCreator::create(std::string const& layer,
                                                       nvinfer1::PluginFieldCollection const* /*fc*/) const {
  return new DeformGatherPlugin(layer);
}

}  // namespace trt
}  // namespace defmamba
