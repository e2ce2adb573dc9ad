// TokenSort ORT op: shape/dtype validation (shared with the CUDA-EP op), output allocation, CPU kernel
// call.
#include "ort_op.h"

#include <limits>

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

TokenSortArgs read_token_sort_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type) {
  const char* op = "TokenSort";
  TokenSortArgs a{get_input(ctx, 0, op, "token_offset"), 0, 0};
  expect_type(op, a.token_offset, io_type);
  expect_shape(op, a.token_offset, any_dims(2), "(Bt, L)");
  a.batch = a.token_offset.shape[0];
  a.length = a.token_offset.shape[1];
  if (a.length > std::numeric_limits<int32_t>::max())
    fail(op, "input 'token_offset' has L = " + std::to_string(a.length) +
                 ", more than 2^31-1 tokens are not supported");
  return a;
}

namespace {

template <typename T>
struct TokenSortKernel : TokenSortNode<T>, KernelBase<TokenSortKernel<T>> {
  using TokenSortNode<T>::TokenSortNode;

  void Compute(Ort::KernelContext& ctx) {
    const TokenSortArgs a = read_token_sort_args(ctx, ElemType<T>::value);
    Ort::UnownedValue perm = ctx.GetOutput(0, a.token_offset.shape);
    Ort::UnownedValue inv = ctx.GetOutput(1, a.token_offset.shape);
    if (a.batch == 0 || a.length == 0) return;
    const OrtScratch scratch(ctx);
    token_sort_cpu<T>(a.batch, a.length, a.token_offset.as<T>(), perm.GetTensorMutableData<int64_t>(),
                      inv.GetTensorMutableData<int64_t>(), make_parallel(ctx), scratch.get());
  }
};

}  // namespace

void add_token_sort_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<TokenSortKernel<float>>, Op<TokenSortKernel<Half>>, Op<TokenSortKernel<double>>>(domain);
}

}  // namespace ort
}  // namespace defmamba
