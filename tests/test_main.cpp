#if __has_include(<catch2/catch_test_macros.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <sys/prctl.h>

// Tests that dump process trees are child subreapers, so the trees' processes are reaped by
// this process at once rather than by PID 1 seconds later (a zombie's PID cannot be restored).
int main(int argc, char* argv[]) {
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  return Catch::Session().run(argc, argv);
}
