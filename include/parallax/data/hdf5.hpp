#pragma once
// SPDX-License-Identifier: BSL-1.0
/// HDF5 datasets: a file holding a dataset of inputs and one of targets
/// (names chosen by the caller), read by every rank of a communicator
/// together, each rank only its rows [begin, end) (a hyperslab selection,
/// read through MPI-IO); a local writer for such files.
///
/// Needs the MPI-enabled HDF5 (Debian: libhdf5-openmpi-dev), linked by the
/// program that includes this header: dependency('parallax-hdf5') in meson,
/// pkg-config parallax-hdf5, or meson's feature -Dhdf5=enabled for
/// parallax's own programs. The rest of parallax does not need HDF5, and
/// parallax.hpp does not include this header.
///
/// Files are untrusted input, checked as data/npy.hpp checks .npy files and
/// with the same error kinds: a file that cannot be read is io; one that is
/// not HDF5, truncated or garbled is damaged_file (HDF5's own words quoted);
/// an intact one without the datasets asked for, of an element type not
/// read, of a shape the container cannot hold, with different row counts,
/// or with a value the element type cannot hold is incompatible. HDF5's own
/// printing of its error stack is off while parallax calls it. The loaders
/// are collective and agree every failure, so every rank throws the same
/// error; the writer and read_hdf5_info are local.

#include <parallax/core/agree.hpp>
#include <parallax/core/block.hpp>
#include <parallax/core/error.hpp>
#include <parallax/core/operation.hpp>
#include <parallax/data/batch.hpp>
#include <parallax/detail/element_type.hpp>
#include <parallax/detail/hdf5.hpp>
#include <parallax/detail/input_file.hpp>
#include <parallax/detail/number_text.hpp>
#include <parallax/detail/xtensor.hpp>

#include <boost/mpi/collectives/all_gather.hpp>
#include <boost/mpi/communicator.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace parallax::data {

/// How the ranks' reads reach the file through MPI-IO (H5Pset_dxpl_mpio).
/// Independent is the default: measured faster for contiguous row blocks
/// (benchmarks/README.md, "HDF5 shard reads").
enum class hdf5_transfer : std::uint8_t { independent, collective };

struct hdf5_options {
  std::string inputs = "inputs";    ///< the inputs dataset's path in the file
  std::string targets = "targets";  ///< the targets dataset's path in the file
  hdf5_transfer transfer = hdf5_transfer::independent;
  std::size_t max_bytes = std::size_t{1} << 31;  ///< most bytes of elements one rank's read returns
};

/// One dataset of the file: its shape and element type ("float32", "int64").
struct hdf5_array_info {
  std::vector<std::size_t> shape;
  std::uint64_t type = 0;  ///< detail::type_code of the element type
  std::string type_name() const;
};

/// The inputs and targets datasets of a file.
struct hdf5_info {
  hdf5_array_info inputs, targets;
  std::size_t rows() const { return inputs.shape.empty() ? 0 : inputs.shape[0]; }
};

/// Local: opens the file (without MPI-IO) and checks that it holds the two
/// datasets, each of at least one dimension, of integer or floating
/// elements of at most 8 bytes, with as many rows.
hdf5_info read_hdf5_info(const std::string& path, const hdf5_options& options = {});

/// Collective over `comm`: every rank reads rows [rows.begin, rows.end) of
/// both datasets (its own rows; ranks may ask for different ones, or none)
/// through MPI-IO, converting elements as read_npy does (a value the element
/// type cannot hold is an error). X and Y are xtensor containers (xarray, or
/// xtensor of the datasets' dimensions). Any failure on any rank is the same
/// parallax::error on every rank; the file must be the same on every rank (a
/// shared file system), checked by its description.
/// @code
///   auto mine = parallax::data::load_hdf5_shard<X, Y>(comm, "train.h5");   // rows block_of(n, size, rank)
/// @endcode
template <class X, class Y>
ShardDataset<X, Y> load_hdf5_shard(const mpi::communicator& comm, const std::string& path, block rows,
                                   const hdf5_options& options = {},
                                   std::source_location site = std::source_location::current());

