// Twin of seed 001_22a7b71a27b014c2.txt, lines 71-78 (Pipe demo):
//     from multiprocessing import Process, Pipe
//     def send(conn):
//         conn.send("Hello World")
//         conn.close()
//     if __name__ == '__main__':
//         parent_conn, child_conn = Pipe()
//         p = Process(target=send, args=(child_conn,))
//         p.start()
//         print parent_conn.recv()
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>

#include "check.hpp"

namespace mp = multiprocessing;

// Python's name, send, is POSIX's ::send() in C++; the target gets another name.
void send_hello(mp::Connection<std::string> conn) {  // def send(conn):
    conn.send("Hello World");                        //     conn.send("Hello World")
    conn.close();                                    //     conn.close()
}

int main() {
    mp::freeze_support();                                    // if __name__ == '__main__':
    auto [parent_conn, child_conn] = mp::Pipe<std::string>();  //     parent_conn, child_conn = Pipe()
    mp::Process p(send_hello, child_conn);                   //     p = Process(target=send, args=(child_conn,))
    p.start();                                               //     p.start()
    std::string message = parent_conn.recv();
    std::printf("%s\n", message.c_str());                    //     print parent_conn.recv()

    // The child's message arrived whole, and once the child has exited and the parent has
    // closed its own copy of the child's end, the pipe reports end of file.
    CHECK(message == "Hello World");
    p.join();
    CHECK(p.exitcode() == 0);
    child_conn.close();
    bool got_eof = false;
    try {
        parent_conn.recv();
    } catch (const mp::EOFError&) {
        got_eof = true;
    }
    CHECK(got_eof);
    return 0;
}
