// TokenSort TensorRT plugin: shape/type rules at build time, launchTokenSort (CUB sort in the TensorRT
// workspace) at run time.
#include "token_sort/trt_plugin.h"

#include "token_sort/kernel.h"
#include "trt_plugin_base.h"
#include "trt_utils.h"

#include <cstdint>
#include <limits>
#include <string>
#include <utility>

namespace defmamba {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginTensorDesc;

namespace {

constexpr int32_t kTOKEN_OFFSET = 0;
constexpr int64_t kMAX_LENGTH = int64_t{1} << 31;  // README: L >= 2^31 is rejected

// Sizes read from concrete input shapes.
struct SortSizes {
  int64_t batch{0}, length{0};
  size_t workspaceBytes{0};  // tokenSortWorkspaceSize(batch, length)
};

// Bytes of workspace launchTokenSort needs for (batch, length). CUB's size query reads the current
// device's properties (no allocation, launch or synchronisation), so it needs a CUDA device.
size_t workspaceBytes(int64_t batch, int64_t length, char const* what) {
  size_t bytes = 0;
  cudaError_t const err = tokenSortWorkspaceSize(batch, length, &bytes);
  if (err != cudaSuccess) {
    (Message() << "workspace size query for (Bt, L) = (" << batch << ", " << length << ")" << what << " failed: "
               << cudaGetErrorName(err) << ": " << cudaGetErrorString(err)).raise();
  }
  return bytes;
}

class TokenSortPlugin final : public PluginBase<TokenSortPlugin, SortSizes, 1> {
 public:
  static constexpr char const* kNAME = "TokenSort";
  static constexpr int32_t kNB_OUTPUTS = 2;  // int64 as in ONNX; int32 accepted too
  static constexpr char const* kINPUT_NAMES[kNB_INPUTS] = {"token_offset"};
  static constexpr char const* kOUTPUT_NAMES[kNB_OUTPUTS] = {"perm", "inv_perm"};
  static constexpr bool kCHECK_OUTPUTS_ON_SHAPE_CHANGE = true;  // the index type is the outputs' own

  explicit TokenSortPlugin(std::string layerName) : PluginBase(std::move(layerName)) {}

  size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept override {
    return guard(size_t{0}, [&] {
      checkCounts(nbInputs, nbOutputs);
      // The largest problem of the profile; CUB's temporary storage grows with the item count, so this
      // also covers every smaller shape TensorRT may run.
      nvinfer1::Dims const& max = inputs[kTOKEN_OFFSET].max;
      if (max.nbDims != 2 || max.d[0] < 0 || max.d[1] < 0) {
        (Message() << "input 'token_offset' (index 0) must have rank 2 (Bt, L) with known profile bounds, kMAX is "
                   << dimsToString(max)).raise();
      }
      return workspaceBytes(max.d[0], max.d[1], " (optimization profile kMAX)");
    });
  }

  static void checkShapes(ShapeView const* v, char const* where) {
    ShapeRules r(kINPUT_NAMES, v, kNB_INPUTS, where);
    r.rank(kTOKEN_OFFSET, 2, "(Bt, L)");
    ShapeView const& x = v[kTOKEN_OFFSET];
    if (x.known(1)) r.below(kTOKEN_OFFSET, x.d[1], "L", kMAX_LENGTH);
    if (x.known(0) && x.known(1) && x.d[1] > 0) {
      // the sort runs over all Bt*L tokens at once (kernel.h: batch * length <= 2^31 - 1)
      int64_t const items = x.d[0] > std::numeric_limits<int64_t>::max() / x.d[1] ? std::numeric_limits<int64_t>::max()
                                                                                   : x.d[0] * x.d[1];
      r.below(kTOKEN_OFFSET, items, "Bt*L", kMAX_LENGTH);
    }
  }

  static void checkProfile(DynamicPluginTensorDesc const* in) {
    ShapeView vMax[kNB_INPUTS] = {ShapeView::of(in[kTOKEN_OFFSET].max)};
    if (vMax[0].rank == 2) checkShapes(vMax, " in the optimization profile (kMAX)");
  }

