// SelectiveScan ORT op: attribute and shape/dtype validation, output allocation, CPU kernel call.
#include "ort_op.h"

#include "cpu_kernel.h"

namespace defmamba {
namespace ort {

template <typename T>
SelectiveScanOp<T>::SelectiveScanOp()
    : CpuOp<SelectiveScanOp<T>, SelectiveScanKernel<T>>(
          {ElemType<T>::value, ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ElemType<T>::value,
           ElemType<T>::value, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT},
          {ElemType<T>::value}) {}

template <typename T>
SelectiveScanKernel<T>::SelectiveScanKernel(const OrtApi& api, const OrtKernelInfo* info) {
  const int64_t v = int_attribute(api, info, kName, "delta_softplus", 1);
  if (v != 0 && v != 1)
    fail(kName, "attribute 'delta_softplus' must be 0 or 1, got " + std::to_string(v));
  delta_softplus_ = v != 0;
}

template <typename T>
void SelectiveScanKernel<T>::Compute(Ort::KernelContext& ctx) {
  const char* op = kName;
  const Input u = get_input(ctx, 0, op, "u");
  const Input delta = get_input(ctx, 1, op, "delta");
  const Input A = get_input(ctx, 2, op, "A");
  const Input B = get_input(ctx, 3, op, "B");
  const Input C = get_input(ctx, 4, op, "C");
  const Input D = get_input(ctx, 5, op, "D");
  const Input delta_bias = get_input(ctx, 6, op, "delta_bias");
  for (const Input* in : {&u, &delta, &B, &C}) expect_type(op, *in, ElemType<T>::value);
  for (const Input* in : {&A, &D, &delta_bias}) expect_type(op, *in, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);

  expect_shape(op, u, any_dims(3), "(Bt, Ch, L)");
  const int64_t Bt = u.shape[0], Ch = u.shape[1], L = u.shape[2];
  expect_shape(op, delta, u.shape, "(Bt, Ch, L)", "like 'u'");
  expect_shape(op, B, {Bt, -1, -1, L}, "(Bt, G, N, L)", "(Bt, L from 'u')");
  const int64_t G = B.shape[1], N = B.shape[2];
  if (G < 1) fail(op, "input 'B' must have G >= 1 groups (dim 1), got shape " + dims_str(B.shape));
  if (Ch % G != 0)
    fail(op, "Ch = " + std::to_string(Ch) + " (dim 1 of 'u') must be divisible by G = " + std::to_string(G) +
                 " (dim 1 of 'B'); channel c uses group c / (Ch / G)");
  expect_shape(op, C, B.shape, "(Bt, G, N, L)", "like 'B'");
  expect_shape(op, A, {Ch, N}, "(Ch, N)", "(Ch from 'u', N from 'B')");
  expect_shape(op, D, {Ch}, "(Ch,)");
  expect_shape(op, delta_bias, {Ch}, "(Ch,)");

  Ort::UnownedValue y = ctx.GetOutput(0, u.shape);
  if (Bt == 0 || Ch == 0 || L == 0) return;
  const SelectiveScanShape s{Bt, Ch, G, N, L};
  selective_scan_cpu<T>(s, u.as<T>(), delta.as<T>(), A.as<float>(), B.as<T>(), C.as<T>(), D.as<float>(),
                        delta_bias.as<float>(), delta_softplus_, static_cast<T*>(y.GetTensorMutableRawData()),
                        make_parallel(ctx));
}

template struct SelectiveScanKernel<float>;
template struct SelectiveScanKernel<Half>;
template struct SelectiveScanOp<float>;
template struct SelectiveScanOp<Half>;

}  // namespace ort
}  // namespace defmamba
