// DeformGather TensorRT plugin: shape/type rules at build time, launchDeformGather at run time.
#include "deform_gather/trt_plugin.h"

#include "deform_gather/kernel.h"

#include <exception>
#include <new>
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

// Lower bounds of README.md (hold for every shape TensorRT may run, so they are also checked against the
// optimization profile's kMIN).
void checkLowerBounds(ShapeRules const& r) {
  r.atLeast(kX, 2, "H", 2);
  r.atLeast(kX, 3, "W", 2);
  r.atLeast(kOFFSET, 1, "K", 2);
  r.atLeast(kTABLE, 1, "Th", 1);
  r.atLeast(kTABLE, 2, "Tw", 1);
}

// The contract of README.md as rules over (partly) known shapes.
void checkShapes(ShapeView const* v, char const* where) {
  ShapeRules r(DeformGatherPlugin::kINPUT_NAMES, v, DeformGatherPlugin::kNB_INPUTS, where);
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

void checkCounts(int32_t nbInputs, int32_t nbOutputs) {
  if (nbInputs != DeformGatherPlugin::kNB_INPUTS || nbOutputs != DeformGatherPlugin::kNB_OUTPUTS) {
    (Message() << "expects " << DeformGatherPlugin::kNB_INPUTS << " inputs (x, offset, rpe_table) and "
               << DeformGatherPlugin::kNB_OUTPUTS << " output (feat), got " << nbInputs << " inputs and " << nbOutputs
               << " outputs").raise();
  }
}

// x, offset, rpe_table and feat share T (float32 or float16).
void checkTypes(DataType const* types) {
  if (!isFloatIO(types[kX])) {
    (Message() << "input 'x' (index 0) must be float32 or float16, got " << dataTypeName(types[kX])).raise();
  }
  for (int32_t i : {kOFFSET, kTABLE}) {
    if (types[i] != types[kX]) {
      (Message() << "input '" << DeformGatherPlugin::kINPUT_NAMES[i] << "' (index " << i
                 << ") must have the type of input 'x' (" << dataTypeName(types[kX]) << "), got "
                 << dataTypeName(types[i])).raise();
    }
  }
}

}  // namespace

// ---- plugin ---------------------------------------------------------------------------------------------
DeformGatherPlugin::DeformGatherPlugin(std::string layerName) : mLayerName(std::move(layerName)) {}

void DeformGatherPlugin::fail(char const* message, nvinfer1::ErrorCode code) const noexcept {
  reportError(kNAME, mLayerName, message, mErrorRecorder, code);
}

nvinfer1::IPluginCapability* DeformGatherPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept {
  switch (type) {
    case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
  }
  return nullptr;
}

nvinfer1::IPluginV3* DeformGatherPlugin::clone() noexcept {
  try {
    auto* p = new DeformGatherPlugin(mLayerName);
    p->mErrorRecorder = mErrorRecorder;
    p->mSizes = mSizes;
    p->mShapes = mShapes;
    return p;
  } catch (std::exception const& e) {
    fail(e.what(), nvinfer1::ErrorCode::kFAILED_ALLOCATION);
  }
  return nullptr;
}

int32_t DeformGatherPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                            DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    ShapeView v[kNB_INPUTS];
    ShapeView vMin[kNB_INPUTS];
    DataType types[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i) {
      v[i] = ShapeView::of(in[i].desc.dims);
      vMin[i] = ShapeView::of(in[i].min);
      types[i] = in[i].desc.type;
    }
    checkShapes(v, "");
    if (vMin[kX].rank == 4 && vMin[kOFFSET].rank == 4 && vMin[kTABLE].rank == 3) {
      checkLowerBounds(ShapeRules(kINPUT_NAMES, vMin, kNB_INPUTS, " in the optimization profile (kMIN)"));
    }
    checkTypes(types);
    if (out[0].desc.type != types[kX]) {
      (Message() << "output 'feat' must have the type of input 'x' (" << dataTypeName(types[kX]) << "), got "
                 << dataTypeName(out[0].desc.type)).raise();
    }
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t DeformGatherPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                               int32_t nbInputs) const noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    checkTypes(inputTypes);
    outputTypes[0] = inputTypes[kX];
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

