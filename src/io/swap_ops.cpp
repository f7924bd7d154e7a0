// Swap store puts and gets: staging, per-key order, submission, verification.
#include <algorithm>
#include <cstring>
#include <deque>
#include <functional>

#include "strata/base/units.h"
#include "swap_store_impl.h"

namespace strata::io {
namespace detail {
namespace {

bool aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % kBlock == 0; }

// How a payload of n bytes moves: in place when the caller's span is aligned (the last,
// partial block through a scratch block), else through a bounce buffer.
struct Staging {
  bool zero_copy = false;
  std::uint64_t body = 0;  // bytes moved in place
  std::uint64_t tail = 0;  // bytes moved through the scratch tail block
  std::size_t scratch_bytes() const { return kBlock + (tail != 0 ? kBlock : 0); }
};

Staging plan(const void* p, std::uint64_t n) {
  Staging s;
  s.zero_copy = aligned(p);
  if (s.zero_copy) {
    s.body = n / kBlock * kBlock;
    s.tail = n - s.body;
  }
  return s;
}

std::vector<IoSegment> segments(std::uint64_t slot, const Staging& st, std::byte* user, const PooledBuffer& scratch,
                                const PooledBuffer& bounce) {
  std::vector<IoSegment> segs;
  segs.push_back({slot, scratch.data(), kBlock});
  if (st.zero_copy) {
    if (st.body != 0) segs.push_back({slot + kBlock, user, st.body});
    if (st.tail != 0) segs.push_back({slot + kBlock + st.body, scratch.data() + kBlock, kBlock});
  } else if (bounce.capacity() != 0) {
    segs.push_back({slot + kBlock, bounce.data(), bounce.capacity()});
  }
  return segs;
}

}  // namespace

Status SwapOp::verify() {
  auto fail = [&](std::string what) {
    return make_error(ErrorCode::kDataLoss, "record {}: {}", key.to_string(), what)
        .with_path(path)
        .with_offset(slot_offset)
        .with_length(slot_length)
        .with_op("get");
  };
  // Note [record verification], in order.
  auto h = decode_record_header(scratch.padded_span().first(kBlock));
  if (!h) return fail(h.error().message());
  if (h->run_id != run_id) {
    return fail(fmt::format("written by another run ({:016x}; this run is {:016x})", h->run_id, run_id));
  }
  const SwapKey found{static_cast<SwapKind>(h->kind), h->tensor, h->chunk};
  if (!(found == key)) return fail(fmt::format("the slot holds {}", found.to_string()));
  if (h->generation != generation) {
    return fail(fmt::format("stale record: generation {} on disk, expected {} (a lost or reverted write)",
                            h->generation, generation));
  }
  if (h->length != length) return fail(fmt::format("length {} on disk, expected {}", h->length, length));
  if (bounce.valid() && length != 0) {
    std::memcpy(dst.data(), bounce.data(), length);
  } else if (length > aligned_length) {
    std::memcpy(dst.data() + aligned_length, scratch.data() + kBlock, length - aligned_length);
  }
  if (const std::uint64_t sum = checksum(dst.first(length)); sum != h->payload_checksum) {
    return fail(fmt::format("payload checksum mismatch: bytes hash to {:016x}, header says {:016x}", sum,
                            h->payload_checksum));
  }
  return ok();
}

Status SwapOp::finish() {
  std::lock_guard lock(mu);
  if (finished) return result;
  Status st = io.valid() ? io.wait() : Status(ok());
  if (!st) {
    result = make_error(std::move(st).error().with_note(
        fmt::format("{} {}", is_get ? "swap-in of" : "swap-out of", key.to_string())));
  } else if (is_get) {
    result = verify();
    if (result) {
      *bytes_done += length;
    } else {
      ++*verify_failures;
    }
  }
  finished = true;
  scratch.reset();
  bounce.reset();
  return result;
}

void SwapOp::abandon() {
  std::lock_guard lock(mu);
  if (finished) return;
  wait_io();
  finished = true;
  result = make_error(ErrorCode::kFailedPrecondition, "{} of {} was dropped before wait()",
                      is_get ? "swap-in" : "swap-out", key.to_string());
  scratch.reset();
  bounce.reset();
}

void SwapStoreImpl::encode_header(const Record& r, std::uint64_t generation, std::uint64_t length,
                                  std::uint64_t checksum, const PooledBuffer& scratch) const {
  RecordHeader h{};
  std::memcpy(h.magic, kRecordMagic, sizeof h.magic);
  h.version = kSwapFormatVersion;
  h.kind = static_cast<std::uint8_t>(r.key.kind);
  h.run_id = run_id;
  h.chunk = r.key.chunk;
  h.tensor = r.key.tensor;
  h.length = length;
  h.capacity = r.capacity;
  h.generation = generation;
  h.payload_checksum = checksum;
  encode(h, scratch.padded_span().first(kBlock));
}

Status SwapStoreImpl::bind_get(const Record& r, SwapOp& op) const {
  const int k = static_cast<int>(r.key.kind);
  if (r.lost) {
    return make_error(ErrorCode::kDataLoss, "{} was lost: its last put failed: {}", r.key.to_string(),
                      r.lost->to_string())
        .with_path(paths[k])
        .with_offset(r.offset)
        .with_length(slot_bytes(r.capacity));
  }
  if (r.generation == 0) return make_error(ErrorCode::kFailedPrecondition, "{} was never written", r.key.to_string());
  if (op.length != r.length) {
    return make_error(ErrorCode::kInvalidArgument, "get of {} needs a span of {} bytes, got {}", r.key.to_string(),
                      r.length, op.length);
  }
  op.generation = r.generation;
  op.path = paths[k];
  op.slot_offset = r.offset;
  op.slot_length = slot_bytes(r.capacity);
  return ok();
}

SwapHandle SwapStoreImpl::put_async(const SwapKey& key, std::span<const std::byte> src) {
  auto found = find_open(key);
  if (!found) return SwapHandle(SwapOp::done(std::unexpected(found.error())));
  Record* r = *found;
  if (src.size() > r->capacity) {
    return SwapHandle(SwapOp::done(make_error(ErrorCode::kInvalidArgument, "put of {} bytes into {}, reserved {}",
                                              src.size(), key.to_string(), r->capacity)));
  }
  ++puts_;
  if (!r->on_disk) {
    std::lock_guard hl(r->host_mu);
    if (!src.empty()) std::memcpy(r->host.data(), src.data(), src.size());
    r->length = src.size();
    r->generation = ++r->next_generation;
    bytes_written_ += src.size();
    return SwapHandle(SwapOp::done(ok()));
  }

  if (!aligned(src.data()) && src.size() > piece_bytes()) return put_pieced(key, *r, src);

  // Staging and hashing happen before the lock: they are the slow part, and the pool
  // may make us wait.
  auto op = std::make_shared<SwapOp>();
  op->key = key;
  op->length = src.size();
  const Staging st = plan(src.data(), src.size());
  auto fail = [&](Error e) {
    return SwapHandle(SwapOp::done(make_error(std::move(e).with_note("swap-out of " + key.to_string()))));
  };
  auto scratch = pool.acquire(st.scratch_bytes());
  if (!scratch) return fail(std::move(scratch).error());
  op->scratch = std::move(*scratch);
  std::byte* user = const_cast<std::byte*>(src.data());  // only ever read from
  if (!st.zero_copy && !src.empty()) {
    auto bounce = pool.acquire(round_up(src.size(), kBlock));
    if (!bounce) return fail(std::move(bounce).error());
    op->bounce = std::move(*bounce);
    std::memcpy(op->bounce.data(), src.data(), src.size());
    std::memset(op->bounce.data() + src.size(), 0, op->bounce.capacity() - src.size());
  } else if (st.tail != 0) {
    std::memcpy(op->scratch.data() + kBlock, src.data() + st.body, st.tail);
    std::memset(op->scratch.data() + kBlock + st.tail, 0, kBlock - st.tail);
  }
  const std::uint64_t sum = checksum(src);

  std::unique_lock lock(mu_);
  wait_for_conflicts(lock, *r, /*for_put=*/true);
  if (closed_) return fail(Error(ErrorCode::kFailedPrecondition, "swap store is closed"));
  op->generation = ++r->next_generation;
  encode_header(*r, op->generation, src.size(), sum, op->scratch);
  const int k = static_cast<int>(key.kind);
  // Header and payload are adjacent in the file and go as one op (Note [swap file layout]).
  // The staging buffers go back to the pool when the write completes, not when the
  // caller gets round to wait(): a writer never holds pool space it no longer needs.
  const std::vector<IoSegment> segs = segments(r->offset, st, user, op->scratch, op->bounce);
  auto staged = std::make_shared<std::pair<PooledBuffer, PooledBuffer>>(std::move(op->scratch), std::move(op->bounce));
  op->io = engine->writev(files[k], segs, std::move(staged));
  r->writer = op;
  return SwapHandle(std::move(op));
}

SwapHandle SwapStoreImpl::get_async(const SwapKey& key, std::span<std::byte> dst) {
  auto found = find_open(key);
  if (!found) return SwapHandle(SwapOp::done(std::unexpected(found.error())));
  Record* r = *found;
  ++gets_;
  if (!r->on_disk) {
    std::lock_guard hl(r->host_mu);
    if (r->generation == 0) {
      return SwapHandle(SwapOp::done(make_error(ErrorCode::kFailedPrecondition, "{} was never written",
                                                key.to_string())));
    }
    if (dst.size() != r->length) {
      return SwapHandle(SwapOp::done(make_error(ErrorCode::kInvalidArgument,
                                                "get of {} needs a span of {} bytes, got {}", key.to_string(),
                                                r->length, dst.size())));
    }
    if (!dst.empty()) std::memcpy(dst.data(), r->host.data(), dst.size());
    *bytes_read_ += dst.size();
    return SwapHandle(SwapOp::done(ok()));
  }

  if (!aligned(dst.data()) && dst.size() > piece_bytes()) return get_pieced(key, *r, dst);

  auto op = std::make_shared<SwapOp>();
  op->is_get = true;
  op->key = key;
  op->dst = dst;
  op->length = dst.size();
  op->run_id = run_id;
  op->verify_failures = verify_failures_;
  op->bytes_done = bytes_read_;
  const Staging st = plan(dst.data(), dst.size());
  op->aligned_length = st.body;
  auto fail = [&](Error e) {
    return SwapHandle(SwapOp::done(make_error(std::move(e).with_note("swap-in of " + key.to_string()))));
  };
  auto scratch = pool.acquire(st.scratch_bytes());
  if (!scratch) return fail(std::move(scratch).error());
  op->scratch = std::move(*scratch);
  if (!st.zero_copy && !dst.empty()) {
    auto bounce = pool.acquire(round_up(dst.size(), kBlock));
    if (!bounce) return fail(std::move(bounce).error());
    op->bounce = std::move(*bounce);
  }

  std::unique_lock lock(mu_);
  wait_for_conflicts(lock, *r, /*for_put=*/false);
  if (closed_) return fail(Error(ErrorCode::kFailedPrecondition, "swap store is closed"));
  if (Status ok_to_read = bind_get(*r, *op); !ok_to_read) return SwapHandle(SwapOp::done(std::move(ok_to_read)));
  const int k = static_cast<int>(key.kind);
  op->io = engine->readv(files[k], segments(r->offset, st, dst.data(), op->scratch, op->bounce));
  r->readers.push_back(op);
  return SwapHandle(std::move(op));
}

// Note [pieced transfer]: without it, an unaligned span needs a bounce buffer as large
// as its record, which a pool smaller than the record can never give. In pieces, the
// payload goes through buffers of piece_bytes() (a quarter of the pool), two in flight:
// the calling thread copies piece i+1 while piece i is on the disk. The record header
// (with the whole payload's checksum) goes in its own block; a get reads it, the pieces,
// then checks the checksum over the whole span, as any get does. The op stands in the
// record's queue as "driving" until the last piece is done, so per-key order holds.
std::uint64_t SwapStoreImpl::piece_bytes() const {
  return std::max<std::uint64_t>(kBlock, pool.budget() / 4 / kBlock * kBlock);
}

namespace {

// Up to two pieces in flight, each with its bounce buffer; the first error wins.
class PieceQueue {
 public:
  Status push(IoHandle io, PooledBuffer buf, std::function<void(const PooledBuffer&)> done) {
    Status st = ok();
    if (inflight_.size() == 2) st = pop();
    inflight_.push_back({std::move(io), std::move(buf), std::move(done)});
    return st;
  }
  Status drain() {
    Status first = ok();
    while (!inflight_.empty())
      if (Status st = pop(); !st && first) first = std::move(st);
    return first;
  }