  static void checkTypes(DataType const* types) {
    if (!isFloatIO(types[kTOKEN_OFFSET])) {
      (Message() << "input 'token_offset' (index 0) must be float32 or float16, got "
                 << dataTypeName(types[kTOKEN_OFFSET])).raise();
    }
  }

  // perm and inv_perm: int64 (the declared type, as in ONNX) or int32, both the same.
  static void checkOutputTypes(DataType const* /*in*/, DataType const* out) {
    if (out[0] != DataType::kINT64 && out[0] != DataType::kINT32) {
      (Message() << "output 'perm' must be int64 (or int32), got " << dataTypeName(out[0])).raise();
    }
    if (out[1] != out[0]) {
      (Message() << "output 'inv_perm' must have the type of output 'perm' (" << dataTypeName(out[0]) << "), got "
                 << dataTypeName(out[1])).raise();
    }
  }

  static void outputTypes(DataType const* /*in*/, DataType* out) {
    out[0] = DataType::kINT64;
    out[1] = DataType::kINT64;
  }

  static void outputShapes(DimsExprs const* in, DimsExprs* out, nvinfer1::IExprBuilder& /*exprBuilder*/) {
    out[0] = in[kTOKEN_OFFSET];  // perm: (Bt, L)
    out[1] = in[kTOKEN_OFFSET];  // inv_perm: (Bt, L)
  }

  static bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut) {
    DataType const t = inOut[pos].desc.type;
    switch (pos) {
      case 0: return isFloatIO(t);
      case 1: return t == DataType::kINT64 || t == DataType::kINT32;
      default: return t == inOut[1].desc.type;  // inv_perm like perm
    }
  }

  static SortSizes sizesOf(PluginTensorDesc const* in) {
    SortSizes s;
    s.batch = in[kTOKEN_OFFSET].dims.d[0];
    s.length = in[kTOKEN_OFFSET].dims.d[1];
    s.workspaceBytes = workspaceBytes(s.batch, s.length, "");
    return s;
  }

  cudaError_t launch(SortSizes const& s, PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                     void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) const {
    if (s.batch == 0 || s.length == 0) return cudaSuccess;  // empty outputs: nothing to launch
    if (s.workspaceBytes > 0 && workspace == nullptr) {
      (Message() << "needs " << s.workspaceBytes << " bytes of workspace for (Bt, L) = (" << s.batch << ", "
                 << s.length << "), TensorRT passed none").raise();
    }
    DataType const inType = inputDesc[kTOKEN_OFFSET].type;
    DataType const indexType = outputDesc[0].type;
    auto const sort = [&](auto value, auto index) {
      using T = decltype(value);
      using Index = decltype(index);
      return launchTokenSort<T, Index>(static_cast<T const*>(inputs[0]), static_cast<Index*>(outputs[0]),
                                       static_cast<Index*>(outputs[1]), s.batch, s.length, workspace,
                                       s.workspaceBytes, stream);
    };
    if (inType == DataType::kFLOAT && indexType == DataType::kINT64) return sort(float{}, int64_t{});
    if (inType == DataType::kHALF && indexType == DataType::kINT64) return sort(__half{}, int64_t{});
    if (inType == DataType::kFLOAT && indexType == DataType::kINT32) return sort(float{}, int32_t{});
    if (inType == DataType::kHALF && indexType == DataType::kINT32) return sort(__half{}, int32_t{});
    checkTypes(&inType);  // raises
    return cudaSuccess;
  }
};

}  // namespace

// ---- creator --------------------------------------------------------------------------------------------
TokenSortPluginCreator::TokenSortPluginCreator() : PluginCreatorBase(TokenSortPlugin::kNAME) {}

nvinfer1::IPluginV3* TokenSortPluginCreator::create(std::string const& layer,
                                                    nvinfer1::PluginFieldCollection const* /*fc*/) const {
  return new TokenSortPlugin(layer);
}

}  // namespace trt
}  // namespace defmamba
