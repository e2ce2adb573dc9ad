// SelectiveScan TensorRT plugin: shape/type rules at build time, launchSelectiveScan at run time.
#include "selective_scan/trt_plugin.h"

#include "selective_scan/kernel.h"

#include <exception>
#include <new>
#include <utility>

namespace defmamba {
namespace trt {

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

namespace {

constexpr char const* kDeltaSoftplus = "delta_softplus";
enum Input : int32_t { kU = 0, kDELTA, kA, kB, kC, kD, kDELTA_BIAS };

// The contract of README.md as rules over (partly) known shapes.
void checkShapes(ShapeView const* v, char const* where) {
  ShapeRules r(SelectiveScanPlugin::kINPUT_NAMES, v, SelectiveScanPlugin::kNB_INPUTS, where);
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

void checkCounts(int32_t nbInputs, int32_t nbOutputs) {
  if (nbInputs != SelectiveScanPlugin::kNB_INPUTS || nbOutputs != SelectiveScanPlugin::kNB_OUTPUTS) {
    (Message() << "expects " << SelectiveScanPlugin::kNB_INPUTS << " inputs (u, delta, A, B, C, D, delta_bias) and "
               << SelectiveScanPlugin::kNB_OUTPUTS << " output (y), got " << nbInputs << " inputs and " << nbOutputs
               << " outputs").raise();
  }
}

// u, delta, B, C share the I/O type T (float32 or float16); A, D, delta_bias are float32.
void checkTypes(DataType const* types) {
  if (!isFloatIO(types[kU])) {
    (Message() << "input 'u' (index 0) must be float32 or float16, got " << dataTypeName(types[kU])).raise();
  }
  for (int32_t i : {kDELTA, kB, kC}) {
    if (types[i] != types[kU]) {
      (Message() << "input '" << SelectiveScanPlugin::kINPUT_NAMES[i] << "' (index " << i
                 << ") must have the type of input 'u' (" << dataTypeName(types[kU]) << "), got "
                 << dataTypeName(types[i])).raise();
    }
  }
  for (int32_t i : {kA, kD, kDELTA_BIAS}) {
    if (types[i] != DataType::kFLOAT) {
      (Message() << "input '" << SelectiveScanPlugin::kINPUT_NAMES[i] << "' (index " << i << ") must be float32, got "
                 << dataTypeName(types[i])).raise();
    }
  }
}

}  // namespace

// ---- plugin ---------------------------------------------------------------------------------------------
SelectiveScanPlugin::SelectiveScanPlugin(std::string layerName, int32_t deltaSoftplus)
    : mLayerName(std::move(layerName)),
      mDeltaSoftplus(deltaSoftplus),
      mMetadata(std::string(kDeltaSoftplus) + "=" + std::to_string(deltaSoftplus)) {}

void SelectiveScanPlugin::fail(char const* message, nvinfer1::ErrorCode code) const noexcept {
  reportError(kNAME, mLayerName, message, mErrorRecorder, code);
}

nvinfer1::IPluginCapability* SelectiveScanPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* SelectiveScanPlugin::clone() noexcept {
  try {
    auto* p = new SelectiveScanPlugin(mLayerName, mDeltaSoftplus);
    p->mErrorRecorder = mErrorRecorder;
    p->mSizes = mSizes;
    p->mShapes = mShapes;
    return p;
  } catch (std::exception const& e) {
    fail(e.what(), nvinfer1::ErrorCode::kFAILED_ALLOCATION);
  }
  return nullptr;
}

int32_t SelectiveScanPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                             DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    ShapeView v[kNB_INPUTS];
    DataType types[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i) {
      v[i] = ShapeView::of(in[i].desc.dims);
      types[i] = in[i].desc.type;
    }
    checkShapes(v, "");
    checkTypes(types);
    if (out[0].desc.type != types[kU]) {
      (Message() << "output 'y' must have the type of input 'u' (" << dataTypeName(types[kU]) << "), got "
                 << dataTypeName(out[0].desc.type)).raise();
    }
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t SelectiveScanPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                                int32_t nbInputs) const noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    checkTypes(inputTypes);
    outputTypes[0] = inputTypes[kU];
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t SelectiveScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
                                             DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs,
                                             DimsExprs* outputs, int32_t nbOutputs,
                                             nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    if (nbShapeInputs != 0) (Message() << "takes no shape inputs, got " << nbShapeInputs).raise();
    ShapeView v[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i) v[i] = ShapeView::of(inputs[i]);
    checkShapes(v, "");
    outputs[0] = inputs[kU];  // y: (Bt, Ch, L), the same expressions as u
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

bool SelectiveScanPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                    int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  switch (pos) {
    case kU: return isFloatIO(d.type);
    case kA:
    case kD:
    case kDELTA_BIAS: return d.type == DataType::kFLOAT;
    default: return d.type == inOut[kU].desc.type;  // delta, B, C and the output y
  }
}

size_t SelectiveScanPlugin::getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                                             int32_t) const noexcept {
  return 0;
}

