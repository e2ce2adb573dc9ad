// ONNX Runtime helpers shared by the ORT ops (plugins/<op>/ort_op.cpp). Not for kernel headers.
//
// The library is not linked against libonnxruntime: every translation unit that includes the ORT C++
// API must be compiled with ORT_API_MANUAL_INIT (plugins/CMakeLists.txt sets it), and
// RegisterCustomOps calls Ort::InitApi with the OrtApi that the loading runtime hands over.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#error "compile the defmamba ORT sources with -DORT_API_MANUAL_INIT (see plugins/CMakeLists.txt)"
#endif

#include <onnxruntime_cxx_api.h>

#include <cstdint>
#include <exception>
#include <initializer_list>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_parallel.h"
#include "cpu_scratch.h"
#include "defmamba_math.h"

namespace defmamba {
namespace ort {

// ---- element types --------------------------------------------------------------------------------
template <typename T>
struct ElemType;
template <>
struct ElemType<float> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
};
template <>
struct ElemType<Half> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
};
template <>
struct ElemType<double> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE;
};
template <>
struct ElemType<int64_t> {
  static constexpr ONNXTensorElementDataType value = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
};
static_assert(sizeof(Half) == sizeof(Ort::Float16_t), "Half and Ort::Float16_t must share a layout");

inline const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    default: return "another type";
  }
}

// ---- errors ---------------------------------------------------------------------------------------
// Every error names the op first ("SelectiveScan: ..."), then the input and what was expected.
[[noreturn]] inline void fail(const char* op, const std::string& msg) {
  throw Ort::Exception(std::string(op) + ": " + msg, ORT_INVALID_ARGUMENT);
}

inline std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "(";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += d[i] < 0 ? std::string("*") : std::to_string(d[i]);
  }
  return s + (d.size() == 1 ? ",)" : ")");
}

// Runs f and turns any exception into an OrtStatus (nothing may unwind into ONNX Runtime).
template <typename F>
OrtStatusPtr guard(const char* op, F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status((std::string(op) + ": " + e.what()).c_str(), ORT_RUNTIME_EXCEPTION).release();
  } catch (...) {
    return Ort::Status((std::string(op) + ": unknown error").c_str(), ORT_RUNTIME_EXCEPTION).release();
  }
}

// ---- inputs ---------------------------------------------------------------------------------------
struct Input {
  const char* name;
  ONNXTensorElementDataType type;
  std::vector<int64_t> shape;
  const void* data;
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data);
  }
};

inline Input get_input(const Ort::KernelContext& ctx, size_t index, const char* op, const char* name) {
  Ort::ConstValue v = ctx.GetInput(index);
  if (!v || !v.IsTensor()) fail(op, std::string("input '") + name + "' must be a tensor");
  auto info = v.GetTensorTypeAndShapeInfo();
  return Input{name, info.GetElementType(), info.GetShape(), v.GetTensorRawData()};
}

inline void expect_type(const char* op, const Input& in, ONNXTensorElementDataType want) {
  if (in.type != want)
    fail(op, std::string("input '") + in.name + "' must be " + type_name(want) + ", got " + type_name(in.type));
}

// want: expected dims, -1 = any value; layout: the symbolic shape, e.g. "(Bt, Ch, L)".
inline void expect_shape(const char* op, const Input& in, const std::vector<int64_t>& want, const char* layout,
                         const std::string& note = std::string()) {
  bool ok = in.shape.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || want[i] == in.shape[i];
  if (!ok) {
    std::string msg = std::string("input '") + in.name + "' must have shape " + layout + " = " + dims_str(want);
    if (!note.empty()) msg += " " + note;
    msg += ", got " + dims_str(in.shape);
    if (in.shape.size() != want.size())
      msg += " (rank " + std::to_string(in.shape.size()) + " instead of " + std::to_string(want.size()) + ")";
    fail(op, msg);
  }
}

inline std::vector<int64_t> any_dims(size_t rank) { return std::vector<int64_t>(rank, -1); }

