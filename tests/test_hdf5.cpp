// SPDX-License-Identifier: BSL-1.0
// Suite hdf5: the HDF5 datasets (data/hdf5.hpp) on files this test writes
// with HDF5's C API: each rank's rows by both MPI-IO transfers, every element
// type read (big-endian too) and the values that do not fit, dataset names in
// groups, every shape and type the containers refuse, missing, garbage,
// truncated and garbled files, a bad file or bad rows on one rank only (the
// same error on every rank, no hang), and save_hdf5 read back by the C API.

#include <parallax/data/hdf5.hpp>

#include <parallax/core/block.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/serialization/string.hpp>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <string>
#include <vector>

#include "agreed.hpp"
#include "error_of.hpp"

namespace {

namespace fs = std::filesystem;
namespace data = parallax::data;
using boost::mpi::communicator;
using parallax::error_kind;

/// A folder every rank sees, made by rank 0 and removed after every rank is done.
struct shared_dir {
  communicator comm;
  std::string path;
  explicit shared_dir(const communicator& c) : comm(c) {
    static int counter = 0;
    if (comm.rank() == 0) {
      path = (fs::temp_directory_path() / ("parallax-hdf5-" + std::to_string(::getpid()) + "-" + std::to_string(counter)))
                 .string();
      fs::create_directories(path);
    }
    ++counter;
    boost::mpi::broadcast(comm, path, 0);
  }
  ~shared_dir() {
    comm.barrier();
    if (comm.rank() == 0) fs::remove_all(path);
  }
  std::string operator/(const std::string& name) const { return path + "/" + name; }
};

/// An HDF5 file written with the C API, closed at the end of scope.
struct writer {
  hid_t file;
  explicit writer(const std::string& path) : file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    REQUIRE(file >= 0);
  }
  ~writer() { H5Fclose(file); }
  /// A dataset `name` of `stored` elements and extents `dims`, from values
  /// in memory of type `memory`.
  template <class T>
  void put(const std::string& name, hid_t stored, hid_t memory, const std::vector<hsize_t>& dims,
           const std::vector<T>& values) {
    const hid_t space = dims.empty() ? H5Screate(H5S_SCALAR)
                                     : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    const hid_t links = H5Pcreate(H5P_LINK_CREATE);
    H5Pset_create_intermediate_group(links, 1);
    const hid_t set = H5Dcreate2(file, name.c_str(), stored, space, links, H5P_DEFAULT, H5P_DEFAULT);
    REQUIRE(set >= 0);
    REQUIRE(H5Dwrite(set, memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >= 0);
    H5Dclose(set);
    H5Pclose(links);
    H5Sclose(space);
  }
};

/// The inputs the tests write: x(i, j) = 10 i + j + 0.5 for `rows` rows of 3.
float input_value(std::size_t i, std::size_t j) { return static_cast<float>(10 * i + j) + 0.5f; }
std::vector<float> inputs(std::size_t rows) {
  std::vector<float> v;
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < 3; ++j) v.push_back(input_value(i, j));
  return v;
}
/// The targets: i % 4.
std::vector<std::int64_t> targets(std::size_t rows) {
  std::vector<std::int64_t> v;
  for (std::size_t i = 0; i < rows; ++i) v.push_back(static_cast<std::int64_t>(i % 4));
  return v;
}

/// A good file of `rows` rows: inputs float32 [rows, 3], targets int64 [rows].
void write_good(const std::string& path, std::size_t rows, const std::string& x = "inputs",
                const std::string& y = "targets") {
  writer w(path);
  w.put(x, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {rows, 3}, inputs(rows));
  w.put(y, H5T_STD_I64LE, H5T_NATIVE_INT64, {rows}, targets(rows));
}

using X = xt::xtensor<float, 2>;
using Y = xt::xtensor<std::int32_t, 1>;

/// The shard holds rows `rows` of the written file, by its own numbering.
void check_rows(const data::ShardDataset<X, Y>& shard, parallax::block rows, std::size_t total) {
  CHECK(shard.size() == total);
  CHECK(shard.rows().begin == rows.begin);
  CHECK(shard.rows().end == rows.end);
  const auto& x = shard.local().inputs();
  const auto& y = shard.local().targets();
  REQUIRE(x.shape()[0] == rows.size());
  REQUIRE(y.shape()[0] == rows.size());
  CHECK(x.shape()[1] == 3);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t j = 0; j < 3; ++j) CHECK(x(i, j) == input_value(rows.begin + i, j));
    CHECK(y(i) == static_cast<std::int32_t>((rows.begin + i) % 4));
  }
}

