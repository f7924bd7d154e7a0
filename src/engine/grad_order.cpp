// GradReducer's order of reductions: Note [reductions in one order] (grad_reducer.h).
// Which mode reduces in one fixed order, and how rank 0's order is predicted from its
// forward, learned from its first backward, and broadcast.
#include <algorithm>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "grad_reducer.h"

namespace strata::engine {

bool GradReducer::in_fixed_order() const {
  return !scatter_mode() || (core_.stage() == 2 && core_.comm.world() > 1);
}

void GradReducer::note_forward_use(const std::vector<std::uint32_t>& chunks) {
  if (order_predicted_) return;
  if (forward_used_.empty()) forward_used_.assign(grads_.size(), 0);
  for (std::uint32_t c : chunks)
    if (!std::exchange(forward_used_[c], 1)) forward_order_.push_back(c);
}

// Note [reductions in one order]: in the first backward that reduces, the order is the
// reverse of the one in which rank 0's forward first used the chunks (backward makes
// them ready in about that order), then those it did not use, last first.
Status GradReducer::predict_order() {
  if (order_predicted_ || !in_fixed_order() || core_.comm.world() == 1) return ok();
  if (!scatter_mode() && !boundary_) return ok();  // stages 0-1 communicate only at the boundary
  order_predicted_ = true;
  std::vector<std::uint32_t> order;
  for (auto it = forward_order_.rbegin(); it != forward_order_.rend(); ++it)
    if (grads_[*it].expected > 0) order.push_back(*it);
  for (std::uint32_t c : fixed_order_)
    if (forward_used_.empty() || !forward_used_[c]) order.push_back(c);
  forward_order_ = {};
  forward_used_ = {};
  return adopt_rank0_order(std::move(order));
}

Status GradReducer::adopt_rank0_order(std::vector<std::uint32_t> order) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(order.size())}, at::kInt);
  std::copy(order.begin(), order.end(), t.data_ptr<std::int32_t>());
  STRATA_RETURN_IF_ERROR(core_.comm.broadcast(t, 0).wait());
  const std::int32_t* v = t.data_ptr<std::int32_t>();
  fixed_order_.assign(v, v + t.numel());
  return ok();
}

// Note [reductions in one order]: after the first backward that reduces, the order is
// the one in which rank 0's chunks became ready in it: for a model that runs the same
// modules on every rank that is every rank's order, so no reduction waits. The chunks
// that were not ready then follow, in the order before.
Status GradReducer::learn_order() {
  if (order_learned_ || !order_predicted_) return ok();
  order_learned_ = true;
  std::vector<std::uint32_t> order = ready_order_;
  for (std::uint32_t c : fixed_order_)
    if (!grads_[c].ready) order.push_back(c);
  return adopt_rank0_order(std::move(order));
}

}  // namespace strata::engine