/// As above, with this rank's rows block_of(rows, comm.size(), comm.rank()):
/// the split DataParallel::evaluate uses.
template <class X, class Y>
ShardDataset<X, Y> load_hdf5_shard(const mpi::communicator& comm, const std::string& path,
                                   const hdf5_options& options = {},
                                   std::source_location site = std::source_location::current());

/// Collective: every rank reads every row.
template <class X, class Y>
TensorDataset<X, Y> load_hdf5_dataset(const mpi::communicator& comm, const std::string& path,
                                      const hdf5_options& options = {},
                                      std::source_location site = std::source_location::current());

/// Local: writes `inputs` and `targets` (the same number of rows; float,
/// double or integer elements) as the datasets options.inputs and
/// options.targets of a new file at `path` (replacing one there), contiguous
/// in row-major order; error_kind::io when it cannot.
template <class X, class Y>
void save_hdf5(const std::string& path, const X& inputs, const Y& targets, const hdf5_options& options = {});

// ---------------------------------------------------------------------------
// Implementation
// ---------------------------------------------------------------------------

}  // namespace parallax::data

namespace parallax::detail {

/// The names at the file's root, for a message about a missing dataset.
inline std::vector<std::string> hdf5_root_names(hid_t file) {
  std::vector<std::string> names;
  H5Literate(
      file, H5_INDEX_NAME, H5_ITER_INC, nullptr,
      [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
        static_cast<std::vector<std::string>*>(out)->emplace_back(name);
        return 0;
      },
      &names);
  return names;
}

/// The dataset `name` of `file`, opened: incompatible when there is none or
/// it is another kind of object (a group), damaged_file when the file's
/// links or the object's header cannot be read.
inline hdf5_id hdf5_open_dataset(hid_t file, const std::string& name, const std::string& option,
                                 const std::string& where) {
  const htri_t exists = H5Lexists(file, name.c_str(), H5P_DEFAULT);
  if (exists < 0) throw_error(error_kind::damaged_file, where + ": cannot look up '" + name + "'" + hdf5_reason());
  if (exists == 0) {
    const auto names = hdf5_root_names(file);
    std::string listed;
    for (const auto& n : names) listed += (listed.empty() ? "'" : ", '") + n + "'";
    // The root lists the name its lookup did not find: the file's link
    // index is damaged, not the options.
    const bool listed_there = std::find(names.begin(), names.end(), name) != names.end();
    throw_error(listed_there ? error_kind::damaged_file : error_kind::incompatible,
                where + (listed_there ? ": the file's root lists '" + name + "' but looking it up fails (damaged links)"
                                      : ": no dataset '" + name + "' (hdf5_options::" + option +
                                            "); the file's root holds " + (listed.empty() ? "nothing" : listed)));
  }
  hdf5_id object = hdf5_checked(H5Oopen(file, name.c_str(), H5P_DEFAULT), H5Oclose, error_kind::damaged_file,
                                where + ": cannot open the object '" + name + "'");
  PARALLAX_CHECK_KIND(H5Iget_type(object.get()) == H5I_DATASET, error_kind::incompatible,
                      where + ": '" + name + "' is not a dataset (a group?)");
  return object;
}

/// The shape and element type of an open dataset, checked: a simple
/// dataspace of at least one dimension, integer or floating elements.
inline data::hdf5_array_info hdf5_describe_dataset(hid_t dataset, const std::string& name,
                                                   const std::string& where) {
  const std::string what = where + ": dataset '" + name + "'";
  data::hdf5_array_info info;
  const hdf5_id type = hdf5_checked(H5Dget_type(dataset), H5Tclose, error_kind::damaged_file,
                                    what + ": cannot read its element type");
  const H5T_class_t cls = H5Tget_class(type.get());
  const std::size_t size = H5Tget_size(type.get());
  if (cls == H5T_FLOAT && (size == 4 || size == 8)) {
    info.type = make_type_code(type_kind::floating, size);
  } else if (cls == H5T_INTEGER && (size == 1 || size == 2 || size == 4 || size == 8)) {
    info.type = make_type_code(H5Tget_sign(type.get()) == H5T_SGN_NONE ? type_kind::unsigned_integer
                                                                        : type_kind::signed_integer,
                               size);
  } else {
    const char* kinds[] = {"integer", "floating", "time", "string", "bitfield", "opaque", "compound",
                           "reference", "enum", "variable-length", "array"};
    const std::string kind = cls >= 0 && cls < 11 ? kinds[cls] : "unknown";
    throw_error(error_kind::incompatible, what + " holds " + kind + " elements of " + std::to_string(size) +
                                              " bytes; only integers of 1, 2, 4 or 8 bytes and floats of 4 or 8 "
                                              "bytes are read");
  }
  const hdf5_id space = hdf5_checked(H5Dget_space(dataset), H5Sclose, error_kind::damaged_file,
                                     what + ": cannot read its shape");
  const int dims = H5Sget_simple_extent_ndims(space.get());
  hdf5_check(dims, error_kind::damaged_file, what + ": cannot read its shape");
  PARALLAX_CHECK_KIND(dims >= 1, error_kind::incompatible,
                      what + " is a scalar (0-dimensional), not one row per sample");
  std::vector<hsize_t> extents(static_cast<std::size_t>(dims));
  hdf5_check(H5Sget_simple_extent_dims(space.get(), extents.data(), nullptr), error_kind::damaged_file,
             what + ": cannot read its shape");
  info.shape.assign(extents.begin(), extents.end());
  return info;
}

/// The two datasets of an open file, described and checked against each other.
inline data::hdf5_info hdf5_describe(hid_t file, const data::hdf5_options& options, const std::string& where) {
  data::hdf5_info info;
  info.inputs = hdf5_describe_dataset(hdf5_open_dataset(file, options.inputs, "inputs", where).get(),
                                      options.inputs, where);
  info.targets = hdf5_describe_dataset(hdf5_open_dataset(file, options.targets, "targets", where).get(),
                                       options.targets, where);
  PARALLAX_CHECK_KIND(info.inputs.shape[0] == info.targets.shape[0], error_kind::incompatible,
                      where + ": dataset '" + options.inputs + "' holds " + std::to_string(info.inputs.shape[0]) +
                          " rows of inputs but '" + options.targets + "' holds " +
                          std::to_string(info.targets.shape[0]) + " rows of targets");
  return info;
}

/// The file opened read-only on this rank alone, after the checks every
/// reader makes (a regular file with HDF5's signature).
inline hdf5_id hdf5_open_local(const std::string& path, const std::string& where) {
  input_file_size(path, where);
  const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
  PARALLAX_CHECK_KIND(is_hdf5 != 0, error_kind::damaged_file,
                      where + ": not an HDF5 file (no HDF5 signature at byte offset 0, 512, 1024, ...)");
  hdf5_check(is_hdf5, error_kind::io, where + ": cannot read the file");
  return hdf5_checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose, error_kind::damaged_file,
                      where + ": cannot open the file: truncated or damaged");
}

