// SPDX-License-Identifier: BSL-1.0
// Writes the seed corpus of the fuzz targets into the folder named by its
// first argument: small valid files of every kind the readers take, written
// by the library's own writers (checkpoint parts, a MANIFEST, .npy files) or
// built like the IDX tests build theirs (and two CSV texts). The build gzips the IDX seeds with the
// system gzip. Usage: make_seeds OUTDIR

#include <parallax/data/npy.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/io/checkpoint_format.hpp>
#include <parallax/io/file.hpp>

#include "../idx_files.hpp"

#include <bit>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using namespace parallax::io::detail;

void write_bytes(const fs::path& path, const std::vector<char>& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out) throw std::runtime_error("make_seeds: cannot write " + path.string());
}

std::vector<char> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

/// A part of two layers (three tensors) with optimizer state and, when
/// `sampler`, the sampler's position.
template <class T>
part_payload<T> make_part(const std::vector<std::vector<T>>& values, bool stepped, bool sampler) {
  part_payload<T> p;
  p.trainer = "DataParallel";
  p.layer_begin = 0;
  p.layer_end = 2;
  p.where.step = stepped ? 3 : 0;
  if (sampler) {
    p.where.has_sampler = true;
    p.where.epoch = 1;
    p.where.position = 8;
    p.where.sampler_seed = 7;
    p.where.dataset_size = 40;
    p.where.global_batch = 8;
  }
  p.optimizer_kind = "adam";
  p.learning_rate = 0.001;
  p.optimizer_steps = p.where.step;
  p.slot_names = {"m", "v"};
  const std::vector<std::vector<std::uint64_t>> shapes = {{2, 3}, {3}, {1, 2}};
  const std::uint64_t layers[] = {0, 0, 1};
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    tensor_record<T> r;
    r.layer = layers[i];
    r.index = i == 1 ? 1 : 0;
    r.shape = shapes[i];
    r.view = values[i];
    for (int k = 0; k < 2; ++k) r.slot_views.push_back(stepped ? std::span<const T>(values[i]) : std::span<const T>{});
    p.tensors.push_back(std::move(r));
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUTDIR\n");
    return 2;
  }
  const fs::path out = argv[1];
  fs::create_directories(out);
  const std::vector<std::vector<float>> f = {{1, -2, 3.5f, 0, 0.25f, 6}, {0.5f, 1, -1}, {7, 8}};
  const std::vector<std::vector<double>> d = {{1, -2, 3.5, 0, 0.25, 6}, {0.5, 1, -1}, {7, 8}};
  write_part((out / "part-float.bin").string(), make_part(f, true, true));
  write_part((out / "part-float-fresh.bin").string(), make_part(f, false, false));
  write_part((out / "part-double.bin").string(), make_part(d, true, false));
  // The payload target takes the payload alone: the file without its header.
  for (const char* name : {"part-float", "part-float-fresh"}) {
    const auto file = read_bytes(out / (std::string(name) + ".bin"));
    write_bytes(out / (std::string(name) + ".payload"),
                std::vector<char>(file.begin() + parallax::io::file_header_bytes, file.end()));
  }
  manifest m;
  m.trainer = "ModelParallel";
  m.element = parallax::detail::type_code<float>();
  m.layers = 5;
  m.step = 3;
  m.parts = {{"part-0-2.bin", 0, 2}, {"part-2-5.bin", 2, 5}};
  const auto text = m.text();
  write_bytes(out / "manifest.txt", std::vector<char>(text.begin(), text.end()));

  using parallax::test::make_idx;
  std::vector<std::uint8_t> pixels(3 * 4 * 4);
  std::uint32_t x = 12345;  // small LCG: incompressible enough for a stored gzip block
  for (auto& p : pixels) p = static_cast<std::uint8_t>((x = x * 1103515245u + 12345u) >> 24);
  std::vector<std::uint8_t> floats;
  for (std::uint32_t i = 0; i < 64; ++i) parallax::test::put_be32(floats, std::bit_cast<std::uint32_t>(0.5f * i));
  const std::vector<std::uint8_t> shorts = {0x01, 0x2c, 0xff, 0xff, 0, 200, 0, 3, 0x80, 0, 0x7f, 0xff};
  const std::vector<std::pair<const char*, std::vector<std::uint8_t>>> idx = {
      {"images-u8.idx", make_idx(0x08, {3, 4, 4}, pixels)},
      {"values-f32.idx", make_idx(0x0D, {64}, floats)},
      {"values-i16.idx", make_idx(0x0B, {2, 3}, shorts)},
  };
  for (const auto& [name, bytes] : idx) write_bytes(out / name, std::vector<char>(bytes.begin(), bytes.end()));

  parallax::data::save_npy((out / "matrix-f4.npy").string(), xt::xarray<float>{{0.5f, -1.0f, 2.0f}, {3.0f, 4.0f, 5.0f}});
  parallax::data::save_npy((out / "labels-i8.npy").string(), xt::xarray<std::int64_t>{3, 1, 4, 1, 5});
  parallax::data::save_npy((out / "images-u1.npy").string(), xt::xarray<std::uint8_t>({2, 2, 2}, 200));
  const std::string named = "x0,x1,y\n1.5,-2,0\n3e-1,inf,2\n\n 4 ,\"5\",1\r\n";
  const std::string plain = "0.5,3,7\n1,4.0,8\n2,5,9\n";
  write_bytes(out / "named.csv", std::vector<char>(named.begin(), named.end()));
  write_bytes(out / "plain.csv", std::vector<char>(plain.begin(), plain.end()));
  return 0;
}