 private:
  struct Piece {
    IoHandle io;
    PooledBuffer buf;
    std::function<void(const PooledBuffer&)> done;
  };
  Status pop() {
    Piece p = std::move(inflight_.front());
    inflight_.pop_front();
    Status st = p.io.wait();
    if (st && p.done) p.done(p.buf);
    return st;
  }
  std::deque<Piece> inflight_;
};

}  // namespace

SwapHandle SwapStoreImpl::put_pieced(const SwapKey& key, Record& r, std::span<const std::byte> src) {
  auto op = std::make_shared<SwapOp>();
  op->key = key;
  op->length = src.size();
  op->pieced = true;
  auto fail = [&](Error e) {
    return SwapHandle(SwapOp::done(make_error(std::move(e).with_note("swap-out of " + key.to_string()))));
  };
  auto scratch = pool.acquire(kBlock);
  if (!scratch) return fail(std::move(scratch).error());
  const std::uint64_t sum = checksum(src);
  const int k = static_cast<int>(key.kind);
  {
    std::unique_lock lock(mu_);
    wait_for_conflicts(lock, r, /*for_put=*/true);
    if (closed_) return fail(Error(ErrorCode::kFailedPrecondition, "swap store is closed"));
    op->generation = ++r.next_generation;
    encode_header(r, op->generation, src.size(), sum, *scratch);
    op->driving = true;
    r.writer = op;
  }
  const std::uint64_t piece = piece_bytes();
  PieceQueue q;
  const IoSegment header{r.offset, scratch->data(), kBlock};
  Status st = q.push(engine->writev(files[k], {&header, 1}), std::move(*scratch), nullptr);
  for (std::uint64_t off = 0; st && off < src.size(); off += piece) {
    const std::uint64_t len = std::min(piece, src.size() - off);
    auto buf = pool.acquire(round_up(len, kBlock));
    if (!buf) {
      st = std::unexpected(std::move(buf).error());
      break;
    }
    std::memcpy(buf->data(), src.data() + off, len);
    std::memset(buf->data() + len, 0, buf->capacity() - len);
    const IoSegment seg{r.offset + kBlock + off, buf->data(), buf->capacity()};
    st = q.push(engine->writev(files[k], {&seg, 1}), std::move(*buf), nullptr);
  }
  if (Status rest = q.drain(); st && !rest) st = std::move(rest);
  op->end_pieces(st ? st : make_error(std::move(st).error().with_note("swap-out of " + key.to_string())));
  return SwapHandle(std::move(op));
}

SwapHandle SwapStoreImpl::get_pieced(const SwapKey& key, Record& r, std::span<std::byte> dst) {
  auto op = std::make_shared<SwapOp>();
  op->is_get = true;
  op->key = key;
  op->dst = dst;
  op->length = dst.size();
  op->aligned_length = dst.size();  // verify(): the pieces are already in dst
  op->run_id = run_id;
  op->verify_failures = verify_failures_;
  op->bytes_done = bytes_read_;
  op->pieced = true;
  auto fail = [&](Error e) {
    return SwapHandle(SwapOp::done(make_error(std::move(e).with_note("swap-in of " + key.to_string()))));
  };
  auto scratch = pool.acquire(kBlock);
  if (!scratch) return fail(std::move(scratch).error());
  op->scratch = std::move(*scratch);
  const int k = static_cast<int>(key.kind);
  {
    std::unique_lock lock(mu_);
    wait_for_conflicts(lock, r, /*for_put=*/false);
    if (closed_) return fail(Error(ErrorCode::kFailedPrecondition, "swap store is closed"));
    if (Status ok_to_read = bind_get(r, *op); !ok_to_read) return SwapHandle(SwapOp::done(std::move(ok_to_read)));
    op->driving = true;
    r.readers.push_back(op);
  }
  const std::uint64_t piece = piece_bytes();
  PieceQueue q;
  const IoSegment header{r.offset, op->scratch.data(), kBlock};
  Status st = engine->readv(files[k], {&header, 1}).wait();
  for (std::uint64_t off = 0; st && off < dst.size(); off += piece) {
    const std::uint64_t len = std::min(piece, dst.size() - off);
    auto buf = pool.acquire(round_up(len, kBlock));
    if (!buf) {
      st = std::unexpected(std::move(buf).error());
      break;
    }
    const IoSegment seg{r.offset + kBlock + off, buf->data(), buf->capacity()};
    st = q.push(engine->readv(files[k], {&seg, 1}), std::move(*buf),
                [dst, off, len](const PooledBuffer& b) { std::memcpy(dst.data() + off, b.data(), len); });
  }
  if (Status rest = q.drain(); st && !rest) st = std::move(rest);
  if (!st) {
    st = make_error(std::move(st).error().with_note("swap-in of " + key.to_string()));
  } else if (st = op->verify(); st) {
    *op->bytes_done += op->length;
  } else {
    ++*op->verify_failures;
  }
  op->scratch.reset();
  op->end_pieces(std::move(st));
  return SwapHandle(std::move(op));
}

}  // namespace detail

// ---- SwapHandle ---------------------------------------------------------------------

SwapHandle& SwapHandle::operator=(SwapHandle&& other) noexcept {
  if (this != &other) {
    if (op_) op_->abandon();
    op_ = std::move(other.op_);
  }
  return *this;
}

SwapHandle::~SwapHandle() {
  if (op_) op_->abandon();
}

bool SwapHandle::ready() const { return !op_ || op_->io_ready(); }

Status SwapHandle::wait() {
  if (!op_) return make_error(ErrorCode::kFailedPrecondition, "wait on an empty SwapHandle");
  return op_->finish();
}

}  // namespace strata::io
