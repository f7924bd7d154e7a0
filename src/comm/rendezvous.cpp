#include "strata/comm/rendezvous.h"

#include <cstdlib>
#include <exception>
#include <string_view>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "strata/base/log.h"
#include "strata/comm/torch_compat.h"

#ifdef STRATA_CUDA
#include "nccl_cuda.h"
#endif

namespace strata::comm {
namespace {

const char* env_or_null(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

Result<int> env_int(const char* name, int lo, int hi) {
  const char* v = env_or_null(name);
  if (v == nullptr) return make_error(ErrorCode::kNotFound, "environment variable {} is not set", name);
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || x < lo || x > hi) {
    return make_error(ErrorCode::kInvalidArgument, "{}={} is not an integer in [{}, {}]", name, v, lo, hi);
  }
  return static_cast<int>(x);
}

bool truthy(const char* v) {
  if (v == nullptr) return false;
  const std::string s(v);
  return s == "1" || s == "True" || s == "true" || s == "TRUE" || s == "yes";
}

std::shared_ptr<::gloo::transport::Device> make_gloo_device(const DistEnv& env) {
  if (const char* ifname = env_or_null("GLOO_SOCKET_IFNAME")) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  // Single-machine jobs talk over loopback; this avoids depending on the hostname
  // resolving, which it often does not in containers.
  if (env.file_store.size() || env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

}  // namespace

Result<DistEnv> read_dist_env(bool allow_single) {
  DistEnv env;
  if (env_or_null("RANK") == nullptr && env_or_null("WORLD_SIZE") == nullptr && allow_single) {
    env.file_store = "";  // one rank: no peers to meet
    return env;
  }
  STRATA_ASSIGN_OR_RETURN(env.world_size, env_int("WORLD_SIZE", 1, 1 << 20));
  STRATA_ASSIGN_OR_RETURN(env.rank, env_int("RANK", 0, env.world_size - 1));
  env.local_rank = env_or_null("LOCAL_RANK") ? *env_int("LOCAL_RANK", 0, 1 << 20) : env.rank;
  env.use_agent_store = truthy(env_or_null("TORCHELASTIC_USE_AGENT_STORE"));
  if (env_or_null("TORCHELASTIC_RESTART_COUNT")) {
    STRATA_ASSIGN_OR_RETURN(env.restart_count, env_int("TORCHELASTIC_RESTART_COUNT", 0, 1 << 20));
  }
  if (const char* fs = env_or_null("STRATA_FILE_STORE")) {
    env.file_store = fs;
    return env;
  }
  if (env.world_size == 1 && env_or_null("MASTER_ADDR") == nullptr) return env;
  const char* addr = env_or_null("MASTER_ADDR");
  if (addr == nullptr) {
    return make_error(ErrorCode::kNotFound,
                      "MASTER_ADDR is not set (needed for the TCP store of a {}-rank job; or set STRATA_FILE_STORE)",
                      env.world_size);
  }
  env.master_addr = addr;
  STRATA_ASSIGN_OR_RETURN(env.master_port, env_int("MASTER_PORT", 1, 65535));
  return env;
}

Result<std::unique_ptr<Communicator>> init_from(const DistEnv& env, CommOptions options) {
  c10::intrusive_ptr<c10d::Store> store;
  try {
    if (!env.file_store.empty()) {
      store = c10::make_intrusive<c10d::FileStore>(env.file_store, env.world_size);
    } else if (env.world_size == 1 && env.master_addr.empty()) {
      // A single rank still gets a real group, so every code path is the same.
      store = c10::make_intrusive<c10d::HashStore>();
    } else {
      c10d::TCPStoreOptions opts;
      opts.port = static_cast<std::uint16_t>(env.master_port);
      // torchrun's agent hosts the store in static mode; otherwise rank 0 does.
      opts.isServer = !env.use_agent_store && env.rank == 0;
      opts.numWorkers = env.use_agent_store ? c10::nullopt : c10::optional<std::size_t>(env.world_size);
      opts.waitWorkers = false;
      opts.timeout = options.timeout;
      try {
        store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
      } catch (const std::exception& e) {
        // A LibTorch 2.x built without libuv refuses its own default: retry without it.
        if (std::string_view(e.what()).find("libuv") == std::string_view::npos ||
            !torch_compat::tcp_store_without_libuv(opts)) {
          throw;
        }
        store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, opts);
      }
    }
    store->setTimeout(options.timeout);
    // Keys of a restarted attempt must not collide with the previous attempt's.
    store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("/strata/attempt_{}", env.restart_count), store);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kUnavailable, "cannot reach the rendezvous store at {}: {}",
                      env.file_store.empty() ? fmt::format("{}:{}", env.master_addr, env.master_port) : env.file_store,
                      what.substr(0, what.find('\n')))
        .with_rank(env.rank);
  }

  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  try {
    auto gloo_opts = c10d::ProcessGroupGloo::Options::create(options.timeout);
    gloo_opts->devices.push_back(make_gloo_device(env));
    // Two Gloo threads per rank: comms overlap compute, and on a 2-core machine more
    // would only compete with the step.
    gloo_opts->threads = 2;
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, gloo_opts);
    pg = torch_compat::as_process_group<c10d::ProcessGroup>(store, env.rank, env.world_size, std::move(gloo),
                                                            c10::DeviceType::CPU);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    return make_error(ErrorCode::kUnavailable, "rendezvous of {} ranks failed within {} ms: {}", env.world_size,
                      options.timeout.count(), what.substr(0, what.find('\n')))
        .with_rank(env.rank);
  }
#ifdef STRATA_CUDA
  // CUDA tensors go through NCCL; CPU ones (the order check, host-tier shards) stay on Gloo.
  STRATA_RETURN_IF_ERROR(
      detail::add_nccl_backend(*pg, store, env.rank, env.world_size, env.local_rank, options.timeout));
#endif
  log::set_rank(env.world_size > 1 ? env.rank : -1);
  return Communicator::create(std::move(pg), options);
}

Result<std::unique_ptr<Communicator>> init_from_env(CommOptions options, bool allow_single) {
  STRATA_ASSIGN_OR_RETURN(DistEnv env, read_dist_env(allow_single));
  return init_from(env, options);
}

}  // namespace strata::comm