/// The agreed error of f on every rank: message (checked equal on every rank) and kind.
template <class F>
thrown agreed(const communicator& world, F&& f) {
  thrown t;
  t.message = agreed_error(world, [&] {
    const thrown mine = thrown_by(f);
    t.kind = mine.kind;
    if (mine.kind) throw parallax::error(*mine.kind, mine.message);
    if (mine.message != "no error") throw parallax::error(mine.message);
  });
  return t;
}

void check_agreed(const thrown& t, error_kind kind, std::initializer_list<std::string> parts) {
  INFO(t.message);
  CHECK(t.kind == kind);
  for (const auto& part : parts) CHECK(contains(t.message, part));
}

}  // namespace

TEST_CASE("hdf5: each rank reads its own rows, by either transfer") {
  communicator world;
  shared_dir dir(world);
  const std::size_t n = 13;
  if (world.rank() == 0) write_good(dir / "d.h5", n);
  world.barrier();
  for (const auto transfer : {data::hdf5_transfer::independent, data::hdf5_transfer::collective}) {
    CAPTURE(static_cast<int>(transfer));
    const data::hdf5_options options{.transfer = transfer};
    // The default split: block_of, the first n % size ranks one row more.
    const std::size_t size = static_cast<std::size_t>(world.size()), rank = static_cast<std::size_t>(world.rank());
    const std::size_t begin = rank * (n / size) + std::min(rank, n % size);
    const parallax::block mine{begin, begin + n / size + (rank < n % size ? 1 : 0)};
    check_rows(data::load_hdf5_shard<X, Y>(world, dir / "d.h5", options), mine, n);
    // Rows of the caller's choosing, different on every rank, one rank none.
    const parallax::block asked = world.rank() == 1 ? parallax::block{5, 5} : parallax::block{rank, n - rank};
    check_rows(data::load_hdf5_shard<X, Y>(world, dir / "d.h5", asked, options), asked, n);
    // Every row to rank 0, none to the others (they still join a collective read).
    const parallax::block first = world.rank() == 0 ? parallax::block{0, n} : parallax::block{n, n};
    check_rows(data::load_hdf5_shard<X, Y>(world, dir / "d.h5", first, options), first, n);
    const auto all = data::load_hdf5_dataset<X, Y>(world, dir / "d.h5", options);
    check_rows(data::ShardDataset<X, Y>(all, 0, n), {0, n}, n);
  }
}

TEST_CASE("hdf5: read_hdf5_info gives the shapes and element types") {
  communicator world;
  shared_dir dir(world);
  if (world.rank() == 0) write_good(dir / "d.h5", 7, "train/x", "train/y");
  world.barrier();
  const auto info = data::read_hdf5_info(dir / "d.h5", {.inputs = "train/x", .targets = "train/y"});
  CHECK(info.rows() == 7);
  CHECK(info.inputs.shape == std::vector<std::size_t>{7, 3});
  CHECK(info.targets.shape == std::vector<std::size_t>{7});
  CHECK(info.inputs.type_name() == "float32");
  CHECK(info.targets.type_name() == "int64");
  // Datasets inside groups, by path.
  check_rows(data::load_hdf5_shard<X, Y>(world, dir / "d.h5", {2, 5}, {.inputs = "train/x", .targets = "train/y"}),
             {2, 5}, 7);
}

