#include "strata/comm/communicator.h"

#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "strata/base/log.h"
#include "strata/comm/torch_compat.h"
#include "strata/base/units.h"

namespace strata::comm {

Caps caps_for_backend(const std::string& name) {
  if (name == "nccl") return Caps{.reduce_scatter = true, .allgather_base = true, .bf16 = true, .fp16 = true, .avg = true};
  // Gloo in torch 1.13: allgather and allreduce take fp16 but not bf16; no
  // reduce_scatter, no _allgather_base, no AVG. Unknown backends get every fallback,
  // which is always correct, only slower.
  if (name == "gloo") return Caps{.fp16 = true};
  return Caps{};
}

bool CommOptions::default_check_order() {
  if (const char* env = std::getenv("STRATA_COMM_CHECK"); env != nullptr && *env != '\0') {
    return std::strcmp(env, "0") != 0;
  }
#ifdef NDEBUG
  return false;
#else
  return true;
#endif
}

// ---- Handle -----------------------------------------------------------------------

struct Handle::State {
  c10::intrusive_ptr<c10d::Work> work;
  // Note [completion in the backend's thread]: a fallback's local completion (sums,
  // copy-back, divide) is chained to the work's future, so the backend's thread runs it
  // as soon as the transfer ends, in the background; wait() only waits for it. A
  // backend without futures leaves it to wait() (`finish`).
  c10::intrusive_ptr<c10::ivalue::Future> completed;
  std::function<void()> finish;
  std::string op;
  std::uint64_t bytes = 0;
  int rank = 0;
  std::chrono::milliseconds timeout{0};
  bool finished = false;
  Status status;
};

Handle::Handle() = default;
Handle::Handle(std::unique_ptr<State> state) : state_(std::move(state)) {}
Handle::Handle(Handle&&) noexcept = default;
Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    if (state_) (void)wait();
    state_ = std::move(other.state_);
  }
  return *this;
}

Handle::~Handle() {
  if (state_ && !state_->finished) {
    if (auto st = wait(); !st) log::error("un-awaited collective failed: {}", st.error());
  }
}

bool Handle::done() {
  if (!state_ || state_->finished) return true;
  if (state_->completed) return state_->completed->completed();
  return !state_->work || state_->work->isCompleted();
}

Status Handle::wait() {
  if (!state_) return ok();
  State& s = *state_;
  if (s.finished) return s.status;
  s.finished = true;
  auto fail = [&s](ErrorCode code, std::string_view what) {
    s.status = make_error(code, "{} of {} failed: {}", s.op, format_bytes(s.bytes), what)
                   .with_op(s.op)
                   .with_length(s.bytes)
                   .with_rank(s.rank);
    return s.status;
  };
  if (s.work) {
    try {
      s.work->wait(s.timeout);
    } catch (const std::exception& e) {
      const std::string what = e.what();
      // c10 errors carry a C++ backtrace after the first line; keep the message.
      const std::string first_line = what.substr(0, what.find('\n'));
      auto has = [&what](const char* needle) { return what.find(needle) != std::string::npos; };
      // Gloo says "Timed out waiting ..." for its own deadline; Work::wait says
      // "Operation timed out!". Closed or reset connections mean a peer went away.
      if (has("imed out") || has("imeout")) {
        // When no peer died, divergent code is the usual cause (docs/distributed.md).
        return fail(ErrorCode::kTimeout,
                    fmt::format("timed out after {} ms ({}); a peer is stuck or gone, or the ranks issued different "
                                "collectives (their code took other paths: at ZeRO stage 3 every rank must run the "
                                "same modules in the same order, except inside one unit or a leaf module, "
                                "set_leaf_modules; STRATA_COMM_CHECK=1 names the first difference)",
                                s.timeout.count(), first_line));
      }
      if (has("onnection") || has("closed") || has("reset") || has("peer") || has("ocket") || has("Broken pipe")) {
        return fail(ErrorCode::kUnavailable, fmt::format("peer failure ({})", first_line));
      }
      return fail(ErrorCode::kInternal, first_line);
    }
  }
  if (s.completed) {
    s.completed->wait();
    if (s.completed->hasError()) return fail(ErrorCode::kInternal, s.completed->tryRetrieveErrorMessage());
  } else if (s.finish) {
    try {
      s.finish();
    } catch (const std::exception& e) {
      return fail(ErrorCode::kInternal, e.what());
    }
  }
  return s.status;
}

