// SPDX-License-Identifier: BSL-1.0
// Fuzz target: the payload of a checkpoint part file. Each input is wrapped
// in a valid header (its size and checksum fixed up), so that every mutation
// passes the checksum and reaches the payload decoder, as a damaged but
// consistent file, or one crafted on purpose, would. Tensors are float;
// peak memory stays within 6 times the file's size plus 64 KiB.

#include <parallax/detail/bytes.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/file.hpp>

#include "fuzz_support.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace parallax;
  io::file_header h;
  h.version = io::checkpoint_format_version;
  h.element = detail::type_code<float>();
  h.payload_bytes = size;
  h.checksum = io::checksum_of({reinterpret_cast<const char*>(data), size}, io::payload_checksum(h.version));
  const auto head = io::detail::encode(h);
  std::vector<char> file(head.size() + size);
  std::memcpy(file.data(), head.data(), head.size());
  if (size > 0) std::memcpy(file.data() + head.size(), data, size);
  fuzz::check_reader([&] { io::detail::parse_part<float>(file, "fuzz"); }, {error_kind::damaged_file},
                     6 * file.size() + (64 << 10));
  return 0;
}
