// TokenSort as a TensorRT IPluginV3 plugin (name "TokenSort", version "1", namespace "").
// Contract: ../README.md and README.md in this folder. Kernel: kernel.h (launchTokenSort, tokenSortWorkspaceSize).
// The plugin class (TokenSortPlugin, on PluginBase) is internal to trt_plugin.cpp; TensorRT reaches it
// through this creator (register_trt.cpp).
#pragma once

#include "trt_plugin_base.h"

#include <NvInferRuntime.h>

#include <string>

namespace defmamba {
namespace trt {

// No fields.
class TokenSortPluginCreator final : public PluginCreatorBase {
 public:
  TokenSortPluginCreator();

 private:
  nvinfer1::IPluginV3* create(std::string const& layer, nvinfer1::PluginFieldCollection const* fc) const override;
};

}  // namespace trt
}  // namespace defmamba
