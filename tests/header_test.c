/* The public C header compiles alone as C99 with -pedantic-errors (and, from header_test.cpp, as
 * C++), so any C toolchain can use it. */
#include <nucleus/checkpoint.h>
#include <nucleus/checkpoint_version.h>

int main(void) {
  nc_status s = NC_OK;
  return (int)s + (NC_VERSION_NUMBER > 0 ? 0 : 1);
}
