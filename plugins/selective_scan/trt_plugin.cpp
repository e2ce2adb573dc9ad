// SelectiveScan TensorRT plugin: shape/type rules at build time, launchSelectiveScan at run time.
#include "selective_scan/trt_plugin.h"

#include "selective_scan/kernel.h"
#include "trt_plugin_base.h"
#include "trt_utils.h"

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace defmamba {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

namespace {

constexpr char const* kDeltaSoftplus = "delta_softplus";
constexpr char const* kReverse = "reverse";
constexpr int64_t kMaxReversibleGroups = 64;  // the kernels take the flags as a 64-bit mask
enum Input : int32_t { kU = 0, kDELTA, kA, kB, kC, kD, kDELTA_BIAS };

// Scan sizes read from concrete input shapes.
struct ScanSizes {
  int64_t batch{0}, channels{0}, length{0}, groups{0}, state{0};
};

class SelectiveScanPlugin final : public PluginBase<SelectiveScanPlugin, ScanSizes, 7> {
 public:
  static constexpr char const* kNAME = "SelectiveScan";
  static constexpr int32_t kNB_OUTPUTS = 1;
  static constexpr char const* kINPUT_NAMES[kNB_INPUTS] = {"u", "delta", "A", "B", "C", "D", "delta_bias"};
  static constexpr char const* kOUTPUT_NAMES[kNB_OUTPUTS] = {"y"};

  // reverse: validated flags (0/1, a 1 only at index < 64); empty = every group forward.
  SelectiveScanPlugin(std::string layerName, int32_t deltaSoftplus, std::vector<int32_t> reverse)
      : PluginBase(std::move(layerName)),
        mDeltaSoftplus(deltaSoftplus),
        mReverse(std::move(reverse)),
        mReverseMask(maskOf(mReverse)),
        mMetadata(metadataOf(mDeltaSoftplus, mReverse)) {}

  char const* getTimingCacheID() noexcept override { return mMetadata.c_str(); }
  char const* getMetadataString() noexcept override { return mMetadata.c_str(); }

  // The shape rules (PluginBase) and then, where G (dim 1 of B) is known, one reverse flag per group:
  // symbolic shapes (ONNX parser), network dims (builder), concrete shapes (runtime; enqueue: launch).
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override {
    if (PluginBase::getOutputShapes(inputs, nbInputs, shapeInputs, nbShapeInputs, outputs, nbOutputs, exprBuilder) !=
        0) {
      return 1;
    }
    return guard(1, [&] {
      checkReverse(ShapeView::of(inputs[kB]).d[1]);
      return 0;
    });
  }
  int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
                          int32_t nbOutputs) noexcept override {
    if (PluginBase::configurePlugin(in, nbInputs, out, nbOutputs) != 0) return 1;
    return guard(1, [&] {
      checkReverse(ShapeView::of(in[kB].desc.dims).d[1]);
      return 0;
    });
  }
  int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    if (PluginBase::onShapeChange(in, nbInputs, out, nbOutputs) != 0) return 1;
    return guard(1, [&] {
      checkReverse(in[kB].dims.d[1]);
      return 0;
    });
  }

  // The contract of README.md as rules over (partly) known shapes.
  static void checkShapes(ShapeView const* v, char const* where) {
    ShapeRules r(kINPUT_NAMES, v, kNB_INPUTS, where);
    r.rank(kU, 3, "(Bt, Ch, L)");
    r.rank(kDELTA, 3, "(Bt, Ch, L)");
    r.rank(kA, 2, "(Ch, N)");
    r.rank(kB, 4, "(Bt, G, N, L)");
    r.rank(kC, 4, "(Bt, G, N, L)");
    r.rank(kD, 1, "(Ch,)");
    r.rank(kDELTA_BIAS, 1, "(Ch,)");
    r.equal(kDELTA, 0, kU, 0, "Bt");
    r.equal(kDELTA, 1, kU, 1, "Ch");
    r.equal(kDELTA, 2, kU, 2, "L");
    r.equal(kB, 0, kU, 0, "Bt");
    r.equal(kB, 3, kU, 2, "L");
    r.atLeast(kB, 1, "G", 1);
    r.atLeast(kB, 2, "N", 1);
    char const* const bDims[4] = {"Bt", "G", "N", "L"};
    for (int32_t d = 0; d < 4; ++d) r.equal(kC, d, kB, d, bDims[d]);
    r.divides(kB, 1, "G", kU, 1, "Ch");
    r.equal(kA, 0, kU, 1, "Ch");
    r.equal(kA, 1, kB, 2, "N");
    r.equal(kD, 0, kU, 1, "Ch");
    r.equal(kDELTA_BIAS, 0, kU, 1, "Ch");
  }

  // u, delta, B, C share the I/O type T (float32 or float16); A, D, delta_bias are float32.
  static void checkTypes(DataType const* types) {
    if (!isFloatIO(types[kU])) {
      (Message() << "input 'u' (index 0) must be float32 or float16, got " << dataTypeName(types[kU])).raise();
    }
    for (int32_t i : {kDELTA, kB, kC}) {
      if (types[i] != types[kU]) {
        (Message() << "input '" << kINPUT_NAMES[i] << "' (index " << i << ") must have the type of input 'u' ("
                   << dataTypeName(types[kU]) << "), got " << dataTypeName(types[i])).raise();
      }
    }
    for (int32_t i : {kA, kD, kDELTA_BIAS}) {
      if (types[i] != DataType::kFLOAT) {
        (Message() << "input '" << kINPUT_NAMES[i] << "' (index " << i << ") must be float32, got "
                   << dataTypeName(types[i])).raise();
      }
    }
  }

  static void checkOutputTypes(DataType const* in, DataType const* out) {
    if (out[0] != in[kU]) {
      (Message() << "output 'y' must have the type of input 'u' (" << dataTypeName(in[kU]) << "), got "
                 << dataTypeName(out[0])).raise();
    }
  }

  static void outputTypes(DataType const* in, DataType* out) { out[0] = in[kU]; }

  static void outputShapes(DimsExprs const* in, DimsExprs* out, nvinfer1::IExprBuilder& /*exprBuilder*/) {
    out[0] = in[kU];  // y: (Bt, Ch, L), the same expressions as u
  }

  static bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) {
    DataType const t = inOut[pos].desc.type;
    switch (pos) {
      case kU: return isFloatIO(t);
      case kA:
      case kD:
      case kDELTA_BIAS: return t == DataType::kFLOAT;
      default: return t == inOut[kU].desc.type;  // delta, B, C and the output y
    }
  }

  static ScanSizes sizesOf(PluginTensorDesc const* in) {
    ScanSizes s;
    s.batch = in[kU].dims.d[0];
    s.channels = in[kU].dims.d[1];
    s.length = in[kU].dims.d[2];
    s.groups = in[kB].dims.d[1];
    s.state = in[kB].dims.d[2];
    return s;
  }

  cudaError_t launch(ScanSizes const& s, PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                     void const* const* inputs, void* const* outputs, void* /*workspace*/,
                     cudaStream_t stream) const {
    if (s.batch == 0 || s.channels == 0 || s.length == 0) return cudaSuccess;  // empty output: nothing to launch
    checkReverse(s.groups);
    bool const softplus = mDeltaSoftplus != 0;
    auto const* A = static_cast<float const*>(inputs[kA]);
    auto const* D = static_cast<float const*>(inputs[kD]);
    auto const* bias = static_cast<float const*>(inputs[kDELTA_BIAS]);
    auto const scan = [&](auto value) {
      using T = decltype(value);
      return launchSelectiveScan<T>(static_cast<T const*>(inputs[kU]), static_cast<T const*>(inputs[kDELTA]), A,
                                    static_cast<T const*>(inputs[kB]), static_cast<T const*>(inputs[kC]), D, bias,
                                    static_cast<T*>(outputs[0]), s.batch, s.channels, s.groups, s.state, s.length,
                                    softplus, stream, mReverseMask);
    };
    if (inputDesc[kU].type == DataType::kFLOAT) return scan(float{});
    if (inputDesc[kU].type == DataType::kHALF) return scan(__half{});
    (Message() << "input 'u' (index 0) must be float32 or float16, got " << dataTypeName(inputDesc[kU].type)).raise();
  }

  void serializeFields(FieldList& fields) const {
    fields.add(kDeltaSoftplus, &mDeltaSoftplus, PluginFieldType::kINT32, 1);
    if (!mReverse.empty()) {
      fields.add(kReverse, mReverse.data(), PluginFieldType::kINT32, static_cast<int32_t>(mReverse.size()));
    }
  }

 private:
  // "delta_softplus=1", plus ";reverse=0,1,0" when flags are given (timing cache ID and metadata).
  static std::string metadataOf(int32_t deltaSoftplus, std::vector<int32_t> const& reverse) {
    std::string m = std::string(kDeltaSoftplus) + "=" + std::to_string(deltaSoftplus);
    if (!reverse.empty()) {
      m += std::string(";") + kReverse + "=";
      for (size_t g = 0; g < reverse.size(); ++g) m += (g ? "," : "") + std::to_string(reverse[g]);
    }
    return m;
  }

  // Bit g set = group g scans backwards (launchSelectiveScan's reverse_mask).
  static uint64_t maskOf(std::vector<int32_t> const& reverse) {
    uint64_t mask = 0;
    for (size_t g = 0; g < reverse.size() && g < static_cast<size_t>(kMaxReversibleGroups); ++g) {
      if (reverse[g] != 0) mask |= uint64_t{1} << g;
    }
    return mask;
  }

  // One flag per group when flags are given; groups < 0: G not known yet (nothing to check).
  void checkReverse(int64_t groups) const {
    if (mReverse.empty() || groups < 0 || groups == static_cast<int64_t>(mReverse.size())) return;
    (Message() << "plugin field '" << kReverse << "' has " << mReverse.size()
               << (mReverse.size() == 1 ? " flag" : " flags") << " but input 'B' (index " << kB << ") has G = "
               << groups << " groups (dim 1); give one 0/1 flag per group, or none").raise();
  }

  int32_t mDeltaSoftplus;         // 0 or 1; serialised as field "delta_softplus" (kINT32)
  std::vector<int32_t> mReverse;  // 0/1 per group, or empty; serialised as field "reverse" (kINT32[G]) if given
  uint64_t mReverseMask;          // mReverse as a bit mask
  std::string mMetadata;
};

}  // namespace

