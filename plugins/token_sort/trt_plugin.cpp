// TokenSort TensorRT plugin: shape/type rules at build time, launchTokenSort (CUB sort in the TensorRT
// workspace) at run time.
#include "token_sort/trt_plugin.h"

#include "token_sort/kernel.h"

#include <exception>
#include <limits>
#include <new>
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

void checkShapes(ShapeView const* v, char const* where) {
  ShapeRules r(TokenSortPlugin::kINPUT_NAMES, v, TokenSortPlugin::kNB_INPUTS, where);
  r.rank(kTOKEN_OFFSET, 2, "(Bt, L)");
  ShapeView const& x = v[kTOKEN_OFFSET];
  if (x.known(1)) r.below(kTOKEN_OFFSET, x.d[1], "L", kMAX_LENGTH);
  if (x.known(0) && x.known(1) && x.d[1] > 0) {
    // the sort runs over all Bt*L tokens at once (kernel.h: batch * length <= 2^31 - 1)
    int64_t const items =
        x.d[0] > std::numeric_limits<int64_t>::max() / x.d[1] ? std::numeric_limits<int64_t>::max() : x.d[0] * x.d[1];
    r.below(kTOKEN_OFFSET, items, "Bt*L", kMAX_LENGTH);
  }
}

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

void checkCounts(int32_t nbInputs, int32_t nbOutputs) {
  if (nbInputs != TokenSortPlugin::kNB_INPUTS || nbOutputs != TokenSortPlugin::kNB_OUTPUTS) {
    (Message() << "expects " << TokenSortPlugin::kNB_INPUTS << " input (token_offset) and "
               << TokenSortPlugin::kNB_OUTPUTS << " outputs (perm, inv_perm), got " << nbInputs << " inputs and "
               << nbOutputs << " outputs").raise();
  }
}

void checkInputType(DataType t) {
  if (!isFloatIO(t)) {
    (Message() << "input 'token_offset' (index 0) must be float32 or float16, got " << dataTypeName(t)).raise();
  }
}

// perm and inv_perm: int64 (the declared type, as in ONNX) or int32, both the same.
void checkOutputTypes(DataType perm, DataType invPerm) {
  if (perm != DataType::kINT64 && perm != DataType::kINT32) {
    (Message() << "output 'perm' must be int64 (or int32), got " << dataTypeName(perm)).raise();
  }
  if (invPerm != perm) {
    (Message() << "output 'inv_perm' must have the type of output 'perm' (" << dataTypeName(perm) << "), got "
               << dataTypeName(invPerm)).raise();
  }
}

}  // namespace

// ---- plugin ---------------------------------------------------------------------------------------------
TokenSortPlugin::TokenSortPlugin(std::string layerName) : mLayerName(std::move(layerName)) {}

void TokenSortPlugin::fail(char const* message, nvinfer1::ErrorCode code) const noexcept {
  reportError(kNAME, mLayerName, message, mErrorRecorder, code);
}

nvinfer1::IPluginCapability* TokenSortPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* TokenSortPlugin::clone() noexcept {
  try {
    auto* p = new TokenSortPlugin(mLayerName);
    p->mErrorRecorder = mErrorRecorder;
    p->mSizes = mSizes;
    p->mShapes = mShapes;
    return p;
  } catch (std::exception const& e) {
    fail(e.what(), nvinfer1::ErrorCode::kFAILED_ALLOCATION);
  }
  return nullptr;
}

int32_t TokenSortPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                         DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    ShapeView v[kNB_INPUTS] = {ShapeView::of(in[kTOKEN_OFFSET].desc.dims)};
    checkShapes(v, "");
    ShapeView vMax[kNB_INPUTS] = {ShapeView::of(in[kTOKEN_OFFSET].max)};
    if (vMax[0].rank == 2) checkShapes(vMax, " in the optimization profile (kMAX)");
    checkInputType(in[kTOKEN_OFFSET].desc.type);
    checkOutputTypes(out[0].desc.type, out[1].desc.type);
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t TokenSortPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                            int32_t nbInputs) const noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    checkInputType(inputTypes[kTOKEN_OFFSET]);
    outputTypes[0] = DataType::kINT64;
    outputTypes[1] = DataType::kINT64;
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t TokenSortPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                         int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                                         nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    if (nbShapeInputs != 0) (Message() << "takes no shape inputs, got " << nbShapeInputs).raise();
    ShapeView v[kNB_INPUTS] = {ShapeView::of(inputs[kTOKEN_OFFSET])};
    checkShapes(v, "");
    outputs[0] = inputs[kTOKEN_OFFSET];  // perm: (Bt, L)
    outputs[1] = inputs[kTOKEN_OFFSET];  // inv_perm: (Bt, L)
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

bool TokenSortPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                                int32_t nbOutputs) noexcept {
  if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  switch (pos) {
    case 0: return isFloatIO(d.type);
    case 1: return d.type == DataType::kINT64 || d.type == DataType::kINT32;
    default: return d.type == inOut[1].desc.type;  // inv_perm like perm
  }
}