TEST_CASE("hdf5: every element type read, big-endian too, converted when it fits") {
  communicator world;
  shared_dir dir(world);
  const std::vector<std::int32_t> small = {0, 1, 2, 3, 100, 127};
  const std::vector<hsize_t> dims = {6};
  struct stored_type {
    hid_t type;
    const char* name;
  };
  const std::vector<stored_type> types = {
      {H5T_STD_I8LE, "i8"},   {H5T_STD_I16LE, "i16"}, {H5T_STD_I32LE, "i32"}, {H5T_STD_I64LE, "i64"},
      {H5T_STD_U8LE, "u8"},   {H5T_STD_U16LE, "u16"}, {H5T_STD_U32LE, "u32"}, {H5T_STD_U64LE, "u64"},
      {H5T_STD_I32BE, "i32be"}, {H5T_STD_U16BE, "u16be"}, {H5T_IEEE_F32LE, "f32"}, {H5T_IEEE_F64LE, "f64"},
      {H5T_IEEE_F64BE, "f64be"}};
  if (world.rank() == 0) {
    writer w(dir / "types.h5");
    for (const auto& t : types) w.put(t.name, t.type, H5T_NATIVE_INT32, dims, small);
    w.put("big", H5T_STD_I32LE, H5T_NATIVE_INT32, dims, std::vector<std::int32_t>{0, 1, 2, 3, 300, 5});
    w.put("half", H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, dims, std::vector<double>{0, 1, 2.5, 3, 4, 5});
  }
  world.barrier();
  using U8 = xt::xtensor<std::uint8_t, 1>;
  using D = xt::xtensor<double, 1>;
  for (const auto& t : types) {
    CAPTURE(t.name);
    const auto as_u8 = data::load_hdf5_dataset<D, U8>(world, dir / "types.h5", {.inputs = t.name, .targets = t.name});
    REQUIRE(as_u8.targets().size() == small.size());
    for (std::size_t i = 0; i < small.size(); ++i) {
      CHECK(as_u8.targets()(i) == small[i]);
      CHECK(as_u8.inputs()(i) == static_cast<double>(small[i]));
    }
  }
  // 300 is in row 4: an error naming the element, for the rank holding it
  // (rows 4 and 5 to the last rank, the rest to the others).
  const auto last = world.size() - 1;
  const parallax::block rows = world.rank() == last ? parallax::block{4, 6} : parallax::block{0, 4};
  for (const auto transfer : {data::hdf5_transfer::independent, data::hdf5_transfer::collective}) {
    const auto t = agreed(world, [&] {
      data::load_hdf5_shard<D, U8>(world, dir / "types.h5", rows,
                                   {.inputs = "i8", .targets = "big", .transfer = transfer});
    });
    check_agreed(t, error_kind::incompatible,
                 {"load_hdf5_shard()", "dataset 'big'", "element 4 (300) does not fit in uint8",
                  "[rank " + std::to_string(last) + "]"});
  }
  const auto half = agreed(world, [&] {
    data::load_hdf5_dataset<D, Y>(world, dir / "types.h5", {.inputs = "f32", .targets = "half"});
  });
  check_agreed(half, error_kind::incompatible, {"dataset 'half'", "element 2 (2.5) does not fit in int32"});
}

