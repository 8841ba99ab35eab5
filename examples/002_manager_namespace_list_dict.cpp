// Twin of seed 002_8c71d8103970d9b2.txt, lines 216-240 ("Service Process": a Manager's
// Namespace, list and dict, changed by a child process through their proxies):
//     from multiprocessing import Manager, Process
//     def modify(ns, lproxy, dproxy):
//         ns.name = 'new_name'
//         lproxy.append('new_value')
//         dproxy['new'] = 'new_value'
//     def run():
//         # Data preparation
//         manager = Manager()
//         ns = manager.Namespace()
//         ns.name = 'origin_name'
//         lproxy = manager.list()
//         lproxy.append('origin_value')
//         dproxy = manager.dict()
//         dproxy['origin'] = 'origin_value'
//         # Subprocess
//         p = Process(target=modify, args=(ns, lproxy, dproxy))
//         p.start()
//         print(p.pid)
//         p.join()
//         print('ns.name: %s' % ns.name)
//         print('lproxy: %s' % lproxy)
//         print('dproxy: %s' % dproxy)
//     if __name__ == '__main__':
//         run()
// C++ differences: a proxy is typed (list<std::string>, dict<std::string, std::string>),
// and a Namespace attribute is read back with the type it was stored as. Printing a
// proxy in Python prints its referent; here the referent is fetched with get().
#include <multiprocessing.hpp>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "check.hpp"

namespace mp = multiprocessing;

using ListProxy = mp::managers::ListProxy<std::string>;
using DictProxy = mp::managers::DictProxy<std::string, std::string>;

void modify(mp::managers::NamespaceProxy ns, ListProxy lproxy, DictProxy dproxy) {   // def modify(ns, lproxy, dproxy):
    ns.set("name", std::string("new_name"));        //     ns.name = 'new_name'
    lproxy.append("new_value");                     //     lproxy.append('new_value')
    dproxy.set("new", "new_value");                 //     dproxy['new'] = 'new_value'
}

// str() of a Python list of str / dict of str to str
std::string py_str(const std::vector<std::string>& items) {
    std::string out = "[";
    for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", '" : "'") + items[i] + "'";
    return out + "]";
}
std::string py_str(const std::vector<std::pair<std::string, std::string>>& items) {
    std::string out = "{";
    for (std::size_t i = 0; i < items.size(); ++i)
        out += (i ? ", '" : "'") + items[i].first + "': '" + items[i].second + "'";
    return out + "}";
}

int run() {                                         // def run():
    auto manager = mp::Manager();                   //     manager = Manager()
    auto ns = manager.Namespace();                  //     ns = manager.Namespace()
    ns.set("name", std::string("origin_name"));     //     ns.name = 'origin_name'
    auto lproxy = manager.list<std::string>();      //     lproxy = manager.list()
    lproxy.append("origin_value");                  //     lproxy.append('origin_value')
    auto dproxy = manager.dict<std::string, std::string>();   // dproxy = manager.dict()
    dproxy.set("origin", "origin_value");           //     dproxy['origin'] = 'origin_value'
    mp::Process p(modify, ns, lproxy, dproxy);      //     p = Process(target=modify, args=(ns, lproxy, dproxy))
    p.start();                                      //     p.start()
    std::printf("%d\n", static_cast<int>(*p.pid()));   //  print(p.pid)
    std::fflush(stdout);
    p.join();                                       //     p.join()
    const std::string name = ns.get<std::string>("name");
    const std::vector<std::string> list = lproxy.get();
    const std::vector<std::pair<std::string, std::string>> dict = dproxy.get();
    std::printf("ns.name: %s\n", name.c_str());     //     print('ns.name: %s' % ns.name)
    std::printf("lproxy: %s\n", py_str(list).c_str());   // print('lproxy: %s' % lproxy)
    std::printf("dproxy: %s\n", py_str(dict).c_str());   // print('dproxy: %s' % dproxy)
    std::fflush(stdout);

    // The child's three writes went to the manager's objects, so the parent sees them.
    CHECK(p.exitcode() == 0);
    CHECK(name == "new_name");
    CHECK((list == std::vector<std::string>{"origin_value", "new_value"}));
    // a dict keeps insertion order, as Python's does
    CHECK((dict == std::vector<std::pair<std::string, std::string>>{{"origin", "origin_value"}, {"new", "new_value"}}));
    CHECK(dproxy["new"] == "new_value");
    CHECK(!dproxy.get("missing").has_value());
    CHECK(ns.names() == std::vector<std::string>{"name"});

    manager.shutdown();
    return 0;
}

int main() {                                        // if __name__ == '__main__':
    mp::freeze_support();
    return run();                                   //     run()
}