size_t TokenSortPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                         DynamicPluginTensorDesc const* /*outputs*/, int32_t nbOutputs) const noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    // The largest problem of the profile; CUB's temporary storage grows with the item count, so this
    // also covers every smaller shape TensorRT may run.
    nvinfer1::Dims const& max = inputs[kTOKEN_OFFSET].max;
    if (max.nbDims != 2 || max.d[0] < 0 || max.d[1] < 0) {
      (Message() << "input 'token_offset' (index 0) must have rank 2 (Bt, L) with known profile bounds, kMAX is "
                 << dimsToString(max)).raise();
    }
    return workspaceBytes(max.d[0], max.d[1], " (optimization profile kMAX)");
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 0;
}

TokenSortPlugin::Sizes TokenSortPlugin::checkConcrete(PluginTensorDesc const* in, int32_t nbInputs, char const* where) {
  checkCounts(nbInputs, kNB_OUTPUTS);
  nvinfer1::Dims const& dims = in[kTOKEN_OFFSET].dims;
  ShapeView v[kNB_INPUTS] = {ShapeView::of(dims)};
  for (int32_t k = 0; k < dims.nbDims; ++k) {
    if (dims.d[k] < 0) {
      (Message() << "input 'token_offset' (index 0) has an unresolved shape " << dimsToString(dims) << where).raise();
    }
  }
  checkShapes(v, where);
  checkInputType(in[kTOKEN_OFFSET].type);
  Sizes s;
  s.batch = dims.d[0];
  s.length = dims.d[1];
  s.workspaceBytes = workspaceBytes(s.batch, s.length, "");
  return s;
}

int32_t TokenSortPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                       int32_t nbOutputs) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    mSizes = checkConcrete(in, nbInputs, "");
    checkOutputTypes(out[0].type, out[1].type);
    mShapes.store(in);
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t TokenSortPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                 void const* const* inputs, void* const* outputs, void* workspace,
                                 cudaStream_t stream) noexcept {
  try {
    Sizes const s = mShapes.matches(inputDesc, kNB_INPUTS) ? mSizes : checkConcrete(inputDesc, kNB_INPUTS, "");
    DataType const indexType = outputDesc[0].type;
    checkOutputTypes(indexType, outputDesc[1].type);
    if (s.batch == 0 || s.length == 0) return 0;  // empty outputs: nothing to launch
    if (s.workspaceBytes > 0 && workspace == nullptr) {
      (Message() << "needs " << s.workspaceBytes << " bytes of workspace for (Bt, L) = (" << s.batch << ", "
                 << s.length << "), TensorRT passed none").raise();
    }
    DataType const inType = inputDesc[kTOKEN_OFFSET].type;
    void* const perm = outputs[0];
    void* const invPerm = outputs[1];
    cudaError_t err = cudaSuccess;
    if (inType == DataType::kFLOAT && indexType == DataType::kINT64) {
      err = launchTokenSort<float, int64_t>(static_cast<float const*>(inputs[0]), static_cast<int64_t*>(perm),
                                            static_cast<int64_t*>(invPerm), s.batch, s.length, workspace,
                                            s.workspaceBytes, stream);
    } else if (inType == DataType::kHALF && indexType == DataType::kINT64) {
      err = launchTokenSort<__half, int64_t>(static_cast<__half const*>(inputs[0]), static_cast<int64_t*>(perm),
                                             static_cast<int64_t*>(invPerm), s.batch, s.length, workspace,
                                             s.workspaceBytes, stream);
    } else if (inType == DataType::kFLOAT && indexType == DataType::kINT32) {
      err = launchTokenSort<float, int32_t>(static_cast<float const*>(inputs[0]), static_cast<int32_t*>(perm),
                                            static_cast<int32_t*>(invPerm), s.batch, s.length, workspace,
                                            s.workspaceBytes, stream);
    } else if (inType == DataType::kHALF && indexType == DataType::kINT32) {
      err = launchTokenSort<__half, int32_t>(static_cast<__half const*>(inputs[0]), static_cast<int32_t*>(perm),
                                             static_cast<int32_t*>(invPerm), s.batch, s.length, workspace,
                                             s.workspaceBytes, stream);
    } else {
      checkInputType(inType);  // raises
    }
    if (err != cudaSuccess) {
      std::string msg = std::string("CUDA launch failed: ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
      fail(msg.c_str(), nvinfer1::ErrorCode::kFAILED_EXECUTION);
      return 1;
    }
    return 0;
  } catch (std::exception const& e) {
    fail(e.what(), nvinfer1::ErrorCode::kFAILED_EXECUTION);
  }
  return 1;
}

nvinfer1::IPluginV3* TokenSortPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  auto* p = static_cast<TokenSortPlugin*>(clone());
  if (p != nullptr) p->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
  return p;
}

nvinfer1::PluginFieldCollection const* TokenSortPlugin::getFieldsToSerialize() noexcept {
  mSerialFields.clear();  // no attributes
  return mSerialFields.collection();
}

// ---- creator --------------------------------------------------------------------------------------------
TokenSortPluginCreator::TokenSortPluginCreator() = default;

nvinfer1::PluginFieldCollection const* TokenSortPluginCreator::getFieldNames() noexcept {
  return mFieldNames.collection();  // empty
}

nvinfer1::IPluginV3* TokenSortPluginCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                          nvinfer1::TensorRTPhase /*phase*/) noexcept {
  std::string const layer = name != nullptr ? name : "";
  try {
    checkFieldNames(fc, {});
    return new TokenSortPlugin(layer);
  } catch (std::exception const& e) {
    reportError(TokenSortPlugin::kNAME, layer, e.what());
  }
  return nullptr;
}

}  // namespace trt
}  // namespace defmamba
