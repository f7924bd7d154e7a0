// strata env: what this machine offers strata.
#include <sys/sysinfo.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include "commands.h"
#include "strata/base/blas.h"
#include "strata/base/units.h"
#include "strata/io/file_engine.h"
#include "strata/io/probe.h"
#include "strata/kernels/dispatch.h"
#include "strata/tiers/device.h"

namespace strata::cli {
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

void row(std::string_view key, std::string_view value) { fmt::print("  {:<16} {}\n", key, value); }

std::string yes_no(const io::Capability& c) { return fmt::format("{} ({})", c.ok ? "yes" : "no", c.detail); }

int run_env(const std::string& dir) {
  std::error_code ec;
  const std::string abs = std::filesystem::weakly_canonical(dir, ec).string();
  if (!std::filesystem::is_directory(dir, ec)) {
    fmt::print(stderr, "strata env: {} is not a directory\n", dir);
    return 2;
  }
  fmt::print("strata {}\n\n", STRATA_VERSION);

  fmt::print("CPU\n");
  row("model", cpu_model());
  row("cores", fmt::format("{} online", ::sysconf(_SC_NPROCESSORS_ONLN)));
  std::vector<std::string> names;
  for (const auto& t : kernels::available_targets()) names.push_back(t.name);
  row("SIMD targets", fmt::format("{} (dispatch picks {})", fmt::join(names, ", "), kernels::active_target().name));
  struct sysinfo si {};
  if (::sysinfo(&si) == 0) {
    row("RAM", fmt::format("{} total, {} free", format_bytes(std::uint64_t{si.totalram} * si.mem_unit),
                           format_bytes(std::uint64_t{si.freeram} * si.mem_unit)));
  }

  const auto dev = tiers::detect_device();
  fmt::print("\nLibTorch\n");
  row("version", dev.torch_version);
  row("CUDA", dev.cuda_available ? fmt::format("available, {} device(s)", dev.cuda_device_count) : "not available");
  row("compute tier", dev.compute.is_cuda() ? "GPU memory"
                     : dev.built_with_cuda  ? "host memory (no GPU found)"
                                            : "host memory (strata built without CUDA)");
  if (dev.built_with_cuda) {
    row("CUDA runtime", dev.cuda_runtime);
    row("CUDA driver", dev.cuda_driver);
    row("NCCL", dev.nccl);
    for (std::size_t i = 0; i < dev.gpus.size(); ++i) {
      const tiers::GpuInfo& g = dev.gpus[i];
      row(fmt::format("GPU {}", i),
          fmt::format("{}, compute capability {}.{}, {} multiprocessors, {} memory, {} free", g.name,
                      g.capability_major, g.capability_minor, g.multiprocessors, format_bytes(g.total_bytes),
                      format_bytes(g.free_bytes)));
    }
  }
  const BlasInfo blas = detect_blas();
  row("BLAS", fmt::format("{}{}{}", blas.name, blas.threads ? fmt::format(", {} thread(s)", blas.threads) : "",
                          blas.library.empty() ? "" : fmt::format(" ({})", blas.library)));
  if (!blas.detail.empty()) row("", blas.detail);
  if (!blas.optimized) {
    fmt::print(stderr, "strata env: warning: fp32 matrix products run on the {} (a 1024x1024 product was 16x "
                       "slower than OpenBLAS on one core, 31x on two, docs/performance.md); install "
                       "libopenblas0-openmp (scripts/setup does)\n", blas.name);
  }

  const auto probe = io::probe_directory(dir);
  fmt::print("\nStorage at {}\n", abs);
  row("filesystem", probe.filesystem.empty() ? "unknown" : probe.filesystem);
  row("disk", fmt::format("{} free of {}", format_bytes(probe.free_bytes), format_bytes(probe.total_bytes)));
  row("O_DIRECT", yes_no(probe.o_direct));
  row("io_uring", yes_no(probe.io_uring));
  // The engine's own selection, so env and the swap store never disagree.
  const io::BackendChoice choice = io::select_backend(io::Backend::kAuto, &probe);
  row("I/O backend", fmt::format("{} ({})",
                                 choice.backend == io::Backend::kUring ? "io_uring" : "pread/pwrite thread pool",
                                 choice.reason));
  return 0;
}

}  // namespace

void add_env_command(CLI::App& app, int* exit_code) {
  auto* cmd = app.add_subcommand("env", "Report the CPU, SIMD targets, LibTorch, the GPUs, and I/O capabilities");
  auto dir = std::make_shared<std::string>(".");
  cmd->add_option("--dir", *dir, "Directory to probe for O_DIRECT and io_uring (default: current)");
  cmd->callback([dir, exit_code] { *exit_code = run_env(*dir); });
}

}  // namespace strata::cli