// ---- creator --------------------------------------------------------------------------------------------
SelectiveScanPluginCreator::SelectiveScanPluginCreator() : PluginCreatorBase(SelectiveScanPlugin::kNAME) {
  // The type TensorRT's ONNX parser produces for an ONNX INT attribute; kINT64 is accepted as well.
  declareField(kDeltaSoftplus, PluginFieldType::kINT32, 1);
  // Optional, one flag per group: an ONNX INTS attribute arrives as a kINT32 array (kINT64 accepted).
  // Length 0 here: the length is G, not fixed.
  declareField(kReverse, PluginFieldType::kINT32, 0);
}

nvinfer1::IPluginV3* SelectiveScanPluginCreator::create(std::string const& layer,
                                                        nvinfer1::PluginFieldCollection const* fc) const {
  int64_t const softplus = readIntField(fc, kDeltaSoftplus).value_or(1);
  if (softplus != 0 && softplus != 1) {
    (Message() << "plugin field '" << kDeltaSoftplus << "' must be 0 or 1, got " << softplus).raise();
  }
  std::vector<int64_t> const reverse = readIntsField(fc, kReverse).value_or(std::vector<int64_t>{});
  std::vector<int32_t> flags;
  for (size_t g = 0; g < reverse.size(); ++g) {
    if (reverse[g] != 0 && reverse[g] != 1) {
      (Message() << "plugin field '" << kReverse << "' must hold 0 or 1 per group, got " << reverse[g]
                 << " at index " << g).raise();
    }
    if (reverse[g] == 1 && static_cast<int64_t>(g) >= kMaxReversibleGroups) {
      (Message() << "plugin field '" << kReverse << "': only groups 0.." << kMaxReversibleGroups - 1
                 << " can be reversed, got a 1 at index " << g
                 << "; number the groups so that the reversed ones come first, or split the node").raise();
    }
    flags.push_back(static_cast<int32_t>(reverse[g]));
  }
  return new SelectiveScanPlugin(layer, static_cast<int32_t>(softplus), std::move(flags));
}

}  // namespace trt
}  // namespace defmamba
