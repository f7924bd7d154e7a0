#include "collective.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstring>

namespace strata::ckpt {

Result<std::vector<std::string>> all_gather_strings(comm::Communicator& comm, const std::string& mine) {
  const int world = comm.world();
  if (world == 1) return std::vector<std::string>{mine};
  at::Tensor len = at::full({1}, static_cast<std::int64_t>(mine.size()), at::kLong);
  STRATA_RETURN_IF_ERROR(comm.all_reduce(len, comm::ReduceOp::kMax).wait());
  const std::int64_t n = len.item<std::int64_t>() + 8;  // 8 bytes of length first
  at::Tensor in = at::zeros({n}, at::kByte);
  const auto size = static_cast<std::int64_t>(mine.size());
  std::memcpy(in.data_ptr(), &size, 8);
  std::memcpy(in.data_ptr<std::uint8_t>() + 8, mine.data(), mine.size());
  at::Tensor out = at::empty({world * n}, at::kByte);
  STRATA_RETURN_IF_ERROR(comm.all_gather(in, out).wait());
  std::vector<std::string> all;
  for (int r = 0; r < world; ++r) {
    const std::uint8_t* p = out.data_ptr<std::uint8_t>() + r * n;
    std::int64_t k = 0;
    std::memcpy(&k, p, 8);
    all.emplace_back(reinterpret_cast<const char*>(p + 8), static_cast<std::size_t>(k));
  }
  return all;
}

Status agree(comm::Communicator& comm, Status mine) {
  const std::string text =
      mine ? std::string() : nlohmann::json{{"code", static_cast<int>(mine.error().code())}, {"what", mine.error().to_string()}}.dump();
  auto all = all_gather_strings(comm, text);
  if (!all) return mine ? Status(std::unexpected(std::move(all).error())) : mine;
  for (std::size_t r = 0; r < all->size(); ++r) {
    if ((*all)[r].empty()) continue;
    if (static_cast<int>(r) == comm.rank()) return mine;
    const auto j = nlohmann::json::parse((*all)[r]);
    return make_error(Error(static_cast<ErrorCode>(j.at("code").get<int>()), j.at("what").get<std::string>()))
        .with_rank(static_cast<int>(r));
  }
  return ok();
}

}  // namespace strata::ckpt
