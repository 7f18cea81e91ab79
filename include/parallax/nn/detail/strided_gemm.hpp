#pragma once
// SPDX-License-Identifier: BSL-1.0
/// A row-major GEMM on matrices that are blocks of larger ones (a leading
/// stride per operand), through xtensor-blas's BLAS binding: the per-head
/// products of attention, which xt::blas::gemm would first copy out.

#include <parallax/detail/xtensor.hpp>

#include <cstddef>

namespace parallax::nn::detail {

/// C = alpha op(A) op(B) + beta C, row-major: op(A) [m, k], op(B) [k, n],
/// C [m, n]; each operand's rows are `ld` elements apart (A is [k, m] when
/// transposed, so its rows then hold m values). No copy, no allocation.
template <class T>
void strided_gemm(bool transpose_a, bool transpose_b, std::size_t m, std::size_t n, std::size_t k, T alpha, const T* a,
                  std::size_t lda, const T* b, std::size_t ldb, T beta, T* c, std::size_t ldc) {
  using index = xt::blas_index_t;
  cxxblas::gemm<index>(cxxblas::StorageOrder::RowMajor,
                       transpose_a ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans,
                       transpose_b ? cxxblas::Transpose::Trans : cxxblas::Transpose::NoTrans, static_cast<index>(m),
                       static_cast<index>(n), static_cast<index>(k), alpha, a, static_cast<index>(lda), b,
                       static_cast<index>(ldb), beta, c, static_cast<index>(ldc));
}

}  // namespace parallax::nn::detail
