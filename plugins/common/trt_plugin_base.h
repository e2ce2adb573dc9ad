// Bases of the TensorRT plugins (<op>/trt_plugin.{h,cpp}): the IPluginV3 plumbing that is the same for every
// op, so that each op's file holds only its contract (fields, shape/type/format rules) and its launch.
//
//  * PluginBase<Derived, Sizes, NbInputs> (CRTP): one object in all three roles (IPluginV3OneCore, ...Build,
//    ...Runtime); getCapabilityInterface, identity, clone/attachToContext, getFieldsToSerialize, the I/O
//    count check, the concrete-shape check cached by onShapeChange for enqueue, and a try/catch around
//    every noexcept entry point that reports "<Op>: <message> [layer '<name>']" (reportError, trt_utils.h)
//    to the TensorRT logger and, after attachToContext, to the execution context's error recorder.
//  * PluginCreatorBase: identity, the fields declared in the op's creator constructor (getFieldNames, and
//    the only names createPlugin accepts), and createPlugin's error routing.
//
// Derived provides (static unless marked "member"; I/O counts are checked before any of them is called):
//   kNAME, kNB_OUTPUTS, kINPUT_NAMES[kNB_INPUTS], kOUTPUT_NAMES[kNB_OUTPUTS]  (kNB_INPUTS = NbInputs)
//   void checkShapes(ShapeView const* in, char const* where)          shape contract over (partly) known dims
//   void checkTypes(DataType const* in)                               input types
//   void checkOutputTypes(DataType const* in, DataType const* out)    output types (configurePlugin, enqueue)
//   void outputTypes(DataType const* in, DataType* out)               getOutputDataTypes
//   void outputShapes(DimsExprs const* in, DimsExprs* out, IExprBuilder&)
//   bool supportsType(int32_t pos, DynamicPluginTensorDesc const* inOut)   the format is already kLINEAR
//   Sizes sizesOf(PluginTensorDesc const* in)                         from concrete shapes that passed the rules
//   cudaError_t launch(Sizes const&, inputDesc, outputDesc, inputs, outputs, workspace, stream) const  (member)
// and, where the defaults below (which do nothing) do not fit:
//   void checkProfile(DynamicPluginTensorDesc const* in)              profile bounds, in configurePlugin
//   kCHECK_OUTPUTS_ON_SHAPE_CHANGE                                    checkOutputTypes in onShapeChange too
//   void serializeFields(FieldList& fields) const  (member)           attributes for getFieldsToSerialize
// plus its own overrides of plain virtuals (getWorkspaceSize, getTimingCacheID, getMetadataString).
#pragma once

#include "trt_utils.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <exception>
#include <string>
#include <utility>

namespace defmamba {
namespace trt {

template <class Derived, class Sizes, int32_t NbInputs>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
 public:
  static constexpr int32_t kNB_INPUTS = NbInputs;