/// A dataset's shape must fit container E, and its elements E's type.
template <class E>
void hdf5_check_container(const data::hdf5_array_info& info, const std::string& name, const std::string& where) {
  using T = typename E::value_type;
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>,
                "parallax: HDF5 datasets are read into containers of an arithmetic element type (not bool)");
  constexpr std::size_t rank = xt::get_rank<E>::value;
  if constexpr (rank != SIZE_MAX) {
    PARALLAX_CHECK_KIND(info.shape.size() == rank, error_kind::incompatible,
                        where + ": dataset '" + name + "' of shape " + shape_string(info.shape) + " has " +
                            std::to_string(info.shape.size()) + " dimensions, the container takes " +
                            std::to_string(rank));
  }
}

/// Converts the elements read as S into out, checking each (read_npy's rule).
template <class S, class T>
void hdf5_convert(const std::vector<S>& in, T* out, std::size_t first, const std::string& what) {
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (!fits_exactly<T>(in[i])) {
      throw_error(error_kind::incompatible, what + ": element " + std::to_string(first + i) + " (" +
                                                number_text(in[i]) + ") does not fit in " + type_name<T>());
    }
    out[i] = static_cast<T>(in[i]);
  }
}

/// Elements of one row of a dataset: the product of shape[1:].
inline std::size_t hdf5_row_elements(const data::hdf5_array_info& info) {
  std::size_t n = 1;
  for (std::size_t i = 1; i < info.shape.size(); ++i) n *= info.shape[i];
  return n;
}

