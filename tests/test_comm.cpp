// SPDX-License-Identifier: BSL-1.0
// Suite comm: the collectives, point-to-point tensors, the bucketer and agree,
// with rank-dependent data at 1 to 4 ranks.

#include <parallax/core/comm.hpp>

#include <doctest/doctest.h>

#include <boost/mpi/communicator.hpp>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <stdexcept>
#include <numeric>
#include <string>
#include <vector>

namespace {

using parallax::mpi::communicator;

// Values that are exact in float: (rank + 1) + (i % 7) / 4.
template <class T>
std::vector<T> rank_data(std::size_t n, int rank) {
  std::vector<T> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<T>(rank + 1) + static_cast<T>(i % 7) * T(0.25);
  return v;
}

// Sum over p ranks of rank_data: p(p+1)/2 + p (i % 7) / 4.
template <class T>
T expected_sum(std::size_t i, int p) {
  return static_cast<T>(p * (p + 1) / 2) + static_cast<T>(p) * static_cast<T>(i % 7) * T(0.25);
}

// Sizes: empty, one element, odd, the smallest ring size, one piece plus a
// little, and several pieces plus a size no rank count divides.
const std::size_t sizes[] = {0, 1, 1001, parallax::allreduce_ring_min_bytes / sizeof(double),
                             (parallax::allreduce_piece_bytes / 4) + 3,
                             3 * (parallax::allreduce_piece_bytes / 4) + 12345};

}  // namespace

TEST_CASE_TEMPLATE("comm: allreduce_sum adds rank-dependent buffers", T, float, double) {
  communicator world;
  for (auto n : sizes) {
    auto data = rank_data<T>(n, world.rank());
    parallax::allreduce_sum(world, std::span<T>(data));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) wrong += data[i] != expected_sum<T>(i, world.size());
    CHECK_MESSAGE(wrong == 0, "n = " << n);
  }
}

TEST_CASE_TEMPLATE("comm: allreduce_mean averages rank-dependent buffers", T, float, double) {
  communicator world;
  const int p = world.size();
  for (auto n : sizes) {
    auto data = rank_data<T>(n, world.rank());
    parallax::allreduce_mean(world, std::span<T>(data));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i)
      wrong += data[i] != doctest::Approx(static_cast<double>(expected_sum<T>(i, p)) / p).epsilon(1e-7);
    CHECK_MESSAGE(wrong == 0, "n = " << n);
  }
}

TEST_CASE("comm: allreduce_sum of integers") {
  communicator world;
  std::vector<long> v = {world.rank(), 10L * world.rank(), -1};
  parallax::allreduce_sum(world, std::span<long>(v));
  const long p = world.size();
  CHECK(v[0] == p * (p - 1) / 2);
  CHECK(v[1] == 10 * p * (p - 1) / 2);
  CHECK(v[2] == -p);
}

TEST_CASE_TEMPLATE("comm: iallreduce_sum completes with the sum", T, float, double) {
  communicator world;
  auto a = rank_data<T>(777, world.rank());
  auto b = rank_data<T>(5, world.rank() + 3);
  auto ra = parallax::iallreduce_sum(world, std::span<T>(a));
  auto rb = parallax::iallreduce_sum(world, std::span<T>(b));
  CHECK(ra.active());
  rb.wait();
  ra.wait();
  CHECK_FALSE(ra.active());
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < a.size(); ++i) wrong += a[i] != expected_sum<T>(i, world.size());
  CHECK(wrong == 0);
  const int p = world.size();
  for (std::size_t i = 0; i < b.size(); ++i) CHECK(b[i] == expected_sum<T>(i, p) + static_cast<T>(3 * p));
}

TEST_CASE_TEMPLATE("comm: broadcast copies the root's buffer", T, float, double) {
  communicator world;
  for (int root = 0; root < world.size(); ++root) {
    for (std::size_t n : {std::size_t{0}, std::size_t{3}, std::size_t{100003}}) {
      auto data = rank_data<T>(n, world.rank());
      parallax::broadcast(world, std::span<T>(data), root);
      CHECK(data == rank_data<T>(n, root));
    }
  }
  std::vector<T> one(1);
  CHECK_THROWS_AS(parallax::broadcast(world, std::span<T>(one), world.size()), parallax::error);
}

