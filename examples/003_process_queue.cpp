// Twin of seed 003_6e438f5af01fda3e.txt, lines 911-949 (a Process subclass with a Queue):
//     result_queue = Queue()
//     class MyProcess(Process):
//         def __init__(self,q):
//             super(MyProcess,self).__init__()
//             self.q = q
//         def run(self):
//             output = "module name %s\n" % __name__
//             output += "parent process: %d\n" % os.getppid()
//             output += "parent id: %d" % os.getpid()
//             self.q.put(output)
//     def main():
//         processes = []
//         for i in range(5): processes.append(MyProcess(result_queue))
//         for i in range(5): processes[i].start()
//         for i in range(5): processes[i].join()
//         while not result_queue.empty():
//             output = result_queue.get()
//             print(output)
// C++ has no __name__; the process name is put instead. The parent checks that it got
// one report from each of the five children, each naming this process as its parent.
#include <multiprocessing.hpp>

#include <unistd.h>

#include <cstdio>
#include <deque>
#include <set>
#include <string>

#include "check.hpp"

namespace mp = multiprocessing;

mp::Queue<std::string> result_queue;                // result_queue = Queue()

struct MyProcess : mp::Process {                    // class MyProcess(Process):
    mp::Queue<std::string> q;

    explicit MyProcess(mp::Queue<std::string> q)    //     def __init__(self,q):
        : mp::Process(), q(q) {}                    //         super().__init__(); self.q = q

    void run() override {                           //     def run(self):
        std::string output = "module name " + mp::current_process().name() + "\n";      // output = "module name %s\n" % __name__
        output += "parent process: " + std::to_string(::getppid()) + "\n";            // output += "parent process: %d\n" % os.getppid()
        output += "parent id: " + std::to_string(::getpid());                         // output += "parent id: %d" % os.getpid()
        q.put(output);                              //         self.q.put(output)
    }
};

int main() {                                        // def main():
    mp::freeze_support();
    std::deque<MyProcess> processes;                //     processes = []
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes.emplace_back(result_queue);       //         processes.append(MyProcess(result_queue))
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes[i].start();                       //         processes[i].start()
    for (int i = 0; i < 5; ++i)                     //     for i in range(5):
        processes[i].join();                        //         processes[i].join()

    std::set<std::string> outputs;
    while (!result_queue.empty()) {                 //     while not result_queue.empty():
        std::string output = result_queue.get();    //         output = result_queue.get()
        std::printf("%s\n", output.c_str());        //         print(output)
        outputs.insert(output);
    }

    // One report per child (the children put and exited before join() returned, and
    // nothing they put was lost), each from a child of this process, under its own name.
    CHECK(outputs.size() == 5);
    const std::string parent_line = "parent process: " + std::to_string(::getpid()) + "\n";
    for (int i = 0; i < 5; ++i) {
        CHECK(processes[i].exitcode() == 0);
        const std::string expected = "module name " + processes[i].name() + "\n" + parent_line +
                                     "parent id: " + std::to_string(*processes[i].pid());
        CHECK(outputs.count(expected) == 1);
    }
    return 0;
}