// ---- Scratch buffers ----------------------------------------------------------------

// Receive buffers of the reduce-scatter fallback and fp32 copies of the all-reduce
// fallback, kept for the next call of the same shape: chunks repeat their sizes every
// step, and fresh pages of a chunk-sized buffer cost more than the collective's local
// work. A freed buffer is kept while the bytes kept plus the bytes in use stay within
// the most ever in use at once, so the pool never holds more than the fallbacks once
// needed together. Shared with completion steps, which may run after the communicator
// is gone, and locked because handles may be waited on any thread.
struct Communicator::ScratchPool {
  std::mutex mu;
  std::deque<at::Tensor> free;
  std::uint64_t kept = 0, in_use = 0, peak = 0;

  static std::uint64_t bytes(const at::Tensor& t) { return static_cast<std::uint64_t>(t.numel()) * t.element_size(); }

  at::Tensor take(std::int64_t numel, at::TensorOptions options) {
    std::lock_guard lock(mu);
    at::Tensor t;
    for (auto it = free.begin(); it != free.end(); ++it) {
      if (it->numel() == numel && it->scalar_type() == options.dtype().toScalarType()) {
        t = std::move(*it);
        free.erase(it);
        kept -= bytes(t);
        break;
      }
    }
    if (!t.defined()) t = at::empty({numel}, options);
    in_use += bytes(t);
    peak = std::max(peak, in_use);
    return t;
  }
  void give(at::Tensor t) {
    std::lock_guard lock(mu);
    const std::uint64_t b = bytes(t);
    in_use -= std::min(in_use, b);
    if (kept + in_use + b > peak) return;  // `t` frees its bytes
    free.push_back(std::move(t));
    kept += b;
  }
};

// ---- Communicator -------------------------------------------------------------------

namespace {

// Gloo's TCP transport writes with writev, so a write to a peer that has died raises
// SIGPIPE, whose default action kills this rank before the write can fail with EPIPE
// and become an error naming the op. Ignore it, as the Python interpreter does for
// every torch.distributed job; a handler the program installed itself is left alone.
void ignore_default_sigpipe() {
  struct sigaction current {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) ::signal(SIGPIPE, SIG_IGN);
}

}  // namespace

Communicator::Communicator(c10::intrusive_ptr<c10d::ProcessGroup> pg, CommOptions options)
    : pg_(std::move(pg)), options_(options), scratch_(std::make_shared<ScratchPool>()) {
  backend_ = torch_compat::backend_name_for(*pg_, c10::DeviceType::CPU);
  caps_ = caps_for_backend(backend_);
  device_backend_ = torch_compat::backend_name_for(*pg_, c10::DeviceType::CUDA);
  device_caps_ = caps_for_backend(device_backend_);
  rank_ = pg_->getRank();
  world_ = pg_->getSize();
}

Communicator::~Communicator() = default;

Result<std::unique_ptr<Communicator>> Communicator::create(c10::intrusive_ptr<c10d::ProcessGroup> pg,
                                                           CommOptions options) {
  if (!pg) return make_error(ErrorCode::kInvalidArgument, "process group is null");
  if (options.timeout.count() <= 0) {
    return make_error(ErrorCode::kInvalidArgument, "communicator timeout must be positive, got {} ms",
                      options.timeout.count());
  }
  ignore_default_sigpipe();
  return std::unique_ptr<Communicator>(new Communicator(std::move(pg), options));
}