/// Rows `rows` of a dataset must be within it and within options.max_bytes
/// (as read and as E's elements). Checked before any collective read, so a
/// rank that would fail does not miss the read the others are in.
template <class E>
void hdf5_check_rows(const data::hdf5_array_info& info, const std::string& name, block rows,
                     const data::hdf5_options& options, const std::string& where) {
  using T = typename E::value_type;
  const std::string range = "rows [" + std::to_string(rows.begin) + ", " + std::to_string(rows.end) + ")";
  PARALLAX_CHECK(rows.begin <= rows.end && rows.end <= info.shape[0],
                 where + ": " + range + " of a dataset of " + std::to_string(info.shape[0]) + " rows");
  const std::size_t row_elements = hdf5_row_elements(info);
  const std::size_t item = std::max<std::size_t>(info.type & 0xff, sizeof(T));
  PARALLAX_CHECK_KIND(row_elements == 0 || rows.size() <= options.max_bytes / item / row_elements,
                      error_kind::damaged_file,
                      where + ": dataset '" + name + "': " + range + " of shape " + shape_string(info.shape) +
                          " are more than hdf5_options::max_bytes (" + std::to_string(options.max_bytes) +
                          " bytes)");
}

/// Reads rows `rows` of the dataset `name` of an MPI-IO file into `out`
/// (resized): a hyperslab of the file, the whole of `out` in memory. Called
/// by every rank (an empty block selects nothing but joins a collective
/// transfer).
template <class E>
void hdf5_read_rows(hid_t file, const std::string& name, const data::hdf5_array_info& info, block rows,
                    const data::hdf5_options& options, const std::string& where, E& out) {
  using T = typename E::value_type;
  const std::string what = where + ": dataset '" + name + "'";
  std::vector<std::size_t> shape = info.shape;
  shape[0] = rows.size();
  const std::size_t row_elements = hdf5_row_elements(info);
  const std::size_t count = rows.size() * row_elements;
  out.resize(shape);
  const hdf5_id dataset = hdf5_open_dataset(file, name, name == options.inputs ? "inputs" : "targets", where);
  const hdf5_id file_space =
      hdf5_checked(H5Dget_space(dataset.get()), H5Sclose, error_kind::damaged_file, what + ": cannot read its shape");
  std::vector<hsize_t> start(shape.size(), 0), extent(shape.begin(), shape.end());
  start[0] = rows.begin;
  hdf5_id memory_space;
  if (count == 0) {
    hdf5_check(H5Sselect_none(file_space.get()), error_kind::io, what + ": cannot select no rows");
    memory_space = hdf5_checked(H5Screate(H5S_NULL), H5Sclose, error_kind::io, what + ": cannot make a dataspace");
  } else {
    hdf5_check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr),
               error_kind::io, what + ": cannot select rows [" + std::to_string(rows.begin) + ", " +
                                   std::to_string(rows.end) + ")");
    memory_space = hdf5_checked(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr), H5Sclose,
                                error_kind::io, what + ": cannot make a dataspace");
  }
  const hdf5_id transfer = hdf5_checked(H5Pcreate(H5P_DATASET_XFER), H5Pclose, error_kind::io,
                                        what + ": cannot make a transfer property list");
  hdf5_check(H5Pset_dxpl_mpio(transfer.get(), options.transfer == data::hdf5_transfer::collective
                                                  ? H5FD_MPIO_COLLECTIVE
                                                  : H5FD_MPIO_INDEPENDENT),
             error_kind::io, what + ": cannot set the MPI-IO transfer mode");
  const std::string reading = what + ": cannot read rows [" + std::to_string(rows.begin) + ", " +
                              std::to_string(rows.end) + ")";
  T none{};  // HDF5 wants a buffer even when nothing is selected
  // The file's own element type is read and each value checked on the way
  // to T (HDF5's conversions clamp silently); the same type is read in place.
  auto read_as = [&]<class S>(S*) {
    if constexpr (std::is_same_v<S, T>) {
      hdf5_check(H5Dread(dataset.get(), hdf5_native_type<T>(), memory_space.get(), file_space.get(), transfer.get(),
                         count ? out.data() : &none),
                 error_kind::io, reading);
    } else {
      std::vector<S> buffer(count);
      S spare{};
      hdf5_check(H5Dread(dataset.get(), hdf5_native_type<S>(), memory_space.get(), file_space.get(), transfer.get(),
                         count ? buffer.data() : &spare),
                 error_kind::io, reading);
      hdf5_convert(buffer, out.data(), rows.begin * row_elements, what);
    }
  };
  switch (info.type) {
    case type_code<float>(): read_as(static_cast<float*>(nullptr)); break;
    case type_code<double>(): read_as(static_cast<double*>(nullptr)); break;
    case type_code<std::int8_t>(): read_as(static_cast<std::int8_t*>(nullptr)); break;
    case type_code<std::int16_t>(): read_as(static_cast<std::int16_t*>(nullptr)); break;
    case type_code<std::int32_t>(): read_as(static_cast<std::int32_t*>(nullptr)); break;
    case type_code<std::int64_t>(): read_as(static_cast<std::int64_t*>(nullptr)); break;
    case type_code<std::uint8_t>(): read_as(static_cast<std::uint8_t*>(nullptr)); break;
    case type_code<std::uint16_t>(): read_as(static_cast<std::uint16_t*>(nullptr)); break;
    case type_code<std::uint32_t>(): read_as(static_cast<std::uint32_t*>(nullptr)); break;
    case type_code<std::uint64_t>(): read_as(static_cast<std::uint64_t*>(nullptr)); break;
    default: throw_error(error_kind::incompatible, what + ": element type " + type_code_name(info.type) + " is not read");
  }
}

