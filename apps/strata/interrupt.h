// Ctrl-C and SIGTERM for a rank: the first asks the rank to stop at the end of its
// current step (all ranks agree on which step, Note [stopping together] in trainer.cpp),
// so that the engine is destroyed normally and its swap and lock files are removed; a
// second one from the same sender ends the process at once (Note [who asked to stop]).
#pragma once

namespace strata::cli {

// Installs the SIGINT and SIGTERM handlers, ignores SIGPIPE (a rank whose launcher is
// gone must not die mid-write with its files behind), and asks the kernel to kill this
// process if its parent dies (Linux's parent-death signal; for ranks under torchrun,
// whose agent is the parent).
void install_rank_signal_handlers(bool die_with_parent);

// The signal that asked this process to stop, or 0.
int stop_signal();

}  // namespace strata::cli
