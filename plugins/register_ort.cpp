// Entry point of libdefmamba_ort_ops.so: ONNX Runtime calls RegisterCustomOps when the library is
// registered (SessionOptions.register_custom_ops_library / RegisterCustomOpsLibrary).
//
// All ops go into one custom-op domain "defmamba" (opset 1). Each op type is registered once per
// supported element type; ONNX Runtime merges same-named ops into one schema and picks the kernel by
// the node's input types. The library is not linked against libonnxruntime: it uses the OrtApi
// handed over here, and requires ORT_API_VERSION of the headers it was built with (onnxruntime >= 1.29
// for the headers fetched by scripts/fetch_ort_headers.sh).
//
// Built with CUDA (DEFMAMBA_WITH_CUDA, plugins/cuda.cmake), the domain also holds a CUDA execution
// provider kernel of each op (float32 and float16; TokenSort's float64 stays CPU-only), used when a
// session runs the node on "CUDAExecutionProvider". Registration makes no CUDA call: the library loads
// and its CPU ops work on machines without a GPU or driver (the CUDA runtime is linked statically and
// only initialised by the first kernel launch).
//
// Each op folder registers its own kernels: <op>/ort_op.h declares add_<op>_ops (CPU, defined in
// ort_op.cpp) and add_<op>_cuda_ops (CUDA EP, defined in ort_cuda_op.cpp in CUDA builds). A new op adds
// its include and its two entries to kAddOps below.
#include "deform_gather/ort_op.h"
#include "ort_utils.h"
#include "selective_scan/ort_op.h"
#include "token_sort/ort_op.h"

#include <mutex>
#include <string>

#if defined(_WIN32)
#define DEFMAMBA_EXPORT __declspec(dllexport)
#else
#define DEFMAMBA_EXPORT __attribute__((visibility("default")))
#endif

namespace {

using namespace defmamba;

constexpr const char* kDomain = "defmamba";

// Registration order: every CPU op, then every CUDA-EP op.
using AddOps = void (*)(Ort::CustomOpDomain&);
constexpr AddOps kAddOps[] = {
    ort::add_selective_scan_ops,
    ort::add_deform_gather_ops,
    ort::add_token_sort_ops,
#if defined(DEFMAMBA_WITH_CUDA)
    ort::add_selective_scan_cuda_ops,
    ort::add_deform_gather_cuda_ops,
    ort::add_token_sort_cuda_ops,
#endif
};

// The domain (and the op objects, see add_ops) must outlive every session that uses them. It is
// created once and deliberately never destroyed: destroying the domain at process exit could call
// into an already finalised onnxruntime.
struct Registry {
  Ort::CustomOpDomain domain{kDomain};

  Registry() {
    for (AddOps add : kAddOps) add(domain);
  }
};

}  // namespace

extern "C" DEFMAMBA_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                    const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // nothing to report the error with
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // This onnxruntime is older than the headers; use its oldest API just to report that.
    const OrtApi* old_api = api_base->GetApi(1);
    const std::string msg = std::string("libdefmamba_ort_ops was built against ONNX Runtime API version ") +
                            std::to_string(ORT_API_VERSION) + " and needs an onnxruntime that provides it; this is onnxruntime " +
                            api_base->GetVersionString();
    return old_api ? old_api->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  return ort::guard("defmamba RegisterCustomOps", [&] {
    static Registry* registry = new Registry();  // intentionally leaked, see Registry
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(registry->domain);
  });
}
