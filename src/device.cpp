#include "device.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "error.h"

namespace koala {

namespace {

const koala_plugin_ops *loaded_ops = nullptr;
std::string load_failure;
std::once_flag load_once;

// The plugin sits next to libkoala.so: find our own directory with dladdr,
// so an installed or a build-tree library finds its own plugin. The
// environment variable KOALA_CUDA_PLUGIN names another file (tests, odd
// installs).
std::string plugin_path() {
    if (const char *env = std::getenv("KOALA_CUDA_PLUGIN"); env && *env) return env;
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&koala_version), &info) && info.dli_fname) {
        // Through symlinks: the plugin sits next to the real file.
        char *real = realpath(info.dli_fname, nullptr);
        std::string self = real ? real : info.dli_fname;
        std::free(real);
        const size_t slash = self.rfind('/');
        if (slash != std::string::npos) return self.substr(0, slash + 1) + "libkoala_cuda.so";
    }
    return "libkoala_cuda.so";
}

void load() {
    const std::string path = plugin_path();
    void *lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        load_failure = "the CUDA plugin could not be loaded (" + path + "): " +
                       (why ? why : "unknown reason") +
                       ". Is this a build with CUDA (meson -Dcuda=enabled)?";
        return;
    }
    auto entry = reinterpret_cast<koala_plugin_entry_fn>(dlsym(lib, KOALA_PLUGIN_ENTRY));
    const koala_plugin_ops *ops = entry ? entry() : nullptr;
    if (!ops || ops->abi_version != KOALA_PLUGIN_ABI_VERSION) {
        load_failure = "the CUDA plugin " + path + " does not match this libkoala (plugin ABI)";
        dlclose(lib);
        return;
    }
    loaded_ops = ops;  // kept loaded for the life of the process
}

}  // namespace

const koala_plugin_ops *device_plugin(koala_status *status) {
    try {
        std::call_once(load_once, load);
    } catch (...) {
        load_failure = "loading the CUDA plugin failed";
    }
    if (!loaded_ops) {
        *status = fail(KOALA_ERROR_UNSUPPORTED, "device memory unavailable: %s",
                       load_failure.c_str());
        return nullptr;
    }
    *status = KOALA_OK;
    return loaded_ops;
}

koala_status plugin_fail(koala_status status, const char *msg) {
    return fail(status, "%s", msg);
}

}  // namespace koala
