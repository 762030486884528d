# Cross-compiling for 64-bit Windows with mingw-w64 (Debian: g++-mingw-w64-x86-64-posix, the
# POSIX-threads flavour that std::thread needs). Test and example executables run under wine64
# when it is installed (ctest uses CMAKE_CROSSCOMPILING_EMULATOR).
#   cmake --preset windows        # or: cmake -DCMAKE_TOOLCHAIN_FILE=cmake/mingw-w64.cmake ...
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(COSELECT_MINGW_TRIPLE x86_64-w64-mingw32 CACHE STRING "mingw-w64 target triple")
find_program(CMAKE_CXX_COMPILER NAMES ${COSELECT_MINGW_TRIPLE}-g++-posix ${COSELECT_MINGW_TRIPLE}-g++
             REQUIRED)
find_program(CMAKE_C_COMPILER NAMES ${COSELECT_MINGW_TRIPLE}-gcc-posix ${COSELECT_MINGW_TRIPLE}-gcc)
find_program(CMAKE_RC_COMPILER NAMES ${COSELECT_MINGW_TRIPLE}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${COSELECT_MINGW_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The runtime DLLs (libstdc++, libgcc, winpthread) are linked in, so the executables run under
# wine (or on a Windows machine) without a PATH to the compiler's DLLs.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")

find_program(COSELECT_WINE NAMES wine64 wine PATHS /usr/lib/wine)
if(COSELECT_WINE)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${COSELECT_WINE})
endif()
