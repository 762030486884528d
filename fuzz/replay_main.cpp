// Replays fuzz inputs through the fuzzer's harness without libFuzzer, so that the regular test
// builds (g++, clang, ASan+UBSan, TSan) run the committed corpus as a regression test.
//
//   event_model_replay <file-or-directory>...
//
// Directories are read one level deep, in name order. Each input runs once (set
// COSELECT_FUZZ_REPLAY_REPEAT=n to run each n times). A violated invariant aborts, as it does
// under libFuzzer; the exit status is 0 once every input has run.

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::vector<std::string> expand(const std::string& path) {
  if (!is_directory(path)) return {path};
  std::vector<std::string> files;
  if (DIR* dir = ::opendir(path.c_str())) {
    while (const dirent* entry = ::readdir(dir)) {
      const std::string name = entry->d_name;
      if (name.empty() || name[0] == '.') continue;
      const std::string full = path + "/" + name;
      if (!is_directory(full)) files.push_back(full);
    }
    ::closedir(dir);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <file-or-directory>...\n", argv[0]);
    return 2;
  }
  int repeat = 1;
  if (const char* env = std::getenv("COSELECT_FUZZ_REPLAY_REPEAT"); env && *env) {
    repeat = std::max(1, std::atoi(env));
  }
  std::size_t inputs = 0;
  for (int i = 1; i < argc; ++i) {
    const std::vector<std::string> files = expand(argv[i]);
    if (files.empty()) {
      std::fprintf(stderr, "error: no inputs in %s\n", argv[i]);
      return 2;
    }
    for (const std::string& file : files) {
      std::ifstream in(file, std::ios::binary);
      if (!in) {
        std::fprintf(stderr, "error: cannot read %s\n", file.c_str());
        return 2;
      }
      const std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                            std::istreambuf_iterator<char>());
      std::printf("replay %s (%zu bytes)\n", file.c_str(), bytes.size());
      std::fflush(stdout);
      for (int r = 0; r < repeat; ++r)
        LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
      ++inputs;
    }
  }
  std::printf("replayed %zu inputs, %d time(s) each: all invariants held\n", inputs, repeat);
  return 0;
}