/// Collective: whether the non-empty row blocks of two ranks overlap. Open
/// MPI 4.1's own MPI-IO (OMPIO, Debian bookworm's default) returns zeros for
/// parts of a collective read at 3 or more ranks whose selections overlap
/// (tests/test_hdf5.cpp reads overlapping rows; ROMIO reads them right, and
/// disjoint blocks read right with both), so such reads go independent.
inline bool hdf5_rows_overlap(const mpi::communicator& comm, block rows) {
  const std::uint64_t mine[2] = {rows.begin, rows.end};
  std::vector<std::uint64_t> ends;
  mpi::all_gather(comm, mine, 2, ends);
  std::vector<block> all;
  for (std::size_t r = 0; r + 1 < ends.size(); r += 2) all.push_back({ends[r], ends[r + 1]});
  std::sort(all.begin(), all.end(), [](const block& a, const block& b) { return a.begin < b.begin; });
  std::size_t end = 0;
  for (const block& b : all) {
    if (b.size() == 0) continue;
    if (b.begin < end) return true;
    end = b.end;
  }
  return false;
}

/// The loaders' protocol, in the order that keeps every rank in the same
/// collectives: (1) each rank opens the file alone and checks everything it
/// can (the file, the datasets, the containers, its rows), agreed; (2) the
/// description must be the same on every rank (one file, seen alike); (3)
/// the collective MPI-IO open, agreed, then both reads on every rank, agreed.
/// An open that fails on some ranks only after (1) passed everywhere (an
/// MPI-IO error) leaves the file open on the others: closing it is
/// collective and would wait for the ranks without it.
template <class X, class Y, class RowsOf>
data::ShardDataset<X, Y> hdf5_load(const mpi::communicator& comm, const std::string& path, RowsOf rows_of,
                                   const data::hdf5_options& options, const std::string& function) {
  const std::string where = file_where(function, path);
  const hdf5_quiet quiet;
  data::hdf5_info info;
  block rows{};
  agree(comm, capture([&] {
    info = hdf5_describe(hdf5_open_local(path, where).get(), options, where);
    hdf5_check_container<X>(info.inputs, options.inputs, where);
    hdf5_check_container<Y>(info.targets, options.targets, where);
    rows = rows_of(info.rows());
    hdf5_check_rows<X>(info.inputs, options.inputs, rows, options, where);
    hdf5_check_rows<Y>(info.targets, options.targets, rows, options, where);
  }));
  // The message must be the same on every rank: the path is a setting
  // compared, not part of the text.
  agree_settings(comm,
                 {{"path", 0, "'" + path + "'"},
                  {"rows", static_cast<double>(info.rows())},
                  {"inputs", 0, shape_string(info.inputs.shape) + " " + info.inputs.type_name()},
                  {"targets", 0, shape_string(info.targets.shape) + " " + info.targets.type_name()}},
                 function + ": every rank reads one file (the same path, a shared file system)");
  data::hdf5_options read = options;
  if (read.transfer == data::hdf5_transfer::collective && hdf5_rows_overlap(comm, rows)) {
    read.transfer = data::hdf5_transfer::independent;
  }
  hdf5_id file;
  std::optional<error> failure = capture([&] {
    const hdf5_id access = hdf5_checked(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, error_kind::io,
                                        where + ": cannot make a file access property list");
    hdf5_check(H5Pset_fapl_mpio(access.get(), comm, MPI_INFO_NULL), error_kind::io,
               where + ": cannot set MPI-IO file access");
    file = hdf5_checked(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get()), H5Fclose, error_kind::damaged_file,
                        where + ": cannot open the file with MPI-IO");
  });
  // Closing is collective: when the open failed on some rank, the ranks
  // where it opened give the file up instead (the agreed verdict, so alike).
  if (const auto opened = capture([&] { agree(comm, failure); })) {
    file.release();
    throw *opened;
  }
  // Both reads on every rank whatever the first gave: with a collective
  // transfer each is a collective, and a value that does not fit (found
  // after the read) can be in one rank's rows only.
  X x;
  Y y;
  const auto x_failure =
      capture([&] { hdf5_read_rows(file.get(), read.inputs, info.inputs, rows, read, where, x); });
  const auto y_failure =
      capture([&] { hdf5_read_rows(file.get(), read.targets, info.targets, rows, read, where, y); });
  agree(comm, x_failure ? x_failure : y_failure);  // every rank then closes the file, together
  return data::ShardDataset<X, Y>(data::TensorDataset<X, Y>(std::move(x), std::move(y)), rows.begin, info.rows());
}

