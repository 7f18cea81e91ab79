#pragma once
// SPDX-License-Identifier: BSL-1.0
/// exact_sum: the reproducible mode's sum of a step's gradients and loss over
/// atoms (fixed runs of samples) and ranks, exact in every bit, so that the
/// result does not depend on how many ranks hold the atoms nor in which order
/// they are added. docs/reproducible.md says why it is exact.

#include <parallax/core/reducer.hpp>
#include <parallax/core/trace.hpp>
#include <parallax/detail/mpi.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/operations.hpp>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <limits>
#include <span>
#include <vector>

namespace parallax::training {

/// Why this build cannot sum exactly, or nullptr. exact_sum's rounding needs
/// double arithmetic done as written, in double: -ffast-math and
/// -funsafe-math-optimizations (which define __ASSOCIATIVE_MATH__) let the
/// compiler fold (x + c) - c into x, and x87 arithmetic (FLT_EVAL_METHOD 2)
/// rounds it in extended precision.
inline constexpr const char* exact_sum_unavailable =
#if defined(__FAST_MATH__) || defined(__ASSOCIATIVE_MATH__)
    "this program is built with -ffast-math or -funsafe-math-optimizations, which let the compiler reorder sums";
#elif !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
    "this build evaluates double arithmetic in extended precision (FLT_EVAL_METHOD is not 0, e.g. x87 code)";
#else
    nullptr;
#endif

/// Exact sums over atoms, for DataParallel's reproducible mode.
/// @code
///   parallax::training::exact_sum<float> sum(comm, 16 << 20);
///   sum.plan(sizes);                                  // once
///   for (each atom a of this rank)                    // a's mean gradient in grads
///     sum.add(grads, n_a, loss_a * n_a, a + 1 < atoms_here);
///   double loss = sum.reduce(atoms_everywhere);       // collective
///   bool bad = sum.mean_into(out, samples, false);    // out = the mean gradient
/// @endcode
/// Each atom's term (n_a times its mean gradient, element by element) is
/// rounded to a multiple of a power of two q_t fixed per tensor from the
/// largest term of that tensor over all atoms: at most 2^(h - 50) of that
/// largest term, h = ceil(log2(atoms)); sums of such multiples are exact in
/// double whatever their order, on one rank or in the ring all-reduce.
template <std::floating_point T>
class exact_sum {
 public:
  exact_sum(mpi::communicator comm, std::size_t bucket_bytes);

  /// Lays out the sums for tensors of these sizes (elements), once.
  void plan(const std::vector<std::size_t>& sizes);

  /// Adds one atom: `weight` times `tensors` (its samples and its mean
  /// gradient) and its loss sum. reduce() reads the tensors again: `copy`
  /// keeps a copy (for tensors the next atom overwrites); without it they
  /// must stay unchanged until reduce().
  void add(const std::vector<std::span<T>>& tensors, double weight, double loss_sum, bool copy);
  /// Forgets the atoms added since the last reduce() (a failed micro-step).
  void drop();
  /// Atoms added since the last reduce().
  std::size_t atoms() const { return atoms_.size(); }

  /// Collective: the sum over every rank's atoms of weight * tensors and of
  /// the loss sums, exact; `atoms` is the number of atoms over all ranks (at
  /// least 1). Returns the sum of the loss sums. A tensor with an infinite
  /// term sums to NaN.
  double reduce(std::size_t atoms);
  /// Adds the last reduce()'s sums into the held total (`first`: sets it),
  /// the sum over micro-steps; these additions round, in micro-step order.
  void hold(bool first);
  /// out[t] = (the last reduce()'s sums, or with `held` the held total) /
  /// samples, rounded to T; returns whether any value is NaN or infinite.
  bool mean_into(const std::vector<std::span<T>>& out, double samples, bool held);