SelectiveScanPlugin::Sizes SelectiveScanPlugin::checkConcrete(PluginTensorDesc const* in, int32_t nbInputs,
                                                              char const* where) {
  checkCounts(nbInputs, kNB_OUTPUTS);
  ShapeView v[kNB_INPUTS];
  DataType types[kNB_INPUTS];
  for (int32_t i = 0; i < kNB_INPUTS; ++i) {
    v[i] = ShapeView::of(in[i].dims);
    types[i] = in[i].type;
    for (int32_t k = 0; k < in[i].dims.nbDims; ++k) {
      if (in[i].dims.d[k] < 0) {
        (Message() << "input '" << kINPUT_NAMES[i] << "' (index " << i << ") has an unresolved shape "
                   << dimsToString(in[i].dims) << where).raise();
      }
    }
  }
  checkShapes(v, where);
  checkTypes(types);
  Sizes s;
  s.batch = in[kU].dims.d[0];
  s.channels = in[kU].dims.d[1];
  s.length = in[kU].dims.d[2];
  s.groups = in[kB].dims.d[1];
  s.state = in[kB].dims.d[2];
  return s;
}

int32_t SelectiveScanPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
                                           int32_t nbOutputs) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    mSizes = checkConcrete(in, nbInputs, "");
    mShapes.store(in);
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                     void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                     cudaStream_t stream) noexcept {
  try {
    Sizes const s = mShapes.matches(inputDesc, kNB_INPUTS) ? mSizes : checkConcrete(inputDesc, kNB_INPUTS, "");
    if (outputDesc[0].type != inputDesc[kU].type) {
      (Message() << "output 'y' must have the type of input 'u' (" << dataTypeName(inputDesc[kU].type) << "), got "
                 << dataTypeName(outputDesc[0].type)).raise();
    }
    if (s.batch == 0 || s.channels == 0 || s.length == 0) return 0;  // empty output: nothing to launch
    bool const softplus = mDeltaSoftplus != 0;
    auto const* A = static_cast<float const*>(inputs[kA]);
    auto const* D = static_cast<float const*>(inputs[kD]);
    auto const* bias = static_cast<float const*>(inputs[kDELTA_BIAS]);
    cudaError_t err = cudaSuccess;
    if (inputDesc[kU].type == DataType::kFLOAT) {
      err = launchSelectiveScan<float>(static_cast<float const*>(inputs[kU]), static_cast<float const*>(inputs[kDELTA]),
                                       A, static_cast<float const*>(inputs[kB]), static_cast<float const*>(inputs[kC]),
                                       D, bias, static_cast<float*>(outputs[0]), s.batch, s.channels, s.groups,
                                       s.state, s.length, softplus, stream);
    } else if (inputDesc[kU].type == DataType::kHALF) {
      err = launchSelectiveScan<__half>(
          static_cast<__half const*>(inputs[kU]), static_cast<__half const*>(inputs[kDELTA]), A,
          static_cast<__half const*>(inputs[kB]), static_cast<__half const*>(inputs[kC]), D, bias,
          static_cast<__half*>(outputs[0]), s.batch, s.channels, s.groups, s.state, s.length, softplus, stream);
    } else {
      (Message() << "input 'u' (index 0) must be float32 or float16, got " << dataTypeName(inputDesc[kU].type)).raise();
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

nvinfer1::IPluginV3* SelectiveScanPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  auto* p = static_cast<SelectiveScanPlugin*>(clone());
  if (p != nullptr) p->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
  return p;
}

nvinfer1::PluginFieldCollection const* SelectiveScanPlugin::getFieldsToSerialize() noexcept {
  try {
    mSerialFields.clear();
    mSerialFields.add(kDeltaSoftplus, &mDeltaSoftplus, PluginFieldType::kINT32, 1);
    return mSerialFields.collection();
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return nullptr;
}

// ---- creator --------------------------------------------------------------------------------------------
SelectiveScanPluginCreator::SelectiveScanPluginCreator() {
  // The type TensorRT's ONNX parser produces for an ONNX INT attribute; kINT64 is accepted as well.
  mFieldNames.add(kDeltaSoftplus, nullptr, PluginFieldType::kINT32, 1);
}

nvinfer1::PluginFieldCollection const* SelectiveScanPluginCreator::getFieldNames() noexcept {
  return mFieldNames.collection();
}

nvinfer1::IPluginV3* SelectiveScanPluginCreator::createPlugin(char const* name,
                                                              nvinfer1::PluginFieldCollection const* fc,
                                                              nvinfer1::TensorRTPhase /*phase*/) noexcept {
  std::string const layer = name != nullptr ? name : "";
  try {
    // Build phase: the node attributes; runtime phase: what getFieldsToSerialize wrote. Same rules.
    checkFieldNames(fc, {kDeltaSoftplus});
    int64_t const softplus = readIntField(fc, kDeltaSoftplus).value_or(1);
    if (softplus != 0 && softplus != 1) {
      (Message() << "plugin field '" << kDeltaSoftplus << "' must be 0 or 1, got " << softplus).raise();
    }
    return new SelectiveScanPlugin(layer, static_cast<int32_t>(softplus));
  } catch (std::exception const& e) {
    reportError(SelectiveScanPlugin::kNAME, layer, e.what());
  }
  return nullptr;
}

}  // namespace trt
}  // namespace defmamba