at::Tensor Communicator::movable(const at::Tensor& t) const {
  const auto dt = t.scalar_type();
  // Note [16-bit moves]: a data move needs no arithmetic, so a 16-bit float the
  // backend rejects travels as its raw bytes. Gloo in torch 1.13 rejects int16 as
  // well as bf16, so the portable bit-cast is to uint8, two per element.
  const Caps& caps = caps_for(t);
  if ((dt == at::kBFloat16 && !caps.bf16) || (dt == at::kHalf && !caps.fp16)) return t.view(at::kByte);
  return t;
}

bool Communicator::reducible(const at::Tensor& t) const {
  const auto dt = t.scalar_type();
  if (dt == at::kBFloat16) return caps_for(t).bf16;
  if (dt == at::kHalf) return caps_for(t).fp16;
  return true;
}

namespace {

// Small codes for the order check, so a divergence message can name both sides.
constexpr const char* kOpNames[] = {"all_gather", "reduce_scatter", "all_reduce", "broadcast", "barrier"};
std::int64_t op_code(const std::string& op) {
  for (std::int64_t i = 0; i < 5; ++i)
    if (op == kOpNames[i]) return i;
  return -1;
}
std::string describe(std::int64_t code, std::int64_t dtype, std::int64_t numel) {
  const char* name = code >= 0 && code < 5 ? kOpNames[code] : "?";
  return fmt::format("{}({} x {})", name, numel, c10::toString(static_cast<c10::ScalarType>(dtype)));
}

}  // namespace

Status Communicator::check_order(const std::string& op, const at::Tensor& t) {
  const std::int64_t mine[4] = {static_cast<std::int64_t>(seq_), op_code(op),
                                t.defined() ? static_cast<std::int64_t>(t.scalar_type()) : -1,
                                t.defined() ? t.numel() : 0};
  at::Tensor local = at::from_blob(const_cast<std::int64_t*>(mine), {4}, at::kLong).clone();
  at::Tensor all = at::empty({world_, 4}, at::kLong);
  std::vector<at::Tensor> rows = all.unbind(0);
  std::vector<std::vector<at::Tensor>> outs{rows};
  std::vector<at::Tensor> ins{local};
  c10d::AllgatherOptions opts;
  opts.timeout = options_.timeout;
  auto st = Handle(std::make_unique<Handle::State>(Handle::State{
                       .work = pg_->allgather(outs, ins, opts), .op = "order check", .bytes = 32, .rank = rank_,
                       .timeout = options_.timeout}))
                .wait();
  STRATA_RETURN_IF_ERROR(st);
  auto a = all.accessor<std::int64_t, 2>();
  for (int r = 0; r < world_; ++r) {
    if (a[r][0] != mine[0] || a[r][1] != mine[1] || a[r][2] != mine[2] || a[r][3] != mine[3]) {
      return make_error(ErrorCode::kFailedPrecondition,
                        "collective order diverged at #{}: rank {} issued {} but rank {} issued {} (call #{})",
                        seq_, rank_, describe(mine[1], mine[2], mine[3]), r, describe(a[r][1], a[r][2], a[r][3]),
                        a[r][0])
          .with_op(op)
          .with_rank(rank_);
    }
  }
  return ok();
}

Handle Communicator::issue(const std::string& op, const at::Tensor& t,
                           const std::function<c10::intrusive_ptr<c10d::Work>()>& start,
                           std::function<void()> finish) {
  auto state = std::make_unique<Handle::State>();
  state->op = op;
  state->bytes = t.defined() ? t.numel() * t.element_size() : 0;
  state->rank = rank_;
  state->timeout = options_.timeout;
  if (options_.check_order) {
    if (auto st = check_order(op, t); !st) {
      state->finished = true;
      state->status = std::move(st);
      ++seq_;
      return Handle(std::move(state));
    }
  }
  ++seq_;
  try {
    state->work = start();
    if (finish) {
      c10::intrusive_ptr<c10::ivalue::Future> transfer;
      try {
        transfer = state->work->getFuture();
      } catch (const std::exception&) {
        // No future: wait() runs the completion.
      }
      if (transfer) {
        state->completed = transfer->then(
            [f = std::move(finish)](c10::ivalue::Future& done) -> c10::IValue {
              if (done.hasError()) std::rethrow_exception(done.exception_ptr());
              f();
              return c10::IValue();
            },
            c10::NoneType::get());
      } else {
        state->finish = std::move(finish);
      }
    }
  } catch (const std::exception& e) {
    state->finished = true;
    const std::string what = e.what();
    state->status = make_error(ErrorCode::kInvalidArgument, "{} could not start: {}", op, what.substr(0, what.find('\n')))
                        .with_op(op)
                        .with_rank(rank_);
  }
  return Handle(std::move(state));
}

