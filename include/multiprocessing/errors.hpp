// The exceptions of Python's multiprocessing, as C++ types (API.md, "Exceptions").
#pragma once

#include <stdexcept>
#include <cstddef>
#include <string>
#include <vector>

namespace multiprocessing {

// Base of the errors raised by the library's own machinery.
class ProcessError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A get/next/join-style wait with a timeout ran out.
class TimeoutError : public ProcessError {
public:
    using ProcessError::ProcessError;
};

// A manager or Client handshake failed.
class AuthenticationError : public ProcessError {
public:
    using ProcessError::ProcessError;
};

// recv_bytes_into with a buffer too small: carries the whole message.
class BufferTooShort : public ProcessError {
public:
    using ProcessError::ProcessError;
    BufferTooShort(const std::string& what, std::vector<std::byte> message)
        : ProcessError(what), message_(std::move(message)) {}
    // The whole message that did not fit (Python's e.args[0]); it has been consumed.
    const std::vector<std::byte>& message() const noexcept { return message_; }

private:
    std::vector<std::byte> message_;
};

// A worker threw a type that cannot be rebuilt here.
class RemoteError : public ProcessError {
public:
    RemoteError(std::string type_name, const std::string& message)
        : ProcessError(message), type_name_(std::move(type_name)) {}
    explicit RemoteError(const std::string& message) : RemoteError("", message) {}
    // The demangled name of the type the worker threw (e.g. "my::ParseError").
    const std::string& type_name() const noexcept { return type_name_; }

private:
    std::string type_name_;
};

// The worker running a task died (signal, _exit, OOM kill).
class WorkerLostError : public ProcessError {
public:
    using ProcessError::ProcessError;
};

// queue.Full / queue.Empty
class Full : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};
class Empty : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class EOFError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Misuse: a closed pool, processes = 0, task_done too often, successful() before ready.
class ValueError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

class StopIteration : public std::runtime_error {
public:
    StopIteration() : std::runtime_error("StopIteration: the iterator is exhausted") {}
    using std::runtime_error::runtime_error;
};

class BrokenBarrierError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class KeyError : public std::out_of_range {
public:
    using std::out_of_range::out_of_range;
};

class IndexError : public std::out_of_range {
public:
    using std::out_of_range::out_of_range;
};

}  // namespace multiprocessing
