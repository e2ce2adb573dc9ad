// TokenSort CUDA-EP op: validation shared with the CPU op, output allocation, workspace from ONNX
// Runtime's allocator for the input's device (stream-ordered when ORT provides AllocOnStream), kernel
// launch on ORT's compute stream. No cudaMalloc, no synchronisation, no host copies.
#include <string>

#include "ort_cuda_utils.h"
#include "token_sort/kernel.h"
#include "token_sort/ort_op.h"

namespace defmamba {
namespace ort {
namespace {

// A block of device memory from an ORT allocator, returned to it when this goes out of scope. The
// block is released right after the asynchronous launch: ORT's CUDA allocators hand memory out in
// stream order (AllocOnStream ties the block to the kernel's stream; without it the block is reused
// by later work on the same compute stream only).
class Workspace {
 public:
  Workspace(OrtAllocator* allocator, size_t bytes, OrtSyncStream* stream) : allocator_(allocator) {
    constexpr uint32_t kAllocOnStreamVersion = 23;  // OrtAllocator::AllocOnStream appeared in API 23
    if (bytes == 0) return;
    if (stream != nullptr && allocator->version >= kAllocOnStreamVersion && allocator->AllocOnStream != nullptr)
      ptr_ = allocator->AllocOnStream(allocator, bytes, stream);
    else
      ptr_ = allocator->Alloc(allocator, bytes);
  }
  ~Workspace() {
    if (ptr_ != nullptr) allocator_->Free(allocator_, ptr_);
  }
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  void* get() const { return ptr_; }

 private:
  OrtAllocator* allocator_;
  void* ptr_ = nullptr;
};

// Input token_offset and outputs perm, inv_perm (int64) in CUDA device memory.
template <typename T>
struct TokenSortCudaKernel : TokenSortNode<T>, KernelBase<TokenSortCudaKernel<T>> {
  using TokenSortNode<T>::TokenSortNode;

  void Compute(Ort::KernelContext& ctx) {
    const char* op = this->kName;
    const TokenSortArgs a = read_token_sort_args(ctx, ElemType<T>::value);
    if (a.batch * a.length > 2147483647)
      fail(op, "the CUDA kernel sorts at most 2^31-1 tokens per call (Bt * L), got " + std::to_string(a.batch) +
                   " x " + std::to_string(a.length));
    Ort::UnownedValue perm = ctx.GetOutput(0, a.token_offset.shape);
    Ort::UnownedValue inv = ctx.GetOutput(1, a.token_offset.shape);
    if (a.batch == 0 || a.length == 0) return;

    size_t bytes = 0;
    const cudaError_t err = tokenSortWorkspaceSize(a.batch, a.length, &bytes);
    if (err != cudaSuccess) cuda_fail(op, "workspace size query failed", err);
    Ort::ConstValue input = ctx.GetInput(0);
    Ort::ConstMemoryInfo device_info = input.GetTensorMemoryInfo();
    Ort::Allocator allocator = ctx.GetAllocator(*static_cast<const OrtMemoryInfo*>(device_info));
    OrtSyncStream* sync_stream = nullptr;
    if (bytes != 0) {
      try {
        sync_stream = ctx.GetSyncStream();
      } catch (const Ort::Exception&) {
        sync_stream = nullptr;  // plain Alloc below
      }
    }
    Workspace workspace(allocator, bytes, sync_stream);
    if (bytes != 0 && workspace.get() == nullptr)
      throw Ort::Exception(std::string(op) + ": could not allocate " + std::to_string(bytes) +
                               " bytes of device workspace",
                           ORT_FAIL);

    using D = typename DeviceType<T>::type;
    check_launch(op, launchTokenSort<D, int64_t>(static_cast<const D*>(a.token_offset.data),
                                                 perm.GetTensorMutableData<int64_t>(),
                                                 inv.GetTensorMutableData<int64_t>(), a.batch, a.length,
                                                 workspace.get(), bytes, compute_stream(ctx)));
  }
};

}  // namespace

void add_token_sort_cuda_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<TokenSortCudaKernel<float>, Ep::kCuda>, Op<TokenSortCudaKernel<Half>, Ep::kCuda>>(domain);
}

}  // namespace ort
}  // namespace defmamba