namespace {

Status check_flat(const char* op, const at::Tensor& small, const at::Tensor& big, int world) {
  if (!small.is_contiguous() || !big.is_contiguous()) {
    return make_error(ErrorCode::kInvalidArgument, "{}: tensors must be contiguous", op);
  }
  if (small.scalar_type() != big.scalar_type()) {
    return make_error(ErrorCode::kInvalidArgument, "{}: dtypes differ ({} vs {})", op,
                      c10::toString(small.scalar_type()), c10::toString(big.scalar_type()));
  }
  if (big.numel() != small.numel() * world) {
    return make_error(ErrorCode::kInvalidArgument, "{}: flat tensor has {} elements, expected world {} x {}", op,
                      big.numel(), world, small.numel());
  }
  return ok();
}

}  // namespace

Handle Communicator::error_handle(Status st) {
  auto state = std::make_unique<Handle::State>();
  state->finished = true;
  state->status = std::move(st);
  return Handle(std::move(state));
}

Handle Communicator::all_gather(const at::Tensor& input, const at::Tensor& output) {
  if (auto st = check_flat("all_gather", input, output, world_); !st) return error_handle(std::move(st));
  // Note [in-place all_gather]: callers gather a rank's slice of a chunk into the chunk
  // itself. c10d documents that as safe only for _allgather_base (NCCL); elsewhere the
  // input is copied first (1/world of the output: cheap).
  const bool native = caps_for(output).allgather_base;
  const bool alias = input.is_alias_of(output) && !native;
  const at::Tensor in = movable(alias ? input.clone() : input), out = movable(output);
  if (native) {
    return issue("all_gather", input, [&] {
      c10d::AllgatherOptions opts;
      opts.timeout = options_.timeout;
      at::Tensor o = out, i = in;
      return pg_->_allgather_base(o, i, opts);
    });
  }
  return issue("all_gather", input, [&] {
    std::vector<std::vector<at::Tensor>> outs{out.view({world_, in.numel()}).unbind(0)};
    std::vector<at::Tensor> ins{in};
    c10d::AllgatherOptions opts;
    opts.timeout = options_.timeout;
    return pg_->allgather(outs, ins, opts);
  });
}

Handle Communicator::reduce_scatter(const at::Tensor& input, const at::Tensor& output, ReduceOp op) {
  if (auto st = check_flat("reduce_scatter", output, input, world_); !st) return error_handle(std::move(st));
  if (op == ReduceOp::kMax) {
    return error_handle(make_error(ErrorCode::kInvalidArgument, "reduce_scatter supports sum and avg, not max"));
  }
  const std::int64_t n = output.numel();
  const double divisor = op == ReduceOp::kAvg ? world_ : 1.0;
  const Caps& caps = caps_for(input);
  if (caps.reduce_scatter && reducible(input) && (op == ReduceOp::kSum || caps.avg)) {
    return issue("reduce_scatter", input, [&] {
      at::Tensor o = output, i = input;
      c10d::ReduceScatterOptions opts;
      opts.reduceOp = op == ReduceOp::kAvg ? c10d::ReduceOp::AVG : c10d::ReduceOp::SUM;
      opts.timeout = options_.timeout;
      return pg_->_reduce_scatter_base(o, i, opts);
    });
  }
  // Fallback (Note [reduce-scatter by alltoall]): alltoall_base sends slice r of every
  // rank's input to rank r, which then holds world rows of n elements and sums them
  // locally, row by row in rank order and in fp32, so the result is deterministic and
  // bf16/fp16 inputs lose no precision in the sum. The receive buffer comes from a pool:
  // fresh pages of a bucket-sized buffer cost more than the alltoall's local work.
  at::Tensor received = scratch_->take(input.numel(), input.options());
  const at::Tensor in = movable(input), recv = movable(received);
  return issue(
      "reduce_scatter", input,
      [&] {
        at::Tensor o = recv, i = in;
        std::vector<std::int64_t> even;  // empty split sizes = equal slices
        c10d::AllToAllOptions opts;
        opts.timeout = options_.timeout;
        return pg_->alltoall_base(o, i, even, even, opts);
      },
      [received, output, n, divisor, world = world_, pool = scratch_] {
        const at::Tensor rows = received.view({world, n});
        const bool wide = output.scalar_type() == at::kFloat || output.scalar_type() == at::kDouble;
        at::Tensor sum = wide ? output : at::empty({n}, output.options().dtype(at::kFloat));
        sum.copy_(rows[0]);
        for (int r = 1; r < world; ++r) sum.add_(rows[r]);
        if (divisor != 1.0) sum.div_(divisor);
        if (!wide) output.copy_(sum);
        pool->give(received);
      });
}