  PluginBase& operator=(PluginBase const&) = delete;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
    switch (type) {
      case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
      case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
      case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  // A deep copy (attributes, error recorder, cached shapes) that outlives this object.
  nvinfer1::IPluginV3* clone() noexcept override {
    return guard<nvinfer1::IPluginV3*>(
        nullptr, [&] { return new Derived(self()); }, nvinfer1::ErrorCode::kFAILED_ALLOCATION);
  }

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return Derived::kNAME; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override {
    return guard(1, [&] {
      checkCounts(nbInputs, nbOutputs);
      ShapeView v[NbInputs];
      nvinfer1::DataType inTypes[NbInputs];
      nvinfer1::DataType outTypes[Derived::kNB_OUTPUTS];
      for (int32_t i = 0; i < NbInputs; ++i) {
        v[i] = ShapeView::of(in[i].desc.dims);
        inTypes[i] = in[i].desc.type;
      }
      for (int32_t i = 0; i < Derived::kNB_OUTPUTS; ++i) outTypes[i] = out[i].desc.type;
      Derived::checkShapes(v, "");
      Derived::checkProfile(in);
      Derived::checkTypes(inTypes);
      Derived::checkOutputTypes(inTypes, outTypes);
      return 0;
    });
  }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    return guard(1, [&] {
      checkCounts(nbInputs, nbOutputs);
      Derived::checkTypes(inputTypes);
      Derived::outputTypes(inputTypes, outputTypes);
      return 0;
    });
  }
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
                          nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t nbShapeInputs,
                          nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override {
    return guard(1, [&] {
      checkCounts(nbInputs, nbOutputs);
      if (nbShapeInputs != 0) (Message() << "takes no shape inputs, got " << nbShapeInputs).raise();
      ShapeView v[NbInputs];
      for (int32_t i = 0; i < NbInputs; ++i) v[i] = ShapeView::of(inputs[i]);
      Derived::checkShapes(v, "");
      Derived::outputShapes(inputs, outputs, exprBuilder);
      return 0;
    });
  }
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override {
    return guard(false, [&] {
      if (nbInputs != NbInputs || nbOutputs != Derived::kNB_OUTPUTS || pos < 0 || pos >= nbInputs + nbOutputs) {
        return false;
      }
      return inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR && Derived::supportsType(pos, inOut);
    });
  }
  int32_t getNbOutputs() const noexcept override { return Derived::kNB_OUTPUTS; }
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
                          int32_t) const noexcept override {
    return 0;
  }
  char const* getTimingCacheID() noexcept override { return ""; }  // ops without attributes

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override {
    return guard(1, [&] {
      checkCounts(nbInputs, nbOutputs);
      mSizes = checkConcrete(in);
      if (Derived::kCHECK_OUTPUTS_ON_SHAPE_CHANGE) checkOutputs(in, out);
      mShapes.store(in);
      return 0;
    });
  }
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override {
    return guard(
        1,
        [&] {
          Sizes const s = mShapes.matches(inputDesc, NbInputs) ? mSizes : checkConcrete(inputDesc);
          checkOutputs(inputDesc, outputDesc);
          cudaError_t const err = self().launch(s, inputDesc, outputDesc, inputs, outputs, workspace, stream);
          if (err != cudaSuccess) {
            std::string msg =
                std::string("CUDA launch failed: ") + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
            fail(msg.c_str(), nvinfer1::ErrorCode::kFAILED_EXECUTION);
            return 1;
          }
          return 0;
        },
        nvinfer1::ErrorCode::kFAILED_EXECUTION);
  }
  // A clone that reports run-time errors to the execution context's error recorder too.
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override {
    return guard<nvinfer1::IPluginV3*>(nullptr, [&] {
      auto* p = static_cast<Derived*>(clone());
      if (p != nullptr) p->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
      return p;
    });
  }
  // The attributes under the creator's field names; createPlugin reads them back in the runtime phase.
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override {
    return guard<nvinfer1::PluginFieldCollection const*>(nullptr, [&] {
      mSerialFields.clear();
      self().serializeFields(mSerialFields);
      return mSerialFields.collection();
    });
  }

 protected:
  explicit PluginBase(std::string layerName) : mLayerName(std::move(layerName)) {}
  // For clone(): everything but the getFieldsToSerialize scratch list.
  PluginBase(PluginBase const& other)
      : nvinfer1::IPluginV3(other),
        nvinfer1::IPluginV3OneCore(other),
        nvinfer1::IPluginV3OneBuild(other),
        nvinfer1::IPluginV3OneRuntime(other),
        mLayerName(other.mLayerName),
        mErrorRecorder(other.mErrorRecorder),
        mSizes(other.mSizes),
        mShapes(other.mShapes) {}
  ~PluginBase() override = default;

  // Defaults of the optional parts of Derived (see the top of this file).
  static constexpr bool kCHECK_OUTPUTS_ON_SHAPE_CHANGE = false;
  static void checkProfile(nvinfer1::DynamicPluginTensorDesc const* /*in*/) {}
  void serializeFields(FieldList& /*fields*/) const {}

  // "expects 3 inputs (x, offset, rpe_table) and 1 output (feat), got 2 inputs and 1 outputs".
  static void checkCounts(int32_t nbInputs, int32_t nbOutputs) {
    if (nbInputs == NbInputs && nbOutputs == Derived::kNB_OUTPUTS) return;
    Message m;
    m << "expects " << NbInputs << (NbInputs == 1 ? " input (" : " inputs (");
    for (int32_t i = 0; i < NbInputs; ++i) m << (i ? ", " : "") << Derived::kINPUT_NAMES[i];
    m << ") and " << Derived::kNB_OUTPUTS << (Derived::kNB_OUTPUTS == 1 ? " output (" : " outputs (");
    for (int32_t i = 0; i < Derived::kNB_OUTPUTS; ++i) m << (i ? ", " : "") << Derived::kOUTPUT_NAMES[i];
    (m << "), got " << nbInputs << " inputs and " << nbOutputs << " outputs").raise();
  }

