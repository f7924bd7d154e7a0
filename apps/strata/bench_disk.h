// The disk's own figures for a bench's baseline: `strata bench io` run on the same
// directory in the same run (64 MiB records through the swap store's huge-page pool, with --copy).
#pragma once

#include <filesystem>

#include "strata/base/status.h"

namespace strata::cli {

struct DiskFigures {
  double read_gbps = 0, write_gbps = 0;
  // Bytes copied per second, each read from one record and written to another with both
  // directions in flight at once: the baseline for traffic both ways on one disk.
  double copy_gbps = 0;
};

Result<DiskFigures> disk_figures(const std::filesystem::path& dir);

}  // namespace strata::cli
