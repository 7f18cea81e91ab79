// SPDX-License-Identifier: BSL-1.0
// Prints xtensor operands of a failed CHECK as "(shape) [values]"; xtensor's
// own printer trips a GCC 12 -Wrestrict false positive under -O3.
#pragma once

#include <parallax/detail/xtensor.hpp>

#include <doctest/doctest.h>

#include <cstddef>
#include <string>

namespace doctest {
template <class EC, std::size_t N, xt::layout_type L, class Tag>
struct StringMaker<xt::xtensor_container<EC, N, L, Tag>> {
  static String convert(const xt::xtensor_container<EC, N, L, Tag>& t) {
    std::string text = parallax::detail::shape_string(t.shape()) + " [";
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (i > 0) text += ", ";
      text += std::to_string(t.data()[i]);
    }
    text += "]";
    return String(text.c_str());
  }
};
}  // namespace doctest
