/* The one export macro. The library is built with hidden visibility and a version script; what is
 * marked NC_EXPORT (the nc_* functions and the public nucleus::checkpoint classes) is its ABI. */
#ifndef NUCLEUS_CHECKPOINT_EXPORT_H
#define NUCLEUS_CHECKPOINT_EXPORT_H

#if defined(__GNUC__) || defined(__clang__)
#define NC_EXPORT __attribute__((visibility("default")))
#else
#define NC_EXPORT
#endif

#endif /* NUCLEUS_CHECKPOINT_EXPORT_H */