int32_t DeformGatherPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                            int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
                                            nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  try {
    checkCounts(nbInputs, nbOutputs);
    if (nbShapeInputs != 0) (Message() << "takes no shape inputs, got " << nbShapeInputs).raise();
    ShapeView v[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i) v[i] = ShapeView::of(inputs[i]);
    checkShapes(v, "");
    outputs[0] = inputs[kX];  // feat: (Bt, Ch, H, W), the same expressions as x
    return 0;
  } catch (std::exception const& e) {
    fail(e.what());
  }
  return 1;
}

bool DeformGatherPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut,
                                                   int32_t nbInputs, int32_t nbOutputs) noexcept {
  if (nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != nvinfer1::TensorFormat::kLINEAR) return false;
  return pos == kX ? isFloatIO(d.type) : d.type == inOut[kX].desc.type;
}

size_t DeformGatherPlugin::getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                                            int32_t) const noexcept {
  return 0;
}

DeformGatherPlugin::Sizes DeformGatherPlugin::checkConcrete(PluginTensorDesc const* in, int32_t nbInputs,
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
  s.batch = in[kX].dims.d[0];
  s.channels = in[kX].dims.d[1];
  s.height = in[kX].dims.d[2];
  s.width = in[kX].dims.d[3];
  s.offsetChannels = in[kOFFSET].dims.d[1];
  s.tableH = in[kTABLE].dims.d[1];
  s.tableW = in[kTABLE].dims.d[2];
  return s;
}

int32_t DeformGatherPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*,
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

int32_t DeformGatherPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                                    void const* const* inputs, void* const* outputs, void* /*workspace*/,
                                    cudaStream_t stream) noexcept {
  try {
    Sizes const s = mShapes.matches(inputDesc, kNB_INPUTS) ? mSizes : checkConcrete(inputDesc, kNB_INPUTS, "");
    if (outputDesc[0].type != inputDesc[kX].type) {
      (Message() << "output 'feat' must have the type of input 'x' (" << dataTypeName(inputDesc[kX].type)
                 << "), got " << dataTypeName(outputDesc[0].type)).raise();
    }
    if (s.batch == 0 || s.channels == 0) return 0;  // empty output: nothing to launch
    cudaError_t err = cudaSuccess;
    if (inputDesc[kX].type == DataType::kFLOAT) {
      err = launchDeformGather<float>(static_cast<float const*>(inputs[kX]), static_cast<float const*>(inputs[kOFFSET]),
                                      static_cast<float const*>(inputs[kTABLE]), static_cast<float*>(outputs[0]),
                                      s.batch, s.channels, s.height, s.width, s.offsetChannels, s.tableH, s.tableW,
                                      stream);
    } else if (inputDesc[kX].type == DataType::kHALF) {
      err = launchDeformGather<__half>(static_cast<__half const*>(inputs[kX]),
                                       static_cast<__half const*>(inputs[kOFFSET]),
                                       static_cast<__half const*>(inputs[kTABLE]), static_cast<__half*>(outputs[0]),
                                       s.batch, s.channels, s.height, s.width, s.offsetChannels, s.tableH, s.tableW,
                                       stream);
    } else {
      (Message() << "input 'x' (index 0) must be float32 or float16, got " << dataTypeName(inputDesc[kX].type)).raise();
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

nvinfer1::IPluginV3* DeformGatherPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept {
  auto* p = static_cast<DeformGatherPlugin*>(clone());
  if (p != nullptr) p->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
  return p;
}

nvinfer1::PluginFieldCollection const* DeformGatherPlugin::getFieldsToSerialize() noexcept {
  mSerialFields.clear();  // no attributes
  return mSerialFields.collection();
}

// ---- creator --------------------------------------------------------------------------------------------
DeformGatherPluginCreator::DeformGatherPluginCreator() = default;

nvinfer1::PluginFieldCollection const* DeformGatherPluginCreator::getFieldNames() noexcept {
  return mFieldNames.collection();  // empty
}

nvinfer1::IPluginV3* DeformGatherPluginCreator::createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                                             nvinfer1::TensorRTPhase /*phase*/) noexcept {
  std::string const layer = name != nullptr ? name : "";
  try {
    checkFieldNames(fc, {});
    return new DeformGatherPlugin(layer);
  } catch (std::exception const& e) {
    reportError(DeformGatherPlugin::kNAME, layer, e.what());
  }
  return nullptr;
}

}  // namespace trt
}  // namespace defmamba
