// The command lines the library gives CRIU, from CriuOptions.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>

namespace nucleus::checkpoint {

// images_dir and work_dir are paths CRIU can open (the library passes /proc/self/fd/N). Every
// option is checked, whichever action it applies to; a bad one throws Error(Status::invalid)
// naming CRIU's option, the value and what is accepted, before anything runs.
std::vector<std::string> criu_dump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                        const CriuOptions& options);
// CRIU's pre-dump of the tree (which runs on), with the dump's options.
std::vector<std::string> criu_predump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& options);
// `inherited`: the descriptors as CRIU will see them (their numbers in CRIU) with CRIU's keys,
// resolved by the caller from options.inherit_fds and the checkpoint's record; options.inherit_fds
// itself is checked but not read.
std::vector<std::string> criu_restore_args(const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& options, const std::vector<InheritedFd>& inherited);

// CRIU's lazy-pages daemon for a post-copy restore: its page server is the socket numbered
// page_socket in CRIU, and it writes a byte to status_fd once it listens (in work_dir, where the
// restore finds it).
std::vector<std::string> criu_lazy_pages_args(const std::string& images_dir, const std::string& work_dir,
                                              int page_socket, int status_fd, const CriuOptions& options);

// The checks the two above make of options, alone: for setters that refuse a bad value at once.
void validate_criu_options(const CriuOptions& options);

}  // namespace nucleus::checkpoint
