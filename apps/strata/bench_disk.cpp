#include "bench_disk.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "launcher.h"

namespace strata::cli {
namespace fs = std::filesystem;

Result<DiskFigures> disk_figures(const fs::path& dir) {
  STRATA_ASSIGN_OR_RETURN(std::string self, self_exe());
  const fs::path json = dir / "io.json";
  STRATA_RETURN_IF_ERROR(run_as_user({self, "bench", "io", "--dir", dir.string(), "--size", "2GiB", "--no-fio",
                                    "--repeats", "1", "--records", "64MiB", "--records-only", "--queue-depth", "8",
                                    "--copy", "--json"},
                                   "> " + shell_quoted(json.string()), "strata bench io"));
  std::ifstream in(json);
  auto j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) return make_error(ErrorCode::kDataLoss, "strata bench io printed no JSON");
  DiskFigures d;
  for (const auto& row : j["rows"]) {
    const std::string name = row["name"].get<std::string>();
    if (name.find("qd 8 rec 64.0 MiB") == std::string::npos || name.find("ring") != std::string::npos) continue;
    const double v = row["value"].get<double>();
    if (name.rfind("read", 0) == 0) d.read_gbps = v;
    if (name.rfind("write", 0) == 0) d.write_gbps = v;
    if (name.rfind("copy", 0) == 0) d.copy_gbps = v;
  }
  if (d.read_gbps <= 0 || d.write_gbps <= 0 || d.copy_gbps <= 0) return make_error(ErrorCode::kDataLoss, "strata bench io: no 64 MiB record rows");
  return d;
}

}  // namespace strata::cli