TEST_CASE("hdf5: datasets that are missing or of a shape or type the containers cannot take") {
  communicator world;
  shared_dir dir(world);
  if (world.rank() == 0) {
    writer w(dir / "d.h5");
    w.put("inputs", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {4, 3}, inputs(4));
    w.put("targets", H5T_STD_I64LE, H5T_NATIVE_INT64, {4}, targets(4));
    w.put("targets5", H5T_STD_I64LE, H5T_NATIVE_INT64, {5}, targets(5));
    w.put("cube", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {2, 2, 3}, inputs(4));
    w.put("pair", H5T_STD_I64LE, H5T_NATIVE_INT64, {2}, targets(2));
    w.put("column", H5T_STD_I64LE, H5T_NATIVE_INT64, {4, 1}, targets(4));
    w.put("scalar", H5T_STD_I64LE, H5T_NATIVE_INT64, {}, std::vector<std::int64_t>{7});
    const hid_t text = H5Tcopy(H5T_C_S1);
    H5Tset_size(text, 4);
    w.put("names", text, text, {4}, std::vector<char>{'a', 'b', 'c', 0, 'd', 'e', 'f', 0, 'g', 'h', 'i', 0, 'j', 'k', 'l', 0});
    H5Tclose(text);
    H5Gclose(H5Gcreate2(w.file, "group", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  }
  world.barrier();
  const std::string f = dir / "d.h5";
  auto load = [&](data::hdf5_options o) { return [&world, f, o] { data::load_hdf5_shard<X, Y>(world, f, o); }; };
  check_agreed(agreed(world, load({.inputs = "x"})), error_kind::incompatible,
               {"load_hdf5_shard(): '" + f + "'", "no dataset 'x' (hdf5_options::inputs)", "'cube'", "'targets5'"});
  check_agreed(agreed(world, load({.targets = "group"})), error_kind::incompatible,
               {"'group' is not a dataset"});
  check_agreed(agreed(world, load({.targets = "targets5"})), error_kind::incompatible,
               {"dataset 'inputs' holds 4 rows of inputs but 'targets5' holds 5 rows of targets"});
  check_agreed(agreed(world, load({.inputs = "cube", .targets = "pair"})), error_kind::incompatible,
               {"dataset 'cube' of shape (2, 2, 3) has 3 dimensions, the container takes 2"});
  check_agreed(agreed(world, load({.targets = "column"})), error_kind::incompatible,
               {"dataset 'column' of shape (4, 1) has 2 dimensions, the container takes 1"});
  check_agreed(agreed(world, load({.targets = "scalar"})), error_kind::incompatible,
               {"dataset 'scalar' is a scalar (0-dimensional)"});
  check_agreed(agreed(world, load({.targets = "names"})), error_kind::incompatible,
               {"dataset 'names' holds string elements of 4 bytes"});
  // xarray takes any number of dimensions.
  const auto cube = data::load_hdf5_dataset<xt::xarray<float>, xt::xarray<std::int32_t>>(
      world, f, {.inputs = "cube", .targets = "pair"});
  REQUIRE(cube.inputs().shape() == std::vector<std::size_t>{2, 2, 3});
  const auto written = inputs(4);
  for (std::size_t i = 0; i < written.size(); ++i) CHECK(cube.inputs().data()[i] == written[i]);
  // Rows outside the datasets, and more bytes than allowed, on one rank.
  const bool last = world.rank() == world.size() - 1;
  const std::string who = "[rank " + std::to_string(world.size() - 1) + "]";
  check_agreed(agreed(world, [&] { data::load_hdf5_shard<X, Y>(world, f, last ? parallax::block{2, 5} : parallax::block{0, 1}); }),
               error_kind::invalid_argument, {"rows [2, 5) of a dataset of 4 rows", who});
  check_agreed(agreed(world, [&] {
                 data::load_hdf5_shard<X, Y>(world, f, last ? parallax::block{0, 4} : parallax::block{0, 0}, {.max_bytes = 40});
               }),
               error_kind::damaged_file, {"dataset 'inputs': rows [0, 4) of shape (4, 3) are more than hdf5_options::max_bytes (40 bytes)", who});
}

TEST_CASE("hdf5: files that are missing, not HDF5, truncated or garbled") {
  communicator world;
  shared_dir dir(world);
  std::string good;
  if (world.rank() == 0) {
    write_good(dir / "good.h5", 50);
    std::ifstream in(dir / "good.h5", std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
    auto put = [&](const std::string& name, const std::string& bytes) {
      std::ofstream(dir / name, std::ios::binary) << bytes;
    };
    put("empty.h5", "");
    put("text.h5", std::string(4096, 'x'));
    put("truncated.h5", good.substr(0, good.size() / 2));
    put("header-only.h5", good.substr(0, 100));
    std::string garbled = good;
    for (std::size_t i = 200; i < 1200 && i < garbled.size(); ++i) garbled[i] = static_cast<char>(i * 7);
    put("garbled.h5", garbled);
    // Three bytes of the root group's symbol table: its lookup of 'inputs'
    // fails while its listing still names it.
    std::string links = good;
    links[151] = '\x2e', links[154] = '\xb0', links[182] = '\x2f';
    put("links.h5", links);
    fs::create_directories(dir / "folder.h5");
  }
  world.barrier();
  auto load = [&](const std::string& name) { return [&world, f = dir / name] { data::load_hdf5_shard<X, Y>(world, f); }; };
  check_agreed(agreed(world, load("missing.h5")), error_kind::io, {"missing.h5': no such file"});
  check_agreed(agreed(world, load("folder.h5")), error_kind::io, {"folder.h5': not a regular file"});
  check_agreed(agreed(world, load("empty.h5")), error_kind::damaged_file, {"empty.h5': not an HDF5 file"});
  check_agreed(agreed(world, load("text.h5")), error_kind::damaged_file, {"text.h5': not an HDF5 file"});
  check_agreed(agreed(world, load("truncated.h5")), error_kind::damaged_file,
               {"truncated.h5': cannot open the file: truncated or damaged (HDF5: truncated file"});
  check_agreed(agreed(world, load("header-only.h5")), error_kind::damaged_file,
               {"header-only.h5': cannot open the file: truncated or damaged (HDF5: "});
  // Bytes overwritten in the root group's heap and the object headers:
  // HDF5 cannot read them (which of them it meets first is its business).
  check_agreed(agreed(world, load("garbled.h5")), error_kind::damaged_file, {"garbled.h5': cannot ", "(HDF5: "});
  check_agreed(agreed(world, load("links.h5")), error_kind::damaged_file,
               {"links.h5': the file's root lists 'inputs' but looking it up fails (damaged links)"});
  // read_hdf5_info is local and gives the same errors.
  check_error([&] { data::read_hdf5_info(dir / "truncated.h5"); }, error_kind::damaged_file,
              {"read_hdf5_info(): '", "truncated file"});
}

TEST_CASE("hdf5: a bad file on one rank only is the same error on every rank, without a hang") {
  communicator world;
  shared_dir dir(world);
  if (world.rank() == 0) {
    write_good(dir / "good.h5", 20);
    writer w(dir / "short.h5");
    w.put("inputs", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {19, 3}, inputs(19));
    w.put("targets", H5T_STD_I64LE, H5T_NATIVE_INT64, {19}, targets(19));
  }
  world.barrier();
  std::string good;
  if (world.rank() == 0) {
    std::ifstream in(dir / "good.h5", std::ios::binary);
    good.assign(std::istreambuf_iterator<char>(in), {});
    std::ofstream(dir / "cut.h5", std::ios::binary) << good.substr(0, good.size() - 100);
  }
  world.barrier();
  const int bad = world.size() - 1;
  const std::string who = "[rank " + std::to_string(bad) + "]";
  for (const std::string name : {"missing.h5", "cut.h5"}) {
    const auto t = agreed(world, [&] { data::load_hdf5_shard<X, Y>(world, dir / (world.rank() == bad ? name : "good.h5")); });
    check_agreed(t, name == "missing.h5" ? error_kind::io : error_kind::damaged_file, {name, who});
  }
  // Another file of the same name on one host: told apart by its description.
  if (world.size() > 1) {
    const auto t = agreed(world, [&] { data::load_hdf5_shard<X, Y>(world, dir / (world.rank() == bad ? "short.h5" : "good.h5")); });
    check_agreed(t, error_kind::rank_mismatch, {"load_hdf5_shard(): every rank reads one file (the same path, a shared file system): settings differ",
                  "short.h5'", "rows: rank 0 has 20, rank " + std::to_string(bad) + " has 19"});
  }
  // Afterwards the ranks are still in step.
  check_rows(data::load_hdf5_shard<X, Y>(world, dir / "good.h5", {1, 3}), {1, 3}, 20);
}

TEST_CASE("hdf5: save_hdf5 writes what HDF5 reads back, and its errors") {
  communicator world;
  shared_dir dir(world);
  if (world.rank() == 0) {
    xt::xtensor<double, 2> x = {{1.5, -2.0}, {3.25, 4.0}, {5.0, 6.125}};
    xt::xtensor<std::uint8_t, 1> y = {7, 8, 255};
    data::save_hdf5(dir / "s.h5", x, y, {.inputs = "a/x", .targets = "b"});
    const hid_t file = H5Fopen((dir / "s.h5").c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    REQUIRE(file >= 0);
    std::vector<double> xs(6);
    std::vector<std::uint8_t> ys(3);
    const hid_t dx = H5Dopen2(file, "a/x", H5P_DEFAULT), dy = H5Dopen2(file, "b", H5P_DEFAULT);
    REQUIRE(dx >= 0);
    REQUIRE(dy >= 0);
    CHECK(H5Dread(dx, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, xs.data()) >= 0);
    CHECK(H5Dread(dy, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, ys.data()) >= 0);
    const hid_t tx = H5Dget_type(dx), space = H5Dget_space(dx);
    CHECK(H5Tget_class(tx) == H5T_FLOAT);
    CHECK(H5Tget_size(tx) == 8);
    hsize_t dims[2] = {0, 0};
    CHECK(H5Sget_simple_extent_ndims(space) == 2);
    H5Sget_simple_extent_dims(space, dims, nullptr);
    CHECK(dims[0] == 3);
    CHECK(dims[1] == 2);
    CHECK(xs == std::vector<double>{1.5, -2.0, 3.25, 4.0, 5.0, 6.125});
    CHECK(ys == std::vector<std::uint8_t>{7, 8, 255});
    H5Sclose(space);
    H5Tclose(tx);
    H5Dclose(dx);
    H5Dclose(dy);
    H5Fclose(file);
    check_error([&] { data::save_hdf5(dir / "no/such/folder.h5", x, y); }, error_kind::io,
                {"save_hdf5(): '", "cannot create the file (HDF5: "});
    check_error([&] { data::save_hdf5(dir / "rows.h5", x, xt::xtensor<std::uint8_t, 1>{1, 2}); },
                error_kind::invalid_argument, {"as many rows"});
  }
}

TEST_CASE("hdf5: HDF5's error printing is off inside parallax's calls and the caller's setting is kept") {
  communicator world;
  H5E_auto2_t before = nullptr;
  void* data_before = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &before, &data_before);
  CHECK((before != nullptr));  // HDF5 prints by default
  CHECK(contains(error_of([&] { data::read_hdf5_info("/nonexistent/parallax.h5"); }), "no such file"));
  H5E_auto2_t after = nullptr;
  void* data_after = nullptr;
  H5Eget_auto2(H5E_DEFAULT, &after, &data_after);
  CHECK((after == before));
  CHECK((data_after == data_before));
}