TEST_CASE("comm: block_of splits evenly, first ranks take the remainder") {
  for (std::size_t n : {0, 1, 5, 7, 100}) {
    for (int p = 1; p <= 5; ++p) {
      std::size_t next = 0;
      for (int r = 0; r < p; ++r) {
        const auto b = parallax::block_of(n, p, r);
        CHECK(b.begin == next);
        CHECK(b.size() >= n / static_cast<std::size_t>(p));
        CHECK(b.size() <= n / static_cast<std::size_t>(p) + 1);
        next = b.end;
      }
      CHECK(next == n);
    }
  }
}

TEST_CASE_TEMPLATE("comm: reduce_scatter_sum leaves each rank its block of the sum", T, float, double) {
  communicator world;
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{10}, std::size_t{1003}}) {
    const auto in = rank_data<T>(n, world.rank());
    const auto mine = parallax::block_of(n, world.size(), world.rank());
    std::vector<T> out(mine.size());
    parallax::reduce_scatter_sum(world, std::span<const T>(in), std::span<T>(out));
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == expected_sum<T>(mine.begin + i, world.size()));
  }
}

TEST_CASE("comm: point-to-point tensors keep shape and data (0-d, 1-d, 3-d)") {
  communicator world;
  const int p = world.size();
  const int r = world.rank();
  const int next = (r + 1) % p;
  const int prev = (r + p - 1) % p;
  // What rank s sends: shapes and values that depend on s.
  auto scalar_of = [](int s) { return xt::xarray<double>(1.5 * (s + 1)); };
  auto vector_of = [](int s) {
    return xt::xarray<float>(xt::arange<float>(static_cast<float>(s), static_cast<float>(s + 3 + s)));
  };
  auto cube_of = [](int s) {
    xt::xtensor<double, 3> c = xt::zeros<double>({std::size_t(2), std::size_t(s + 1), std::size_t(3)});
    for (std::size_t i = 0; i < c.size(); ++i) c.data()[i] = 100.0 * s + static_cast<double>(i);
    return c;
  };

  SUBCASE("non-blocking send, blocking receive of an xarray") {
    const auto s0 = scalar_of(r);
    const auto s1 = vector_of(r);
    const auto s3 = cube_of(r);
    auto q0 = parallax::isend_tensor(world, next, 10, s0);
    auto q1 = parallax::isend_tensor(world, next, 11, s1);
    auto q3 = parallax::isend_tensor(world, next, 13, s3);
    auto got0 = parallax::recv_tensor<double>(world, prev, 10);
    auto got1 = parallax::recv_tensor<float>(world, prev, 11);
    auto got3 = parallax::recv_tensor<double>(world, prev, 13);
    q0.wait();
    q1.wait();
    q3.wait();
    CHECK(got0.dimension() == 0);
    CHECK(got0() == scalar_of(prev)());
    CHECK(got1.shape() == vector_of(prev).shape());
    CHECK(got1 == vector_of(prev));
    CHECK(got3.dimension() == 3);
    CHECK(got3 == xt::xarray<double>(cube_of(prev)));
  }
  SUBCASE("non-blocking receive into a fixed-rank xtensor") {
    parallax::tensor_receive<xt::xtensor<double, 3>> incoming(world, prev, 21);
    auto empty = parallax::irecv_tensor<float>(world, prev, 22);
    const auto s3 = cube_of(r);
    const xt::xarray<float> nothing = xt::zeros<float>({std::size_t(0), std::size_t(4)});
    auto q3 = parallax::isend_tensor(world, next, 21, s3);
    auto q0 = parallax::isend_tensor(world, next, 22, nothing);
    const auto& got = incoming.wait();
    CHECK(got == cube_of(prev));
    const auto& got_empty = empty.wait();
    CHECK(got_empty.shape() == std::vector<std::size_t>{0, 4});
    q3.wait();
    q0.wait();
  }
  SUBCASE("blocking send to the next rank, receive into an existing container") {
    const auto s1 = vector_of(r);
    xt::xarray<float> out = xt::ones<float>({7, 7});
    if (p == 1) {
      auto q = parallax::isend_tensor(world, next, 31, s1);
      parallax::recv_tensor(world, prev, 31, out);
      q.wait();
    } else if (r % 2 == 0) {
      parallax::send_tensor(world, next, 31, s1);
      parallax::recv_tensor(world, prev, 31, out);
    } else {
      parallax::recv_tensor(world, prev, 31, out);
      parallax::send_tensor(world, next, 31, s1);
    }
    CHECK(out == vector_of(prev));
  }
}

