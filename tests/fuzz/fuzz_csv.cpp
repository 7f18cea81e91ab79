// SPDX-License-Identifier: BSL-1.0
// Fuzz target: a CSV file, written to a scratch file and read as
// data::read_csv does (with a header and the target by name, without one
// and the target by index, integer and floating targets) and as a shard of
// its middle rows. Lines of at most 4 KiB and 1 MiB of rows bound what one
// input may ask for: 4 MiB plus 64 KiB at the peak.

#include <parallax/data/csv.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  static const fuzz::scratch_file file("input.csv");
  file.write(data, size);
  const std::string& path = file.path;
  using X = xt::xtensor<float, 2>;
  const std::size_t bound = 4 * (std::size_t{1} << 20) + (64 << 10);
  const auto kinds = {error_kind::damaged_file, error_kind::incompatible, error_kind::invalid_argument};
  const data::csv_options named{.target = "y", .max_line_bytes = 4096, .max_bytes = std::size_t{1} << 20};
  const data::csv_options by_index{.header = false, .target_index = 1, .max_line_bytes = 4096,
                                   .max_bytes = std::size_t{1} << 20};
  fuzz::check_reader([&] { data::read_csv<X, xt::xtensor<std::int32_t, 1>>(path, named); }, kinds, bound);
  fuzz::check_reader([&] { data::read_csv<xt::xarray<double>, xt::xarray<double>>(path, by_index); }, kinds, bound);
  fuzz::check_reader(
      [&] {
        const std::size_t n = data::csv_row_count(path, by_index);
        data::read_csv_shard<X, xt::xtensor<std::uint8_t, 1>>(path, {n / 3, n - n / 3}, by_index);
      },
      kinds, bound);
  return 0;
}