template <class E>
void hdf5_write(hid_t file, const std::string& name, const E& array, const std::string& where) {
  using T = typename E::value_type;
  const std::string what = where + ": dataset '" + name + "'";
  std::vector<hsize_t> extents(array.shape().begin(), array.shape().end());
  const hdf5_id space = hdf5_checked(H5Screate_simple(static_cast<int>(extents.size()), extents.data(), nullptr),
                                     H5Sclose, error_kind::io, what + ": cannot make a dataspace");
  const hdf5_id links = hdf5_checked(H5Pcreate(H5P_LINK_CREATE), H5Pclose, error_kind::io,
                                     what + ": cannot make a link creation property list");
  hdf5_check(H5Pset_create_intermediate_group(links.get(), 1), error_kind::io, what + ": cannot create groups");
  const hdf5_id dataset =
      hdf5_checked(H5Dcreate2(file, name.c_str(), hdf5_native_type<T>(), space.get(), links.get(), H5P_DEFAULT,
                              H5P_DEFAULT),
                   H5Dclose, error_kind::io, what + ": cannot create the dataset");
  const auto& values = xt::eval(array);  // row-major elements, whatever E is
  hdf5_check(H5Dwrite(dataset.get(), hdf5_native_type<T>(), H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
             error_kind::io, what + ": write error");
}

}  // namespace parallax::detail

