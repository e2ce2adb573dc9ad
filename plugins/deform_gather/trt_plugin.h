// DeformGather as a TensorRT IPluginV3 plugin (name "DeformGather", version "1", namespace "").
// Contract: ../README.md and README.md in this folder. Kernel: kernel.h (launchDeformGather).
#pragma once

#include "trt_utils.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>

namespace defmamba {
namespace trt {

class DeformGatherPlugin final : public nvinfer1::IPluginV3,
                                 public nvinfer1::IPluginV3OneCore,
                                 public nvinfer1::IPluginV3OneBuild,
                                 public nvinfer1::IPluginV3OneRuntime {
 public:
  static constexpr char const* kNAME = "DeformGather";
  static constexpr int32_t kNB_INPUTS = 3;  // x, offset, rpe_table
  static constexpr int32_t kNB_OUTPUTS = 1;  // feat
  static constexpr char const* kINPUT_NAMES[kNB_INPUTS] = {"x", "offset", "rpe_table"};

  explicit DeformGatherPlugin(std::string layerName);
  ~DeformGatherPlugin() override = default;
  DeformGatherPlugin(DeformGatherPlugin const&) = delete;
  DeformGatherPlugin& operator=(DeformGatherPlugin const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kNAME; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getNbOutputs() const noexcept override { return kNB_OUTPUTS; }
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
  char const* getTimingCacheID() noexcept override { return ""; }  // no attributes

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  // Sizes read from concrete input shapes (throws PluginError when they violate the contract).
  struct Sizes {
    int64_t batch{0}, channels{0}, height{0}, width{0}, offsetChannels{0}, tableH{0}, tableW{0};
  };
  static Sizes checkConcrete(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, char const* where);
  void fail(char const* message, nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) const noexcept;

  std::string mLayerName;
  FieldList mSerialFields;
  nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};  // set by attachToContext
  Sizes mSizes{};                                     // cached by onShapeChange ...
  ShapeCache<kNB_INPUTS> mShapes;                     // ... for these input shapes
};

class DeformGatherPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  DeformGatherPluginCreator();

  char const* getPluginName() const noexcept override { return DeformGatherPlugin::kNAME; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  FieldList mFieldNames;
};

}  // namespace trt
}  // namespace defmamba