 private:
  /// Exponent E with |m| < 2^E; very low for 0, `infinite` for inf.
  static int exponent_of(double m);
  /// x rounded to an integer (ties to even, in the default rounding mode),
  /// for |x| <= 2^51: after adding 1.5 * 2^52 no fraction bit is left.
  static double to_integer(double x) {
    constexpr double magic = 0x1.8p52;
    return (x + magic) - magic;
  }
  static constexpr int infinite = INT_MAX;
  static constexpr int zero = INT_MIN / 4;

  struct atom {
    std::size_t copy;  ///< index into copies_, or npos: the caller's tensors in refs_
    double weight;
    double loss_sum;
  };
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  /// Tensor t of atom a.
  std::span<const T> tensor(const atom& a, std::size_t t) const;

  mpi::communicator comm_;
  gradient_reducer<double> sums_;  // tensors, then the loss: one bucketed all-reduce
  std::vector<std::size_t> sizes_;
  std::vector<std::size_t> offsets_;      // of tensor t inside a copy
  std::vector<atom> atoms_;               // this rank's, since the last reduce()
  std::vector<std::span<const T>> refs_;  // the tensors of the one atom that is not copied
  std::vector<std::vector<T>> copies_;    // reused from step to step
  std::size_t copies_used_ = 0;
  std::vector<double> largest_;           // per tensor and the loss: largest |term| of this rank
  std::vector<int> shift_;                // per tensor and the loss: q = 2^shift of the last reduce()
  std::vector<double> held_;              // the total over micro-steps
};

// ===========================================================================
// Implementation
// ===========================================================================

template <std::floating_point T>
exact_sum<T>::exact_sum(mpi::communicator comm, std::size_t bucket_bytes)
    : comm_(comm), sums_(std::move(comm), bucket_bytes) {}

template <std::floating_point T>
void exact_sum<T>::plan(const std::vector<std::size_t>& sizes) {
  sizes_ = sizes;
  auto with_loss = sizes;
  with_loss.push_back(1);
  sums_.plan(with_loss);
  offsets_.assign(1, 0);
  for (auto n : sizes_) offsets_.push_back(offsets_.back() + n);
  largest_.assign(sizes_.size() + 1, 0.0);
  shift_.assign(sizes_.size() + 1, 0);
}

template <std::floating_point T>
void exact_sum<T>::add(const std::vector<std::span<T>>& tensors, double weight, double loss_sum, bool copy) {
  PARALLAX_CHECK(tensors.size() == sizes_.size(), "exact_sum: " + std::to_string(tensors.size()) + " tensors, planned " +
                                                      std::to_string(sizes_.size()));
  PARALLAX_CHECK(copy || refs_.empty(), "exact_sum: only one atom's tensors may stay the caller's");
  atom a{npos, weight, loss_sum};
  std::vector<T>* kept = nullptr;
  if (copy) {
    if (copies_used_ == copies_.size()) copies_.emplace_back(offsets_.back());
    a.copy = copies_used_++;
    kept = &copies_[a.copy];
  }
  for (std::size_t t = 0; t < sizes_.size(); ++t) {
    const auto g = tensors[t];
    PARALLAX_CHECK(g.size() == sizes_[t], "exact_sum: tensor " + std::to_string(t) + " has " +
                                              std::to_string(g.size()) + " elements, planned " +
                                              std::to_string(sizes_[t]));
    T most = 0;
    for (T x : g) most = std::max(most, std::abs(x));
    if (kept) std::copy(g.begin(), g.end(), kept->begin() + static_cast<std::ptrdiff_t>(offsets_[t]));
    else refs_.emplace_back(g.data(), g.size());
    // Rounding is monotonic: weight * (largest |g|) rounds to the largest
    // |weight * g| of the atom.
    largest_[t] = std::max(largest_[t], weight * static_cast<double>(most));
  }
  largest_.back() = std::max(largest_.back(), std::abs(loss_sum));
  atoms_.push_back(a);
}

template <std::floating_point T>
void exact_sum<T>::drop() {
  atoms_.clear();
  refs_.clear();
  copies_used_ = 0;
  std::fill(largest_.begin(), largest_.end(), 0.0);
}

template <std::floating_point T>
std::span<const T> exact_sum<T>::tensor(const atom& a, std::size_t t) const {
  if (a.copy == npos) return refs_[t];
  return std::span<const T>(copies_[a.copy]).subspan(offsets_[t], sizes_[t]);
}

template <std::floating_point T>
int exact_sum<T>::exponent_of(double m) {
  if (!(m <= std::numeric_limits<double>::max())) return infinite;  // inf (or NaN)
  if (m == 0) return zero;
  return std::ilogb(m) + 1;
}

template <std::floating_point T>
double exact_sum<T>::reduce(std::size_t atoms) {
  trace::span span("exact sum", "communication");
  const std::size_t slots = sizes_.size() + 1;
  std::vector<int> mine(slots), most(slots);
  for (std::size_t t = 0; t < slots; ++t) mine[t] = exponent_of(largest_[t]);
  mpi::all_reduce(comm_, mine.data(), static_cast<int>(slots), most.data(), mpi::maximum<int>());
  // Every term of tensor t is below 2^E in magnitude; scaled by 2^-shift it
  // is below 2^(51 - h), so rounded to an integer and summed over at most
  // 2^h atoms it stays below 2^51: exact in double. The floor on the shift
  // keeps weight * 2^-shift finite (it only coarsens tensors below 1e-250).
  const int h = std::bit_width(std::max<std::size_t>(atoms, 1) - 1);
  const auto& out = sums_.views();
  for (std::size_t t = 0; t < slots; ++t) {
    auto dst = out[t];
    if (most[t] == infinite) {
      std::fill(dst.begin(), dst.end(), std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    shift_[t] = std::max(most[t] + h + 2 - 53, -900);
    std::fill(dst.begin(), dst.end(), 0.0);
    for (const auto& a : atoms_) {
      if (t == sizes_.size()) {
        dst[0] += to_integer(std::ldexp(a.loss_sum, -shift_[t]));
        continue;
      }
      const double c = std::ldexp(a.weight, -shift_[t]);
      const auto g = tensor(a, t);
      for (std::size_t i = 0; i < g.size(); ++i) {
        dst[i] += to_integer(static_cast<double>(g[i]) * c);
      }
    }
  }
  sums_.reduce(1.0);
  drop();
  return std::ldexp(out[sizes_.size()][0], shift_[sizes_.size()]);
}

template <std::floating_point T>
void exact_sum<T>::hold(bool first) {
  if (held_.empty()) held_.assign(offsets_.back(), 0.0);
  const auto& in = sums_.views();
  for (std::size_t t = 0; t < sizes_.size(); ++t) {
    const double q = std::ldexp(1.0, shift_[t]);
    const auto src = in[t];
    double* dst = held_.data() + offsets_[t];
    if (first) {
      for (std::size_t i = 0; i < src.size(); ++i) dst[i] = src[i] * q;
    } else {
      for (std::size_t i = 0; i < src.size(); ++i) dst[i] += src[i] * q;
    }
  }
}

template <std::floating_point T>
bool exact_sum<T>::mean_into(const std::vector<std::span<T>>& out, double samples, bool held) {
  const auto& in = sums_.views();
  unsigned bad = 0;
  for (std::size_t t = 0; t < sizes_.size(); ++t) {
    // held: the total itself; else the integers, times q (exact) / samples.
    const double scale = held ? 1.0 / samples : std::ldexp(1.0 / samples, shift_[t]);
    const double* src = held ? held_.data() + offsets_[t] : in[t].data();
    const auto dst = out[t];
    for (std::size_t i = 0; i < dst.size(); ++i) {
      const T v = static_cast<T>(src[i] * scale);
      const T z = v - v;  // NaN exactly when v is NaN or infinite
      bad |= z != z ? 1u : 0u;
      dst[i] = v;
    }
  }
  return bad != 0;
}

}  // namespace parallax::training
