#pragma once
// SPDX-License-Identifier: BSL-1.0
/// HDF5's C API as parallax calls it: identifiers closed at the end of
/// scope, HDF5's own error printing off while parallax calls it, a failed
/// call as a parallax::error quoting HDF5's innermost message, and the
/// native memory types of the element types. Needs the MPI-enabled HDF5
/// (data/hdf5.hpp says how to link it).

#include <parallax/core/error.hpp>

#if !__has_include(<hdf5.h>)
#error "parallax: data/hdf5.hpp needs HDF5's headers: link the MPI-enabled HDF5 (Debian: libhdf5-openmpi-dev; meson: dependency('parallax-hdf5'), pkg-config: parallax-hdf5)"
#endif
#include <hdf5.h>
#if !defined(H5_HAVE_PARALLEL)
#error "parallax: data/hdf5.hpp reads with MPI-IO and needs the MPI-enabled HDF5 (Debian: libhdf5-openmpi-dev, pkg-config hdf5-openmpi), not the serial one"
#endif

#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

namespace parallax::detail {

/// Turns HDF5's automatic printing of its error stack off for its lifetime
/// (restoring the caller's handler after): failures become parallax errors
/// that quote the stack's innermost message instead.
class hdf5_quiet {
 public:
  hdf5_quiet() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~hdf5_quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  hdf5_quiet(const hdf5_quiet&) = delete;
  hdf5_quiet& operator=(const hdf5_quiet&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

/// "HDF5: <innermost message>" of the current error stack, or "" when empty.
inline std::string hdf5_reason() {
  std::string innermost;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_DOWNWARD,
      [](unsigned, const H5E_error2_t* e, void* out) -> herr_t {
        if (e->desc && *e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &innermost);
  return innermost.empty() ? std::string() : " (HDF5: " + innermost + ")";
}

/// An HDF5 identifier closed with its close function at the end of scope.
class hdf5_id {
 public:
  hdf5_id() = default;
  hdf5_id(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  hdf5_id(hdf5_id&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), close_(o.close_) {}
  hdf5_id& operator=(hdf5_id&& o) noexcept {
    std::swap(id_, o.id_);
    std::swap(close_, o.close_);
    return *this;
  }
  ~hdf5_id() {
    if (id_ >= 0) close_(id_);
  }
  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  /// Gives the identifier up without closing it.
  void release() { id_ = H5I_INVALID_HID; }

 private:
  hid_t id_ = H5I_INVALID_HID;
  herr_t (*close_)(hid_t) = nullptr;
};

/// `id` as an hdf5_id, or error `kind`: `where: what (HDF5: ...)`.
inline hdf5_id hdf5_checked(hid_t id, herr_t (*close)(hid_t), error_kind kind, const std::string& what) {
  if (id < 0) throw_error(kind, what + hdf5_reason());
  return {id, close};
}

inline void hdf5_check(herr_t status, error_kind kind, const std::string& what) {
  if (status < 0) throw_error(kind, what + hdf5_reason());
}

/// HDF5's native memory type of an element type parallax reads or writes.
template <class T>
hid_t hdf5_native_type() {
  if constexpr (std::is_same_v<T, float>) return H5T_NATIVE_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return H5T_NATIVE_DOUBLE;
  else if constexpr (std::is_same_v<T, std::int8_t>) return H5T_NATIVE_INT8;
  else if constexpr (std::is_same_v<T, std::int16_t>) return H5T_NATIVE_INT16;
  else if constexpr (std::is_same_v<T, std::int32_t>) return H5T_NATIVE_INT32;
  else if constexpr (std::is_same_v<T, std::int64_t>) return H5T_NATIVE_INT64;
  else if constexpr (std::is_same_v<T, std::uint8_t>) return H5T_NATIVE_UINT8;
  else if constexpr (std::is_same_v<T, std::uint16_t>) return H5T_NATIVE_UINT16;
  else if constexpr (std::is_same_v<T, std::uint32_t>) return H5T_NATIVE_UINT32;
  else if constexpr (std::is_same_v<T, std::uint64_t>) return H5T_NATIVE_UINT64;
  else static_assert(sizeof(T) == 0, "parallax: HDF5 elements are float, double or a fixed-width integer type");
}

}  // namespace parallax::detail
