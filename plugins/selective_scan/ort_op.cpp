// SelectiveScan ORT op: attribute and shape/dtype validation (shared with the CUDA-EP op), output
// allocation, CPU kernel call.
#include "ort_op.h"

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

bool read_delta_softplus(const OrtApi& api, const OrtKernelInfo* info) {
  const char* op = "SelectiveScan";
  const int64_t v = int_attribute(api, info, op, "delta_softplus", 1);
  if (v != 0 && v != 1)
    fail(op, "attribute 'delta_softplus' must be 0 or 1, got " + std::to_string(v));
  return v != 0;
}

std::vector<int64_t> read_reverse(const OrtApi& api, const OrtKernelInfo* info) {
  const char* op = "SelectiveScan";
  std::vector<int64_t> rev = ints_attribute(api, info, op, "reverse");
  for (size_t g = 0; g < rev.size(); ++g) {
    if (rev[g] != 0 && rev[g] != 1)
      fail(op, "attribute 'reverse' must hold 0 or 1 per group, got " + std::to_string(rev[g]) + " at index " +
                   std::to_string(g));
    if (rev[g] == 1 && g >= 64)
      fail(op, "attribute 'reverse': only groups 0..63 can be reversed, got a 1 at index " + std::to_string(g));
  }
  return rev;
}

uint64_t reverse_mask(const std::vector<int64_t>& reverse, int64_t groups) {
  if (reverse.empty()) return 0;
  if (static_cast<int64_t>(reverse.size()) != groups)
    fail("SelectiveScan", "attribute 'reverse' has " + std::to_string(reverse.size()) +
                              " entries but the inputs have G = " + std::to_string(groups) +
                              " groups (dim 1 of 'B'); give one 0/1 flag per group or none");
  uint64_t mask = 0;
  for (size_t g = 0; g < reverse.size() && g < 64; ++g)
    if (reverse[g] != 0) mask |= uint64_t{1} << g;
  return mask;
}

SelectiveScanArgs read_selective_scan_args(const Ort::KernelContext& ctx, ONNXTensorElementDataType io_type) {
  const char* op = "SelectiveScan";
  SelectiveScanArgs a{get_input(ctx, 0, op, "u"), get_input(ctx, 1, op, "delta"), get_input(ctx, 2, op, "A"),
                      get_input(ctx, 3, op, "B"), get_input(ctx, 4, op, "C"),     get_input(ctx, 5, op, "D"),
                      get_input(ctx, 6, op, "delta_bias"), 0, 0, 0, 0, 0};
  for (const Input* in : {&a.u, &a.delta, &a.B, &a.C}) expect_type(op, *in, io_type);
  for (const Input* in : {&a.A, &a.D, &a.delta_bias}) expect_type(op, *in, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);

  expect_shape(op, a.u, any_dims(3), "(Bt, Ch, L)");
  const int64_t Bt = a.u.shape[0], Ch = a.u.shape[1], L = a.u.shape[2];
  expect_shape(op, a.delta, a.u.shape, "(Bt, Ch, L)", "like 'u'");
  expect_shape(op, a.B, {Bt, -1, -1, L}, "(Bt, G, N, L)", "(Bt, L from 'u')");
  const int64_t G = a.B.shape[1], N = a.B.shape[2];
  if (G < 1) fail(op, "input 'B' must have G >= 1 groups (dim 1), got shape " + dims_str(a.B.shape));
  if (Ch % G != 0)
    fail(op, "Ch = " + std::to_string(Ch) + " (dim 1 of 'u') must be divisible by G = " + std::to_string(G) +
                 " (dim 1 of 'B'); channel c uses group c / (Ch / G)");
  expect_shape(op, a.C, a.B.shape, "(Bt, G, N, L)", "like 'B'");
  expect_shape(op, a.A, {Ch, N}, "(Ch, N)", "(Ch from 'u', N from 'B')");
  expect_shape(op, a.D, {Ch}, "(Ch,)");
  expect_shape(op, a.delta_bias, {Ch}, "(Ch,)");
  a.batch = Bt;
  a.channels = Ch;
  a.groups = G;
  a.state = N;
  a.length = L;
  return a;
}

namespace {

template <typename T>
struct SelectiveScanKernel : SelectiveScanNode<T>, KernelBase<SelectiveScanKernel<T>> {
  using SelectiveScanNode<T>::SelectiveScanNode;

  void Compute(Ort::KernelContext& ctx) {
    const SelectiveScanArgs a = read_selective_scan_args(ctx, ElemType<T>::value);
    Ort::UnownedValue y = ctx.GetOutput(0, a.u.shape);
    if (a.batch == 0 || a.channels == 0 || a.length == 0) return;
    const uint64_t reverse = reverse_mask(this->reverse_, a.groups);
    const SelectiveScanShape s{a.batch, a.channels, a.groups, a.state, a.length, reverse};
    const OrtScratch scratch(ctx);
    selective_scan_cpu<T>(s, a.u.as<T>(), a.delta.as<T>(), a.A.as<float>(), a.B.as<T>(), a.C.as<T>(),
                          a.D.as<float>(), a.delta_bias.as<float>(), this->delta_softplus_,
                          static_cast<T*>(y.GetTensorMutableRawData()), make_parallel(ctx), scratch.get());
  }
};

}  // namespace

void add_selective_scan_ops(Ort::CustomOpDomain& domain) {
  add_ops<Op<SelectiveScanKernel<float>>, Op<SelectiveScanKernel<Half>>>(domain);
}

}  // namespace ort
}  // namespace defmamba