// ---- parallelism ----------------------------------------------------------------------------------
// Runs the kernels' Parallel::for_each on ONNX Runtime's intra-op thread pool
// (OrtApi::KernelContext_ParallelFor; serial when the session has a single intra-op thread).
inline Parallel make_parallel(const Ort::KernelContext& ctx) {
  Parallel p;
  p.run = [](void* state, size_t total, void (*task)(void*, size_t), void* task_state) {
    static_cast<const Ort::KernelContext*>(state)->ParallelFor(task, total, 0, task_state);
  };
  p.runner_state = const_cast<Ort::KernelContext*>(&ctx);
  return p;
}

// ---- scratch memory -------------------------------------------------------------------------------
// The kernels' Scratch from ORT's CPU allocator (OrtApi::KernelContext_GetAllocator): the allocator
// the CPU execution provider gives its own kernels, the session's arena unless the session disabled
// it, so a run's temporary buffers reuse memory of earlier runs instead of going to the heap. When
// ORT has no such allocator the Scratch falls back to the heap. Construct it in Compute (it is
// neither copied nor moved: the Scratch points into it).
class OrtScratch {
 public:
  explicit OrtScratch(const Ort::KernelContext& ctx) {
    try {
      const Ort::MemoryInfo info = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
      allocator_ = ctx.GetAllocator(*info);
    } catch (const Ort::Exception&) {
      return;  // heap
    }
    if (allocator_ == nullptr) return;
    scratch_.alloc = [](void* st, size_t bytes) { return static_cast<Ort::Allocator*>(st)->Alloc(bytes); };
    scratch_.release = [](void* st, void* p) { static_cast<Ort::Allocator*>(st)->Free(p); };
    scratch_.state = &allocator_;
  }
  OrtScratch(const OrtScratch&) = delete;
  OrtScratch& operator=(const OrtScratch&) = delete;

  const Scratch& get() const { return scratch_; }
  bool from_ort() const { return scratch_.alloc != nullptr; }

 private:
  Ort::Allocator allocator_{nullptr};
  Scratch scratch_;
};

// ---- op boilerplate -------------------------------------------------------------------------------
// The execution provider an op is registered for; kCuda ops get their inputs and outputs in CUDA
// device memory (OrtMemTypeDefault of the CUDA EP).
enum class Ep { kCpu, kCuda };

// One registered op: the classic custom-op API with status-returning CreateKernelV2 / ComputeV2.
// Everything op-specific comes from TKernel:
//   static constexpr const char* kName;                    the op type
//   static std::vector<ONNXTensorElementDataType> input_types(), output_types();
//   static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext&);
//   TKernel(const OrtApi&, const OrtKernelInfo*);           reads and checks the attributes
//   void Compute(Ort::KernelContext&);                      (ComputeV2 from KernelBase)
// Each <op>/ort_op.h defines the first three once in a struct that the CPU and the CUDA-EP kernels
// of that op derive from.
template <typename TKernel, Ep kEp = Ep::kCpu>
struct Op : Ort::CustomOpBase<Op<TKernel, kEp>, TKernel, /*WithStatus=*/true> {
  Op() : in_types_(TKernel::input_types()), out_types_(TKernel::output_types()) {}

  const char* GetName() const { return TKernel::kName; }
  const char* GetExecutionProviderType() const {
    return kEp == Ep::kCuda ? "CUDAExecutionProvider" : "CPUExecutionProvider";
  }
  size_t GetInputTypeCount() const { return in_types_.size(); }
  ONNXTensorElementDataType GetInputType(size_t i) const { return in_types_[i]; }
  size_t GetOutputTypeCount() const { return out_types_.size(); }
  ONNXTensorElementDataType GetOutputType(size_t i) const { return out_types_[i]; }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    *kernel = nullptr;
    return guard(TKernel::kName, [&] { *kernel = new TKernel(api, info); });
  }
  static OrtStatusPtr InferOutputShape(Ort::ShapeInferContext& ctx) { return TKernel::InferOutputShape(ctx); }

 private:
  std::vector<ONNXTensorElementDataType> in_types_, out_types_;
};

