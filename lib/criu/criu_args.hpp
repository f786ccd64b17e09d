// The command lines the library gives CRIU, from CriuOptions.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <nucleus/checkpoint/criu_options.hpp>

namespace nucleus::checkpoint {

// images_dir and work_dir are paths CRIU can open (the library passes /proc/self/fd/N).
std::vector<std::string> criu_dump_args(pid_t pid, const std::string& images_dir, const std::string& work_dir,
                                        const CriuOptions& options);
std::vector<std::string> criu_restore_args(const std::string& images_dir, const std::string& work_dir,
                                           const CriuOptions& options);

}  // namespace nucleus::checkpoint