Handle Communicator::all_reduce(const at::Tensor& tensor, ReduceOp op) {
  if (!tensor.is_contiguous()) {
    return error_handle(make_error(ErrorCode::kInvalidArgument, "all_reduce: tensor must be contiguous"));
  }
  if (op == ReduceOp::kAvg && !at::isFloatingType(tensor.scalar_type())) {
    return error_handle(make_error(ErrorCode::kInvalidArgument, "all_reduce: avg needs a floating-point tensor"));
  }
  // Reduce a fp32 copy (from the scratch pool) when the backend rejects the dtype;
  // divide locally when it has no AVG. Both are completion steps that run in wait().
  const bool upcast = !reducible(tensor);
  const bool local_avg = op == ReduceOp::kAvg && !caps_for(tensor).avg;
  at::Tensor target = tensor;
  if (upcast) {
    target = scratch_->take(tensor.numel(), tensor.options().dtype(at::kFloat)).view(tensor.sizes());
    target.copy_(tensor);
  }
  std::function<void()> finish;
  if (upcast || local_avg) {
    finish = [tensor, target, upcast, local_avg, world = world_, pool = scratch_] {
      if (local_avg) target.div_(world);
      if (upcast) {
        tensor.copy_(target);
        pool->give(target.view({-1}));
      }
    };
  }
  c10d::ReduceOp rop = op == ReduceOp::kMax ? c10d::ReduceOp::MAX
                       : (op == ReduceOp::kAvg && !local_avg) ? c10d::ReduceOp::AVG
                                                              : c10d::ReduceOp::SUM;
  return issue(
      "all_reduce", tensor,
      [&] {
        std::vector<at::Tensor> ts{target};
        c10d::AllreduceOptions opts;
        opts.reduceOp = rop;
        opts.timeout = options_.timeout;
        return pg_->allreduce(ts, opts);
      },
      std::move(finish));
}

Handle Communicator::broadcast(const at::Tensor& tensor, int root) {
  if (root < 0 || root >= world_) {
    return error_handle(make_error(ErrorCode::kInvalidArgument, "broadcast: root {} is not a rank of {}", root, world_));
  }
  if (!tensor.is_contiguous()) {
    return error_handle(make_error(ErrorCode::kInvalidArgument, "broadcast: tensor must be contiguous"));
  }
  const at::Tensor t = movable(tensor);
  return issue("broadcast", tensor, [&] {
    std::vector<at::Tensor> ts{t};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = options_.timeout;
    return pg_->broadcast(ts, opts);
  });
}

Handle Communicator::barrier() {
  return issue("barrier", at::Tensor(), [&] {
    c10d::BarrierOptions opts;
    opts.timeout = options_.timeout;
    return pg_->barrier(opts);
  });
}

}  // namespace strata::comm
