# One compile-fail test: cmake -DSOURCE=<file.cpp> -P check.cmake -- <compiler> <args...>
#
# Passes when the compile fails with one error for the one mistake: the library's
# message (the file's `// expect: <regex>` line) within the first 15 lines of output,
# and at most 2 `error:` lines (what a failed check reports, and no page of follow-ons
# from the templates behind it: issue "one error per mistake").
set(max_error_lines 2)
set(message_within_lines 15)

set(command "")
set(after_dashes FALSE)
math(EXPR last "${CMAKE_ARGC} - 1")
foreach(i RANGE ${last})
  if(after_dashes)
    list(APPEND command "${CMAKE_ARGV${i}}")
  elseif(CMAKE_ARGV${i} STREQUAL "--")
    set(after_dashes TRUE)
  endif()
endforeach()
if(NOT command)
  message(FATAL_ERROR "usage: cmake -DSOURCE=<file.cpp> -P check.cmake -- <compiler> <args...>")
endif()

file(STRINGS ${SOURCE} expected REGEX "^// expect: ")
string(REPLACE "// expect: " "" expected "${expected}")
if(expected STREQUAL "")
  message(FATAL_ERROR "${SOURCE}: no '// expect: <the library's message>' line")
endif()

execute_process(COMMAND ${command} RESULT_VARIABLE rc OUTPUT_VARIABLE output ERROR_VARIABLE output)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, and must not:\n${output}")
endif()

# The first lines, cut at newlines (the output is not a CMake list: it may hold ';').
set(head "")
set(rest "${output}")
foreach(i RANGE 1 ${message_within_lines})
  string(FIND "${rest}" "\n" newline)
  if(newline EQUAL -1)
    string(APPEND head "${rest}")
    break()
  endif()
  math(EXPR cut "${newline} + 1")
  string(SUBSTRING "${rest}" 0 ${cut} line)
  string(SUBSTRING "${rest}" ${cut} -1 rest)
  string(APPEND head "${line}")
endforeach()
if(NOT head MATCHES "${expected}")
  if(output MATCHES "${expected}")
    message(FATAL_ERROR "${SOURCE}: the message '${expected}' comes after the first "
                        "${message_within_lines} lines of the compiler's output:\n${output}")
  endif()
  message(FATAL_ERROR "${SOURCE}: the compile failed without the message '${expected}':\n${output}")
endif()

string(REGEX MATCHALL "error:" errors "${output}")
list(LENGTH errors error_count)
if(error_count GREATER max_error_lines)
  message(FATAL_ERROR "${SOURCE}: ${error_count} 'error:' lines for one mistake (at most "
                      "${max_error_lines}): something is instantiated after the check failed:\n${output}")
endif()
message(STATUS "${SOURCE}: fails as it must, with ${error_count} error line(s)")