// ComputeV2 for a kernel (CRTP): runs Derived::Compute and turns exceptions into an OrtStatus.
template <typename Derived>
struct KernelBase {
  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return guard(Derived::kName, [&] {
      Ort::KernelContext ctx(context);
      static_cast<Derived*>(this)->Compute(ctx);
    });
  }
};

// Adds the ops Ops... to the domain: what each folder's add_<op>_ops (ort_op.cpp) and
// add_<op>_cuda_ops (ort_cuda_op.cpp) do, called once from RegisterCustomOps (register_ort.cpp).
// The op objects are created on the first call and deliberately never destroyed: they must outlive
// every session that uses them.
template <typename... Ops>
void add_ops(Ort::CustomOpDomain& domain) {
  static std::tuple<Ops...>* const ops = new std::tuple<Ops...>();
  std::apply([&](auto&... op) { (domain.Add(&op), ...); }, *ops);
}

// Shape inference: outputs `outs` get the shape of input `in` when its rank is `rank` (their element
// types come from ORT's own type inference). Never fails: shape errors are reported at run time.
inline OrtStatusPtr infer_copy_shape(Ort::ShapeInferContext& ctx, size_t in, size_t rank,
                                     std::initializer_list<size_t> outs) noexcept {
  try {
    if (in < ctx.GetInputCount()) {
      const auto& shape = ctx.GetInputShape(in);
      // An unknown dim arrives as the integer -1; ORT would take it back as a concrete -1 and fold
      // Shape() of the output into -1s (then Reshape fails with "multiple -1"). Infer only
      // what is fully known (integers >= 0 or named symbols).
      for (const auto& d : shape)
        if (d.IsInt() && d.AsInt() < 0) return nullptr;
      if (shape.size() == rank)
        for (size_t o : outs) {
          Ort::Status st = ctx.SetOutputShape(o, shape);
          (void)st;
        }
    }
  } catch (...) {
  }
  return nullptr;
}

// Reads an optional int64 attribute. A missing attribute gives `fallback`; an attribute of another
// type is an error (so that, e.g., delta_softplus=1.0 is not silently ignored).
inline int64_t int_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* op, const char* name,
                             int64_t fallback) {
  int64_t value = fallback;
  OrtStatus* st = api.KernelInfoGetAttribute_int64(info, name, &value);
  if (st == nullptr) return value;
  api.ReleaseStatus(st);
  float fvalue = 0.0f;
  st = api.KernelInfoGetAttribute_float(info, name, &fvalue);
  if (st == nullptr) fail(op, std::string("attribute '") + name + "' must be an int, got a float");
  api.ReleaseStatus(st);
  return fallback;
}

// Reads an optional int64-list attribute (ONNX INTS); a missing attribute gives an empty list.
inline std::vector<int64_t> ints_attribute(const OrtApi& api, const OrtKernelInfo* info, const char* op,
                                           const char* name) {
  size_t size = 0;
  OrtStatus* st = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (st != nullptr) api.ReleaseStatus(st);
  if (st != nullptr || size == 0) {  // absent, empty, or a single int (ORT reports that as an empty list)
    int64_t scalar = 0;
    OrtStatus* st1 = api.KernelInfoGetAttribute_int64(info, name, &scalar);
    if (st1 == nullptr) fail(op, std::string("attribute '") + name + "' must be a list of ints, got an int");
    api.ReleaseStatus(st1);
    return {};
  }
  std::vector<int64_t> values(size);
  st = api.KernelInfoGetAttributeArray_int64(info, name, values.data(), &size);
  if (st != nullptr) {
    std::string msg = api.GetErrorMessage(st);
    api.ReleaseStatus(st);
    fail(op, std::string("cannot read attribute '") + name + "': " + msg);
  }
  return values;
}

}  // namespace ort
}  // namespace defmamba