TEST_CASE("comm: receiving with the wrong element type or rank is an error") {
  communicator world;
  const int p = world.size();
  const int r = world.rank();
  const xt::xarray<double> sent = {1.0, 2.0};
  auto q = parallax::isend_tensor(world, (r + 1) % p, 41, sent);
  xt::xtensor<float, 1> wrong_type;
  CHECK_THROWS_WITH_AS(parallax::recv_tensor(world, (r + p - 1) % p, 41, wrong_type),
                       doctest::Contains("sender's elements are float64, receiver expects float32"),
                       parallax::error);
  // Drain the data message the failed receive left behind.
  xt::xarray<double> drain = xt::zeros<double>({2});
  MPI_Recv(drain.data(), 2, MPI_DOUBLE, (r + p - 1) % p, 41, MPI_Comm(world), MPI_STATUS_IGNORE);
  CHECK(drain == sent);
  q.wait();
  auto q2 = parallax::isend_tensor(world, (r + 1) % p, 42, sent);
  xt::xtensor<double, 2> wrong_rank;
  CHECK_THROWS_WITH_AS(parallax::recv_tensor(world, (r + p - 1) % p, 42, wrong_rank),
                       doctest::Contains("sender's tensor has 1 dimensions, receiver's xtensor has 2"),
                       parallax::error);
  MPI_Recv(drain.data(), 2, MPI_DOUBLE, (r + p - 1) % p, 42, MPI_Comm(world), MPI_STATUS_IGNORE);
  q2.wait();
}

TEST_CASE_TEMPLATE("comm: Bucketer packs mixed shapes under the cap and unpacks them", T, float, double) {
  communicator world;
  const int p = world.size();
  std::vector<xt::xarray<T>> tensors = {
      xt::zeros<T>({3, 4}), xt::zeros<T>({7}), xt::xarray<T>(T(0)), xt::zeros<T>({2, 2, 2}),
      xt::zeros<T>({0}),    xt::zeros<T>({1000, 3})};
  std::size_t total = 0;
  for (const auto& t : tensors) total += t.size();
  // Element k of the concatenated stream holds f(k, rank).
  auto value = [](std::size_t k, int rank) { return static_cast<T>(rank + 1) + static_cast<T>(k % 5) * T(0.5); };
  // Caps: one element, not a divisor of anything, an exact divisor, larger than everything.
  for (std::size_t cap_elements : {std::size_t{1}, std::size_t{5}, std::size_t{13}, std::size_t{3033},
                                   std::size_t{1} << 20}) {
    std::size_t k = 0;
    for (auto& t : tensors)
      for (auto& x : t) x = value(k++, world.rank());
    parallax::Bucketer<T> buckets(cap_elements * sizeof(T));
    buckets.plan(tensors);
    CHECK(buckets.total_size() == total);
    CHECK(buckets.bucket_count() == (total + cap_elements - 1) / cap_elements);
    buckets.pack(tensors);
    std::size_t at = 0;
    bool stream_ok = true;
    for (auto b : buckets) {
      CHECK(b.size() <= cap_elements);
      for (auto x : b) stream_ok = stream_ok && x == value(at++, world.rank());
    }
    CHECK(stream_ok);
    CHECK(at == total);
    for (auto b : buckets) parallax::allreduce_sum(world, b);
    buckets.unpack(tensors);
    k = 0;
    std::size_t wrong = 0;
    for (const auto& t : tensors)
      for (auto x : t) {
        T want = 0;
        for (int s = 0; s < p; ++s) want += value(k, s);
        wrong += x != want;
        ++k;
      }
    CHECK_MESSAGE(wrong == 0, "cap " << cap_elements);
  }
}

TEST_CASE("comm: Bucketer edge cases") {
  CHECK_THROWS_AS(parallax::Bucketer<double>(4), parallax::error);
  parallax::Bucketer<float> buckets(64);
  std::vector<xt::xarray<float>> none;
  buckets.plan(none);
  CHECK(buckets.bucket_count() == 0);
  buckets.pack(none);
  buckets.unpack(none);
  std::vector<xt::xarray<float>> one = {xt::ones<float>({20})};
  buckets.plan(one);
  std::vector<xt::xarray<float>> other = {xt::ones<float>({19})};
  CHECK_THROWS_AS(buckets.pack(other), parallax::error);
}

