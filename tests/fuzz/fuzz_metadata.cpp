// CheckpointMetadata::from_json on arbitrary bytes: it throws Error(Status::invalid), or what it
// returns is written by to_json into JSON that from_json reads back equal (and writes the same).
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nucleus/checkpoint/metadata.hpp>

#include "fuzz_support.hpp"

using nc_fuzz::expect;
using nucleus::checkpoint::CheckpointMetadata;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  std::optional<CheckpointMetadata> parsed;
  if (const auto status = nc_fuzz::status_of([&] { parsed = CheckpointMetadata::from_json(json); })) {
    expect(*status == nucleus::checkpoint::Status::invalid, "from_json threw an Error other than Status::invalid");
    return 0;
  }
  // Accepted strings are valid UTF-8 and libFuzzer's inputs (4 KiB by default) stay far below
  // max_size even pretty-printed, so to_json has no reason to throw: if it does, that is a finding.
  const std::string written = parsed->to_json();
  const CheckpointMetadata reread = CheckpointMetadata::from_json(written);
  expect(reread == *parsed, "to_json then from_json changed the metadata");
  expect(reread.to_json() == written, "to_json wrote equal metadata differently");
  return 0;
}
