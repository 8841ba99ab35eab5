// Twin of seed 003_6e438f5af01fda3e.txt, lines 846-874 (Process subclass overriding run()):
//     class MyProcess(Process):
//         def __init__(self):
//             super(MyProcess,self).__init__()
//         def run(self):
//             print("module name: ", __name__)
//             print("parent process: ", os.getppid())
//             print("process id: ", os.getpid())
//     def main():
//         processes = []
//         for i in range(5): processes.append(MyProcess())     # 创建进程
//         for i in range(5): processes[i].start()              # 启动进程
//         for i in range(5): processes[i].join()               # 等待进程结束
// (seed 001, line 30, describes the same: subclass Process and override run.)
// C++ has no __name__; the process name is printed instead. run() checks that it runs in
// a child of this program under its own name, and exits with 1 (by throwing) if not.
#include <multiprocessing.hpp>

#include <unistd.h>

#include <cstdio>
#include <deque>
#include <stdexcept>
#include <string>

#include "check.hpp"

namespace mp = multiprocessing;

struct MyProcess : mp::Process {                    // class MyProcess(Process):
    pid_t creator = ::getpid();                     // (for the check in run())

    MyProcess() : mp::Process() {}                  //     def __init__(self): super().__init__()

    void run() override {                           //     def run(self):
        std::printf("process name:  %s\n", mp::current_process().name().c_str());  // print("module name: ", __name__)
        std::printf("parent process:  %d\n", static_cast<int>(::getppid()));       // print("parent process: ", os.getppid())
        std::printf("process id:  %d\n", static_cast<int>(::getpid()));            // print("process id: ", os.getpid())
        std::fflush(stdout);

        if (::getpid() == creator)
            throw std::runtime_error("run() executed in the parent, not in a child");
        if (::getppid() != creator)
            throw std::runtime_error("the child's parent is not the process that created it");
        if (mp::current_process().name() != name())
            throw std::runtime_error("current_process().name() differs from the Process's name()");
    }
};

int main() {                                        // def main():
    mp::freeze_support();
    std::deque<MyProcess> processes;                //     processes = []
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes.emplace_back();                   //         processes.append(MyProcess())
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes[i].start();                       //         processes[i].start()
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes[i].join();                        //         processes[i].join()

    for (int i = 0; i < 5; ++i) {
        // default names are given at construction: Process-1 .. Process-5
        CHECK(processes[i].name() == "Process-" + std::to_string(i + 1));
        CHECK(processes[i].exitcode() == 0);        // run() ran in the child and found nothing wrong
    }
    return 0;
}
