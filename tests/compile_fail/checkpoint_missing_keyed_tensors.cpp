// SPDX-License-Identifier: BSL-1.0
// Compile-fail: a trainer without for_each_keyed_tensor(f). Checkpointer
// names the missing piece of io::Checkpointable.
#include <parallax/io/checkpoint.hpp>

#include <boost/mpi/communicator.hpp>

#include <cstdint>
#include <utility>

struct MyTrainer {
  using value_type = double;
  static constexpr const char* checkpoint_kind = "MyTrainer";
  std::uint64_t checkpoint_layers() const { return 1; }
  std::pair<std::uint64_t, std::uint64_t> checkpoint_local_layers() const { return {0, 1}; }
  bool writes_checkpoint() const { return true; }
  bool checkpoint_replicated() const { return true; }
#ifdef PARALLAX_EXPECT_OK
  template <class F>
  void for_each_keyed_tensor(F&&) {}
#endif
  parallax::optim::Optimizer<double>& optimizer();
  const boost::mpi::communicator& communicator() const;
};

std::string save(parallax::io::Checkpointer& checkpoints, MyTrainer& trainer) { return checkpoints.save(trainer); }