TEST_CASE("comm: agree raises the same error on every rank when one rank fails") {
  communicator world;
  const int last = world.size() - 1;
  std::string message;
  try {
    parallax::agree(world, [&] {
      PARALLAX_CHECK(world.rank() != last, "load(): file is missing");
      return 1;
    });
  } catch (const parallax::error& e) {
    message = e.what();
  }
  CHECK(message == "load(): file is missing [rank " + std::to_string(last) + "]");
  // Same text everywhere.
  std::vector<std::string> all;
  parallax::mpi::all_gather(world, message, all);
  for (const auto& m : all) CHECK(m == message);
}

TEST_CASE("comm: agree passes values through and reports several failing ranks") {
  communicator world;
  CHECK(parallax::agree(world, [&] { return world.rank() * 2; }) == world.rank() * 2);
  CHECK_NOTHROW(parallax::agree(world, std::optional<parallax::error>()));
  // Typed failures: the kind of the lowest failing rank, every failing rank,
  // each cause with its ranks.
  std::optional<parallax::error> local;
  if (world.rank() % 2 == 0)
    local.emplace(world.rank() == 0 ? parallax::error_kind::io : parallax::error_kind::damaged_file,
                  "even rank " + std::to_string(world.rank()), std::vector<int>{world.rank()});
  std::string message;
  std::optional<parallax::error> agreed;
  try {
    parallax::agree(world, local);
  } catch (const parallax::error& e) {
    message = e.what();
    agreed = e;
  }
  REQUIRE(agreed);
  CHECK(agreed->kind() == parallax::error_kind::io);
  CHECK(agreed->cause() == "even rank 0");
  const int failing = (world.size() + 1) / 2;
  if (failing == 1) {
    CHECK(message == "even rank 0 [rank 0]");
    CHECK(agreed->ranks() == std::vector<int>{0});
  } else {
    CHECK(message == "even rank 0 [rank 0]; also: even rank 2 [rank 2]");
    CHECK(agreed->ranks() == std::vector<int>{0, 2});
  }
  // The same cause on several ranks is named once, with the ranks.
  std::string same;
  try {
    parallax::agree(world, [&] { PARALLAX_CHECK(world.rank() == 0, "f(): no disk"); });
  } catch (const parallax::error& e) {
    same = e.what();
  }
  if (world.size() == 2) CHECK(same == "f(): no disk [rank 1]");
  if (world.size() == 3) CHECK(same == "f(): no disk [ranks 1, 2]");
  if (world.size() == 4) CHECK(same == "f(): no disk [ranks 1, 2, 3]");
  if (world.size() == 1) CHECK(same.empty());
  // A non-parallax exception is carried too.
  CHECK_THROWS_WITH_AS(parallax::agree(world,
                                       [&] {
                                         if (world.rank() == 0) throw std::out_of_range("index 9");
                                       }),
                       doctest::Contains("index 9"), parallax::error);
  if (world.size() > 1) {
    try {
      parallax::agree(world, [&] {
        if (world.rank() == 1) throw std::out_of_range("index 9");
      });
      FAIL("agree did not throw");
    } catch (const parallax::error& e) {
      CHECK(e.kind() == parallax::error_kind::user_exception);
      CHECK(e.ranks() == std::vector<int>{1});
      CHECK(e.cause() == "index 9");
    }
    try {
      parallax::agree_equal(world, world.rank(), "rank");
      FAIL("agree_equal did not throw");
    } catch (const parallax::error& e) {
      CHECK(e.kind() == parallax::error_kind::rank_mismatch);
    }
  }
}

