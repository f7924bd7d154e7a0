// strata bench io: sequential O_DIRECT write then read through the swap store, next to
// fio with the same parameters (io_uring, direct=1, block size, iodepth, size,
// directory), measured in the same run, alternating, medians over repeats.
//
// Configurations (defaults): block 1 MiB at queue depth 8 and 32 with 1 MiB records,
// then the record sizes the engine uses for shards (8 and 64 MiB) at queue depth 8.
// strata's buffers come from the store's pool (Note [rotating placement] in
// buffer_pool.h) on transparent huge pages (Note [huge pages]); each row names its
// buffer, and fio's (bs x iodepth, 4 KiB pages). Two more rows move 1 MiB records
// through a ring about the size of fio's buffer, on huge pages and on 4 KiB pages, to
// show which of the two (size or pages) makes the difference. With --copy, a third pass
// per non-ring case reads the records while writing them to a second set (no fio row).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_report.h"
#include "commands.h"
#include "strata/base/units.h"
#include "strata/io/swap_store.h"

namespace strata::cli {
namespace {

struct Options {
  std::string dir = ".";
  std::string size = "4GiB";
  std::string block_size, records = "8MiB,64MiB", pool = "1GiB", backend = "auto";
  int queue_depth = 0;  // 0: both 8 and 32
  int repeats = 3;
  bool no_fio = false, json = false, unregistered = false, copy = false;
  bool records_only = false;  // only the --records cases: a bench's disk baseline needs no other
};

struct Case {
  std::uint64_t block = 0, record = 0, pool = 0;
  int qd = 0;
  bool ring = false;  // buffers: a ring about the size of fio's, not the big pool
  bool huge = true;   // pool on transparent huge pages (Note [huge pages])
  std::string label() const {
    return fmt::format("bs {} qd {} rec {}{}", format_bytes(block), qd, format_bytes(record),
                       ring ? (huge ? " ring" : " ring 4K pages") : "");
  }
};

struct Sample {
  std::vector<double> write_gbps, read_gbps, copy_gbps;
};

struct Pass {
  double write_gbps = 0, read_gbps = 0, copy_gbps = 0;  // copy: 0 when not run
};

double gbps(std::uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0; }

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Store ops kept in flight: enough payload behind the engine's queue to keep it full
// across record boundaries.
std::size_t window(const Case& c) {
  const std::uint64_t want = (static_cast<std::uint64_t>(c.qd) + 1) * c.block;
  return std::max<std::size_t>(2, static_cast<std::size_t>((want + c.record - 1) / c.record) + 1);
}

// One write pass then one read pass of `total` bytes, as `total / record` records; with
// `copy`, then a pass that reads those records and writes each to a second set as its
// read completes, reads and writes in flight together: the disk's rate for traffic both
// ways at once, as a checkpoint of nvme-resident state makes it.
Result<Pass> run_strata(const Case& c, std::uint64_t total, const std::string& dir, io::Backend backend,
                        bool registered, bool copy, std::string* backend_used) {
  io::SwapStoreOptions o;
  o.nvme_path = dir;
  o.job_name = fmt::format("bench-io-{}", ::getpid());
  o.min_io_bytes = 0;
  o.aio.block_size = c.block;
  o.aio.queue_depth = c.qd;
  o.backend = backend;
  o.pool_bytes = c.pool;
  o.pool_huge_pages = c.huge;
  o.register_pool = registered;
  o.pool_timeout = std::chrono::minutes(2);
  STRATA_ASSIGN_OR_RETURN(auto store, io::SwapStore::open(o));
  *backend_used = std::string(io::to_string(store->engine().backend()));
  if (!store->direct_io()) {
    return make_error(ErrorCode::kUnavailable, "{} does not support O_DIRECT; the benchmark would measure the page "
                      "cache", dir);
  }
  const std::uint64_t n = total / c.record;
  std::vector<io::SwapReservation> res;
  for (std::uint64_t i = 0; i < (copy ? 2 * n : n); ++i) res.push_back({io::SwapKey{io::SwapKind::kOptimizer, 0, i}, c.record});
  STRATA_RETURN_IF_ERROR(store->reserve(res));
  {  // Give every byte of the arena content once, so writes carry real data.
    STRATA_ASSIGN_OR_RETURN(io::PooledBuffer all, store->pool().acquire(store->pool().budget()));
    auto* w = all.as<std::uint64_t>();
    for (std::size_t i = 0; i < all.size() / 8; ++i) w[i] = i * 0x9E3779B97F4A7C15ull;
  }
  const std::size_t depth = window(c);
  auto pass = [&](bool write) -> Result<double> {
    std::deque<std::pair<io::SwapHandle, io::PooledBuffer>> inflight;
    auto retire = [&]() -> Status {
      STRATA_RETURN_IF_ERROR(inflight.front().first.wait());
      inflight.pop_front();
      return ok();
    };
    const auto t0 = std::chrono::steady_clock::now();
    for (std::uint64_t i = 0; i < n; ++i) {
      if (inflight.size() == depth) STRATA_RETURN_IF_ERROR(retire());
      STRATA_ASSIGN_OR_RETURN(io::PooledBuffer buf, store->pool().acquire(c.record));
      const io::SwapKey key{io::SwapKind::kOptimizer, 0, i};
      io::SwapHandle h = write ? store->put_async(key, buf.span()) : store->get_async(key, buf.span());
      inflight.emplace_back(std::move(h), std::move(buf));
    }
    while (!inflight.empty()) STRATA_RETURN_IF_ERROR(retire());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  // Record i read, then written as record n + i; `depth` of each kind in flight.
  auto copy_pass = [&]() -> Result<double> {
    std::deque<std::pair<io::SwapHandle, io::PooledBuffer>> reads, writes;
    const auto t0 = std::chrono::steady_clock::now();
    std::uint64_t issued = 0, done = 0;
    while (done < n) {
      while (issued < n && reads.size() < depth) {
        STRATA_ASSIGN_OR_RETURN(io::PooledBuffer buf, store->pool().acquire(c.record));
        io::SwapHandle h = store->get_async({io::SwapKind::kOptimizer, 0, issued++}, buf.span());
        reads.emplace_back(std::move(h), std::move(buf));
      }
      if (writes.size() == depth) {
        STRATA_RETURN_IF_ERROR(writes.front().first.wait());
        writes.pop_front();
      }
      STRATA_RETURN_IF_ERROR(reads.front().first.wait());
      io::PooledBuffer buf = std::move(reads.front().second);
      reads.pop_front();
      io::SwapHandle h = store->put_async({io::SwapKind::kOptimizer, 0, n + done++}, buf.span());
      writes.emplace_back(std::move(h), std::move(buf));
    }
    for (auto& w : writes) STRATA_RETURN_IF_ERROR(w.first.wait());
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  STRATA_ASSIGN_OR_RETURN(const double w, pass(true));
  STRATA_ASSIGN_OR_RETURN(const double r, pass(false));
  Pass out{.write_gbps = gbps(n * c.record, w), .read_gbps = gbps(n * c.record, r)};
  if (copy) {
    STRATA_ASSIGN_OR_RETURN(const double cp, copy_pass());
    out.copy_gbps = gbps(n * c.record, cp);
  }
  STRATA_RETURN_IF_ERROR(store->close());
  return out;
}

bool fio_available() {
  FILE* p = ::popen("fio --version 2>/dev/null", "r");
  if (p == nullptr) return false;
  char buf[64] = {};
  const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
  return ::pclose(p) == 0 && got && std::strncmp(buf, "fio-", 4) == 0;
}

// fio with the same parameters; returns GB/s from its JSON (bw_bytes).
Result<double> run_fio(const std::string& dir, const char* rw, std::uint64_t block, int qd, std::uint64_t size) {
  const std::string cmd = fmt::format(
      "fio --name=strata-bench --directory={} --filename=strata-bench-fio.dat --rw={} --bs={} --iodepth={} "
      "--size={} --ioengine=io_uring --direct=1 --output-format=json 2>/dev/null",
      shell_quote(dir), rw, block, qd, size);
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return make_error(ErrorCode::kUnavailable, "cannot run fio");
  std::string out;
  char buf[4096];
  for (std::size_t k; (k = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, k);
  const int rc = ::pclose(p);
  auto doc = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (rc != 0 || doc.is_discarded() || !doc.contains("jobs") || doc["jobs"].empty()) {
    return make_error(ErrorCode::kUnavailable, "fio failed (exit {}): {}", rc, out.substr(0, 300));
  }
  return doc["jobs"][0][rw]["bw_bytes"].get<double>() / 1e9;
}

int run(const Options& opt) {
  auto fail = [](const Error& e) {
    fmt::print(stderr, "strata bench io: {}\n", e);
    return 1;
  };
  auto total = parse_size(opt.size);
  auto pool = parse_size(opt.pool);
  auto backend = io::parse_backend(opt.backend);
  if (!total) return fail(total.error());
  if (!pool) return fail(pool.error());
  if (!backend) return fail(backend.error());
  std::vector<std::uint64_t> record_sizes;
  for (std::size_t at = 0; at < opt.records.size();) {
    const std::size_t comma = std::min(opt.records.find(',', at), opt.records.size());
    if (comma > at) {
      auto r = parse_size(opt.records.substr(at, comma - at));
      if (!r) return fail(r.error());
      record_sizes.push_back(*r);
    }
    at = comma + 1;
  }
  std::vector<Case> cases;
  std::uint64_t block = 1 << 20;
  if (!opt.block_size.empty()) {
    auto b = parse_size(opt.block_size);
    if (!b) return fail(b.error());
    block = *b;
    if (block == 0 || block % 4096 != 0 || block > (std::uint64_t{1} << 30)) {
      return fail(Error(ErrorCode::kInvalidArgument,
                        fmt::format("--block-size (aio.block_size) must be a multiple of 4096 up to 1 GiB, got {}",
                                    block)));
    }
  }
  std::vector<int> depths = {8, 32};
  if (opt.queue_depth > 0) depths = {opt.queue_depth};
  if (opt.records_only && record_sizes.empty()) {
    return fail(Error(ErrorCode::kInvalidArgument, "--records-only needs at least one size in --records"));
  }
  if (!opt.records_only) {
    for (int qd : depths) cases.push_back({block, block, *pool, qd, false, true});
  }
  for (std::uint64_t rec : record_sizes) cases.push_back({block, rec, *pool, depths.front(), false, true});
  // fio's buffer is bs x iodepth, on 4 KiB pages. The ring cases give strata a buffer
  // of about that size, on huge pages and on 4 KiB pages, to separate the two effects.
  for (bool huge : {true, false}) {
    if (opt.records_only) break;
    Case ring{block, block, 0, depths.front(), true, huge};
    ring.pool = window(ring) * block + (1 << 20);
    cases.push_back(ring);
  }
  for (Case& c : cases) {
    if (c.record % 4096 != 0 || c.record == 0 || *total < c.record) {
      return fail(Error(ErrorCode::kInvalidArgument, fmt::format("record size {} must be a positive multiple of 4 KiB "
                                                                 "no larger than --size",
                                                                 c.record)));
    }
    // The copy pass holds `window` reads and `window` writes.
    c.pool = std::max<std::uint64_t>(c.pool, (opt.copy ? 2 : 1) * window(c) * (c.record + 8192) + (1 << 20));
  }
  const bool with_fio = !opt.no_fio && fio_available();
  if (!opt.no_fio && !with_fio) fmt::print(stderr, "strata bench io: fio not found; strata figures only\n");

  std::map<std::string, Sample> strata_s;
  std::map<std::pair<std::uint64_t, int>, Sample> fio_s;
  std::string backend_used;
  for (int rep = 0; rep < std::max(1, opt.repeats); ++rep) {
    std::map<std::pair<std::uint64_t, int>, bool> fio_done;
    for (const Case& c : cases) {
      const bool copy = opt.copy && !c.ring;
      auto r = run_strata(c, *total, opt.dir, *backend, !opt.unregistered, copy, &backend_used);
      if (!r) return fail(r.error());
      Sample& s = strata_s[c.label()];
      s.write_gbps.push_back(r->write_gbps);
      s.read_gbps.push_back(r->read_gbps);
      if (copy) s.copy_gbps.push_back(r->copy_gbps);
      fmt::print(stderr, "  [{}/{}] strata {:<28} write {:.2f} GB/s  read {:.2f} GB/s{}\n", rep + 1, opt.repeats,
                 c.label(), r->write_gbps, r->read_gbps, copy ? fmt::format("  copy {:.2f} GB/s", r->copy_gbps) : "");
      const auto fk = std::pair{c.block, c.qd};
      if (!with_fio || fio_done[fk]) continue;  // one fio run per (bs, qd) per repeat, alternating
      fio_done[fk] = true;
      auto w = run_fio(opt.dir, "write", c.block, c.qd, *total);
      auto rd = w ? run_fio(opt.dir, "read", c.block, c.qd, *total) : w;
      std::remove((opt.dir + "/strata-bench-fio.dat").c_str());
      if (!w || !rd) return fail(!w ? w.error() : rd.error());
      fio_s[fk].write_gbps.push_back(*w);
      fio_s[fk].read_gbps.push_back(*rd);
      fmt::print(stderr, "  [{}/{}] fio    bs {} qd {:<14} write {:.2f} GB/s  read {:.2f} GB/s\n", rep + 1,
                 opt.repeats, format_bytes(c.block), c.qd, *w, *rd);
    }
  }

  BenchReport report("io");
  report.set_config("dir", opt.dir);
  report.set_config("size", *total);
  report.set_config("repeats", opt.repeats);
  report.set_config("backend", backend_used);
  report.set_config("fio", with_fio);
  report.set_config("fixed_buffers", !opt.unregistered);
  double min_w = 1e300, min_r = 1e300;
  for (const Case& c : cases) {
    const Sample& s = strata_s[c.label()];
    const double w = median(s.write_gbps), r = median(s.read_gbps);
    std::optional<double> fw, fr;
    if (with_fio) {
      fw = median(fio_s[{c.block, c.qd}].write_gbps);
      fr = median(fio_s[{c.block, c.qd}].read_gbps);
    }
    const std::string buf = c.ring ? fmt::format("{} ring", format_bytes(c.pool))
                                   : fmt::format("{} buffers in a {} pool", format_bytes(c.record),
                                                 format_bytes(c.pool));
    const std::string note = fmt::format("strata buf: {}, {} pages; fio buf: {}, 4K pages", buf,
                                         c.huge ? "2M" : "4K", format_bytes(c.block * c.qd));
    const std::string base = fmt::format("fio bs {} qd {}", format_bytes(c.block), c.qd);
    report.add("write " + c.label(), w, "GB/s", with_fio ? base : "", fw, note);
    report.add("read  " + c.label(), r, "GB/s", with_fio ? base : "", fr, note);
    if (!s.copy_gbps.empty()) {
      report.add("copy  " + c.label(), median(s.copy_gbps), "GB/s", "", std::nullopt,
                 "GB copied per second: each record read, then written to another, both ways in flight at once");
    }
    if (with_fio && !c.ring) {
      min_w = std::min(min_w, *fw > 0 ? w / *fw : 0);
      min_r = std::min(min_r, *fr > 0 ? r / *fr : 0);
    }
    if (with_fio && c.ring) {
      const std::string k = c.huge ? "ring_huge" : "ring_4k";
      report.add_ratio(k + "_write_vs_fio", *fw > 0 ? w / *fw : 0);
      report.add_ratio(k + "_read_vs_fio", *fr > 0 ? r / *fr : 0);
    }
  }
  if (with_fio) {
    report.add_ratio("min_write_vs_fio", min_w);
    report.add_ratio("min_read_vs_fio", min_r);
  }
  report.print(opt.json);
  return 0;
}

}  // namespace

void add_bench_io(CLI::App& bench, int* exit_code) {
  auto opt = std::make_shared<Options>();
  auto* cmd = bench.add_subcommand("io", "Swap store O_DIRECT write/read throughput next to fio (same parameters)");
  cmd->add_option("--dir", opt->dir, "Directory for the test files (default: current)");
  cmd->add_option("--size", opt->size, "Bytes written and read per pass (default 4GiB)");
  cmd->add_option("--block-size", opt->block_size, "aio.block_size and fio --bs (default 1MiB)");
  cmd->add_option("--queue-depth", opt->queue_depth, "aio.queue_depth and fio --iodepth (default: 8 and 32)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--records", opt->records, "Extra record (shard) sizes, comma separated (default 8MiB,64MiB)");
  cmd->add_option("--pool", opt->pool, "Buffer pool size for strata's buffers (default 1GiB)");
  cmd->add_option("--backend", opt->backend, "auto, io_uring or threads (default auto)");
  cmd->add_option("--repeats", opt->repeats, "Runs per figure; medians are reported (default 3)")
      ->check(CLI::Range(1, 100));
  cmd->add_flag("--no-fio", opt->no_fio, "Skip the fio baseline");
  cmd->add_flag("--copy", opt->copy, "Also measure a copy pass (reads and writes in flight together) per record size");
  cmd->add_flag("--records-only", opt->records_only,
                "Only the --records sizes at the first queue depth (no 1 MiB-record and ring cases)");
  cmd->add_flag("--unregistered", opt->unregistered, "Do not register the pool as io_uring fixed buffers");
  cmd->add_flag("--json", opt->json, "Print one JSON object");
  cmd->callback([opt, exit_code] { *exit_code = run(*opt); });
}

}  // namespace strata::cli
