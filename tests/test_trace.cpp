// SPDX-License-Identifier: BSL-1.0
// Suite comm: timeline traces (core/trace.hpp) at 1 to 4 ranks: spans are
// recorded only while tracing is on, write() gathers every rank's spans into
// one Chrome trace-event file on rank 0 and tells every rank alike whether it
// was written, leaves the file alone when nothing new was recorded, and names
// are escaped as JSON strings.

#include <parallax/core/trace.hpp>

#include "temp_dir.hpp"

#include <doctest/doctest.h>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace {

namespace mpi = boost::mpi;
namespace trace = parallax::trace;

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_CASE("trace: spans of every rank in one file, only while tracing is on") {
  mpi::communicator world;
  parallax::test::temp_dir dir("trace");
  std::string path = (dir.path / "t.json").string();
  mpi::broadcast(world, path, 0);  // rank 0's folder: the one file
  REQUIRE_FALSE(trace::enabled());
  { trace::span before("before", "test"); }  // off: not recorded

  trace::set_file(path);
  CHECK(trace::enabled());
  {
    trace::span outer("outer", "test", 7);
    for (int i = 0; i < 3; ++i) trace::span inner([&] { return "inner " + std::to_string(i); }, "test", i);
  }
  CHECK(trace::write());
  if (world.rank() == 0) {
    const std::string json = read_all(path);
    REQUIRE(json.rfind("{\"displayTimeUnit\":\"ms\",\"traceEvents\":[", 0) == 0);
    CHECK(json.find("]}\n") == json.size() - 3);
    for (int r = 0; r < world.size(); ++r)
      CHECK(json.find("\"args\":{\"name\":\"rank " + std::to_string(r) + "\"}") != std::string::npos);
    CHECK(occurrences(json, "\"name\":\"outer\"") == static_cast<std::size_t>(world.size()));
    CHECK(occurrences(json, "\"args\":{\"index\":7}") == static_cast<std::size_t>(world.size()));
    CHECK(occurrences(json, "\"name\":\"inner 2\"") == static_cast<std::size_t>(world.size()));
    CHECK(occurrences(json, "\"ph\":\"X\"") == static_cast<std::size_t>(4 * world.size()));
    CHECK(json.find("before") == std::string::npos);
  }

  // Nothing recorded since: the file is left as it is (here: not made
  // again); one more span on one rank writes it again, with every span.
  world.barrier();
  if (world.rank() == 0) std::filesystem::remove(path);
  CHECK(trace::write());
  if (world.rank() == 0) CHECK_FALSE(std::filesystem::exists(path));
  if (world.rank() == world.size() - 1) trace::span late("late", "test");
  CHECK(trace::write());
  if (world.rank() == 0) {
    const std::string json = read_all(path);
    CHECK(occurrences(json, "\"name\":\"late\"") == 1);
    CHECK(occurrences(json, "\"name\":\"outer\"") == static_cast<std::size_t>(world.size()));
  }

  // Off again: what was recorded is dropped, nothing more is written.
  trace::set_file("");
  CHECK_FALSE(trace::enabled());
  { trace::span after("after", "test"); }
  CHECK(trace::write());
  if (world.rank() == 0) CHECK(read_all(path).find("after") == std::string::npos);
}

TEST_CASE("trace: a file rank 0 cannot write is false on every rank") {
  mpi::communicator world;
  trace::set_file("/nonexistent-parallax-folder/t.json");
  { trace::span s("s", "test"); }
  CHECK_FALSE(trace::write());
  trace::set_file("");
}

TEST_CASE("trace: names are JSON strings") {
  CHECK(trace::detail::json_text("plain") == "\"plain\"");
  CHECK(trace::detail::json_text("a \"quoted\" \\ name") == "\"a \\\"quoted\\\" \\\\ name\"");
  CHECK(trace::detail::json_text("tab\tand\nnewline") == "\"tab\\u0009and\\u000anewline\"");
}
