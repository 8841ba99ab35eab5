// Twin of seed 003_6e438f5af01fda3e.txt, lines 807-824 ("3.3、multiprocessing.Process"):
//     def info(title):
//         print(title)
//         print("module name: ",__name__)
//         print("parent process: ",os.getppid())
//         print("process id: ",os.getpid())
//     def f(name):
//         info("function f")
//         print("Hello",name)
//     if __name__ == "__main__":
//         info("main line")
//         p = Process(target=f,args=("人生苦短",))
//         p.start()
//         p.join()
// C++ has no __name__; the process name (mp::current_process().name()) is printed instead.
// The child checks what it sees (its argument, its name, its parent) and exits with 1 if
// anything is off, which the parent checks through exitcode().
#include <multiprocessing.hpp>

#include <unistd.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "check.hpp"

namespace mp = multiprocessing;

void info(const std::string& title) {              // def info(title):
    std::printf("%s\n", title.c_str());             //     print(title)
    std::printf("process name:  %s\n", mp::current_process().name().c_str());  // print("module name: ",__name__)
    std::printf("parent process:  %d\n", static_cast<int>(::getppid()));       // print("parent process: ",os.getppid())
    std::printf("process id:  %d\n", static_cast<int>(::getpid()));            // print("process id: ",os.getpid())
    std::fflush(stdout);
}

void f(std::string name) {                          // def f(name):
    info("function f");                             //     info("function f")
    std::printf("Hello %s\n", name.c_str());        //     print("Hello",name)
    std::fflush(stdout);

    // what the child sees (a failure here makes the child's exit code 1)
    if (name != "人生苦短")
        throw std::runtime_error("the argument did not arrive intact: " + name);
    if (mp::current_process().name() != "Process-1")
        throw std::runtime_error("child's name is " + std::string(mp::current_process().name()));
    if (mp::current_process().pid() != ::getpid())
        throw std::runtime_error("current_process().pid() is not getpid()");
    auto parent = mp::parent_process();
    if (!parent || parent->pid() != ::getppid())
        throw std::runtime_error("parent_process() is not the parent");
}

int main() {
    mp::freeze_support();                           // if __name__ == "__main__":
    info("main line");                              //     info("main line")
    CHECK(mp::current_process().name() == "MainProcess");
    CHECK(!mp::parent_process().has_value());
    mp::Process p(f, "人生苦短");                   //     p = Process(target=f,args=("人生苦短",))
    CHECK(p.name() == "Process-1");
    p.start();                                      //     p.start()
    p.join();                                       //     p.join()
    CHECK(p.exitcode() == 0);
    return 0;
}
