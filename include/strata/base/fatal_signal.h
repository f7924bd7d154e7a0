// A report on stderr when a process dies of a fatal signal, before it dies of it.
//
//   int main() {
//     strata::install_fatal_signal_report("strata");
//     ...
//   }
//
// On SIGSEGV, SIGBUS, SIGILL, SIGFPE or SIGABRT the process writes
//
//   strata: fatal signal SIGSEGV (address not mapped) at 0x0, thread 4242 "pt_main_thread" of process 4240
//   strata: backtrace (symbolize with addr2line -Cfe MODULE OFFSET):
//   ./strata(+0x1a2b3)[0x55d0c3a1a2b3]
//   ...
//
// and then dies of the same signal, so exit statuses and core dumps stay as they were.
// A signal another process sent says so ("sent by process 17, uid 0") instead of an
// address: whether a crash was the process's own fault or a kill from outside is the
// first question about it. Note [fatal signal report]: on the GPU machine test_gpu and
// `strata bench`'s parent died of SIGSEGV with nothing printed (gtest's buffered stdout
// went with them); this line and the stack are what a short device call can bring back.
//
// A handler that was there before (a sanitizer's, Python's faulthandler, one a library
// installed as it loaded: Debian's LibTorch 2.6 pulls in UCX, whose libucs takes SIGSEGV
// for a report of its own) still runs, after ours, with the same arguments, and what
// it does next (return, die) stands. A signal ignored on purpose stays ignored. Call it
// from the main thread, before starting threads (the alternate signal stack, which lets
// a stack overflow still be reported, is the calling thread's); a second call changes
// nothing. Library code never calls it: the signal dispositions belong to the program.
#pragma once

namespace strata {

// `program` names the process in the report (kept by pointer: pass a string literal).
void install_fatal_signal_report(const char* program);

}  // namespace strata