TEST_CASE("comm: agree_equal names the ranks that differ") {
  communicator world;
  CHECK_NOTHROW(parallax::agree_equal(world, 42, "answer"));
  CHECK_NOTHROW(parallax::agree_equal(world, std::size_t{7}, "count"));
  if (world.size() > 1) {
    const int last = world.size() - 1;
    CHECK_THROWS_WITH_AS(parallax::agree_equal(world, world.rank() == last ? 5.5 : 1.0, "learning rate"),
                         ("learning rate differs between ranks: rank 0 has 1, rank " + std::to_string(last) + " has 5.5").c_str(),
                         parallax::error);
    CHECK_THROWS_WITH_AS(parallax::agree_equal(world, std::size_t(world.rank() == last ? 3 : 0), "size"),
                         ("size differs between ranks: rank 0 has 0, rank " + std::to_string(last) + " has 3")
                             .c_str(),
                         parallax::error);
    // Values that differ in the last bit read as different numbers.
    const double next = std::nextafter(0.1, 1.0);
    CHECK_THROWS_WITH_AS(parallax::agree_equal(world, world.rank() == last ? next : 0.1, "eps"),
                         ("eps differs between ranks: rank 0 has 0.1, rank " + std::to_string(last) +
                          " has 0.10000000000000002")
                             .c_str(),
                         parallax::error);
  }
}

TEST_CASE("comm: sum_and_agree sums the values and throws a pending failure on every rank") {
  communicator world;
  const int p = world.size();
  const auto sums = parallax::sum_and_agree(world, std::array{1.0, double(world.rank())}, std::nullopt);
  CHECK(sums[0] == p);
  CHECK(sums[1] == p * (p - 1) / 2);
  CHECK_NOTHROW(parallax::sum_and_agree(world, std::array<double, 0>{}, std::nullopt));
  std::optional<parallax::error> local;
  const int last = p - 1;
  if (world.rank() == last) local.emplace(parallax::error_kind::nonfinite, "loss is nan", std::vector<int>{last});
  try {
    parallax::sum_and_agree(world, std::array{1.0}, local);
    FAIL("sum_and_agree did not throw");
  } catch (const parallax::error& e) {
    CHECK(e.kind() == parallax::error_kind::nonfinite);
    CHECK(e.ranks() == std::vector<int>{last});
    CHECK(e.cause() == "loss is nan");
  }
}

TEST_CASE_TEMPLATE("comm: allreduce_scaled scales the sum and finds non-finite values on every rank", T, float, double) {
  communicator world;
  const int p = world.size();
  for (auto n : sizes) {
    auto data = rank_data<T>(n, world.rank());
    const T scale = T(0.5);
    CHECK_FALSE(parallax::allreduce_scaled(world, std::span<T>(data), scale));
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < n; ++i) wrong += data[i] != expected_sum<T>(i, p) * scale;
    CHECK_MESSAGE(wrong == 0, "n = " << n);
    if (n == 0) continue;
    // One rank holds an infinity (or a NaN) somewhere: every rank hears of it.
    for (T bad : {std::numeric_limits<T>::infinity(), std::numeric_limits<T>::quiet_NaN()}) {
      auto poisoned = rank_data<T>(n, world.rank());
      if (world.rank() == p - 1) poisoned[n / 2] = bad;
      CHECK(parallax::allreduce_scaled(world, std::span<T>(poisoned), scale));
    }
  }
}

TEST_CASE("comm: agree_settings names each setting that differs, with the ranks' values") {
  communicator world;
  const int last = world.size() - 1;
  std::vector<parallax::setting> same = {{"lr", 0.1}, {"optimizer", 0, "sgd"}};
  CHECK_NOTHROW(parallax::agree_settings(world, same, "T"));
  if (world.size() == 1) return;
  std::vector<parallax::setting> mine = {{"lr", world.rank() == last ? 0.2 : 0.1},
                                         {"steps", 4},
                                         {"optimizer", 0, world.rank() == last ? "adam" : "sgd"}};
  try {
    parallax::agree_settings(world, mine, "T");
    FAIL("agree_settings did not throw");
  } catch (const parallax::error& e) {
    CHECK(e.kind() == parallax::error_kind::rank_mismatch);
    const auto r = std::to_string(last);
    CHECK(std::string(e.what()) == "T: settings differ between ranks: lr: rank 0 has 0.1, rank " + r +
                                       " has 0.2; optimizer: rank 0 has sgd, rank " + r + " has adam");
  }
  // Different names at one position are shown with their values.
  std::vector<parallax::setting> named = {{world.rank() == last ? "beta1" : "momentum", 0.9}};
  try {
    parallax::agree_settings(world, named, "T");
    FAIL("agree_settings did not throw");
  } catch (const parallax::error& e) {
    CHECK(std::string(e.what()) == "T: settings differ between ranks: rank 0 has momentum = 0.9, rank " +
                                       std::to_string(last) + " has beta1 = 0.9");
  }
}