  // Runs f; an exception becomes an error report (logger, and the error recorder once attached) and onError.
  template <typename R, typename F>
  R guard(R onError, F&& f, nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) const noexcept {
    try {
      return f();
    } catch (std::exception const& e) {
      fail(e.what(), code);
    } catch (...) {
      fail("unknown error", code);
    }
    return onError;
  }

  void fail(char const* message, nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) const noexcept {
    reportError(Derived::kNAME, mLayerName, message, mErrorRecorder, code);
  }

 private:
  Derived const& self() const { return static_cast<Derived const&>(*this); }

  // Sizes from concrete input shapes (onShapeChange, enqueue); throws PluginError when they break the rules.
  static Sizes checkConcrete(nvinfer1::PluginTensorDesc const* in) {
    ShapeView v[NbInputs];
    nvinfer1::DataType types[NbInputs];
    for (int32_t i = 0; i < NbInputs; ++i) {
      v[i] = ShapeView::of(in[i].dims);
      types[i] = in[i].type;
      for (int32_t k = 0; k < in[i].dims.nbDims; ++k) {
        if (in[i].dims.d[k] < 0) {
          (Message() << "input '" << Derived::kINPUT_NAMES[i] << "' (index " << i << ") has an unresolved shape "
                     << dimsToString(in[i].dims)).raise();
        }
      }
    }
    Derived::checkShapes(v, "");
    Derived::checkTypes(types);
    return Derived::sizesOf(in);
  }

  static void checkOutputs(nvinfer1::PluginTensorDesc const* in, nvinfer1::PluginTensorDesc const* out) {
    nvinfer1::DataType inTypes[NbInputs];
    nvinfer1::DataType outTypes[Derived::kNB_OUTPUTS];
    for (int32_t i = 0; i < NbInputs; ++i) inTypes[i] = in[i].type;
    for (int32_t i = 0; i < Derived::kNB_OUTPUTS; ++i) outTypes[i] = out[i].type;
    Derived::checkOutputTypes(inTypes, outTypes);
  }

  std::string mLayerName;
  nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};  // set by attachToContext
  FieldList mSerialFields;                            // what getFieldsToSerialize returned last
  Sizes mSizes{};                                     // cached by onShapeChange ...
  ShapeCache<NbInputs> mShapes;                       // ... for these input shapes
};

// Creator of one op: Derived's constructor declares the op's fields, create() builds the plugin from them.
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One {
 public:
  PluginCreatorBase(PluginCreatorBase const&) = delete;
  PluginCreatorBase& operator=(PluginCreatorBase const&) = delete;

  char const* getPluginName() const noexcept override { return mName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return mFieldNames.collection(); }

  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase /*phase*/) noexcept override {
    std::string const layer = name != nullptr ? name : "";
    try {
      // Build phase: the node attributes; runtime phase: what getFieldsToSerialize wrote. Same rules.
      checkFieldNames(fc, mFieldNames.fields());
      return create(layer, fc);
    } catch (std::exception const& e) {
      reportError(mName, layer, e.what());
    } catch (...) {
      reportError(mName, layer, "unknown error");
    }
    return nullptr;
  }

 protected:
  explicit PluginCreatorBase(char const* name) : mName(name) {}
  ~PluginCreatorBase() override = default;

  // A field of the op, as getFieldNames advertises it (no data); createPlugin rejects any other name.
  void declareField(char const* name, nvinfer1::PluginFieldType type, int32_t length) {
    mFieldNames.add(name, nullptr, type, length);
  }
  // The plugin for validated field names (values still to be read and checked); throws PluginError.
  virtual nvinfer1::IPluginV3* create(std::string const& layer, nvinfer1::PluginFieldCollection const* fc) const = 0;

 private:
  char const* mName;
  FieldList mFieldNames;
};

}  // namespace trt
}  // namespace defmamba
