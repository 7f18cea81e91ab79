#pragma once
// SPDX-License-Identifier: BSL-1.0
/// Dropout<T, N>: inverted dropout whose mask is a pure function of the
/// input, so backward recomputes it and the layer keeps no state between
/// forward and backward.

#include <parallax/core/error.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/random.hpp>
#include <parallax/detail/xtensor.hpp>
#include <parallax/nn/detail/checks.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace parallax::nn {

/// Inverted dropout: in training mode each element is dropped (set to 0)
/// with probability p and kept elements are scaled by 1 / (1 - p); in eval
/// mode (`set_training(false)`) the layer is the identity. As in PyTorch
/// (x * mask / (1 - p)), a dropped NaN or +-inf gives NaN, in forward (x)
/// and backward (dy) alike, so dropping never hides one.
///
/// The mask is a deterministic, reproducible function of
///   (seed, layer index)      from initialize(seed, index),
///   the step                 from set_step(step) (0 until set),
///   the element's position   its flat index within its sample (the batch
///                            index is left out, so splitting a batch into
///                            micro-batches or shards gives the same masks),
///   the bit pattern of x     at that element,
/// hashed with parallax::detail::key. So forward and backward agree without
/// storing the mask, several micro-batches can be in flight, and a rerun
/// with the same seed, steps and data drops the same elements. Inputs that
/// differ in their last bit (another rank count or a pipeline in the default
/// mode) draw other masks, so such runs drift apart. Call
/// set_step() with a new value every training step for fresh masks.
/// @code
///   parallax::nn::Dropout<float> drop(0.5);
///   drop.initialize(seed, 3);
///   drop.set_step(step);
///   drop.forward(x, y);
/// @endcode
template <class T, std::size_t N = 2>
class Dropout {
 public:
  static_assert(N >= 1, "parallax: Dropout needs tensors of rank 1 or more (batch first)");
  static_assert(sizeof(T) <= sizeof(std::uint64_t), "parallax: Dropout hashes the element's bits into 64 bits");
  using value_type = T;
  using input_type = xt::xtensor<T, N>;
  using output_type = xt::xtensor<T, N>;

  /// Drops each element with probability p, in [0, 1).
  explicit Dropout(double p);

  /// No parameters; remembers (seed, index) for the masks.
  void initialize(std::uint64_t seed, std::size_t index) {
    seed_ = seed;
    index_ = index;
  }
  /// The step that keys the masks; set a new one every training step.
  void set_step(std::uint64_t step) { step_ = step; }
  std::uint64_t step() const { return step_; }
  /// Training mode drops; eval mode (false) is the identity.
  void set_training(bool training) { training_ = training; }
  bool training() const { return training_; }
  /// The drop probability p.
  double probability() const { return p_; }

  /// True when an element with value v at `position` (its flat index within
  /// its sample) is kept at the current seed, index and step.
  bool kept(T v, std::size_t position) const;

  /// y = mask * x / (1 - p) in training mode, y = x in eval mode; y is
  /// resized only when its shape differs from x's.
  void forward(const input_type& x, output_type& y) const;
  /// dx = mask * dy / (1 - p) (the mask recomputed from x), or dy in eval mode.
  void backward(const input_type& x, const output_type& y, const output_type& dy, input_type& dx) const;

  /// "Dropout(p = 0.5)".
  std::string describe() const;
  /// The input shape itself; throws parallax::error when its rank is not N.
  std::vector<std::size_t> output_shape(const std::vector<std::size_t>& input_shape) const;
  /// Stateless: 0.
  static std::size_t parameter_count(double /*p*/) { return 0; }

 private:
  /// Applies the mask and scale to `from` (the values) with decisions taken
  /// from x, writing `to`.
  void apply(const input_type& x, const T* from, T* to) const;

  double p_;
  bool training_ = true;
  std::uint64_t seed_ = 0;
  std::uint64_t index_ = 0;
  std::uint64_t step_ = 0;
};

// ---------------------------------------------------------------------------

template <class T, std::size_t N>
Dropout<T, N>::Dropout(double p) : p_(p) {
  PARALLAX_CHECK(p >= 0.0 && p < 1.0, "Dropout: p must be in [0, 1), got " + parallax::detail::number_text(p));
}

template <class T, std::size_t N>
bool Dropout<T, N>::kept(T v, std::size_t position) const {
  std::uint64_t bits = 0;
  if constexpr (sizeof(T) == 8) {
    bits = std::bit_cast<std::uint64_t>(v);
  } else if constexpr (sizeof(T) == 4) {
    bits = std::bit_cast<std::uint32_t>(v);
  } else if constexpr (sizeof(T) == 2) {
    bits = std::bit_cast<std::uint16_t>(v);
  } else {
    bits = std::bit_cast<std::uint8_t>(v);
  }
  const std::uint64_t h = parallax::detail::key(seed_, index_, step_, position, bits);
  const double u = static_cast<double>(h >> 11) * 0x1.0p-53;
  return u >= p_;
}

template <class T, std::size_t N>
void Dropout<T, N>::apply(const input_type& x, const T* from, T* to) const {
  const std::size_t n = x.size();
  if (!training_) {
    for (std::size_t i = 0; i < n; ++i) to[i] = from[i];
    return;
  }
  const std::size_t batch = x.shape()[0];
  const std::size_t per_sample = batch == 0 ? 0 : n / batch;
  const T scale = static_cast<T>(1.0 / (1.0 - p_));
  const T* in = x.data();
  for (std::size_t b = 0; b < batch; ++b)
    for (std::size_t j = 0; j < per_sample; ++j) {
      const std::size_t i = b * per_sample + j;
      // A dropped element is what PyTorch's from * 0 gives, NaN for NaN and
      // for +-inf, but +0 for every finite value (from * 0 would give -0 for
      // a negative one): from - from is exactly that.
      to[i] = kept(in[i], j) ? from[i] * scale : from[i] - from[i];
    }
}

template <class T, std::size_t N>
void Dropout<T, N>::forward(const input_type& x, output_type& y) const {
  if (y.shape() != x.shape()) y.resize(x.shape());
  apply(x, x.data(), y.data());
}

template <class T, std::size_t N>
void Dropout<T, N>::backward(const input_type& x, const output_type& /*y*/, const output_type& dy,
                             input_type& dx) const {
  detail::check_dy_shape(dy.shape(), x.shape(), "Dropout");
  if (dx.shape() != x.shape()) dx.resize(x.shape());
  apply(x, dy.data(), dx.data());
}

template <class T, std::size_t N>
std::string Dropout<T, N>::describe() const {
  std::ostringstream out;
  out << "Dropout(p = " << p_ << ")";
  return out.str();
}

template <class T, std::size_t N>
std::vector<std::size_t> Dropout<T, N>::output_shape(const std::vector<std::size_t>& input_shape) const {
  detail::check_input_rank(input_shape, N, describe());
  return input_shape;
}

}  // namespace parallax::nn
