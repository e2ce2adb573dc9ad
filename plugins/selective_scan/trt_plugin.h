// SelectiveScan as a TensorRT IPluginV3 plugin (name "SelectiveScan", version "1", namespace "").
// Contract: ../README.md and README.md in this folder. Kernel: kernel.h (launchSelectiveScan).
// The plugin class (SelectiveScanPlugin, on PluginBase) is internal to trt_plugin.cpp; TensorRT reaches it
// through this creator (register_trt.cpp).
#pragma once

#include "trt_plugin_base.h"

#include <NvInferRuntime.h>

#include <string>

namespace defmamba {
namespace trt {

// Fields: delta_softplus (kINT32 or kINT64; 0 or 1, default 1); reverse (optional kINT32 or kINT64 array,
// one 0/1 flag per group G = dim 1 of B, 1 = the group scans backwards in time; only groups 0..63 can be
// reversed; absent or empty = every group forward).
class SelectiveScanPluginCreator final : public PluginCreatorBase {
 public:
  SelectiveScanPluginCreator();

 private:
  nvinfer1::IPluginV3* create(std::string const& layer, nvinfer1::PluginFieldCollection const* fc) const override;
};

}  // namespace trt
}  // namespace defmamba