namespace parallax::data {

inline std::string hdf5_array_info::type_name() const { return detail::type_code_name(type); }

inline hdf5_info read_hdf5_info(const std::string& path, const hdf5_options& options) {
  const detail::hdf5_quiet quiet;
  const std::string where = detail::file_where("read_hdf5_info()", path);
  return detail::hdf5_describe(detail::hdf5_open_local(path, where).get(), options, where);
}

template <class X, class Y>
ShardDataset<X, Y> load_hdf5_shard(const mpi::communicator& comm, const std::string& path, block rows,
                                   const hdf5_options& options, std::source_location site) {
  operation op(comm, "load_hdf5_shard()", -1, site);
  return detail::hdf5_load<X, Y>(comm, path, [&](std::size_t) { return rows; }, options,
                                 std::string("load_hdf5_shard()"));
}

template <class X, class Y>
ShardDataset<X, Y> load_hdf5_shard(const mpi::communicator& comm, const std::string& path,
                                   const hdf5_options& options, std::source_location site) {
  operation op(comm, "load_hdf5_shard()", -1, site);
  return detail::hdf5_load<X, Y>(
      comm, path, [&](std::size_t n) { return block_of(n, comm.size(), comm.rank()); }, options,
      std::string("load_hdf5_shard()"));
}

template <class X, class Y>
TensorDataset<X, Y> load_hdf5_dataset(const mpi::communicator& comm, const std::string& path,
                                      const hdf5_options& options, std::source_location site) {
  operation op(comm, "load_hdf5_dataset()", -1, site);
  return detail::hdf5_load<X, Y>(comm, path, [](std::size_t n) { return block{0, n}; }, options,
                                 std::string("load_hdf5_dataset()"))
      .local();
}

template <class X, class Y>
void save_hdf5(const std::string& path, const X& inputs, const Y& targets, const hdf5_options& options) {
  const std::string where = detail::file_where("save_hdf5()", path);
  PARALLAX_CHECK(inputs.dimension() >= 1 && targets.dimension() >= 1 && inputs.shape()[0] == targets.shape()[0],
                 where + ": inputs of shape " + detail::shape_string(inputs.shape()) + " and targets of shape " +
                     detail::shape_string(targets.shape()) + ": both need one row per sample, as many rows");
  const detail::hdf5_quiet quiet;
  const detail::hdf5_id file = detail::hdf5_checked(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                                                    H5Fclose, error_kind::io, where + ": cannot create the file");
  detail::hdf5_write(file.get(), options.inputs, inputs, where);
  detail::hdf5_write(file.get(), options.targets, targets, where);
  detail::hdf5_check(H5Fflush(file.get(), H5F_SCOPE_LOCAL), error_kind::io, where + ": write error");
}

}  // namespace parallax::data
